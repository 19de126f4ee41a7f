//! Clusters: hosts of one hypervisor type, sharing the primary storage and L2 networks attached
//! to the cluster.

use rusqlite::{params, Connection};
use serde_json::{json, Map, Value};

use crate::api::{count, exists, inventory, one, opt, req, ApiSpec, Call, Handler, QUERY_PARAMS};
use crate::auth;
use crate::error::ApiError;
use crate::query::Table;

pub const HYPERVISOR_TYPES: &[&str] = &["KVM", "Simulator"];

pub const APIS: &[ApiSpec] = &[
    ApiSpec {
        name: "CreateCluster",
        description: "Create a cluster of hosts of one hypervisor type",
        needs_session: true,
        params: &[
            req("name", "cluster name"),
            req("zoneUuid", "the zone"),
            req("hypervisorType", "KVM or Simulator"),
            opt("description", "free text"),
        ],
        handler: Handler::Sync(create_cluster),
    },
    ApiSpec {
        name: "QueryCluster",
        description: "Clusters, with the primary storage and L2 networks attached to them",
        needs_session: true,
        params: QUERY_PARAMS,
        handler: Handler::Read(query_cluster),
    },
    ApiSpec {
        name: "UpdateCluster",
        description: "Rename a cluster or change its description",
        needs_session: true,
        params: &[
            req("uuid", "the cluster"),
            opt("name", "new name"),
            opt("description", "new description"),
        ],
        handler: Handler::Sync(update_cluster),
    },
    ApiSpec {
        name: "DeleteCluster",
        description: "Delete a cluster without hosts; its attachments are removed",
        needs_session: true,
        params: &[req("uuid", "the cluster")],
        handler: Handler::Sync(delete_cluster),
    },
];

pub const CLUSTER: Table = Table {
    resource: "Cluster",
    table: "cluster",
    fields: &[
        ("uuid", "uuid"),
        ("name", "name"),
        ("description", "description"),
        ("zoneUuid", "zone_uuid"),
        ("hypervisorType", "hypervisor_type"),
        ("state", "state"),
        ("type", "type"),
        ("createDate", "create_date"),
        ("lastOpDate", "last_op_date"),
    ],
    expand: Some(expand_cluster),
};

fn expand_cluster(conn: &Connection, m: &mut Map<String, Value>) -> Result<(), ApiError> {
    super::add_list(
        conn,
        m,
        "attachedPrimaryStorageUuids",
        "SELECT primary_storage_uuid FROM cluster_primary_storage WHERE cluster_uuid = ?1 ORDER BY rowid",
    )?;
    super::add_list(
        conn,
        m,
        "attachedL2NetworkUuids",
        "SELECT l2_uuid FROM cluster_l2_network WHERE cluster_uuid = ?1 ORDER BY rowid",
    )
}

fn create_cluster(c: &Call) -> Result<Value, ApiError> {
    let zone = c.required("zoneUuid")?;
    exists(c.conn, "zone", "Zone", zone, "zoneUuid")?;
    let hv = c.one_of("hypervisorType", HYPERVISOR_TYPES, None)?;
    let uuid = crate::new_uuid();
    c.conn.execute(
        "INSERT INTO cluster (uuid, zone_uuid, name, description, hypervisor_type, state, create_date, last_op_date)
         VALUES (?1, ?2, ?3, ?4, ?5, 'Enabled', ?6, ?6)",
        params![uuid, zone, c.required("name")?, c.str("description"), hv, auth::now()],
    )?;
    Ok(inventory(one(c.conn, &CLUSTER, &uuid)?))
}

fn query_cluster(c: &Call) -> Result<Value, ApiError> {
    c.query(&CLUSTER)
}

fn update_cluster(c: &Call) -> Result<Value, ApiError> {
    let uuid = c.required("uuid")?;
    exists(c.conn, "cluster", "Cluster", uuid, "uuid")?;
    c.conn.execute(
        "UPDATE cluster SET name = coalesce(?2, name), description = coalesce(?3, description), last_op_date = ?4 WHERE uuid = ?1",
        params![uuid, c.str("name"), c.str("description"), auth::now()],
    )?;
    Ok(inventory(one(c.conn, &CLUSTER, uuid)?))
}

fn delete_cluster(c: &Call) -> Result<Value, ApiError> {
    let uuid = c.required("uuid")?;
    exists(c.conn, "cluster", "Cluster", uuid, "uuid")?;
    let hosts: i64 = count(
        c.conn,
        "SELECT count(*) FROM host WHERE cluster_uuid = ?1",
        [uuid],
    )?;
    if hosts > 0 {
        return Err(ApiError::in_use(format!(
            "cluster {uuid} still has {hosts} host(s); delete them first"
        ))
        .field("uuid"));
    }
    let tx = c.conn.unchecked_transaction()?;
    tx.execute(
        "DELETE FROM cluster_primary_storage WHERE cluster_uuid = ?1",
        [uuid],
    )?;
    tx.execute(
        "DELETE FROM cluster_l2_network WHERE cluster_uuid = ?1",
        [uuid],
    )?;
    // Stopped VMs keep no host, but may still name the cluster they last ran in.
    tx.execute(
        "UPDATE vm_instance SET cluster_uuid = NULL WHERE cluster_uuid = ?1",
        [uuid],
    )?;
    tx.execute("DELETE FROM cluster WHERE uuid = ?1", [uuid])?;
    tx.commit()?;
    Ok(json!({}))
}

//! Zones: the top of the hierarchy (clusters, L2 networks, primary storage live in one).

use rusqlite::params;
use serde_json::{json, Value};

use crate::api::{count, exists, inventory, one, opt, req, ApiSpec, Call, Handler, QUERY_PARAMS};
use crate::auth;
use crate::error::ApiError;
use crate::query::Table;

pub const APIS: &[ApiSpec] = &[
    ApiSpec {
        name: "CreateZone",
        description: "Create a zone",
        needs_session: true,
        params: &[req("name", "zone name"), opt("description", "free text")],
        handler: Handler::Sync(create_zone),
    },
    ApiSpec {
        name: "QueryZone",
        description: "Zones",
        needs_session: true,
        params: QUERY_PARAMS,
        handler: Handler::Read(query_zone),
    },
    ApiSpec {
        name: "UpdateZone",
        description: "Rename a zone or change its description",
        needs_session: true,
        params: &[
            req("uuid", "the zone"),
            opt("name", "new name"),
            opt("description", "new description"),
        ],
        handler: Handler::Sync(update_zone),
    },
    ApiSpec {
        name: "DeleteZone",
        description: "Delete an empty zone (no clusters, networks, storage left in it)",
        needs_session: true,
        params: &[req("uuid", "the zone")],
        handler: Handler::Sync(delete_zone),
    },
];

pub const ZONE: Table = Table {
    resource: "Zone",
    table: "zone",
    fields: &[
        ("uuid", "uuid"),
        ("name", "name"),
        ("description", "description"),
        ("state", "state"),
        ("createDate", "create_date"),
        ("lastOpDate", "last_op_date"),
    ],
    expand: None,
};

fn create_zone(c: &Call) -> Result<Value, ApiError> {
    let uuid = crate::new_uuid();
    let ts = auth::now();
    c.conn.execute(
        "INSERT INTO zone (uuid, name, description, state, create_date, last_op_date) VALUES (?1, ?2, ?3, 'Enabled', ?4, ?4)",
        params![uuid, c.required("name")?, c.str("description"), ts],
    )?;
    Ok(inventory(one(c.conn, &ZONE, &uuid)?))
}

fn query_zone(c: &Call) -> Result<Value, ApiError> {
    c.query(&ZONE)
}

fn update_zone(c: &Call) -> Result<Value, ApiError> {
    let uuid = c.required("uuid")?;
    exists(c.conn, "zone", "Zone", uuid, "uuid")?;
    c.conn.execute(
        "UPDATE zone SET name = coalesce(?2, name), description = coalesce(?3, description), last_op_date = ?4 WHERE uuid = ?1",
        params![uuid, c.str("name"), c.str("description"), auth::now()],
    )?;
    Ok(inventory(one(c.conn, &ZONE, uuid)?))
}

fn delete_zone(c: &Call) -> Result<Value, ApiError> {
    let uuid = c.required("uuid")?;
    exists(c.conn, "zone", "Zone", uuid, "uuid")?;
    for (table, what) in [
        ("cluster", "cluster(s)"),
        ("l2_network", "L2 network(s)"),
        ("primary_storage", "primary storage(s)"),
    ] {
        let n: i64 = count(
            c.conn,
            &format!("SELECT count(*) FROM {table} WHERE zone_uuid = ?1"),
            [uuid],
        )?;
        if n > 0 {
            return Err(ApiError::in_use(format!(
                "zone {uuid} still has {n} {what}; delete them first"
            ))
            .field("uuid"));
        }
    }
    let tx = c.conn.unchecked_transaction()?;
    tx.execute(
        "DELETE FROM zone_backup_storage WHERE zone_uuid = ?1",
        [uuid],
    )?;
    tx.execute("DELETE FROM zone WHERE uuid = ?1", [uuid])?;
    tx.commit()?;
    Ok(json!({}))
}

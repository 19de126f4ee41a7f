//! Choosing where a VM runs: a connected, enabled host with free CPU and memory, in a cluster
//! attached to the VM's L2 networks and to primary storage with room; and the VM's MACs.

use rusqlite::{params, Connection, OptionalExtension};

use crate::error::ApiError;

/// What a VM needs from a host.
pub(super) struct Need<'a> {
    pub(super) cpu: i64,
    pub(super) memory: i64,
    /// Room on primary storage for a new root volume (0 when it exists already).
    pub(super) storage: i64,
    /// The primary storage holding the root volume already, when it exists.
    pub(super) on_storage: Option<&'a str>,
    pub(super) l3s: &'a [String],
    pub(super) cluster: Option<&'a str>,
    pub(super) host: Option<&'a str>,
    pub(super) prefer_host: Option<&'a str>,
}

pub(super) struct Placement {
    pub(super) host: String,
    pub(super) cluster: String,
    pub(super) zone: String,
    pub(super) hypervisor: String,
    pub(super) storage: String,
}

pub(super) fn place(conn: &Connection, need: &Need) -> Result<Placement, ApiError> {
    let l3_list = serde_json::to_string(need.l3s).unwrap_or_else(|_| "[]".into());
    let sql = "
        SELECT h.uuid, h.cluster_uuid, h.zone_uuid, h.hypervisor_type,
               (SELECT p.uuid FROM cluster_primary_storage cp JOIN primary_storage p ON p.uuid = cp.primary_storage_uuid
                 WHERE cp.cluster_uuid = h.cluster_uuid AND p.state = 'Enabled' AND p.status = 'Connected'
                   AND p.available_capacity >= ?3 AND (?4 IS NULL OR p.uuid = ?4)
                 ORDER BY p.available_capacity DESC LIMIT 1) AS ps
          FROM host h
         WHERE h.status = 'Connected' AND h.state = 'Enabled'
           AND h.available_cpu >= ?1 AND h.available_memory >= ?2
           AND (?5 IS NULL OR h.cluster_uuid = ?5) AND (?6 IS NULL OR h.uuid = ?6)
           AND NOT EXISTS (SELECT 1 FROM json_each(?7) j JOIN l3_network l ON l.uuid = j.value
                            WHERE NOT EXISTS (SELECT 1 FROM cluster_l2_network cl
                                               WHERE cl.cluster_uuid = h.cluster_uuid AND cl.l2_uuid = l.l2_uuid))
           AND ps IS NOT NULL
         ORDER BY (h.uuid = ?8) DESC, h.available_memory DESC, h.available_cpu DESC
         LIMIT 1";
    let found = conn
        .prepare_cached(sql)?
        .query_row(
            params![
                need.cpu,
                need.memory,
                need.storage,
                need.on_storage,
                need.cluster,
                need.host,
                l3_list,
                need.prefer_host.unwrap_or("")
            ],
            |r| {
                Ok(Placement {
                    host: r.get(0)?,
                    cluster: r.get(1)?,
                    zone: r.get(2)?,
                    hypervisor: r.get(3)?,
                    storage: r.get(4)?,
                })
            },
        )
        .optional()?;
    found.ok_or_else(|| no_host_reason(conn, need))
}

/// Says which requirement no host met, so the operator knows what to add.
pub(super) fn no_host_reason(conn: &Connection, need: &Need) -> ApiError {
    let count = |sql: &str| -> i64 {
        conn.query_row(sql, params![need.cluster, need.host], |r| r.get(0))
            .unwrap_or(0)
    };
    let scope = "(?1 IS NULL OR cluster_uuid = ?1) AND (?2 IS NULL OR uuid = ?2)";
    let connected = count(&format!(
        "SELECT count(*) FROM host WHERE {scope} AND status = 'Connected' AND state = 'Enabled'"
    ));
    let roomy = conn
        .query_row(
            &format!(
                "SELECT count(*) FROM host WHERE {scope} AND status = 'Connected' AND state = 'Enabled'
                   AND available_cpu >= ?3 AND available_memory >= ?4"
            ),
            params![need.cluster, need.host, need.cpu, need.memory],
            |r| r.get::<_, i64>(0),
        )
        .unwrap_or(0);
    let message = if connected == 0 {
        "no enabled, connected host (in the cluster or host asked for); add or reconnect a host"
            .to_string()
    } else if roomy == 0 {
        format!(
            "no connected host has {} free CPU(s) and {} MiB free memory; stop VMs or add hosts",
            need.cpu,
            need.memory >> 20
        )
    } else {
        format!(
            "{roomy} host(s) have room, but none is in a cluster attached both to the L2 networks \
             of L3 network(s) {} and to primary storage with {} MiB free{}; attach them \
             (AttachL2NetworkToCluster, AttachPrimaryStorageToCluster) or free space",
            need.l3s.join(", "),
            need.storage >> 20,
            need.on_storage
                .map(|p| format!(" (the VM's volumes are on primary storage {p})"))
                .unwrap_or_default()
        )
    };
    ApiError::no_capacity(message)
}

pub(super) fn new_mac(conn: &Connection) -> Result<String, ApiError> {
    for _ in 0..16 {
        let mut b = [0u8; 5];
        getrandom::getrandom(&mut b).map_err(|e| ApiError::internal(e.to_string()))?;
        // fa: locally administered, unicast, as the original's MACs.
        let mac = format!(
            "fa:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4]
        );
        let taken = conn
            .prepare_cached("SELECT 1 FROM vm_nic WHERE mac = ?1")?
            .exists([&mac])?;
        if !taken {
            return Ok(mac);
        }
    }
    Err(ApiError::internal("cannot find a free MAC address"))
}

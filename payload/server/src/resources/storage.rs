//! Primary storage (`SharedMountPoint`: a directory every host of the attached clusters mounts at
//! the same path, where volumes live) and backup storage (`Local`: a directory on the management
//! node holding images, which agents fetch from the node).

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Value};

use zstack_common::grammar::Grammar;

use crate::api::{count, exists, inventory, one, opt, req, ApiSpec, Call, Handler, QUERY_PARAMS};
use crate::auth;
use crate::error::ApiError;
use crate::job::Job;
use crate::query::Table;
use crate::resources::host::HostRow;
use crate::Node;

pub const APIS: &[ApiSpec] = &[
    ApiSpec {
        name: "AddSharedMountPointPrimaryStorage",
        description:
            "Add shared mount point primary storage: a directory mounted at the same path \
                      on every host of the clusters it is attached to",
        needs_session: true,
        params: &[
            req("url", "absolute path of the mount point on the hosts").is(Grammar::AbsolutePath),
            req("name", "storage name"),
            req("zoneUuid", "the zone"),
            opt("description", "free text"),
        ],
        handler: Handler::Sync(add_smp),
    },
    ApiSpec {
        name: "AttachPrimaryStorageToCluster",
        description: "Attach primary storage to a cluster; every connected host of the cluster \
                      checks it can write to it, and reports its capacity",
        needs_session: true,
        params: &[
            req("primaryStorageUuid", "the primary storage"),
            req("clusterUuid", "the cluster"),
        ],
        handler: Handler::Async(attach_ps),
    },
    ApiSpec {
        name: "DetachPrimaryStorageFromCluster",
        description: "Detach primary storage from a cluster where no VM of the cluster uses it",
        needs_session: true,
        params: &[
            req("primaryStorageUuid", "the primary storage"),
            req("clusterUuid", "the cluster"),
        ],
        handler: Handler::Sync(detach_ps),
    },
    ApiSpec {
        name: "QueryPrimaryStorage",
        description: "Primary storage with capacity",
        needs_session: true,
        params: QUERY_PARAMS,
        handler: Handler::Read(query_ps),
    },
    ApiSpec {
        name: "DeletePrimaryStorage",
        description: "Delete primary storage that holds no volume and is attached to no cluster",
        needs_session: true,
        params: &[req("uuid", "the primary storage")],
        handler: Handler::Sync(delete_ps),
    },
    ApiSpec {
        name: "AddLocalBackupStorage",
        description: "Add backup storage: a directory on the management node that holds images \
                      (made if missing)",
        needs_session: true,
        params: &[
            req(
                "url",
                "absolute path of the directory on the management node",
            )
            .is(Grammar::AbsolutePath),
            req("name", "storage name"),
            opt("description", "free text"),
        ],
        handler: Handler::Sync(add_bs),
    },
    ApiSpec {
        name: "AttachBackupStorageToZone",
        description: "Make backup storage's images usable in a zone",
        needs_session: true,
        params: &[
            req("backupStorageUuid", "the backup storage"),
            req("zoneUuid", "the zone"),
        ],
        handler: Handler::Sync(attach_bs),
    },
    ApiSpec {
        name: "DetachBackupStorageFromZone",
        description: "Stop using backup storage in a zone",
        needs_session: true,
        params: &[
            req("backupStorageUuid", "the backup storage"),
            req("zoneUuid", "the zone"),
        ],
        handler: Handler::Sync(detach_bs),
    },
    ApiSpec {
        name: "QueryBackupStorage",
        description: "Backup storage with capacity",
        needs_session: true,
        params: QUERY_PARAMS,
        handler: Handler::Read(query_bs),
    },
    ApiSpec {
        name: "DeleteBackupStorage",
        description: "Delete backup storage that holds no image (its directory is kept)",
        needs_session: true,
        params: &[req("uuid", "the backup storage")],
        handler: Handler::Sync(delete_bs),
    },
];

pub const PRIMARY_STORAGE: Table = Table {
    resource: "PrimaryStorage",
    table: "primary_storage",
    fields: &[
        ("uuid", "uuid"),
        ("name", "name"),
        ("description", "description"),
        ("zoneUuid", "zone_uuid"),
        ("type", "type"),
        ("url", "url"),
        ("totalCapacity", "total_capacity"),
        ("availableCapacity", "available_capacity"),
        ("state", "state"),
        ("status", "status"),
        ("createDate", "create_date"),
        ("lastOpDate", "last_op_date"),
    ],
    expand: Some(expand_ps),
};

fn expand_ps(conn: &Connection, m: &mut serde_json::Map<String, Value>) -> Result<(), ApiError> {
    super::add_list(
        conn,
        m,
        "attachedClusterUuids",
        "SELECT cluster_uuid FROM cluster_primary_storage WHERE primary_storage_uuid = ?1 ORDER BY rowid",
    )
}

pub const BACKUP_STORAGE: Table = Table {
    resource: "BackupStorage",
    table: "backup_storage",
    fields: &[
        ("uuid", "uuid"),
        ("name", "name"),
        ("description", "description"),
        ("type", "type"),
        ("url", "url"),
        ("totalCapacity", "total_capacity"),
        ("availableCapacity", "available_capacity"),
        ("state", "state"),
        ("status", "status"),
        ("createDate", "create_date"),
        ("lastOpDate", "last_op_date"),
    ],
    expand: Some(expand_bs),
};

fn expand_bs(conn: &Connection, m: &mut serde_json::Map<String, Value>) -> Result<(), ApiError> {
    super::add_list(
        conn,
        m,
        "attachedZoneUuids",
        "SELECT zone_uuid FROM zone_backup_storage WHERE backup_storage_uuid = ?1 ORDER BY rowid",
    )
}

/// Directories a storage may not be, nor be under: the system's and ZStack's own.
const SYSTEM_TREES: &[&str] = &[
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/sys",
    "/usr",
    "/var/lib/zstack",
    "/var/log/zstack",
    "/var/lib/zstack-installer.journal",
];
/// Directories a storage may be under but not be itself.
const SYSTEM_DIRS: &[&str] = &[
    "/", "/home", "/var", "/var/lib", "/var/log", "/tmp", "/opt", "/srv", "/mnt", "/media",
];

/// `path` with repeated and trailing slashes removed (`//etc/` is `/etc`).
fn normalise(path: &str) -> String {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    format!("/{}", parts.join("/"))
}

/// `path` with every symlink of its longest existing prefix resolved (the rest does not exist
/// yet and is kept as it is).
pub fn resolve(path: &Path) -> PathBuf {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(&existing) {
            return rest.iter().rev().fold(real, |p: PathBuf, c| p.join(c));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent.to_path_buf();
            }
            _ => return path.to_path_buf(),
        }
    }
}

fn system_directory(path: &str) -> Option<&'static str> {
    if let Some(d) = SYSTEM_DIRS.iter().find(|d| **d == path) {
        return Some(d);
    }
    SYSTEM_TREES
        .iter()
        .find(|d| path == **d || path.starts_with(&format!("{d}/")))
        .copied()
}

/// An absolute path, normalised (`//etc` is `/etc`), that neither is nor resolves (through
/// symlinks on the management node) to a system directory or one of ZStack's own. Returns the
/// normalised path and the one its symlinks resolve to.
pub fn check_storage_path(field: &str, url: &str) -> Result<(String, String), ApiError> {
    let path = url.strip_prefix("file://").unwrap_or(url);
    if !path.starts_with('/') {
        return Err(ApiError::invalid(
            field,
            format!("{field} must be an absolute path, not {url:?}"),
        ));
    }
    if path.split('/').any(|c| c == ".." || c == ".") {
        return Err(ApiError::invalid(
            field,
            format!("{field} must not contain . or .. components: {url:?}"),
        ));
    }
    let normal = normalise(path);
    let resolved = resolve(Path::new(&normal)).to_string_lossy().into_owned();
    for (candidate, how) in [(&normal, ""), (&resolved, " (through a symlink)")] {
        if let Some(d) = system_directory(candidate) {
            return Err(ApiError::invalid(
                field,
                format!(
                    "{field} {url:?} is{how} {candidate}, under {d}: a system or ZStack directory; \
                     use a directory of its own, e.g. /zstack_ps"
                ),
            ));
        }
    }
    Ok((normal, resolved))
}

fn add_smp(c: &Call) -> Result<Value, ApiError> {
    // The path is the hosts'; the management node's view of it (when it has one) is checked too.
    let (url, _) = check_storage_path("url", c.required("url")?)?;
    let zone = c.required("zoneUuid")?;
    exists(c.conn, "zone", "Zone", zone, "zoneUuid")?;
    let taken: Option<String> = c
        .conn
        .query_row(
            "SELECT uuid FROM primary_storage WHERE url = ?1 AND zone_uuid = ?2",
            params![url, zone],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(other) = taken {
        return Err(ApiError::invalid(
            "url",
            format!("primary storage {other} already uses {url} in this zone"),
        ));
    }
    let uuid = crate::new_uuid();
    c.conn.execute(
        "INSERT INTO primary_storage (uuid, zone_uuid, name, description, type, url, state, status, create_date, last_op_date)
         VALUES (?1, ?2, ?3, ?4, 'SharedMountPoint', ?5, 'Enabled', 'Connected', ?6, ?6)",
        params![uuid, zone, c.required("name")?, c.str("description"), url, auth::now()],
    )?;
    Ok(inventory(one(c.conn, &PRIMARY_STORAGE, &uuid)?))
}

/// Sets the storage's capacity from what a host reported: the total it saw, and as available
/// the smaller of what it saw free and what the volumes placed on it leave.
pub fn record_capacity(
    conn: &Connection,
    ps: &str,
    cap: &zstack_common::agent_proto::StorageCapacity,
) -> Result<(), ApiError> {
    conn.execute(
        "UPDATE primary_storage SET total_capacity = ?2,
                available_capacity = min(?3, ?2 - (SELECT coalesce(sum(size), 0) FROM volume
                                                    WHERE primary_storage_uuid = ?1 AND status = 'Ready')),
                status = 'Connected', last_op_date = ?4
          WHERE uuid = ?1",
        params![ps, cap.total_capacity, cap.available_capacity, auth::now()],
    )?;
    Ok(())
}

/// Checks one primary storage from one host: the first successful check writes the storage's id
/// file at the mount point, every later one requires it. Records the capacity seen.
pub fn check_on(
    node: &Node,
    host: &HostRow,
    ps: &str,
) -> Result<zstack_common::agent_proto::StorageCapacity, ApiError> {
    let (url, id_written): (String, bool) = node.db()?.query_row(
        "SELECT url, id_written FROM primary_storage WHERE uuid = ?1",
        [ps],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let req = zstack_common::agent_proto::CheckStorage {
        url: url.clone(),
        uuid: ps.to_string(),
        write_id: !id_written,
    };
    let cap = node
        .agent(host)?
        .check_shared_mount_point(&req)
        .map_err(|e| {
            let e = ApiError::from(e);
            ApiError {
                message: format!(
                    "host {} ({}) cannot use primary storage {ps} at {url}: {}",
                    host.uuid, host.management_ip, e.message
                ),
                ..e
            }
        })?;
    let conn = node.db()?;
    conn.execute(
        "UPDATE primary_storage SET id_written = 1 WHERE uuid = ?1",
        [ps],
    )?;
    record_capacity(&conn, ps, &cap)?;
    Ok(cap)
}

/// Checks every primary storage attached to the host's cluster from the host.
pub fn check_from_host(node: &Node, host: &HostRow) -> Result<(), ApiError> {
    let storages: Vec<String> = {
        let conn = node.db()?;
        let mut st = conn.prepare(
            "SELECT primary_storage_uuid FROM cluster_primary_storage WHERE cluster_uuid = ?1",
        )?;
        let rows = st.query_map([&host.cluster_uuid], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    for ps in storages {
        check_on(node, host, &ps)?;
    }
    Ok(())
}

/// Refreshes the capacity of every attached primary storage from one connected host that
/// reaches it (the tracker calls this now and then). Failures are the next connect's business.
pub fn refresh_capacities(node: &Node) -> Result<(), ApiError> {
    let pairs: Vec<(String, String)> = {
        let conn = node.db()?;
        let mut st = conn.prepare(
            "SELECT cp.primary_storage_uuid, min(h.uuid) FROM cluster_primary_storage cp
               JOIN host h ON h.cluster_uuid = cp.cluster_uuid AND h.status = 'Connected'
              GROUP BY cp.primary_storage_uuid",
        )?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    for (ps, host) in pairs {
        let host = HostRow::load(&*node.db()?, &host)?;
        if let Err(e) = check_on(node, &host, &ps) {
            node.log.warn(&e.message);
        }
    }
    Ok(())
}

fn attach_ps(c: &Call) -> Result<Job, ApiError> {
    let ps = c.required("primaryStorageUuid")?.to_string();
    let cluster = c.required("clusterUuid")?.to_string();
    let ps_zone: String = c
        .conn
        .query_row(
            "SELECT zone_uuid FROM primary_storage WHERE uuid = ?1",
            [&ps],
            |r| r.get(0),
        )
        .optional()?
        .ok_or_else(|| ApiError::not_found("PrimaryStorage", &ps).field("primaryStorageUuid"))?;
    let cluster_zone: String = c
        .conn
        .query_row(
            "SELECT zone_uuid FROM cluster WHERE uuid = ?1",
            [&cluster],
            |r| r.get(0),
        )
        .optional()?
        .ok_or_else(|| ApiError::not_found("Cluster", &cluster).field("clusterUuid"))?;
    if ps_zone != cluster_zone {
        return Err(ApiError::invalid(
            "clusterUuid",
            format!("cluster {cluster} is in zone {cluster_zone}, primary storage {ps} in zone {ps_zone}"),
        ));
    }
    let attached: i64 = count(c.conn, "SELECT count(*) FROM cluster_primary_storage WHERE cluster_uuid = ?1 AND primary_storage_uuid = ?2", params![cluster, ps])?;
    if attached > 0 {
        return Err(ApiError::wrong_state(format!(
            "primary storage {ps} is already attached to cluster {cluster}"
        ))
        .field("primaryStorageUuid"));
    }
    Ok(Job::new(Some(ps.clone()), move |node: &Node| {
        let hosts: Vec<HostRow> = {
            let conn = node.db()?;
            HostRow::all(&conn)?
                .into_iter()
                .filter(|h| h.cluster_uuid == cluster && h.status == "Connected")
                .collect()
        };
        // Every host must be able to use it before it is attached: a VM may land on any of them.
        for h in &hosts {
            check_on(node, h, &ps).map_err(|e| ApiError {
                message: format!("not attached: {}", e.message),
                ..e
            })?;
        }
        let conn = node.db()?;
        let tx = conn.unchecked_transaction()?;
        tx.execute(
            "INSERT INTO cluster_primary_storage (cluster_uuid, primary_storage_uuid, create_date) VALUES (?1, ?2, ?3)",
            params![cluster, ps, auth::now()],
        )?;
        tx.commit()?;
        Ok(inventory(one(&conn, &PRIMARY_STORAGE, &ps)?))
    }))
}

fn detach_ps(c: &Call) -> Result<Value, ApiError> {
    let ps = c.required("primaryStorageUuid")?;
    let cluster = c.required("clusterUuid")?;
    exists(
        c.conn,
        "primary_storage",
        "PrimaryStorage",
        ps,
        "primaryStorageUuid",
    )?;
    exists(c.conn, "cluster", "Cluster", cluster, "clusterUuid")?;
    super::refuse_while_running_vms_use(
        c.conn,
        "SELECT v.vm_uuid FROM volume v WHERE v.primary_storage_uuid = ?1",
        ps,
        cluster,
        &format!("run from primary storage {ps}"),
        "primaryStorageUuid",
    )?;
    super::change_attachment(
        c.conn,
        "DELETE FROM cluster_primary_storage WHERE cluster_uuid = ?1 AND primary_storage_uuid = ?2",
        params![cluster, ps],
        "clusterUuid",
        format!("primary storage {ps} is not attached to cluster {cluster}"),
    )?;
    Ok(inventory(one(c.conn, &PRIMARY_STORAGE, ps)?))
}

fn query_ps(c: &Call) -> Result<Value, ApiError> {
    c.query(&PRIMARY_STORAGE)
}

fn delete_ps(c: &Call) -> Result<Value, ApiError> {
    let uuid = c.required("uuid")?;
    exists(c.conn, "primary_storage", "PrimaryStorage", uuid, "uuid")?;
    let vols: i64 = count(
        c.conn,
        "SELECT count(*) FROM volume WHERE primary_storage_uuid = ?1",
        [uuid],
    )?;
    let clusters: i64 = count(
        c.conn,
        "SELECT count(*) FROM cluster_primary_storage WHERE primary_storage_uuid = ?1",
        [uuid],
    )?;
    if vols > 0 || clusters > 0 {
        return Err(ApiError::in_use(format!(
            "primary storage {uuid} holds {vols} volume(s) and is attached to {clusters} cluster(s); \
             delete the volumes and detach it first"
        ))
        .field("uuid"));
    }
    c.conn
        .execute("DELETE FROM primary_storage WHERE uuid = ?1", [uuid])?;
    Ok(json!({}))
}

/// (total, available) bytes of the filesystem holding `dir`.
pub fn fs_capacity(dir: &std::path::Path) -> Result<(i64, i64), ApiError> {
    zstack_common::fsutil::fs_capacity(dir).map_err(|e| {
        ApiError::internal(format!(
            "cannot read the capacity of {}: {e}",
            dir.display()
        ))
    })
}

fn add_bs(c: &Call) -> Result<Value, ApiError> {
    // The directory is the management node's own: kept as its symlinks resolve.
    let (_, url) = check_storage_path("url", c.required("url")?)?;
    let taken: Option<String> = c
        .conn
        .query_row(
            "SELECT uuid FROM backup_storage WHERE url = ?1",
            [&url],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(other) = taken {
        return Err(ApiError::invalid(
            "url",
            format!("backup storage {other} already uses {url}"),
        ));
    }
    let dir = std::path::Path::new(&url);
    super::image::images_dir(dir).map_err(|e| {
        ApiError::invalid(
            "url",
            format!(
                "cannot make {url}/images on the management node: {e}{}",
                not_ours_hint(&e, &url)
            ),
        )
    })?;
    let probe = dir.join(format!(".zstack-write-check-{}", crate::new_uuid()));
    std::fs::write(&probe, b"ok")
        .and_then(|_| std::fs::remove_file(&probe))
        .map_err(|e| {
            ApiError::invalid(
                "url",
                format!("cannot write to {url}: {e}{}", not_ours_hint(&e, &url)),
            )
        })?;
    let (total, avail) = fs_capacity(dir)?;
    let uuid = crate::new_uuid();
    c.conn.execute(
        "INSERT INTO backup_storage (uuid, name, description, type, url, total_capacity, available_capacity, state, status, create_date, last_op_date)
         VALUES (?1, ?2, ?3, 'Local', ?4, ?5, ?6, 'Enabled', 'Connected', ?7, ?7)",
        params![uuid, c.required("name")?, c.str("description"), url, total, avail, auth::now()],
    )?;
    Ok(inventory(one(c.conn, &BACKUP_STORAGE, &uuid)?))
}

/// What to do when the management node (the user zstack, in its sandbox) may not write a
/// backup storage directory: the operator gives it the directory.
fn not_ours_hint(e: &std::io::Error, url: &str) -> String {
    use std::io::ErrorKind;
    if !matches!(
        e.kind(),
        ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem
    ) {
        return String::new();
    }
    format!(
        "; the management node runs as the user zstack: as root, make the directory its own \
         (install -d -o zstack -g zstack -m 0700 {url}) and, where systemd runs it, let its \
         sandbox write there (systemctl edit zstack-server: [Service] ReadWritePaths={url}; \
         systemctl restart zstack-server), then add it again"
    )
}

fn attach_bs(c: &Call) -> Result<Value, ApiError> {
    let bs = c.required("backupStorageUuid")?;
    let zone = c.required("zoneUuid")?;
    exists(
        c.conn,
        "backup_storage",
        "BackupStorage",
        bs,
        "backupStorageUuid",
    )?;
    exists(c.conn, "zone", "Zone", zone, "zoneUuid")?;
    c.conn.execute(
        "INSERT OR IGNORE INTO zone_backup_storage (zone_uuid, backup_storage_uuid, create_date) VALUES (?1, ?2, ?3)",
        params![zone, bs, auth::now()],
    )?;
    Ok(inventory(one(c.conn, &BACKUP_STORAGE, bs)?))
}

fn detach_bs(c: &Call) -> Result<Value, ApiError> {
    let bs = c.required("backupStorageUuid")?;
    let zone = c.required("zoneUuid")?;
    exists(
        c.conn,
        "backup_storage",
        "BackupStorage",
        bs,
        "backupStorageUuid",
    )?;
    super::change_attachment(
        c.conn,
        "DELETE FROM zone_backup_storage WHERE zone_uuid = ?1 AND backup_storage_uuid = ?2",
        params![zone, bs],
        "zoneUuid",
        format!("backup storage {bs} is not attached to zone {zone}"),
    )?;
    Ok(inventory(one(c.conn, &BACKUP_STORAGE, bs)?))
}

fn query_bs(c: &Call) -> Result<Value, ApiError> {
    c.query(&BACKUP_STORAGE)
}

fn delete_bs(c: &Call) -> Result<Value, ApiError> {
    let uuid = c.required("uuid")?;
    exists(c.conn, "backup_storage", "BackupStorage", uuid, "uuid")?;
    let images: i64 = count(
        c.conn,
        "SELECT count(*) FROM image WHERE backup_storage_uuid = ?1",
        [uuid],
    )?;
    if images > 0 {
        return Err(ApiError::in_use(format!(
            "backup storage {uuid} holds {images} image(s); delete them first"
        ))
        .field("uuid"));
    }
    let tx = c.conn.unchecked_transaction()?;
    tx.execute(
        "DELETE FROM zone_backup_storage WHERE backup_storage_uuid = ?1",
        [uuid],
    )?;
    tx.execute("DELETE FROM backup_storage WHERE uuid = ?1", [uuid])?;
    tx.commit()?;
    Ok(json!({}))
}

//! Instance offerings, VMs and volumes: the VM lifecycle (create, start, stop, reboot, destroy)
//! and data volumes (create, attach, detach, delete), driven through the host's
//! [`crate::agent::HostAgent`].
//!
//! Every lifecycle call reserves synchronously, under the DB lock and in one transaction: the
//! host (free CPU and memory, in a cluster attached to the VM's L2 networks and primary storage),
//! the primary storage (most free capacity), the IPs. The job then asks the host and records the
//! outcome; a host that refuses gives everything back.

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Map, Value};
use zstack_common::agent_proto::{
    DestroyVm, DiskSpec, EipSpec, NicSpec, StopVm, VmSpec, VolumeAttachment,
};

use crate::api::{exists, inventory, one, opt, req, ApiSpec, Call, Handler, QUERY_PARAMS};
use crate::auth;
use crate::error::ApiError;
use crate::globalconfig;
use crate::job::Job;
use crate::query::{Query, Table};
use crate::resources::host::{recompute_capacity, HostRow};
use crate::resources::network::{allocate_ip, dhcp_ip, ensure_dhcp_ip, l3_services};
use crate::Node;

/// cloud-init user data is small; this bounds what a VM's metadata server serves.
const MAX_USER_DATA: usize = 64 * 1024;

pub const APIS: &[ApiSpec] = &[
    ApiSpec {
        name: "CreateInstanceOffering",
        description: "Create an instance offering: the CPUs and memory of VMs made from it",
        needs_session: true,
        params: &[
            req("name", "offering name"),
            req("cpuNum", "CPUs"),
            req("memorySize", "memory, bytes or with a unit (512M, 2G)"),
            opt("description", "free text"),
        ],
        handler: Handler::Sync(create_offering),
    },
    ApiSpec {
        name: "QueryInstanceOffering",
        description: "Instance offerings",
        needs_session: true,
        params: QUERY_PARAMS,
        handler: Handler::Read(query_offering),
    },
    ApiSpec {
        name: "DeleteInstanceOffering",
        description: "Delete an instance offering (VMs made from it keep their size)",
        needs_session: true,
        params: &[req("uuid", "the offering")],
        handler: Handler::Sync(delete_offering),
    },
    ApiSpec {
        name: "CreateVmInstance",
        description: "Create and start a VM: a host with room is chosen in a cluster attached to \
                      its networks and to primary storage with room; each NIC gets a free IP",
        needs_session: true,
        params: &[
            req("name", "VM name"),
            req("instanceOfferingUuid", "CPUs and memory"),
            req("imageUuid", "a Ready RootVolumeTemplate image"),
            req("l3NetworkUuids", "the L3 networks of its NICs, in order"),
            opt("defaultL3NetworkUuid", "the NIC with the default route (default: the first)"),
            opt("clusterUuid", "only hosts of this cluster"),
            opt("hostUuid", "only this host"),
            opt("userData", "cloud-init user data served by the metadata server (at most 64 KiB)"),
            opt(
                "rootPassword",
                "root's password, set by cloud-init when there is no userData (kept only as a SHA-512 crypt hash)",
            ),
            opt(
                "sshKey",
                "an SSH public key: served as public-keys/0/openssh-key, and as a #cloud-config when there is no userData",
            ),
            opt("description", "free text"),
        ],
        handler: Handler::Async(create_vm),
    },
    ApiSpec {
        name: "QueryVmInstance",
        description: "VMs, with their NICs and volumes",
        needs_session: true,
        params: QUERY_PARAMS,
        handler: Handler::Read(query_vm),
    },
    ApiSpec {
        name: "UpdateVmInstance",
        description: "Rename a VM, change its description or its user data (served from its next start)",
        needs_session: true,
        params: &[
            req("uuid", "the VM"),
            opt("name", "new name"),
            opt("description", "new description"),
            opt("userData", "new user data"),
        ],
        handler: Handler::Sync(update_vm),
    },
    ApiSpec {
        name: "StartVmInstance",
        description: "Start a stopped VM (on its last host when that host has room)",
        needs_session: true,
        params: &[req("uuid", "the VM"), opt("hostUuid", "start it on this host")],
        handler: Handler::Async(start_vm),
    },
    ApiSpec {
        name: "StopVmInstance",
        params: &[
            req("uuid", "the VM"),
            opt(
                "type",
                "grace (default: ACPI shutdown, forced after kvm/vm.gracefulStopTimeout seconds) or cold (at once)",
            ),
        ],
        description: "Stop a running VM; its host's CPU and memory are freed",
        needs_session: true,
        handler: Handler::Async(stop_vm),
    },
    ApiSpec {
        name: "RebootVmInstance",
        description: "Reboot a running VM",
        needs_session: true,
        params: &[req("uuid", "the VM")],
        handler: Handler::Async(reboot_vm),
    },
    ApiSpec {
        name: "DestroyVmInstance",
        description: "Destroy a VM: stop it, delete its root volume, free its IPs; its data volumes \
                      are detached and kept, its EIPs detached and kept",
        needs_session: true,
        params: &[req("uuid", "the VM")],
        handler: Handler::Async(destroy_vm),
    },
    ApiSpec {
        name: "CreateDataVolume",
        description: "Create a data volume; it is made on the primary storage of the VM it is first attached to",
        needs_session: true,
        params: &[
            req("name", "volume name"),
            req("diskSize", "bytes or with a unit (10G)"),
            opt("description", "free text"),
        ],
        handler: Handler::Sync(create_volume),
    },
    ApiSpec {
        name: "AttachDataVolumeToVm",
        description: "Attach a data volume to a running or stopped VM (a running VM gets it at \
                      once, with the kvm/vm.cacheMode of that moment)",
        needs_session: true,
        params: &[req("volumeUuid", "the volume"), req("vmInstanceUuid", "the VM")],
        handler: Handler::Async(attach_volume),
    },
    ApiSpec {
        name: "DetachDataVolumeFromVm",
        description: "Detach a data volume from its VM; the volume is kept",
        needs_session: true,
        params: &[req("uuid", "the volume")],
        handler: Handler::Async(detach_volume),
    },
    ApiSpec {
        name: "QueryVolume",
        description: "Volumes (root and data)",
        needs_session: true,
        params: QUERY_PARAMS,
        handler: Handler::Read(query_volume),
    },
    ApiSpec {
        name: "DeleteDataVolume",
        description: "Delete a detached data volume and its file",
        needs_session: true,
        params: &[req("uuid", "the volume")],
        handler: Handler::Async(delete_volume),
    },
];

pub const OFFERING: Table = Table {
    resource: "InstanceOffering",
    table: "instance_offering",
    fields: &[
        ("uuid", "uuid"),
        ("name", "name"),
        ("description", "description"),
        ("cpuNum", "cpu_num"),
        ("memorySize", "memory_size"),
        ("createDate", "create_date"),
        ("lastOpDate", "last_op_date"),
    ],
    expand: None,
};

pub const VM: Table = Table {
    resource: "VmInstance",
    table: "vm_instance",
    fields: &[
        ("uuid", "uuid"),
        ("name", "name"),
        ("description", "description"),
        ("zoneUuid", "zone_uuid"),
        ("clusterUuid", "cluster_uuid"),
        ("hostUuid", "host_uuid"),
        ("lastHostUuid", "last_host_uuid"),
        ("imageUuid", "image_uuid"),
        ("instanceOfferingUuid", "instance_offering_uuid"),
        ("rootVolumeUuid", "root_volume_uuid"),
        ("defaultL3NetworkUuid", "default_l3_uuid"),
        ("hypervisorType", "hypervisor_type"),
        ("cpuNum", "cpu_num"),
        ("memorySize", "memory_size"),
        ("state", "state"),
        ("createDate", "create_date"),
        ("lastOpDate", "last_op_date"),
    ],
    expand: Some(expand_vm),
};

pub const NIC: Table = Table {
    resource: "VmNic",
    table: "vm_nic",
    fields: &[
        ("uuid", "uuid"),
        ("vmInstanceUuid", "vm_uuid"),
        ("l3NetworkUuid", "l3_uuid"),
        ("ip", "ip"),
        ("mac", "mac"),
        ("netmask", "netmask"),
        ("gateway", "gateway"),
        ("deviceId", "device_id"),
        ("usedIpUuid", "used_ip_uuid"),
        ("createDate", "create_date"),
        ("lastOpDate", "last_op_date"),
    ],
    expand: None,
};

pub const VOLUME: Table = Table {
    resource: "Volume",
    table: "volume",
    fields: &[
        ("uuid", "uuid"),
        ("name", "name"),
        ("description", "description"),
        ("vmInstanceUuid", "vm_uuid"),
        ("primaryStorageUuid", "primary_storage_uuid"),
        ("type", "type"),
        ("format", "format"),
        ("size", "size"),
        ("deviceId", "device_id"),
        ("installPath", "install_path"),
        ("cacheMode", "cache_mode"),
        ("state", "state"),
        ("status", "status"),
        ("createDate", "create_date"),
        ("lastOpDate", "last_op_date"),
    ],
    expand: None,
};

fn by(field: &str, value: &str) -> Query {
    Query {
        conditions: vec![(field.into(), "=".into(), value.into())],
        fields: None,
        limit: None,
        start: None,
    }
}

fn expand_vm(conn: &Connection, m: &mut Map<String, Value>) -> Result<(), ApiError> {
    if let Some(uuid) = m.get("uuid").and_then(Value::as_str).map(str::to_string) {
        m.insert(
            "vmNics".into(),
            Value::from(by("vmInstanceUuid", &uuid).run(conn, &NIC)?),
        );
        m.insert(
            "allVolumes".into(),
            Value::from(by("vmInstanceUuid", &uuid).run(conn, &VOLUME)?),
        );
    }
    Ok(())
}

// ---- instance offerings -----------------------------------------------------------------

fn create_offering(c: &Call) -> Result<Value, ApiError> {
    let cpu = c
        .int("cpuNum", 1, 1024)?
        .ok_or_else(|| ApiError::missing("cpuNum"))?;
    let mem = c
        .size("memorySize")?
        .ok_or_else(|| ApiError::missing("memorySize"))?;
    if mem < 16 << 20 {
        return Err(ApiError::invalid(
            "memorySize",
            "memorySize must be at least 16M",
        ));
    }
    let uuid = crate::new_uuid();
    c.conn.execute(
        "INSERT INTO instance_offering (uuid, name, description, cpu_num, memory_size, create_date, last_op_date)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
        params![uuid, c.required("name")?, c.str("description"), cpu, mem, auth::now()],
    )?;
    Ok(inventory(one(c.conn, &OFFERING, &uuid)?))
}

fn query_offering(c: &Call) -> Result<Value, ApiError> {
    c.query(&OFFERING)
}

fn delete_offering(c: &Call) -> Result<Value, ApiError> {
    let uuid = c.required("uuid")?;
    exists(
        c.conn,
        "instance_offering",
        "InstanceOffering",
        uuid,
        "uuid",
    )?;
    c.conn
        .execute("DELETE FROM instance_offering WHERE uuid = ?1", [uuid])?;
    Ok(json!({}))
}

// ---- placement --------------------------------------------------------------------------

/// What a VM needs from a host.
struct Need<'a> {
    cpu: i64,
    memory: i64,
    /// Room on primary storage for a new root volume (0 when it exists already).
    storage: i64,
    /// The primary storage holding the root volume already, when it exists.
    on_storage: Option<&'a str>,
    l3s: &'a [String],
    cluster: Option<&'a str>,
    host: Option<&'a str>,
    prefer_host: Option<&'a str>,
}

struct Placement {
    host: String,
    cluster: String,
    zone: String,
    hypervisor: String,
    storage: String,
}

fn place(conn: &Connection, need: &Need) -> Result<Placement, ApiError> {
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
fn no_host_reason(conn: &Connection, need: &Need) -> ApiError {
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

fn new_mac(conn: &Connection) -> Result<String, ApiError> {
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

/// The account of the calling session (volumes live under `acct-<account>`).
fn session_account(conn: &Connection, session: Option<&str>) -> Result<String, ApiError> {
    let account: Option<String> = match session {
        Some(s) => conn
            .query_row(
                "SELECT account_uuid FROM session WHERE uuid = ?1",
                [s],
                |r| r.get(0),
            )
            .optional()?,
        None => None,
    };
    account.ok_or_else(|| ApiError::unauthorized("the session is not valid"))
}

fn cache_mode(node: &Node, conn: &Connection) -> Result<String, ApiError> {
    globalconfig::value(conn, &node.release, "kvm", "vm.cacheMode")
}

// ---- specs for the agent ----------------------------------------------------------------

pub fn nic_specs(conn: &Connection, vm: &str) -> Result<Vec<NicSpec>, ApiError> {
    let mut nics: Vec<NicSpec> = {
        let mut st = conn.prepare_cached(
            "SELECT n.uuid, n.l3_uuid, n.mac, n.ip, n.netmask, n.gateway, n.device_id, l2.physical_interface, l3.dns_domain
               FROM vm_nic n JOIN l3_network l3 ON l3.uuid = n.l3_uuid JOIN l2_network l2 ON l2.uuid = l3.l2_uuid
              WHERE n.vm_uuid = ?1 ORDER BY n.device_id",
        )?;
        let rows = st.query_map([vm], |r| {
            Ok(NicSpec {
                uuid: r.get(0)?,
                l3_network_uuid: r.get(1)?,
                mac: r.get(2)?,
                ip: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
                netmask: r.get::<_, Option<String>>(4)?.unwrap_or_default(),
                gateway: r.get::<_, Option<String>>(5)?.unwrap_or_default(),
                device_id: r.get(6)?,
                physical_interface: r.get(7)?,
                dns_domain: r.get(8)?,
                services: Vec::new(),
                dhcp_server_ip: None,
            })
        })?;
        rows.collect::<Result<_, _>>()?
    };
    for nic in &mut nics {
        nic.services = l3_services(conn, &nic.l3_network_uuid)?;
        nic.dhcp_server_ip = dhcp_ip(conn, &nic.l3_network_uuid)?;
    }
    Ok(nics)
}

fn disk_spec(
    conn: &Connection,
    node: &Node,
    volume: &str,
    cache: &str,
) -> Result<DiskSpec, ApiError> {
    let (vtype, path, size, format, dev, image): (
        String,
        Option<String>,
        i64,
        String,
        Option<i64>,
        Option<String>,
    ) = conn.query_row(
        "SELECT v.type, v.install_path, v.size, v.format, v.device_id,
                    (SELECT vm.image_uuid FROM vm_instance vm WHERE vm.root_volume_uuid = v.uuid)
               FROM volume v WHERE v.uuid = ?1",
        [volume],
        |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        },
    )?;
    let ps_url: Option<String> = conn
        .query_row(
            "SELECT p.url FROM volume v JOIN primary_storage p ON p.uuid = v.primary_storage_uuid WHERE v.uuid = ?1",
            [volume],
            |r| r.get(0),
        )
        .optional()?;
    let image = image.filter(|_| vtype == "Root");
    let image_uuid = image.clone();
    let (image_url, image_sha256, image_format) = match image {
        Some(img) => {
            let (sha, fmt): (Option<String>, Option<String>) = conn
                .query_row(
                    "SELECT sha256sum, format FROM image WHERE uuid = ?1",
                    [&img],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?
                .unwrap_or((None, None));
            (Some(node.image_url(&img)), sha, fmt)
        }
        None => (None, None, None),
    };
    Ok(DiskSpec {
        volume_uuid: volume.to_string(),
        r#type: vtype,
        install_path: path.unwrap_or_default(),
        size,
        format,
        device_id: dev.unwrap_or(0),
        image_url,
        image_sha256,
        image_format,
        image_uuid,
        primary_storage_url: ps_url,
        cache_mode: cache.to_string(),
    })
}

/// What the metadata server tells the VM about itself.
fn vm_metadata(
    conn: &Connection,
    node: &Node,
    vm: &str,
) -> Result<zstack_common::agent_proto::VmMetadata, ApiError> {
    let (name, zone, ssh_key, root_password_hash): (
        String,
        Option<String>,
        Option<String>,
        Option<String>,
    ) = conn.query_row(
        "SELECT v.name, z.name, v.ssh_key, v.root_password_hash FROM vm_instance v
           LEFT JOIN zone z ON z.uuid = v.zone_uuid WHERE v.uuid = ?1",
        [vm],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    let token_required =
        globalconfig::value(conn, &node.release, "vm", "metadata.tokenRequired")? == "true";
    Ok(zstack_common::agent_proto::VmMetadata {
        hostname: name,
        availability_zone: zone.unwrap_or_default(),
        ssh_key,
        root_password_hash,
        token_required,
    })
}

pub fn vm_spec(conn: &Connection, node: &Node, vm: &str) -> Result<VmSpec, ApiError> {
    let (name, cpu, mem, root, user_data): (String, i64, i64, Option<String>, Option<String>) =
        conn.query_row(
            "SELECT name, cpu_num, memory_size, root_volume_uuid, user_data FROM vm_instance WHERE uuid = ?1",
            [vm],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )?;
    let root = root.ok_or_else(|| ApiError::internal(format!("VM {vm} has no root volume")))?;
    let cache = cache_mode(node, conn)?;
    let data: Vec<String> = {
        let mut st = conn.prepare_cached(
            "SELECT uuid FROM volume WHERE vm_uuid = ?1 AND type = 'Data' ORDER BY device_id",
        )?;
        let rows = st.query_map([vm], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    Ok(VmSpec {
        uuid: vm.to_string(),
        name,
        cpu_num: cpu,
        memory_size: mem,
        root_volume: disk_spec(conn, node, &root, &cache)?,
        data_volumes: data
            .iter()
            .map(|d| disk_spec(conn, node, d, &cache))
            .collect::<Result<_, _>>()?,
        nics: nic_specs(conn, vm)?,
        user_data,
        metadata: vm_metadata(conn, node, vm)?,
    })
}

/// The EIPs attached to the VM's NICs, as the host applies them.
pub fn eip_specs_of_vm(conn: &Connection, vm: &str) -> Result<Vec<EipSpec>, ApiError> {
    let eips: Vec<String> = {
        let mut st = conn.prepare_cached(
            "SELECT e.uuid FROM eip e JOIN vm_nic n ON n.uuid = e.vm_nic_uuid WHERE n.vm_uuid = ?1",
        )?;
        let rows = st.query_map([vm], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    eips.iter().map(|e| super::eip::eip_spec(conn, e)).collect()
}

// ---- VM lifecycle -----------------------------------------------------------------------

struct VmRow {
    state: String,
    host: Option<String>,
    last_host: Option<String>,
    cpu: i64,
    memory: i64,
    root: Option<String>,
}

fn vm_row(conn: &Connection, uuid: &str) -> Result<VmRow, ApiError> {
    conn.query_row(
        "SELECT state, host_uuid, last_host_uuid, cpu_num, memory_size, root_volume_uuid
           FROM vm_instance WHERE uuid = ?1",
        [uuid],
        |r| {
            Ok(VmRow {
                state: r.get(0)?,
                host: r.get(1)?,
                last_host: r.get(2)?,
                cpu: r.get(3)?,
                memory: r.get(4)?,
                root: r.get(5)?,
            })
        },
    )
    .optional()?
    .ok_or_else(|| ApiError::not_found("VmInstance", uuid))
}

fn expect_state(uuid: &str, row: &VmRow, allowed: &[&str], what: &str) -> Result<(), ApiError> {
    if allowed.contains(&row.state.as_str()) {
        return Ok(());
    }
    Err(ApiError::wrong_state(format!(
        "VM {uuid} is {}; {what} needs it {}",
        row.state,
        allowed.join(" or ")
    ))
    .field("uuid"))
}

fn set_vm_state(conn: &Connection, uuid: &str, state: &str) -> Result<(), ApiError> {
    conn.prepare_cached("UPDATE vm_instance SET state = ?2, last_op_date = ?3 WHERE uuid = ?1")?
        .execute(params![uuid, state, auth::now()])?;
    Ok(())
}

fn create_vm(c: &Call) -> Result<Job, ApiError> {
    let name = c.required("name")?;
    let offering = c.required("instanceOfferingUuid")?;
    let (cpu, mem): (i64, i64) = c
        .conn
        .query_row(
            "SELECT cpu_num, memory_size FROM instance_offering WHERE uuid = ?1",
            [offering],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?
        .ok_or_else(|| {
            ApiError::not_found("InstanceOffering", offering).field("instanceOfferingUuid")
        })?;
    let image = c.required("imageUuid")?;
    let (img_status, media, img_size): (String, String, i64) = c
        .conn
        .query_row(
            "SELECT status, media_type, size FROM image WHERE uuid = ?1",
            [image],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?
        .ok_or_else(|| ApiError::not_found("Image", image).field("imageUuid"))?;
    if img_status != "Ready" {
        return Err(
            ApiError::wrong_state(format!("image {image} is {img_status}, not Ready"))
                .field("imageUuid"),
        );
    }
    if media != "RootVolumeTemplate" {
        return Err(ApiError::invalid(
            "imageUuid",
            format!("image {image} is a {media}; a VM needs a RootVolumeTemplate image"),
        ));
    }
    let l3s = c.list("l3NetworkUuids")?;
    if l3s.is_empty() {
        return Err(ApiError::missing("l3NetworkUuids"));
    }
    for (i, l3) in l3s.iter().enumerate() {
        exists(c.conn, "l3_network", "L3Network", l3, "l3NetworkUuids")?;
        if l3s[..i].contains(l3) {
            return Err(ApiError::invalid(
                "l3NetworkUuids",
                format!("L3 network {l3} is given twice"),
            ));
        }
    }
    let default_l3 = match c.str("defaultL3NetworkUuid") {
        Some(d) if !l3s.iter().any(|l| l == d) => {
            return Err(ApiError::invalid(
                "defaultL3NetworkUuid",
                format!("{d} is not one of l3NetworkUuids"),
            ))
        }
        Some(d) => d.to_string(),
        None => l3s[0].clone(),
    };
    if let Some(cl) = c.str("clusterUuid") {
        exists(c.conn, "cluster", "Cluster", cl, "clusterUuid")?;
    }
    if let Some(h) = c.str("hostUuid") {
        exists(c.conn, "host", "Host", h, "hostUuid")?;
    }
    let user_data = c.str("userData");
    // Only the hash is kept: cloud-init sets a password from it (chpasswd, type hash).
    let root_password_hash = match c.str("rootPassword") {
        None => None,
        Some(p) if p.len() < 8 || p.chars().any(char::is_whitespace) => {
            return Err(ApiError::invalid(
                "rootPassword",
                "rootPassword must have at least 8 characters and no spaces",
            ))
        }
        Some(p) => Some(
            sha_crypt::sha512_simple(p, &sha_crypt::Sha512Params::default())
                .map_err(|e| ApiError::internal(format!("cannot hash rootPassword: {e:?}")))?,
        ),
    };
    if user_data.is_some_and(|u| u.len() > MAX_USER_DATA) {
        return Err(ApiError::invalid(
            "userData",
            "userData is larger than 64 KiB",
        ));
    }

    let tx = c.conn.unchecked_transaction()?;
    let spot = place(
        &tx,
        &Need {
            cpu,
            memory: mem,
            storage: img_size,
            on_storage: None,
            l3s: &l3s,
            cluster: c.str("clusterUuid"),
            host: c.str("hostUuid"),
            prefer_host: None,
        },
    )?;
    let ps_url: String = tx.query_row(
        "SELECT url FROM primary_storage WHERE uuid = ?1",
        [&spot.storage],
        |r| r.get(0),
    )?;
    let vm = crate::new_uuid();
    let root = crate::new_uuid();
    let ts = auth::now();
    tx.prepare_cached(
        "INSERT INTO vm_instance (uuid, name, description, zone_uuid, cluster_uuid, host_uuid, last_host_uuid,
                                  image_uuid, instance_offering_uuid, root_volume_uuid, default_l3_uuid,
                                  hypervisor_type, cpu_num, memory_size, state, user_data, create_date, last_op_date,
                                  ssh_key, root_password_hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, 'Starting', ?14, ?15, ?15, ?16, ?17)",
    )?
    .execute(params![
        vm, name, c.str("description"), spot.zone, spot.cluster, spot.host, image, offering, root,
        default_l3, spot.hypervisor, cpu, mem, user_data, ts, c.str("sshKey"), root_password_hash
    ])?;
    // The root volume is a qcow2 overlay on the image cached on the primary storage, whatever the
    // image's own format; the layout is the original's.
    let account = session_account(&tx, c.session.as_deref())?;
    tx.prepare_cached(
        "INSERT INTO volume (uuid, vm_uuid, name, type, install_path, size, state, status, device_id, format,
                             primary_storage_uuid, create_date, last_op_date)
         VALUES (?1, ?2, ?3, 'Root', ?4, ?5, 'Enabled', 'Ready', 0, ?6, ?7, ?8, ?8)",
    )?
    .execute(params![
        root,
        vm,
        format!("ROOT-for-{name}"),
        format!("{ps_url}/rootVolumes/acct-{account}/vol-{root}/{root}.qcow2"),
        img_size,
        "qcow2",
        spot.storage,
        ts
    ])?;
    for (i, l3) in l3s.iter().enumerate() {
        let nic = crate::new_uuid();
        ensure_dhcp_ip(&tx, l3)?;
        let ip = allocate_ip(&tx, l3, "VmNic", &nic, None)?;
        tx.prepare_cached(
            "INSERT INTO vm_nic (uuid, vm_uuid, l3_uuid, used_ip_uuid, ip, mac, netmask, gateway, device_id, create_date, last_op_date)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10)",
        )?
        .execute(params![nic, vm, l3, ip.uuid, ip.ip, new_mac(&tx)?, ip.netmask, ip.gateway, i as i64, ts])?;
    }
    tx.prepare_cached(
        "UPDATE host SET available_cpu = available_cpu - ?2, available_memory = available_memory - ?3 WHERE uuid = ?1",
    )?
    .execute(params![spot.host, cpu, mem])?;
    tx.prepare_cached(
        "UPDATE primary_storage SET available_capacity = available_capacity - ?2 WHERE uuid = ?1",
    )?
    .execute(params![spot.storage, img_size])?;
    tx.commit()?;

    let host = spot.host;
    Ok(Job::new(Some(vm.clone()), move |node: &Node| {
        match run_on_host(node, &vm, &host) {
            Ok(()) => {
                let conn = node.db()?;
                set_vm_state(&conn, &vm, "Running")?;
                Ok(inventory(one(&conn, &VM, &vm)?))
            }
            Err(e) => {
                // Best effort: the host may have made part of the VM before it failed.
                let cleanup = {
                    let conn = node.db()?;
                    let hrow = HostRow::load(&conn, &host)?;
                    let req = DestroyVm {
                        uuid: vm.clone(),
                        delete_paths: root_paths(&conn, &vm)?,
                        nics: nic_specs(&conn, &vm)?,
                    };
                    (hrow, req)
                };
                if let Ok(agent) = node.agent(&cleanup.0) {
                    let _ = agent.destroy_vm(&cleanup.1);
                }
                remove_vm_rows(&*node.db()?, &vm)?;
                Err(ApiError {
                    message: format!("the VM was not created: {}", e.message),
                    ..e
                })
            }
        }
    }))
}

fn root_paths(conn: &Connection, vm: &str) -> Result<Vec<String>, ApiError> {
    let mut st = conn.prepare_cached(
        "SELECT install_path FROM volume WHERE vm_uuid = ?1 AND type = 'Root' AND install_path IS NOT NULL",
    )?;
    let rows = st.query_map([vm], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Starts the VM on the host and applies its EIPs there.
fn run_on_host(node: &Node, vm: &str, host: &str) -> Result<(), ApiError> {
    let (hrow, spec, eips) = {
        let conn = node.db()?;
        (
            HostRow::load(&conn, host)?,
            vm_spec(&conn, node, vm)?,
            eip_specs_of_vm(&conn, vm)?,
        )
    };
    let agent = node.agent(&hrow)?;
    agent.start_vm(&spec)?;
    for e in &eips {
        agent.apply_eip(e)?;
    }
    // The cache mode the host used, per volume, for QueryVmInstance / QueryVolume.
    node.db()?.execute(
        "UPDATE volume SET cache_mode = ?2 WHERE vm_uuid = ?1",
        params![vm, spec.root_volume.cache_mode],
    )?;
    Ok(())
}

/// Deletes a VM's rows and gives back what it held: IPs, root volume, capacity. Data volumes and
/// EIPs are detached and kept.
fn remove_vm_rows(conn: &Connection, vm: &str) -> Result<(), ApiError> {
    let row = vm_row(conn, vm)?;
    let tx = conn.unchecked_transaction()?;
    tx.execute(
        "UPDATE eip SET vm_nic_uuid = NULL, guest_ip = NULL, last_op_date = ?2
          WHERE vm_nic_uuid IN (SELECT uuid FROM vm_nic WHERE vm_uuid = ?1)",
        params![vm, auth::now()],
    )?;
    tx.execute(
        "DELETE FROM used_ip WHERE owner_type = 'VmNic' AND owner_uuid IN (SELECT uuid FROM vm_nic WHERE vm_uuid = ?1)",
        [vm],
    )?;
    tx.execute("DELETE FROM vm_nic WHERE vm_uuid = ?1", [vm])?;
    tx.execute(
        "UPDATE volume SET vm_uuid = NULL, device_id = NULL, last_op_date = ?2 WHERE vm_uuid = ?1 AND type = 'Data'",
        params![vm, auth::now()],
    )?;
    let roots: Vec<(Option<String>, i64)> = {
        let mut st = tx.prepare(
            "SELECT primary_storage_uuid, size FROM volume WHERE vm_uuid = ?1 AND type = 'Root'",
        )?;
        let rows = st.query_map([vm], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    for (ps, size) in roots.iter() {
        if let Some(ps) = ps {
            tx.execute(
                "UPDATE primary_storage SET available_capacity = min(total_capacity, available_capacity + ?2) WHERE uuid = ?1",
                params![ps, size],
            )?;
        }
    }
    tx.execute(
        "DELETE FROM volume WHERE vm_uuid = ?1 AND type = 'Root'",
        [vm],
    )?;
    tx.execute("DELETE FROM vm_instance WHERE uuid = ?1", [vm])?;
    if let Some(h) = &row.host {
        recompute_capacity(&tx, h)?;
    }
    tx.commit()?;
    Ok(())
}

fn query_vm(c: &Call) -> Result<Value, ApiError> {
    c.query(&VM)
}

fn update_vm(c: &Call) -> Result<Value, ApiError> {
    let uuid = c.required("uuid")?;
    exists(c.conn, "vm_instance", "VmInstance", uuid, "uuid")?;
    if c.str("userData").is_some_and(|u| u.len() > MAX_USER_DATA) {
        return Err(ApiError::invalid(
            "userData",
            "userData is larger than 64 KiB",
        ));
    }
    c.conn.execute(
        "UPDATE vm_instance SET name = coalesce(?2, name), description = coalesce(?3, description),
                user_data = coalesce(?4, user_data), last_op_date = ?5 WHERE uuid = ?1",
        params![
            uuid,
            c.str("name"),
            c.str("description"),
            c.str("userData"),
            auth::now()
        ],
    )?;
    Ok(inventory(one(c.conn, &VM, uuid)?))
}

fn vm_l3s(conn: &Connection, vm: &str) -> Result<Vec<String>, ApiError> {
    let mut st =
        conn.prepare_cached("SELECT l3_uuid FROM vm_nic WHERE vm_uuid = ?1 ORDER BY device_id")?;
    let rows = st.query_map([vm], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn start_vm(c: &Call) -> Result<Job, ApiError> {
    let uuid = c.required("uuid")?.to_string();
    let row = vm_row(c.conn, &uuid).map_err(|e| e.field("uuid"))?;
    expect_state(&uuid, &row, &["Stopped"], "StartVmInstance")?;
    if let Some(h) = c.str("hostUuid") {
        exists(c.conn, "host", "Host", h, "hostUuid")?;
    }
    let root_ps: Option<String> = match &row.root {
        Some(r) => c
            .conn
            .query_row(
                "SELECT primary_storage_uuid FROM volume WHERE uuid = ?1",
                [r],
                |r| r.get(0),
            )
            .optional()?
            .flatten(),
        None => None,
    };
    let l3s = vm_l3s(c.conn, &uuid)?;
    let tx = c.conn.unchecked_transaction()?;
    let spot = place(
        &tx,
        &Need {
            cpu: row.cpu,
            memory: row.memory,
            storage: 0,
            on_storage: root_ps.as_deref(),
            l3s: &l3s,
            cluster: None,
            host: c.str("hostUuid"),
            prefer_host: row.last_host.as_deref(),
        },
    )?;
    for l3 in &l3s {
        ensure_dhcp_ip(&tx, l3)?;
    }
    tx.execute(
        "UPDATE vm_instance SET state = 'Starting', host_uuid = ?2, last_host_uuid = ?2, cluster_uuid = ?3,
                last_op_date = ?4 WHERE uuid = ?1",
        params![uuid, spot.host, spot.cluster, auth::now()],
    )?;
    recompute_capacity(&tx, &spot.host)?;
    tx.commit()?;
    let host = spot.host;
    Ok(Job::new(Some(uuid.clone()), move |node: &Node| {
        let outcome = run_on_host(node, &uuid, &host);
        let conn = node.db()?;
        match outcome {
            Ok(()) => {
                set_vm_state(&conn, &uuid, "Running")?;
                Ok(inventory(one(&conn, &VM, &uuid)?))
            }
            Err(e) => {
                conn.execute(
                    "UPDATE vm_instance SET state = 'Stopped', host_uuid = NULL, last_op_date = ?2 WHERE uuid = ?1",
                    params![uuid, auth::now()],
                )?;
                recompute_capacity(&conn, &host)?;
                Err(ApiError {
                    message: format!("the VM did not start: {}", e.message),
                    ..e
                })
            }
        }
    }))
}

fn stop_vm(c: &Call) -> Result<Job, ApiError> {
    let uuid = c.required("uuid")?.to_string();
    let row = vm_row(c.conn, &uuid).map_err(|e| e.field("uuid"))?;
    expect_state(
        &uuid,
        &row,
        &["Running", "Paused", "Unknown"],
        "StopVmInstance",
    )?;
    let host = row
        .host
        .clone()
        .ok_or_else(|| ApiError::wrong_state(format!("VM {uuid} is on no host")).field("uuid"))?;
    let force = c.one_of("type", &["grace", "cold"], Some("grace"))? == "cold";
    let timeout_secs: u64 =
        globalconfig::value(c.conn, &c.node.release, "kvm", "vm.gracefulStopTimeout")?
            .parse()
            .unwrap_or(60);
    let before = row.state.clone();
    set_vm_state(c.conn, &uuid, "Stopping")?;
    Ok(Job::new(Some(uuid.clone()), move |node: &Node| {
        let outcome = (|| -> Result<(), ApiError> {
            let (hrow, eips) = {
                let conn = node.db()?;
                (HostRow::load(&conn, &host)?, eip_specs_of_vm(&conn, &uuid)?)
            };
            let agent = node.agent(&hrow)?;
            for e in &eips {
                agent.remove_eip(e)?;
            }
            agent.stop_vm(&StopVm {
                uuid: uuid.clone(),
                force,
                timeout_secs,
            })?;
            Ok(())
        })();
        let conn = node.db()?;
        match outcome {
            Ok(()) => {
                conn.execute(
                    "UPDATE vm_instance SET state = 'Stopped', host_uuid = NULL, last_host_uuid = ?2,
                            last_op_date = ?3 WHERE uuid = ?1",
                    params![uuid, host, auth::now()],
                )?;
                recompute_capacity(&conn, &host)?;
                Ok(inventory(one(&conn, &VM, &uuid)?))
            }
            Err(e) => {
                set_vm_state(&conn, &uuid, &before)?;
                Err(ApiError {
                    message: format!("the VM was not stopped: {}", e.message),
                    ..e
                })
            }
        }
    }))
}

fn reboot_vm(c: &Call) -> Result<Job, ApiError> {
    let uuid = c.required("uuid")?.to_string();
    let row = vm_row(c.conn, &uuid).map_err(|e| e.field("uuid"))?;
    expect_state(&uuid, &row, &["Running"], "RebootVmInstance")?;
    let host = row
        .host
        .clone()
        .ok_or_else(|| ApiError::wrong_state(format!("VM {uuid} is on no host")).field("uuid"))?;
    set_vm_state(c.conn, &uuid, "Rebooting")?;
    Ok(Job::new(Some(uuid.clone()), move |node: &Node| {
        let hrow = HostRow::load(&*node.db()?, &host)?;
        let outcome = node.agent(&hrow).and_then(|a| Ok(a.reboot_vm(&uuid)?));
        let conn = node.db()?;
        set_vm_state(&conn, &uuid, "Running")?;
        outcome.map_err(|e| ApiError {
            message: format!("the VM was not rebooted: {}", e.message),
            ..e
        })?;
        Ok(inventory(one(&conn, &VM, &uuid)?))
    }))
}

/// A connected host that reaches `ps` (any host of a cluster it is attached to).
fn host_reaching(conn: &Connection, ps: &str) -> Result<Option<HostRow>, ApiError> {
    let h: Option<String> = conn
        .query_row(
            "SELECT h.uuid FROM host h JOIN cluster_primary_storage cp ON cp.cluster_uuid = h.cluster_uuid
              WHERE cp.primary_storage_uuid = ?1 AND h.status = 'Connected' ORDER BY h.rowid LIMIT 1",
            [ps],
            |r| r.get(0),
        )
        .optional()?;
    h.map(|u| HostRow::load(conn, &u)).transpose()
}

fn destroy_vm(c: &Call) -> Result<Job, ApiError> {
    let uuid = c.required("uuid")?.to_string();
    let row = vm_row(c.conn, &uuid).map_err(|e| e.field("uuid"))?;
    expect_state(
        &uuid,
        &row,
        &["Running", "Stopped", "Paused", "Unknown", "Error"],
        "DestroyVmInstance",
    )?;
    let before = row.state.clone();
    set_vm_state(c.conn, &uuid, "Destroying")?;
    Ok(Job::new(Some(uuid.clone()), move |node: &Node| {
        let outcome = (|| -> Result<(), ApiError> {
            let (host, req, eips) = {
                let conn = node.db()?;
                let host = match &row.host {
                    Some(h) => Some(HostRow::load(&conn, h)?),
                    None => {
                        let ps: Option<String> = match &row.root {
                            Some(r) => conn
                                .query_row(
                                    "SELECT primary_storage_uuid FROM volume WHERE uuid = ?1",
                                    [r],
                                    |r| r.get(0),
                                )
                                .optional()?
                                .flatten(),
                            None => None,
                        };
                        match ps {
                            Some(ps) => Some(host_reaching(&conn, &ps)?.ok_or_else(|| {
                                ApiError::wrong_state(format!(
                                    "no connected host reaches primary storage {ps} to delete the VM's root volume; \
                                     reconnect a host of a cluster it is attached to and retry"
                                ))
                            })?),
                            None => None,
                        }
                    }
                };
                let req = DestroyVm {
                    uuid: uuid.clone(),
                    delete_paths: root_paths(&conn, &uuid)?,
                    nics: nic_specs(&conn, &uuid)?,
                };
                (host, req, eip_specs_of_vm(&conn, &uuid)?)
            };
            if let Some(h) = host {
                let agent = node.agent(&h)?;
                if row.host.is_some() {
                    for e in &eips {
                        agent.remove_eip(e)?;
                    }
                }
                agent.destroy_vm(&req)?;
            }
            Ok(())
        })();
        match outcome {
            Ok(()) => {
                remove_vm_rows(&*node.db()?, &uuid)?;
                Ok(json!({}))
            }
            Err(e) => {
                set_vm_state(&*node.db()?, &uuid, &before)?;
                Err(ApiError {
                    message: format!("the VM was not destroyed: {}", e.message),
                    ..e
                })
            }
        }
    }))
}

/// VMs a restart cut off in `Destroying` go back to what their host says at reconnect; until
/// then they are `Unknown`.
pub fn reset_interrupted(conn: &Connection) -> Result<usize, ApiError> {
    Ok(conn.execute(
        "UPDATE vm_instance SET state = CASE WHEN host_uuid IS NULL THEN 'Stopped' ELSE 'Unknown' END,
                last_op_date = ?1
          WHERE state IN ('Starting', 'Stopping', 'Rebooting', 'Destroying')",
        [auth::now()],
    )?)
}

// ---- volumes ----------------------------------------------------------------------------

fn create_volume(c: &Call) -> Result<Value, ApiError> {
    let size = c
        .size("diskSize")?
        .ok_or_else(|| ApiError::missing("diskSize"))?;
    let uuid = crate::new_uuid();
    c.conn.execute(
        "INSERT INTO volume (uuid, name, description, type, size, state, status, format, create_date, last_op_date)
         VALUES (?1, ?2, ?3, 'Data', ?4, 'Enabled', 'NotInstantiated', 'qcow2', ?5, ?5)",
        params![uuid, c.required("name")?, c.str("description"), size, auth::now()],
    )?;
    Ok(inventory(one(c.conn, &VOLUME, &uuid)?))
}

fn query_volume(c: &Call) -> Result<Value, ApiError> {
    c.query(&VOLUME)
}

struct VolumeRow {
    vtype: String,
    vm: Option<String>,
    status: String,
    ps: Option<String>,
    size: i64,
    path: Option<String>,
}

fn volume_row(conn: &Connection, uuid: &str, field: &str) -> Result<VolumeRow, ApiError> {
    conn.query_row(
        "SELECT type, vm_uuid, status, primary_storage_uuid, size, install_path FROM volume WHERE uuid = ?1",
        [uuid],
        |r| {
            Ok(VolumeRow {
                vtype: r.get(0)?,
                vm: r.get(1)?,
                status: r.get(2)?,
                ps: r.get(3)?,
                size: r.get(4)?,
                path: r.get(5)?,
            })
        },
    )
    .optional()?
    .ok_or_else(|| ApiError::not_found("Volume", uuid).field(field))
}

fn attach_volume(c: &Call) -> Result<Job, ApiError> {
    let vol = c.required("volumeUuid")?.to_string();
    let vm = c.required("vmInstanceUuid")?.to_string();
    let v = volume_row(c.conn, &vol, "volumeUuid")?;
    if v.vtype != "Data" {
        return Err(ApiError::invalid(
            "volumeUuid",
            format!("volume {vol} is a root volume"),
        ));
    }
    if let Some(other) = &v.vm {
        return Err(ApiError::in_use(format!(
            "volume {vol} is attached to VM {other}; detach it first"
        ))
        .field("volumeUuid"));
    }
    let row = vm_row(c.conn, &vm).map_err(|e| e.field("vmInstanceUuid"))?;
    if !["Running", "Stopped"].contains(&row.state.as_str()) {
        return Err(ApiError::wrong_state(format!(
            "VM {vm} is {}; attach needs it Running or Stopped",
            row.state
        ))
        .field("vmInstanceUuid"));
    }
    let root_ps: String = c.conn.query_row(
        "SELECT primary_storage_uuid FROM volume WHERE uuid = ?1",
        [row.root.as_deref().unwrap_or("")],
        |r| r.get(0),
    )?;
    let account = session_account(c.conn, c.session.as_deref())?;
    let tx = c.conn.unchecked_transaction()?;
    if v.status == "NotInstantiated" {
        let (url, avail): (String, i64) = tx.query_row(
            "SELECT url, available_capacity FROM primary_storage WHERE uuid = ?1",
            [&root_ps],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        if avail < v.size {
            return Err(ApiError::no_capacity(format!(
                "primary storage {root_ps} of VM {vm} has {} MiB free; the volume needs {} MiB",
                avail >> 20,
                v.size >> 20
            ))
            .field("volumeUuid"));
        }
        tx.execute(
            "UPDATE volume SET status = 'Ready', primary_storage_uuid = ?2, install_path = ?3 WHERE uuid = ?1",
            params![vol, root_ps, format!("{url}/dataVolumes/acct-{account}/vol-{vol}/{vol}.qcow2")],
        )?;
        tx.execute(
            "UPDATE primary_storage SET available_capacity = available_capacity - ?2 WHERE uuid = ?1",
            params![root_ps, v.size],
        )?;
    } else if v.ps.as_deref() != Some(root_ps.as_str()) {
        return Err(ApiError::invalid(
            "volumeUuid",
            format!(
                "volume {vol} is on primary storage {:?}, VM {vm} on {root_ps}",
                v.ps
            ),
        ));
    }
    let dev: i64 = tx.query_row(
        "SELECT coalesce(max(device_id), 0) + 1 FROM volume WHERE vm_uuid = ?1",
        [&vm],
        |r| r.get(0),
    )?;
    tx.execute(
        "UPDATE volume SET vm_uuid = ?2, device_id = ?3, last_op_date = ?4 WHERE uuid = ?1",
        params![vol, vm, dev, auth::now()],
    )?;
    tx.commit()?;
    let host = row.host.filter(|_| row.state == "Running");
    Ok(Job::new(Some(vol.clone()), move |node: &Node| {
        if let Some(host) = host {
            let outcome = (|| -> Result<(), ApiError> {
                let (hrow, req) = {
                    let conn = node.db()?;
                    let cache = cache_mode(node, &conn)?;
                    (
                        HostRow::load(&conn, &host)?,
                        VolumeAttachment {
                            vm_uuid: vm.clone(),
                            disk: disk_spec(&conn, node, &vol, &cache)?,
                        },
                    )
                };
                node.agent(&hrow)?.attach_volume(&req)?;
                node.db()?.execute(
                    "UPDATE volume SET cache_mode = ?2 WHERE uuid = ?1",
                    params![vol, req.disk.cache_mode],
                )?;
                Ok(())
            })();
            if let Err(e) = outcome {
                node.db()?.execute(
                    "UPDATE volume SET vm_uuid = NULL, device_id = NULL WHERE uuid = ?1",
                    [&vol],
                )?;
                return Err(ApiError {
                    message: format!("the volume was not attached: {}", e.message),
                    ..e
                });
            }
        }
        Ok(inventory(one(&*node.db()?, &VOLUME, &vol)?))
    }))
}

fn detach_volume(c: &Call) -> Result<Job, ApiError> {
    let vol = c.required("uuid")?.to_string();
    let v = volume_row(c.conn, &vol, "uuid")?;
    if v.vtype != "Data" {
        return Err(ApiError::invalid(
            "uuid",
            format!("volume {vol} is a root volume; it cannot be detached"),
        ));
    }
    let vm = v.vm.ok_or_else(|| {
        ApiError::wrong_state(format!("volume {vol} is not attached")).field("uuid")
    })?;
    let row = vm_row(c.conn, &vm)?;
    let host = row.host.filter(|_| row.state == "Running");
    Ok(Job::new(Some(vol.clone()), move |node: &Node| {
        if let Some(host) = host {
            let (hrow, req) = {
                let conn = node.db()?;
                let cache = cache_mode(node, &conn)?;
                (
                    HostRow::load(&conn, &host)?,
                    VolumeAttachment {
                        vm_uuid: vm.clone(),
                        disk: disk_spec(&conn, node, &vol, &cache)?,
                    },
                )
            };
            node.agent(&hrow)?.detach_volume(&req).map_err(|e| {
                let e = ApiError::from(e);
                ApiError {
                    message: format!("the volume is still attached: {}", e.message),
                    ..e
                }
            })?;
        }
        let conn = node.db()?;
        conn.execute(
            "UPDATE volume SET vm_uuid = NULL, device_id = NULL, last_op_date = ?2 WHERE uuid = ?1",
            params![vol, auth::now()],
        )?;
        Ok(inventory(one(&conn, &VOLUME, &vol)?))
    }))
}

fn delete_volume(c: &Call) -> Result<Job, ApiError> {
    let vol = c.required("uuid")?.to_string();
    let v = volume_row(c.conn, &vol, "uuid")?;
    if v.vtype != "Data" {
        return Err(ApiError::invalid(
            "uuid",
            format!("volume {vol} is a root volume; destroy its VM instead"),
        ));
    }
    if let Some(vm) = &v.vm {
        return Err(ApiError::in_use(format!(
            "volume {vol} is attached to VM {vm}; detach it first"
        ))
        .field("uuid"));
    }
    Ok(Job::new(Some(vol.clone()), move |node: &Node| {
        if let (Some(ps), Some(path)) = (&v.ps, &v.path) {
            let host = host_reaching(&*node.db()?, ps)?.ok_or_else(|| {
                ApiError::wrong_state(format!(
                    "no connected host reaches primary storage {ps} to delete the volume's file; \
                     reconnect a host and retry"
                ))
            })?;
            node.agent(&host)?.delete_volume(path)?;
        }
        let conn = node.db()?;
        let tx = conn.unchecked_transaction()?;
        if let Some(ps) = &v.ps {
            tx.execute(
                "UPDATE primary_storage SET available_capacity = min(total_capacity, available_capacity + ?2) WHERE uuid = ?1",
                params![ps, v.size],
            )?;
        }
        tx.execute("DELETE FROM volume WHERE uuid = ?1", [&vol])?;
        tx.commit()?;
        Ok(json!({}))
    }))
}

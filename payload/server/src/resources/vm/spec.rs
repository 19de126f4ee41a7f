//! What the agent is sent about a VM: its disks, NICs, metadata and EIPs.

use rusqlite::{Connection, OptionalExtension};
use zstack_common::agent_proto::{DiskSpec, EipSpec, NicSpec, VmSpec};

use crate::error::ApiError;
use crate::globalconfig;
use crate::resources::network::{dhcp_ip, l3_services};
use crate::Node;

pub(super) fn cache_mode(node: &Node, conn: &Connection) -> Result<String, ApiError> {
    globalconfig::value(conn, &node.release, "kvm", "vm.cacheMode")
}

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

pub(super) fn disk_spec(
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
pub(super) fn vm_metadata(
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
    eips.iter()
        .map(|e| crate::resources::eip::eip_spec(conn, e))
        .collect()
}

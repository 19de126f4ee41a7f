//! The VM lifecycle: create, start, stop, reboot, destroy, and what a restart cut off.

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Value};
use zstack_common::agent_proto::{DestroyVm, StopVm};

use super::placement::{new_mac, place, Need};
use super::spec::{eip_specs_of_vm, nic_specs, vm_spec};
use super::{session_account, MAX_USER_DATA, VM};
use crate::api::{exists, inventory, one, Call};
use crate::auth;
use crate::error::ApiError;
use crate::globalconfig;
use crate::job::Job;
use crate::resources::host::{recompute_capacity, HostRow};
use crate::resources::network::{allocate_ip, ensure_dhcp_ip};
use crate::Node;

pub(super) struct VmRow {
    pub(super) state: String,
    pub(super) host: Option<String>,
    pub(super) last_host: Option<String>,
    pub(super) cpu: i64,
    pub(super) memory: i64,
    pub(super) root: Option<String>,
}

pub(super) fn vm_row(conn: &Connection, uuid: &str) -> Result<VmRow, ApiError> {
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

pub(super) fn expect_state(
    uuid: &str,
    row: &VmRow,
    allowed: &[&str],
    what: &str,
) -> Result<(), ApiError> {
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

pub(super) fn set_vm_state(conn: &Connection, uuid: &str, state: &str) -> Result<(), ApiError> {
    conn.prepare_cached("UPDATE vm_instance SET state = ?2, last_op_date = ?3 WHERE uuid = ?1")?
        .execute(params![uuid, state, auth::now()])?;
    Ok(())
}

pub(super) fn create_vm(c: &Call) -> Result<Job, ApiError> {
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

pub(super) fn root_paths(conn: &Connection, vm: &str) -> Result<Vec<String>, ApiError> {
    let mut st = conn.prepare_cached(
        "SELECT install_path FROM volume WHERE vm_uuid = ?1 AND type = 'Root' AND install_path IS NOT NULL",
    )?;
    let rows = st.query_map([vm], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Starts the VM on the host and applies its EIPs there.
pub(super) fn run_on_host(node: &Node, vm: &str, host: &str) -> Result<(), ApiError> {
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
pub(super) fn remove_vm_rows(conn: &Connection, vm: &str) -> Result<(), ApiError> {
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

pub(super) fn query_vm(c: &Call) -> Result<Value, ApiError> {
    c.query(&VM)
}

pub(super) fn update_vm(c: &Call) -> Result<Value, ApiError> {
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

pub(super) fn vm_l3s(conn: &Connection, vm: &str) -> Result<Vec<String>, ApiError> {
    let mut st =
        conn.prepare_cached("SELECT l3_uuid FROM vm_nic WHERE vm_uuid = ?1 ORDER BY device_id")?;
    let rows = st.query_map([vm], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(super) fn start_vm(c: &Call) -> Result<Job, ApiError> {
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

pub(super) fn stop_vm(c: &Call) -> Result<Job, ApiError> {
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

pub(super) fn reboot_vm(c: &Call) -> Result<Job, ApiError> {
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
pub(super) fn host_reaching(conn: &Connection, ps: &str) -> Result<Option<HostRow>, ApiError> {
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

pub(super) fn destroy_vm(c: &Call) -> Result<Job, ApiError> {
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

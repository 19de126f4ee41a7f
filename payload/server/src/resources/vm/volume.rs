//! Data volumes: create, attach, detach, delete.

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Value};
use zstack_common::agent_proto::VolumeAttachment;

use super::lifecycle::{host_reaching, vm_row};
use super::spec::{cache_mode, disk_spec};
use super::{session_account, VOLUME};
use crate::api::{inventory, one, Call};
use crate::auth;
use crate::error::ApiError;
use crate::job::Job;
use crate::resources::host::HostRow;
use crate::Node;

pub(super) fn create_volume(c: &Call) -> Result<Value, ApiError> {
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

pub(super) fn query_volume(c: &Call) -> Result<Value, ApiError> {
    c.query(&VOLUME)
}

pub(super) struct VolumeRow {
    pub(super) vtype: String,
    pub(super) vm: Option<String>,
    pub(super) status: String,
    pub(super) ps: Option<String>,
    pub(super) size: i64,
    pub(super) path: Option<String>,
}

pub(super) fn volume_row(
    conn: &Connection,
    uuid: &str,
    field: &str,
) -> Result<VolumeRow, ApiError> {
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

pub(super) fn attach_volume(c: &Call) -> Result<Job, ApiError> {
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

pub(super) fn detach_volume(c: &Call) -> Result<Job, ApiError> {
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

pub(super) fn delete_volume(c: &Call) -> Result<Job, ApiError> {
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

//! Elastic IPs: a VIP bound to a VM's NIC. The host running the VM applies it (DNAT/SNAT in a
//! namespace per VIP); attach, detach, VM start, stop and destroy keep the host equal to the DB.

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Value};
use zstack_common::agent_proto::EipSpec;

use crate::api::{exists, inventory, one, opt, req, ApiSpec, Call, Handler, QUERY_PARAMS};
use crate::auth;
use crate::error::ApiError;
use crate::job::Job;
use crate::query::Table;
use crate::resources::host::HostRow;
use crate::resources::network::l3_services;
use crate::resources::vm::nic_specs;
use crate::Node;

pub const APIS: &[ApiSpec] = &[
    ApiSpec {
        name: "CreateEip",
        description: "Create an EIP on a VIP, attached at once to a VM NIC when vmNicUuid is given",
        needs_session: true,
        params: &[
            req("name", "EIP name"),
            req("vipUuid", "the VIP"),
            opt("vmNicUuid", "attach to this NIC"),
            opt("description", "free text"),
        ],
        handler: Handler::Async(create_eip),
    },
    ApiSpec {
        name: "AttachEip",
        description: "Attach an EIP to a VM NIC whose L3 network has the Eip service",
        needs_session: true,
        params: &[req("eipUuid", "the EIP"), req("vmNicUuid", "the NIC")],
        handler: Handler::Async(attach_eip),
    },
    ApiSpec {
        name: "DetachEip",
        description: "Detach an EIP from its NIC; the EIP and its VIP are kept",
        needs_session: true,
        params: &[req("uuid", "the EIP")],
        handler: Handler::Async(detach_eip),
    },
    ApiSpec {
        name: "QueryEip",
        description: "EIPs",
        needs_session: true,
        params: QUERY_PARAMS,
        handler: Handler::Read(query_eip),
    },
    ApiSpec {
        name: "DeleteEip",
        description: "Delete an EIP (detached first if attached); its VIP is kept",
        needs_session: true,
        params: &[req("uuid", "the EIP")],
        handler: Handler::Async(delete_eip),
    },
];

pub const EIP: Table = Table {
    resource: "Eip",
    table: "eip",
    fields: &[
        ("uuid", "uuid"),
        ("name", "name"),
        ("description", "description"),
        ("vipUuid", "vip_uuid"),
        ("vmNicUuid", "vm_nic_uuid"),
        ("guestIp", "guest_ip"),
        ("state", "state"),
        ("createDate", "create_date"),
        ("lastOpDate", "last_op_date"),
    ],
    expand: Some(expand_eip),
};

fn expand_eip(conn: &Connection, m: &mut serde_json::Map<String, Value>) -> Result<(), ApiError> {
    if let Some(vip) = m.get("vipUuid").and_then(Value::as_str).map(str::to_string) {
        let ip: Option<String> = conn
            .query_row("SELECT ip FROM vip WHERE uuid = ?1", [&vip], |r| r.get(0))
            .optional()?;
        m.insert("vipIp".into(), Value::from(ip));
    }
    Ok(())
}

/// The EIP as the host applies it.
pub fn eip_spec(conn: &Connection, eip: &str) -> Result<EipSpec, ApiError> {
    let (vip, nic): (String, Option<String>) = conn.query_row(
        "SELECT vip_uuid, vm_nic_uuid FROM eip WHERE uuid = ?1",
        [eip],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let nic = nic.ok_or_else(|| ApiError::wrong_state(format!("EIP {eip} is not attached")))?;
    let (vip_ip, mask, gw, iface): (String, String, String, String) = conn.query_row(
        "SELECT v.ip, r.netmask, r.gateway, l2.physical_interface
           FROM vip v JOIN used_ip u ON u.uuid = v.used_ip_uuid JOIN ip_range r ON r.uuid = u.ip_range_uuid
           JOIN l3_network l3 ON l3.uuid = v.l3_uuid JOIN l2_network l2 ON l2.uuid = l3.l2_uuid
          WHERE v.uuid = ?1",
        [&vip],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    let vm: String = conn.query_row("SELECT vm_uuid FROM vm_nic WHERE uuid = ?1", [&nic], |r| {
        r.get(0)
    })?;
    let nic_spec = nic_specs(conn, &vm)?
        .into_iter()
        .find(|n| n.uuid == nic)
        .ok_or_else(|| ApiError::internal(format!("NIC {nic} of VM {vm} is gone")))?;
    Ok(EipSpec {
        eip_uuid: eip.to_string(),
        vip_uuid: vip,
        vip_ip,
        vip_netmask: mask,
        vip_gateway: gw,
        public_interface: iface,
        vm_uuid: vm,
        nic: nic_spec,
    })
}

/// Checks and records the attachment; returns the host to apply it on when the VM runs.
fn reserve_attach(conn: &Connection, eip: &str, nic: &str) -> Result<Option<String>, ApiError> {
    let (vip, attached): (String, Option<String>) = conn
        .query_row(
            "SELECT vip_uuid, vm_nic_uuid FROM eip WHERE uuid = ?1",
            [eip],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?
        .ok_or_else(|| ApiError::not_found("Eip", eip).field("eipUuid"))?;
    if let Some(other) = attached {
        return Err(ApiError::in_use(format!(
            "EIP {eip} is attached to NIC {other}; detach it first"
        ))
        .field("eipUuid"));
    }
    let (vm, l3, ip): (String, String, Option<String>) = conn
        .query_row(
            "SELECT vm_uuid, l3_uuid, ip FROM vm_nic WHERE uuid = ?1",
            [nic],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?
        .ok_or_else(|| ApiError::not_found("VmNic", nic).field("vmNicUuid"))?;
    if !l3_services(conn, &l3)?.iter().any(|s| s == "Eip") {
        return Err(ApiError::invalid(
            "vmNicUuid",
            format!("the NIC's L3 network {l3} has no Eip service; attach it with AttachNetworkServiceToL3Network"),
        ));
    }
    let vip_l3: String =
        conn.query_row("SELECT l3_uuid FROM vip WHERE uuid = ?1", [&vip], |r| {
            r.get(0)
        })?;
    if vip_l3 == l3 {
        return Err(ApiError::invalid(
            "vmNicUuid",
            format!("the VIP and the NIC are on the same L3 network {l3}; an EIP joins a public network to a private one"),
        ));
    }
    let taken: Option<String> = conn
        .query_row("SELECT uuid FROM eip WHERE vm_nic_uuid = ?1", [nic], |r| {
            r.get(0)
        })
        .optional()?;
    if let Some(other) = taken {
        return Err(
            ApiError::in_use(format!("NIC {nic} already has EIP {other}")).field("vmNicUuid"),
        );
    }
    let (state, host): (String, Option<String>) = conn.query_row(
        "SELECT state, host_uuid FROM vm_instance WHERE uuid = ?1",
        [&vm],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    if !["Running", "Stopped"].contains(&state.as_str()) {
        return Err(ApiError::wrong_state(format!(
            "VM {vm} is {state}; attach needs it Running or Stopped"
        ))
        .field("vmNicUuid"));
    }
    conn.execute(
        "UPDATE eip SET vm_nic_uuid = ?2, guest_ip = ?3, last_op_date = ?4 WHERE uuid = ?1",
        params![eip, nic, ip, auth::now()],
    )?;
    Ok(host.filter(|_| state == "Running"))
}

/// Applies an attachment recorded by [`reserve_attach`] on the host; undoes the record on failure.
fn apply(node: &Node, eip: &str, host: Option<String>) -> Result<Value, ApiError> {
    if let Some(host) = host {
        let outcome = (|| -> Result<(), ApiError> {
            let (hrow, spec) = {
                let conn = node.db()?;
                (HostRow::load(&conn, &host)?, eip_spec(&conn, eip)?)
            };
            node.agent(&hrow)?.apply_eip(&spec)?;
            Ok(())
        })();
        if let Err(e) = outcome {
            node.db()?.execute(
                "UPDATE eip SET vm_nic_uuid = NULL, guest_ip = NULL WHERE uuid = ?1",
                [eip],
            )?;
            return Err(ApiError {
                message: format!("the EIP was not attached: {}", e.message),
                ..e
            });
        }
    }
    Ok(inventory(one(&*node.db()?, &EIP, eip)?))
}

fn create_eip(c: &Call) -> Result<Job, ApiError> {
    let vip = c.required("vipUuid")?;
    exists(c.conn, "vip", "Vip", vip, "vipUuid")?;
    let used: Option<String> = c
        .conn
        .query_row("SELECT uuid FROM eip WHERE vip_uuid = ?1", [vip], |r| {
            r.get(0)
        })
        .optional()?;
    if let Some(other) = used {
        return Err(ApiError::in_use(format!("VIP {vip} is used by EIP {other}")).field("vipUuid"));
    }
    let uuid = crate::new_uuid();
    let tx = c.conn.unchecked_transaction()?;
    tx.execute(
        "INSERT INTO eip (uuid, vip_uuid, name, description, state, create_date, last_op_date)
         VALUES (?1, ?2, ?3, ?4, 'Enabled', ?5, ?5)",
        params![
            uuid,
            vip,
            c.required("name")?,
            c.str("description"),
            auth::now()
        ],
    )?;
    let host = match c.str("vmNicUuid") {
        Some(nic) => Some(reserve_attach(&tx, &uuid, nic).map_err(|e| {
            if e.field.as_deref() == Some("eipUuid") {
                e.field("vmNicUuid")
            } else {
                e
            }
        })?),
        None => None,
    };
    tx.commit()?;
    Ok(Job::new(
        Some(uuid.clone()),
        move |node: &Node| match host {
            Some(h) => apply(node, &uuid, h),
            None => Ok(inventory(one(&*node.db()?, &EIP, &uuid)?)),
        },
    ))
}

fn attach_eip(c: &Call) -> Result<Job, ApiError> {
    let eip = c.required("eipUuid")?.to_string();
    let host = reserve_attach(c.conn, &eip, c.required("vmNicUuid")?)?;
    Ok(Job::new(Some(eip.clone()), move |node: &Node| {
        apply(node, &eip, host)
    }))
}

/// Removes the EIP from its VM's host (when the VM runs) and clears the attachment.
fn detach(node: &Node, eip: &str) -> Result<(), ApiError> {
    let target = {
        let conn = node.db()?;
        let host: Option<String> = conn
            .query_row(
                "SELECT vm.host_uuid FROM eip e JOIN vm_nic n ON n.uuid = e.vm_nic_uuid
                   JOIN vm_instance vm ON vm.uuid = n.vm_uuid
                  WHERE e.uuid = ?1 AND vm.state = 'Running'",
                [eip],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        match host {
            Some(h) => Some((HostRow::load(&conn, &h)?, eip_spec(&conn, eip)?)),
            None => None,
        }
    };
    if let Some((hrow, spec)) = target {
        node.agent(&hrow)?.remove_eip(&spec)?;
    }
    node.db()?.execute(
        "UPDATE eip SET vm_nic_uuid = NULL, guest_ip = NULL, last_op_date = ?2 WHERE uuid = ?1",
        params![eip, auth::now()],
    )?;
    Ok(())
}

fn detach_eip(c: &Call) -> Result<Job, ApiError> {
    let eip = c.required("uuid")?.to_string();
    let nic: Option<String> = c
        .conn
        .query_row("SELECT vm_nic_uuid FROM eip WHERE uuid = ?1", [&eip], |r| {
            r.get(0)
        })
        .optional()?
        .ok_or_else(|| ApiError::not_found("Eip", &eip))?;
    if nic.is_none() {
        return Err(ApiError::wrong_state(format!("EIP {eip} is not attached")).field("uuid"));
    }
    Ok(Job::new(Some(eip.clone()), move |node: &Node| {
        detach(node, &eip)?;
        Ok(inventory(one(&*node.db()?, &EIP, &eip)?))
    }))
}

fn query_eip(c: &Call) -> Result<Value, ApiError> {
    c.query(&EIP)
}

fn delete_eip(c: &Call) -> Result<Job, ApiError> {
    let eip = c.required("uuid")?.to_string();
    exists(c.conn, "eip", "Eip", &eip, "uuid")?;
    Ok(Job::new(Some(eip.clone()), move |node: &Node| {
        detach(node, &eip)?;
        node.db()?
            .execute("DELETE FROM eip WHERE uuid = ?1", [&eip])?;
        Ok(json!({}))
    }))
}

//! Hosts: added with their agent's address (`AddKVMHost`) or as simulator hosts
//! (`AddSimulatorHost`), connected through [`crate::agent::HostAgent`], and tracked: a host whose
//! agent stops answering becomes `Disconnected` (its VMs `Unknown`) and is reconnected, with its
//! VMs' states re-read, as soon as the agent answers again.

use std::collections::HashMap;

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Value};

use crate::api::{count, exists, inventory, one, opt, req, ApiSpec, Call, Handler, QUERY_PARAMS};
use crate::auth;
use crate::error::ApiError;
use crate::job::{Job, Steps};
use crate::query::Table;
use crate::Node;

pub const APIS: &[ApiSpec] = &[
    ApiSpec {
        name: "AddKVMHost",
        description: "Add a KVM host. With username and password the management node logs in \
                      over SSH once, installs its own key, checks the host, copies and installs \
                      the agent of its own release, gives the host its certificate and starts \
                      the agent (the job's steps show each); without them the host's agent must \
                      already run with a certificate of this cloud. The host is connected (its \
                      CPUs, memory and VMs read) before the call ends; a host that cannot be \
                      deployed or connected is not added, and nothing is left on it",
        needs_session: true,
        params: &[
            req("name", "host name"),
            req(
                "managementIp",
                "the address the management node reaches the agent on",
            ),
            req("clusterUuid", "a KVM cluster"),
            opt(
                "agentPort",
                "the agent's port (default kvmagent.port, 7070)",
            ),
            opt("description", "free text"),
            opt(
                "username",
                "the user to log in as over SSH (root); with password",
            ),
            opt(
                "password",
                "its password, used once for this call and never stored",
            ),
            opt("sshPort", "the host's SSH port (default 22)"),
        ],
        handler: Handler::Async(add_kvm_host),
    },
    ApiSpec {
        name: "AddSimulatorHost",
        description: "Add a simulator host: a host type built into the management node that \
                      accepts every agent call and keeps its VMs in the database (for rehearsals \
                      and scale tests)",
        needs_session: true,
        params: &[
            req("name", "host name"),
            req("managementIp", "any address; unique among hosts"),
            req("clusterUuid", "a Simulator cluster"),
            opt("cpuCapacity", "CPUs (default 32)"),
            opt(
                "memoryCapacity",
                "memory, bytes or with a unit (default 64G)",
            ),
            opt(
                "storageCapacity",
                "what shared mount points report, bytes or with a unit (default 10T)",
            ),
            opt("description", "free text"),
        ],
        handler: Handler::Async(add_simulator_host),
    },
    ApiSpec {
        name: "QueryHost",
        description: "Hosts with their connection status and free capacity",
        needs_session: true,
        params: QUERY_PARAMS,
        handler: Handler::Read(query_host),
    },
    ApiSpec {
        name: "UpdateHost",
        description: "Rename a host or change its description",
        needs_session: true,
        params: &[
            req("uuid", "the host"),
            opt("name", "new name"),
            opt("description", "new description"),
        ],
        handler: Handler::Sync(update_host),
    },
    ApiSpec {
        name: "ChangeHostState",
        description: "Enable or disable a host for new VMs (running VMs are not touched)",
        needs_session: true,
        params: &[
            req("uuid", "the host"),
            req("stateEvent", "enable or disable"),
        ],
        handler: Handler::Sync(change_host_state),
    },
    ApiSpec {
        name: "ReconnectHost",
        description:
            "Connect a host again: re-read its capacity and its VMs' states. A host added \
                      over SSH whose agent is of another release than the management node is \
                      upgraded first (copy, install, start: the job's steps show each)",
        needs_session: true,
        params: &[req("uuid", "the host")],
        handler: Handler::Async(reconnect_host),
    },
    ApiSpec {
        name: "DeleteHost",
        description: "Remove a host that runs no VM (stop or destroy its VMs first)",
        needs_session: true,
        params: &[req("uuid", "the host")],
        handler: Handler::Sync(delete_host),
    },
];

pub const HOST: Table = Table {
    resource: "Host",
    table: "host",
    fields: &[
        ("uuid", "uuid"),
        ("name", "name"),
        ("description", "description"),
        ("zoneUuid", "zone_uuid"),
        ("clusterUuid", "cluster_uuid"),
        ("managementIp", "management_ip"),
        ("agentPort", "agent_port"),
        ("hypervisorType", "hypervisor_type"),
        ("virtualization", "virtualization"),
        ("virtualizationReason", "virtualization_reason"),
        ("libvirtVersion", "libvirt_version"),
        ("qemuVersion", "qemu_version"),
        ("certificateSerial", "certificate_serial"),
        ("state", "state"),
        ("status", "status"),
        ("statusReason", "status_reason"),
        ("totalCpuCapacity", "total_cpu"),
        ("availableCpuCapacity", "available_cpu"),
        ("totalMemoryCapacity", "total_memory"),
        ("availableMemoryCapacity", "available_memory"),
        ("createDate", "create_date"),
        ("lastOpDate", "last_op_date"),
    ],
    expand: None,
};

/// What the orchestration needs to reach a host.
#[derive(Debug, Clone)]
pub struct HostRow {
    pub uuid: String,
    pub management_ip: String,
    pub hypervisor_type: String,
    pub agent_port: Option<i64>,
    pub status: String,
    pub cluster_uuid: String,
}

impl HostRow {
    pub fn load(conn: &Connection, uuid: &str) -> Result<HostRow, ApiError> {
        conn.query_row(
            "SELECT uuid, management_ip, hypervisor_type, agent_port, status, cluster_uuid FROM host WHERE uuid = ?1",
            [uuid],
            |r| {
                Ok(HostRow {
                    uuid: r.get(0)?,
                    management_ip: r.get(1)?,
                    hypervisor_type: r.get(2)?,
                    agent_port: r.get(3)?,
                    status: r.get(4)?,
                    cluster_uuid: r.get(5)?,
                })
            },
        )
        .optional()?
        .ok_or_else(|| ApiError::not_found("Host", uuid))
    }

    pub fn all(conn: &Connection) -> Result<Vec<HostRow>, ApiError> {
        let mut st = conn.prepare("SELECT uuid FROM host ORDER BY rowid")?;
        let uuids = st
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        uuids.iter().map(|u| HostRow::load(conn, u)).collect()
    }
}

fn add_host(c: &Call, hypervisor: &str) -> Result<String, ApiError> {
    let cluster = c.required("clusterUuid")?;
    let (zone, cluster_hv): (String, String) = c
        .conn
        .query_row(
            "SELECT zone_uuid, hypervisor_type FROM cluster WHERE uuid = ?1",
            [cluster],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?
        .ok_or_else(|| ApiError::not_found("Cluster", cluster).field("clusterUuid"))?;
    if cluster_hv != hypervisor {
        return Err(ApiError::invalid(
            "clusterUuid",
            format!("cluster {cluster} is a {cluster_hv} cluster; a {hypervisor} host needs a {hypervisor} cluster"),
        ));
    }
    let ip = c.required("managementIp")?;
    let taken: Option<String> = c
        .conn
        .query_row(
            "SELECT uuid FROM host WHERE management_ip = ?1",
            [ip],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(other) = taken {
        return Err(ApiError::invalid(
            "managementIp",
            format!("host {other} already has management IP {ip}"),
        ));
    }
    let port = c.int("agentPort", 1, 65535)?;
    let uuid = crate::new_uuid();
    c.conn.execute(
        "INSERT INTO host (uuid, zone_uuid, cluster_uuid, name, management_ip, hypervisor_type, state, status,
                           agent_port, create_date, last_op_date, description)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'Enabled', 'Connecting', ?7, ?8, ?8, ?9)",
        params![uuid, zone, cluster, c.required("name")?, ip, hypervisor, port, auth::now(), c.str("description")],
    )?;
    Ok(uuid)
}

/// The job of adding a host: connect it, or remove it again and say why.
fn connect_new_host(uuid: String) -> Job {
    Job::new(Some(uuid.clone()), move |node: &Node| {
        connect(node, &uuid).map_err(|e| forget_new_host(node, &uuid, e))
    })
}

/// Removes the row of a host whose adding failed; the error the call then ends with.
pub(super) fn forget_new_host(node: &Node, uuid: &str, e: ApiError) -> ApiError {
    let removed = node.db().and_then(|conn| {
        let tx = conn.unchecked_transaction()?;
        tx.execute("DELETE FROM simulator_host WHERE host_uuid = ?1", [uuid])?;
        tx.execute("DELETE FROM host WHERE uuid = ?1", [uuid])?;
        tx.commit()?;
        Ok(())
    });
    if let Err(r) = removed {
        node.log.error(&format!(
            "host {uuid}: cannot remove the row of a host that was not added: {}",
            r.message
        ));
    }
    ApiError {
        message: format!("the host was not added: {}", e.message),
        ..e
    }
}

fn add_kvm_host(c: &Call) -> Result<Job, ApiError> {
    c.node.trust()?;
    let login = super::host_join::given_login(c)?;
    let uuid = add_host(c, "KVM")?;
    Ok(match login {
        None => connect_new_host(uuid),
        Some(login) => super::host_join::deploy_new_host(uuid, login),
    })
}

fn add_simulator_host(c: &Call) -> Result<Job, ApiError> {
    let cpu = c.int("cpuCapacity", 1, 1 << 20)?.unwrap_or(32);
    let mem = c.size("memoryCapacity")?.unwrap_or(64 << 30);
    let storage = c.size("storageCapacity")?.unwrap_or(10 << 40);
    let uuid = add_host(c, "Simulator")?;
    c.conn.execute(
        "INSERT INTO simulator_host (host_uuid, cpu_capacity, memory_capacity, storage_capacity) VALUES (?1, ?2, ?3, ?4)",
        params![uuid, cpu, mem, storage],
    )?;
    Ok(connect_new_host(uuid))
}

fn query_host(c: &Call) -> Result<Value, ApiError> {
    c.query(&HOST)
}

fn update_host(c: &Call) -> Result<Value, ApiError> {
    let uuid = c.required("uuid")?;
    exists(c.conn, "host", "Host", uuid, "uuid")?;
    c.conn.execute(
        "UPDATE host SET name = coalesce(?2, name), description = coalesce(?4, description),
                last_op_date = ?3 WHERE uuid = ?1",
        params![uuid, c.str("name"), auth::now(), c.str("description")],
    )?;
    Ok(inventory(one(c.conn, &HOST, uuid)?))
}

fn change_host_state(c: &Call) -> Result<Value, ApiError> {
    let uuid = c.required("uuid")?;
    exists(c.conn, "host", "Host", uuid, "uuid")?;
    let state = match c.one_of("stateEvent", &["enable", "disable"], None)? {
        "enable" => "Enabled",
        _ => "Disabled",
    };
    super::set_state(c.conn, "host", "state", uuid, state)?;
    Ok(inventory(one(c.conn, &HOST, uuid)?))
}

fn reconnect_host(c: &Call) -> Result<Job, ApiError> {
    let uuid = c.required("uuid")?.to_string();
    exists(c.conn, "host", "Host", &uuid, "uuid")?;
    Ok(Job::with_steps(
        Some(uuid.clone()),
        move |node: &Node, steps: &Steps| super::host_join::reconnect(node, &uuid, steps),
    ))
}

/// The code of a host whose agent is of another release than the management node.
pub const AGENT_VERSION_MISMATCH: &str = "AGENT_VERSION_MISMATCH";

fn delete_host(c: &Call) -> Result<Value, ApiError> {
    let uuid = c.required("uuid")?;
    exists(c.conn, "host", "Host", uuid, "uuid")?;
    let vms: i64 = count(
        c.conn,
        "SELECT count(*) FROM vm_instance WHERE host_uuid = ?1",
        [uuid],
    )?;
    if vms > 0 {
        return Err(ApiError::in_use(format!(
            "host {uuid} runs {vms} VM(s); stop or destroy them first"
        ))
        .field("uuid"));
    }
    let (ip, serial): (String, Option<String>) = c.conn.query_row(
        "SELECT management_ip, certificate_serial FROM host WHERE uuid = ?1",
        [uuid],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let tx = c.conn.unchecked_transaction()?;
    tx.execute(
        "UPDATE vm_instance SET last_host_uuid = NULL WHERE last_host_uuid = ?1",
        [uuid],
    )?;
    tx.execute("DELETE FROM simulator_host WHERE host_uuid = ?1", [uuid])?;
    tx.execute("DELETE FROM host WHERE uuid = ?1", [uuid])?;
    // The host's certificate is refused from now on: by serial at once (the host channel takes
    // only serials of host rows), and by the CA's revocation list everywhere.
    if let Some(serial) = &serial {
        crate::trust::record_revocation(&tx, serial, uuid, &ip)?;
    }
    tx.commit()?;
    if let (Some(_), Some(trust)) = (&serial, &c.node.trust) {
        trust.publish_revocations(c.conn)?;
    }
    Ok(json!({}))
}

/// Connects a host: reads its facts through its agent, re-reads its VMs' states, recomputes its
/// free capacity. On failure the host is `Disconnected` with the reason, and its VMs `Unknown`.
pub fn connect(node: &Node, uuid: &str) -> Result<Value, ApiError> {
    let host = {
        let conn = node.db()?;
        let host = HostRow::load(&conn, uuid)?;
        conn.execute(
            "UPDATE host SET status = 'Connecting', last_op_date = ?2 WHERE uuid = ?1",
            params![uuid, auth::now()],
        )?;
        host
    };
    // A host that cannot use the primary storage of its cluster cannot run the cluster's VMs.
    let facts = node
        .agent(&host)
        .and_then(|a| Ok(a.connect()?))
        .and_then(|f| super::storage::check_from_host(node, &host).map(|_| f));
    // An agent of another release is not driven: its API may differ from what this node sends.
    let release = node.release.to_string();
    let facts = facts.and_then(|f| {
        if host.hypervisor_type == "KVM" && f.agent_version != release {
            return Err(ApiError::new(
                axum::http::StatusCode::CONFLICT,
                AGENT_VERSION_MISMATCH,
                format!(
                    "the agent's version differs: it is release {}, the management node {release}; \
                     ReconnectHost upgrades it on a host added over SSH (else run the \
                     {release} installer with --host-only on the host)",
                    f.agent_version
                ),
            ));
        }
        Ok(f)
    });
    let conn = node.db()?;
    match facts {
        Err(e) => {
            mark_disconnected(&conn, uuid, &e.message)?;
            Err(e)
        }
        Ok(facts) => {
            let tx = conn.unchecked_transaction()?;
            if let Some(vms) = &facts.vms {
                sync_vms(&tx, uuid, vms)?;
            }
            tx.execute(
                "UPDATE host SET total_cpu = ?2, total_memory = ?3, status = 'Connected',
                        status_reason = NULL, virtualization = ?5, libvirt_version = ?6,
                        qemu_version = ?7, virtualization_reason = ?8, last_op_date = ?4,
                        certificate_serial = coalesce(?9, certificate_serial)
                        WHERE uuid = ?1",
                params![
                    uuid,
                    facts.cpu_num,
                    facts.memory_size,
                    auth::now(),
                    facts.hypervisor,
                    facts.libvirt_version,
                    facts.qemu_version,
                    facts.virtualization_reason,
                    facts.certificate_serial
                ],
            )?;
            recompute_capacity(&tx, uuid)?;
            tx.commit()?;
            drop(conn);
            reapply_running_vms(node, &host);
            Ok(inventory(one(&*node.db()?, &HOST, uuid)?))
        }
    }
}

/// Sends the host the spec and EIPs of every VM the DB has running there: the agent makes its
/// network state (DHCP, metadata, anti-spoofing, EIPs) equal to them again; all idempotent. A VM
/// that cannot be brought back in line is logged, not a reason to refuse the host.
fn reapply_running_vms(node: &Node, host: &HostRow) {
    let work = (|| -> Result<Vec<(String, zstack_common::agent_proto::VmSpec, Vec<zstack_common::agent_proto::EipSpec>)>, ApiError> {
        let conn = node.db()?;
        let vms: Vec<String> = {
            let mut st = conn.prepare(
                "SELECT uuid FROM vm_instance WHERE host_uuid = ?1 AND state = 'Running'",
            )?;
            let rows = st.query_map([&host.uuid], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        vms.into_iter()
            .map(|vm| {
                Ok((
                    vm.clone(),
                    super::vm::vm_spec(&conn, node, &vm)?,
                    super::vm::eip_specs_of_vm(&conn, &vm)?,
                ))
            })
            .collect()
    })();
    let work = match work {
        Ok(w) => w,
        Err(e) => {
            node.log.warn(&format!(
                "host {}: cannot read its VMs to re-apply: {}",
                host.uuid, e.message
            ));
            return;
        }
    };
    let Ok(agent) = node.agent(host) else { return };
    for (vm, spec, eips) in work {
        let applied = agent
            .start_vm(&spec)
            .and_then(|_| eips.iter().try_for_each(|e| agent.apply_eip(e)));
        if let Err(e) = applied {
            node.log.warn(&format!(
                "host {}: VM {vm}: re-applying its network failed: {e}",
                host.uuid
            ));
        }
    }
}

pub fn mark_disconnected(conn: &Connection, uuid: &str, reason: &str) -> Result<(), ApiError> {
    let tx = conn.unchecked_transaction()?;
    tx.execute(
        "UPDATE host SET status = 'Disconnected', status_reason = ?2, last_op_date = ?3 WHERE uuid = ?1",
        params![uuid, reason, auth::now()],
    )?;
    tx.execute(
        "UPDATE vm_instance SET state = 'Unknown', last_op_date = ?2
          WHERE host_uuid = ?1 AND state IN ('Running', 'Paused', 'Starting', 'Stopping', 'Rebooting')",
        params![uuid, auth::now()],
    )?;
    tx.commit()?;
    Ok(())
}

/// Makes the DB say what the host says about its VMs: a VM the host runs is Running there; a VM
/// the DB places on the host that the host does not run is Stopped (its capacity freed).
fn sync_vms(
    conn: &Connection,
    host: &str,
    reported: &[zstack_common::agent_proto::VmReport],
) -> Result<(), ApiError> {
    let reported: HashMap<&str, &str> = reported
        .iter()
        .map(|v| (v.uuid.as_str(), v.state.as_str()))
        .collect();
    let ts = auth::now();
    let placed: Vec<(String, String)> = {
        let mut st = conn.prepare("SELECT uuid, state FROM vm_instance WHERE host_uuid = ?1")?;
        let rows = st.query_map([host], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    for (vm, state) in &placed {
        match reported.get(vm.as_str()) {
            Some(s) if *s == "Running" || *s == "Paused" => {
                if state != s {
                    conn.execute(
                        "UPDATE vm_instance SET state = ?2, last_op_date = ?3 WHERE uuid = ?1",
                        params![vm, s, ts],
                    )?;
                }
            }
            _ => {
                conn.execute(
                    "UPDATE vm_instance SET state = 'Stopped', host_uuid = NULL, last_host_uuid = ?2,
                            last_op_date = ?3 WHERE uuid = ?1",
                    params![vm, host, ts],
                )?;
            }
        }
    }
    // A VM the DB has as stopped that the host still runs (a stop that never reached the DB).
    for (vm, s) in &reported {
        if *s != "Running" && *s != "Paused" {
            continue;
        }
        conn.execute(
            "UPDATE vm_instance SET state = ?2, host_uuid = ?3, last_host_uuid = ?3, last_op_date = ?4
              WHERE uuid = ?1 AND host_uuid IS NULL AND state = 'Stopped'",
            params![vm, s, host, ts],
        )?;
    }
    Ok(())
}

/// Free capacity = total - what the VMs placed on the host take.
pub fn recompute_capacity(conn: &Connection, host: &str) -> Result<(), ApiError> {
    conn.execute(
        "UPDATE host SET
            available_cpu = total_cpu - (SELECT coalesce(sum(cpu_num), 0) FROM vm_instance WHERE host_uuid = ?1),
            available_memory = total_memory - (SELECT coalesce(sum(memory_size), 0) FROM vm_instance WHERE host_uuid = ?1)
          WHERE uuid = ?1",
        [host],
    )?;
    Ok(())
}

/// One round of the host tracker: pings every host; a Connected host that does not answer is
/// Disconnected, a Disconnected one that answers is reconnected.
pub fn track_once(node: &Node) -> Result<(), ApiError> {
    let hosts = HostRow::all(&*node.db()?)?;
    std::thread::scope(|s| {
        for chunk in hosts.chunks(16) {
            s.spawn(move || {
                for host in chunk {
                    track_host(node, host);
                }
            });
        }
    });
    // Shared storage capacity changes under us (other tenants of the filesystem): re-read it now
    // and then from one host per storage.
    let due = {
        let mut last = node
            .capacity_refreshed
            .lock()
            .map_err(|_| ApiError::internal("a lock is poisoned"))?;
        let due = last.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(60));
        if due {
            *last = Some(std::time::Instant::now());
        }
        due
    };
    if due {
        super::storage::refresh_capacities(node)?;
    }
    Ok(())
}

fn track_host(node: &Node, host: &HostRow) {
    let alive = node.agent(host).and_then(|a| Ok(a.ping()?));
    let outcome = match (host.status.as_str(), alive) {
        ("Connected", Ok(())) => Ok(()),
        ("Connected", Err(e)) => {
            node.log.warn(&format!(
                "host {} ({}) is disconnected: {}",
                host.uuid, host.management_ip, e.message
            ));
            node.db()
                .and_then(|c| mark_disconnected(&c, &host.uuid, &e.message))
        }
        ("Connecting", _) => Ok(()),
        (_, Ok(())) => connect(node, &host.uuid).map(|_| {
            node.log.info(&format!(
                "host {} ({}) is connected again",
                host.uuid, host.management_ip
            ));
        }),
        (_, Err(e)) => node.db().and_then(|c| {
            c.execute(
                "UPDATE host SET status_reason = ?2 WHERE uuid = ?1",
                params![host.uuid, e.message],
            )
            .map(|_| ())
            .map_err(ApiError::from)
        }),
    };
    if let Err(e) = outcome {
        node.log.warn(&format!("host {}: {}", host.uuid, e.message));
    }
}

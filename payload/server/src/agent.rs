//! How the management node drives a host: one trait, [`HostAgent`], with two host types behind it.
//!
//! - `KVM`: the `zstack-kvmagent` on the host, JSON over HTTPS with mutual TLS (the node's
//!   certificate; the agent's checked against the cloud's CA, see `trust`).
//! - `Simulator`: a built-in host type whose hypervisor is a table (`simulator_host`,
//!   `simulator_vm`). It accepts every agent call in memory and keeps the VMs it "runs" across a
//!   restart of the management node, as a real host does. It is what scale tests run against, and
//!   operators can use it to rehearse a layout; it is a host type of the API, not a test double.
//!
//! The orchestration above (allocation, VM lifecycle, host tracking) only ever sees the trait.

use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use serde::de::DeserializeOwned;
use serde::Serialize;
use zstack_common::agent_proto::{
    self as proto, path, AgentErrorBody, ConsoleLog, ConsoleLogRequest, DeleteVolume, DestroyVm,
    EipSpec, HostFacts, StopVm, StorageCapacity, VmRef, VmReport, VmSpec, VolumeAttachment,
};

use crate::error::ApiError;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot reach the agent at {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("the agent at {addr} does not handle {path}; is it the same release as the management node?")]
    Unsupported { addr: String, path: String },
    #[error("the agent at {addr} refused {path}: {message} ({code})")]
    Refused {
        addr: String,
        path: String,
        code: String,
        message: String,
    },
    #[error("the agent at {addr} answered {path} with something unreadable: {reason}")]
    BadAnswer {
        addr: String,
        path: String,
        reason: String,
    },
    #[error("simulator host {host}: {message}")]
    Simulator { host: String, message: String },
}

impl From<AgentError> for ApiError {
    fn from(e: AgentError) -> Self {
        let code = match e {
            AgentError::Unreachable { .. } => "HOST_UNREACHABLE",
            _ => "AGENT_ERROR",
        };
        ApiError::new(axum::http::StatusCode::BAD_GATEWAY, code, e.to_string())
    }
}

pub trait HostAgent {
    /// Reads the host's facts (and its VMs); called when a host is added or reconnected.
    fn connect(&self) -> Result<HostFacts, AgentError>;
    fn ping(&self) -> Result<(), AgentError>;
    /// Checks a shared mount point on the host: a directory it can write; its capacity.
    fn check_shared_mount_point(
        &self,
        req: &proto::CheckStorage,
    ) -> Result<StorageCapacity, AgentError>;
    fn start_vm(&self, spec: &VmSpec) -> Result<(), AgentError>;
    fn stop_vm(&self, req: &StopVm) -> Result<(), AgentError>;
    fn reboot_vm(&self, uuid: &str) -> Result<(), AgentError>;
    fn destroy_vm(&self, req: &DestroyVm) -> Result<(), AgentError>;
    fn attach_volume(&self, req: &VolumeAttachment) -> Result<(), AgentError>;
    fn detach_volume(&self, req: &VolumeAttachment) -> Result<(), AgentError>;
    fn delete_volume(&self, install_path: &str) -> Result<(), AgentError>;
    fn apply_eip(&self, eip: &EipSpec) -> Result<(), AgentError>;
    fn remove_eip(&self, eip: &EipSpec) -> Result<(), AgentError>;
    /// A VM's serial console log from an offset, at most
    /// [`proto::CONSOLE_LOG_MAX_BYTES`] per answer.
    fn console_log(&self, req: &ConsoleLogRequest) -> Result<ConsoleLog, AgentError>;
}

/// The `zstack-kvmagent` on a KVM host.
pub struct KvmAgentClient {
    addr: String,
    agent: ureq::Agent,
}

impl KvmAgentClient {
    pub fn new(ip: &str, port: u16, tls: std::sync::Arc<rustls::ClientConfig>) -> Self {
        KvmAgentClient {
            addr: format!("{ip}:{port}"),
            // Starting a VM includes copying its image; the read timeout leaves room for that.
            agent: zstack_common::http_client::tls_agent(
                zstack_common::http_client::Timeouts {
                    connect: Some(Duration::from_secs(5)),
                    read: Some(Duration::from_secs(600)),
                    whole: None,
                },
                tls,
            ),
        }
    }

    fn call<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<R, AgentError> {
        let url = format!("https://{}{path}", self.addr);
        let resp = self.agent.post(&url).send_json(body);
        let resp = match resp {
            Ok(r) => r,
            Err(ureq::Error::Status(404, _)) => {
                return Err(AgentError::Unsupported {
                    addr: self.addr.clone(),
                    path: path.to_string(),
                })
            }
            Err(ureq::Error::Status(status, r)) => {
                let text = r.into_string().unwrap_or_default();
                let (code, message) = match serde_json::from_str::<AgentErrorBody>(&text) {
                    Ok(b) => (b.error.code, b.error.message),
                    Err(_) => (format!("HTTP {status}"), text.trim().to_string()),
                };
                return Err(AgentError::Refused {
                    addr: self.addr.clone(),
                    path: path.to_string(),
                    code,
                    message,
                });
            }
            Err(e) => {
                return Err(AgentError::Unreachable {
                    addr: self.addr.clone(),
                    reason: e.to_string(),
                })
            }
        };
        resp.into_json::<R>().map_err(|e| AgentError::BadAnswer {
            addr: self.addr.clone(),
            path: path.to_string(),
            reason: e.to_string(),
        })
    }

    fn call_unit<B: Serialize>(&self, path: &str, body: &B) -> Result<(), AgentError> {
        self.call::<B, serde_json::Value>(path, body).map(|_| ())
    }
}

impl HostAgent for KvmAgentClient {
    fn connect(&self) -> Result<HostFacts, AgentError> {
        self.call(path::CONNECT, &serde_json::json!({}))
    }
    fn ping(&self) -> Result<(), AgentError> {
        self.call_unit(path::PING, &serde_json::json!({}))
    }
    fn check_shared_mount_point(
        &self,
        req: &proto::CheckStorage,
    ) -> Result<StorageCapacity, AgentError> {
        self.call(path::CHECK_SMP, req)
    }
    fn start_vm(&self, spec: &VmSpec) -> Result<(), AgentError> {
        self.call_unit(path::START_VM, spec)
    }
    fn stop_vm(&self, req: &StopVm) -> Result<(), AgentError> {
        // A graceful stop may take its whole timeout before the forced one.
        self.call_unit(path::STOP_VM, req)
    }
    fn reboot_vm(&self, uuid: &str) -> Result<(), AgentError> {
        self.call_unit(path::REBOOT_VM, &VmRef { uuid: uuid.into() })
    }
    fn destroy_vm(&self, req: &DestroyVm) -> Result<(), AgentError> {
        self.call_unit(path::DESTROY_VM, req)
    }
    fn attach_volume(&self, req: &VolumeAttachment) -> Result<(), AgentError> {
        self.call_unit(path::ATTACH_VOLUME, req)
    }
    fn detach_volume(&self, req: &VolumeAttachment) -> Result<(), AgentError> {
        self.call_unit(path::DETACH_VOLUME, req)
    }
    fn delete_volume(&self, install_path: &str) -> Result<(), AgentError> {
        self.call_unit(
            path::DELETE_VOLUME,
            &DeleteVolume {
                install_path: install_path.into(),
            },
        )
    }
    fn apply_eip(&self, eip: &EipSpec) -> Result<(), AgentError> {
        self.call_unit(path::APPLY_EIP, eip)
    }
    fn remove_eip(&self, eip: &EipSpec) -> Result<(), AgentError> {
        self.call_unit(path::REMOVE_EIP, eip)
    }
    fn console_log(&self, req: &ConsoleLogRequest) -> Result<ConsoleLog, AgentError> {
        self.call(path::VM_CONSOLE_LOG, req)
    }
}

/// A simulator host: its capacity and running VMs are rows of the management node's database.
pub struct SimulatorHost<'a> {
    pub db: &'a Mutex<Connection>,
    pub host_uuid: String,
}

impl SimulatorHost<'_> {
    fn with_db<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, AgentError> {
        let conn = self
            .db
            .lock()
            .map_err(|_| self.err("the database lock is poisoned"))?;
        f(&conn).map_err(|e| self.err(format!("database error: {e}")))
    }
    fn err(&self, message: impl Into<String>) -> AgentError {
        AgentError::Simulator {
            host: self.host_uuid.clone(),
            message: message.into(),
        }
    }
    fn capacity(&self) -> Result<(i64, i64, i64), AgentError> {
        self.with_db(|c| {
            c.query_row(
                "SELECT cpu_capacity, memory_capacity, storage_capacity FROM simulator_host WHERE host_uuid = ?1",
                [&self.host_uuid],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
        })?
        .ok_or_else(|| self.err("it has no simulator record; delete and add it again"))
    }
    fn set_vm(&self, uuid: &str, state: Option<&str>) -> Result<(), AgentError> {
        self.with_db(|c| {
            match state {
                Some(s) => c.execute(
                    "INSERT INTO simulator_vm (host_uuid, vm_uuid, state) VALUES (?1, ?2, ?3)
                     ON CONFLICT (host_uuid, vm_uuid) DO UPDATE SET state = excluded.state",
                    params![self.host_uuid, uuid, s],
                )?,
                None => c.execute(
                    "DELETE FROM simulator_vm WHERE host_uuid = ?1 AND vm_uuid = ?2",
                    params![self.host_uuid, uuid],
                )?,
            };
            Ok(())
        })
    }
    fn runs(&self, uuid: &str) -> Result<bool, AgentError> {
        self.with_db(|c| {
            c.query_row(
                "SELECT 1 FROM simulator_vm WHERE host_uuid = ?1 AND vm_uuid = ?2",
                params![self.host_uuid, uuid],
                |_| Ok(()),
            )
            .optional()
        })
        .map(|r| r.is_some())
    }
}

impl HostAgent for SimulatorHost<'_> {
    fn connect(&self) -> Result<HostFacts, AgentError> {
        let (cpu, mem, _) = self.capacity()?;
        let vms = self.with_db(|c| {
            let mut st =
                c.prepare("SELECT vm_uuid, state FROM simulator_vm WHERE host_uuid = ?1")?;
            let rows = st.query_map([&self.host_uuid], |r| {
                Ok(VmReport {
                    uuid: r.get(0)?,
                    state: r.get(1)?,
                })
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        Ok(HostFacts {
            cpu_num: cpu,
            memory_size: mem,
            hostname: format!(
                "simulator-{}",
                &self.host_uuid[..8.min(self.host_uuid.len())]
            ),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            hypervisor: Some("simulator".into()),
            virtualization_reason: Some("a simulator host runs no guest".into()),
            libvirt_version: None,
            qemu_version: None,
            vms: Some(vms),
            certificate_serial: None,
        })
    }
    fn ping(&self) -> Result<(), AgentError> {
        self.capacity().map(|_| ())
    }
    fn check_shared_mount_point(
        &self,
        req: &proto::CheckStorage,
    ) -> Result<StorageCapacity, AgentError> {
        let url = &req.url;
        if !url.starts_with('/') {
            return Err(self.err(format!("{url} is not an absolute path")));
        }
        let (_, _, storage) = self.capacity()?;
        Ok(StorageCapacity {
            total_capacity: storage,
            available_capacity: storage,
        })
    }
    fn start_vm(&self, spec: &VmSpec) -> Result<(), AgentError> {
        self.set_vm(&spec.uuid, Some("Running"))
    }
    fn stop_vm(&self, req: &StopVm) -> Result<(), AgentError> {
        self.set_vm(&req.uuid, None)
    }
    fn reboot_vm(&self, uuid: &str) -> Result<(), AgentError> {
        if !self.runs(uuid)? {
            return Err(self.err(format!("VM {uuid} is not running here")));
        }
        Ok(())
    }
    fn destroy_vm(&self, req: &DestroyVm) -> Result<(), AgentError> {
        self.set_vm(&req.uuid, None)
    }
    fn attach_volume(&self, req: &VolumeAttachment) -> Result<(), AgentError> {
        if !self.runs(&req.vm_uuid)? {
            return Err(self.err(format!("VM {} is not running here", req.vm_uuid)));
        }
        Ok(())
    }
    fn detach_volume(&self, _req: &VolumeAttachment) -> Result<(), AgentError> {
        Ok(())
    }
    fn delete_volume(&self, _install_path: &str) -> Result<(), AgentError> {
        Ok(())
    }
    fn apply_eip(&self, eip: &EipSpec) -> Result<(), AgentError> {
        if !self.runs(&eip.vm_uuid)? {
            return Err(self.err(format!("VM {} is not running here", eip.vm_uuid)));
        }
        Ok(())
    }
    fn remove_eip(&self, _eip: &EipSpec) -> Result<(), AgentError> {
        Ok(())
    }
    /// A simulator host runs no guest, so there is no guest output: it answers the log of its
    /// own simulated boot of the VM, labelled as the simulator's, in the same pieces as a KVM
    /// host's agent.
    fn console_log(&self, req: &ConsoleLogRequest) -> Result<ConsoleLog, AgentError> {
        let host = &self.host_uuid;
        let vm = &req.uuid;
        let state = if self.runs(vm)? { "runs" } else { "is stopped" };
        let text = format!(
            "[simulator host {host}] This console log is written by the simulator, not by a guest: \
             a simulator host runs no guest.\n\
             [simulator host {host}] VM {vm} booted (simulated).\n\
             [simulator host {host}] VM {vm} {state} on this simulator host.\n"
        );
        Ok(ConsoleLog {
            source: Some(format!("simulator host {host}")),
            ..ConsoleLog::of_bytes(text.as_bytes(), req.offset)
        })
    }
}

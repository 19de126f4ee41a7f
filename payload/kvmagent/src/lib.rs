//! The KVM host agent (`zstack-kvmagent`): answers the management node on `kvmagent.port`
//! (7070), HTTPS only, with mutual TLS: the client must present a certificate of this cloud's CA
//! (`/etc/zstack/pki/ca.pem`). Every call but `GET /health` takes only the management node's
//! certificate; `/health` also answers a host's (so `zstack-ctl status` can ask with the host's
//! own). A host that has no certificate yet (installed with `--host-only`, not yet added) listens
//! on nothing until `AddKVMHost` installs one.
//!
//! - `host.rs`: the host's tools (virsh, qemu-img, ip) behind one trait.
//! - `vm.rs`: VMs as transient libvirt domains rendered from `templates/libvirt/`.
//! - `console.rs`: VMs' serial console logs, read back in bounded pieces from an offset.
//! - `storage.rs`: shared mount point checks, the image cache, volume files.
//!
//! The agent keeps no state of its own: the management node's database is the record, and a
//! restart of the agent leaves every VM running (they are libvirt's processes).

pub mod bridge;
pub mod console;
pub mod eip;
pub mod file_error;
pub mod flat;
pub mod host;
pub mod metadata;
pub mod netaddr;
pub mod storage;
pub mod virtualization;
pub mod vm;

use crate::file_error::file_error;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use zstack_common::agent_proto::{
    path, CheckStorage, ConsoleLogRequest, DeleteVolume, DestroyVm, EipSpec, HostFacts, StopVm,
    VmRef, VmSpec, VolumeAttachment,
};
use zstack_common::health::Health;
use zstack_common::logfile::LogFile;
use zstack_common::service::{keys, Service};
use zstack_common::templates::Templates;
use zstack_common::{Layout, Properties, Release, PRODUCT};

use zstack_pki::tls::ClientAuth;
use zstack_pki::{MachinePki, Role};

use crate::host::{SystemTools, Virsh};
use crate::vm::{Refusal, VmHost};

struct AgentState {
    version: String,
    /// Serial of the certificate the agent serves with (reported at connect).
    certificate_serial: String,
    /// Downloads images from the management node's host channel with the host's certificate.
    image_client: ureq::Agent,
    layout: Layout,
    templates: Templates,
    log: LogFile,
    domain_type: &'static str,
    /// Why `domain_type` (the host's `virtualizationReason`).
    virtualization_reason: String,
    metadata: crate::flat::MetadataServers,
}

impl AgentState {
    fn vm_host(&self) -> VmHost<'_> {
        VmHost {
            tools: &SystemTools,
            templates: &self.templates,
            run_dir: self.layout.host(self.layout.run_dir().join("kvmagent")),
            console_dir: self.layout.host(self.layout.log_dir().join("vms")),
            image_client: &self.image_client,
            domain_type: self.domain_type,
            state_dir: self.layout.host(self.layout.data_dir().join("kvmagent")),
            metadata: Some(&self.metadata),
        }
    }
}

/// Runs the agent until SIGTERM or SIGINT.
pub fn run() -> anyhow::Result<()> {
    zstack_http::run_service(Service::KvmAgent, serve)
}

/// The release tree this program runs from (`<tree>/bin/zstack-kvmagent`).
fn release_tree() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?.canonicalize()?;
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .context("cannot locate the release tree of this program")
}

fn serve(layout: &Layout, log: &LogFile) -> anyhow::Result<()> {
    let release = Release::of_running_program()
        .context("cannot find release.json beside this program; is the release tree intact?")?;
    let props = Properties::load(&layout.host(layout.properties_file()))?;
    let port = Service::KvmAgent.port(&props).map_err(anyhow::Error::msg)?;
    let pki = MachinePki::new(layout.host(layout.pki_dir()));
    if !wait_for_certificate(&pki, log)? {
        return Ok(());
    }
    let tls = AgentTls::load(&pki)?;
    let templates = Templates::load(&release_tree()?.join("templates"))?;
    let store =
        metadata::MetadataStore::open(metadata::store_dir(layout)).context("metadata store")?;
    for skipped in store.skipped() {
        log.warn(&format!("metadata: skipped {skipped}"));
    }
    let metadata = flat::MetadataServers::new(std::sync::Arc::new(store));
    let virtualization =
        virtualization::choose(props.get(keys::AGENT_VIRTUALIZATION).unwrap_or("auto"));
    log.info(&format!(
        "virtualization {}: {}",
        virtualization.domain_type, virtualization.reason
    ));
    let state = Arc::new(AgentState {
        version: release.version.clone(),
        certificate_serial: tls.serial,
        image_client: tls.image_client,
        layout: layout.clone(),
        templates,
        log: log.clone(),
        domain_type: virtualization.domain_type,
        virtualization_reason: virtualization.reason,
        metadata,
    });
    resume_metadata(&state);

    let authenticated = Router::new()
        .route(path::PING, get(ping).post(ping))
        .route(path::CONNECT, post(connect))
        .route(path::CHECK_SMP, post(check_smp))
        .route(path::START_VM, post(start_vm))
        .route(path::STOP_VM, post(stop_vm))
        .route(path::REBOOT_VM, post(reboot_vm))
        .route(path::DESTROY_VM, post(destroy_vm))
        .route(path::VM_CONSOLE_LOG, post(vm_console_log))
        .route(path::ATTACH_VOLUME, post(attach_volume))
        .route(path::DETACH_VOLUME, post(detach_volume))
        .route(path::DELETE_VOLUME, post(delete_volume))
        .route(path::APPLY_EIP, post(apply_eip))
        .route(path::REMOVE_EIP, post(remove_eip))
        .route_layer(middleware::from_fn(require_management_node))
        .with_state(state);
    zstack_http::serve_endpoints_until_signal(
        Service::KvmAgent,
        &release.version,
        vec![zstack_http::Endpoint {
            port,
            listen: zstack_http::Listen::Tls(tls.server),
            app: authenticated,
        }],
        log,
        || {},
    )
}

/// What the agent serves and downloads with, from the host's certificate.
struct AgentTls {
    server: zstack_http::TlsConfigCell,
    image_client: ureq::Agent,
    serial: String,
}

impl AgentTls {
    fn load(pki: &MachinePki) -> anyhow::Result<AgentTls> {
        let dir = pki.dir().display().to_string();
        let identity = pki
            .identity(Role::Host)
            .with_context(|| format!("cannot read this host's certificate in {dir}"))?;
        let trust = pki
            .trust()
            .with_context(|| format!("cannot read the cloud's CA in {dir}"))?;
        let serial = pki.certificate_identity(Role::Host)?.serial;
        let server = zstack_pki::tls::server_config(
            &identity,
            &trust,
            ClientAuth::Required(vec![Role::ManagementNode, Role::Host]),
        )
        .with_context(|| format!("the certificates in {dir} do not make a TLS configuration"))?;
        let client = zstack_pki::tls::client_config(Some(&identity), &trust, Role::ManagementNode)
            .with_context(|| format!("the certificates in {dir} do not make a TLS client"))?;
        let image_client = zstack_common::http_client::tls_agent(
            zstack_common::http_client::Timeouts {
                connect: Some(std::time::Duration::from_secs(10)),
                read: Some(std::time::Duration::from_secs(300)),
                whole: None,
            },
            client,
        );
        Ok(AgentTls {
            server: zstack_http::TlsConfigCell::new(server),
            image_client,
            serial,
        })
    }
}

/// A host installed on its own (`--host-only`) has no certificate until the management node
/// adds it. Until then the agent listens on nothing: it waits for `host.pem` and starts serving
/// when it appears. Answers false if the agent was told to stop while waiting.
fn wait_for_certificate(pki: &MachinePki, log: &LogFile) -> anyhow::Result<bool> {
    if pki.has_identity(Role::Host) {
        return Ok(true);
    }
    log.info(&format!(
        "this host has no certificate in {} yet: waiting to be added to a cloud \
         (AddKVMHost on the management node); listening on nothing until then",
        pki.dir().display()
    ));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone())
            .context("cannot watch for the stop signal")?;
    }
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        if pki.has_identity(Role::Host) {
            log.info("this host's certificate is installed: starting to serve");
            return Ok(true);
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    log.info("stopped while waiting for a certificate");
    Ok(false)
}

/// Every call but `/health` is the management node's: a host's certificate (which the TLS
/// handshake accepts, for health checks) is refused here.
async fn require_management_node(req: Request, next: Next) -> Response {
    let role = req
        .extensions()
        .get::<zstack_http::PeerCertificate>()
        .and_then(|c| zstack_pki::identity_of(&c.0).ok())
        .map(|id| id.role);
    if role != Some(Role::ManagementNode) {
        return refuse(
            StatusCode::FORBIDDEN,
            "NOT_THE_MANAGEMENT_NODE",
            "only the management node of this cloud may call the agent; the certificate \
             presented is not the management node's"
                .to_string(),
        );
    }
    next.run(req).await
}

/// An authenticated ping: proves the caller holds the management node's certificate.
async fn ping(State(state): State<Arc<AgentState>>) -> Json<Health> {
    Json(Health {
        product: PRODUCT.to_string(),
        service: Service::KvmAgent.name().to_string(),
        version: state.version.clone(),
        status: "ok".to_string(),
        pid: std::process::id(),
    })
}

/// Refuses a call with the agent's error body.
fn refuse(status: StatusCode, code: &str, message: String) -> Response {
    (
        status,
        Json(serde_json::json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

/// What the host has: CPUs and memory from /proc, its hostname, the virtualization libvirt will
/// use, libvirt's and qemu's versions, and the VMs libvirt runs. libvirt must answer: a host
/// whose libvirtd is down cannot run VMs, and says so.
async fn connect(State(state): State<Arc<AgentState>>) -> Response {
    blocking(state, |st| {
        let mut facts = host_facts(&st.version).map_err(|e| Refusal::new("HOST_FACTS", e))?;
        let (libvirt, qemu) = Virsh {
            tools: &SystemTools,
        }
        .versions()?;
        facts.libvirt_version = libvirt;
        facts.qemu_version = qemu;
        facts.hypervisor = Some(st.domain_type.to_string());
        facts.virtualization_reason = Some(st.virtualization_reason.clone());
        facts.vms = Some(st.vm_host().report()?);
        facts.certificate_serial = Some(st.certificate_serial.clone());
        Ok(serde_json::to_value(facts).unwrap_or_default())
    })
    .await
}

/// Why the agent cannot read or write one of the host's files.
#[derive(Debug, thiserror::Error)]
enum HostFileError {
    #[error(transparent)]
    File(#[from] crate::file_error::FileError),
    #[error("/proc/meminfo has no MemTotal line")]
    NoMemTotal,
    #[error(transparent)]
    Template(#[from] zstack_common::templates::TemplateError),
}

fn host_facts(version: &str) -> Result<HostFacts, HostFileError> {
    let cpuinfo_path = Path::new("/proc/cpuinfo");
    let meminfo_path = Path::new("/proc/meminfo");
    let cpuinfo =
        std::fs::read_to_string(cpuinfo_path).map_err(file_error("read", cpuinfo_path))?;
    let meminfo =
        std::fs::read_to_string(meminfo_path).map_err(file_error("read", meminfo_path))?;
    Ok(HostFacts {
        cpu_num: count_cpus(&cpuinfo),
        memory_size: mem_total(&meminfo).ok_or(HostFileError::NoMemTotal)?,
        hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default(),
        agent_version: version.to_string(),
        hypervisor: None,
        libvirt_version: None,
        qemu_version: None,
        virtualization_reason: None,
        vms: None,
        certificate_serial: None,
    })
}

/// After a restart of the agent, the VMs still run: serve again the metadata of every L3
/// namespace that is there.
fn resume_metadata(st: &AgentState) {
    let namespaces =
        crate::host::HostTools::run(&SystemTools, "ip", &["netns", "list"]).unwrap_or_default();
    let mut l3s: Vec<String> = st
        .metadata
        .store
        .vm_uuids()
        .iter()
        .flat_map(|vm| st.metadata.store.records(vm))
        .map(|r| r.l3_network_uuid.clone())
        .collect();
    l3s.sort();
    l3s.dedup();
    for l3 in l3s {
        let ns = flat::namespace(&l3);
        if namespaces
            .lines()
            .any(|l| l.split_whitespace().next() == Some(ns.as_str()))
        {
            if let Err(e) = st.metadata.ensure_listener(&l3) {
                st.log.warn(&format!("metadata of L3 {l3}: {e}"));
            }
        }
    }
}

/// Runs `f` on the blocking pool; answers its value, or its refusal as
/// `{"error": {"code", "message"}}`.
async fn blocking(
    state: Arc<AgentState>,
    f: impl FnOnce(&AgentState) -> Result<serde_json::Value, Refusal> + Send + 'static,
) -> Response {
    let log_state = state.clone();
    match tokio::task::spawn_blocking(move || f(&state)).await {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(r)) => {
            log_state
                .log
                .warn(&format!("refused: {} ({})", r.message, r.code));
            let status = match r.code {
                "BAD_REQUEST"
                | "CACHE_MODE_UNSUPPORTED"
                | "STORAGE_UNUSABLE"
                | "BRIDGE_NEEDS_SETUP" => StatusCode::BAD_REQUEST,
                "VM_NOT_RUNNING" | "VM_UNKNOWN" => StatusCode::CONFLICT,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            refuse(status, r.code, r.message)
        }
        Err(e) => refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            e.to_string(),
        ),
    }
}

fn done() -> Result<serde_json::Value, Refusal> {
    Ok(serde_json::json!({}))
}

async fn start_vm(State(state): State<Arc<AgentState>>, Json(spec): Json<VmSpec>) -> Response {
    blocking(state, move |st| {
        st.vm_host().start(&spec)?;
        st.log.info(&format!("VM {} started", spec.uuid));
        done()
    })
    .await
}

async fn stop_vm(State(state): State<Arc<AgentState>>, Json(req): Json<StopVm>) -> Response {
    blocking(state, move |st| {
        st.vm_host().stop(&req)?;
        st.log.info(&format!("VM {} stopped", req.uuid));
        done()
    })
    .await
}

async fn reboot_vm(State(state): State<Arc<AgentState>>, Json(req): Json<VmRef>) -> Response {
    blocking(state, move |st| {
        st.vm_host().reboot(&req.uuid)?;
        done()
    })
    .await
}

async fn destroy_vm(State(state): State<Arc<AgentState>>, Json(req): Json<DestroyVm>) -> Response {
    blocking(state, move |st| {
        st.vm_host().destroy(&req)?;
        st.log.info(&format!("VM {} destroyed", req.uuid));
        done()
    })
    .await
}

/// The VM's serial console log from an offset, at most 64 KiB (see `console.rs`).
async fn vm_console_log(
    State(state): State<Arc<AgentState>>,
    Json(req): Json<ConsoleLogRequest>,
) -> Response {
    blocking(state, move |st| {
        let log = st.vm_host().console_log(&req)?;
        serde_json::to_value(log).map_err(|e| Refusal::new("INTERNAL_ERROR", e))
    })
    .await
}

async fn attach_volume(
    State(state): State<Arc<AgentState>>,
    Json(req): Json<VolumeAttachment>,
) -> Response {
    blocking(state, move |st| {
        st.vm_host().attach(&req)?;
        done()
    })
    .await
}

async fn detach_volume(
    State(state): State<Arc<AgentState>>,
    Json(req): Json<VolumeAttachment>,
) -> Response {
    blocking(state, move |st| {
        st.vm_host().detach(&req)?;
        done()
    })
    .await
}

async fn delete_volume(
    State(state): State<Arc<AgentState>>,
    Json(req): Json<DeleteVolume>,
) -> Response {
    blocking(state, move |_| {
        storage::delete_volume_file(Path::new(&req.install_path))
            .map_err(|e| Refusal::new("STORAGE_UNUSABLE", e))?;
        done()
    })
    .await
}

fn count_cpus(cpuinfo: &str) -> i64 {
    cpuinfo
        .lines()
        .filter(|l| l.split(':').next().map(str::trim) == Some("processor"))
        .count() as i64
}

/// MemTotal in bytes.
fn mem_total(meminfo: &str) -> Option<i64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

/// Applies an EIP on this host (see `eip.rs`) and tells the VM's metadata its public address.
async fn apply_eip(State(state): State<Arc<AgentState>>, Json(spec): Json<EipSpec>) -> Response {
    blocking(state, move |st| {
        eip::apply(&SystemTools, &st.templates, &spec)
            .map_err(|e| Refusal::new("EIP_FAILED", e))?;
        let _ = st.metadata.store.set_public_ip(
            &spec.nic.l3_network_uuid,
            &spec.nic.ip,
            Some(spec.vip_ip.clone()),
        );
        st.log.info(&format!(
            "EIP {} ({}) applied for VM {}",
            spec.eip_uuid, spec.vip_ip, spec.vm_uuid
        ));
        done()
    })
    .await
}

/// Removes an EIP from this host; removing one that is not there changes nothing.
async fn remove_eip(State(state): State<Arc<AgentState>>, Json(spec): Json<EipSpec>) -> Response {
    blocking(state, move |st| {
        eip::remove(&SystemTools, &st.templates, &spec)
            .map_err(|e| Refusal::new("EIP_FAILED", e))?;
        let _ = st
            .metadata
            .store
            .set_public_ip(&spec.nic.l3_network_uuid, &spec.nic.ip, None);
        st.log.info(&format!("EIP {} removed", spec.eip_uuid));
        done()
    })
    .await
}

/// Checks a shared mount point (see `storage.rs`), answers its capacity, and makes the agent's
/// unit wait for that filesystem at boot.
async fn check_smp(
    State(state): State<Arc<AgentState>>,
    Json(req): Json<CheckStorage>,
) -> Response {
    blocking(state, move |st| {
        let cap = storage::check_shared_mount_point(&req)
            .map_err(|e| Refusal::new("STORAGE_UNUSABLE", e))?;
        if let Err(e) = remember_mount(st, &req.url) {
            st.log.warn(&format!(
                "cannot record {} for the agent's unit: {e}",
                req.url
            ));
        }
        Ok(serde_json::to_value(cap).unwrap_or_default())
    })
    .await
}

/// Adds `url` to the mounts the agent's unit requires (`RequiresMountsFor=` in a drop-in), so a
/// host that boots before its shared filesystem is mounted does not start the agent on the empty
/// directory.
fn remember_mount(st: &AgentState, url: &str) -> Result<(), HostFileError> {
    let list = st
        .layout
        .host(st.layout.data_dir().join("kvmagent/storage-mounts"));
    let mut mounts: Vec<String> = std::fs::read_to_string(&list)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect();
    if mounts.iter().any(|m| m == url) {
        return Ok(());
    }
    mounts.push(url.to_string());
    if let Some(dir) = list.parent() {
        std::fs::create_dir_all(dir).map_err(file_error("create", dir))?;
    }
    zstack_common::fsutil::atomic_write(
        &list,
        format!("{}\n", mounts.join("\n")).as_bytes(),
        0o644,
    )
    .map_err(file_error("write", &list))?;
    let dropin = st.layout.host(
        st.layout
            .systemd_dir()
            .join("zstack-kvmagent.service.d/zstack-storage.conf"),
    );
    let text = st.templates.render(
        "systemd/zstack-kvmagent-storage.conf.tera",
        &serde_json::json!({ "storage_mounts": mounts }),
    )?;
    if let Some(dir) = dropin.parent() {
        std::fs::create_dir_all(dir).map_err(file_error("create", dir))?;
    }
    zstack_common::fsutil::atomic_write(&dropin, text.as_bytes(), 0o644)
        .map_err(file_error("write", &dropin))?;
    if Path::new("/run/systemd/system").exists() && !st.layout.is_sysroot() {
        let _ = std::process::Command::new("systemctl")
            .arg("daemon-reload")
            .status();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpus_and_memory() {
        let cpu = "processor\t: 0\nmodel name\t: x\n\nprocessor\t: 1\nmodel name\t: x\n";
        assert_eq!(count_cpus(cpu), 2);
        assert_eq!(
            mem_total("MemTotal:       2048 kB\nMemFree: 1 kB\n"),
            Some(2048 * 1024)
        );
        assert_eq!(mem_total("MemFree: 1 kB\n"), None);
    }

    /// Every template the agent renders escapes or refuses, for its format, a newline, a quote
    /// and a NUL in each value (the second line of defence behind the API's grammar checks).
    #[test]
    fn every_template_of_the_agent_escapes_or_refuses_newline_quote_and_nul() {
        let templates =
            Templates::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../templates"))
                .unwrap();
        let dnsmasq = |domain: &str| {
            serde_json::json!({
                "l3_uuid": "l3", "namespace": "zs-l3-l3", "interface": "zll3n",
                "network": "10.0.0.0", "netmask": "255.255.255.0", "gateway": "10.0.0.1",
                "dhcp_ip": "10.0.0.2", "dns": "10.0.0.1", "dns_domain": domain,
                "hosts_file": "/h", "lease_file": "/l", "pid_file": "/p", "log_file": "/g",
            })
        };
        let domain = |name: &str| {
            serde_json::json!({
                "domain_type": "qemu", "uuid": "u",
                "vm": {"uuid": "u", "name": name, "memorySize": 1, "cpuNum": 1},
                "disks": [{"format": "qcow2", "cacheMode": "none", "installPath": "/v",
                           "target": "vda", "volumeUuid": "v"}],
                "nics": [], "console_log": "/c",
            })
        };
        let nat = |vip: &str| {
            serde_json::json!({
                "eip_uuid": "e", "vip": vip, "vm_ip": "10.0.0.5",
                "public_if": "public", "gateway_if": "gateway",
            })
        };
        let elements = |port: &str| {
            serde_json::json!({
                "ops": ["add"], "gateway_ports": [port], "gateway_taps": [], "tap_gateways": [],
            })
        };
        let mounts = |path: &str| serde_json::json!({ "storage_mounts": [path] });
        let flat = |table: &str| serde_json::json!({ "table": table });
        type Context = Box<dyn Fn(&str) -> serde_json::Value>;
        let cases: Vec<(&str, Context)> = vec![
            ("dnsmasq/l3.conf.tera", Box::new(dnsmasq)),
            ("libvirt/domain.xml.tera", Box::new(domain)),
            ("nft/eip.nft.tera", Box::new(nat)),
            ("nft/eip-bridge-elements.nft.tera", Box::new(elements)),
            ("nft/flat.nft.tera", Box::new(flat)),
            (
                "systemd/zstack-kvmagent-storage.conf.tera",
                Box::new(mounts),
            ),
        ];
        for (name, context) in &cases {
            assert!(
                templates.render(name, &context("zstack.org")).is_ok(),
                "{name}"
            );
            for bad in ["x\ndhcp-script=/tmp/x", "x\0y", "x\r\ny"] {
                assert!(
                    templates.render(name, &context(bad)).is_err(),
                    "{name} rendered {bad:?}"
                );
            }
        }
        // A quote: escaped in XML, refused where it would end an nftables string or split a
        // unit's list, plain text in a dnsmasq value.
        let xml = templates
            .render("libvirt/domain.xml.tera", &domain("a'b\"c"))
            .unwrap();
        assert!(xml.contains("<title>a&#39;b&quot;c</title>"), "{xml}");
        assert!(templates
            .render("nft/eip-bridge-elements.nft.tera", &elements("p\" accept"))
            .is_err());
        assert!(templates
            .render("nft/eip.nft.tera", &nat("1.2.3.4 accept;"))
            .is_err());
        assert!(templates
            .render("systemd/zstack-kvmagent-storage.conf.tera", &mounts("/a b"))
            .is_err());
        let conf = templates
            .render("dnsmasq/l3.conf.tera", &dnsmasq("a\"b"))
            .unwrap();
        assert!(conf.contains("\ndomain=a\"b\n"), "{conf}");
    }
}

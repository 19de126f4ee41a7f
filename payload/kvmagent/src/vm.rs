//! VMs on this host, through libvirt: the domain XML is rendered from
//! `templates/libvirt/domain.xml.tera` for every start and run as a transient domain, so the
//! management node's database stays the one record of a VM. Disks are files on shared mount
//! point storage; NICs are taps on the bridge of their L2 network.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use zstack_common::agent_proto::{
    DestroyVm, DiskSpec, NicSpec, StopVm, VmReport, VmSpec, VolumeAttachment,
};
use zstack_common::templates::Templates;

use crate::host::{HostTools, Virsh};
use crate::storage;

/// How long a live detach waits for the guest to release the disk.
const DETACH_WAIT: Duration = Duration::from_secs(30);

/// What a refused call answers: a stable code and the reason.
#[derive(Debug)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
}

impl Refusal {
    /// A refusal with `code`, saying `message` (a sentence, or an error of the module that
    /// refused).
    pub fn new(code: &'static str, message: impl std::fmt::Display) -> Self {
        Refusal {
            code,
            message: message.to_string(),
        }
    }
}

impl From<crate::host::HostError> for Refusal {
    fn from(e: crate::host::HostError) -> Self {
        Refusal::new("HOST_COMMAND_FAILED", e.to_string())
    }
}

pub struct VmHost<'a> {
    pub tools: &'a dyn HostTools,
    pub templates: &'a Templates,
    /// Where rendered domain XML files go (`/run/zstack/kvmagent`).
    pub run_dir: PathBuf,
    /// Where VM consoles are written (`/var/log/zstack/vms`).
    pub console_dir: PathBuf,
    /// Downloads images from the management node (with the host's certificate).
    pub image_client: &'a ureq::Agent,
    /// `kvm` or `qemu`.
    pub domain_type: &'static str,
    /// `/var/lib/zstack/kvmagent`: the specs of the VMs started here (for their NICs at stop),
    /// and the flat network's state.
    pub state_dir: PathBuf,
    pub metadata: Option<&'a crate::flat::MetadataServers>,
}

/// 32 hex digits -> the RFC 4122 form libvirt's `<uuid>` wants.
pub fn dashed(uuid: &str) -> String {
    if uuid.len() != 32 {
        return uuid.to_string();
    }
    format!(
        "{}-{}-{}-{}-{}",
        &uuid[..8],
        &uuid[8..12],
        &uuid[12..16],
        &uuid[16..20],
        &uuid[20..]
    )
}

/// The tap of a NIC: fits the 15-character limit of interface names for any uuid.
pub fn tap_name(nic: &NicSpec) -> String {
    format!(
        "vnic{}.{}",
        &nic.uuid[..8.min(nic.uuid.len())],
        nic.device_id
    )
}

pub fn bridge_name(interface: &str) -> String {
    format!("br_{interface}")
}

/// vda, vdb, ... for device ids 0, 1, ...
pub fn disk_target(device_id: i64) -> String {
    let n = device_id.clamp(0, 25) as u8;
    format!("vd{}", (b'a' + n) as char)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DiskView<'a> {
    volume_uuid: &'a str,
    install_path: &'a str,
    format: &'a str,
    cache_mode: &'a str,
    target: String,
}

impl<'a> DiskView<'a> {
    fn of(d: &'a DiskSpec) -> Self {
        DiskView {
            volume_uuid: &d.volume_uuid,
            install_path: &d.install_path,
            format: &d.format,
            cache_mode: &d.cache_mode,
            target: disk_target(d.device_id),
        }
    }
}

#[derive(Serialize)]
struct NicView {
    mac: String,
    bridge: String,
    tap: String,
}

/// Our domains are named by the VM's uuid: 32 hex digits.
pub fn is_vm_name(name: &str) -> bool {
    name.len() == 32 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

impl VmHost<'_> {
    fn virsh(&self) -> Virsh<'_> {
        Virsh { tools: self.tools }
    }

    /// The VMs libvirt runs here, for the management node's sync.
    pub fn report(&self) -> Result<Vec<VmReport>, Refusal> {
        Ok(self
            .virsh()
            .list()?
            .into_iter()
            .filter(|(n, _)| is_vm_name(n))
            .filter_map(|(n, s)| {
                let state = match s.as_str() {
                    "running" | "idle" | "in shutdown" => "Running",
                    "paused" | "pmsuspended" => "Paused",
                    _ => return None,
                };
                Some(VmReport {
                    uuid: n,
                    state: state.to_string(),
                })
            })
            .collect())
    }

    fn running(&self, uuid: &str) -> Result<bool, Refusal> {
        Ok(self
            .virsh()
            .state(uuid)?
            .is_some_and(|s| s != "shut off" && s != "crashed"))
    }

    /// Checks a disk can be used with its cache mode: `none` is O_DIRECT, which some
    /// filesystems refuse, and qemu would then fail to start.
    fn check_cache_mode(&self, disk: &DiskSpec) -> Result<(), Refusal> {
        if disk.cache_mode != "none" {
            return Ok(());
        }
        let dir = Path::new(&disk.install_path)
            .parent()
            .unwrap_or_else(|| Path::new("/"));
        match storage::supports_o_direct(dir) {
            Ok(true) => Ok(()),
            Ok(false) => Err(Refusal::new(
                "CACHE_MODE_UNSUPPORTED",
                format!(
                    "the storage of {} does not support O_DIRECT, which kvm/vm.cacheMode=none needs; \
                     set kvm/vm.cacheMode to writethrough or writeback, or use storage that \
                     supports O_DIRECT",
                    disk.install_path
                ),
            )),
            Err(e) => Err(Refusal::new("STORAGE_UNUSABLE", e)),
        }
    }

    /// Makes a volume's file if it is not there yet: the root volume as an overlay on the
    /// cached image, a data volume empty.
    fn prepare_disk(&self, disk: &DiskSpec) -> Result<(), Refusal> {
        let path = Path::new(&disk.install_path);
        if disk.install_path.is_empty() || !path.is_absolute() {
            return Err(Refusal::new(
                "BAD_REQUEST",
                format!("volume {} has no absolute install path", disk.volume_uuid),
            ));
        }
        self.check_cache_mode(disk)?;
        if path.exists() {
            return Ok(());
        }
        let unusable = |e: storage::StorageError| Refusal::new("STORAGE_UNUSABLE", e);
        match (&disk.image_url, &disk.image_uuid, &disk.primary_storage_url) {
            (Some(url), Some(image), Some(ps)) if disk.r#type == "Root" => {
                let cache = storage::image_cache_path(ps, image);
                storage::ensure_cached_image(
                    &cache,
                    url,
                    disk.image_sha256.as_deref(),
                    self.image_client,
                )
                .map_err(unusable)?;
                let fmt = disk.image_format.as_deref().unwrap_or("qcow2");
                storage::create_overlay(self.tools, path, &cache, fmt).map_err(unusable)
            }
            _ => storage::create_blank(self.tools, path, disk.size).map_err(unusable),
        }
    }

    /// The bridge of an L2 network (see `bridge.rs`).
    fn ensure_bridge(&self, interface: &str) -> Result<String, Refusal> {
        use crate::bridge::BridgeError;
        crate::bridge::ensure_bridge(self.tools, interface)
            .map(|b| b.name)
            .map_err(|e| match e {
                BridgeError::Move { .. } => Refusal::new("BRIDGE_NEEDS_SETUP", e.to_string()),
                BridgeError::Host(h) => Refusal::from(h),
            })
    }

    fn write_xml(&self, name: &str, xml: &str) -> Result<PathBuf, Refusal> {
        std::fs::create_dir_all(&self.run_dir).map_err(|e| {
            Refusal::new(
                "INTERNAL_ERROR",
                format!("cannot create {}: {e}", self.run_dir.display()),
            )
        })?;
        let f = self.run_dir.join(name);
        std::fs::write(&f, xml).map_err(|e| {
            Refusal::new(
                "INTERNAL_ERROR",
                format!("cannot write {}: {e}", f.display()),
            )
        })?;
        Ok(f)
    }

    pub fn render_domain(
        &self,
        spec: &VmSpec,
        nics: Vec<(String, String, String)>,
    ) -> Result<String, Refusal> {
        let mut disks = vec![DiskView::of(&spec.root_volume)];
        disks.extend(spec.data_volumes.iter().map(DiskView::of));
        let console = self.console_file(&spec.uuid);
        self.templates
            .render(
                "libvirt/domain.xml.tera",
                &serde_json::json!({
                    "domain_type": self.domain_type,
                    "uuid": dashed(&spec.uuid),
                    "vm": spec,
                    "disks": disks,
                    "nics": nics.into_iter().map(|(mac, bridge, tap)| NicView { mac, bridge, tap }).collect::<Vec<_>>(),
                    "console_log": console.display().to_string(),
                }),
            )
            .map_err(|e| Refusal::new("INTERNAL_ERROR", e.to_string()))
    }

    /// Starts a VM; starting one that runs already changes nothing.
    pub fn start(&self, spec: &VmSpec) -> Result<(), Refusal> {
        if self.running(&spec.uuid)? {
            // Already running (a reconnect re-sends the running VMs): make its network state
            // equal to the spec again; every step of that is idempotent.
            return self.apply_network(spec);
        }
        self.prepare_disk(&spec.root_volume)?;
        for d in &spec.data_volumes {
            self.prepare_disk(d)?;
        }
        let mut nics = Vec::new();
        for n in &spec.nics {
            let br = self.ensure_bridge(&n.physical_interface)?;
            nics.push((n.mac.clone(), br, tap_name(n)));
        }
        // The NICs' DHCP, metadata and anti-spoofing entries go in before the VM runs, so its
        // first DHCP request is answered; the spec is kept for the stop.
        self.save_spec(spec)?;
        if let Some(m) = self.metadata {
            m.store
                .upsert_vm(spec)
                .map_err(|e| Refusal::new("NETWORK_SETUP_FAILED", e))?;
        }
        let hostname = crate::flat::dhcp_hostname(&spec.metadata.hostname, &spec.uuid);
        for n in &spec.nics {
            if let Err(e) = self.flat().add_nic(n, &hostname) {
                self.remove_nics(&spec.uuid);
                return Err(Refusal::new("NETWORK_SETUP_FAILED", e));
            }
        }
        std::fs::create_dir_all(&self.console_dir).map_err(|e| {
            Refusal::new(
                "INTERNAL_ERROR",
                format!("cannot create {}: {e}", self.console_dir.display()),
            )
        })?;
        let xml = self.render_domain(spec, nics)?;
        let file = self.write_xml(&format!("{}.xml", spec.uuid), &xml)?;
        self.virsh()
            .create(&file.display().to_string())
            .map_err(|e| {
                self.remove_nics(&spec.uuid);
                Refusal::new("VM_START_FAILED", e.to_string())
            })
    }

    /// The VM's NICs in the flat network and its metadata, as the spec says.
    fn apply_network(&self, spec: &VmSpec) -> Result<(), Refusal> {
        self.save_spec(spec)?;
        if let Some(m) = self.metadata {
            m.store
                .upsert_vm(spec)
                .map_err(|e| Refusal::new("NETWORK_SETUP_FAILED", e))?;
        }
        let hostname = crate::flat::dhcp_hostname(&spec.metadata.hostname, &spec.uuid);
        for n in &spec.nics {
            self.ensure_bridge(&n.physical_interface)?;
            self.flat()
                .add_nic(n, &hostname)
                .map_err(|e| Refusal::new("NETWORK_SETUP_FAILED", e))?;
        }
        Ok(())
    }

    pub fn flat(&self) -> crate::flat::FlatNetwork<'_> {
        crate::flat::FlatNetwork {
            tools: self.tools,
            templates: self.templates,
            state_dir: self.state_dir.join("flat"),
            metadata: self.metadata,
        }
    }

    fn spec_file(&self, vm: &str) -> PathBuf {
        self.state_dir.join("vms").join(format!("{vm}.json"))
    }

    fn save_spec(&self, spec: &VmSpec) -> Result<(), Refusal> {
        let f = self.spec_file(&spec.uuid);
        let body = serde_json::to_vec_pretty(spec)
            .map_err(|e| Refusal::new("INTERNAL_ERROR", e.to_string()))?;
        if let Some(dir) = f.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                Refusal::new(
                    "INTERNAL_ERROR",
                    format!("cannot create {}: {e}", dir.display()),
                )
            })?;
        }
        zstack_common::fsutil::atomic_write(&f, &body, 0o600).map_err(|e| {
            Refusal::new(
                "INTERNAL_ERROR",
                format!("cannot write {}: {e}", f.display()),
            )
        })
    }

    /// The spec this host last started `vm` with.
    pub fn saved_spec(&self, vm: &str) -> Option<VmSpec> {
        std::fs::read(self.spec_file(vm))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    }

    /// Takes the VM's NICs out of the flat network (best effort: a stopped VM must not keep a
    /// failed cleanup from stopping) and forgets its spec.
    fn remove_nics(&self, vm: &str) {
        if let Some(spec) = self.saved_spec(vm) {
            for n in &spec.nics {
                let _ = self.flat().remove_nic(n);
            }
        }
        if let Some(m) = self.metadata {
            let _ = m.store.remove_vm(vm);
        }
        let _ = std::fs::remove_file(self.spec_file(vm));
    }

    /// Stops a VM: ACPI shutdown, then by force after the timeout (at once with `force`).
    /// Stopping one that does not run changes nothing.
    pub fn stop(&self, req: &StopVm) -> Result<(), Refusal> {
        self.stop_domain(req)?;
        self.remove_nics(&req.uuid);
        Ok(())
    }

    fn stop_domain(&self, req: &StopVm) -> Result<(), Refusal> {
        if !self.running(&req.uuid)? {
            return Ok(());
        }
        if !req.force {
            // A guest may ignore the request; that is what the timeout is for.
            let _ = self.virsh().shutdown(&req.uuid);
            let deadline = Instant::now() + Duration::from_secs(req.timeout_secs);
            while Instant::now() < deadline {
                if !self.running(&req.uuid)? {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        match self.virsh().destroy(&req.uuid) {
            Ok(()) => Ok(()),
            // It went away between the check and the destroy.
            Err(_) if !self.running(&req.uuid)? => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub fn reboot(&self, uuid: &str) -> Result<(), Refusal> {
        if !self.running(uuid)? {
            return Err(Refusal::new(
                "VM_NOT_RUNNING",
                format!("VM {uuid} does not run on this host"),
            ));
        }
        self.virsh().reboot(uuid).map_err(Refusal::from)
    }

    /// Stops the VM by force and deletes the volumes' files it names; never the image cache.
    pub fn destroy(&self, req: &DestroyVm) -> Result<(), Refusal> {
        self.stop(&StopVm {
            uuid: req.uuid.clone(),
            force: true,
            timeout_secs: 0,
        })?;
        for p in &req.delete_paths {
            storage::delete_volume_file(Path::new(p))
                .map_err(|e| Refusal::new("STORAGE_UNUSABLE", e))?;
        }
        let _ = std::fs::remove_file(self.run_dir.join(format!("{}.xml", req.uuid)));
        Ok(())
    }

    fn disk_xml(&self, disk: &DiskSpec) -> Result<String, Refusal> {
        self.templates
            .render(
                "libvirt/disk.xml.tera",
                &serde_json::json!({ "disk": DiskView::of(disk) }),
            )
            .map_err(|e| Refusal::new("INTERNAL_ERROR", e.to_string()))
    }

    pub fn attach(&self, req: &VolumeAttachment) -> Result<(), Refusal> {
        self.prepare_disk(&req.disk)?;
        let xml = self.disk_xml(&req.disk)?;
        let file = self.write_xml(
            &format!("{}-{}.xml", req.vm_uuid, req.disk.volume_uuid),
            &xml,
        )?;
        let dumped = self.virsh().dumpxml(&req.vm_uuid)?;
        if dumped.contains(&req.disk.install_path) {
            return Ok(());
        }
        self.virsh()
            .attach_device(&req.vm_uuid, &file.display().to_string())
            .map_err(Refusal::from)
    }

    pub fn detach(&self, req: &VolumeAttachment) -> Result<(), Refusal> {
        if !self.running(&req.vm_uuid)? {
            return Ok(());
        }
        let dumped = self.virsh().dumpxml(&req.vm_uuid)?;
        if !dumped.contains(&req.disk.install_path) {
            return Ok(());
        }
        let xml = self.disk_xml(&req.disk)?;
        let file = self.write_xml(
            &format!("{}-{}.xml", req.vm_uuid, req.disk.volume_uuid),
            &xml,
        )?;
        self.virsh()
            .detach_device(&req.vm_uuid, &file.display().to_string())?;
        // A live detach is a request to the guest (PCI hot-unplug); the disk is gone only when
        // the guest lets go of it. Until then the volume is still in use.
        let deadline = Instant::now() + DETACH_WAIT;
        while Instant::now() < deadline {
            if !self
                .virsh()
                .dumpxml(&req.vm_uuid)?
                .contains(&req.disk.install_path)
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        Err(Refusal::new(
            "DETACH_NOT_DONE",
            format!(
                "the guest of VM {} did not release volume {} within {} s (no PCI hot-unplug \
                 support in the guest?); stop the VM and detach it then",
                req.vm_uuid,
                req.disk.volume_uuid,
                DETACH_WAIT.as_secs()
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_linux_limits() {
        let nic = NicSpec {
            uuid: "0123456789abcdef0123456789abcdef".into(),
            l3_network_uuid: String::new(),
            mac: String::new(),
            ip: String::new(),
            netmask: String::new(),
            gateway: String::new(),
            device_id: 3,
            physical_interface: "eth0".into(),
            services: vec![],
            dns_domain: None,
            dhcp_server_ip: None,
        };
        assert_eq!(tap_name(&nic), "vnic01234567.3");
        assert!(tap_name(&nic).len() <= 15);
        assert_eq!(disk_target(0), "vda");
        assert_eq!(disk_target(2), "vdc");
        assert_eq!(
            dashed("0123456789abcdef0123456789abcdef"),
            "01234567-89ab-cdef-0123-456789abcdef"
        );
    }

    #[test]
    fn the_domain_xml_carries_the_cache_mode_and_the_zstack_asset_tag() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../templates");
        let templates = Templates::load(&dir).unwrap();
        let host = VmHost {
            tools: &crate::host::SystemTools,
            templates: &templates,
            run_dir: PathBuf::from("/tmp"),
            console_dir: PathBuf::from("/var/log/zstack/vms"),
            image_client: &zstack_common::http_client::agent(Default::default()),
            domain_type: "qemu",
            state_dir: PathBuf::from("/tmp"),
            metadata: None,
        };
        let disk = DiskSpec {
            volume_uuid: "v".repeat(32),
            r#type: "Root".into(),
            install_path: "/ps/rootVolumes/acct-a/vol-v/v.qcow2".into(),
            size: 1 << 30,
            format: "qcow2".into(),
            device_id: 0,
            image_url: None,
            image_sha256: None,
            image_format: None,
            image_uuid: None,
            primary_storage_url: None,
            cache_mode: "writethrough".into(),
        };
        let spec = VmSpec {
            uuid: "0123456789abcdef0123456789abcdef".into(),
            name: "web <1> & co".into(),
            cpu_num: 2,
            memory_size: 512 << 20,
            root_volume: disk,
            data_volumes: vec![],
            nics: vec![],
            user_data: None,
            metadata: Default::default(),
        };
        let xml = host
            .render_domain(
                &spec,
                vec![(
                    "fa:00:00:00:00:01".into(),
                    "br_eth0".into(),
                    "vnic01234567.0".into(),
                )],
            )
            .unwrap();
        assert!(xml.contains("cache='writethrough'"), "{xml}");
        assert!(xml.contains("<entry name='asset'>www.zstack.io</entry>"));
        assert!(xml.contains("<uuid>01234567-89ab-cdef-0123-456789abcdef</uuid>"));
        assert!(
            xml.contains("web &lt;1&gt; &amp; co"),
            "names are escaped: {xml}"
        );
        assert!(xml.contains("<source bridge='br_eth0'/>"));
        assert!(xml.contains("<memory unit='b'>536870912</memory>"));
        assert!(xml.contains("<target dev='vda' bus='virtio'/>"));
        assert!(xml.contains("<domain type='qemu'>"));
    }
}

//! The flat network provider on this host: for each L3 network with VMs here, a namespace
//! holding the L3's DHCP server address and 169.254.169.254, with a dnsmasq that hands out
//! exactly the addresses the management node allocated, and the metadata server; and the
//! bridge rules that bind each VM tap to its MAC and IP (`templates/nft/flat.nft.tera`).
//!
//! Everything is derived from the VM specs the management node sends: starting a VM adds its
//! NICs, stopping or destroying it removes them, and the last VM of an L3 on this host takes the
//! namespace with it. Applying the same VM twice changes nothing.

use crate::file_error::file_error;
use std::path::{Path, PathBuf};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use zstack_common::agent_proto::NicSpec;
use zstack_common::templates::Templates;

use crate::metadata::{MetadataListener, MetadataStore};

use crate::host::HostTools;
pub use crate::netaddr::network_of;
use crate::vm::{bridge_name, tap_name};

pub use crate::metadata::METADATA_IP;

/// Why the flat network of a NIC cannot be set up or taken down on this host.
#[derive(Debug, thiserror::Error)]
pub enum FlatError {
    #[error("L3 network {0} has no DHCP server address")]
    NoDhcpServer(String),
    #[error("cannot read the MAC of {device} in {namespace}")]
    NoMac { device: String, namespace: String },
    #[error("the metadata listeners' lock is poisoned")]
    Poisoned,
    #[error(transparent)]
    File(#[from] crate::file_error::FileError),
    #[error(transparent)]
    Address(#[from] crate::netaddr::AddressError),
    #[error(transparent)]
    Template(#[from] zstack_common::templates::TemplateError),
    #[error(transparent)]
    Host(#[from] crate::host::HostError),
    #[error(transparent)]
    Metadata(#[from] crate::metadata::ListenerError),
}

pub const TABLE: &str = "zstack_flat";

/// The L3's namespace on this host.
pub fn namespace(l3: &str) -> String {
    format!("zs-l3-{l3}")
}

/// The veth pair joining the L3 namespace to the bridge: (bridge side, namespace side). 15
/// characters at most; 10 hex digits of the uuid keep them apart.
pub fn veth_names(l3: &str) -> (String, String) {
    let short = &l3[..10.min(l3.len())];
    (format!("zl{short}h"), format!("zl{short}n"))
}

/// A host name a DHCP client accepts: letters, digits, '-', at most 63.
pub fn dhcp_hostname(name: &str, uuid: &str) -> String {
    let cleaned: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let cleaned = cleaned.trim_matches('-');
    if cleaned.is_empty() {
        format!("vm-{}", &uuid[..8.min(uuid.len())])
    } else {
        cleaned.chars().take(63).collect()
    }
}

/// The metadata servers of this host: the store of what each VM is told, and one listener per
/// L3 namespace on 169.254.169.254:80.
pub struct MetadataServers {
    pub store: Arc<MetadataStore>,
    listeners: Mutex<HashMap<String, MetadataListener>>,
}

impl MetadataServers {
    pub fn new(store: Arc<MetadataStore>) -> Self {
        MetadataServers {
            store,
            listeners: Mutex::new(HashMap::new()),
        }
    }

    /// Serves the L3's VMs from inside its namespace, unless that runs already.
    pub fn ensure_listener(&self, l3: &str) -> Result<(), FlatError> {
        let mut listeners = self.listeners.lock().map_err(|_| FlatError::Poisoned)?;
        if listeners.get(l3).is_some_and(MetadataListener::is_running) {
            return Ok(());
        }
        let addr = SocketAddr::from(([169, 254, 169, 254], 80));
        let app = crate::metadata::router(self.store.clone(), l3.to_string());
        let listener = crate::metadata::serve_in_netns(&namespace(l3), addr, app)?;
        listeners.insert(l3.to_string(), listener);
        Ok(())
    }

    /// Stops the L3's listener (before its namespace goes: an open socket keeps it alive).
    pub fn stop_listener(&self, l3: &str) {
        let taken = self.listeners.lock().ok().and_then(|mut l| l.remove(l3));
        if let Some(listener) = taken {
            let _ = listener.stop();
        }
    }
}

pub struct FlatNetwork<'a> {
    pub tools: &'a dyn HostTools,
    pub templates: &'a Templates,
    /// `/var/lib/zstack/kvmagent/flat`: one directory per L3.
    pub state_dir: PathBuf,
    /// None where no metadata is served (tests of the DHCP side alone).
    pub metadata: Option<&'a MetadataServers>,
}

impl FlatNetwork<'_> {
    fn l3_dir(&self, l3: &str) -> PathBuf {
        self.state_dir.join(l3)
    }

    fn ns_exec(&self, ns: &str, program: &str, args: &[&str]) -> Result<String, FlatError> {
        let mut all = vec!["netns", "exec", ns, program];
        all.extend_from_slice(args);
        Ok(self.tools.run("ip", &all)?)
    }

    /// The bridge rules' table, loaded once.
    fn ensure_table(&self) -> Result<(), FlatError> {
        if self
            .tools
            .run("nft", &["list", "table", "bridge", TABLE])
            .is_ok()
        {
            return Ok(());
        }
        let text = self
            .templates
            .render("nft/flat.nft.tera", &serde_json::json!({ "table": TABLE }))?;
        std::fs::create_dir_all(&self.state_dir).map_err(file_error("create", &self.state_dir))?;
        let file = self.state_dir.join("flat.nft");
        std::fs::write(&file, text).map_err(file_error("write", &file))?;
        self.tools
            .run("nft", &["-f", &file.display().to_string()])
            .map(|_| ())
            .map_err(FlatError::from)
    }

    /// Adds `value` to `set`, or deletes it, leaving the state as asked whether it was there or
    /// not: `nft add element` of an element that is there succeeds, and a delete is the batch
    /// "add, then delete" (one transaction), so that neither depends on what an error says.
    fn element(&self, verb: &str, set: &str, value: &str) -> Result<(), FlatError> {
        let spec = format!("{{ {value} }}");
        let add = ["add", "element", "bridge", TABLE, set, &spec];
        let result = if verb == "add" {
            self.tools.run("nft", &add)
        } else {
            let mut batch = add.to_vec();
            batch.extend([";", verb, "element", "bridge", TABLE, set, &spec]);
            self.tools.run("nft", &batch)
        };
        result.map(|_| ()).map_err(FlatError::from)
    }

    /// The namespace of `nic`'s L3 with its veth on the NIC's bridge, its addresses and dnsmasq.
    /// Returns the MAC of the namespace side (where metadata requests are sent).
    pub fn ensure_l3(&self, nic: &NicSpec) -> Result<String, FlatError> {
        let l3 = &nic.l3_network_uuid;
        let dhcp_ip = nic
            .dhcp_server_ip
            .as_deref()
            .ok_or_else(|| FlatError::NoDhcpServer(l3.clone()))?;
        let ns = namespace(l3);
        let (host_side, ns_side) = veth_names(l3);
        let br = bridge_name(&nic.physical_interface);
        let (_, prefix) = network_of(&nic.ip, &nic.netmask)?;
        self.ensure_table()?;
        let exists = self
            .tools
            .run("ip", &["netns", "list"])?
            .lines()
            .any(|l| l.split_whitespace().next() == Some(ns.as_str()));
        if !exists {
            self.tools.run("ip", &["netns", "add", &ns])?;
        }
        // Both ends, or neither: a namespace deleted a moment ago takes its end with it
        // asynchronously, and a half pair is made again.
        let host_end = self
            .tools
            .run("ip", &["link", "show", "dev", &host_side])
            .is_ok();
        let ns_end = self
            .ns_exec(&ns, "ip", &["link", "show", "dev", &ns_side])
            .is_ok();
        if host_end && !ns_end {
            let _ = self.tools.run("ip", &["link", "del", "dev", &host_side]);
        }
        if !(host_end && ns_end) {
            self.tools.run(
                "ip",
                &[
                    "link", "add", &host_side, "type", "veth", "peer", "name", &ns_side, "netns",
                    &ns,
                ],
            )?;
        }
        self.tools.run(
            "ip",
            &["link", "set", "dev", &host_side, "master", &br, "up"],
        )?;
        self.ns_exec(&ns, "ip", &["link", "set", "dev", "lo", "up"])?;
        self.ns_exec(&ns, "ip", &["link", "set", "dev", &ns_side, "up"])?;
        for addr in [format!("{dhcp_ip}/{prefix}"), format!("{METADATA_IP}/32")] {
            let shown = self.ns_exec(&ns, "ip", &["-o", "addr", "show", "dev", &ns_side])?;
            if !shown.contains(&format!(" {addr} ")) {
                self.ns_exec(&ns, "ip", &["addr", "add", &addr, "dev", &ns_side])?;
            }
        }
        self.element("add", "l3_ports", &format!("\"{host_side}\""))?;
        self.ensure_dnsmasq(nic, &ns, &ns_side)?;
        let link = self.ns_exec(&ns, "ip", &["-o", "link", "show", "dev", &ns_side])?;
        link.split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .map(str::to_string)
            .ok_or_else(|| FlatError::NoMac {
                device: ns_side.clone(),
                namespace: ns.clone(),
            })
    }

    fn ensure_dnsmasq(&self, nic: &NicSpec, ns: &str, iface: &str) -> Result<(), FlatError> {
        let dir = self.l3_dir(&nic.l3_network_uuid);
        std::fs::create_dir_all(&dir).map_err(file_error("create", &dir))?;
        let hosts = dir.join("hosts");
        if !hosts.exists() {
            std::fs::write(&hosts, b"").map_err(file_error("write", &hosts))?;
        }
        let pid_file = dir.join("dnsmasq.pid");
        if self.dnsmasq_pid(&pid_file).is_some() {
            return Ok(());
        }
        let (network, _) = network_of(&nic.ip, &nic.netmask)?;
        let conf = self.templates.render(
            "dnsmasq/l3.conf.tera",
            &serde_json::json!({
                "l3_uuid": nic.l3_network_uuid,
                "namespace": ns,
                "interface": iface,
                "network": network.to_string(),
                "netmask": nic.netmask,
                "gateway": nic.gateway,
                "dhcp_ip": nic.dhcp_server_ip,
                "dns": nic.gateway,
                "dns_domain": nic.dns_domain,
                "hosts_file": hosts.display().to_string(),
                "lease_file": dir.join("leases").display().to_string(),
                "pid_file": pid_file.display().to_string(),
                "log_file": dir.join("dnsmasq.log").display().to_string(),
            }),
        )?;
        let conf_file = dir.join("dnsmasq.conf");
        std::fs::write(&conf_file, conf).map_err(file_error("write", &conf_file))?;
        self.ns_exec(
            ns,
            "dnsmasq",
            &[&format!("--conf-file={}", conf_file.display())],
        )
        .map(|_| ())
    }

    fn dnsmasq_pid(&self, pid_file: &Path) -> Option<i32> {
        zstack_common::process::live_pid(pid_file, "dnsmasq").and_then(|p| i32::try_from(p).ok())
    }

    /// Rewrites the L3's dhcp-host lines: `add` this NIC (replacing an older line of its MAC) or
    /// remove it; then dnsmasq re-reads them.
    fn set_host(&self, nic: &NicSpec, hostname: &str, add: bool) -> Result<(), FlatError> {
        let dir = self.l3_dir(&nic.l3_network_uuid);
        let hosts = dir.join("hosts");
        let text = std::fs::read_to_string(&hosts).unwrap_or_default();
        let mut lines: Vec<String> = text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with(&format!("{},", nic.mac)))
            .map(str::to_string)
            .collect();
        if add {
            lines.push(format!("{},{},{},infinite", nic.mac, nic.ip, hostname));
        }
        let body = if lines.is_empty() {
            String::new()
        } else {
            format!("{}\n", lines.join("\n"))
        };
        if body == text {
            return Ok(());
        }
        if dir.exists() {
            zstack_common::fsutil::atomic_write(&hosts, body.as_bytes(), 0o644)
                .map_err(file_error("write", &hosts))?;
        }
        if let Some(pid) = self.dnsmasq_pid(&dir.join("dnsmasq.pid")) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGHUP,
            );
        }
        Ok(())
    }

    /// Adds a VM NIC: its L3's namespace and DHCP entry when the L3 has DHCP or Userdata, and
    /// its anti-spoofing entries.
    pub fn add_nic(&self, nic: &NicSpec, hostname: &str) -> Result<(), FlatError> {
        self.ensure_table()?;
        let tap = tap_name(nic);
        let flat = nic.services.iter().any(|s| s == "DHCP" || s == "Userdata");
        if flat {
            let ns_mac = self.ensure_l3(nic)?;
            self.set_member(&nic.l3_network_uuid, &tap, true)?;
            self.element("add", "meta_mac", &format!("\"{tap}\" : {ns_mac}"))?;
            if nic.services.iter().any(|s| s == "DHCP") {
                self.set_host(nic, hostname, true)?;
            }
            if let (Some(m), true) = (self.metadata, nic.services.iter().any(|s| s == "Userdata")) {
                m.ensure_listener(&nic.l3_network_uuid)?;
            }
        }
        self.element("add", "vm_macs", &format!("\"{tap}\" . {}", nic.mac))?;
        self.element(
            "add",
            "vm_addrs",
            &format!("\"{tap}\" . {} . {}", nic.mac, nic.ip),
        )
    }

    /// Removes a VM NIC; returns whether the L3 namespace is left without VMs (then torn down).
    pub fn remove_nic(&self, nic: &NicSpec) -> Result<(), FlatError> {
        let tap = tap_name(nic);
        if self
            .tools
            .run("nft", &["list", "table", "bridge", TABLE])
            .is_ok()
        {
            self.element(
                "delete",
                "vm_addrs",
                &format!("\"{tap}\" . {} . {}", nic.mac, nic.ip),
            )?;
            self.element("delete", "vm_macs", &format!("\"{tap}\" . {}", nic.mac))?;
            // A map's element: deleted by its key alone, when it is there.
            let _ = self.tools.run(
                "nft",
                &[
                    "delete",
                    "element",
                    "bridge",
                    TABLE,
                    "meta_mac",
                    &format!("{{ \"{tap}\" }}"),
                ],
            );
        }
        self.set_host(nic, "", false)?;
        if self.l3_dir(&nic.l3_network_uuid).exists()
            && self.set_member(&nic.l3_network_uuid, &tap, false)? == 0
        {
            self.remove_l3(&nic.l3_network_uuid)?;
        }
        Ok(())
    }

    /// Adds or removes a VM tap from the L3's members on this host; returns how many are left.
    fn set_member(&self, l3: &str, tap: &str, add: bool) -> Result<usize, FlatError> {
        let file = self.l3_dir(l3).join("members");
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let mut members: Vec<&str> = text
            .lines()
            .filter(|l| !l.is_empty() && *l != tap)
            .collect();
        if add {
            members.push(tap);
        }
        let body: String = members.iter().map(|m| format!("{m}\n")).collect();
        if body != text {
            zstack_common::fsutil::atomic_write(&file, body.as_bytes(), 0o644)
                .map_err(file_error("write", &file))?;
        }
        Ok(members.len())
    }

    /// Takes an L3's namespace down: dnsmasq, the veth, the namespace, its state.
    pub fn remove_l3(&self, l3: &str) -> Result<(), FlatError> {
        if let Some(m) = self.metadata {
            m.stop_listener(l3);
        }
        let dir = self.l3_dir(l3);
        if let Some(pid) = self.dnsmasq_pid(&dir.join("dnsmasq.pid")) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let (host_side, _) = veth_names(l3);
        if self
            .tools
            .run("nft", &["list", "table", "bridge", TABLE])
            .is_ok()
        {
            self.element("delete", "l3_ports", &format!("\"{host_side}\""))?;
        }
        let _ = self.tools.run("ip", &["link", "del", "dev", &host_side]);
        let ns = namespace(l3);
        let _ = self.tools.run("ip", &["netns", "del", &ns]);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_and_differ() {
        let (h, n) = veth_names("0123456789abcdef0123456789abcdef");
        assert_eq!((h.as_str(), n.as_str()), ("zl0123456789h", "zl0123456789n"));
        assert!(h.len() <= 15);
        assert_eq!(
            network_of("10.0.3.7", "255.255.252.0").unwrap(),
            ("10.0.0.0".parse().unwrap(), 22)
        );
        assert_eq!(dhcp_hostname("Web Server_1", "abcdef0123"), "web-server-1");
        assert_eq!(dhcp_hostname("__", "abcdef0123"), "vm-abcdef01");
    }
}

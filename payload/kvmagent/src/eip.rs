//! The distributed EIP of the flat network provider (DESIGN.md, "Networking on a KVM host"), on
//! the host that runs the VM. Wired to the agent's `/eip/apply` and `/eip/remove`.
//!
//! One network namespace per VIP, `zs-eip-<vip uuid>`, holding:
//! - `public`: a veth whose host end (`eip<11 chars of the vip uuid>p`) is a port of the public
//!   bridge `br_<public_interface>`; it carries the VIP (the netmask of the VIP's range) and the
//!   namespace's default route goes through the VIP's gateway;
//! - `gateway`: a veth whose host end (`eip<..>g`) is a port of the VM's bridge
//!   `br_<nic.physical_interface>`; it carries the VM's gateway IP (`nic.gateway`/`nic.netmask`);
//! - IP forwarding, and the table `ip zstack_eip` (templates/nft/eip.nft.tera): DNAT VIP -> VM IP,
//!   SNAT VM IP -> VIP, and nothing else forwarded.
//!
//! The same gateway IP is held by every EIP namespace of that L3 on the bridge (and on every other
//! host, and maybe by a real router), so the host's table `bridge zstack_eip`
//! (templates/nft/eip-bridge.nft.tera) makes the path between a namespace's gateway port and its
//! VM's tap private: the VM's ARP for its gateway is answered by its namespace only, and nothing
//! the namespace sends on that side reaches anyone but its VM. The rules are fixed; each EIP adds
//! one element to each of three sets, so the 1000th EIP costs what the first did.
//!
//! Before the VIP is put on the public side, a duplicate-address probe (`arping -D`, RFC 5227's
//! probe: sender IP 0.0.0.0, so nobody's cache learns anything) refuses a VIP that someone on the
//! public network already answers for. After it, a gratuitous ARP updates the neighbours' caches.
//!
//! Everything is idempotent (the state is read back from the host, never kept by the agent); a
//! failure half-way undoes what that call made; `remove` removes the namespace, both veth pairs
//! and the host's elements, and succeeds when nothing is there.
//!
//! Commands inside the namespace run under `nsenter --net=/run/netns/<ns>` rather than
//! `ip netns exec`/`ip -n`: those also unshare the mount namespace and remount /sys, which copies
//! the host's mount table, and every named namespace adds a mount to it; with 1,000 EIPs each
//! command would cost twice what it did with one. nsenter only enters the network namespace
//! (sysctl's /proc/sys/net follows the network namespace, so it works there too).

use crate::file_error::file_error;
use std::collections::BTreeSet;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use serde_json::json;
use sha2::{Digest, Sha256};
use zstack_common::agent_proto::EipSpec;
use zstack_common::templates::{TemplateError, Templates};

use crate::bridge::BridgeError;
use crate::bridge::{ensure_bridge, link, LinkInfo};
use crate::host::{HostError, HostTools};
pub use crate::netaddr::prefix_len;
use crate::netaddr::{ipv4, AddressError};

/// Why an EIP is refused or cannot be applied or removed on this host.
#[derive(Debug, thiserror::Error)]
pub enum EipError {
    #[error("VIP uuid {0:?} is not a uuid (letters, digits and dashes)")]
    VipUuid(String),
    #[error("VIP uuid {0:?} is too short to name the EIP's interfaces")]
    VipUuidTooShort(String),
    #[error("{what} {name:?} cannot name a bridge: 1 to 12 letters, digits, '-', '_' or '.'")]
    Interface { what: &'static str, name: String },
    #[error("NIC uuid {0:?} is not a uuid")]
    NicUuid(String),
    #[error("a netmask of /0 leaves no gateway to route through")]
    ZeroPrefix,
    #[error(transparent)]
    File(#[from] crate::file_error::FileError),
    #[error("cannot set up the host's EIP bridge rules: {0}")]
    BridgeRules(HostError),
    #[error("cannot load the EIP's NAT rules: {0}")]
    NatRules(HostError),
    #[error("interface name {port} is taken by the EIP of VIP {owner}, whose uuid starts like {vip}'s; this host cannot hold both")]
    PortTaken {
        port: String,
        owner: String,
        vip: String,
    },
    #[error("interface {0} exists and is not an EIP's; remove it, then retry")]
    ForeignPort(String),
    #[error("VIP {vip} is already in use on the public network of {bridge}: {answers}; refusing to take it")]
    VipInUse {
        vip: String,
        bridge: String,
        answers: String,
    },
    #[error("cannot apply EIP {eip} (VIP {vip}): {source}{}", undo_failures(.undo))]
    Apply {
        eip: String,
        vip: Ipv4Addr,
        source: Box<EipError>,
        undo: Vec<EipError>,
    },
    #[error("cannot remove EIP {eip} (VIP {vip}): {source}")]
    Remove {
        eip: String,
        vip: Ipv4Addr,
        source: Box<EipError>,
    },
    #[error(transparent)]
    Address(#[from] AddressError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(transparent)]
    Bridge(#[from] BridgeError),
    #[error(transparent)]
    Host(#[from] HostError),
}

fn undo_failures(undo: &[EipError]) -> String {
    if undo.is_empty() {
        return String::new();
    }
    let list: Vec<String> = undo.iter().map(ToString::to_string).collect();
    format!("; undoing it failed too: {}", list.join("; "))
}
use crate::vm::{bridge_name, tap_name};

/// Where `ip netns add` puts its names.
pub const NETNS_DIR: &str = "/run/netns";
/// Every EIP namespace starts with this.
pub const NAMESPACE_PREFIX: &str = "zs-eip-";
/// The public side inside the namespace (names inside a namespace cannot collide with the host's).
pub const PUBLIC_IF: &str = "public";
/// The VM's side inside the namespace.
pub const GATEWAY_IF: &str = "gateway";
/// The host's bridge-family table of every EIP on this host.
pub const BRIDGE_TABLE: &str = "zstack_eip";
/// The namespace's table.
pub const NAMESPACE_TABLE: &str = "zstack_eip";
/// How many characters of the VIP uuid name its host ports: `eip` + 11 + a role letter = 15,
/// the kernel's limit (IFNAMSIZ - 1).
const PORT_KEY_LEN: usize = 11;
/// The first word of the alias the host ports carry, naming their owner.
const ALIAS_TAG: &str = "zstack-eip";

/// The namespace of a VIP. The whole uuid: namespace names have no length limit worth the name.
pub fn namespace_name(vip_uuid: &str) -> String {
    format!("{NAMESPACE_PREFIX}{vip_uuid}")
}

/// The 11 lowercase characters of the VIP uuid that name its host ports; refuses a uuid that has
/// fewer or holds characters an interface name should not.
fn port_key(vip_uuid: &str) -> Result<String, EipError> {
    if vip_uuid.is_empty()
        || !vip_uuid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(EipError::VipUuid(vip_uuid.to_string()));
    }
    let key: String = vip_uuid
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .take(PORT_KEY_LEN)
        .collect();
    if key.len() < PORT_KEY_LEN {
        return Err(EipError::VipUuidTooShort(vip_uuid.to_string()));
    }
    Ok(key)
}

/// The host end of the public veth: `eip<11 chars of the VIP uuid>p`, 15 characters.
///
/// Two VIPs whose uuids share their first 11 characters (44 bits: about one chance in 35 million
/// among 1,000 random VIPs) would want the same names; the ports carry their owner in their alias
/// (`zstack-eip vip=<uuid> ...`), so the second is refused with a clear error, and neither
/// `apply` nor `remove` ever touches a port another VIP owns.
pub fn public_port_name(vip_uuid: &str) -> Result<String, EipError> {
    Ok(format!("eip{}p", port_key(vip_uuid)?))
}

/// The host end of the gateway veth: `eip<11 chars of the VIP uuid>g`.
pub fn gateway_port_name(vip_uuid: &str) -> Result<String, EipError> {
    Ok(format!("eip{}g", port_key(vip_uuid)?))
}

/// A locally administered unicast MAC derived from `role` and the VIP uuid.
fn derived_mac(role: &str, vip_uuid: &str) -> String {
    let digest = Sha256::digest(format!("{ALIAS_TAG}:{role}:{vip_uuid}").as_bytes());
    let mut b = [0u8; 6];
    b.copy_from_slice(&digest[..6]);
    b[0] = (b[0] & 0xfc) | 0x02;
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The MAC of the VIP, fixed by the VIP uuid: when the EIP moves to another host (VM migration),
/// the router's cache entry for the VIP stays right even before it hears the gratuitous ARP.
pub fn public_mac(vip_uuid: &str) -> String {
    derived_mac("public", vip_uuid)
}

/// The MAC of the VM's gateway in the namespace, fixed by the VIP uuid: a migrated VM keeps a
/// valid ARP entry for its gateway on the new host. The same MAC on two hosts never meets on the
/// wire: the bridge rules keep it between the namespace and its VM.
pub fn gateway_mac(vip_uuid: &str) -> String {
    derived_mac("gateway", vip_uuid)
}

/// An interface name the bridge `br_<name>` can be made from.
fn check_interface(what: &'static str, name: &str) -> Result<(), EipError> {
    let ok = !name.is_empty()
        && bridge_name(name).len() <= 15
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(EipError::Interface {
            what,
            name: name.to_string(),
        })
    }
}

/// What one EIP adds to the host's bridge table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct GatewayEntry {
    port: String,
    tap: String,
    gateway: Ipv4Addr,
}

impl GatewayEntry {
    /// The alias of the gateway port: its owner, and the elements it stands for, so that a
    /// remove (or a re-apply for another NIC) drops exactly those, whatever the request says.
    /// The agent keeps no state; the host does.
    fn alias(&self, vip_uuid: &str) -> String {
        format!(
            "{ALIAS_TAG} vip={vip_uuid} tap={} gateway={}",
            self.tap, self.gateway
        )
    }
}

/// Everything `apply` and `remove` need, checked and derived from the request.
#[derive(Debug)]
struct Plan {
    vip_uuid: String,
    eip_uuid: String,
    namespace: String,
    public_port: String,
    gateway_port: String,
    public_interface: String,
    vm_interface: String,
    vip: Ipv4Addr,
    vip_prefix: u8,
    vip_gateway: Ipv4Addr,
    vm_ip: Ipv4Addr,
    gateway_prefix: u8,
    entry: GatewayEntry,
    public_mac: String,
    gateway_mac: String,
}

impl Plan {
    fn new(spec: &EipSpec) -> Result<Plan, EipError> {
        let nic = &spec.nic;
        check_interface("public interface", &spec.public_interface)?;
        check_interface("NIC's physical interface", &nic.physical_interface)?;
        if nic.uuid.is_empty()
            || !nic
                .uuid
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(EipError::NicUuid(nic.uuid.clone()));
        }
        let plan = Plan {
            vip_uuid: spec.vip_uuid.clone(),
            eip_uuid: spec.eip_uuid.clone(),
            namespace: namespace_name(&spec.vip_uuid),
            public_port: public_port_name(&spec.vip_uuid)?,
            gateway_port: gateway_port_name(&spec.vip_uuid)?,
            public_interface: spec.public_interface.clone(),
            vm_interface: nic.physical_interface.clone(),
            vip: ipv4("VIP", &spec.vip_ip)?,
            vip_prefix: prefix_len(&spec.vip_netmask)?,
            vip_gateway: ipv4("VIP gateway", &spec.vip_gateway)?,
            vm_ip: ipv4("VM IP", &nic.ip)?,
            gateway_prefix: prefix_len(&nic.netmask)?,
            entry: GatewayEntry {
                port: gateway_port_name(&spec.vip_uuid)?,
                tap: tap_name(nic),
                gateway: ipv4("VM gateway", &nic.gateway)?,
            },
            public_mac: public_mac(&spec.vip_uuid),
            gateway_mac: gateway_mac(&spec.vip_uuid),
        };
        if plan.vip_prefix == 0 || plan.gateway_prefix == 0 {
            return Err(EipError::ZeroPrefix);
        }
        Ok(plan)
    }

    fn netns_path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.namespace)
    }

    fn public_alias(&self) -> String {
        format!("{ALIAS_TAG} vip={}", self.vip_uuid)
    }
}

// ---------------------------------------------------------------------------------------------
// Locks. The agent serves requests on a thread pool: two calls for one VIP wait for each other;
// calls for different VIPs run side by side (each spends a second in the duplicate-address
// probe), and only the host's bridge table, shared by all, is changed under one short lock.

static BUSY_VIPS: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
static VIP_FREED: Condvar = Condvar::new();
static BRIDGE_TABLE_LOCK: Mutex<()> = Mutex::new(());

struct VipLock(String);

impl VipLock {
    fn take(vip_uuid: &str) -> VipLock {
        let mut busy = BUSY_VIPS.lock().unwrap_or_else(PoisonError::into_inner);
        while busy.contains(vip_uuid) {
            busy = VIP_FREED.wait(busy).unwrap_or_else(PoisonError::into_inner);
        }
        busy.insert(vip_uuid.to_string());
        VipLock(vip_uuid.to_string())
    }
}

impl Drop for VipLock {
    fn drop(&mut self) {
        let mut busy = BUSY_VIPS.lock().unwrap_or_else(PoisonError::into_inner);
        busy.remove(&self.0);
        VIP_FREED.notify_all();
    }
}

fn bridge_table_lock() -> MutexGuard<'static, ()> {
    BRIDGE_TABLE_LOCK
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------------
// Reading the host.

impl LinkInfo {
    /// The VIP uuid in a `zstack-eip vip=<uuid> ...` alias.
    fn owner(&self) -> Option<&str> {
        let alias = self.alias.as_deref()?;
        let mut words = alias.split_whitespace();
        if words.next() != Some(ALIAS_TAG) {
            return None;
        }
        words.find_map(|w| w.strip_prefix("vip="))
    }

    /// The bridge elements a gateway port's alias records.
    fn recorded_entry(&self, port: &str) -> Option<GatewayEntry> {
        let alias = self.alias.as_deref()?;
        let field = |k: &str| alias.split_whitespace().find_map(|w| w.strip_prefix(k));
        Some(GatewayEntry {
            port: port.to_string(),
            tap: field("tap=")?.to_string(),
            gateway: field("gateway=")?.parse().ok()?,
        })
    }
}

/// Runs `program args` inside the namespace at `netns`.
fn in_ns(
    tools: &dyn HostTools,
    netns: &Path,
    program: &str,
    args: &[&str],
) -> Result<String, HostError> {
    let net = format!("--net={}", netns.display());
    let mut all = vec![net.as_str(), program];
    all.extend_from_slice(args);
    tools.run("nsenter", &all)
}

/// The IPv4 addresses (`a.b.c.d/len`) of `dev` in the namespace.
fn ns_addresses(tools: &dyn HostTools, netns: &Path, dev: &str) -> Result<Vec<String>, EipError> {
    let out = in_ns(
        tools,
        netns,
        "ip",
        &["-o", "-4", "addr", "show", "dev", dev],
    )?;
    Ok(parse_addresses(&out))
}

/// `2: public    inet 172.31.0.10/24 scope global public\ ...` -> `172.31.0.10/24`.
fn parse_addresses(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "inet")?;
            words.next().map(str::to_string)
        })
        .collect()
}

/// What `arping -D` answers: Ok(()) when nobody claimed the address (exit 0), Err(the answers)
/// when someone did (exit 1: a reply came); any other failure is an error.
fn duplicate_answers(
    result: Result<String, HostError>,
) -> Result<Result<(), Vec<String>>, HostError> {
    match result {
        Ok(_) => Ok(Ok(())),
        Err(HostError::Failed {
            message,
            status: Some(1),
            ..
        }) => {
            // The replies, for the operator; the exit status decided.
            let answers: Vec<String> = message
                .lines()
                .filter(|l| l.contains("reply from"))
                .map(|l| l.trim().to_string())
                .collect();
            Ok(Err(if answers.is_empty() {
                vec![message.trim().to_string()]
            } else {
                answers
            }))
        }
        Err(e) => Err(e),
    }
}

// ---------------------------------------------------------------------------------------------
// nft files.

static NFT_FILE_SEQ: AtomicU64 = AtomicU64::new(0);

/// A rendered nftables file, for `nft -f`; removed when dropped.
struct NftFile(PathBuf);

impl NftFile {
    fn write(text: &str) -> Result<NftFile, EipError> {
        let path = std::env::temp_dir().join(format!(
            "zstack-eip-{}-{}.nft",
            std::process::id(),
            NFT_FILE_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(file_error("create", &path))?;
        let file = NftFile(path);
        f.write_all(text.as_bytes())
            .map_err(file_error("write", &file.0))?;
        Ok(file)
    }

    fn path(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for NftFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn render(templates: &Templates, name: &str, ctx: &serde_json::Value) -> Result<String, EipError> {
    Ok(templates.render(name, ctx)?)
}

/// The elements of `entries`, `ops` in turn (`["add"]`, or `["add", "delete"]` to remove).
fn render_elements(
    templates: &Templates,
    ops: &[&str],
    entries: &[GatewayEntry],
) -> Result<String, EipError> {
    let ports: BTreeSet<&str> = entries.iter().map(|e| e.port.as_str()).collect();
    let port_taps: BTreeSet<(&str, &str)> = entries
        .iter()
        .map(|e| (e.port.as_str(), e.tap.as_str()))
        .collect();
    let tap_gateways: BTreeSet<(&str, String)> = entries
        .iter()
        .map(|e| (e.tap.as_str(), e.gateway.to_string()))
        .collect();
    render(
        templates,
        "nft/eip-bridge-elements.nft.tera",
        &json!({
            "ops": ops,
            "gateway_ports": ports,
            "gateway_taps": port_taps,
            "tap_gateways": tap_gateways,
        }),
    )
}

/// Adds one EIP's elements to the host's bridge table, making the table first when it is missing.
fn add_bridge_elements(
    tools: &dyn HostTools,
    templates: &Templates,
    entry: &GatewayEntry,
) -> Result<(), EipError> {
    let elements = render_elements(templates, &["add"], std::slice::from_ref(entry))?;
    let _table = bridge_table_lock();
    // The usual case costs one small transaction; the table's definition is loaded only when
    // that fails (no table yet), and it is safe to load over an existing table.
    let file = NftFile::write(&elements)?;
    if tools.run("nft", &["-f", &file.path()]).is_ok() {
        return Ok(());
    }
    let table = render(templates, "nft/eip-bridge.nft.tera", &json!({}))?;
    let file = NftFile::write(&format!("{table}\n{elements}\n"))?;
    tools
        .run("nft", &["-f", &file.path()])
        .map(|_| ())
        .map_err(EipError::BridgeRules)
}

/// Removes elements from the host's bridge table (tolerating a table that is not there).
fn remove_bridge_elements(
    tools: &dyn HostTools,
    templates: &Templates,
    entries: &[GatewayEntry],
) -> Result<(), EipError> {
    let text = render_elements(templates, &["add", "delete"], entries)?;
    let _table = bridge_table_lock();
    if !bridge_table_exists(tools) {
        return Ok(());
    }
    let file = NftFile::write(&text)?;
    tools
        .run("nft", &["-f", &file.path()])
        .map(|_| ())
        .map_err(EipError::from)
}

/// Whether the host's EIP bridge table is loaded (told by `nft list`'s exit status).
fn bridge_table_exists(tools: &dyn HostTools) -> bool {
    tools
        .run("nft", &["list", "table", "bridge", BRIDGE_TABLE])
        .is_ok()
}

/// Drops the host's bridge table once no EIP namespace is left on this host. A namespace is made
/// before its elements are added, and both this and the adding hold the table's lock, so a table
/// dropped here is never one that an apply in flight counts on (it would make the table again).
fn drop_bridge_table_if_unused(tools: &dyn HostTools) -> Result<(), EipError> {
    let _table = bridge_table_lock();
    if any_eip_namespace() {
        return Ok(());
    }
    // "add, then delete" in one transaction: the table is gone afterwards whether it was there
    // or not, without reading an error's words.
    tools
        .run(
            "nft",
            &[
                "add",
                "table",
                "bridge",
                BRIDGE_TABLE,
                ";",
                "delete",
                "table",
                "bridge",
                BRIDGE_TABLE,
            ],
        )
        .map(|_| ())
        .map_err(EipError::from)
}

fn any_eip_namespace() -> bool {
    std::fs::read_dir(NETNS_DIR)
        .map(|dir| {
            dir.flatten().any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(NAMESPACE_PREFIX)
            })
        })
        .unwrap_or(false)
}

// ---------------------------------------------------------------------------------------------
// Undo.

/// What one `apply` made, undone backwards if it fails.
enum Made {
    Bridge {
        name: String,
        enslaved: Option<String>,
    },
    Namespace(String),
    Link(String),
    Elements(GatewayEntry),
}

fn undo(tools: &dyn HostTools, templates: &Templates, made: Vec<Made>) -> Vec<EipError> {
    let mut failures = Vec::new();
    let had_elements = made.iter().any(|m| matches!(m, Made::Elements(_)));
    for m in made.into_iter().rev() {
        let r = match &m {
            Made::Elements(e) => remove_bridge_elements(tools, templates, std::slice::from_ref(e)),
            Made::Link(name) => tools
                .run("ip", &["link", "delete", "dev", name])
                .map(|_| ())
                .map_err(EipError::from),
            Made::Namespace(ns) => tools
                .run("ip", &["netns", "delete", ns])
                .map(|_| ())
                .map_err(EipError::from),
            Made::Bridge { name, enslaved } => undo_bridge(tools, name, enslaved.as_deref()),
        };
        if let Err(e) = r {
            failures.push(e);
        }
    }
    if had_elements {
        if let Err(e) = drop_bridge_table_if_unused(tools) {
            failures.push(e);
        }
    }
    failures
}

/// A bridge this call made goes, unless something else joined it meanwhile (a VM's tap).
fn undo_bridge(
    tools: &dyn HostTools,
    bridge: &str,
    enslaved: Option<&str>,
) -> Result<(), EipError> {
    let ports = tools.run("ip", &["-o", "link", "show", "master", bridge])?;
    let others = ports
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or_default().to_string())
        .any(|n| Some(n.as_str()) != enslaved);
    if others {
        return Ok(());
    }
    if let Some(dev) = enslaved {
        tools.run("ip", &["link", "set", "dev", dev, "nomaster"])?;
    }
    tools
        .run("ip", &["link", "delete", "dev", bridge])
        .map(|_| ())
        .map_err(EipError::from)
}

// ---------------------------------------------------------------------------------------------
// apply

/// Makes the host hold the EIP `spec`: see the module's documentation. Idempotent.
pub fn apply(tools: &dyn HostTools, templates: &Templates, spec: &EipSpec) -> Result<(), EipError> {
    let plan = Plan::new(spec)?;
    let _vip = VipLock::take(&plan.vip_uuid);
    let mut made = Vec::new();
    match apply_locked(tools, templates, &plan, &mut made) {
        Ok(()) => Ok(()),
        Err(e) => Err(EipError::Apply {
            eip: plan.eip_uuid.clone(),
            vip: plan.vip,
            source: Box::new(e),
            undo: undo(tools, templates, made),
        }),
    }
}

fn apply_locked(
    tools: &dyn HostTools,
    templates: &Templates,
    plan: &Plan,
    made: &mut Vec<Made>,
) -> Result<(), EipError> {
    let public_bridge = bridge_for(tools, &plan.public_interface, made)?;
    let vm_bridge = bridge_for(tools, &plan.vm_interface, made)?;

    let netns = plan.netns_path();
    if !netns.exists() {
        tools.run("ip", &["netns", "add", &plan.namespace])?;
        made.push(Made::Namespace(plan.namespace.clone()));
    }

    // The host's bridge rules come before the gateway port joins the bridge, so that the
    // namespace's copy of the gateway is never reachable from anyone but its VM, not even for a
    // moment. A gateway port that served another tap or gateway before (the EIP moved to another
    // NIC without a remove) leaves its old elements behind.
    let gateway_port = owned_link(tools, plan, &plan.gateway_port)?;
    if let Some(old) = gateway_port
        .as_ref()
        .and_then(|l| l.recorded_entry(&plan.gateway_port))
        .filter(|old| *old != plan.entry)
    {
        remove_bridge_elements(tools, templates, &[old])?;
    }
    add_bridge_elements(tools, templates, &plan.entry)?;
    if gateway_port.is_none() {
        made.push(Made::Elements(plan.entry.clone()));
    }

    ensure_veth(
        tools,
        plan,
        &plan.public_port,
        PUBLIC_IF,
        &public_bridge,
        &plan.public_alias(),
        None,
        made,
    )?;
    ensure_veth(
        tools,
        plan,
        &plan.gateway_port,
        GATEWAY_IF,
        &vm_bridge,
        &plan.entry.alias(&plan.vip_uuid),
        Some(&plan.gateway_mac),
        made,
    )?;

    // NAT, as one table replaced atomically; loaded before forwarding is on, so the namespace
    // never forwards anything its rules would not.
    let rules = render(
        templates,
        "nft/eip.nft.tera",
        &json!({
            "eip_uuid": plan.eip_uuid,
            "vip": plan.vip.to_string(),
            "vm_ip": plan.vm_ip.to_string(),
            "public_if": PUBLIC_IF,
            "gateway_if": GATEWAY_IF,
        }),
    )?;
    let file = NftFile::write(&rules)?;
    in_ns(tools, &netns, "nft", &["-f", &file.path()]).map_err(EipError::NatRules)?;

    // Before the namespace's links come up: no IPv6 at all (the EIP is IPv4; IPv6 would send
    // router solicitations and DAD on both sides); forwarding; ARP answered only for the
    // addresses of the link asked on, and asked with the address of the link it leaves by (the
    // VIP and the VM's gateway never leak to the other side); a gratuitous ARP from the kernel
    // whenever the public link's MAC is set (arp_notify), which is how the VIP is announced.
    in_ns(
        tools,
        &netns,
        "sysctl",
        &[
            "-q",
            "-e",
            "-w",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.arp_ignore=1",
            "net.ipv4.conf.all.arp_announce=2",
            "net.ipv4.conf.default.arp_notify=1",
            &format!("net.ipv4.conf.{PUBLIC_IF}.arp_notify=1"),
        ],
    )?;
    for dev in [GATEWAY_IF, PUBLIC_IF] {
        in_ns(tools, &netns, "ip", &["link", "set", "dev", dev, "up"])?;
    }

    // The VM's side.
    let gateway_cidr = format!("{}/{}", plan.entry.gateway, plan.gateway_prefix);
    ensure_only_address(tools, &netns, GATEWAY_IF, &gateway_cidr)?;

    // The public side: the VIP only once nobody else answers for it.
    let vip_cidr = format!("{}/{}", plan.vip, plan.vip_prefix);
    if !ns_addresses(tools, &netns, PUBLIC_IF)?.contains(&vip_cidr) {
        probe_duplicate(tools, &netns, plan, &public_bridge)?;
        ensure_only_address(tools, &netns, PUBLIC_IF, &vip_cidr)?;
    }
    let vip_gateway = plan.vip_gateway.to_string();
    in_ns(
        tools,
        &netns,
        "ip",
        &[
            "route",
            "replace",
            "default",
            "via",
            &vip_gateway,
            "dev",
            PUBLIC_IF,
        ],
    )?;

    // The gratuitous ARP: setting the MAC (to the VIP's own, fixed one) makes the kernel send it
    // at once (arp_notify); `arping -U` would send the same request and then idle for a second.
    in_ns(
        tools,
        &netns,
        "ip",
        &["link", "set", "dev", PUBLIC_IF, "address", &plan.public_mac],
    )?;
    Ok(())
}

/// The bridge of `interface` (made if missing), recorded for the undo when this call made it.
fn bridge_for(
    tools: &dyn HostTools,
    interface: &str,
    made: &mut Vec<Made>,
) -> Result<String, EipError> {
    let b = ensure_bridge(tools, interface)?;
    // A bridge that took the host's own addresses carries its connection: never undone.
    if b.created && b.moved_addresses.is_empty() {
        made.push(Made::Bridge {
            name: b.name.clone(),
            enslaved: b.enslaved,
        });
    }
    Ok(b.name)
}

/// The veth pair `port` (host end, a port of `bridge`, up, with `alias`) / `inner` (in the
/// namespace, `inner_mac` when given).
#[allow(clippy::too_many_arguments)]
fn ensure_veth(
    tools: &dyn HostTools,
    plan: &Plan,
    port: &str,
    inner: &str,
    bridge: &str,
    alias: &str,
    inner_mac: Option<&str>,
    made: &mut Vec<Made>,
) -> Result<(), EipError> {
    let netns = plan.netns_path();
    let mut existing = owned_link(tools, plan, port)?;
    // A port whose other end is not in the namespace (the namespace was deleted and made again
    // by hand) is of no use: make the pair again.
    if existing.is_some()
        && in_ns(tools, &netns, "ip", &["-o", "link", "show", "dev", inner]).is_err()
    {
        tools.run("ip", &["link", "delete", "dev", port])?;
        existing = None;
    }
    if existing.is_none() {
        let ns = plan.namespace.as_str();
        let mut args = vec!["link", "add", port, "type", "veth", "peer", "name", inner];
        if let Some(mac) = inner_mac {
            args.extend_from_slice(&["address", mac]);
        }
        args.extend_from_slice(&["netns", ns]);
        tools.run("ip", &args)?;
        made.push(Made::Link(port.to_string()));
    }
    let settled = existing.as_ref().is_some_and(|l| {
        l.up && l.master.as_deref() == Some(bridge) && l.alias.as_deref() == Some(alias)
    });
    if !settled {
        tools.run(
            "ip",
            &[
                "link", "set", "dev", port, "master", bridge, "alias", alias, "up",
            ],
        )?;
    }
    Ok(())
}

/// The host's link `port` when this VIP owns it; an error when another VIP or nobody does.
fn owned_link(
    tools: &dyn HostTools,
    plan: &Plan,
    port: &str,
) -> Result<Option<LinkInfo>, EipError> {
    let Some(info) = link(tools, port)? else {
        return Ok(None);
    };
    match info.owner() {
        Some(owner) if owner == plan.vip_uuid => Ok(Some(info)),
        Some(owner) => Err(EipError::PortTaken {
            port: port.to_string(),
            owner: owner.to_string(),
            vip: plan.vip_uuid.clone(),
        }),
        None => Err(EipError::ForeignPort(port.to_string())),
    }
}

/// `dev` in the namespace holds `cidr` and no other IPv4 address.
fn ensure_only_address(
    tools: &dyn HostTools,
    netns: &Path,
    dev: &str,
    cidr: &str,
) -> Result<(), EipError> {
    let addrs = ns_addresses(tools, netns, dev)?;
    if addrs.len() == 1 && addrs[0] == cidr {
        return Ok(());
    }
    if !addrs.is_empty() {
        in_ns(tools, netns, "ip", &["-4", "addr", "flush", "dev", dev])?;
    }
    in_ns(tools, netns, "ip", &["addr", "add", cidr, "dev", dev])
        .map(|_| ())
        .map_err(EipError::from)
}

/// Refuses a VIP someone on the public network answers ARP for (one probe, a second's wait).
fn probe_duplicate(
    tools: &dyn HostTools,
    netns: &Path,
    plan: &Plan,
    public_bridge: &str,
) -> Result<(), EipError> {
    let vip = plan.vip.to_string();
    let result = in_ns(
        tools,
        netns,
        "arping",
        &["-D", "-c", "1", "-w", "1", "-I", PUBLIC_IF, &vip],
    );
    match duplicate_answers(result)? {
        Ok(()) => Ok(()),
        Err(answers) => Err(EipError::VipInUse {
            vip,
            bridge: public_bridge.to_string(),
            answers: answers.join("; "),
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// remove

/// Removes the EIP `spec` from this host: its namespace, both veth pairs, its elements in the
/// host's bridge table (and that table with the host's last EIP). Succeeds when nothing is there.
/// Ports owned by another VIP (a name collision) are never touched.
pub fn remove(
    tools: &dyn HostTools,
    templates: &Templates,
    spec: &EipSpec,
) -> Result<(), EipError> {
    let plan = Plan::new(spec)?;
    let _vip = VipLock::take(&plan.vip_uuid);
    remove_locked(tools, templates, &plan).map_err(|e| EipError::Remove {
        eip: plan.eip_uuid.clone(),
        vip: plan.vip,
        source: Box::new(e),
    })
}

fn remove_locked(
    tools: &dyn HostTools,
    templates: &Templates,
    plan: &Plan,
) -> Result<(), EipError> {
    let mut entries = vec![plan.entry.clone()];
    let mut ports = Vec::new();
    for port in [&plan.gateway_port, &plan.public_port] {
        if let Some(info) = link(tools, port)? {
            if info.owner() == Some(plan.vip_uuid.as_str()) {
                entries.extend(info.recorded_entry(port));
                ports.push(port.clone());
            }
        }
    }
    entries.sort();
    entries.dedup();
    // The links first: deleting a namespace removes its veths asynchronously, and a name still
    // there would make an apply right after fail.
    for port in ports {
        if let Err(e) = tools.run("ip", &["link", "delete", "dev", &port]) {
            // Gone meanwhile (its namespace went) is what was asked.
            if link(tools, &port)?.is_some() {
                return Err(e.into());
            }
        }
    }
    if plan.netns_path().exists() {
        tools.run("ip", &["netns", "delete", &plan.namespace])?;
    }
    remove_bridge_elements(tools, templates, &entries)?;
    drop_bridge_table_if_unused(tools)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::parse_link;
    use std::collections::HashMap;
    use zstack_common::agent_proto::NicSpec;

    fn templates() -> Templates {
        Templates::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../templates")).unwrap()
    }

    fn spec(vip_uuid: &str) -> EipSpec {
        EipSpec {
            eip_uuid: "e1000000000000000000000000000001".into(),
            vip_uuid: vip_uuid.into(),
            vip_ip: "172.31.0.10".into(),
            vip_netmask: "255.255.255.0".into(),
            vip_gateway: "172.31.0.1".into(),
            public_interface: "eth1".into(),
            vm_uuid: "a0000000000000000000000000000001".into(),
            nic: NicSpec {
                uuid: "0123456789abcdef0123456789abcdef".into(),
                l3_network_uuid: String::new(),
                mac: "fa:16:3e:00:00:01".into(),
                ip: "10.0.0.5".into(),
                netmask: "255.255.255.0".into(),
                gateway: "10.0.0.1".into(),
                device_id: 0,
                physical_interface: "eth0".into(),
                services: vec!["Eip".into()],
                dns_domain: None,
                dhcp_server_ip: None,
            },
        }
    }

    #[test]
    fn names_fit_the_kernel_limit_and_stay_apart() {
        let uuid = "5e1f00aa-bbcc-ddee-ff00-112233445566";
        assert_eq!(public_port_name(uuid).unwrap(), "eip5e1f00aabbcp");
        assert_eq!(gateway_port_name(uuid).unwrap(), "eip5e1f00aabbcg");
        assert_eq!(namespace_name(uuid), format!("zs-eip-{uuid}"));
        for u in [uuid, "ABCDEF0123456789ABCDEF0123456789"] {
            assert_eq!(public_port_name(u).unwrap().len(), 15);
            assert_eq!(gateway_port_name(u).unwrap().len(), 15);
        }
        assert!(public_port_name("abc").is_err());
        assert!(public_port_name("abcdef0123456789; rm -rf").is_err());
        assert!(public_port_name("").is_err());
    }

    #[test]
    fn macs_are_fixed_local_unicast_and_differ_by_role_and_vip() {
        let a = public_mac("5e1f0000000000000000000000000001");
        assert_eq!(a, public_mac("5e1f0000000000000000000000000001"));
        assert_ne!(a, gateway_mac("5e1f0000000000000000000000000001"));
        assert_ne!(a, public_mac("5e1f0000000000000000000000000002"));
        let first = u8::from_str_radix(&a[..2], 16).unwrap();
        assert_eq!(first & 0x03, 0x02, "{a}: locally administered, unicast");
        assert_eq!(a.len(), 17);
    }

    #[test]
    fn netmasks() {
        assert_eq!(prefix_len("255.255.255.0").unwrap(), 24);
        assert_eq!(prefix_len("255.255.0.0").unwrap(), 16);
        assert_eq!(prefix_len("255.255.255.255").unwrap(), 32);
        assert_eq!(prefix_len("24").unwrap(), 24);
        assert!(prefix_len("255.0.255.0").is_err());
        assert!(prefix_len("33").is_err());
        assert!(prefix_len("x").is_err());
    }

    #[test]
    fn refuses_bad_requests() {
        let mut s = spec("5e1f0000000000000000000000000001");
        assert!(Plan::new(&s).is_ok());
        s.vip_ip = "172.31.0".into();
        assert!(Plan::new(&s).unwrap_err().to_string().contains("VIP"));
        let mut s = spec("5e1f0000000000000000000000000001");
        s.public_interface = "averylonginterface".into();
        assert!(Plan::new(&s).is_err());
        let mut s = spec("5e1f0000000000000000000000000001");
        s.nic.physical_interface = "eth0 up".into();
        assert!(Plan::new(&s).is_err());
        let mut s = spec("5e1f0000000000000000000000000001");
        s.nic.netmask = "0.0.0.0".into();
        assert!(Plan::new(&s).is_err());
    }

    #[test]
    fn reads_links() {
        let line = "87: eipabc@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue \
                    master br_eth1 state UP mode DEFAULT group default qlen 1000\\    link/ether \
                    7e:80:17:1a:d7:08 brd ff:ff:ff:ff:ff:ff link-netns zs-eip-x\\    alias \
                    zstack-eip vip=5e1f tap=vnic01234567.0 gateway=10.0.0.1";
        let l = parse_link(line);
        assert!(l.up);
        assert_eq!(l.master.as_deref(), Some("br_eth1"));
        assert_eq!(l.owner(), Some("5e1f"));
        assert_eq!(
            l.recorded_entry("eipabc"),
            Some(GatewayEntry {
                port: "eipabc".into(),
                tap: "vnic01234567.0".into(),
                gateway: "10.0.0.1".parse().unwrap(),
            })
        );
        let down = parse_link(
            "97: x@if2: <NO-CARRIER,BROADCAST,MULTICAST,UP> mtu 1500 state DOWN\\    link/ether",
        );
        assert!(down.up && down.master.is_none() && down.owner().is_none());
        let off = parse_link("2: gw@if97: <BROADCAST,MULTICAST> mtu 1500 qdisc noop state DOWN");
        assert!(!off.up);
        let foreign = parse_link("3: x: <UP> mtu 1500\\    alias somebody else vip=1");
        assert_eq!(foreign.owner(), None);
    }

    #[test]
    fn reads_addresses() {
        let out =
            "2: public    inet 172.31.0.10/24 scope global public\\       valid_lft forever\n\
                   2: public    inet 172.31.0.11/24 scope global secondary public\\ x\n";
        assert_eq!(
            parse_addresses(out),
            vec!["172.31.0.10/24".to_string(), "172.31.0.11/24".to_string()]
        );
        assert!(parse_addresses("").is_empty());
    }

    #[test]
    fn reads_duplicate_probes() {
        assert_eq!(duplicate_answers(Ok(String::new())).unwrap(), Ok(()));
        let dup = Err(HostError::Failed {
            command: "arping".into(),
            message: "ARPING 172.31.0.10 from 0.0.0.0 public\nUnicast reply from 172.31.0.10 \
                      [02:11:22:33:44:55]  0.6ms\nSent 1 probes (1 broadcast(s))"
                .into(),
            status: Some(1),
        });
        let answers = duplicate_answers(dup).unwrap().unwrap_err();
        assert_eq!(answers.len(), 1);
        assert!(answers[0].contains("02:11:22:33:44:55"));
        let broken = Err(HostError::Failed {
            command: "arping".into(),
            message: "arping: Device public not available.".into(),
            status: Some(2),
        });
        assert!(duplicate_answers(broken).is_err());
    }

    #[test]
    fn renders_the_rules() {
        let t = templates();
        let nat = render(
            &t,
            "nft/eip.nft.tera",
            &json!({"eip_uuid": "e1", "vip": "172.31.0.10", "vm_ip": "10.0.0.5",
                    "public_if": PUBLIC_IF, "gateway_if": GATEWAY_IF}),
        )
        .unwrap();
        assert!(nat.contains("delete table ip zstack_eip"));
        assert!(nat.contains("ip daddr 172.31.0.10 dnat to 10.0.0.5"));
        assert!(nat.contains("ip saddr 10.0.0.5 snat to 172.31.0.10"));
        let entry = GatewayEntry {
            port: "eip0123456789ag".into(),
            tap: "vnic01234567.0".into(),
            gateway: "10.0.0.1".parse().unwrap(),
        };
        let add = render_elements(&t, &["add"], std::slice::from_ref(&entry)).unwrap();
        assert!(
            add.contains(r#"add element bridge zstack_eip gateway_ports { "eip0123456789ag" }"#)
        );
        assert!(add.contains(
            r#"add element bridge zstack_eip gateway_taps { "eip0123456789ag" . "vnic01234567.0" }"#
        ));
        assert!(add.contains(
            r#"add element bridge zstack_eip tap_gateways { "vnic01234567.0" . 10.0.0.1 }"#
        ));
        assert!(!add.contains("delete element"));
        // Two entries of one port: the port once per op, or the second delete would fail.
        let other = GatewayEntry {
            tap: "vnic76543210.1".into(),
            ..entry.clone()
        };
        let del = render_elements(&t, &["add", "delete"], &[entry, other]).unwrap();
        assert_eq!(
            del.matches("delete element bridge zstack_eip gateway_ports")
                .count(),
            1
        );
        assert_eq!(
            del.matches("delete element bridge zstack_eip gateway_taps")
                .count(),
            2
        );
        let table = render(&t, "nft/eip-bridge.nft.tera", &json!({})).unwrap();
        assert!(table.contains("flush chain bridge zstack_eip forward"));
    }

    /// A host with no EIP yet: links appear when `ip link add` runs; every other command works.
    #[derive(Default)]
    struct FakeHost {
        links: Mutex<HashMap<String, String>>,
        calls: Mutex<Vec<String>>,
        fail_on: Option<&'static str>,
    }

    impl HostTools for FakeHost {
        fn run(&self, program: &str, args: &[&str]) -> Result<String, HostError> {
            let line = format!("{program} {}", args.join(" "));
            self.calls.lock().unwrap().push(line.clone());
            if self.fail_on.is_some_and(|f| line.contains(f)) {
                return Err(HostError::Failed {
                    command: line,
                    message: "injected failure".into(),
                    status: Some(1),
                });
            }
            let mut links = self.links.lock().unwrap();
            match (program, args) {
                ("ip", ["-o", "link", "show"]) => {
                    Ok(links.values().map(|l| format!("{l}\n")).collect::<String>())
                }
                ("ip", ["link", "add", "name", name, ..]) | ("ip", ["link", "add", name, ..]) => {
                    links.insert(name.to_string(), format!("1: {name}: <BROADCAST> mtu 1500"));
                    Ok(String::new())
                }
                ("ip", ["link", "delete", "dev", name]) => {
                    links.remove(*name);
                    Ok(String::new())
                }
                _ => Ok(String::new()),
            }
        }
    }

    #[test]
    fn apply_on_a_new_host_makes_everything_in_order() {
        let host = FakeHost::default();
        let s = spec("5e1f7e570000000000000000000000a1");
        apply(&host, &templates(), &s).unwrap();
        let calls = host.calls.lock().unwrap().join("\n");
        let pos = |needle: &str| {
            calls
                .find(needle)
                .unwrap_or_else(|| panic!("no {needle:?} in\n{calls}"))
        };
        assert!(pos("ip link add name br_eth1 type bridge") < pos("ip netns add zs-eip-"));
        assert!(
            pos("ip netns add") < pos("ip link add eip5e1f7e57000p type veth peer name public")
        );
        let gw_mac = gateway_mac(&s.vip_uuid);
        pos(&format!(
            "ip link add eip5e1f7e57000g type veth peer name gateway address {gw_mac} netns"
        ));
        assert!(pos("sysctl") < pos("ip link set dev public up"));
        assert!(pos("arping -D") < pos("ip addr add 172.31.0.10/24 dev public"));
        assert!(pos("ip addr add 10.0.0.1/24 dev gateway") > 0);
        assert!(pos("route replace default via 172.31.0.1 dev public") > 0);
        let pub_mac = public_mac(&s.vip_uuid);
        assert!(pos(&format!("link set dev public address {pub_mac}")) > pos("nft -f"));
        assert!(!calls.contains("ip netns exec"), "nsenter only:\n{calls}");
    }

    #[test]
    fn a_failure_half_way_undoes_what_the_call_made() {
        let host = FakeHost {
            fail_on: Some("route replace"),
            ..FakeHost::default()
        };
        let s = spec("5e1f7e570000000000000000000000a2");
        let err = apply(&host, &templates(), &s).unwrap_err().to_string();
        assert!(err.contains("injected failure"), "{err}");
        let calls = host.calls.lock().unwrap().join("\n");
        for undone in [
            "ip link delete dev eip5e1f7e57000g",
            "ip link delete dev eip5e1f7e57000p",
            "ip netns delete zs-eip-5e1f7e570000000000000000000000a2",
            "ip link delete dev br_eth1",
            "ip link delete dev br_eth0",
        ] {
            assert!(calls.contains(undone), "no {undone:?} in\n{calls}");
        }
        assert!(calls.contains("delete element bridge") || calls.contains("nft -f"));
        assert!(host.links.lock().unwrap().is_empty());
    }

    #[test]
    fn a_port_of_another_vip_is_refused_and_left_alone() {
        let host = FakeHost::default();
        host.links.lock().unwrap().insert(
            "eip5e1f7e57000p".into(),
            "9: eip5e1f7e57000p: <UP> mtu 1500\\    alias zstack-eip vip=5e1f7e57000-other".into(),
        );
        let s = spec("5e1f7e570000000000000000000000a3");
        let err = apply(&host, &templates(), &s).unwrap_err().to_string();
        assert!(
            err.contains("taken by the EIP of VIP 5e1f7e57000-other"),
            "{err}"
        );
        remove(&host, &templates(), &s).unwrap();
        let calls = host.calls.lock().unwrap().join("\n");
        assert!(
            !calls.contains("link delete dev eip5e1f7e57000p"),
            "{calls}"
        );
        assert!(host.links.lock().unwrap().contains_key("eip5e1f7e57000p"));
    }
}

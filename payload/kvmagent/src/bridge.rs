//! The host's links as `ip` shows them, and the bridges of L2 networks: one place that makes
//! `br_<interface>` for VMs (`vm.rs`) and EIPs (`eip.rs`) alike.

use crate::host::{HostError, HostTools};
use crate::vm::bridge_name;

/// What `ip -o link show dev X` tells about a link.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct LinkInfo {
    pub up: bool,
    pub master: Option<String>,
    pub alias: Option<String>,
}

/// Parses one line of `ip -o link show`:
/// `7: eipx@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue master br_x state UP
/// mode DEFAULT group default qlen 1000\    link/ether .. brd .. link-netns ns\    alias text`.
pub(crate) fn parse_link(line: &str) -> LinkInfo {
    let mut parts = line.split('\\');
    let head = parts.next().unwrap_or_default();
    let flags = head
        .split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .map(|(f, _)| f)
        .unwrap_or_default();
    let mut words = head.split_whitespace();
    let mut master = None;
    while let Some(w) = words.next() {
        if w == "master" {
            master = words.next().map(str::to_string);
        }
    }
    let alias = parts
        .map(str::trim)
        .find_map(|p| p.strip_prefix("alias "))
        .map(|a| a.trim().to_string());
    LinkInfo {
        up: flags.split(',').any(|f| f == "UP"),
        master,
        alias,
    }
}

/// The name a line of `ip -o link show` is about: `7: eipx@if2: <...` -> `eipx`.
fn link_name(line: &str) -> Option<&str> {
    let word = line.split_whitespace().nth(1)?.strip_suffix(':')?;
    word.split('@').next()
}

/// The host's link `name`, or None: looked up in the list of every link, so a missing link is
/// told by the list and not by the words of an error.
pub(crate) fn link(tools: &dyn HostTools, name: &str) -> Result<Option<LinkInfo>, HostError> {
    let out = tools.run("ip", &["-o", "link", "show"])?;
    Ok(out
        .lines()
        .find(|l| link_name(l) == Some(name))
        .map(parse_link))
}

/// A bridge [`ensure_bridge`] answered for: made by this call or there already.
pub(crate) struct EnsuredBridge {
    pub name: String,
    pub created: bool,
    /// The physical interface this call enslaved to it.
    pub enslaved: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The physical interface holds addresses: joining it would cut the host off.
    #[error("{interface} carries addresses, so it cannot join bridge {bridge} without cutting the host off; create {bridge} holding those addresses with {interface} enslaved, then retry")]
    Addressed { interface: String, bridge: String },
    #[error(transparent)]
    Host(#[from] HostError),
}

/// The bridge `br_<interface>` of an L2 network, made and up; the physical interface joins it
/// when it exists and carries no address (moving a host's address is the operator's decision).
/// A bridge this call made is removed again when it has to refuse. VMs' and EIPs' bridges are
/// made here alike.
pub(crate) fn ensure_bridge(
    tools: &dyn HostTools,
    interface: &str,
) -> Result<EnsuredBridge, BridgeError> {
    let bridge = bridge_name(interface);
    let existing = link(tools, &bridge)?;
    if existing.is_none() {
        tools.run("ip", &["link", "add", "name", &bridge, "type", "bridge"])?;
    }
    let mut enslaved = None;
    if let Some(phys) = link(tools, interface)? {
        if phys.master.as_deref() != Some(bridge.as_str()) {
            let addrs = tools.run("ip", &["-o", "addr", "show", "dev", interface])?;
            if addrs.lines().any(|l| l.contains(" inet")) {
                if existing.is_none() {
                    let _ = tools.run("ip", &["link", "delete", "dev", &bridge]);
                }
                return Err(BridgeError::Addressed {
                    interface: interface.to_string(),
                    bridge,
                });
            }
            tools.run(
                "ip",
                &["link", "set", "dev", interface, "master", &bridge, "up"],
            )?;
            enslaved = Some(interface.to_string());
        }
    }
    if !existing.as_ref().is_some_and(|l| l.up) {
        tools.run("ip", &["link", "set", "dev", &bridge, "up"])?;
    }
    Ok(EnsuredBridge {
        name: bridge,
        created: existing.is_none(),
        enslaved,
    })
}

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

pub(crate) fn missing_device(e: &HostError) -> bool {
    matches!(e, HostError::Failed { message, .. }
        if message.contains("does not exist") || message.contains("Cannot find device"))
}

/// The host's link `name`, or None.
pub(crate) fn link(tools: &dyn HostTools, name: &str) -> Result<Option<LinkInfo>, String> {
    match tools.run("ip", &["-o", "link", "show", "dev", name]) {
        Ok(out) => Ok(Some(parse_link(out.lines().next().unwrap_or_default()))),
        Err(e) if missing_device(&e) => Ok(None),
        Err(e) => Err(e.message()),
    }
}

/// A bridge [`ensure_bridge`] answered for: made by this call or there already.
pub(crate) struct EnsuredBridge {
    pub name: String,
    pub created: bool,
    /// The physical interface this call enslaved to it.
    pub enslaved: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum BridgeError {
    /// The physical interface holds addresses: joining it would cut the host off.
    #[error("{interface} carries addresses, so it cannot join bridge {bridge} without cutting the host off; create {bridge} holding those addresses with {interface} enslaved, then retry")]
    Addressed { interface: String, bridge: String },
    #[error("{0}")]
    Host(String),
}

/// The bridge `br_<interface>` of an L2 network, made and up; the physical interface joins it
/// when it exists and carries no address (moving a host's address is the operator's decision).
/// A bridge this call made is removed again when it has to refuse. VMs' and EIPs' bridges are
/// made here alike.
pub(crate) fn ensure_bridge(
    tools: &dyn HostTools,
    interface: &str,
) -> Result<EnsuredBridge, BridgeError> {
    let host = |e: HostError| BridgeError::Host(e.message());
    let bridge = bridge_name(interface);
    let existing = link(tools, &bridge).map_err(BridgeError::Host)?;
    if existing.is_none() {
        tools
            .run("ip", &["link", "add", "name", &bridge, "type", "bridge"])
            .map_err(host)?;
    }
    let mut enslaved = None;
    if let Some(phys) = link(tools, interface).map_err(BridgeError::Host)? {
        if phys.master.as_deref() != Some(bridge.as_str()) {
            let addrs = tools
                .run("ip", &["-o", "addr", "show", "dev", interface])
                .map_err(host)?;
            if addrs.lines().any(|l| l.contains(" inet")) {
                if existing.is_none() {
                    let _ = tools.run("ip", &["link", "delete", "dev", &bridge]);
                }
                return Err(BridgeError::Addressed {
                    interface: interface.to_string(),
                    bridge,
                });
            }
            tools
                .run(
                    "ip",
                    &["link", "set", "dev", interface, "master", &bridge, "up"],
                )
                .map_err(host)?;
            enslaved = Some(interface.to_string());
        }
    }
    if !existing.as_ref().is_some_and(|l| l.up) {
        tools
            .run("ip", &["link", "set", "dev", &bridge, "up"])
            .map_err(host)?;
    }
    Ok(EnsuredBridge {
        name: bridge,
        created: existing.is_none(),
        enslaved,
    })
}

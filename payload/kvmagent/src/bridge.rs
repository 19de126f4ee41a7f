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
    /// `link/ether <mac>`.
    pub mac: Option<String>,
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
    let rest: Vec<&str> = parts.collect();
    let mac = rest.iter().find_map(|p| {
        let mut w = p.split_whitespace();
        (w.next() == Some("link/ether"))
            .then(|| w.next().map(str::to_string))
            .flatten()
    });
    let alias = rest
        .into_iter()
        .map(str::trim)
        .find_map(|p| p.strip_prefix("alias "))
        .map(|a| a.trim().to_string());
    LinkInfo {
        up: flags.split(',').any(|f| f == "UP"),
        master,
        alias,
        mac,
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
pub struct EnsuredBridge {
    pub name: String,
    pub created: bool,
    /// The physical interface this call enslaved to it.
    pub enslaved: Option<String>,
    /// The host's own addresses this call moved from the interface onto the bridge (the bridge
    /// now carries the host's connection: it is never undone by removing it).
    pub moved_addresses: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// Moving the interface's addresses onto its bridge failed; what was moved went back.
    #[error("cannot move the addresses of {interface} ({addresses}) onto bridge {bridge}: {source}; {interface} keeps them and stays out of {bridge}")]
    Move {
        interface: String,
        bridge: String,
        addresses: String,
        // Boxed: it keeps every Result of this module small.
        source: Box<HostError>,
    },
    #[error(transparent)]
    Host(#[from] HostError),
}

/// The bridge `br_<interface>` of an L2 network, made and up; the physical interface joins it
/// when it exists. An interface that carries the host's own addresses (the common host with one
/// NIC) joins with its addresses and routes moved onto the bridge, as the original agent did
/// (link-local addresses, fe80::/10 and 169.254/16, do not count: the bridge gets its own). The
/// move keeps the host reachable: the bridge takes the interface's MAC and its addresses before
/// the interface joins, the routes are replaced onto the bridge, and only then do the addresses
/// leave the interface. A failed move puts everything back. VMs' and EIPs' bridges are made here
/// alike.
pub fn ensure_bridge(tools: &dyn HostTools, interface: &str) -> Result<EnsuredBridge, BridgeError> {
    let bridge = bridge_name(interface);
    let existing = link(tools, &bridge)?;
    if existing.is_none() {
        tools.run("ip", &["link", "add", "name", &bridge, "type", "bridge"])?;
    }
    let mut enslaved = None;
    let mut moved = Vec::new();
    if let Some(phys) = link(tools, interface)? {
        if phys.master.as_deref() != Some(bridge.as_str()) {
            let shown = tools.run("ip", &["-o", "addr", "show", "dev", interface])?;
            let addresses = host_addresses(&shown);
            if addresses.is_empty() {
                tools.run(
                    "ip",
                    &["link", "set", "dev", interface, "master", &bridge, "up"],
                )?;
            } else {
                if let Err(source) = move_onto_bridge(tools, interface, &bridge, &phys, &addresses)
                {
                    if existing.is_none() {
                        let _ = tools.run("ip", &["link", "delete", "dev", &bridge]);
                    }
                    return Err(BridgeError::Move {
                        interface: interface.to_string(),
                        bridge,
                        addresses: addresses
                            .iter()
                            .map(|a| a.cidr.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                        source: Box::new(source),
                    });
                }
                moved = addresses.into_iter().map(|a| a.cidr).collect();
            }
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
        moved_addresses: moved,
    })
}

/// An address of the host on an interface, as `ip -o addr show` gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostAddress {
    /// `-4` or `-6`.
    pub family: &'static str,
    pub cidr: String,
    /// What follows the address on its line (`brd ...`, `scope ...`), for `ip addr add`.
    pub options: Vec<String>,
}

/// The addresses of `ip -o addr show dev X` that are the host's own: every inet and inet6 but
/// link-local ones (fe80::/10, 169.254.0.0/16), which every interface has or makes for itself.
pub(crate) fn host_addresses(shown: &str) -> Vec<HostAddress> {
    shown
        .lines()
        .filter_map(|line| {
            let head = line.split('\\').next().unwrap_or_default();
            let mut words = head
                .split_whitespace()
                .skip_while(|w| *w != "inet" && *w != "inet6");
            let family = match words.next()? {
                "inet" => "-4",
                _ => "-6",
            };
            let cidr = words.next()?.to_string();
            let ip: std::net::IpAddr = cidr.split('/').next()?.parse().ok()?;
            let link_local = match ip {
                std::net::IpAddr::V4(v4) => v4.is_link_local(),
                std::net::IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
            };
            if link_local {
                return None;
            }
            // `brd X` and `scope X` carry over; the label (the device's name) and flags do not.
            let rest: Vec<&str> = words.collect();
            let mut options = Vec::new();
            let mut i = 0;
            while i + 1 < rest.len() {
                if matches!(rest[i], "brd" | "scope") {
                    options.push(rest[i].to_string());
                    options.push(rest[i + 1].to_string());
                    i += 2;
                } else {
                    i += 1;
                }
            }
            Some(HostAddress {
                family,
                cidr,
                options,
            })
        })
        .collect()
}

/// The routes of `ip -o <family> route show dev X` to carry onto another device: all but the
/// kernel's own (made again with the address), without the flags `ip route` prints but does not
/// take.
pub(crate) fn movable_routes(shown: &str) -> Vec<Vec<String>> {
    const FLAGS: &[&str] = &[
        "linkdown",
        "dead",
        "offload",
        "trap",
        "rt_offload",
        "rt_trap",
    ];
    shown
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|w| !w.is_empty())
        .filter(|w| !w.windows(2).any(|p| p == ["proto", "kernel"]))
        .map(|w| {
            w.into_iter()
                .filter(|x| !FLAGS.contains(x))
                .map(str::to_string)
                .collect()
        })
        .collect()
}

/// Moves `addresses` and the routes through `interface` onto `bridge`, `interface` joining it.
/// On failure what was done is undone (best effort) and the first error is answered.
fn move_onto_bridge(
    tools: &dyn HostTools,
    interface: &str,
    bridge: &str,
    phys: &LinkInfo,
    addresses: &[HostAddress],
) -> Result<(), HostError> {
    let mut routes = Vec::new();
    for family in ["-4", "-6"] {
        let shown = tools.run("ip", &["-o", family, "route", "show", "dev", interface])?;
        routes.extend(movable_routes(&shown).into_iter().map(|r| (family, r)));
    }
    let ip = |args: &[&str]| tools.run("ip", args).map(|_| ());
    let undo = || {
        for a in addresses {
            let _ = ip(&[a.family, "addr", "del", &a.cidr, "dev", bridge]);
        }
        let _ = ip(&["link", "set", "dev", interface, "nomaster"]);
        for (family, r) in &routes {
            let mut args = vec![*family, "route", "replace"];
            args.extend(r.iter().map(String::as_str));
            args.extend(["dev", interface]);
            let _ = ip(&args);
        }
    };
    let steps = || -> Result<(), HostError> {
        // Peers keep their ARP/ND entries: the bridge answers with the interface's MAC.
        if let Some(mac) = &phys.mac {
            ip(&["link", "set", "dev", bridge, "address", mac])?;
        }
        ip(&["link", "set", "dev", bridge, "up"])?;
        for a in addresses {
            let mut args = vec![a.family, "addr", "replace", a.cidr.as_str()];
            args.extend(a.options.iter().map(String::as_str));
            args.extend(["dev", bridge]);
            ip(&args)?;
        }
        ip(&["link", "set", "dev", interface, "master", bridge, "up"])?;
        for (family, r) in &routes {
            let mut args = vec![*family, "route", "replace"];
            args.extend(r.iter().map(String::as_str));
            args.extend(["dev", bridge]);
            ip(&args)?;
        }
        for a in addresses {
            ip(&[a.family, "addr", "del", &a.cidr, "dev", interface])?;
        }
        Ok(())
    };
    steps().inspect_err(|_| undo())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_local_addresses_are_not_the_hosts_own() {
        let shown = "2: eth0    inet 10.0.0.5/24 brd 10.0.0.255 scope global eth0\\       valid_lft forever preferred_lft forever\n\
                     2: eth0    inet 169.254.7.1/16 brd 169.254.255.255 scope link eth0\\       valid_lft forever preferred_lft forever\n\
                     2: eth0    inet6 2001:db8::5/64 scope global \\       valid_lft forever preferred_lft forever\n\
                     2: eth0    inet6 fe80::1/64 scope link \\       valid_lft forever preferred_lft forever\n";
        let got = host_addresses(shown);
        assert_eq!(
            got,
            vec![
                HostAddress {
                    family: "-4",
                    cidr: "10.0.0.5/24".into(),
                    options: vec![
                        "brd".into(),
                        "10.0.0.255".into(),
                        "scope".into(),
                        "global".into()
                    ],
                },
                HostAddress {
                    family: "-6",
                    cidr: "2001:db8::5/64".into(),
                    options: vec!["scope".into(), "global".into()],
                },
            ]
        );
        assert!(host_addresses("3: data0    inet6 fe80::5054:ff:fe12:3456/64 scope link \\       valid_lft forever preferred_lft forever\n").is_empty());
    }

    #[test]
    fn routes_move_without_the_kernels_own_and_without_flags() {
        let shown = "default via 10.0.0.1 proto static metric 100 linkdown\n\
                     10.0.0.0/24 proto kernel scope link src 10.0.0.5\n\
                     10.9.0.0/16 via 10.0.0.254\n";
        assert_eq!(
            movable_routes(shown),
            vec![
                vec!["default", "via", "10.0.0.1", "proto", "static", "metric", "100"],
                vec!["10.9.0.0/16", "via", "10.0.0.254"],
            ]
        );
    }
}

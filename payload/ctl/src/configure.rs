//! `zstack-ctl configure key=value ...` and `show_configuration`: the keys of zstack.properties
//! that ZStack reads, each with its validator; the file is rewritten atomically, keeping every
//! comment and every other line.

use std::net::IpAddr;

use anyhow::bail;
use zstack_common::service::keys;
use zstack_common::{Layout, Properties};

/// A key ZStack reads, and how a value is checked.
pub struct Key {
    pub name: &'static str,
    pub what: &'static str,
    pub secret: bool,
    check: fn(&str) -> Result<(), String>,
}

fn ip(v: &str) -> Result<(), String> {
    v.parse::<IpAddr>()
        .map(|_| ())
        .map_err(|_| "an IP address".to_string())
}
fn port(v: &str) -> Result<(), String> {
    match v.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err("a port number 1-65535".to_string()),
    }
}
fn virtualization(v: &str) -> Result<(), String> {
    match v {
        "auto" | "kvm" | "qemu" => Ok(()),
        _ => Err("auto, kvm or qemu".to_string()),
    }
}
fn password(v: &str) -> Result<(), String> {
    if v.len() >= 8 && !v.contains(char::is_whitespace) {
        Ok(())
    } else {
        Err("at least 8 characters without spaces".to_string())
    }
}

pub const KEYS: &[Key] = &[
    Key {
        name: keys::MANAGEMENT_IP,
        what: "IP of the management node",
        secret: false,
        check: ip,
    },
    Key {
        name: keys::API_PORT,
        what: "port of the HTTP API",
        secret: false,
        check: port,
    },
    Key {
        name: keys::AGENT_PORT,
        what: "port of the KVM host agent",
        secret: false,
        check: port,
    },
    Key {
        name: keys::HOST_TLS_PORT,
        what: "port of the management node's host channel (HTTPS for hosts: image downloads)",
        secret: false,
        check: port,
    },
    Key {
        name: keys::AGENT_VIRTUALIZATION,
        what: "how the agent runs VMs: auto (kvm where /dev/kvm opens), kvm, or qemu (software)",
        secret: false,
        check: virtualization,
    },
    Key {
        name: keys::ADMIN_PASSWORD,
        what: "password of the admin account set at install",
        secret: true,
        check: password,
    },
];

/// The known key closest to `name` (for "did you mean").
fn closest(name: &str) -> &'static str {
    zstack_common::suggest::closest(name, KEYS.iter().map(|k| k.name))
}

/// Validates every `key=value` first, then rewrites the file once. Returns the changed keys.
pub fn configure(layout: &Layout, pairs: &[String]) -> anyhow::Result<Vec<String>> {
    if pairs.is_empty() {
        bail!(
            "give one or more key=value pairs; known keys: {}",
            KEYS.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
        );
    }
    let mut parsed = Vec::new();
    let mut problems = Vec::new();
    for p in pairs {
        let Some((k, v)) = p.split_once('=') else {
            problems.push(format!("{p:?} is not key=value"));
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        match KEYS.iter().find(|key| key.name == k) {
            None => problems.push(format!("unknown key {k:?}; did you mean {}?", closest(k))),
            Some(key) => match (key.check)(v) {
                Ok(()) => parsed.push((key.name, v.to_string())),
                Err(want) => problems.push(format!("{k} = {v:?}: {} must be {want}", key.what)),
            },
        }
    }
    if !problems.is_empty() {
        bail!("nothing was changed:\n  - {}", problems.join("\n  - "));
    }
    let path = layout.host(layout.properties_file());
    let mut props = Properties::load(&path)?;
    let mut changed = Vec::new();
    for (k, v) in parsed {
        if props.set(k, &v) {
            changed.push(k.to_string());
        }
    }
    if !changed.is_empty() {
        props.save(&path)?;
    }
    Ok(changed)
}

/// Every entry of the file, secrets masked unless `show_secrets`.
pub fn show(layout: &Layout, show_secrets: bool) -> anyhow::Result<Vec<(String, String)>> {
    let props = Properties::load(&layout.host(layout.properties_file()))?;
    Ok(props
        .entries()
        .map(|(k, v)| {
            let secret = KEYS.iter().any(|key| key.name == k && key.secret);
            let shown = if secret && !show_secrets {
                "********".to_string()
            } else {
                v.to_string()
            };
            (k.to_string(), shown)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_and_validators() {
        assert_eq!(closest("management.server.iq"), keys::MANAGEMENT_IP);
        assert_eq!(closest("kvmagent.prt"), keys::AGENT_PORT);
        assert!(ip("10.0.0.1").is_ok() && ip("10.0.0").is_err());
        assert!(port("8080").is_ok() && port("0").is_err() && port("70000").is_err());
    }
}

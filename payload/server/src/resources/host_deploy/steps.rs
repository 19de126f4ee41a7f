//! The steps of a deployment after the login, each returning whether it changed the host and a
//! line saying what it did.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::json;
use zstack_common::release::{Manifest, ManifestEntry, MANIFEST_FILE, RELEASE_FILE};
use zstack_common::service::Service;
use zstack_common::Properties;
use zstack_pki::{Role, Subject};
use zstack_ssh::NodeKey;

use super::remote::{AgentUndo, Remote, Undo};
use super::{api, failed, ssh_error, Plan, AGENT_UNIT, PATH, REQUIRED_TOOLS, SUPPORTED_OS};
use crate::agent::{HostAgent, KvmAgentClient};
use crate::error::ApiError;
use crate::Node;

/// What the check step found on the host.
pub(super) struct HostState {
    pub(super) systemd: bool,
    /// Paths of the install that exist already.
    pub(super) existing: Vec<String>,
    /// A zstack-kvmagent serves on the agent port.
    pub(super) agent_serving: bool,
}

pub(super) fn key_step(
    remote: &Remote,
    node_key: &NodeKey,
    undo: &mut Undo,
) -> Result<((), bool, String), ApiError> {
    let line = node_key.public_line().map_err(ssh_error)?;
    let line = line.trim().to_string();
    let file = "/root/.ssh/authorized_keys";
    let existing = remote.read(file)?;
    // Compared on the key itself (type and base64), whatever comment a line carries.
    let key_of = |l: &str| l.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    let ours = key_of(&line);
    if existing
        .as_deref()
        .unwrap_or("")
        .lines()
        .any(|l| key_of(l) == ours)
    {
        return Ok(((), false, format!("unchanged: {file} has the key")));
    }
    remote.ok_with_input(
        "installing the management node's key",
        &[
            "sh",
            "-c",
            "umask 077 && mkdir -p /root/.ssh && chmod 700 /root/.ssh && \
             f=/root/.ssh/authorized_keys && \
             if [ -s \"$f\" ] && [ -n \"$(tail -c1 \"$f\")\" ]; then echo >> \"$f\"; fi && \
             cat >> \"$f\" && chmod 600 \"$f\"",
        ],
        format!("{line}\n").as_bytes(),
    )?;
    undo.key_line = Some((line, existing.is_none()));
    Ok(((), true, format!("added to {file}")))
}

pub(super) fn check_step(remote: &Remote, plan: &Plan) -> Result<HostState, ApiError> {
    let uid = remote.ok("id -u", &["id", "-u"])?;
    if uid.trim() != "0" {
        return Err(api(
            "HOST_LOGIN_NOT_ROOT",
            StatusCode::BAD_REQUEST,
            format!(
                "the user logged in as on {} is not root (uid {}); the agent is installed as \
                 root: give username=root",
                remote.ip,
                uid.trim()
            ),
        )
        .field("username"));
    }
    let os = remote.read("/etc/os-release")?.unwrap_or_default();
    let field = |k: &str| {
        os.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(|v| v.trim().trim_matches('"').to_string())
            .unwrap_or_default()
    };
    let (id, version, pretty) = (field("ID"), field("VERSION_ID"), field("PRETTY_NAME"));
    if !SUPPORTED_OS
        .iter()
        .any(|(i, v, _)| *i == id && *v == version)
    {
        let supported: Vec<&str> = SUPPORTED_OS.iter().map(|(_, _, n)| *n).collect();
        return Err(api(
            "HOST_UNSUPPORTED_OS",
            StatusCode::BAD_REQUEST,
            format!(
                "{} runs {}, which ZStack does not support as a KVM host; supported: {}",
                remote.ip,
                if pretty.is_empty() {
                    format!("{id} {version}")
                } else {
                    pretty
                },
                supported.join(", ")
            ),
        ));
    }
    let mut argv = vec![
        "sh",
        "-c",
        "PATH=$0; for t; do command -v \"$t\" >/dev/null 2>&1 || echo \"$t\"; done",
        PATH,
    ];
    argv.extend(REQUIRED_TOOLS.iter().map(|(t, _)| *t));
    let missing = remote.ok("looking for the required tools", &argv)?;
    let missing: Vec<String> = missing
        .lines()
        .filter_map(|t| REQUIRED_TOOLS.iter().find(|(tool, _)| *tool == t.trim()))
        .map(|(tool, package)| format!("{tool} (package {package})"))
        .collect();
    if !missing.is_empty() {
        let mut packages: Vec<&str> = REQUIRED_TOOLS
            .iter()
            .filter(|(t, _)| missing.iter().any(|m| m.starts_with(&format!("{t} "))))
            .map(|(_, p)| *p)
            .collect();
        packages.dedup();
        return Err(api(
            "HOST_MISSING_PACKAGES",
            StatusCode::BAD_REQUEST,
            format!(
                "{} lacks what the agent needs: {}; install them there first \
                 (apt-get install {}) and add the host again",
                remote.ip,
                missing.join(", "),
                packages.join(" ")
            ),
        ));
    }
    let port = plan.agent_port.to_string();
    let ss = remote.ok(
        "listing the listening sockets",
        &["ss", "-ltnpH", &format!("sport = :{port}")],
    )?;
    let holders: Vec<&str> = ss.lines().filter(|l| !l.trim().is_empty()).collect();
    let agent_serving = !holders.is_empty();
    if holders.iter().any(|l| !l.contains("\"zstack-kvmagent\"")) {
        return Err(api(
            "HOST_PORT_IN_USE",
            StatusCode::CONFLICT,
            format!(
                "port {port} on {} is taken by another program, so the agent cannot listen \
                 there: {}; stop it, or set kvmagent.port on the management node",
                remote.ip,
                holders.join("; ").trim()
            ),
        ));
    }
    let paths = plan.install_paths();
    let mut argv = vec![
        "sh",
        "-c",
        "for p; do if [ -e \"$p\" ] || [ -L \"$p\" ]; then echo \"$p\"; fi; done",
        "sh",
    ];
    argv.extend(paths.iter().map(String::as_str));
    let existing = remote
        .ok("looking for an earlier install", &argv)?
        .lines()
        .map(str::to_string)
        .collect();
    let init = remote.ok("reading PID 1", &["cat", "/proc/1/comm"])?;
    Ok(HostState {
        systemd: init.trim() == "systemd",
        existing,
        agent_serving,
    })
}

/// `sha256  path` lines of the release's files, for `sha256sum -c` on the host.
fn checksum_list(manifest: &Manifest) -> String {
    manifest
        .entries
        .iter()
        .filter_map(|e| match e {
            ManifestEntry::File { path, sha256, .. } => Some(format!("{sha256}  {path}\n")),
            ManifestEntry::Symlink { .. } => None,
        })
        .collect()
}

pub(super) fn copy_step(remote: &Remote, plan: &Plan) -> Result<((), bool, String), ApiError> {
    let local = |name: &str| {
        std::fs::read_to_string(plan.tree.join(name))
            .map_err(|e| ApiError::internal(format!("this node's release tree: {name}: {e}")))
    };
    let release_json = local(RELEASE_FILE)?;
    let manifest = Manifest::parse(&local(MANIFEST_FILE)?)
        .map_err(|e| ApiError::internal(format!("this node's MANIFEST: {e}")))?;
    let checks = checksum_list(&manifest);
    let verify = |dir: &str| -> Result<bool, ApiError> {
        let out = remote
            .session
            .run_with_input(
                &[
                    "sh",
                    "-c",
                    "cd -- \"$1\" && sha256sum --quiet --strict -c -",
                    "sh",
                    dir,
                ],
                checks.as_bytes(),
            )
            .map_err(ssh_error)?;
        Ok(out.success())
    };
    let dest = plan.version_dir();
    if remote.read(&format!("{dest}/{RELEASE_FILE}"))?.as_deref() == Some(release_json.as_str())
        && verify(&dest)?
    {
        return Ok((
            (),
            false,
            format!("unchanged: {dest} is in place and verified"),
        ));
    }
    // The tree as a tar in memory (a release is some 20 MiB; the management node may write
    // nowhere else), streamed to the host's tar.
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    let tar = builder
        .append_dir_all(".", &plan.tree)
        .and_then(|_| builder.into_inner())
        .map_err(|e| ApiError::internal(format!("cannot pack the release tree: {e}")))?;
    let size = tar.len();
    let partial = plan.partial_dir();
    remote.ok_with_input(
        "unpacking the release",
        &[
            "sh",
            "-c",
            "rm -rf -- \"$1\" && mkdir -p -- \"$1\" && tar -xf - -C \"$1\" --no-same-owner",
            "sh",
            &partial,
        ],
        &tar[..],
    )?;
    let copied_release = remote.read(&format!("{partial}/{RELEASE_FILE}"))?;
    if copied_release.as_deref() != Some(release_json.as_str()) || !verify(&partial)? {
        let _ = remote.run(&["rm", "-rf", "--", &partial]);
        return Err(failed(format!(
            "the release copied to {partial} on {} does not match its MANIFEST; nothing was \
             installed",
            remote.ip
        )));
    }
    remote.ok(
        "moving the release into place",
        &[
            "sh",
            "-c",
            "if [ -e \"$2\" ]; then rm -rf -- \"$2.replaced\" && mv -T -- \"$2\" \"$2.replaced\"; fi && \
             mv -T -- \"$1\" \"$2\" && rm -rf -- \"$2.replaced\"",
            "sh",
            &partial,
            &dest,
        ],
    )?;
    Ok((
        (),
        true,
        format!(
            "{} files ({} MiB over SSH) into {dest}, verified against its MANIFEST",
            manifest.entries.len(),
            size >> 20
        ),
    ))
}

pub(super) fn install_step(
    remote: &Remote,
    plan: &Plan,
    state: &HostState,
    undo: &mut Undo,
) -> Result<((), bool, String), ApiError> {
    let mut did = Vec::new();
    let mut link = |target: String, link: String, undo: &mut Undo| -> Result<(), ApiError> {
        let before = remote.readlink(&link)?;
        if before.as_deref() == Some(target.as_str()) {
            return Ok(());
        }
        if let Some(old) = before {
            undo.relinked.push((link.clone(), old));
        }
        remote.symlink(&target, &link)?;
        did.push(format!("{link} -> {target}"));
        Ok(())
    };
    link(
        format!("versions/{}", plan.version),
        plan.root("current"),
        undo,
    )?;
    for name in ["zstack-ctl", "zstack-cli"] {
        link(
            plan.root(&format!("current/bin/{name}")),
            format!("/usr/bin/{name}"),
            undo,
        )?;
    }
    let version = semver::Version::parse(&plan.version)
        .map_err(|e| ApiError::internal(format!("this node's version: {e}")))?;
    let props_file = "/etc/zstack/zstack.properties";
    if remote.read(props_file)?.is_none() {
        let ctx = json!({
            "management_node": false,
            "version": plan.version,
            "management_ip": plan.management_ip,
            "api_port": Service::Server.default_port(),
            "agent_port": plan.agent_port,
            "host_tls_port": plan.host_tls_port,
            "agent_secret": "",
            "admin_password": "",
            "release": {"major": version.major, "minor": version.minor, "patch": version.patch},
        });
        let text = render(plan, "config/zstack.properties.tera", &ctx)?;
        // Every value rendered in is checked by reading the result back as properties.
        Properties::parse(&text, "config/zstack.properties.tera")
            .map_err(|e| ApiError::internal(format!("the rendered configuration: {e}")))?;
        remote.write(props_file, "600", text.as_bytes())?;
        did.push(format!("{props_file} written"));
    }
    let unit_file = format!("/etc/systemd/system/{AGENT_UNIT}");
    let unit = render(
        plan,
        "systemd/zstack-kvmagent.service.tera",
        &json!({
            "version": plan.version,
            "install_root": plan.install_root,
            "api_port": Service::Server.default_port(),
            "agent_port": plan.agent_port,
            "storage_mounts": Vec::<String>::new(),
        }),
    )?;
    let unit_changed = remote.read(&unit_file)?.as_deref() != Some(unit.as_str());
    if unit_changed {
        remote.write(&unit_file, "644", unit.as_bytes())?;
        did.push(format!("{unit_file} written"));
    }
    let wants = format!("/etc/systemd/system/multi-user.target.wants/{AGENT_UNIT}");
    if state.systemd {
        if unit_changed {
            remote.ok("systemctl daemon-reload", &["systemctl", "daemon-reload"])?;
        }
        let enabled = remote.run(&["systemctl", "is-enabled", "--quiet", "zstack-kvmagent"])?;
        if !enabled.success() {
            remote.ok(
                "enabling the agent",
                &["systemctl", "enable", "--quiet", "zstack-kvmagent"],
            )?;
            did.push("zstack-kvmagent enabled".into());
        }
    } else if remote.readlink(&wants)?.is_none() {
        // Enabled as `systemctl enable` would, for when the host boots with systemd.
        remote.symlink(&unit_file, &wants)?;
        did.push("zstack-kvmagent enabled".into());
    }
    Ok(if did.is_empty() {
        (
            (),
            false,
            format!(
                "unchanged: release {} is current, its links, configuration and unit in place",
                plan.version
            ),
        )
    } else {
        ((), true, did.join("; "))
    })
}

fn render(plan: &Plan, name: &str, ctx: &serde_json::Value) -> Result<String, ApiError> {
    plan.templates
        .render(name, ctx)
        .map_err(|e| ApiError::internal(e.to_string()))
}

pub(super) fn certificate_step(
    node: &Node,
    remote: &Remote,
    plan: &Plan,
    ip: IpAddr,
) -> Result<((), bool, String), ApiError> {
    let trust = node.trust()?;
    let ip_text = ip.to_string();
    let out = remote.ok(
        "making the host's certificate request",
        &[
            &plan.ctl(),
            "host_certificate_request",
            "--ip",
            &ip_text,
            "--json",
        ],
    )?;
    let asked: serde_json::Value = serde_json::from_str(out.trim())
        .map_err(|e| failed(format!("host_certificate_request answered {out:?}: {e}")))?;
    let ca = trust.ca()?;
    if let Some(current) = asked["certificate"].as_str() {
        if let Some(serial) = still_valid(node, &ca, current, ip)? {
            return Ok((
                (),
                false,
                format!("unchanged: the host's certificate {serial} is valid and not revoked"),
            ));
        }
    }
    let request = asked["request"]
        .as_str()
        .ok_or_else(|| failed(format!("host_certificate_request answered {out:?}")))?;
    let certificate = ca
        .sign(request, &Subject::host(ip))
        .map_err(|e| failed(format!("cannot sign the host's request: {e}")))?;
    let body = json!({"certificate": certificate, "ca": trust.ca_pem()?}).to_string();
    let out = remote.ok_with_input(
        "installing the host's certificate",
        &[&plan.ctl(), "host_certificate_install", "--json"],
        body.as_bytes(),
    )?;
    let serial = serde_json::from_str::<serde_json::Value>(out.trim())
        .ok()
        .and_then(|v| v["serial"].as_str().map(str::to_string))
        .unwrap_or_default();
    Ok((
        (),
        true,
        format!("certificate {serial} signed and installed"),
    ))
}

/// The serial of `pem` if it is a host certificate of this cloud for `ip`, valid for a day more
/// at least, and not revoked.
fn still_valid(
    node: &Node,
    ca: &zstack_pki::CloudCa,
    pem: &str,
    ip: IpAddr,
) -> Result<Option<String>, ApiError> {
    let Ok(id) = zstack_pki::describe(pem) else {
        return Ok(None);
    };
    let fresh = id.not_after_unix > chrono::Utc::now().timestamp() + 86_400;
    let ours = id.role == Role::Host
        && id.organisation == ca.organisation()
        && id.addresses.contains(&ip)
        && fresh;
    if !ours {
        return Ok(None);
    }
    let revoked: bool = node.reader()?.query_row(
        "SELECT count(*) > 0 FROM revoked_certificate WHERE serial = ?1",
        [&id.serial],
        |r| r.get(0),
    )?;
    Ok((!revoked).then_some(id.serial))
}

#[allow(clippy::too_many_arguments)]
pub(super) fn start_step(
    node: &Node,
    remote: &Remote,
    plan: &Plan,
    state: &HostState,
    ip: IpAddr,
    upgrade: bool,
    certified: bool,
    undo: &mut Undo,
) -> Result<((), bool, String), ApiError> {
    if !upgrade && !certified {
        return Ok((
            (),
            false,
            format!(
                "unchanged: zstack-kvmagent {} is running with its certificate",
                plan.version
            ),
        ));
    }
    let ctl_restart = [
        "/usr/bin/zstack-ctl",
        "restart",
        "--service",
        "zstack-kvmagent",
    ];
    let argv: &[&str] = if state.systemd {
        &["systemctl", "restart", "zstack-kvmagent"]
    } else {
        &ctl_restart
    };
    undo.agent = Some(if state.agent_serving {
        AgentUndo::Restart
    } else {
        AgentUndo::Stop
    });
    remote.ok("starting the agent", argv)?;
    let agent = KvmAgentClient::new(&ip.to_string(), plan.agent_port, node.trust()?.agent_tls());
    let deadline = Instant::now() + Duration::from_secs(60);
    let facts = loop {
        match agent.connect() {
            Ok(f) => break f,
            Err(e) if Instant::now() >= deadline => {
                return Err(failed(format!(
                    "the agent on {ip} did not answer over TLS within 60 s of its start: {e}"
                )))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    };
    if facts.agent_version != plan.version {
        return Err(failed(format!(
            "the agent on {ip} answers as release {}, not {}",
            facts.agent_version, plan.version
        )));
    }
    let how = if state.systemd {
        "by systemd"
    } else {
        "by zstack-ctl (systemd is not PID 1 there)"
    };
    Ok(if upgrade {
        (
            (),
            true,
            format!(
                "zstack-kvmagent {} started {how}, answering over mutual TLS",
                plan.version
            ),
        )
    } else {
        // Only the certificate changed: the running agent is restarted to serve it, which
        // changes nothing else on the host.
        (
            (),
            false,
            format!(
                "zstack-kvmagent {} restarted {how} to serve its new certificate",
                plan.version
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checksum_list_names_every_file() {
        let m = Manifest::parse(
            "F 0000000000000000000000000000000000000000000000000000000000000001 755 3 bin/zstack\n\
             L zstack bin/zstack-ctl\n",
        )
        .unwrap();
        assert_eq!(
            checksum_list(&m),
            "0000000000000000000000000000000000000000000000000000000000000001  bin/zstack\n"
        );
    }
}

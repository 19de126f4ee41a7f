//! Joining a KVM host over SSH (AddKVMHost with `username=` and `password=`; ReconnectHost of a
//! host whose agent is of another release). The management node logs in, then, as named steps
//! each reported to the job:
//!
//! 1. `login`: the password once, or the node's own key with the host key pinned;
//! 2. `key`: the node's public key into root's `~/.ssh/authorized_keys` (0600, in 0700), so the
//!    password is never needed, nor stored, again;
//! 3. `check`: root, a supported OS, every tool the agent needs (each missing one named with its
//!    package), the agent's port free or held by zstack-kvmagent;
//! 4. `copy`: the node's own release tree, as a tar over the session's standard input, into
//!    `<install root>/versions/.<v>.partial`, checked against the release's MANIFEST there, then
//!    renamed into place (nothing is downloaded: air-gapped sites work);
//! 5. `install`: as `--host-only` does: the `current` link, `/usr/bin` links, zstack.properties
//!    of a compute host (if it has none), the agent's systemd unit, enabled;
//! 6. `certificate`: the host makes its key and request (`zstack-ctl host_certificate_request`),
//!    the cloud's CA signs it, the host installs it (`host_certificate_install`); a valid,
//!    unrevoked certificate of this cloud for this address is kept;
//! 7. `start`: the agent (re)started by systemd, or by zstack-ctl where systemd is not PID 1,
//!    and waited for over mutual TLS.
//!
//! A failure at any step puts back what this deployment made: the key line it added, and every
//! path that did not exist before it. Every remote command is an argument list
//! (zstack_ssh quotes each argument); the few `sh -c` scripts are fixed texts that take their
//! values as positional arguments.

mod remote;
mod steps;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use axum::http::StatusCode;
use serde_json::json;
use zstack_common::release::{MANIFEST_FILE, RELEASE_FILE};
use zstack_common::service::keys;
use zstack_common::templates::Templates;
use zstack_common::{Layout, Properties};
use zstack_ssh::{Credentials, HostKeyPolicy, NodeKey, Session, SshError};

use crate::error::ApiError;
use crate::job::StepState;
use crate::Node;
use remote::{Remote, Undo};
use steps::{certificate_step, check_step, copy_step, install_step, key_step, start_step};

/// How to log in to a host.
pub enum Access<'a> {
    /// The operator's password, used for this login only.
    Password(&'a str),
    /// The node's own key, the host's key pinned to the fingerprint recorded at the join.
    NodeKey { host_key: &'a str },
}

pub struct SshLogin<'a> {
    pub ip: &'a str,
    pub port: u16,
    pub user: &'a str,
    /// The port the agent is to listen on there.
    pub agent_port: u16,
    pub access: Access<'a>,
}

/// What a deployment did.
pub struct Deployed {
    /// The host key seen at the login (`SHA256:...`).
    pub host_key: String,
    pub changes: Vec<String>,
    undo: Undo,
    remote: Remote,
}

impl Deployed {
    pub fn summary(&self) -> serde_json::Value {
        json!({"changed": !self.changes.is_empty(), "changes": self.changes})
    }

    /// Puts the host back as it was before the deployment (the join failed after it).
    pub fn roll_back(self) {
        self.undo.run(&self.remote);
    }
}

/// Reports a step: its name, where it is, whether it changed the host, a line about it.
pub type StepReport<'a> = &'a dyn Fn(&str, StepState, Option<bool>, &str);

/// The OS releases a host may run (`ID VERSION_ID` of /etc/os-release).
pub const SUPPORTED_OS: &[(&str, &str, &str)] = &[("debian", "12", "Debian 12 (bookworm)")];

/// What the agent runs, and the Debian package each comes in.
pub const REQUIRED_TOOLS: &[(&str, &str)] = &[
    ("libvirtd", "libvirt-daemon-system"),
    ("virsh", "libvirt-clients"),
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("qemu-img", "qemu-utils"),
    ("dnsmasq", "dnsmasq-base"),
    ("nft", "nftables"),
    ("arping", "iputils-arping"),
    ("ip", "iproute2"),
];

pub(super) const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
pub(super) const AGENT_UNIT: &str = "zstack-kvmagent.service";

/// A POSIX portable user name: `[a-z_][a-z0-9_-]*`, at most 32 characters.
pub fn valid_user_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && name.len() <= 32
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

pub(super) fn api(code: &'static str, status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError::new(status, code, message)
}

pub(super) fn failed(message: impl Into<String>) -> ApiError {
    api("HOST_DEPLOY_FAILED", StatusCode::BAD_GATEWAY, message)
}

pub(super) fn ssh_error(e: SshError) -> ApiError {
    let code = match &e {
        SshError::Unreachable { .. } | SshError::Timeout { .. } => "HOST_UNREACHABLE",
        SshError::AuthFailed { .. } => "SSH_LOGIN_FAILED",
        SshError::HostKeyChanged { .. } => "SSH_HOST_KEY_CHANGED",
        SshError::Session { .. } | SshError::Runtime(_) | SshError::Key { .. } => {
            "SSH_SESSION_FAILED"
        }
    };
    api(code, StatusCode::BAD_GATEWAY, e.to_string())
}

/// Where things go on the host, and what the node ships.
pub(super) struct Plan {
    pub(super) version: String,
    pub(super) install_root: String,
    /// This node's release tree (what is copied).
    pub(super) tree: PathBuf,
    pub(super) templates: Templates,
    pub(super) management_ip: String,
    pub(super) host_tls_port: u16,
    pub(super) agent_port: u16,
}

impl Plan {
    fn of(node: &Node, agent_port: u16) -> Result<Plan, ApiError> {
        let layout = Layout::from_env();
        let tree = release_tree()?;
        let templates = Templates::load(&tree.join("templates"))
            .map_err(|e| ApiError::internal(format!("this node's templates: {e}")))?;
        let props = Properties::load(&layout.host(layout.properties_file()))
            .map_err(|e| ApiError::internal(format!("this node's configuration: {e}")))?;
        let management_ip = props
            .get(keys::MANAGEMENT_IP)
            .filter(|s| !s.is_empty())
            .unwrap_or("127.0.0.1")
            .to_string();
        let host_tls_port = zstack_common::service::host_tls_port(&props)
            .map_err(|e| ApiError::internal(format!("this node's configuration: {e}")))?;
        Ok(Plan {
            version: node.release.to_string(),
            install_root: layout.install_root().display().to_string(),
            tree,
            templates,
            management_ip,
            host_tls_port,
            agent_port,
        })
    }

    pub(super) fn root(&self, rel: &str) -> String {
        format!("{}/{rel}", self.install_root)
    }

    pub(super) fn version_dir(&self) -> String {
        self.root(&format!("versions/{}", self.version))
    }

    /// Where the release is unpacked before it is verified and renamed.
    pub(super) fn partial_dir(&self) -> String {
        self.root(&format!("versions/.{}.partial", self.version))
    }

    pub(super) fn ctl(&self) -> String {
        self.root("current/bin/zstack-ctl")
    }

    /// Every path an install makes, outermost first.
    pub(super) fn install_paths(&self) -> Vec<String> {
        vec![
            self.install_root.clone(),
            self.root("versions"),
            self.version_dir(),
            self.root("current"),
            "/usr/bin/zstack-ctl".into(),
            "/usr/bin/zstack-cli".into(),
            "/etc/zstack".into(),
            "/etc/zstack/zstack.properties".into(),
            "/etc/zstack/pki".into(),
            "/etc/systemd/system/zstack-kvmagent.service".into(),
            "/etc/systemd/system/multi-user.target.wants/zstack-kvmagent.service".into(),
            "/var/lib/zstack".into(),
            "/var/log/zstack".into(),
            "/run/zstack".into(),
        ]
    }
}

/// The release tree of the running program (`<tree>/bin/zstack`).
fn release_tree() -> Result<PathBuf, ApiError> {
    let exe = std::env::current_exe()
        .and_then(|e| e.canonicalize())
        .map_err(|e| ApiError::internal(format!("cannot locate this program: {e}")))?;
    exe.parent()
        .and_then(Path::parent)
        .filter(|t| t.join(RELEASE_FILE).is_file() && t.join(MANIFEST_FILE).is_file())
        .map(Path::to_path_buf)
        .ok_or_else(|| {
            ApiError::wrong_state(format!(
                "{} is not in a release tree (no release.json and MANIFEST beside bin/), so \
                 there is no agent to copy to hosts",
                exe.display()
            ))
        })
}

/// Runs one step: reports it running, then how it ended.
fn step<T>(
    report: StepReport<'_>,
    name: &str,
    running: &str,
    f: impl FnOnce() -> Result<(T, bool, String), ApiError>,
) -> Result<(T, bool), ApiError> {
    report(name, StepState::Running, None, running);
    match f() {
        Ok((v, changed, message)) => {
            report(name, StepState::Succeeded, Some(changed), &message);
            Ok((v, changed))
        }
        Err(e) => {
            report(name, StepState::Failed, None, &e.message);
            Err(e)
        }
    }
}

/// Deploys (or checks, or upgrades) the agent on a host; see the module's documentation. On
/// failure the host is as it was before, and the error says which step failed and why.
pub fn deploy(
    node: &Node,
    login: &SshLogin<'_>,
    report: StepReport<'_>,
) -> Result<Deployed, ApiError> {
    let ip: IpAddr = login.ip.parse().map_err(|_| {
        ApiError::invalid(
            "managementIp",
            format!(
                "{:?} is not an IP address; a host added over SSH is named by its address",
                login.ip
            ),
        )
    })?;
    let trust = node.trust()?;
    let plan = Plan::of(node, login.agent_port)?;
    let node_key = NodeKey::load_or_create(trust.ssh_dir()).map_err(ssh_error)?;

    let (remote, _) = step(
        report,
        "login",
        &format!("logging in to {}@{}:{}", login.user, login.ip, login.port),
        || {
            let (credentials, policy) = match login.access {
                Access::Password(p) => (Credentials::Password(p), HostKeyPolicy::FirstUse),
                Access::NodeKey { host_key } => (
                    Credentials::Key(&node_key),
                    HostKeyPolicy::Pinned(host_key.to_string()),
                ),
            };
            let session = Session::connect(login.ip, login.port, login.user, credentials, policy)
                .map_err(ssh_error)?;
            let message = format!(
                "logged in as {}, host key {}",
                login.user,
                session.host_key_fingerprint()
            );
            Ok((
                Remote {
                    session,
                    ip: login.ip.to_string(),
                },
                false,
                message,
            ))
        },
    )?;
    let host_key = remote.session.host_key_fingerprint().to_string();
    let mut undo = Undo::default();
    let mut changes = Vec::new();
    let outcome = run_steps(
        node,
        &plan,
        &remote,
        &node_key,
        ip,
        &mut undo,
        &mut changes,
        report,
    );
    match outcome {
        Ok(()) => Ok(Deployed {
            host_key,
            changes,
            undo,
            remote,
        }),
        Err(e) => {
            undo.run(&remote);
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run_steps(
    node: &Node,
    plan: &Plan,
    remote: &Remote,
    node_key: &NodeKey,
    ip: IpAddr,
    undo: &mut Undo,
    changes: &mut Vec<String>,
    report: StepReport<'_>,
) -> Result<(), ApiError> {
    let mut changed = |name: &str, c: bool| {
        if c {
            changes.push(name.to_string());
        }
    };
    let (_, c) = step(
        report,
        "key",
        "installing the management node's SSH key",
        || key_step(remote, node_key, undo),
    )?;
    changed("key", c);
    let (state, _) = step(report, "check", "checking the host", || {
        check_step(remote, plan).map(|s| {
            let m = format!(
                "root on a supported OS, every required tool present, port {} free{}",
                plan.agent_port,
                if s.agent_serving {
                    " or held by zstack-kvmagent"
                } else {
                    ""
                }
            );
            (s, false, m)
        })
    })?;
    undo.systemd = state.systemd;
    // From here on, every path of an install that did not exist before is this deployment's.
    undo.made = plan
        .install_paths()
        .into_iter()
        .filter(|p| !state.existing.contains(p))
        .collect();
    undo.made.push(plan.partial_dir());
    let (_, copied) = step(
        report,
        "copy",
        &format!("copying release {} to {}", plan.version, plan.version_dir()),
        || copy_step(remote, plan),
    )?;
    changed("copy", copied);
    let version_was_current = remote.readlink(&plan.root("current"))?.as_deref()
        == Some(format!("versions/{}", plan.version).as_str());
    let (_, installed) = step(report, "install", "installing the agent", || {
        install_step(remote, plan, &state, undo)
    })?;
    changed("install", installed);
    let (_, certified) = step(
        report,
        "certificate",
        "giving the host its certificate",
        || certificate_step(node, remote, plan, ip),
    )?;
    changed("certificate", certified);
    let upgrade = !(state.agent_serving && version_was_current) || copied || installed;
    let (_, started) = step(report, "start", "starting the agent", || {
        start_step(node, remote, plan, &state, ip, upgrade, certified, undo)
    })?;
    changed("start", started);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_are_posix_portable() {
        for ok in ["root", "_zs", "ops-admin", "u1"] {
            assert!(valid_user_name(ok), "{ok}");
        }
        for bad in [
            "",
            "Root",
            "1abc",
            "a b",
            "a;b",
            "-x",
            &"a".repeat(33),
            "$(id)",
        ] {
            assert!(!valid_user_name(bad), "{bad}");
        }
    }
}

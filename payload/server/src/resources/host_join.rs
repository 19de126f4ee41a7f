//! AddKVMHost and ReconnectHost over SSH: the jobs around [`super::host_deploy::deploy`]. A
//! host added with a user name and password is deployed, connected, and its login recorded (the
//! user, port and host key; never the password); a host whose agent is of another release is
//! upgraded by the same deployment on ReconnectHost, with the login recorded at the join.

use rusqlite::params;
use serde_json::{json, Value};

use super::host::{connect, forget_new_host, mark_disconnected, HostRow, AGENT_VERSION_MISMATCH};
use super::host_deploy::{Access, Deployed, SshLogin};
use crate::api::Call;
use crate::error::ApiError;
use crate::job::{Job, StepState, Steps};
use crate::Node;

/// The SSH login AddKVMHost was given: user name, password and port, all or none.
pub struct GivenLogin {
    user: String,
    password: String,
    port: u16,
}

pub fn given_login(c: &Call) -> Result<Option<GivenLogin>, ApiError> {
    let port = c.int("sshPort", 1, 65535)?;
    match (c.str("username"), c.str("password")) {
        (None, None) => {
            if port.is_some() {
                return Err(ApiError::invalid(
                    "sshPort",
                    "sshPort is for a host added over SSH: give username and password too",
                ));
            }
            Ok(None)
        }
        (Some(_), None) => Err(ApiError::invalid(
            "password",
            "username needs password: the management node logs in with it once, then \
             installs its own key",
        )),
        (None, Some(_)) => Err(ApiError::invalid(
            "username",
            "password needs username (root)",
        )),
        (Some(user), Some(password)) => {
            if !super::host_deploy::valid_user_name(user) {
                return Err(ApiError::invalid(
                    "username",
                    format!(
                        "{user:?} is not a user name (lower-case letters, digits, _ and -, \
                         starting with a letter or _, at most 32): give root"
                    ),
                ));
            }
            if password.is_empty() {
                return Err(ApiError::invalid("password", "the password is empty"));
            }
            let ip = c.required("managementIp")?;
            if ip.parse::<std::net::IpAddr>().is_err() {
                return Err(ApiError::invalid(
                    "managementIp",
                    format!("{ip:?} is not an IP address; a host added over SSH is named by its address"),
                ));
            }
            Ok(Some(GivenLogin {
                user: user.to_string(),
                password: password.to_string(),
                port: port.map_or(22, |p| u16::try_from(p).unwrap_or(22)),
            }))
        }
    }
}

/// The job of adding a host over SSH: deploy, connect, record how to log in again; or put the
/// host back as it was, remove its row and say why.
pub fn deploy_new_host(uuid: String, login: GivenLogin) -> Job {
    Job::with_steps(Some(uuid.clone()), move |node: &Node, steps: &Steps| {
        let host = HostRow::load(&*node.db()?, &uuid)?;
        let report = |name: &str, state: StepState, changed: Option<bool>, message: &str| {
            steps.record(node, name, state, changed, message)
        };
        let deployed = super::host_deploy::deploy(
            node,
            &SshLogin {
                ip: &host.management_ip,
                port: login.port,
                user: &login.user,
                agent_port: agent_port_of(node, &host),
                access: Access::Password(&login.password),
            },
            &report,
        )
        .map_err(|e| forget_new_host(node, &uuid, e))?;
        connect_deployed(node, &uuid, deployed, &login.user, login.port, &report)
            .map_err(|e| forget_new_host(node, &uuid, e))
    })
}

fn agent_port_of(node: &Node, host: &HostRow) -> u16 {
    host.agent_port
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(node.agent_port)
}

/// Connects a host just deployed and records its SSH login (never a password); on failure
/// puts the host back as it was before the deployment.
fn connect_deployed(
    node: &Node,
    uuid: &str,
    deployed: Deployed,
    user: &str,
    port: u16,
    report: super::host_deploy::StepReport<'_>,
) -> Result<Value, ApiError> {
    report(
        "connect",
        StepState::Running,
        None,
        "connecting to the agent",
    );
    let connected = connect(node, uuid).and_then(|v| {
        node.db()?.execute(
            "UPDATE host SET ssh_user = ?2, ssh_port = ?3, ssh_host_key = ?4 WHERE uuid = ?1",
            params![uuid, user, port, deployed.host_key],
        )?;
        Ok(v)
    });
    match connected {
        Ok(mut v) => {
            report(
                "connect",
                StepState::Succeeded,
                Some(false),
                "connected: capacity and VMs read",
            );
            v["deployment"] = deployed.summary();
            Ok(v)
        }
        Err(e) => {
            report("connect", StepState::Failed, None, &e.message);
            deployed.roll_back();
            Err(e)
        }
    }
}

/// Connects a host again; one added over SSH whose agent is of another release is upgraded by
/// the same deployment as the join (copy, install, start), then connected.
pub fn reconnect(node: &Node, uuid: &str, steps: &Steps) -> Result<Value, ApiError> {
    let first = connect(node, uuid);
    let e = match first {
        // The agent is of this release: nothing is deployed, nothing changed.
        Ok(mut v) => {
            v["deployment"] = json!({"changed": false, "changes": []});
            return Ok(v);
        }
        Err(e) if e.code != AGENT_VERSION_MISMATCH => return Err(e),
        Err(e) => e,
    };
    let (host, login) = {
        let conn = node.db()?;
        let host = HostRow::load(&conn, uuid)?;
        let login: (Option<String>, Option<i64>, Option<String>) = conn.query_row(
            "SELECT ssh_user, ssh_port, ssh_host_key FROM host WHERE uuid = ?1",
            [uuid],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        (host, login)
    };
    let (Some(user), Some(port), Some(host_key)) = login else {
        return Err(e);
    };
    let port = u16::try_from(port).unwrap_or(22);
    let report = |name: &str, state: StepState, changed: Option<bool>, message: &str| {
        steps.record(node, name, state, changed, message)
    };
    let deployed = super::host_deploy::deploy(
        node,
        &SshLogin {
            ip: &host.management_ip,
            port,
            user: &user,
            agent_port: agent_port_of(node, &host),
            access: Access::NodeKey {
                host_key: &host_key,
            },
        },
        &report,
    );
    match deployed {
        Ok(d) => connect_deployed(node, uuid, d, &user, port, &report),
        Err(e) => {
            let reason = format!("the agent's upgrade failed: {}", e.message);
            mark_disconnected(&*node.db()?, uuid, &reason)?;
            Err(ApiError {
                message: reason,
                ..e
            })
        }
    }
}

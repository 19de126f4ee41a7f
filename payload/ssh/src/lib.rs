//! The SSH client the management node deploys hosts with (AddKVMHost): it logs in once with the
//! operator's password, installs the management node's own key, and uses the key from then on,
//! so no password is ever stored.
//!
//! - [`Session::connect`] checks the host's key by [`HostKeyPolicy`]: trusted on first use and
//!   recorded (the fingerprint goes into the host's row), or pinned to a recorded fingerprint, so
//!   a host whose key changed is refused instead of receiving the cloud's key.
//! - Commands are argument lists ([`Session::run`]): each argument is quoted for the remote
//!   shell by [`command_line`], never assembled from text.
//! - [`NodeKey`] is the management node's ed25519 key under `/etc/zstack/ssh/`.
//!
//! russh is asynchronous; this crate is blocking (its own current-thread runtime per session),
//! because the deployment runs as a job on a thread of its own.

mod node_key;

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, Handle};
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::ChannelMsg;

pub use node_key::NodeKey;

/// How long a connection (TCP and the SSH handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("cannot reach {addr} over SSH: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error(
        "{addr} did not complete the SSH handshake within {0:?}",
        CONNECT_TIMEOUT
    )]
    Timeout { addr: String },
    #[error(
        "the SSH host key of {addr} changed: it was {expected}, it is now {found}. If the host was \
         reinstalled, delete the host and add it again"
    )]
    HostKeyChanged {
        addr: String,
        expected: String,
        found: String,
    },
    #[error("{addr} refused the login of {user}: wrong user name, password or key")]
    AuthFailed { addr: String, user: String },
    #[error("the SSH session with {addr} failed: {reason}")]
    Session { addr: String, reason: String },
    #[error("cannot start the SSH client: {0}")]
    Runtime(std::io::Error),
    #[error("cannot read or write the management node's SSH key {path}: {reason}")]
    Key { path: String, reason: String },
}

/// How to log in.
pub enum Credentials<'a> {
    Password(&'a str),
    Key(&'a NodeKey),
}

/// Which host keys to accept.
#[derive(Debug, Clone)]
pub enum HostKeyPolicy {
    /// Any key; [`Session::host_key_fingerprint`] tells which, to be recorded.
    FirstUse,
    /// Only the key with this SHA-256 fingerprint (`SHA256:...`, as ssh-keygen prints it).
    Pinned(String),
}

/// What a command did.
#[derive(Debug, Clone)]
pub struct Output {
    pub status: u32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status == 0
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

struct HostKeyCheck {
    policy: HostKeyPolicy,
    seen: Arc<Mutex<Option<String>>>,
}

impl client::Handler for HostKeyCheck {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let fingerprint = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                key.fingerprint(HashAlg::Sha256).to_string()
            }
            PublicKeyOrCertificate::Certificate(cert) => {
                russh::keys::PublicKey::new(cert.public_key().clone(), "")
                    .fingerprint(HashAlg::Sha256)
                    .to_string()
            }
        };
        let accepted = match &self.policy {
            HostKeyPolicy::FirstUse => true,
            HostKeyPolicy::Pinned(expected) => *expected == fingerprint,
        };
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(fingerprint);
        }
        Ok(accepted)
    }
}

/// A logged-in SSH session.
pub struct Session {
    addr: String,
    runtime: tokio::runtime::Runtime,
    handle: Handle<HostKeyCheck>,
    host_key: String,
}

impl Session {
    pub fn connect(
        host: &str,
        port: u16,
        user: &str,
        credentials: Credentials<'_>,
        policy: HostKeyPolicy,
    ) -> Result<Session, SshError> {
        let addr = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(SshError::Runtime)?;
        let seen = Arc::new(Mutex::new(None));
        let check = HostKeyCheck {
            policy: policy.clone(),
            seen: seen.clone(),
        };
        let config = Arc::new(client::Config {
            inactivity_timeout: Some(Duration::from_secs(600)),
            ..Default::default()
        });
        let connecting = runtime.block_on(async {
            tokio::time::timeout(
                CONNECT_TIMEOUT,
                client::connect(config, addr.as_str(), check),
            )
            .await
        });
        let seen_key = || seen.lock().ok().and_then(|s| s.clone()).unwrap_or_default();
        let mut handle = match connecting {
            Err(_) => return Err(SshError::Timeout { addr }),
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                return Err(match (&policy, e) {
                    (HostKeyPolicy::Pinned(expected), russh::Error::UnknownKey) => {
                        SshError::HostKeyChanged {
                            addr,
                            expected: expected.clone(),
                            found: seen_key(),
                        }
                    }
                    (_, russh::Error::IO(io)) => SshError::Unreachable {
                        addr,
                        reason: io.to_string(),
                    },
                    (_, other) => SshError::Session {
                        addr,
                        reason: other.to_string(),
                    },
                })
            }
        };
        let session_err = |reason: String| SshError::Session {
            addr: addr.clone(),
            reason,
        };
        let auth = runtime.block_on(async {
            match credentials {
                Credentials::Password(p) => handle.authenticate_password(user, p).await,
                Credentials::Key(key) => {
                    let key = PrivateKeyWithHashAlg::new(Arc::new(key.private().clone()), None);
                    handle.authenticate_publickey(user, key).await
                }
            }
        });
        match auth {
            Ok(r) if r.success() => {}
            Ok(_) => {
                return Err(SshError::AuthFailed {
                    addr,
                    user: user.to_string(),
                })
            }
            Err(e) => return Err(session_err(e.to_string())),
        }
        Ok(Session {
            host_key: seen_key(),
            addr,
            runtime,
            handle,
        })
    }

    /// The SHA-256 fingerprint of the host's key, as the handshake saw it.
    pub fn host_key_fingerprint(&self) -> &str {
        &self.host_key
    }

    /// Runs `argv` on the host (through the login shell, each argument quoted) and collects what
    /// it printed and its exit status.
    pub fn run(&self, argv: &[&str]) -> Result<Output, SshError> {
        self.run_with_input(argv, std::io::empty())
    }

    /// [`Session::run`], streaming `input` to the command's standard input.
    pub fn run_with_input(&self, argv: &[&str], mut input: impl Read) -> Result<Output, SshError> {
        let line = command_line(argv);
        let err = |reason: String| SshError::Session {
            addr: self.addr.clone(),
            reason,
        };
        self.runtime.block_on(async {
            let mut channel = self
                .handle
                .channel_open_session()
                .await
                .map_err(|e| err(e.to_string()))?;
            channel
                .exec(true, line.as_bytes())
                .await
                .map_err(|e| err(e.to_string()))?;
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = input
                    .read(&mut buf)
                    .map_err(|e| err(format!("reading the input: {e}")))?;
                if n == 0 {
                    break;
                }
                channel
                    .data(&buf[..n])
                    .await
                    .map_err(|e| err(e.to_string()))?;
            }
            channel.eof().await.map_err(|e| err(e.to_string()))?;
            let mut out = Output {
                status: u32::MAX,
                stdout: Vec::new(),
                stderr: Vec::new(),
            };
            let mut got_status = false;
            while let Some(msg) = channel.wait().await {
                match msg {
                    ChannelMsg::Data { data } => out.stdout.extend_from_slice(&data),
                    ChannelMsg::ExtendedData { data, ext: 1 } => {
                        out.stderr.extend_from_slice(&data)
                    }
                    ChannelMsg::ExitStatus { exit_status } => {
                        out.status = exit_status;
                        got_status = true;
                    }
                    _ => {}
                }
            }
            if !got_status {
                return Err(err(format!(
                    "the command ended without an exit status (killed by a signal?): {line}"
                )));
            }
            Ok(out)
        })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.runtime.block_on(self.handle.disconnect(
            russh::Disconnect::ByApplication,
            "",
            "en",
        ));
    }
}

/// One argument quoted for a POSIX shell: `'...'` with each `'` as `'\''`.
pub fn quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:@%+,".contains(&b))
    {
        return arg.to_string();
    }
    format!("'{}'", arg.replace('\'', r"'\''"))
}

/// The command line a remote shell runs for `argv`.
pub fn command_line(argv: &[&str]) -> String {
    argv.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ")
}

//! The client against a real SSH server in this process (russh's server), whose sessions run
//! each command line with `sh -c` on this machine: logins, host-key pinning, quoting, standard
//! input and exit status as a host would show them.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{HashAlg, PrivateKey, PublicKey};
use russh::server::{self, Auth, Msg, Session as ServerSession};
use russh::{Channel, ChannelId};
use zstack_ssh::{Credentials, HostKeyPolicy, NodeKey, Session, SshError};

const PASSWORD: &str = "it's right";

/// The command line and the standard input received so far, per channel.
type PendingCommands = Arc<Mutex<HashMap<ChannelId, (String, Vec<u8>)>>>;

#[derive(Clone)]
struct Shell {
    authorized: Arc<Mutex<Vec<PublicKey>>>,
    pending: PendingCommands,
}

impl server::Handler for Shell {
    type Error = russh::Error;

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        Ok(if user == "root" && password == PASSWORD {
            Auth::Accept
        } else {
            Auth::reject()
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let known = self
            .authorized
            .lock()
            .unwrap()
            .iter()
            .any(|k| k.key_data() == key.public_key.key_data());
        Ok(if user == "root" && known {
            Auth::Accept
        } else {
            Auth::reject()
        })
    }

    async fn channel_open_session(
        &mut self,
        _channel: Channel<Msg>,
        reply: server::ChannelOpenHandle,
        _session: &mut ServerSession,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut ServerSession,
    ) -> Result<(), Self::Error> {
        let line = String::from_utf8_lossy(data).into_owned();
        self.pending
            .lock()
            .unwrap()
            .insert(channel, (line, Vec::new()));
        session.channel_success(channel)?;
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        _session: &mut ServerSession,
    ) -> Result<(), Self::Error> {
        if let Some((_, input)) = self.pending.lock().unwrap().get_mut(&channel) {
            input.extend_from_slice(data);
        }
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        session: &mut ServerSession,
    ) -> Result<(), Self::Error> {
        let Some((line, input)) = self.pending.lock().unwrap().remove(&channel) else {
            return Ok(());
        };
        let mut child = std::process::Command::new("sh")
            .args(["-c", &line])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            let _ = stdin.write_all(&input);
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        session.data(channel, out.stdout)?;
        session.extended_data(channel, 1, out.stderr)?;
        session.exit_status_request(channel, out.status.code().unwrap_or(255) as u32)?;
        session.eof(channel)?;
        session.close(channel)?;
        Ok(())
    }
}

struct TestServer {
    port: u16,
    authorized: Arc<Mutex<Vec<PublicKey>>>,
    host_key_fingerprint: String,
}

fn start_server() -> TestServer {
    let host_key = PrivateKey::from(Ed25519Keypair::from_seed(&[7u8; 32]));
    let host_key_fingerprint = host_key
        .public_key()
        .fingerprint(HashAlg::Sha256)
        .to_string();
    let config = Arc::new(server::Config {
        keys: vec![host_key],
        auth_rejection_time: std::time::Duration::from_millis(10),
        auth_rejection_time_initial: Some(std::time::Duration::from_millis(0)),
        ..Default::default()
    });
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let authorized = Arc::new(Mutex::new(Vec::new()));
    let shell = Shell {
        authorized: authorized.clone(),
        pending: Arc::new(Mutex::new(HashMap::new())),
    };
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let (config, shell) = (config.clone(), shell.clone());
                tokio::spawn(async move {
                    if let Ok(running) = server::run_stream(config, tcp, shell).await {
                        let _ = running.await;
                    }
                });
            }
        });
    });
    TestServer {
        port,
        authorized,
        host_key_fingerprint,
    }
}

#[test]
fn password_login_then_the_node_key_and_pinned_host_key() {
    let server = start_server();
    let session = Session::connect(
        "127.0.0.1",
        server.port,
        "root",
        Credentials::Password(PASSWORD),
        HostKeyPolicy::FirstUse,
    )
    .unwrap();
    assert_eq!(session.host_key_fingerprint(), server.host_key_fingerprint);

    // Arguments reach the command as they were, whatever they hold.
    let out = session
        .run(&["printf", "%s|", "a b", "it's", "$HOME", "`x`", "semi;colon"])
        .unwrap();
    assert!(out.success());
    assert_eq!(out.stdout_text(), "a b|it's|$HOME|`x`|semi;colon|");

    // Standard input is streamed; exit status and stderr come back.
    let big = vec![b'z'; 3 * 1024 * 1024];
    let out = session.run_with_input(&["wc", "-c"], &big[..]).unwrap();
    assert_eq!(out.stdout_text().trim(), big.len().to_string());
    let out = session.run(&["sh", "-c", "echo oops >&2; exit 3"]).unwrap();
    assert_eq!(out.status, 3);
    assert_eq!(out.stderr_text(), "oops\n");
    drop(session);

    // The node key, once the host has it, logs in with the host key pinned.
    let dir = tempfile::tempdir().unwrap();
    let key = NodeKey::load_or_create(dir.path()).unwrap();
    let line = key.public_line().unwrap();
    server
        .authorized
        .lock()
        .unwrap()
        .push(PublicKey::from_openssh(&line).unwrap());
    let again = NodeKey::load_or_create(dir.path()).unwrap();
    assert_eq!(again.public_line().unwrap(), line, "the key is made once");
    let session = Session::connect(
        "127.0.0.1",
        server.port,
        "root",
        Credentials::Key(&again),
        HostKeyPolicy::Pinned(server.host_key_fingerprint.clone()),
    )
    .unwrap();
    assert!(session.run(&["true"]).unwrap().success());
}

#[test]
fn refusals_say_what_was_wrong() {
    let server = start_server();
    let wrong = Session::connect(
        "127.0.0.1",
        server.port,
        "root",
        Credentials::Password("wrong"),
        HostKeyPolicy::FirstUse,
    );
    assert!(
        matches!(wrong, Err(SshError::AuthFailed { .. })),
        "{:?}",
        wrong.err()
    );

    let changed = Session::connect(
        "127.0.0.1",
        server.port,
        "root",
        Credentials::Password(PASSWORD),
        HostKeyPolicy::Pinned("SHA256:somethingelse".into()),
    );
    match changed {
        Err(SshError::HostKeyChanged { found, .. }) => {
            assert_eq!(found, server.host_key_fingerprint)
        }
        other => panic!("expected HostKeyChanged, got {:?}", other.err()),
    }

    // Nothing listens on port 1 of loopback.
    let unreachable = Session::connect(
        "127.0.0.1",
        1,
        "root",
        Credentials::Password(PASSWORD),
        HostKeyPolicy::FirstUse,
    );
    assert!(
        matches!(unreachable, Err(SshError::Unreachable { .. })),
        "{:?}",
        unreachable.err()
    );
}

#[test]
fn quoting() {
    assert_eq!(zstack_ssh::quote("plain-1.2"), "plain-1.2");
    assert_eq!(zstack_ssh::quote(""), "''");
    assert_eq!(zstack_ssh::quote("a'b"), r"'a'\''b'");
    assert_eq!(zstack_ssh::command_line(&["echo", "x y"]), "echo 'x y'");
}

//! The management node's SSH client against a real host: a Debian container with OpenSSH's
//! sshd, on a test bridge of this machine (10.251.0.0/24, nothing routed out). A password login
//! records the host key; the node's own key is installed and then logs in with the host key
//! pinned; a wrong password and a changed host key are refused; commands and their input arrive
//! intact.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

use std::process::Command;
use std::time::{Duration, Instant};

use sha2::Digest;
use zstack_ssh::{Credentials, HostKeyPolicy, NodeKey, Session, SshError};
use zstack_tests::nspawn::Container;
use zstack_tests::*;

const BRIDGE: &str = "zst-ssh0";
const HOST_IP: &str = "10.251.0.11";
const ROOT_PASSWORD: &str = "zstack-test-root";

/// The test bridge; removed when dropped, also when the test fails.
struct Bridge;

impl Bridge {
    fn create() -> Bridge {
        let _ = run(Command::new("ip").args(["link", "del", BRIDGE]));
        ok(Command::new("ip").args(["link", "add", BRIDGE, "type", "bridge"]));
        ok(Command::new("ip").args(["addr", "add", "10.251.0.1/24", "dev", BRIDGE]));
        ok(Command::new("ip").args(["link", "set", BRIDGE, "up"]));
        Bridge
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = run(Command::new("ip").args(["link", "del", BRIDGE]));
    }
}

fn connect(credentials: Credentials<'_>, policy: HostKeyPolicy) -> Result<Session, SshError> {
    Session::connect(HOST_IP, 22, "root", credentials, policy)
}

#[test]
#[ignore = "needs root, debootstrap and systemd-nspawn: run by make test"]
fn a_host_is_logged_in_with_a_password_once_then_with_the_node_key() {
    let (dir, root) = zstack_tests::nspawn::debian_rootfs("zstack-ssh-host-");
    std::fs::write(
        root.join("etc/ssh/sshd_config.d/zstack-test.conf"),
        "PermitRootLogin yes\nPasswordAuthentication yes\n",
    )
    .unwrap();
    let bridge = Bridge::create();
    let host = Container::boot_on_bridge(
        &root,
        &dir.path().join("nspawn.log"),
        &format!("zst-ssh-{}", std::process::id()),
        BRIDGE,
    );
    let setup = host.sh(&format!(
        "echo root:{ROOT_PASSWORD} | chpasswd && ip addr add {HOST_IP}/24 dev host0 && \
         ip link set host0 up && systemctl start ssh"
    ));
    assert!(
        setup.status.success(),
        "{}",
        String::from_utf8_lossy(&setup.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect((HOST_IP, 22)).is_err() {
        assert!(
            Instant::now() < deadline,
            "sshd in the container does not answer"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let wrong = connect(Credentials::Password("not-it"), HostKeyPolicy::FirstUse);
    assert!(
        matches!(wrong, Err(SshError::AuthFailed { .. })),
        "{:?}",
        wrong.err()
    );

    let session = connect(
        Credentials::Password(ROOT_PASSWORD),
        HostKeyPolicy::FirstUse,
    )
    .unwrap();
    let host_key = session.host_key_fingerprint().to_string();
    let sshd_key = host.sh("ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub -E sha256");
    let sshd_key = String::from_utf8_lossy(&sshd_key.stdout).to_string();
    assert!(sshd_key.contains(&host_key), "{host_key} not in {sshd_key}");

    // The node's key goes into root's authorized_keys through the session's standard input.
    let key_dir = dir.path().join("node-ssh");
    let key = NodeKey::load_or_create(&key_dir).unwrap();
    let line = format!("{}\n", key.public_line().unwrap());
    let out = session
        .run_with_input(
            &[
                "sh",
                "-c",
                "umask 077 && mkdir -p /root/.ssh && cat >> /root/.ssh/authorized_keys",
            ],
            line.as_bytes(),
        )
        .unwrap();
    assert!(out.success(), "{}", out.stderr_text());
    drop(session);

    let session = connect(
        Credentials::Key(&key),
        HostKeyPolicy::Pinned(host_key.clone()),
    )
    .unwrap();
    let os = session.run(&["cat", "/etc/os-release"]).unwrap();
    assert!(
        os.stdout_text().contains("bookworm"),
        "{}",
        os.stdout_text()
    );
    // Arguments arrive as they were; a large input arrives intact.
    let out = session
        .run(&["printf", "%s|", "a b", "it's", "$(id)"])
        .unwrap();
    assert_eq!(out.stdout_text(), "a b|it's|$(id)|");
    let payload: Vec<u8> = (0..5 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let out = session
        .run_with_input(&["sha256sum"], &payload[..])
        .unwrap();
    assert!(out
        .stdout_text()
        .starts_with(&hex::encode(sha2::Sha256::digest(&payload))));
    let out = session.run(&["sh", "-c", "exit 7"]).unwrap();
    assert_eq!(out.status, 7);
    drop(session);

    // A host whose key is not the recorded one gets nothing.
    let changed = connect(
        Credentials::Key(&key),
        HostKeyPolicy::Pinned("SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into()),
    );
    assert!(
        matches!(changed, Err(SshError::HostKeyChanged { .. })),
        "{:?}",
        changed.err()
    );

    drop(host);
    drop(bridge);
}

//! AddKVMHost over SSH against a real host: a Debian container booted with systemd on a test
//! bridge of this machine (zst-join0, 10.252.0.1/24; the host is 10.252.0.21), the stack
//! installed on this machine with the management node on the bridge's address. The container is
//! booted once for the binary (harness = false, zstack_tests::suite) and the tests run in order
//! on it: the refusals first (wrong password, unreachable host, a missing package), each leaving
//! no host row and nothing on the host; then the real join; then a re-add after DeleteHost, which
//! only re-certifies; last, the management node upgraded to 1.2.1, the host's 1.2.0 agent is not
//! driven until ReconnectHost upgrades it over SSH. Installs on this machine and removes everything afterwards, also on failure.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

use std::process::{Command, ExitCode};
use std::time::Duration;

use serde_json::Value;
use zstack_tests::cli::*;
use zstack_tests::nspawn::Container;
use zstack_tests::suite::{self, Test};
use zstack_tests::*;

const BRIDGE: &str = "zst-join0";
const NODE_IP: &str = "10.252.0.1";
const HOST_IP: &str = "10.252.0.21";
const UNREACHABLE_IP: &str = "10.252.0.99";
const ROOT_PASSWORD: &str = "zstack-join-root";

/// The test bridge; removed when dropped, also when the test fails.
struct Bridge;

impl Bridge {
    fn create() -> Bridge {
        let _ = run(Command::new("ip").args(["link", "del", BRIDGE]));
        ok(Command::new("ip").args(["link", "add", BRIDGE, "type", "bridge"]));
        ok(Command::new("ip").args(["addr", "add", &format!("{NODE_IP}/24"), "dev", BRIDGE]));
        ok(Command::new("ip").args(["link", "set", BRIDGE, "up"]));
        Bridge
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = run(Command::new("ip").args(["link", "del", BRIDGE]));
    }
}

/// What every test shares. Fields drop in order: the container, then the bridge, then the
/// install on this machine, then the container's root filesystem.
struct Join {
    host: Container,
    _bridge: Bridge,
    stack: Stack,
    cluster: String,
    _dir: tempfile::TempDir,
}

impl Join {
    fn boot() -> Join {
        require_root();
        let (dir, root) = zstack_tests::nspawn::debian_rootfs("zstack-join-host-");
        std::fs::write(
            root.join("etc/ssh/sshd_config.d/zstack-test.conf"),
            "PermitRootLogin yes\nPasswordAuthentication yes\n",
        )
        .unwrap();
        // libvirtd under the container's systemd: the host's cgroup tree is read-only inside.
        let qemu_conf = root.join("etc/libvirt/qemu.conf");
        let mut conf = std::fs::read_to_string(&qemu_conf).unwrap_or_default();
        conf.push_str("\ncgroup_controllers = [ ]\n");
        std::fs::write(&qemu_conf, conf).unwrap();
        let bridge = Bridge::create();
        let host = Container::boot_on_bridge(
            &root,
            &dir.path().join("nspawn.log"),
            &format!("zst-join-{}", std::process::id()),
            BRIDGE,
        );
        let setup = host.sh(&format!(
            "echo root:{ROOT_PASSWORD} | chpasswd && ip addr add {HOST_IP}/24 dev host0 && \
             ip link set host0 up && systemctl start ssh"
        ));
        assert!(setup.status.success(), "{}", text(&setup));
        wait_until(
            "sshd in the container answers",
            Duration::from_secs(30),
            || std::net::TcpStream::connect((HOST_IP, 22)).is_ok(),
        );
        let stack = install_with_ip(NODE_IP);
        let zone = stack.cli.uuid(&["CreateZone", "name=join"]);
        let cluster = stack.cli.uuid(&[
            "CreateCluster",
            "name=kvm",
            &format!("zoneUuid={zone}"),
            "hypervisorType=KVM",
        ]);
        Join {
            host,
            _bridge: bridge,
            stack,
            cluster,
            _dir: dir,
        }
    }

    fn cli(&self) -> &Cli {
        &self.stack.cli
    }

    fn add_args(&self, ip: &str, password: &str) -> Vec<String> {
        vec![
            "AddKVMHost".into(),
            "name=joined".into(),
            format!("managementIp={ip}"),
            format!("clusterUuid={}", self.cluster),
            "username=root".into(),
            format!("password={password}"),
        ]
    }

    fn add(&self, ip: &str, password: &str) -> std::process::Output {
        let args = self.add_args(ip, password);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.cli().raw(&args)
    }

    fn refused(&self, ip: &str, password: &str) -> Value {
        let o = self.add(ip, password);
        assert_eq!(o.status.code(), Some(1), "not refused: {}", text(&o));
        let v: Value = serde_json::from_str(&String::from_utf8_lossy(&o.stdout)).unwrap();
        v["error"].clone()
    }

    fn hosts_at(&self, ip: &str) -> Vec<Value> {
        self.cli()
            .list(&["QueryHost", &format!("managementIp={ip}")])
    }

    fn in_host(&self, script: &str) -> String {
        let o = self.host.sh(script);
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// Nothing of ZStack on the host, and root's authorized_keys without the node's key.
    fn assert_host_untouched(&self) {
        let left = self.in_host(
            "for p in /usr/local/zstack /etc/zstack /usr/bin/zstack-ctl \
             /etc/systemd/system/zstack-kvmagent.service /var/log/zstack; do \
             [ -e $p ] && echo $p; done; true",
        );
        assert_eq!(left, "", "left on the host");
        let node_key = std::fs::read_to_string("/etc/zstack/ssh/id_ed25519.pub").unwrap();
        let key = node_key.split_whitespace().nth(1).unwrap();
        let keys = self.in_host("cat /root/.ssh/authorized_keys 2>/dev/null; true");
        assert!(!keys.contains(key), "the node's key is left: {keys}");
    }
}

fn main() -> ExitCode {
    suite::run(
        Join::boot,
        &[
            Test {
                name: "a_bad_user_name_or_ssh_port_is_refused_at_once_with_its_field",
                run: bad_login_arguments,
            },
            Test {
                name: "a_wrong_password_is_ssh_login_failed_and_changes_nothing",
                run: wrong_password,
            },
            Test {
                name: "an_unreachable_address_is_host_unreachable",
                run: unreachable,
            },
            Test {
                name: "a_missing_tool_is_named_with_its_package_and_nothing_is_left",
                run: missing_package,
            },
            Test {
                name: "a_host_joins_over_ssh_and_its_agent_serves_only_tls_under_systemd",
                run: joins,
            },
            Test {
                name: "a_re_add_after_delete_host_only_renews_the_certificate",
                run: re_add,
            },
            Test {
                name: "after_an_upgrade_of_the_node_an_old_agent_is_disconnected_until_reconnect_upgrades_it",
                run: upgrade_on_reconnect,
            },
        ],
    )
}

fn bad_login_arguments(j: &Join) {
    let cluster = format!("clusterUuid={}", j.cluster);
    let ip = format!("managementIp={HOST_IP}");
    for (args, field) in [
        (vec!["username=Root;id", "password=x"], "username"),
        (vec!["username=$(id)", "password=x"], "username"),
        (vec!["username=root", "password=x", "sshPort=0"], "sshPort"),
        (
            vec!["username=root", "password=x", "sshPort=65536"],
            "sshPort",
        ),
        (vec!["password=x"], "username"),
        (vec!["username=root"], "password"),
        (vec!["sshPort=22"], "sshPort"),
    ] {
        let mut call = vec!["AddKVMHost", "name=bad", &ip, &cluster];
        call.extend(args.iter().copied());
        let e = j.cli().err(&call);
        assert_eq!(e["code"], "INVALID_ARGUMENT", "{args:?}: {e}");
        assert_eq!(e["field"], field, "{args:?}: {e}");
    }
    assert!(j.hosts_at(HOST_IP).is_empty());
}

fn wrong_password(j: &Join) {
    let e = j.refused(HOST_IP, "not-the-password");
    assert_eq!(e["code"], "SSH_LOGIN_FAILED", "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("the host was not added"),
        "{e}"
    );
    assert!(j.hosts_at(HOST_IP).is_empty());
    j.assert_host_untouched();
}

fn unreachable(j: &Join) {
    let e = j.refused(UNREACHABLE_IP, ROOT_PASSWORD);
    assert_eq!(e["code"], "HOST_UNREACHABLE", "{e}");
    assert!(j.hosts_at(UNREACHABLE_IP).is_empty());
}

/// Puts dnsmasq back when dropped.
struct HiddenDnsmasq<'a>(&'a Container);

impl Drop for HiddenDnsmasq<'_> {
    fn drop(&mut self) {
        let _ = self.0.sh("mv /usr/sbin/dnsmasq.hidden /usr/sbin/dnsmasq");
    }
}

fn missing_package(j: &Join) {
    let moved = j.host.sh("mv /usr/sbin/dnsmasq /usr/sbin/dnsmasq.hidden");
    assert!(moved.status.success(), "{}", text(&moved));
    let _back = HiddenDnsmasq(&j.host);
    let e = j.refused(HOST_IP, ROOT_PASSWORD);
    assert_eq!(e["code"], "HOST_MISSING_PACKAGES", "{e}");
    let message = e["message"].as_str().unwrap();
    assert!(message.contains("dnsmasq (package dnsmasq-base)"), "{e}");
    assert!(!message.contains("qemu-img"), "only what is missing: {e}");
    assert!(j.hosts_at(HOST_IP).is_empty());
    j.assert_host_untouched();
}

/// The job AddKVMHost ran for host `uuid`, as QueryJob shows it (the last one).
fn add_job(j: &Join, uuid: &str) -> Value {
    let jobs = j.cli().list(&[
        "QueryJob",
        "apiName=AddKVMHost",
        &format!("resourceUuid={uuid}"),
    ]);
    jobs.last()
        .unwrap_or_else(|| panic!("no job for {uuid}"))
        .clone()
}

fn joins(j: &Join) {
    let o = j.add(HOST_IP, ROOT_PASSWORD);
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_str(&String::from_utf8_lossy(&o.stdout)).unwrap();
    let host = &v["inventory"];
    assert_eq!(host["status"], "Connected", "{v}");
    assert!(host["certificateSerial"].is_string(), "{v}");
    assert_eq!(v["deployment"]["changed"], true, "{v}");
    // zstack-cli printed the steps while it waited.
    let waited = String::from_utf8_lossy(&o.stderr);
    for name in ["login", "copy", "certificate", "start"] {
        assert!(waited.contains(name), "no step {name} in: {waited}");
    }

    let job = add_job(j, host["uuid"].as_str().unwrap());
    let steps = job["steps"].as_array().unwrap();
    let names: Vec<&str> = steps.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "login",
            "key",
            "check",
            "copy",
            "install",
            "certificate",
            "start",
            "connect"
        ],
        "{job}"
    );
    assert!(
        steps
            .iter()
            .all(|s| s["state"] == "Succeeded" && s["time"].is_string()),
        "{job}"
    );

    // Under the host's systemd, enabled, from the copied release.
    assert_eq!(j.in_host("systemctl is-active zstack-kvmagent"), "active");
    assert_eq!(j.in_host("systemctl is-enabled zstack-kvmagent"), "enabled");
    assert_eq!(
        j.in_host("readlink /usr/local/zstack/current"),
        "versions/1.2.0"
    );
    assert_eq!(j.in_host("stat -c %a /root/.ssh/authorized_keys"), "600");
    // The password was never stored: the login is the node's key, the host key pinned.
    let row = rusqlite::Connection::open("/var/lib/zstack/zstack.db")
        .unwrap()
        .query_row(
            "SELECT ssh_user, ssh_port, ssh_host_key FROM host WHERE management_ip = ?1",
            [HOST_IP],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                ))
            },
        )
        .unwrap();
    assert_eq!((row.0.as_str(), row.1), ("root", 22));
    assert!(row.2.starts_with("SHA256:"), "{row:?}");
    let db = std::fs::read("/var/lib/zstack/zstack.db").unwrap();
    assert!(
        !db.windows(ROOT_PASSWORD.len())
            .any(|w| w == ROOT_PASSWORD.as_bytes()),
        "the password is in the database"
    );

    // 7070 listens, and only TLS: a plain HTTP request gets no HTTP answer.
    let listening = j.in_host("ss -ltnH");
    assert!(listening.contains(":7070"), "{listening}");
    let plain = run(Command::new("curl").args([
        "-s",
        "-m",
        "5",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://{HOST_IP}:7070/health"),
    ]));
    assert!(!plain.status.success(), "{}", text(&plain));
    assert_eq!(String::from_utf8_lossy(&plain.stdout), "000");
}

fn re_add(j: &Join) {
    let hosts = j.hosts_at(HOST_IP);
    let uuid = hosts[0]["uuid"].as_str().unwrap().to_string();
    let old_serial = hosts[0]["certificateSerial"].as_str().unwrap().to_string();
    j.cli().ok(&["DeleteHost", &format!("uuid={uuid}")]);
    let args = j.add_args(HOST_IP, ROOT_PASSWORD);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let v = j.cli().ok(&args);
    assert_eq!(v["inventory"]["status"], "Connected", "{v}");
    assert_eq!(v["deployment"]["changed"], true, "{v}");
    assert_eq!(
        v["deployment"]["changes"],
        serde_json::json!(["certificate"]),
        "{v}"
    );
    let serial = v["inventory"]["certificateSerial"].as_str().unwrap();
    assert_ne!(serial, old_serial, "the revoked certificate was kept");
    let job = add_job(j, v["inventory"]["uuid"].as_str().unwrap());
    for s in job["steps"].as_array().unwrap() {
        let expected = s["name"] == "certificate";
        assert_eq!(s["changed"], expected, "{s}");
    }
}

fn set_ssh_user(user: Option<&str>) {
    rusqlite::Connection::open("/var/lib/zstack/zstack.db")
        .unwrap()
        .execute(
            "UPDATE host SET ssh_user = ?1 WHERE management_ip = ?2",
            rusqlite::params![user, HOST_IP],
        )
        .unwrap();
}

fn upgrade_on_reconnect(j: &Join) {
    let uuid = j.hosts_at(HOST_IP)[0]["uuid"].as_str().unwrap().to_string();
    ok(bin_cmd(&bin_path("1.2.1"), &["-u", "--json"]));
    // Without a stored login the old agent is only refused, with the reason.
    set_ssh_user(None);
    let e = j.cli().err(&["ReconnectHost", &format!("uuid={uuid}")]);
    set_ssh_user(Some("root"));
    assert_eq!(e["code"], "AGENT_VERSION_MISMATCH", "{e}");
    let host = &j.hosts_at(HOST_IP)[0];
    assert_eq!(host["status"], "Disconnected", "{host}");
    let reason = host["statusReason"].as_str().unwrap();
    assert!(
        reason.contains("version differs") && reason.contains("1.2.0"),
        "{host}"
    );

    // With it, ReconnectHost upgrades the agent by the same deployment, then connects.
    let v = j.cli().ok(&["ReconnectHost", &format!("uuid={uuid}")]);
    assert_eq!(v["inventory"]["status"], "Connected", "{v}");
    let changes = v["deployment"]["changes"].as_array().unwrap();
    for step in ["copy", "install", "start"] {
        assert!(changes.iter().any(|c| c == step), "{v}");
    }
    assert!(!changes.iter().any(|c| c == "certificate"), "{v}");
    assert_eq!(
        j.in_host("readlink /usr/local/zstack/current"),
        "versions/1.2.1"
    );
    assert_eq!(j.in_host("systemctl is-active zstack-kvmagent"), "active");
}

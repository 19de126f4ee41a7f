//! The distributed EIP of the KVM agent (`zstack_kvmagent::eip`) on this host's real network
//! stack, without a VM: namespaces stand for the VMs (a veth whose bridge side is named like the
//! VM's tap) and for the public network (holding the VIP's gateway). Everything the tests make is
//! named `zse*` / `br_zse*` and removed by guards, even when a test fails.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};

use zstack_common::agent_proto::{EipSpec, NicSpec};
use zstack_common::templates::Templates;
use zstack_kvmagent::eip;
use zstack_kvmagent::host::{HostError, HostTools, SystemTools};
use zstack_tests::*;

/// The tests share the bridges and addresses below: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const PUBLIC_IFACE: &str = "zsepub";
const PRIVATE_IFACE: &str = "zseprv";
const INTERNET_NS: &str = "zse-inet";
const INTERNET_IP: &str = "172.31.0.1";

fn templates() -> Templates {
    Templates::load(&repo_root().join("templates")).unwrap()
}

fn sh(args: &[&str]) -> String {
    let mut c = Command::new(args[0]);
    c.args(&args[1..]);
    ok(c)
}

fn in_ns(ns: &str, args: &[&str]) -> String {
    let mut all = vec!["ip", "netns", "exec", ns];
    all.extend_from_slice(args);
    sh(&all)
}

/// A VM standing in a namespace on the private bridge.
struct Vm {
    ns: String,
    ip: String,
    mac: String,
    nic_uuid: String,
}

impl Vm {
    fn nic(&self) -> NicSpec {
        NicSpec {
            uuid: self.nic_uuid.clone(),
            l3_network_uuid: "e3000000000000000000000000000001".into(),
            mac: self.mac.clone(),
            ip: self.ip.clone(),
            netmask: "255.255.255.0".into(),
            gateway: "10.31.0.1".into(),
            device_id: 0,
            physical_interface: PRIVATE_IFACE.into(),
            services: vec!["Eip".into()],
            dns_domain: None,
            dhcp_server_ip: None,
        }
    }

    fn tap(&self) -> String {
        zstack_kvmagent::vm::tap_name(&self.nic())
    }
}

/// The test's topology; dropping it removes the EIPs it applied and everything it made.
struct Topology {
    namespaces: Vec<String>,
    links: Vec<String>,
    bridges: Vec<String>,
    eips: Vec<EipSpec>,
    flat_elements: Vec<(&'static str, String)>,
}

impl Topology {
    /// The public and private bridges, and the internet namespace holding the VIPs' gateway.
    fn new() -> Topology {
        let mut t = Topology {
            namespaces: vec![],
            links: vec![],
            bridges: vec![],
            eips: vec![],
            flat_elements: vec![],
        };
        for iface in [PUBLIC_IFACE, PRIVATE_IFACE] {
            let br = format!("br_{iface}");
            let _ = Command::new("ip").args(["link", "del", &br]).output();
            sh(&["ip", "link", "add", "name", &br, "type", "bridge"]);
            t.bridges.push(br.clone());
            sh(&["ip", "link", "set", "dev", &br, "up"]);
        }
        t.host(INTERNET_NS, "zseinet", "br_zsepub", "02:5e:00:00:00:01");
        // Gratuitous ARPs create entries here, so the test can see the VIP's announcement.
        in_ns(
            INTERNET_NS,
            &["sysctl", "-qw", "net.ipv4.conf.eth0.arp_accept=1"],
        );
        in_ns(
            INTERNET_NS,
            &[
                "ip",
                "addr",
                "add",
                &format!("{INTERNET_IP}/24"),
                "dev",
                "eth0",
            ],
        );
        t
    }

    /// A namespace `ns` whose `eth0` (MAC `mac`) is plugged into `bridge` by the host end `port`.
    fn host(&mut self, ns: &str, port: &str, bridge: &str, mac: &str) {
        let _ = Command::new("ip").args(["netns", "del", ns]).output();
        let _ = Command::new("ip").args(["link", "del", port]).output();
        sh(&["ip", "netns", "add", ns]);
        self.namespaces.push(ns.to_string());
        sh(&[
            "ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "address", mac,
            "netns", ns,
        ]);
        self.links.push(port.to_string());
        sh(&["ip", "link", "set", "dev", port, "master", bridge, "up"]);
        in_ns(ns, &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        in_ns(ns, &["ip", "link", "set", "dev", "lo", "up"]);
        in_ns(ns, &["ip", "link", "set", "dev", "eth0", "up"]);
    }

    /// VM number `n`: 10.31.0.1n on the private bridge, its default route through 10.31.0.1.
    fn vm(&mut self, n: u8) -> Vm {
        let vm = Vm {
            ns: format!("zse-vm{n}"),
            ip: format!("10.31.0.{}", 10 + n),
            mac: format!("02:5e:00:00:01:{n:02x}"),
            nic_uuid: format!("ee5e{n:04}000000000000000000000001"),
        };
        let tap = vm.tap();
        self.host(&vm.ns, &tap, "br_zseprv", &vm.mac);
        in_ns(
            &vm.ns,
            &["ip", "addr", "add", &format!("{}/24", vm.ip), "dev", "eth0"],
        );
        in_ns(
            &vm.ns,
            &["ip", "route", "add", "default", "via", "10.31.0.1"],
        );
        // When this host runs the flat network's anti-spoofing (another test, or an agent), a
        // tap it does not know may send no ARP at all; a real VM's tap is registered by the
        // agent's VM start, this stand-in is registered here.
        let flat = zstack_kvmagent::flat::TABLE;
        if run(Command::new("nft").args(["list", "chain", "bridge", flat, "prerouting"]))
            .status
            .success()
        {
            for (set, element) in [
                ("vm_macs", format!("{{ \"{tap}\" . {} }}", vm.mac)),
                (
                    "vm_addrs",
                    format!("{{ \"{tap}\" . {} . {} }}", vm.mac, vm.ip),
                ),
            ] {
                let _ = run(
                    Command::new("nft").args(["add", "element", "bridge", flat, set, &element])
                );
                self.flat_elements.push((set, element));
            }
        }
        vm
    }

    /// The EIP spec of `vip` (172.31.0.x, uuid from `n`) for `vm`.
    fn spec(&mut self, n: u8, vip: &str, vm: &Vm) -> EipSpec {
        let spec = EipSpec {
            eip_uuid: format!("e1e1{n:04}000000000000000000000001"),
            vip_uuid: format!("5e1f{n:04}000000000000000000000001"),
            vip_ip: vip.to_string(),
            vip_netmask: "255.255.255.0".into(),
            vip_gateway: INTERNET_IP.into(),
            public_interface: PUBLIC_IFACE.into(),
            vm_uuid: format!("a0a0{n:04}000000000000000000000001"),
            nic: vm.nic(),
        };
        self.eips.push(spec.clone());
        spec
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let t = templates();
        for spec in &self.eips {
            if let Err(e) = eip::remove(&SystemTools, &t, spec) {
                eprintln!("cleanup: {e}");
            }
        }
        for (set, element) in &self.flat_elements {
            let flat = zstack_kvmagent::flat::TABLE;
            let _ = Command::new("nft")
                .args(["delete", "element", "bridge", flat, set, element])
                .output();
        }
        for l in &self.links {
            let _ = Command::new("ip").args(["link", "del", l]).output();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        for br in &self.bridges {
            let _ = Command::new("ip").args(["link", "del", br]).output();
        }
    }
}

/// A TCP server in a namespace: answers every connection with `<name> <peer address>`.
struct Server(Child);

const SERVER: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(16)
print("ready", flush=True)
while True:
    c, a = s.accept()
    c.sendall(("%s %s" % (sys.argv[3], a[0])).encode())
    c.close()
"#;

const CLIENT: &str = r#"
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
    c.settimeout(float(sys.argv[3]))
    print(c.recv(200).decode())
except OSError as e:
    print("FAILED %s" % e)
    sys.exit(1)
"#;

impl Server {
    fn start(ns: &str, bind: &str, port: u16, name: &str) -> Server {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "python3", "-c", SERVER, bind])
            .arg(port.to_string())
            .arg(name)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "server in {ns} did not start");
        Server(child)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Connects from `ns` to `host:port`: the server's answer, or None when it cannot be reached.
fn connect(ns: &str, host: &str, port: u16, timeout_secs: u32) -> Option<String> {
    let o = run(Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-c", CLIENT, host])
        .arg(port.to_string())
        .arg(timeout_secs.to_string()));
    let out = String::from_utf8_lossy(&o.stdout).trim().to_string();
    o.status.success().then_some(out)
}

/// The MAC `ns` resolved `ip` to, if any.
fn neighbour(ns: &str, ip: &str) -> Option<String> {
    let out = in_ns(ns, &["ip", "neigh", "show", ip]);
    let mut words = out.split_whitespace();
    words.find(|w| *w == "lladdr")?;
    words.next().map(str::to_string)
}

/// What this test's EIPs have on this host: their namespaces (`zs-eip-5e1f*`), their host ports
/// (`eip5e1f*`), their elements in the host's bridge table, and (when no other EIP is on the
/// host: another test run or an installed agent may hold some) whether that table exists.
fn eip_state() -> String {
    let all_netns = sh(&["ip", "netns", "list"]);
    let mine = format!("{}5e1f", eip::NAMESPACE_PREFIX);
    let netns: Vec<&str> = all_netns.lines().filter(|l| l.starts_with(&mine)).collect();
    let others = all_netns
        .lines()
        .any(|l| l.starts_with(eip::NAMESPACE_PREFIX) && !l.starts_with(&mine));
    let links: Vec<String> = sh(&["ip", "-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or_default().to_string())
        .filter(|n| n.starts_with("eip5e1f"))
        .collect();
    let table = run(Command::new("nft").args(["list", "table", "bridge", eip::BRIDGE_TABLE]));
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    let elements: Vec<&str> = table
        .split('"')
        .filter(|w| w.starts_with("eip5e1f") || w.starts_with("vnicee5e"))
        .collect();
    let exists = if others {
        "(other EIPs on this host)".to_string()
    } else {
        (!table.is_empty()).to_string()
    };
    format!("namespaces: {netns:?}\nlinks: {links:?}\nelements: {elements:?}\ntable: {exists}")
}

/// Everything one EIP consists of, in detail (interface indexes included, so a link made again
/// shows), to compare two applies.
fn eip_detail(spec: &EipSpec) -> String {
    let ns = eip::namespace_name(&spec.vip_uuid);
    let mut out = String::new();
    for port in [
        eip::public_port_name(&spec.vip_uuid).unwrap(),
        eip::gateway_port_name(&spec.vip_uuid).unwrap(),
    ] {
        out += &without_timers(&sh(&["ip", "-d", "-o", "link", "show", "dev", &port]));
    }
    for args in [
        &["ip", "-d", "-o", "link", "show"][..],
        &["ip", "-o", "addr", "show"],
        &["ip", "route", "show"],
        &["ip", "neigh", "show", "nud", "permanent"],
        &["nft", "list", "ruleset"],
        &[
            "sysctl",
            "net.ipv4.ip_forward",
            "net.ipv4.conf.all.arp_ignore",
        ],
    ] {
        out += &in_ns(&ns, args);
    }
    out + &eip_state()
        + &sh(&[
            "nft",
            "list",
            "chain",
            "bridge",
            eip::BRIDGE_TABLE,
            "forward",
        ])
}

/// `ip -d link` without the bridge port's timers, which tick between two looks.
fn without_timers(line: &str) -> String {
    let mut out = Vec::new();
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w.ends_with("_timer") {
            words.next();
        } else {
            out.push(w);
        }
    }
    out.join(" ") + "\n"
}

#[test]
#[ignore = "needs root: run by make test"]
fn eip_carries_traffic_both_ways_and_remove_leaves_nothing() {
    require_root();
    let _serial = serial();
    let t = templates();
    let mut topo = Topology::new();
    let vm = topo.vm(1);
    let spec = topo.spec(1, "172.31.0.10", &vm);
    let before = eip_state();

    eip::apply(&SystemTools, &t, &spec).unwrap();

    // The VIP was announced (the internet namespace accepts gratuitous ARP) with its fixed MAC,
    // before any traffic.
    assert_eq!(
        neighbour(INTERNET_NS, "172.31.0.10"),
        Some(eip::public_mac(&spec.vip_uuid)),
        "no gratuitous ARP for the VIP seen"
    );

    // Internet -> VIP reaches the VM, which sees the real client address.
    let _vm_server = Server::start(&vm.ns, "0.0.0.0", 8080, "vm1");
    assert_eq!(
        connect(INTERNET_NS, "172.31.0.10", 8080, 5).as_deref(),
        Some("vm1 172.31.0.1")
    );
    // VM -> internet leaves with the VIP as source address.
    let _inet_server = Server::start(INTERNET_NS, INTERNET_IP, 8081, "inet");
    assert_eq!(
        connect(&vm.ns, INTERNET_IP, 8081, 5).as_deref(),
        Some("inet 172.31.0.10")
    );
    // The VM's gateway is its EIP namespace.
    assert_eq!(
        neighbour(&vm.ns, "10.31.0.1"),
        Some(eip::gateway_mac(&spec.vip_uuid))
    );
    // The namespace forwards for its VM only: the internet cannot route through the VIP into the
    // private network.
    in_ns(
        INTERNET_NS,
        &["ip", "route", "add", "10.31.0.0/24", "via", "172.31.0.10"],
    );
    assert_eq!(connect(INTERNET_NS, &vm.ip, 8080, 2), None);
    in_ns(INTERNET_NS, &["ip", "route", "del", "10.31.0.0/24"]);

    // Applying again changes nothing.
    let once = eip_detail(&spec);
    eip::apply(&SystemTools, &t, &spec).unwrap();
    assert_eq!(once, eip_detail(&spec), "a second apply changed the host");

    // Remove: neither way works, and nothing is left.
    eip::remove(&SystemTools, &t, &spec).unwrap();
    assert_eq!(connect(INTERNET_NS, "172.31.0.10", 8080, 2), None);
    assert_eq!(connect(&vm.ns, INTERNET_IP, 8081, 2), None);
    assert_eq!(before, eip_state(), "remove left something behind");
    let ruleset = sh(&["nft", "list", "ruleset"]);
    let port = eip::gateway_port_name(&spec.vip_uuid).unwrap();
    assert!(!ruleset.contains(&port), "{port} left in\n{ruleset}");
    // Removing what is not there succeeds.
    eip::remove(&SystemTools, &t, &spec).unwrap();
    assert_eq!(before, eip_state());
}

#[test]
#[ignore = "needs root: run by make test"]
fn two_vms_with_eips_and_one_without_on_one_host() {
    require_root();
    let _serial = serial();
    let t = templates();
    let mut topo = Topology::new();
    let (vm1, vm2, vm3) = (topo.vm(1), topo.vm(2), topo.vm(3));
    let spec1 = topo.spec(1, "172.31.0.10", &vm1);
    let spec2 = topo.spec(2, "172.31.0.11", &vm2);
    let before = eip_state();
    eip::apply(&SystemTools, &t, &spec1).unwrap();
    eip::apply(&SystemTools, &t, &spec2).unwrap();

    let _servers = [
        Server::start(&vm1.ns, "0.0.0.0", 8080, "vm1"),
        Server::start(&vm2.ns, "0.0.0.0", 8080, "vm2"),
        Server::start(&vm3.ns, "0.0.0.0", 8080, "vm3"),
        Server::start(INTERNET_NS, INTERNET_IP, 8081, "inet"),
    ];
    // Each VIP leads to its own VM; each VM goes out as its own VIP.
    assert_eq!(
        connect(INTERNET_NS, "172.31.0.10", 8080, 5).as_deref(),
        Some("vm1 172.31.0.1")
    );
    assert_eq!(
        connect(INTERNET_NS, "172.31.0.11", 8080, 5).as_deref(),
        Some("vm2 172.31.0.1")
    );
    assert_eq!(
        connect(&vm1.ns, INTERNET_IP, 8081, 5).as_deref(),
        Some("inet 172.31.0.10")
    );
    assert_eq!(
        connect(&vm2.ns, INTERNET_IP, 8081, 5).as_deref(),
        Some("inet 172.31.0.11")
    );
    // Both namespaces hold 10.31.0.1 on the same bridge; each VM resolved its own.
    assert_eq!(
        neighbour(&vm1.ns, "10.31.0.1"),
        Some(eip::gateway_mac(&spec1.vip_uuid))
    );
    assert_eq!(
        neighbour(&vm2.ns, "10.31.0.1"),
        Some(eip::gateway_mac(&spec2.vip_uuid))
    );
    // The VM without an EIP is answered by neither namespace: it reaches nothing through a VIP.
    assert_eq!(connect(&vm3.ns, INTERNET_IP, 8081, 2), None);
    assert_eq!(neighbour(&vm3.ns, "10.31.0.1"), None);
    // VMs still reach each other on their own network.
    assert_eq!(
        connect(&vm3.ns, &vm1.ip, 8080, 5).as_deref(),
        Some("vm1 10.31.0.13")
    );

    // A real router of the L3 holding the gateway IP too: the VM without an EIP uses it, the VMs
    // with one keep their namespaces, even when asking again or when the router announces the
    // gateway.
    topo.host("zse-router", "zserouter", "br_zseprv", "02:5e:00:00:00:aa");
    in_ns(
        "zse-router",
        &["ip", "addr", "add", "10.31.0.1/24", "dev", "eth0"],
    );
    let _router = Server::start("zse-router", "10.31.0.1", 8082, "router");
    // Forget the gateway nobody answered for a moment ago (the kernel would refuse at once).
    in_ns(&vm3.ns, &["ip", "neigh", "flush", "dev", "eth0"]);
    assert_eq!(
        connect(&vm3.ns, "10.31.0.1", 8082, 5).as_deref(),
        Some("router 10.31.0.13")
    );
    assert_eq!(
        neighbour(&vm3.ns, "10.31.0.1").as_deref(),
        Some("02:5e:00:00:00:aa")
    );
    in_ns(&vm1.ns, &["ip", "neigh", "flush", "dev", "eth0"]);
    assert_eq!(
        connect(&vm1.ns, INTERNET_IP, 8081, 5).as_deref(),
        Some("inet 172.31.0.10")
    );
    // The router never heard VM1 ask for the gateway (it would have learnt VM1's address).
    assert_eq!(neighbour("zse-router", &vm1.ip), None);
    in_ns(
        "zse-router",
        &["arping", "-q", "-U", "-c", "1", "-I", "eth0", "10.31.0.1"],
    );
    assert_eq!(
        neighbour(&vm1.ns, "10.31.0.1"),
        Some(eip::gateway_mac(&spec1.vip_uuid)),
        "the router's announcement took the VM's gateway"
    );
    assert_eq!(
        connect(&vm1.ns, INTERNET_IP, 8081, 5).as_deref(),
        Some("inet 172.31.0.10")
    );

    // Removing one leaves the other working.
    eip::remove(&SystemTools, &t, &spec1).unwrap();
    assert_eq!(connect(INTERNET_NS, "172.31.0.10", 8080, 2), None);
    assert_eq!(connect(&vm1.ns, INTERNET_IP, 8081, 2), None);
    assert_eq!(
        connect(INTERNET_NS, "172.31.0.11", 8080, 5).as_deref(),
        Some("vm2 172.31.0.1")
    );
    assert_eq!(
        connect(&vm2.ns, INTERNET_IP, 8081, 5).as_deref(),
        Some("inet 172.31.0.11")
    );
    eip::remove(&SystemTools, &t, &spec2).unwrap();
    assert_eq!(connect(&vm2.ns, INTERNET_IP, 8081, 2), None);
    assert_eq!(before, eip_state(), "remove left something behind");
}

#[test]
#[ignore = "needs root: run by make test"]
fn a_vip_someone_answers_for_is_refused_and_leaves_nothing() {
    require_root();
    let _serial = serial();
    let t = templates();
    let mut topo = Topology::new();
    let vm = topo.vm(1);
    // Another host already holds the VIP on the public network.
    topo.host("zse-squat", "zsesquat", "br_zsepub", "02:5e:00:00:00:99");
    in_ns(
        "zse-squat",
        &["ip", "addr", "add", "172.31.0.10/24", "dev", "eth0"],
    );
    let spec = topo.spec(1, "172.31.0.10", &vm);
    let before = eip_state();

    let err = eip::apply(&SystemTools, &t, &spec).unwrap_err().to_string();
    assert!(
        err.contains("172.31.0.10 is already in use") && err.contains("02:5E:00:00:00:99"),
        "{err}"
    );
    assert_eq!(before, eip_state(), "a refused apply left something behind");
    // Nobody announced the VIP (the probe's sender address is 0.0.0.0: it teaches no cache).
    assert_eq!(neighbour(INTERNET_NS, "172.31.0.10"), None);
}

/// The real tools, failing the command that contains `fail_on`.
struct FailingTools {
    fail_on: &'static str,
}

impl HostTools for FailingTools {
    fn run(&self, program: &str, args: &[&str]) -> Result<String, HostError> {
        let line = format!("{program} {}", args.join(" "));
        if line.contains(self.fail_on) {
            return Err(HostError::Failed {
                command: line,
                message: "failure injected by the test".into(),
                status: Some(1),
            });
        }
        SystemTools.run(program, args)
    }
}

#[test]
#[ignore = "needs root: run by make test"]
fn a_failure_half_way_removes_what_the_call_made() {
    require_root();
    let _serial = serial();
    let t = templates();
    let mut topo = Topology::new();
    let vm = topo.vm(1);
    // Bridges that do not exist yet: apply makes them, and the undo must remove them.
    let mut spec = topo.spec(1, "172.31.0.10", &vm);
    spec.public_interface = "zsefpub".into();
    spec.nic.physical_interface = "zsefprv".into();
    topo.bridges
        .extend(["br_zsefpub".into(), "br_zsefprv".into()]);
    let before = eip_state();

    for step in [
        "route replace default",
        "nft -f",
        "link set dev public address",
    ] {
        let err = eip::apply(&FailingTools { fail_on: step }, &t, &spec)
            .unwrap_err()
            .to_string();
        assert!(err.contains("failure injected"), "{err}");
        assert_eq!(
            before,
            eip_state(),
            "failing at {step:?} left something behind"
        );
        for br in ["br_zsefpub", "br_zsefprv"] {
            assert!(
                !run(Command::new("ip").args(["link", "show", "dev", br]))
                    .status
                    .success(),
                "failing at {step:?} left {br}"
            );
        }
    }
    // And the same spec then applies cleanly.
    eip::apply(&SystemTools, &t, &spec).unwrap();
    eip::remove(&SystemTools, &t, &spec).unwrap();
    assert_eq!(before, eip_state());
}

//! The flat network's host side with real traffic and no VM (integration tier): namespaces stand
//! for a VM, a spoofing neighbour and the L2's router on a test bridge; the agent's code makes the
//! L3 namespace, dnsmasq and the bridge rules. Everything the test makes is removed, even when it
//! fails.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use zstack_common::agent_proto::NicSpec;
use zstack_common::templates::Templates;
use zstack_kvmagent::flat::{namespace, FlatNetwork, TABLE};
use zstack_kvmagent::host::SystemTools;
use zstack_tests::*;

const IFACE: &str = "zsflat0";
const L3: &str = "f1a7000000000000000000000000000a";
const VM_NIC: &str = "aaaaaaaa000000000000000000000001";
const VM_MAC: &str = "fa:16:3e:00:00:01";

/// Removes what the test made: namespaces, links, and the bridge table if the test made it.
struct Cleanup {
    table_was_there: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &zstack_kvmagent::flat::veth_names(L3).0])
            .output();
        for ns in ["zsft-vm", "zsft-evil", "zsft-router", &namespace(L3)] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        for l in [
            "br_zsflat0",
            "vnicaaaaaaaa.0",
            "vnicbbbbbbbb.0",
            "zsftrouter",
        ] {
            let _ = Command::new("ip").args(["link", "del", l]).output();
        }
        let _ = Command::new("pkill")
            .args(["-f", "zsft-dnsmasq-marker"])
            .output();
        if !self.table_was_there {
            let _ = Command::new("nft")
                .args(["delete", "table", "bridge", TABLE])
                .output();
        }
    }
}

fn sh(args: &[&str]) -> String {
    ok(Command::new(args[0]).args(&args[1..]))
}

fn ns(name: &str, args: &[&str]) -> std::process::Output {
    let mut all = vec!["netns", "exec", name];
    all.extend_from_slice(args);
    run(Command::new("ip").args(&all))
}

/// A namespace on the test bridge through a veth whose bridge side is `port`.
fn attach(name: &str, port: &str, mac: &str, addr: &str) {
    sh(&["ip", "netns", "add", name]);
    sh(&[
        "ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", name,
    ]);
    sh(&["ip", "link", "set", port, "master", "br_zsflat0", "up"]);
    sh(&["ip", "-n", name, "link", "set", "eth0", "address", mac]);
    sh(&["ip", "-n", name, "link", "set", "eth0", "up"]);
    sh(&["ip", "-n", name, "link", "set", "lo", "up"]);
    if !addr.is_empty() {
        sh(&["ip", "-n", name, "addr", "add", addr, "dev", "eth0"]);
    }
}

fn nic() -> NicSpec {
    NicSpec {
        uuid: VM_NIC.into(),
        l3_network_uuid: L3.into(),
        mac: VM_MAC.into(),
        ip: "10.77.0.10".into(),
        netmask: "255.255.255.0".into(),
        gateway: "10.77.0.1".into(),
        device_id: 0,
        physical_interface: IFACE.into(),
        services: vec!["DHCP".into(), "Userdata".into()],
        dns_domain: Some("zstack.test".into()),
        dhcp_server_ip: Some("10.77.0.2".into()),
    }
}

#[test]
#[ignore = "needs root: run by make test"]
fn dhcp_serves_exactly_the_allocated_pair_and_spoofed_frames_are_dropped() {
    require_root();
    let _cleanup = Cleanup {
        table_was_there: run(Command::new("nft").args(["list", "table", "bridge", TABLE]))
            .status
            .success(),
    };
    sh(&["ip", "link", "add", "br_zsflat0", "type", "bridge"]);
    sh(&["ip", "link", "set", "br_zsflat0", "up"]);
    // The VM's tap is named as the agent names it for this NIC.
    attach("zsft-vm", "vnicaaaaaaaa.0", VM_MAC, "");
    let templates = Templates::load(&repo_root().join("templates")).unwrap();
    let state = tempfile::tempdir().unwrap();
    let flat = FlatNetwork {
        tools: &SystemTools,
        templates: &templates,
        state_dir: state.path().to_path_buf(),
        metadata: None,
    };
    flat.add_nic(&nic(), "web1").unwrap();
    // Twice changes nothing.
    flat.add_nic(&nic(), "web1").unwrap();

    // DHCP: the VM gets its allocated address, the gateway and its name.
    let leases = state.path().join("vm.leases");
    let o = ns(
        "zsft-vm",
        &[
            "dhclient",
            "-1",
            "-4",
            "-lf",
            &leases.display().to_string(),
            "-pf",
            &state.path().join("dhclient.pid").display().to_string(),
            "-sf",
            "/bin/true",
            "eth0",
        ],
    );
    assert!(o.status.success(), "no DHCP lease: {}", text(&o));
    let lease = std::fs::read_to_string(&leases).unwrap();
    assert!(lease.contains("fixed-address 10.77.0.10;"), "{lease}");
    assert!(lease.contains("option routers 10.77.0.1;"), "{lease}");
    assert!(lease.contains("option host-name \"web1\";"), "{lease}");
    let _ = Command::new("pkill")
        .args([
            "-F",
            &state.path().join("dhclient.pid").display().to_string(),
        ])
        .output();

    // With its own address the VM reaches the L3 namespace; with another one it does not.
    sh(&[
        "ip",
        "-n",
        "zsft-vm",
        "addr",
        "add",
        "10.77.0.10/24",
        "dev",
        "eth0",
    ]);
    let ping = |name: &str, from: &str, to: &str| {
        ns(name, &["ping", "-c", "1", "-W", "1", "-I", from, to])
            .status
            .success()
    };
    assert!(ping("zsft-vm", "10.77.0.10", "10.77.0.2"));
    sh(&[
        "ip",
        "-n",
        "zsft-vm",
        "addr",
        "add",
        "10.77.0.99/24",
        "dev",
        "eth0",
    ]);
    assert!(
        !ping("zsft-vm", "10.77.0.99", "10.77.0.2"),
        "a spoofed source address got through"
    );
    // A neighbour using the VM's address from another tap, with another MAC, is dropped too.
    attach(
        "zsft-evil",
        "vnicbbbbbbbb.0",
        "fa:16:3e:00:00:66",
        "10.77.0.10/24",
    );
    assert!(
        !ping("zsft-evil", "10.77.0.10", "10.77.0.2"),
        "a spoofed MAC got through"
    );

    // Metadata: the VM sends to its gateway's MAC (169.254.169.254 is off-link); the bridge hands
    // the frame to the L3 namespace, where a server answers on 169.254.169.254.
    attach(
        "zsft-router",
        "zsftrouter",
        "fa:16:3e:00:00:fe",
        "10.77.0.1/24",
    );
    sh(&[
        "ip",
        "-n",
        "zsft-vm",
        "route",
        "add",
        "default",
        "via",
        "10.77.0.1",
    ]);
    let l3ns = namespace(L3);
    let mut server = Command::new("ip")
        .args(["netns", "exec", &l3ns, "python3", "-c",
            "import http.server as h\nclass H(h.BaseHTTPRequestHandler):\n  def do_GET(s):\n    b=('from '+s.client_address[0]).encode(); s.send_response(200); s.end_headers(); s.wfile.write(b)\n  def log_message(s,*a): pass\nh.HTTPServer(('169.254.169.254',80),H).serve_forever()"])
        .spawn()
        .unwrap();
    let mut answer = String::new();
    wait_until(
        "the metadata address to answer from the VM",
        Duration::from_secs(15),
        || {
            let o = ns(
                "zsft-vm",
                &["curl", "-s", "-m", "1", "http://169.254.169.254/"],
            );
            answer = String::from_utf8_lossy(&o.stdout).into_owned();
            o.status.success()
        },
    );
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(
        answer, "from 10.77.0.10",
        "the server sees the VM by its address"
    );

    // Removing the last NIC takes the namespace, dnsmasq and the rules away.
    flat.remove_nic(&nic()).unwrap();
    assert!(!sh(&["ip", "netns", "list"]).contains(&l3ns));
    let rules = sh(&["nft", "list", "table", "bridge", TABLE]);
    assert!(!rules.contains("vnicaaaaaaaa.0"), "{rules}");
    assert!(!Path::new(&state.path().join(L3)).exists());
}

/// Listens on eth0 for ARP frames for 3 seconds after printing "ready"; prints one line per frame:
/// the frame's source MAC and the ARP target IP.
const ARP_RECEIVER: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
s.bind(("eth0", 0))
s.settimeout(0.2)
print("ready", flush=True)
end = time.time() + 3
while time.time() < end:
    try:
        f = s.recv(2048)
    except socket.timeout:
        continue
    src = ":".join("%02x" % b for b in f[6:12])
    print(src, socket.inet_ntoa(f[38:42]), flush=True)
"#;

/// Sends, from eth0, an ARP request whose frame source MAC is argv[1], whose payload says the
/// sender is argv[2] (MAC) at argv[3] (IP), asking for argv[4]; three times.
const ARP_SENDER: &str = r#"
import socket, sys, time
mac = lambda m: bytes(int(x, 16) for x in m.split(":"))
frame_src, sender_mac, sender_ip, target_ip = sys.argv[1:5]
frame = (b"\xff" * 6 + mac(frame_src) + b"\x08\x06" + b"\x00\x01\x08\x00\x06\x04\x00\x01"
         + mac(sender_mac) + socket.inet_aton(sender_ip) + b"\x00" * 6 + socket.inet_aton(target_ip))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
for _ in range(3):
    s.send(frame)
    time.sleep(0.1)
"#;

#[test]
#[ignore = "needs root: run by make test"]
fn arp_whose_frame_source_is_not_the_vms_mac_is_dropped() {
    require_root();
    let _cleanup = Cleanup {
        table_was_there: run(Command::new("nft").args(["list", "table", "bridge", TABLE]))
            .status
            .success(),
    };
    sh(&["ip", "link", "add", "br_zsflat0", "type", "bridge"]);
    sh(&["ip", "link", "set", "br_zsflat0", "up"]);
    attach("zsft-vm", "vnicaaaaaaaa.0", VM_MAC, "10.77.0.10/24");
    attach(
        "zsft-router",
        "zsftrouter",
        "fa:16:3e:00:00:fe",
        "10.77.0.1/24",
    );
    let templates = Templates::load(&repo_root().join("templates")).unwrap();
    let state = tempfile::tempdir().unwrap();
    let flat = FlatNetwork {
        tools: &SystemTools,
        templates: &templates,
        state_dir: state.path().to_path_buf(),
        metadata: None,
    };
    flat.add_nic(&nic(), "web1").unwrap();

    let mut receiver = Command::new("ip")
        .args([
            "netns",
            "exec",
            "zsft-router",
            "python3",
            "-c",
            ARP_RECEIVER,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(receiver.stdout.take().unwrap());
    let mut ready = String::new();
    out.read_line(&mut ready).unwrap();
    assert_eq!(ready.trim(), "ready");
    let send = |frame_src: &str, target: &str| {
        let o = ns(
            "zsft-vm",
            &[
                "python3",
                "-c",
                ARP_SENDER,
                frame_src,
                VM_MAC,
                "10.77.0.10",
                target,
            ],
        );
        assert!(o.status.success(), "{}", text(&o));
    };
    // The VM's own ARP, then one whose payload is the VM's but whose frame is not.
    send(VM_MAC, "10.77.0.201");
    send("fa:16:3e:00:00:66", "10.77.0.202");
    let mut seen = String::new();
    out.read_to_string(&mut seen).unwrap();
    let _ = receiver.wait();
    assert!(
        seen.contains(&format!("{VM_MAC} 10.77.0.201")),
        "the VM's own ARP did not cross the bridge:\n{seen}"
    );
    assert!(
        !seen.contains("10.77.0.202"),
        "ARP with a forged frame source MAC crossed the bridge:\n{seen}"
    );
    flat.remove_nic(&nic()).unwrap();
}

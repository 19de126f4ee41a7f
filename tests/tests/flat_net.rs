//! The flat network's host side with real traffic and no VM (integration tier): namespaces stand
//! for a VM, a spoofing neighbour and the L2's router on a test bridge; the agent's code makes the
//! L3 namespace, dnsmasq and the bridge rules. Everything the test makes is removed, even when it
//! fails.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

use std::path::Path;
use std::process::Command;
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

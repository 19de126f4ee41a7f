//! The L2's bridge on a real host (integration tier): a network namespace stands for the host,
//! whose one interface carries its address and default route, another for the management node
//! and its gateway. Making `br_<interface>` moves the address and routes onto the bridge while
//! the management node keeps pinging the host; an interface with only its IPv6 link-local
//! address joins its bridge as it is. Everything the test makes is removed, even when it fails.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

use std::process::Command;
use std::time::Duration;

use zstack_kvmagent::bridge::ensure_bridge;
use zstack_kvmagent::host::{HostError, HostTools, SystemTools};
use zstack_tests::*;

const HOST: &str = "zshb-host";
const PEER: &str = "zshb-peer";

struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        for ns in [HOST, PEER] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// The host's tools, run inside the host's namespace.
struct InHost;

impl HostTools for InHost {
    fn run(&self, program: &str, args: &[&str]) -> Result<String, HostError> {
        let mut all = vec!["netns", "exec", HOST, program];
        all.extend_from_slice(args);
        SystemTools.run("ip", &all)
    }
}

fn sh(args: &[&str]) -> String {
    ok(Command::new(args[0]).args(&args[1..]))
}

fn in_host(args: &[&str]) -> String {
    let mut all = vec!["ip", "netns", "exec", HOST];
    all.extend_from_slice(args);
    sh(&all)
}

#[test]
#[ignore = "needs root: run by make test"]
fn the_hosts_own_interface_joins_its_bridge_with_its_address_and_routes() {
    require_root();
    let _cleanup = Cleanup;
    sh(&["ip", "netns", "add", HOST]);
    sh(&["ip", "netns", "add", PEER]);
    // eth0: the host's one NIC, its address and default route towards the management node.
    sh(&[
        "ip", "link", "add", "zshbh0", "netns", HOST, "type", "veth", "peer", "name", "zshbp0",
        "netns", PEER,
    ]);
    in_host(&["ip", "link", "set", "zshbh0", "name", "eth0"]);
    in_host(&["ip", "link", "set", "lo", "up"]);
    in_host(&["ip", "link", "set", "eth0", "up"]);
    in_host(&["ip", "addr", "add", "10.79.0.2/24", "dev", "eth0"]);
    in_host(&["ip", "route", "add", "default", "via", "10.79.0.1"]);
    sh(&["ip", "-n", PEER, "link", "set", "lo", "up"]);
    sh(&["ip", "-n", PEER, "link", "set", "zshbp0", "up"]);
    sh(&[
        "ip",
        "-n",
        PEER,
        "addr",
        "add",
        "10.79.0.1/24",
        "dev",
        "zshbp0",
    ]);
    // Reached only through the host's default route.
    sh(&["ip", "-n", PEER, "addr", "add", "10.80.0.1/32", "dev", "lo"]);
    // eth1: up with only its IPv6 link-local address (what two real hosts had).
    sh(&[
        "ip", "link", "add", "zshbh1", "netns", HOST, "type", "veth", "peer", "name", "zshbp1",
        "netns", PEER,
    ]);
    in_host(&["ip", "link", "set", "zshbh1", "name", "eth1"]);
    in_host(&["ip", "link", "set", "eth1", "up"]);
    sh(&["ip", "-n", PEER, "link", "set", "zshbp1", "up"]);
    wait_until(
        "eth1's IPv6 link-local address",
        Duration::from_secs(10),
        || in_host(&["ip", "-o", "-6", "addr", "show", "dev", "eth1"]).contains("fe80::"),
    );
    let ping = |ns: &str, to: &str| {
        run(Command::new("ip").args(["netns", "exec", ns, "ping", "-c", "1", "-W", "1", to]))
            .status
            .success()
    };
    assert!(ping(PEER, "10.79.0.2"));
    assert!(ping(HOST, "10.80.0.1"));

    // The management node pings the host all along: 150 pings, 20 ms apart (3 s).
    let pinger = Command::new("ip")
        .args([
            "netns",
            "exec",
            PEER,
            "ping",
            "-q",
            "-c",
            "150",
            "-i",
            "0.02",
            "-W",
            "1",
            "10.79.0.2",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let made = ensure_bridge(&InHost, "eth0").unwrap();
    let pings = pinger.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&pings.stdout).into_owned();
    assert_eq!(made.name, "br_eth0");
    assert_eq!(made.moved_addresses, vec!["10.79.0.2/24".to_string()]);
    let received: u32 = summary
        .split(',')
        .find_map(|p| p.trim().strip_suffix(" received"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no ping summary: {summary}"));
    assert!(
        received >= 145,
        "the host lost its connection while its address moved:\n{summary}"
    );

    // After: the address and the default route are the bridge's, eth0 is its port.
    let br = in_host(&["ip", "-o", "-4", "addr", "show", "dev", "br_eth0"]);
    assert!(br.contains(" 10.79.0.2/24 "), "{br}");
    let eth0 = in_host(&["ip", "-o", "-4", "addr", "show", "dev", "eth0"]);
    assert!(eth0.trim().is_empty(), "eth0 kept {eth0}");
    assert!(in_host(&["ip", "-o", "link", "show", "dev", "eth0"]).contains("master br_eth0"));
    let default = in_host(&["ip", "route", "show", "default"]);
    assert!(default.contains("via 10.79.0.1 dev br_eth0"), "{default}");
    assert!(ping(PEER, "10.79.0.2"));
    assert!(ping(HOST, "10.80.0.1"));
    // Again: nothing changes.
    let again = ensure_bridge(&InHost, "eth0").unwrap();
    assert!(!again.created && again.moved_addresses.is_empty() && again.enslaved.is_none());

    // An interface with only its link-local address joins its bridge as it is.
    let made = ensure_bridge(&InHost, "eth1").unwrap();
    assert_eq!(made.enslaved.as_deref(), Some("eth1"));
    assert!(made.moved_addresses.is_empty());
    assert!(in_host(&["ip", "-o", "link", "show", "dev", "eth1"]).contains("master br_eth1"));
}

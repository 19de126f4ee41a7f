//! IP allocation through the API (VIPs and VM NICs take their addresses from the allocator):
//! addresses come from the L3's ranges, never the gateway, never one handed out already; a full
//! L3 answers NO_CAPACITY and leaves nothing behind; a released address is taken again; a range
//! holding its network's network or broadcast address is refused.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashSet;

use serde_json::{json, Value};
use support::cloud::Cloud;

/// A cloud with one L3 (no service, so no DHCP server address) and no range yet.
fn cloud_with_l3() -> (Cloud, String) {
    let cloud = Cloud::new();
    let cluster = cloud.cluster("c1");
    cloud.host(&cluster, "192.0.2.1", 32, "64G");
    cloud.storage("ps", &[&cluster]);
    let l2 = cloud.l2("l2", &[&cluster]);
    let l3 = cloud.l3("l3", &l2);
    (cloud, l3)
}

fn vip(cloud: &Cloud, l3: &str, required: Option<&str>) -> Result<Value, Value> {
    let mut params = json!({"name": "vip", "l3NetworkUuid": l3});
    if let Some(ip) = required {
        params["requiredIp"] = json!(ip);
    }
    let a = cloud.call("CreateVip", params);
    if a.status == 200 {
        Ok(a.body["inventory"].clone())
    } else {
        Err(json!({"status": a.status, "error": a.body["error"]}))
    }
}

fn ip_of(v: &Value) -> String {
    v["ip"].as_str().unwrap().to_string()
}

#[test]
fn every_address_of_the_ranges_but_the_gateway_is_handed_out_once() {
    let (cloud, l3) = cloud_with_l3();
    // The gateway inside the first range; the second range is elsewhere in the /24.
    cloud.ip_range(&l3, "10.0.0.1", "10.0.0.4", "10.0.0.1");
    cloud.ip_range(&l3, "10.0.0.200", "10.0.0.201", "10.0.0.1");
    let mut got = HashSet::new();
    for _ in 0..5 {
        let ip = ip_of(&vip(&cloud, &l3, None).unwrap());
        assert!(got.insert(ip.clone()), "{ip} handed out twice");
    }
    let expected: HashSet<String> = [
        "10.0.0.2",
        "10.0.0.3",
        "10.0.0.4",
        "10.0.0.200",
        "10.0.0.201",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(got, expected);

    // Full: refused on the L3, and no VIP row is left behind.
    let e = vip(&cloud, &l3, None).unwrap_err();
    assert_eq!(e["status"], 409, "{e}");
    assert_eq!(e["error"]["code"], "NO_CAPACITY", "{e}");
    assert_eq!(e["error"]["field"], "l3NetworkUuid");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("add an IP range"),
        "{e}"
    );
    assert_eq!(
        cloud.ok("QueryVip", json!({}))["inventories"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
}

#[test]
fn the_gateway_and_an_address_in_use_or_outside_the_ranges_cannot_be_asked_for() {
    let (cloud, l3) = cloud_with_l3();
    cloud.ip_range(&l3, "10.0.0.1", "10.0.0.20", "10.0.0.1");
    let taken = ip_of(&vip(&cloud, &l3, Some("10.0.0.7")).unwrap());
    assert_eq!(taken, "10.0.0.7");
    for (ip, says) in [
        ("10.0.0.7", "already in use"),
        ("10.0.0.1", "already in use"),
        ("10.0.0.21", "in no IP range"),
        ("10.9.9.9", "in no IP range"),
    ] {
        let e = vip(&cloud, &l3, Some(ip)).unwrap_err();
        assert_eq!(e["status"], 400, "{ip}: {e}");
        assert_eq!(e["error"]["field"], "requiredIp", "{ip}");
        assert!(
            e["error"]["message"].as_str().unwrap().contains(says),
            "{ip}: {e}"
        );
    }
}

#[test]
fn a_released_address_is_handed_out_again() {
    let (cloud, l3) = cloud_with_l3();
    cloud.ip_range(&l3, "10.0.0.10", "10.0.0.11", "10.0.0.1");
    let a = vip(&cloud, &l3, None).unwrap();
    let b = vip(&cloud, &l3, None).unwrap();
    assert_eq!(
        vip(&cloud, &l3, None).unwrap_err()["error"]["code"],
        "NO_CAPACITY"
    );
    cloud.ok("DeleteVip", json!({"uuid": a["uuid"]}));
    let again = vip(&cloud, &l3, None).unwrap();
    assert_eq!(ip_of(&again), ip_of(&a), "the only free address");
    assert_ne!(ip_of(&again), ip_of(&b));

    // A destroyed VM's address too: the VM takes the last one, then gives it back.
    cloud.ok("DeleteVip", json!({"uuid": again["uuid"]}));
    let vm = cloud.vm("vm", &[&l3], json!({}));
    assert_eq!(vm["vmNics"][0]["ip"], ip_of(&a).as_str());
    assert_eq!(
        vip(&cloud, &l3, None).unwrap_err()["error"]["code"],
        "NO_CAPACITY"
    );
    let e = cloud.create_vm("no-room", &[&l3], json!({})).unwrap_err();
    assert_eq!(e["code"], "NO_CAPACITY", "{e}");
    assert_eq!(e["field"], "l3NetworkUuid", "{e}");
    cloud.ok("DestroyVmInstance", json!({"uuid": vm["uuid"]}));
    assert_eq!(ip_of(&vip(&cloud, &l3, None).unwrap()), ip_of(&a));
}

#[test]
fn a_range_with_its_network_or_broadcast_address_or_outside_the_gateways_network_is_refused() {
    let (cloud, l3) = cloud_with_l3();
    let add = |start: &str, end: &str, mask: &str| {
        cloud.call(
            "AddIpRange",
            json!({"l3NetworkUuid": l3, "name": "r", "startIp": start, "endIp": end,
                   "netmask": mask, "gateway": "10.0.0.1"}),
        )
    };
    for (start, end, mask, field, says) in [
        (
            "10.0.0.0",
            "10.0.0.9",
            "255.255.255.0",
            "startIp",
            "network or broadcast",
        ),
        (
            "10.0.0.200",
            "10.0.0.255",
            "255.255.255.0",
            "endIp",
            "network or broadcast",
        ),
        (
            "10.0.1.2",
            "10.0.1.9",
            "255.255.255.0",
            "startIp",
            "not in the gateway's network",
        ),
        (
            "10.0.0.9",
            "10.0.0.2",
            "255.255.255.0",
            "endIp",
            "before startIp",
        ),
        (
            "10.0.0.2",
            "10.0.0.9",
            "255.0.255.0",
            "netmask",
            "not a netmask",
        ),
        (
            "10.0.0.2",
            "10.0.0.2",
            "255.255.255.254",
            "netmask",
            "between /8 and /30",
        ),
    ] {
        let a = add(start, end, mask);
        assert_eq!(a.status, 400, "{start}-{end}/{mask}: {}", a.body);
        assert_eq!(a.error_field(), Some(field), "{start}-{end}/{mask}");
        assert!(
            a.message().contains(says),
            "{start}-{end}/{mask}: {}",
            a.message()
        );
    }
    assert_eq!(add("10.0.0.2", "10.0.0.9", "255.255.255.0").status, 200);
    let overlap = add("10.0.0.9", "10.0.0.20", "255.255.255.0");
    assert_eq!(overlap.status, 400);
    assert!(
        overlap.message().contains("overlaps"),
        "{}",
        overlap.message()
    );
    assert_eq!(
        cloud.ok("QueryIpRange", json!({}))["inventories"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

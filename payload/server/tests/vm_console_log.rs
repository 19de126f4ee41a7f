//! GetVmConsoleLog on a node with a simulator host: the host's answer in bounded pieces from an
//! offset (the simulator's own log, labelled as such), a restart when the offset is past the
//! end, and a clear refusal for a VM on no host.
#![allow(clippy::unwrap_used)]

mod support;

use serde_json::json;
use support::cloud::Cloud;

#[test]
fn a_vms_console_log_is_read_from_its_host_from_an_offset() {
    let cloud = Cloud::new();
    let cluster = cloud.cluster("c1");
    let host = cloud.host(&cluster, "192.0.2.1", 4, "4G");
    cloud.storage("ps", &[&cluster]);
    let l3 = cloud.l3("l3", &cloud.l2("l2", &[&cluster]));
    cloud.ip_range(&l3, "10.0.0.10", "10.0.0.50", "10.0.0.1");
    let vm = cloud.vm("web", &[&l3], json!({}));
    let vm = vm["uuid"].as_str().unwrap().to_string();

    let log = &cloud.ok("GetVmConsoleLog", json!({"uuid": vm}))["inventory"];
    let text = log["text"].as_str().unwrap().to_string();
    assert!(
        text.contains(&format!("VM {vm} booted (simulated)")),
        "{text}"
    );
    assert!(
        text.contains("written by the simulator, not by a guest"),
        "{text}"
    );
    assert_eq!(log["source"], format!("simulator host {host}"));
    assert_eq!(log["hostUuid"], host);
    assert_eq!(log["vmInstanceUuid"], vm);
    assert_eq!(log["offset"], 0);
    assert_eq!(log["nextOffset"], text.len());
    assert_eq!(log["size"], text.len());
    assert_eq!(log["restarted"], false);

    // From an offset: the rest only; from the end: nothing new.
    let rest = &cloud.ok("GetVmConsoleLog", json!({"uuid": vm, "offset": 10}))["inventory"];
    assert_eq!(rest["text"].as_str().unwrap(), &text[10..]);
    assert_eq!(rest["offset"], 10);
    let end = &cloud.ok(
        "GetVmConsoleLog",
        json!({"uuid": vm, "offset": text.len().to_string()}),
    )["inventory"];
    assert_eq!(
        (end["text"].as_str(), &end["nextOffset"]),
        (Some(""), &json!(text.len()))
    );
    // Past the end (the log was truncated or rotated): again from 0, said so.
    let again = &cloud.ok("GetVmConsoleLog", json!({"uuid": vm, "offset": 1_000_000}))["inventory"];
    assert_eq!(again["restarted"], true);
    assert_eq!(again["offset"], 0);
    assert_eq!(again["text"].as_str().unwrap(), text);

    let bad = cloud.call("GetVmConsoleLog", json!({"uuid": vm, "offset": -1}));
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_eq!(bad.error_field(), Some("offset"));
    let unknown = cloud.call("GetVmConsoleLog", json!({"uuid": "0".repeat(32)}));
    assert_eq!(unknown.status, 404, "{}", unknown.body);

    // A stopped VM's log stays on its last host.
    cloud.ok("StopVmInstance", json!({"uuid": vm, "type": "cold"}));
    let stopped = &cloud.ok("GetVmConsoleLog", json!({"uuid": vm}))["inventory"];
    assert!(stopped["text"]
        .as_str()
        .unwrap()
        .contains("is stopped on this simulator host"));
    assert_eq!(stopped["hostUuid"], host);

    // Its host deleted, the VM is on no host: refused, saying why and what to do.
    cloud.ok("DeleteHost", json!({"uuid": host}));
    let homeless = cloud.call("GetVmConsoleLog", json!({"uuid": vm}));
    assert_eq!(homeless.status, 409, "{}", homeless.body);
    assert_eq!(homeless.error_field(), Some("uuid"));
    assert!(
        homeless.message().contains("is on no host"),
        "{}",
        homeless.message()
    );
    assert!(
        homeless.message().contains("StartVmInstance"),
        "{}",
        homeless.message()
    );
}

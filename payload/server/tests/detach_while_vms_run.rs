//! An L2 network or primary storage is not detached from a cluster while VMs of that cluster
//! that are on a host still use it: 409 RESOURCE_IN_USE naming how many and what to do, and the
//! attachment is kept. Once the VMs are stopped the detach goes through.
#![allow(clippy::unwrap_used)]

mod support;

use serde_json::json;
use support::cloud::Cloud;

#[test]
fn running_vms_keep_their_l2_network_and_primary_storage_attached() {
    let cloud = Cloud::new();
    let cluster = cloud.cluster("c1");
    cloud.host(&cluster, "192.0.2.1", 8, "16G");
    let ps = cloud.storage("ps", &[&cluster]);
    let l2 = cloud.l2("l2", &[&cluster]);
    let l3 = cloud.l3("l3", &l2);
    cloud.ip_range(&l3, "10.0.0.10", "10.0.0.20", "10.0.0.1");
    let vms: Vec<String> = ["vm1", "vm2"]
        .iter()
        .map(|name| {
            cloud.vm(name, &[&l3], json!({}))["uuid"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();

    let refusals = [
        (
            "DetachL2NetworkFromCluster",
            json!({"l2NetworkUuid": l2, "clusterUuid": cluster}),
            "l2NetworkUuid",
            format!("2 VM(s) of cluster {cluster} use L2 network {l2}; stop them first"),
        ),
        (
            "DetachPrimaryStorageFromCluster",
            json!({"primaryStorageUuid": ps, "clusterUuid": cluster}),
            "primaryStorageUuid",
            format!("2 VM(s) of cluster {cluster} run from primary storage {ps}; stop them first"),
        ),
    ];
    for (call, params, field, message) in &refusals {
        let a = cloud.call(call, params.clone());
        assert_eq!(a.status, 409, "{call}: {}", a.body);
        assert_eq!(a.body["error"]["code"], "RESOURCE_IN_USE", "{call}");
        assert_eq!(a.error_field(), Some(*field), "{call}");
        assert_eq!(a.message(), message, "{call}");
    }
    let l2_now = &cloud.ok("QueryL2Network", json!({}))["inventories"][0];
    assert_eq!(l2_now["attachedClusterUuids"], json!([cluster]));
    let ps_now = &cloud.ok("QueryPrimaryStorage", json!({}))["inventories"][0];
    assert_eq!(ps_now["attachedClusterUuids"], json!([cluster]));

    // One VM stopped: the other still holds both.
    cloud.ok("StopVmInstance", json!({"uuid": vms[0]}));
    for (call, params, _, _) in &refusals {
        let a = cloud.call(call, params.clone());
        assert_eq!(a.status, 409, "{call} with one VM running: {}", a.body);
        assert!(
            a.message().starts_with("1 VM(s)"),
            "{call}: {}",
            a.message()
        );
    }
    // Both stopped: the detaches go through.
    cloud.ok("StopVmInstance", json!({"uuid": vms[1]}));
    for (call, params, _, _) in &refusals {
        cloud.ok(call, params.clone());
    }
    assert_eq!(
        cloud.ok("QueryL2Network", json!({}))["inventories"][0]["attachedClusterUuids"],
        json!([])
    );
    assert_eq!(
        cloud.ok("QueryPrimaryStorage", json!({}))["inventories"][0]["attachedClusterUuids"],
        json!([])
    );
}

//! Where CreateVmInstance places a VM: on an enabled, connected host with the free CPUs and
//! memory, the one with the most free memory first, in a cluster attached to the L2 network of
//! each of its L3s and to primary storage with room for its root volume, within the cluster or
//! host asked for; and, when there is none, an answer saying which of these no host met.
#![allow(clippy::unwrap_used)]

mod support;

use serde_json::{json, Value};
use support::cloud::Cloud;

fn host_of(vm: &Value) -> String {
    vm["hostUuid"].as_str().unwrap().to_string()
}

/// The refusal of a creation that must find no host: NO_CAPACITY and its message.
fn no_host(cloud: &Cloud, l3s: &[&str], extra: Value) -> String {
    let e = cloud.create_vm("homeless", l3s, extra).unwrap_err();
    assert_eq!(e["code"], "NO_CAPACITY", "{e}");
    e["message"].as_str().unwrap().to_string()
}

#[test]
fn the_host_with_most_free_memory_is_chosen_and_hosts_without_room_are_skipped() {
    let cloud = Cloud::new();
    let cluster = cloud.cluster("c1");
    let many_cpus = cloud.host(&cluster, "192.0.2.1", 4, "2G");
    let much_memory = cloud.host(&cluster, "192.0.2.2", 1, "4G");
    cloud.storage("ps", &[&cluster]);
    let l3 = cloud.l3("l3", &cloud.l2("l2", &[&cluster]));
    cloud.ip_range(&l3, "10.0.0.10", "10.0.0.50", "10.0.0.1");

    let first = cloud.vm("first", &[&l3], json!({}));
    assert_eq!(host_of(&first), much_memory, "4G free against 2G");
    // much_memory has no CPU left: the other host, however much memory it has.
    let second = cloud.vm("second", &[&l3], json!({}));
    assert_eq!(host_of(&second), many_cpus);
    let third = cloud.vm("third", &[&l3], json!({}));
    assert_eq!(host_of(&third), many_cpus);
    // No host has 1 CPU and 1 GiB free any more.
    let why = no_host(&cloud, &[&l3], json!({}));
    assert!(
        why.contains("no connected host has 1 free CPU(s) and 1024 MiB free memory"),
        "{why}"
    );
    // Stopping a VM frees its host's CPU and memory for the next one.
    cloud.ok("StopVmInstance", json!({"uuid": first["uuid"]}));
    assert_eq!(host_of(&cloud.vm("fourth", &[&l3], json!({}))), much_memory);
}

#[test]
fn a_disabled_host_gets_no_new_vm() {
    let cloud = Cloud::new();
    let cluster = cloud.cluster("c1");
    let big = cloud.host(&cluster, "192.0.2.1", 8, "16G");
    let small = cloud.host(&cluster, "192.0.2.2", 8, "8G");
    cloud.storage("ps", &[&cluster]);
    let l3 = cloud.l3("l3", &cloud.l2("l2", &[&cluster]));
    cloud.ip_range(&l3, "10.0.0.10", "10.0.0.50", "10.0.0.1");
    cloud.ok(
        "ChangeHostState",
        json!({"uuid": big, "stateEvent": "disable"}),
    );
    assert_eq!(host_of(&cloud.vm("vm1", &[&l3], json!({}))), small);
    cloud.ok(
        "ChangeHostState",
        json!({"uuid": small, "stateEvent": "disable"}),
    );
    let why = no_host(&cloud, &[&l3], json!({}));
    assert!(why.contains("no enabled, connected host"), "{why}");
}

#[test]
fn only_clusters_attached_to_the_vms_l2_networks_are_used() {
    let cloud = Cloud::new();
    let roomy = cloud.cluster("roomy");
    let attached = cloud.cluster("attached");
    cloud.host(&roomy, "192.0.2.1", 8, "32G");
    let host = cloud.host(&attached, "192.0.2.2", 8, "4G");
    cloud.storage("ps", &[&roomy, &attached]);
    let l3 = cloud.l3("l3", &cloud.l2("l2", &[&attached]));
    cloud.ip_range(&l3, "10.0.0.10", "10.0.0.50", "10.0.0.1");
    // A second L3 whose L2 only the roomy cluster has: no cluster has both.
    let other = cloud.l3("other", &cloud.l2("other-l2", &[&roomy]));
    cloud.ip_range(&other, "10.0.1.10", "10.0.1.50", "10.0.1.1");

    assert_eq!(host_of(&cloud.vm("vm1", &[&l3], json!({}))), host);
    let why = no_host(&cloud, &[&l3], json!({"clusterUuid": roomy}));
    assert!(
        why.contains("none is in a cluster attached both to the L2 networks")
            && why.contains(&l3)
            && why.contains("AttachL2NetworkToCluster"),
        "{why}"
    );
    no_host(&cloud, &[&l3, &other], json!({}));
    // Nothing was left behind by the refusals: only vm1, and its address alone is used.
    let vms = cloud.ok("QueryVmInstance", json!({}))["inventories"].clone();
    assert_eq!(vms.as_array().unwrap().len(), 1, "{vms}");
}

#[test]
fn only_clusters_with_primary_storage_that_has_room_for_the_root_volume_are_used() {
    let cloud = Cloud::new();
    let cramped = cloud.cluster("cramped");
    let spacious = cloud.cluster("spacious");
    let bare = cloud.cluster("bare");
    // The image is 1 GiB: storage reporting 512 MiB cannot hold its root volume.
    let cramped_host = uuid_of_host(&cloud, &cramped, "192.0.2.1", "512M");
    let spacious_host = uuid_of_host(&cloud, &spacious, "192.0.2.2", "10G");
    cloud.host(&bare, "192.0.2.3", 32, "64G");
    cloud.storage("small", &[&cramped]);
    let big = cloud.storage("big", &[&spacious]);
    let l3 = cloud.l3("l3", &cloud.l2("l2", &[&cramped, &spacious, &bare]));
    cloud.ip_range(&l3, "10.0.0.10", "10.0.0.50", "10.0.0.1");

    let vm = cloud.vm("vm1", &[&l3], json!({}));
    assert_eq!(
        host_of(&vm),
        spacious_host,
        "not {cramped_host} nor the bare cluster's host"
    );
    assert_eq!(vm["allVolumes"][0]["primaryStorageUuid"], big.as_str());
    for cluster in [&cramped, &bare] {
        let why = no_host(&cloud, &[&l3], json!({"clusterUuid": cluster}));
        assert!(
            why.contains("primary storage with 1024 MiB free")
                && why.contains("AttachPrimaryStorageToCluster"),
            "{why}"
        );
    }
}

#[test]
fn a_cluster_or_host_asked_for_is_the_only_one_used() {
    let cloud = Cloud::new();
    let c1 = cloud.cluster("c1");
    let c2 = cloud.cluster("c2");
    let big = cloud.host(&c1, "192.0.2.1", 8, "32G");
    let small = cloud.host(&c2, "192.0.2.2", 8, "4G");
    let smaller = cloud.host(&c2, "192.0.2.3", 8, "2G");
    cloud.storage("ps", &[&c1, &c2]);
    let l3 = cloud.l3("l3", &cloud.l2("l2", &[&c1, &c2]));
    cloud.ip_range(&l3, "10.0.0.10", "10.0.0.50", "10.0.0.1");

    assert_eq!(host_of(&cloud.vm("anywhere", &[&l3], json!({}))), big);
    let in_c2 = cloud.vm("in-c2", &[&l3], json!({"clusterUuid": c2}));
    assert_eq!(host_of(&in_c2), small);
    assert_eq!(in_c2["clusterUuid"], c2.as_str());
    let on_smaller = cloud.vm("on-smaller", &[&l3], json!({"hostUuid": smaller}));
    assert_eq!(host_of(&on_smaller), smaller);
    // The host asked for is full (2G, 1G used, 1G left, then none): no other host is taken.
    cloud.vm("fills-smaller", &[&l3], json!({"hostUuid": smaller}));
    let why = no_host(&cloud, &[&l3], json!({"hostUuid": smaller}));
    assert!(why.contains("1024 MiB free memory"), "{why}");
}

/// A simulator host of 8 CPUs and 16G whose shared mount points report `storage`.
fn uuid_of_host(cloud: &Cloud, cluster: &str, ip: &str, storage: &str) -> String {
    support::cloud::uuid(&cloud.ok(
        "AddSimulatorHost",
        json!({"name": format!("host-{ip}"), "managementIp": ip, "clusterUuid": cluster,
               "cpuCapacity": 8, "memoryCapacity": "16G", "storageCapacity": storage}),
    ))
}

//! A cloud of simulator hosts built through zstack-cli on an installed stack: what the API
//! flow tests start from.
#![allow(clippy::unwrap_used)] // test helpers: a panic is a failed test

use std::path::Path;

use serde_json::{json, Value};

use crate::cli::*;

/// Zone, simulator cluster with `hosts` hosts, SMP storage, backup storage with an image, an
/// offering, a private L3 (flat DHCP/Userdata/Eip, the range given) and a public L3.
pub struct Cloud {
    pub zone: String,
    pub cluster: String,
    pub hosts: Vec<String>,
    pub image: String,
    pub offering: String,
    pub private_l3: String,
    pub public_l3: String,
    _bs_dir: tempfile::TempDir,
}

pub fn build_cloud(cli: &Cli, hosts: usize, range: (&str, &str)) -> Cloud {
    let zone = cli.uuid(&["CreateZone", "name=zone1", "description=first zone"]);
    let cluster = cli.uuid(&[
        "CreateCluster",
        "name=cluster1",
        &format!("zoneUuid={zone}"),
        "hypervisorType=Simulator",
    ]);
    let hosts: Vec<String> = (0..hosts)
        .map(|i| {
            let h = cli.inv(&[
                "AddSimulatorHost",
                &format!("name=sim{i}"),
                &format!("managementIp=192.0.2.{}", i + 1),
                &format!("clusterUuid={cluster}"),
                "cpuCapacity=16",
                "memoryCapacity=32G",
            ]);
            assert_eq!(h["status"], "Connected", "{h}");
            assert_eq!(h["totalCpuCapacity"], 16);
            assert_eq!(h["availableMemoryCapacity"], 32i64 << 30);
            h["uuid"].as_str().unwrap().to_string()
        })
        .collect();
    let ps = cli.uuid(&[
        "AddSharedMountPointPrimaryStorage",
        "name=smp1",
        "url=/zstack_ps",
        &format!("zoneUuid={zone}"),
    ]);
    let attached = cli.inv(&[
        "AttachPrimaryStorageToCluster",
        &format!("primaryStorageUuid={ps}"),
        &format!("clusterUuid={cluster}"),
    ]);
    assert_eq!(attached["attachedClusterUuids"], json!([cluster]));
    assert_eq!(attached["totalCapacity"], 10i64 << 40, "{attached}");

    let bs_dir = tempfile::tempdir().unwrap();
    // The management node runs as the user zstack: its backup storage directory is its own.
    crate::give_to_server_user(&bs_dir.path().join("bs"));
    let bs = cli.uuid(&[
        "AddLocalBackupStorage",
        "name=bs1",
        &format!("url={}", bs_dir.path().join("bs").display()),
    ]);
    cli.ok(&[
        "AttachBackupStorageToZone",
        &format!("backupStorageUuid={bs}"),
        &format!("zoneUuid={zone}"),
    ]);
    // A local file is taken from the backup storage itself (or a directory listed in
    // image.sourceDirectories).
    let file = qcow2(&bs_dir.path().join("bs"), "1G");
    let image = cli.inv(&[
        "AddImage",
        "name=debian",
        &format!("url=file://{}", file.display()),
        &format!("backupStorageUuids={bs}"),
        "format=qcow2",
    ]);
    assert_eq!(image["status"], "Ready");
    assert_eq!(image["size"], 1i64 << 30, "the virtual size of the qcow2");
    assert_eq!(image["sha256Sum"], sha256_hex(&file));
    assert!(Path::new(image["installPath"].as_str().unwrap()).is_file());

    let offering = cli.uuid(&[
        "CreateInstanceOffering",
        "name=small",
        "cpuNum=1",
        "memorySize=1G",
    ]);

    let flat = cli.list(&["QueryNetworkServiceProvider", "type=Flat"]);
    assert_eq!(flat.len(), 1);
    assert_eq!(
        flat[0]["networkServiceTypes"],
        json!(["DHCP", "Userdata", "Eip"])
    );
    let flat = flat[0]["uuid"].as_str().unwrap().to_string();

    let mut l3s = Vec::new();
    for (name, iface, start, end, gw) in [
        ("private", "eth0", range.0, range.1, "10.10.0.1"),
        ("public", "eth1", "172.20.0.10", "172.20.0.50", "172.20.0.1"),
    ] {
        let l2 = cli.uuid(&[
            "CreateL2NoVlanNetwork",
            &format!("name={name}-l2"),
            &format!("zoneUuid={zone}"),
            &format!("physicalInterface={iface}"),
        ]);
        cli.ok(&[
            "AttachL2NetworkToCluster",
            &format!("l2NetworkUuid={l2}"),
            &format!("clusterUuid={cluster}"),
        ]);
        let l3 = cli.uuid(&[
            "CreateL3Network",
            &format!("name={name}"),
            &format!("l2NetworkUuid={l2}"),
        ]);
        let mask = if name == "private" {
            "255.255.0.0"
        } else {
            "255.255.255.0"
        };
        cli.ok(&[
            "AddIpRange",
            &format!("l3NetworkUuid={l3}"),
            &format!("name={name}-range"),
            &format!("startIp={start}"),
            &format!("endIp={end}"),
            &format!("netmask={mask}"),
            &format!("gateway={gw}"),
        ]);
        l3s.push(l3);
    }
    let services = json!({ &flat: ["DHCP", "Userdata", "Eip"] }).to_string();
    let l3 = cli.inv(&[
        "AttachNetworkServiceToL3Network",
        &format!("l3NetworkUuid={}", l3s[0]),
        &format!("networkServices={services}"),
    ]);
    assert_eq!(l3["networkServices"].as_array().unwrap().len(), 3, "{l3}");
    assert_eq!(l3["ipRanges"].as_array().unwrap().len(), 1);
    Cloud {
        zone,
        cluster,
        hosts,
        image: image["uuid"].as_str().unwrap().to_string(),
        offering,
        private_l3: l3s[0].clone(),
        public_l3: l3s[1].clone(),
        _bs_dir: bs_dir,
    }
}

pub fn create_vm(cli: &Cli, c: &Cloud, name: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "CreateVmInstance".to_string(),
        format!("name={name}"),
        format!("instanceOfferingUuid={}", c.offering),
        format!("imageUuid={}", c.image),
        format!("l3NetworkUuids={}", c.private_l3),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    cli.inv(&refs)
}

pub fn names(list: &[Value]) -> Vec<String> {
    let mut n: Vec<String> = list
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    n.sort();
    n
}

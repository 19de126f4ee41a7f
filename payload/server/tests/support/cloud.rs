//! A small cloud of simulator hosts built through the API of an in-process node: what the
//! placement, IP allocation and detach tests start from.
#![allow(clippy::unwrap_used, dead_code)] // test code: a panic is a failed test

use serde_json::{json, Value};

use super::{Answer, TestNode};

/// A zone with one image, one offering (1 CPU, 1 GiB) and what each test adds with the builders
/// below; every builder answers the new resource's uuid.
pub struct Cloud {
    pub node: TestNode,
    pub session: String,
    pub zone: String,
    pub image: String,
    pub offering: String,
}

impl Cloud {
    pub fn new() -> Cloud {
        let node = TestNode::start();
        let session = node.admin_session();
        let zone = uuid(&node.ok("CreateZone", &session, json!({"name": "zone"})));
        let bs_dir = node.dir.path().join("bs");
        let bs = uuid(&node.ok(
            "AddLocalBackupStorage",
            &session,
            json!({"name": "bs", "url": bs_dir.display().to_string()}),
        ));
        node.ok(
            "AttachBackupStorageToZone",
            &session,
            json!({"backupStorageUuid": bs, "zoneUuid": zone}),
        );
        let file = bs_dir.join("root.qcow2");
        let made = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&file)
            .arg("1G")
            .status()
            .unwrap()
            .success();
        assert!(made, "qemu-img create failed");
        let image = uuid(&node.ok(
            "AddImage",
            &session,
            json!({"name": "root", "url": file.display().to_string(), "backupStorageUuids": [bs],
                   "format": "qcow2"}),
        ));
        let offering = uuid(&node.ok(
            "CreateInstanceOffering",
            &session,
            json!({"name": "small", "cpuNum": 1, "memorySize": "1G"}),
        ));
        Cloud {
            node,
            session,
            zone,
            image,
            offering,
        }
    }

    pub fn ok(&self, name: &str, params: Value) -> Value {
        self.node.ok(name, &self.session, params)
    }

    pub fn call(&self, name: &str, params: Value) -> Answer {
        self.node.call(name, Some(&self.session), params)
    }

    pub fn cluster(&self, name: &str) -> String {
        uuid(&self.ok(
            "CreateCluster",
            json!({"name": name, "zoneUuid": self.zone, "hypervisorType": "Simulator"}),
        ))
    }

    /// A simulator host of `cpus` CPUs and `memory` (bytes or with a unit) in `cluster`.
    pub fn host(&self, cluster: &str, ip: &str, cpus: i64, memory: &str) -> String {
        uuid(&self.ok(
            "AddSimulatorHost",
            json!({"name": format!("host-{ip}"), "managementIp": ip, "clusterUuid": cluster,
                   "cpuCapacity": cpus, "memoryCapacity": memory}),
        ))
    }

    /// Shared mount point storage (a directory of the test's own) attached to `clusters`.
    pub fn storage(&self, name: &str, clusters: &[&str]) -> String {
        let dir = self.node.dir.path().join(name);
        let ps = uuid(&self.ok(
            "AddSharedMountPointPrimaryStorage",
            json!({"name": name, "url": dir.display().to_string(), "zoneUuid": self.zone}),
        ));
        for cluster in clusters {
            self.ok(
                "AttachPrimaryStorageToCluster",
                json!({"primaryStorageUuid": ps, "clusterUuid": cluster}),
            );
        }
        ps
    }

    /// An L2 network attached to `clusters`.
    pub fn l2(&self, name: &str, clusters: &[&str]) -> String {
        let l2 = uuid(&self.ok(
            "CreateL2NoVlanNetwork",
            json!({"name": name, "zoneUuid": self.zone, "physicalInterface": "eth0"}),
        ));
        for cluster in clusters {
            self.ok(
                "AttachL2NetworkToCluster",
                json!({"l2NetworkUuid": l2, "clusterUuid": cluster}),
            );
        }
        l2
    }

    /// An L3 network on `l2` with no service and no IP range.
    pub fn l3(&self, name: &str, l2: &str) -> String {
        uuid(&self.ok(
            "CreateL3Network",
            json!({"name": name, "l2NetworkUuid": l2}),
        ))
    }

    /// An IP range `start`-`end` of `l3` in a /24 whose gateway is `gateway`.
    pub fn ip_range(&self, l3: &str, start: &str, end: &str, gateway: &str) -> String {
        uuid(&self.ok(
            "AddIpRange",
            json!({"l3NetworkUuid": l3, "name": format!("{start}-{end}"), "startIp": start,
                   "endIp": end, "netmask": "255.255.255.0", "gateway": gateway}),
        ))
    }

    /// CreateVmInstance with the cloud's image and offering on `l3s`, plus `extra` parameters:
    /// the call's answer (the job's outcome when it was accepted).
    pub fn create_vm(&self, name: &str, l3s: &[&str], extra: Value) -> Result<Value, Value> {
        let mut params = json!({"name": name, "imageUuid": self.image,
                                "instanceOfferingUuid": self.offering, "l3NetworkUuids": l3s});
        params
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let a = self.call("CreateVmInstance", params);
        if a.status != 202 {
            return Err(a.body["error"].clone());
        }
        let job = self
            .node
            .job(&self.session, a.body["jobUuid"].as_str().unwrap());
        if job["state"] == "Succeeded" {
            Ok(job["result"]["inventory"].clone())
        } else {
            Err(job["error"].clone())
        }
    }

    /// A VM that must be created: its inventory.
    pub fn vm(&self, name: &str, l3s: &[&str], extra: Value) -> Value {
        self.create_vm(name, l3s, extra)
            .unwrap_or_else(|e| panic!("CreateVmInstance {name}: {e}"))
    }
}

/// The uuid of the inventory an answer carries.
pub fn uuid(answer: &Value) -> String {
    answer["inventory"]["uuid"]
        .as_str()
        .unwrap_or_else(|| panic!("no inventory uuid in {answer}"))
        .to_string()
}

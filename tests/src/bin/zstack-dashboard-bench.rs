//! The dashboard with many VMs (run by `make bench` through scripts/bench-dashboard.sh, against a
//! stack installed on this host): makes `--vms` VMs on simulator hosts through the API, then
//! loads the VM list and the overview in headless Chromium and prints, for each, the median of
//! `--runs` loads: the server's time to the first byte, the time to first contentful paint (the
//! first render), and the bytes sent (the page, its script and stylesheet).
#![allow(clippy::unwrap_used)] // a benchmark: a panic is a failed run

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use zstack_tests::webdriver::Browser;

struct Api {
    base: String,
    session: String,
    agent: ureq::Agent,
}

impl Api {
    fn call(&self, call: &str, params: Value) -> Value {
        let r = self
            .agent
            .post(&format!("{}/v1/api/{call}", self.base))
            .set("Authorization", &format!("OAuth {}", self.session))
            .send_json(params)
            .unwrap_or_else(|e| panic!("{call}: {e}"));
        let status = r.status();
        let v: Value = r.into_json().unwrap();
        if status != 202 {
            return v;
        }
        let job = v["jobUuid"].as_str().unwrap().to_string();
        loop {
            let j: Value = self
                .agent
                .get(&format!("{}/v1/api-jobs/{job}?wait=60", self.base))
                .set("Authorization", &format!("OAuth {}", self.session))
                .call()
                .unwrap()
                .into_json()
                .unwrap();
            match j["job"]["state"].as_str() {
                Some("Succeeded") => return j["job"]["result"].clone(),
                Some("Failed") => panic!("{call}: {}", j["job"]["error"]),
                _ => continue,
            }
        }
    }

    fn uuid(&self, call: &str, params: Value) -> String {
        self.call(call, params)["inventory"]["uuid"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// One load of `url` in a fresh tab state: (ttfb ms, first contentful paint ms, bytes).
fn load(b: &Browser, url: &str) -> (f64, f64, f64) {
    b.goto("about:blank");
    b.goto(url);
    b.find("main");
    // The paint entry comes a moment after the load; the DOM's readiness stands in without it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.js(
        "return performance.getEntriesByName('first-contentful-paint').length",
        json!([]),
    ) != json!(1)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let m = b.js(
        "const n = performance.getEntriesByType('navigation')[0];\
         const p = performance.getEntriesByName('first-contentful-paint')[0];\
         const fcp = p ? p.startTime : n.domContentLoadedEventEnd;\
         return [n.responseStart - n.requestStart, fcp, n.transferSize];",
        json!([]),
    );
    (
        m[0].as_f64().unwrap(),
        m[1].as_f64().unwrap(),
        m[2].as_f64().unwrap(),
    )
}

fn main() {
    let base = arg("--url", "http://127.0.0.1:8080");
    let dashboard = arg("--dashboard", "http://127.0.0.1:5000");
    let password = arg("--password", "");
    let vms: usize = arg("--vms", "10000").parse().unwrap();
    let hosts: usize = arg("--hosts", "100").parse().unwrap();
    let runs: usize = arg("--runs", "5").parse::<usize>().unwrap().max(2);
    let image_file = arg("--image", "");
    let bs_dir = arg("--backup-storage", "/tmp/zstack-bench-bs");
    let out = std::path::PathBuf::from(arg("--out", "/tmp"));

    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(120))
        .max_idle_connections_per_host(128)
        .build();
    let login: Value = agent
        .post(&format!("{base}/v1/api/LogInByAccount"))
        .send_json(json!({"accountName": "admin", "password": password}))
        .unwrap()
        .into_json()
        .unwrap();
    let api = Api {
        base,
        session: login["inventory"]["uuid"].as_str().unwrap().to_string(),
        agent,
    };

    let zone = api.uuid("CreateZone", json!({"name": "bench"}));
    let cluster = api.uuid(
        "CreateCluster",
        json!({"name": "sim", "zoneUuid": zone, "hypervisorType": "Simulator"}),
    );
    let per_host_cpu = (vms / hosts + 8).max(16);
    for i in 0..hosts {
        api.uuid(
            "AddSimulatorHost",
            json!({"name": format!("sim{i}"), "managementIp": format!("10.255.{}.{}", i / 250, i % 250 + 1),
                   "clusterUuid": cluster, "cpuCapacity": per_host_cpu.to_string(),
                   "memoryCapacity": format!("{}G", per_host_cpu * 2)}),
        );
    }
    let ps = api.uuid(
        "AddSharedMountPointPrimaryStorage",
        json!({"name": "smp", "url": "/zstack_bench_ps", "zoneUuid": zone}),
    );
    // The management node runs as the user zstack: the directory is made its own.
    zstack_tests::give_to_server_user(std::path::Path::new(&bs_dir));
    api.call(
        "AttachPrimaryStorageToCluster",
        json!({"primaryStorageUuid": ps, "clusterUuid": cluster}),
    );
    let bs = api.uuid(
        "AddLocalBackupStorage",
        json!({"name": "bs", "url": bs_dir}),
    );
    api.call(
        "AttachBackupStorageToZone",
        json!({"backupStorageUuid": bs, "zoneUuid": zone}),
    );
    // A local file is taken from the backup storage itself.
    let source = std::path::Path::new(&bs_dir).join("bench-source.qcow2");
    std::fs::copy(&image_file, &source)
        .unwrap_or_else(|e| panic!("cannot copy {image_file} into {bs_dir}: {e}"));
    let image = api.uuid(
        "AddImage",
        json!({"name": "tiny", "url": source, "backupStorageUuids": bs, "format": "qcow2"}),
    );
    let offering = api.uuid(
        "CreateInstanceOffering",
        json!({"name": "1c1g", "cpuNum": 1, "memorySize": "1G"}),
    );
    let l2 = api.uuid(
        "CreateL2NoVlanNetwork",
        json!({"name": "l2", "zoneUuid": zone, "physicalInterface": "eth0"}),
    );
    api.call(
        "AttachL2NetworkToCluster",
        json!({"l2NetworkUuid": l2, "clusterUuid": cluster}),
    );
    let l3 = api.uuid(
        "CreateL3Network",
        json!({"name": "l3", "l2NetworkUuid": l2}),
    );
    api.call(
        "AddIpRange",
        json!({"l3NetworkUuid": l3, "name": "r", "startIp": "10.0.0.10", "endIp": "10.0.255.250",
               "netmask": "255.255.0.0", "gateway": "10.0.0.1"}),
    );
    let t0 = Instant::now();
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..64 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= vms {
                    return;
                }
                api.call(
                    "CreateVmInstance",
                    json!({"name": format!("vm{i:05}"), "instanceOfferingUuid": offering,
                           "imageUuid": image, "l3NetworkUuids": [l3]}),
                );
            });
        }
    });
    let total = api.call("QueryVmInstance", json!({"count": true}))["total"].clone();
    assert_eq!(total, json!(vms), "every VM was made");
    println!(
        "dashboard: {vms} VMs on {hosts} simulator hosts made in {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    let assets: usize = ["app.js", "app.css"]
        .iter()
        .map(|f| {
            ureq::get(&format!("{dashboard}/static/{f}"))
                .call()
                .unwrap()
                .into_string()
                .unwrap()
                .len()
        })
        .sum();
    let b = Browser::start(out.join("dashboard-bench-last-page.png"));
    b.goto(&format!("{dashboard}/login"));
    b.fill("#password", &password);
    b.click("#login");
    b.find("#counts");
    for (what, path) in [
        (
            "VM list (first page of 20, sorted by name)",
            "/r/vms?sort=name&dir=asc",
        ),
        (
            "VM list (filtered: name~=vm099%)",
            "/r/vms?q=name~%3Dvm099%25",
        ),
        ("overview", "/"),
    ] {
        let url = format!("{dashboard}{path}");
        let (mut ttfb, mut fcp, mut bytes) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            let (t, f, n) = load(&b, &url);
            ttfb.push(t);
            fcp.push(f);
            bytes.push(n);
        }
        println!(
            "dashboard: {what} with {vms} VMs: first render (first contentful paint) {:.0} ms, \
             server time to first byte {:.0} ms, {:.1} KiB sent (medians of {runs}; plus \
             {:.1} KiB of script and stylesheet once, then cached)",
            median(fcp),
            median(ttfb),
            median(bytes) / 1024.0,
            assets as f64 / 1024.0
        );
    }
}

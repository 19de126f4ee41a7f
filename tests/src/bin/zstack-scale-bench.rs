//! Scale of one management node (run by `make bench` through scripts/bench-scale.sh, against a
//! stack installed on this host): `--vms` CreateVmInstance calls on `--hosts` simulator hosts,
//! `--in-flight` jobs outstanding at a time, while a reader times QueryVmInstance. Prints the
//! throughput, the query latency percentiles and the server's memory, and checks every VM is
//! Running and no IP was handed out twice.
#![allow(clippy::unwrap_used)] // a benchmark: a panic is a failed run

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Api {
    base: String,
    session: String,
    agent: ureq::Agent,
}

impl Api {
    fn post(&self, call: &str, params: Value) -> Result<(u16, Value), String> {
        let r = self
            .agent
            .post(&format!("{}/v1/api/{call}", self.base))
            .set("Authorization", &format!("OAuth {}", self.session))
            .send_json(params);
        match r {
            Ok(resp) => Ok((resp.status(), resp.into_json().map_err(|e| e.to_string())?)),
            Err(ureq::Error::Status(s, resp)) => Err(format!(
                "{call}: HTTP {s}: {}",
                resp.into_string().unwrap_or_default()
            )),
            Err(e) => Err(format!("{call}: {e}")),
        }
    }

    /// A call; a job is waited for. Returns the result.
    fn call(&self, call: &str, params: Value) -> Result<Value, String> {
        let (status, v) = self.post(call, params)?;
        if status != 202 {
            return Ok(v);
        }
        let job = v["jobUuid"]
            .as_str()
            .ok_or("202 without jobUuid")?
            .to_string();
        self.wait(&job)
    }

    fn wait(&self, job: &str) -> Result<Value, String> {
        loop {
            let v: Value = self
                .agent
                .get(&format!("{}/v1/api-jobs/{job}?wait=60", self.base))
                .set("Authorization", &format!("OAuth {}", self.session))
                .call()
                .map_err(|e| format!("job {job}: {e}"))?
                .into_json()
                .map_err(|e| e.to_string())?;
            match v["job"]["state"].as_str() {
                Some("Succeeded") => return Ok(v["job"]["result"].clone()),
                Some("Failed") => return Err(format!("job {job} failed: {}", v["job"]["error"])),
                _ => continue,
            }
        }
    }

    fn uuid(&self, call: &str, params: Value) -> String {
        let v = self.call(call, params).unwrap_or_else(|e| panic!("{e}"));
        v["inventory"]["uuid"]
            .as_str()
            .unwrap_or_else(|| panic!("{call}: {v}"))
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

fn rss_kib(pid: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let base = arg("--url", "http://127.0.0.1:8080");
    let password = arg("--password", "");
    let vms: usize = arg("--vms", "10000").parse().unwrap();
    let hosts: usize = arg("--hosts", "100").parse().unwrap();
    let in_flight: usize = arg("--in-flight", "1000").parse().unwrap();
    let server_pid = arg("--server-pid", "");
    let image_file = arg("--image", "");
    let bs_dir = arg("--backup-storage", "/tmp/zstack-bench-bs");

    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(120))
        .max_idle_connections(in_flight + 16)
        .max_idle_connections_per_host(in_flight + 16)
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

    // The cloud: one zone, one simulator cluster of `hosts` hosts, SMP storage, an image, a /16.
    let t_setup = Instant::now();
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
    )
    .unwrap();
    let bs = api.uuid(
        "AddLocalBackupStorage",
        json!({"name": "bs", "url": bs_dir}),
    );
    api.call(
        "AttachBackupStorageToZone",
        json!({"backupStorageUuid": bs, "zoneUuid": zone}),
    )
    .unwrap();
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
    )
    .unwrap();
    let l3 = api.uuid(
        "CreateL3Network",
        json!({"name": "l3", "l2NetworkUuid": l2}),
    );
    api.call(
        "AddIpRange",
        json!({"l3NetworkUuid": l3, "name": "r", "startIp": "10.0.0.10", "endIp": "10.0.255.250",
               "netmask": "255.255.0.0", "gateway": "10.0.0.1"}),
    )
    .unwrap();
    let setup = t_setup.elapsed();

    // The storm: `in_flight` workers, each with one creation outstanding at a time.
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let storm_over = AtomicBool::new(false);
    let failures = Mutex::new(Vec::<String>::new());
    let create_latency = Mutex::new(Vec::<Duration>::with_capacity(vms));
    let query_latency = Mutex::new(Vec::<Duration>::new());
    let rss_peak = AtomicUsize::new(0);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..in_flight {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= vms {
                    return;
                }
                let t = Instant::now();
                let r = api.call(
                    "CreateVmInstance",
                    json!({"name": format!("vm{i}"), "instanceOfferingUuid": offering,
                           "imageUuid": image, "l3NetworkUuids": [l3]}),
                );
                create_latency.lock().unwrap().push(t.elapsed());
                match r {
                    Ok(_) => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failures.lock().unwrap().push(e),
                }
            });
        }
        // The reader: a QueryVmInstance by name of a VM made so far, timed, all through the storm.
        s.spawn(|| {
            let mut n: u64 = 0;
            while !storm_over.load(Ordering::Relaxed) {
                let made = done.load(Ordering::Relaxed).max(1);
                n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let t = Instant::now();
                let r = api.post(
                    "QueryVmInstance",
                    json!({"conditions": [{"name": "name", "op": "=", "value": format!("vm{}", (n >> 33) as usize % made)}]}),
                );
                let took = t.elapsed();
                if r.is_ok() {
                    query_latency.lock().unwrap().push(took);
                }
                if !server_pid.is_empty() {
                    rss_peak.fetch_max(rss_kib(&server_pid, "VmRSS:") as usize, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        // Ends the reader once the workers are done.
        s.spawn(|| {
            while done.load(Ordering::Relaxed) + failures.lock().unwrap().len() < vms {
                std::thread::sleep(Duration::from_millis(50));
            }
            storm_over.store(true, Ordering::Relaxed);
        });
    });
    let storm = t0.elapsed();

    let failures = failures.into_inner().unwrap();
    if !failures.is_empty() {
        eprintln!(
            "{} creation(s) failed; first: {}",
            failures.len(),
            failures[0]
        );
        std::process::exit(1);
    }
    // Every VM Running, no IP twice.
    let all = api
        .call(
            "QueryVmInstance",
            json!({"conditions": [{"name": "state", "op": "=", "value": "Running"}]}),
        )
        .unwrap();
    let list = all["inventories"].as_array().unwrap();
    let ips: HashSet<&str> = list
        .iter()
        .map(|v| v["vmNics"][0]["ip"].as_str().unwrap())
        .collect();
    assert_eq!(list.len(), vms, "not every VM is Running");
    assert_eq!(ips.len(), vms, "an IP was handed out twice");

    let mut q = query_latency.into_inner().unwrap();
    q.sort();
    let mut c = create_latency.into_inner().unwrap();
    c.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "scale: {vms} CreateVmInstance on {hosts} simulator hosts, {in_flight} in flight: \
         {:.1} s, {:.0} VMs/s; every VM Running, {} distinct IPs (setup {:.1} s)",
        storm.as_secs_f64(),
        vms as f64 / storm.as_secs_f64(),
        ips.len(),
        setup.as_secs_f64()
    );
    println!(
        "scale: CreateVmInstance call-to-Running latency p50 {:.0} ms, p99 {:.0} ms",
        ms(percentile(&c, 0.5)),
        ms(percentile(&c, 0.99))
    );
    println!(
        "scale: QueryVmInstance during the storm ({} queries): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        q.len(),
        ms(percentile(&q, 0.5)),
        ms(percentile(&q, 0.99)),
        ms(q.last().copied().unwrap_or_default())
    );
    if !server_pid.is_empty() {
        println!(
            "scale: zstack-server memory: peak RSS seen {} MiB, high-water mark (VmHWM) {} MiB, now {} MiB",
            rss_peak.load(Ordering::Relaxed) / 1024,
            rss_kib(&server_pid, "VmHWM:") / 1024,
            rss_kib(&server_pid, "VmRSS:") / 1024
        );
    }
}

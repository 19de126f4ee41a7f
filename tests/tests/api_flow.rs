//! The management node's API through zstack-cli, each test on an install of its own on this host,
//! with simulator hosts (and, for host tracking, the real KVM agent installed beside the node): IP
//! allocation under concurrent creations, a restart in the middle of a job, a KVM host tracked
//! through its agent. Installs on this host and removes it afterwards. The calls one by one, on
//! one install shared by their tests, are in api_calls.rs.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

use std::collections::HashSet;
use std::io::Write;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use zstack_tests::cli::*;
use zstack_tests::simulated_cloud::*;
use zstack_tests::*;

#[test]
#[ignore = "needs root and build/*.bin: run by make test; installs on this host and removes it"]
fn no_ip_is_handed_out_twice_under_100_concurrent_creations() {
    let stack = install();
    let cli = &stack.cli;
    // Exactly 101 addresses: 100 VMs and the L3's DHCP server.
    let c = build_cloud(cli, 8, ("10.10.0.10", "10.10.0.110"));
    let session = cli.session().trim().to_string();
    let submit = |name: String| -> Result<String, Value> {
        let r = ureq::post("http://127.0.0.1:8080/v1/api/CreateVmInstance")
            .set("Authorization", &format!("OAuth {session}"))
            .send_json(json!({
                "name": name,
                "instanceOfferingUuid": c.offering,
                "imageUuid": c.image,
                "l3NetworkUuids": [c.private_l3],
            }));
        match r {
            Ok(resp) => Ok(resp.into_json::<Value>().unwrap()["jobUuid"]
                .as_str()
                .unwrap()
                .to_string()),
            Err(ureq::Error::Status(_, resp)) => Err(resp.into_json::<Value>().unwrap()),
            Err(e) => panic!("{e}"),
        }
    };
    let jobs: Vec<Result<String, Value>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..100)
            .map(|i| {
                let submit = &submit;
                s.spawn(move || submit(format!("vm{i}")))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for j in &jobs {
        let uuid = j.as_ref().unwrap_or_else(|e| panic!("refused: {e}"));
        let done: Value = ureq::get(&format!("http://127.0.0.1:8080/v1/api-jobs/{uuid}?wait=60"))
            .set("Authorization", &format!("OAuth {session}"))
            .call()
            .unwrap()
            .into_json()
            .unwrap();
        assert_eq!(done["job"]["state"], "Succeeded", "{done}");
    }
    let vms = cli.list(&["QueryVmInstance", "state=Running"]);
    assert_eq!(vms.len(), 100);
    let ips: HashSet<String> = vms
        .iter()
        .map(|v| v["vmNics"][0]["ip"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ips.len(), 100, "an IP was handed out twice");
    let macs: HashSet<&str> = vms
        .iter()
        .map(|v| v["vmNics"][0]["mac"].as_str().unwrap())
        .collect();
    assert_eq!(macs.len(), 100);
    // The 101st has no address left: refused at once, naming the L3, nothing left behind.
    let e = submit("vm100".into()).unwrap_err();
    assert_eq!(e["error"]["code"], "NO_CAPACITY", "{e}");
    assert_eq!(e["error"]["field"], "l3NetworkUuid");
    assert_eq!(cli.ok(&["QueryVmInstance", "count=true"])["total"], 100);
    // Host capacity adds up: 100 VMs of 1 CPU on 8 hosts of 16.
    let free: i64 = cli
        .list(&["QueryHost"])
        .iter()
        .map(|h| h["availableCpuCapacity"].as_i64().unwrap())
        .sum();
    assert_eq!(free, 8 * 16 - 100);
}

/// Serves one file slowly over HTTP, forever: an image download that does not end by itself.
fn trickle_server() -> (u16, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let flag = flag.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = std::io::Read::read(&mut conn, &mut buf);
                let _ =
                    conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\nQFI\xfb");
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    if conn.write_all(&[0u8; 512]).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
        }
    });
    (port, stop)
}

#[test]
#[ignore = "needs root and build/*.bin: run by make test; installs on this host and removes it"]
fn a_restart_keeps_the_state_and_fails_the_jobs_in_flight() {
    let stack = install();
    let cli = &stack.cli;
    let c = build_cloud(cli, 2, ("10.10.0.10", "10.10.0.200"));
    let vm = create_vm(cli, &c, "survivor", &[]);
    let stopped = create_vm(cli, &c, "sleeper", &[]);
    cli.ok(&[
        "StopVmInstance",
        &format!("uuid={}", stopped["uuid"].as_str().unwrap()),
    ]);
    cli.ok(&[
        "UpdateGlobalConfig",
        "category=kvm",
        "name=vm.cacheMode",
        "value=writeback",
    ]);

    // A job in flight: an image that downloads slowly.
    let (port, stop_serving) = trickle_server();
    let bs = cli.list(&["QueryBackupStorage"])[0]["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let pending = cli.ok(&[
        "--no-wait",
        "AddImage",
        "name=slow",
        &format!("url=http://127.0.0.1:{port}/slow.qcow2"),
        &format!("backupStorageUuids={bs}"),
    ]);
    let job = pending["jobUuid"].as_str().unwrap().to_string();
    assert_eq!(
        cli.list(&["QueryJob", &format!("uuid={job}")])[0]["state"],
        "Running"
    );
    assert_eq!(
        cli.list(&["QueryImage", "name=slow"])[0]["status"],
        "Downloading"
    );

    let before: Vec<Value> = [
        "QueryZone",
        "QueryCluster",
        "QueryHost",
        "QueryL3Network",
        "QueryVmInstance",
    ]
    .iter()
    .map(|q| json!(names(&cli.list(&[q]))))
    .collect();
    ok(Command::new("zstack-ctl").args(["restart", "--service", "zstack-server"]));
    stop_serving.store(true, std::sync::atomic::Ordering::Relaxed);

    // The job ended as failed, with the reason; nothing else was lost.
    let j = &cli.list(&["QueryJob", &format!("uuid={job}")])[0];
    assert_eq!(j["state"], "Failed", "{j}");
    assert_eq!(j["error"]["code"], "MANAGEMENT_NODE_RESTARTED", "{j}");
    assert!(
        j["error"]["message"]
            .as_str()
            .unwrap()
            .contains("restarted"),
        "{j}"
    );
    assert_eq!(
        cli.list(&["QueryImage", "name=slow"]).len(),
        0,
        "the half-added image is dropped"
    );
    let after: Vec<Value> = [
        "QueryZone",
        "QueryCluster",
        "QueryHost",
        "QueryL3Network",
        "QueryVmInstance",
    ]
    .iter()
    .map(|q| json!(names(&cli.list(&[q]))))
    .collect();
    assert_eq!(before, after);
    // Hosts reconnect and say what runs: the running VM is still Running, the stopped one Stopped.
    wait_until(
        "the simulator hosts to reconnect",
        Duration::from_secs(30),
        || cli.list(&["QueryHost", "status=Connected"]).len() == 2,
    );
    let v = &cli.list(&[
        "QueryVmInstance",
        &format!("uuid={}", vm["uuid"].as_str().unwrap()),
    ])[0];
    assert_eq!(v["state"], "Running");
    assert_eq!(v["vmNics"][0]["ip"], vm["vmNics"][0]["ip"]);
    assert_eq!(
        cli.list(&["QueryVmInstance", "name=sleeper"])[0]["state"],
        "Stopped"
    );
    assert_eq!(
        cli.list(&["QueryGlobalConfig", "name=vm.cacheMode"])[0]["value"],
        "writeback"
    );
    // The session survived too, and work goes on.
    assert_eq!(create_vm(cli, &c, "after-restart", &[])["state"], "Running");
}

#[test]
#[ignore = "needs root and build/*.bin: run by make test; installs on this host and removes it"]
fn a_kvm_host_is_tracked_through_its_agent() {
    zstack_tests::kvm::ensure_libvirtd();
    let stack = install();
    let cli = &stack.cli;
    let zone = cli.uuid(&["CreateZone", "name=z"]);
    let cluster = cli.uuid(&[
        "CreateCluster",
        "name=kvm",
        &format!("zoneUuid={zone}"),
        "hypervisorType=KVM",
    ]);

    // A host whose agent does not answer is not added.
    let e = cli.err(&[
        "AddKVMHost",
        "name=ghost",
        "managementIp=127.0.0.1",
        "agentPort=1",
        &format!("clusterUuid={cluster}"),
    ]);
    assert_eq!(e["code"], "HOST_UNREACHABLE", "{e}");
    assert!(e["message"].as_str().unwrap().contains("not added"), "{e}");
    assert_eq!(cli.list(&["QueryHost"]).len(), 0);
    // A Simulator host cannot join a KVM cluster.
    let e = cli.err(&[
        "AddSimulatorHost",
        "name=s",
        "managementIp=192.0.2.9",
        &format!("clusterUuid={cluster}"),
    ]);
    assert_eq!(e["field"], "clusterUuid");

    // The agent installed beside the node: its CPUs and memory are this machine's.
    let host = cli.inv(&[
        "AddKVMHost",
        "name=local",
        "managementIp=127.0.0.1",
        &format!("clusterUuid={cluster}"),
    ]);
    assert_eq!(host["status"], "Connected", "{host}");
    let cpus = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    assert_eq!(host["totalCpuCapacity"], cpus as i64);
    assert!(host["totalMemoryCapacity"].as_i64().unwrap() > 256 << 20);
    let uuid = host["uuid"].as_str().unwrap().to_string();

    // Shared mount point storage is checked by the host: a missing directory is refused.
    let ps = cli.uuid(&[
        "AddSharedMountPointPrimaryStorage",
        "name=smp",
        "url=/nonexistent-zstack-ps",
        &format!("zoneUuid={zone}"),
    ]);
    let e = cli.err(&[
        "AttachPrimaryStorageToCluster",
        &format!("primaryStorageUuid={ps}"),
        &format!("clusterUuid={cluster}"),
    ]);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("mount the shared storage"),
        "{e}"
    );
    let dir = TmpfsMount::new("size=64m");
    let ps2 = cli.uuid(&[
        "AddSharedMountPointPrimaryStorage",
        "name=smp2",
        &format!("url={}", dir.path().display()),
        &format!("zoneUuid={zone}"),
    ]);
    let attached = cli.inv(&[
        "AttachPrimaryStorageToCluster",
        &format!("primaryStorageUuid={ps2}"),
        &format!("clusterUuid={cluster}"),
    ]);
    assert!(
        attached["totalCapacity"].as_i64().unwrap() > 0,
        "{attached}"
    );

    // Agent loss: Disconnected with the reason; back: Connected again by itself.
    cli.ok(&[
        "UpdateGlobalConfig",
        "category=host",
        "name=ping.interval",
        "value=1",
    ]);
    ok(Command::new("zstack-ctl").args(["stop", "--service", "zstack-kvmagent"]));
    wait_until(
        "the host to be Disconnected",
        Duration::from_secs(30),
        || cli.list(&["QueryHost", &format!("uuid={uuid}")])[0]["status"] == "Disconnected",
    );
    let h = &cli.list(&["QueryHost", &format!("uuid={uuid}")])[0];
    assert!(
        h["statusReason"].as_str().unwrap().contains("cannot reach"),
        "{h}"
    );
    let e = cli.err(&["ReconnectHost", &format!("uuid={uuid}")]);
    assert_eq!(e["code"], "HOST_UNREACHABLE");
    ok(Command::new("zstack-ctl").args(["start", "--service", "zstack-kvmagent"]));
    wait_until(
        "the host to be Connected again",
        Duration::from_secs(30),
        || cli.list(&["QueryHost", &format!("uuid={uuid}")])[0]["status"] == "Connected",
    );
    assert_eq!(
        cli.inv(&["ReconnectHost", &format!("uuid={uuid}")])["status"],
        "Connected"
    );
}

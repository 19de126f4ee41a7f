//! The management node's API through zstack-cli, on a real install on this host, with simulator
//! hosts (and, for host tracking, the real KVM agent installed beside the node): every resource,
//! every query operator, the refusals, IP allocation under concurrent creations, and a restart in
//! the middle of a job. Installs on this host and removes it afterwards.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use zstack_tests::cli::*;
use zstack_tests::*;

/// Zone, simulator cluster with `hosts` hosts, SMP storage, backup storage with an image, an
/// offering, a private L3 (flat DHCP/Userdata/Eip, the range given) and a public L3.
struct Cloud {
    zone: String,
    cluster: String,
    hosts: Vec<String>,
    image: String,
    offering: String,
    private_l3: String,
    public_l3: String,
    _bs_dir: tempfile::TempDir,
}

fn build_cloud(cli: &Cli, hosts: usize, range: (&str, &str)) -> Cloud {
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

fn create_vm(cli: &Cli, c: &Cloud, name: &str, extra: &[&str]) -> Value {
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

fn names(list: &[Value]) -> Vec<String> {
    let mut n: Vec<String> = list
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    n.sort();
    n
}

#[test]
#[ignore = "needs root and build/*.bin: run by make test; installs on this host and removes it"]
fn the_whole_api_flow_through_zstack_cli() {
    let stack = install();
    let cli = &stack.cli;

    // Refusals before anything exists: no session, a bad session, unknown call and parameter,
    // a missing field, an unknown value, a wrong cache mode.
    let anon = Cli::new();
    assert_eq!(anon.err(&["QueryZone"])["code"], "INVALID_SESSION");
    std::fs::create_dir_all(anon.home.path().join(".zstack/cli")).unwrap();
    std::fs::write(
        anon.home.path().join(".zstack/cli/session"),
        "0123456789abcdef0123456789abcdef",
    )
    .unwrap();
    assert_eq!(anon.err(&["QueryZone"])["code"], "INVALID_SESSION");
    let e = cli.err(&["QueryZones"]);
    assert_eq!(e["code"], "UNKNOWN_API");
    assert!(e["message"].as_str().unwrap().contains("QueryZone"), "{e}");
    let e = cli.err(&["CreateZone", "nmae=z"]);
    assert_eq!(
        (e["code"].as_str(), e["field"].as_str()),
        (Some("INVALID_ARGUMENT"), Some("nmae"))
    );
    assert!(
        e["message"].as_str().unwrap().contains("did you mean name"),
        "{e}"
    );
    let e = cli.err(&["CreateZone", "description=no name"]);
    assert_eq!(
        (e["code"].as_str(), e["field"].as_str()),
        (Some("MISSING_FIELD"), Some("name"))
    );
    let e = cli.err(&[
        "UpdateGlobalConfig",
        "category=kvm",
        "name=vm.cacheMode",
        "value=unsafe",
    ]);
    assert_eq!(e["field"], "value");
    for allowed in ["none", "writethrough", "writeback"] {
        assert!(e["message"].as_str().unwrap().contains(allowed), "{e}");
    }

    let c = build_cloud(cli, 2, ("10.10.0.10", "10.10.0.200"));
    let e = cli.err(&[
        "CreateCluster",
        "name=x",
        &format!("zoneUuid={}", c.zone),
        "hypervisorType=Xen",
    ]);
    assert_eq!(e["field"], "hypervisorType");
    assert!(
        e["message"].as_str().unwrap().contains("KVM, Simulator"),
        "{e}"
    );
    let e = cli.err(&[
        "CreateCluster",
        "name=x",
        "zoneUuid=nope",
        "hypervisorType=KVM",
    ]);
    assert_eq!(
        (e["code"].as_str(), e["field"].as_str()),
        (Some("RESOURCE_NOT_FOUND"), Some("zoneUuid"))
    );

    // VMs with user data: Running on a simulator host, IPs from the range, distinct.
    let userdata = "#cloud-config\nruncmd:\n  - echo hello > /tmp/hello\n";
    let mut vms = Vec::new();
    for name in ["web1", "web2", "db1"] {
        let vm = create_vm(cli, &c, name, &[&format!("userData={userdata}")]);
        assert_eq!(vm["state"], "Running", "{vm}");
        assert!(c
            .hosts
            .contains(&vm["hostUuid"].as_str().unwrap().to_string()));
        assert_eq!(vm["allVolumes"].as_array().unwrap().len(), 1);
        assert_eq!(vm["allVolumes"][0]["size"], 1i64 << 30);
        vms.push(vm);
    }
    let ips: HashSet<String> = vms
        .iter()
        .map(|v| v["vmNics"][0]["ip"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ips.len(), 3, "{ips:?}");
    for ip in &ips {
        let last: u32 = ip.rsplit('.').next().unwrap().parse().unwrap();
        assert!(
            ip.starts_with("10.10.0.") && (10..=200).contains(&last),
            "{ip}"
        );
    }
    // The two hosts share the VMs by free memory.
    let hosts_used: HashSet<&str> = vms
        .iter()
        .map(|v| v["hostUuid"].as_str().unwrap())
        .collect();
    assert_eq!(hosts_used.len(), 2);
    let web1 = vms[0]["uuid"].as_str().unwrap().to_string();
    let web1_nic = vms[0]["vmNics"][0]["uuid"].as_str().unwrap().to_string();

    // A root password is kept only as its SHA-512 crypt hash; a weak one is refused.
    let e = cli.err(&[
        "CreateVmInstance",
        "name=weak",
        &format!("instanceOfferingUuid={}", c.offering),
        &format!("imageUuid={}", c.image),
        &format!("l3NetworkUuids={}", c.private_l3),
        "rootPassword=short",
    ]);
    assert_eq!(e["field"], "rootPassword");
    let pw = create_vm(cli, &c, "with-password", &["rootPassword=Sup3r-Secret-pw"]);
    let hash = ok(Command::new("sqlite3").args([
        "/var/lib/zstack/zstack.db",
        &format!(
            "SELECT root_password_hash FROM vm_instance WHERE uuid = '{}'",
            pw["uuid"].as_str().unwrap()
        ),
    ]));
    assert!(hash.starts_with("$6$"), "{hash}");
    let dump = ok(Command::new("sqlite3").args(["/var/lib/zstack/zstack.db", ".dump"]));
    assert!(
        !dump.contains("Sup3r-Secret-pw"),
        "the password is in the database"
    );
    cli.ok(&[
        "DestroyVmInstance",
        &format!("uuid={}", pw["uuid"].as_str().unwrap()),
    ]);

    // Queries with every operator, fields, limit, count, and --table.
    assert_eq!(
        names(&cli.list(&["QueryVmInstance", "name=web1"])),
        ["web1"]
    );
    assert_eq!(
        names(&cli.list(&["QueryVmInstance", "name!=web1"])),
        ["db1", "web2"]
    );
    assert_eq!(cli.list(&["QueryVmInstance", "cpuNum>=1"]).len(), 3);
    assert_eq!(cli.list(&["QueryVmInstance", "cpuNum>1"]).len(), 0);
    assert_eq!(cli.list(&["QueryVmInstance", "cpuNum<2"]).len(), 3);
    assert_eq!(cli.list(&["QueryVmInstance", "cpuNum<=0"]).len(), 0);
    assert_eq!(
        names(&cli.list(&["QueryVmInstance", "name~=web%"])),
        ["web1", "web2"]
    );
    assert_eq!(
        names(&cli.list(&["QueryVmInstance", "name!~=web%"])),
        ["db1"]
    );
    let two = format!("uuid?={},{}", web1, vms[1]["uuid"].as_str().unwrap());
    assert_eq!(
        names(&cli.list(&["QueryVmInstance", &two])),
        ["web1", "web2"]
    );
    assert_eq!(
        names(&cli.list(&["QueryVmInstance", &format!("uuid!?={web1}")])),
        ["db1", "web2"]
    );
    assert_eq!(
        cli.list(&["QueryVmInstance", "hostUuid", "is", "null"])
            .len(),
        0
    );
    assert_eq!(
        cli.list(&["QueryVmInstance", "hostUuid", "not", "null"])
            .len(),
        3
    );
    assert_eq!(cli.list(&["QueryVmInstance", "state!=Running"]).len(), 0);
    let some = cli.list(&["QueryVmInstance", "fields=uuid,name", "limit=2"]);
    assert_eq!(some.len(), 2);
    assert_eq!(some[0].as_object().unwrap().len(), 2, "{:?}", some[0]);
    assert_eq!(
        cli.ok(&["QueryVmInstance", "state=Running", "count=true"])["total"],
        3
    );
    let e = cli.err(&["QueryVmInstance", "colour=red"]);
    assert!(e["message"].as_str().unwrap().contains("fields:"), "{e}");
    let table = ok(Command::new("zstack-cli")
        .args(["--table", "QueryZone", "fields=name,description"])
        .env("HOME", cli.home.path()));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[0].starts_with("name") && lines[0].contains("description"),
        "{table}"
    );
    assert!(lines[1].starts_with("----"), "{table}");
    assert!(
        lines[2].starts_with("zone1") && lines[2].contains("first zone"),
        "{table}"
    );

    // The interactive shell, fed on stdin, keeps the session and answers each line.
    let mut shell = Command::new("zstack-cli")
        .env("HOME", cli.home.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    shell
        .stdin
        .take()
        .unwrap()
        .write_all(b"QueryZone fields=name\nQueryCluster count=true\nexit\n")
        .unwrap();
    let out = shell.wait_with_output().unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("\"zone1\"") && printed.contains("\"total\": 1"),
        "{printed}"
    );

    // VIP and EIP: create attached, detach, attach again; refused on the wrong L3 and twice.
    let vip = cli.inv(&[
        "CreateVip",
        "name=vip1",
        &format!("l3NetworkUuid={}", c.public_l3),
    ]);
    let vip_ip = vip["ip"].as_str().unwrap().to_string();
    assert!(vip_ip.starts_with("172.20.0."), "{vip}");
    let eip = cli.inv(&[
        "CreateEip",
        "name=eip1",
        &format!("vipUuid={}", vip["uuid"].as_str().unwrap()),
        &format!("vmNicUuid={web1_nic}"),
    ]);
    let eip_uuid = eip["uuid"].as_str().unwrap().to_string();
    assert_eq!(eip["vmNicUuid"], web1_nic.as_str());
    assert_eq!(eip["vipIp"], vip_ip.as_str());
    assert_eq!(eip["guestIp"], vms[0]["vmNics"][0]["ip"]);
    let e = cli.err(&[
        "AttachEip",
        &format!("eipUuid={eip_uuid}"),
        &format!("vmNicUuid={web1_nic}"),
    ]);
    assert_eq!(e["code"], "RESOURCE_IN_USE");
    let detached = cli.inv(&["DetachEip", &format!("uuid={eip_uuid}")]);
    assert!(detached["vmNicUuid"].is_null(), "{detached}");
    let reattached = cli.inv(&[
        "AttachEip",
        &format!("eipUuid={eip_uuid}"),
        &format!("vmNicUuid={web1_nic}"),
    ]);
    assert_eq!(reattached["vmNicUuid"], web1_nic.as_str());
    let vip2 = cli.uuid(&[
        "CreateVip",
        "name=vip2",
        &format!("l3NetworkUuid={}", c.private_l3),
    ]);
    let e = cli.err(&[
        "CreateEip",
        "name=bad",
        &format!("vipUuid={vip2}"),
        &format!("vmNicUuid={web1_nic}"),
    ]);
    assert_eq!(e["field"], "vmNicUuid", "{e}");
    assert_eq!(
        cli.list(&["QueryEip", "name=bad"]).len(),
        0,
        "a refused EIP is not left behind"
    );
    let e = cli.err(&[
        "DeleteVip",
        &format!("uuid={}", vip["uuid"].as_str().unwrap()),
    ]);
    assert_eq!(e["code"], "RESOURCE_IN_USE");

    // Stop frees the host's capacity; start takes it again; reboot.
    let host_of = |vm: &str| -> Value {
        let h = cli.list(&["QueryVmInstance", &format!("uuid={vm}")])[0]["lastHostUuid"].clone();
        cli.list(&["QueryHost", &format!("uuid={}", h.as_str().unwrap())])[0].clone()
    };
    let before = host_of(&web1)["availableCpuCapacity"].as_i64().unwrap();
    let stopped = cli.inv(&["StopVmInstance", &format!("uuid={web1}")]);
    assert_eq!(stopped["state"], "Stopped");
    assert!(stopped["hostUuid"].is_null());
    assert_eq!(
        host_of(&web1)["availableCpuCapacity"].as_i64().unwrap(),
        before + 1
    );
    let e = cli.err(&["StopVmInstance", &format!("uuid={web1}")]);
    assert_eq!(e["code"], "INVALID_STATE");
    assert_eq!(
        cli.list(&["QueryVmInstance", "hostUuid", "is", "null"])
            .len(),
        1
    );
    let started = cli.inv(&["StartVmInstance", &format!("uuid={web1}")]);
    assert_eq!(started["state"], "Running");
    assert_eq!(
        started["hostUuid"], stopped["lastHostUuid"],
        "back on its last host"
    );
    assert_eq!(
        started["vmNics"][0]["ip"], vms[0]["vmNics"][0]["ip"],
        "a VM keeps its IP"
    );
    assert_eq!(
        cli.inv(&["RebootVmInstance", &format!("uuid={web1}")])["state"],
        "Running"
    );

    // The global config change, seen by the next query.
    let cfg = cli.inv(&[
        "UpdateGlobalConfig",
        "category=kvm",
        "name=vm.cacheMode",
        "value=writethrough",
    ]);
    assert_eq!(cfg["value"], "writethrough");
    assert_eq!(
        cli.list(&["QueryGlobalConfig", "category=kvm", "name=vm.cacheMode"])[0]["value"],
        "writethrough"
    );

    // A data volume: made on the VM's storage at attach, detached, deleted.
    let vol = cli.uuid(&["CreateDataVolume", "name=data1", "diskSize=10G"]);
    let attached = cli.inv(&[
        "AttachDataVolumeToVm",
        &format!("volumeUuid={vol}"),
        &format!("vmInstanceUuid={web1}"),
    ]);
    assert_eq!(
        (attached["status"].as_str(), attached["deviceId"].as_i64()),
        (Some("Ready"), Some(1))
    );
    assert_eq!(
        cli.list(&["QueryVmInstance", &format!("uuid={web1}")])[0]["allVolumes"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let e = cli.err(&["DeleteDataVolume", &format!("uuid={vol}")]);
    assert_eq!(e["code"], "RESOURCE_IN_USE");
    assert!(
        cli.inv(&["DetachDataVolumeFromVm", &format!("uuid={vol}")])["vmInstanceUuid"].is_null()
    );
    cli.ok(&["DeleteDataVolume", &format!("uuid={vol}")]);

    // Destroy frees the IP and the host; the EIP and VIP are kept, detached.
    let used_before = cli.ok(&["QueryVmInstance", "count=true"])["total"]
        .as_i64()
        .unwrap();
    cli.ok(&["DestroyVmInstance", &format!("uuid={web1}")]);
    assert_eq!(
        cli.ok(&["QueryVmInstance", "count=true"])["total"]
            .as_i64()
            .unwrap(),
        used_before - 1
    );
    assert!(cli.list(&["QueryEip", &format!("uuid={eip_uuid}")])[0]["vmNicUuid"].is_null());
    cli.ok(&["DeleteEip", &format!("uuid={eip_uuid}")]);
    cli.ok(&[
        "DeleteVip",
        &format!("uuid={}", vip["uuid"].as_str().unwrap()),
    ]);
    // A destroyed VM's address can be taken again.
    let freed = vms[0]["vmNics"][0]["ip"].as_str().unwrap();
    let vip3 = cli.inv(&[
        "CreateVip",
        "name=reuse",
        &format!("l3NetworkUuid={}", c.private_l3),
        &format!("requiredIp={freed}"),
    ]);
    assert_eq!(vip3["ip"], freed);
    let e = cli.err(&[
        "CreateVip",
        "name=dup",
        &format!("l3NetworkUuid={}", c.private_l3),
        &format!("requiredIp={freed}"),
    ]);
    assert_eq!(e["field"], "requiredIp");

    // An image from an http:// URL the management node reaches (an air-gapped mirror).
    let served = tempfile::tempdir().unwrap();
    let file = qcow2(served.path(), "2G");
    let port = serve_file_once(std::fs::read(&file).unwrap());
    let bs = cli.list(&["QueryBackupStorage"])[0]["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let img = cli.inv(&[
        "AddImage",
        "name=from-mirror",
        &format!("url=http://127.0.0.1:{port}/guest.qcow2"),
        &format!("backupStorageUuids={bs}"),
    ]);
    assert_eq!(
        (img["status"].as_str(), img["size"].as_i64()),
        (Some("Ready"), Some(2i64 << 30))
    );
    assert_eq!(img["sha256Sum"], sha256_hex(&file));
    // A file that is not what its format says is refused, and not kept.
    let bs_path = cli.list(&["QueryBackupStorage"])[0]["url"]
        .as_str()
        .unwrap()
        .to_string();
    let fake = Path::new(&bs_path).join("fake.qcow2");
    std::fs::write(&fake, b"not a disk image").unwrap();
    let e = cli.err(&[
        "AddImage",
        "name=fake",
        &format!("url={}", fake.display()),
        &format!("backupStorageUuids={bs}"),
    ]);
    assert_eq!(e["field"], "format", "{e}");
    assert_eq!(cli.list(&["QueryImage", "name=fake"]).len(), 0);
    let e = cli.err(&[
        "AddImage",
        "name=x",
        "url=https://example.com/x.qcow2",
        &format!("backupStorageUuids={bs}"),
    ]);
    assert_eq!(e["field"], "url");

    // Primary storage in use cannot be detached; a second one can be attached and detached.
    let ps = cli.list(&["QueryPrimaryStorage"])[0]["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let e = cli.err(&[
        "DetachPrimaryStorageFromCluster",
        &format!("primaryStorageUuid={ps}"),
        &format!("clusterUuid={}", c.cluster),
    ]);
    assert_eq!(e["code"], "RESOURCE_IN_USE");
    let ps2 = cli.uuid(&[
        "AddSharedMountPointPrimaryStorage",
        "name=smp2",
        "url=/zstack_ps2",
        &format!("zoneUuid={}", c.zone),
    ]);
    cli.ok(&[
        "AttachPrimaryStorageToCluster",
        &format!("primaryStorageUuid={ps2}"),
        &format!("clusterUuid={}", c.cluster),
    ]);
    let detached = cli.inv(&[
        "DetachPrimaryStorageFromCluster",
        &format!("primaryStorageUuid={ps2}"),
        &format!("clusterUuid={}", c.cluster),
    ]);
    assert_eq!(detached["attachedClusterUuids"], json!([]));
    cli.ok(&["DeletePrimaryStorage", &format!("uuid={ps2}")]);

    // Deleting what is in use is refused with what to do first.
    let e = cli.err(&["DeleteCluster", &format!("uuid={}", c.cluster)]);
    assert!(e["message"].as_str().unwrap().contains("host"), "{e}");
    let e = cli.err(&[
        "DeleteHost",
        &format!("uuid={}", vms[1]["hostUuid"].as_str().unwrap()),
    ]);
    assert_eq!(e["code"], "RESOURCE_IN_USE");

    // Jobs are recorded and can be queried.
    let jobs = cli.list(&["QueryJob", "apiName=CreateVmInstance"]);
    assert_eq!(jobs.len(), 4, "web1, web2, db1 and with-password");
    assert!(jobs.iter().all(|j| j["state"] == "Succeeded"), "{jobs:?}");

    // The API reference lists every call, and says which are jobs.
    let apis: Value = ureq::get("http://127.0.0.1:8080/v1/apis")
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    let create = apis["apis"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "CreateVmInstance")
        .unwrap();
    assert_eq!(create["async"], true);

    // LogOut ends the session.
    let session = cli.session();
    cli.ok(&["LogOut"]);
    assert!(!cli.home.path().join(".zstack/cli/session").exists());
    let r = ureq::post("http://127.0.0.1:8080/v1/api/QueryZone")
        .set("Authorization", &format!("OAuth {}", session.trim()))
        .send_json(json!({}));
    assert!(matches!(r, Err(ureq::Error::Status(401, _))));
    let _ = &stack.password;
}

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

/// Serves `body` to one HTTP GET; returns the port.
fn serve_file_once(body: Vec<u8>) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        if let Ok((mut conn, _)) = listener.accept() {
            let mut buf = [0u8; 4096];
            let _ = std::io::Read::read(&mut conn, &mut buf);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(&body);
        }
    });
    port
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

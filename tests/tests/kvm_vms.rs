//! End to end with real VMs: the stack installed all-in-one on this host, this host added as a KVM
//! host, shared mount point storage on a filesystem the test loop-mounts, the guest image built
//! from Debian packages, VMs run by libvirt + qemu (TCG here). Installs on this host and removes
//! it afterwards; destroys every VM and bridge it made.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use zstack_tests::cli::*;
use zstack_tests::kvm::*;
use zstack_tests::*;

/// The physical interface of the test's L2 network: it does not exist, so the agent makes only
/// the bridge br_zstest0 (removed by the test), and no address of the host is touched.
const IFACE: &str = "zstest0";

struct KvmCloud {
    zone: String,
    cluster: String,
    host: String,
    image: String,
    offering: String,
    l3: String,
}

/// Zone, KVM cluster with this host, an SMP storage at `ps` attached, the guest image, an
/// offering, an L2/L3 with a range.
fn kvm_cloud(cli: &Cli, ps: &Path, bs: &Path) -> KvmCloud {
    let zone = cli.uuid(&["CreateZone", "name=z"]);
    let cluster = cli.uuid(&[
        "CreateCluster",
        "name=kvm",
        &format!("zoneUuid={zone}"),
        "hypervisorType=KVM",
    ]);
    let host = cli.inv(&[
        "AddKVMHost",
        "name=this",
        "managementIp=127.0.0.1",
        &format!("clusterUuid={cluster}"),
    ]);
    assert_eq!(host["status"], "Connected", "{host}");
    assert_eq!(
        host["virtualization"], "qemu",
        "no usable /dev/kvm here: TCG"
    );
    assert!(
        host["virtualizationReason"]
            .as_str()
            .is_some_and(|r| r.contains("did not reach its firmware")),
        "{host}"
    );
    assert!(
        host["libvirtVersion"]
            .as_str()
            .is_some_and(|v| !v.is_empty()),
        "{host}"
    );
    assert!(
        host["qemuVersion"].as_str().is_some_and(|v| !v.is_empty()),
        "{host}"
    );
    let ps_uuid = cli.uuid(&[
        "AddSharedMountPointPrimaryStorage",
        "name=smp",
        &format!("url={}", ps.display()),
        &format!("zoneUuid={zone}"),
    ]);
    let attached = cli.inv(&[
        "AttachPrimaryStorageToCluster",
        &format!("primaryStorageUuid={ps_uuid}"),
        &format!("clusterUuid={cluster}"),
    ]);
    assert!(
        attached["totalCapacity"].as_i64().unwrap() > 100 << 20,
        "{attached}"
    );
    // The management node runs as the user zstack: its backup storage directory is its own.
    give_to_server_user(bs);
    let bs_uuid = cli.uuid(&[
        "AddLocalBackupStorage",
        "name=bs",
        &format!("url={}", bs.display()),
    ]);
    cli.ok(&[
        "AttachBackupStorageToZone",
        &format!("backupStorageUuid={bs_uuid}"),
        &format!("zoneUuid={zone}"),
    ]);
    // A local file is taken from the backup storage itself.
    let guest = bs.join("guest-source.qcow2");
    std::fs::copy(guest_image(), &guest).unwrap();
    let image = cli.uuid(&[
        "AddImage",
        "name=guest",
        &format!("url={}", guest.display()),
        &format!("backupStorageUuids={bs_uuid}"),
    ]);
    let offering = cli.uuid(&[
        "CreateInstanceOffering",
        "name=tiny",
        "cpuNum=1",
        "memorySize=256M",
    ]);
    let l2 = cli.uuid(&[
        "CreateL2NoVlanNetwork",
        "name=l2",
        &format!("zoneUuid={zone}"),
        &format!("physicalInterface={IFACE}"),
    ]);
    cli.ok(&[
        "AttachL2NetworkToCluster",
        &format!("l2NetworkUuid={l2}"),
        &format!("clusterUuid={cluster}"),
    ]);
    let l3 = cli.uuid(&["CreateL3Network", "name=l3", &format!("l2NetworkUuid={l2}")]);
    cli.ok(&[
        "AddIpRange",
        &format!("l3NetworkUuid={l3}"),
        "name=r",
        "startIp=10.99.0.10",
        "endIp=10.99.0.100",
        "netmask=255.255.255.0",
        "gateway=10.99.0.1",
    ]);
    KvmCloud {
        zone,
        cluster,
        host: host["uuid"].as_str().unwrap().to_string(),
        image,
        offering,
        l3,
    }
}

fn create_vm(cli: &Cli, c: &KvmCloud, name: &str) -> Value {
    cli.inv(&[
        "CreateVmInstance",
        &format!("name={name}"),
        &format!("instanceOfferingUuid={}", c.offering),
        &format!("imageUuid={}", c.image),
        &format!("l3NetworkUuids={}", c.l3),
    ])
}

fn wait_console(vm: &str, marker: &str) {
    wait_until(
        &format!("VM {vm} to print {marker:?} on its console"),
        Duration::from_secs(120),
        || console(vm).contains(marker),
    );
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

struct Setup {
    stack: Stack,
    _domains: DomainsGuard,
    _namespaces: AgentNamespacesGuard,
    _links: LinksGuard,
    ps: LoopFs,
    _dirs: tempfile::TempDir,
    cloud: KvmCloud,
}

fn setup() -> Setup {
    ensure_libvirtd();
    let stack = install();
    // CI machines have a /dev/kvm that opens but cannot run guests (nested, without hardware
    // support): `auto` (the default) must find that out by its probe and run the VMs under TCG;
    // the VMs of these tests booting is the proof.
    let domains = DomainsGuard;
    let links = LinksGuard(vec![format!("br_{IFACE}")]);
    let dirs = tempfile::tempdir().unwrap();
    let ps = LoopFs::new(&dirs.path().join("ps"), 2048);
    let cloud = kvm_cloud(&stack.cli, &ps.at, &dirs.path().join("bs"));
    Setup {
        stack,
        _domains: domains,
        _namespaces: AgentNamespacesGuard::new(),
        _links: links,
        ps,
        _dirs: dirs,
        cloud,
    }
}

#[test]
#[ignore = "needs root, libvirt, qemu and build/*.bin: run by make test; installs on this host and removes it"]
fn a_vm_boots_and_each_cache_mode_reaches_qemu() {
    let s = setup();
    let cli = &s.stack.cli;
    let c = &s.cloud;

    // The first VM boots from its overlay on the cached image; its console shows it.
    let vm = create_vm(cli, c, "first");
    assert_eq!(vm["state"], "Running", "{vm}");
    let uuid = vm["uuid"].as_str().unwrap().to_string();
    wait_console(&uuid, "ZSTACK-GUEST: booted");
    // zstack-cli reads the same console from the host's agent, followed piece by piece from
    // each answer's nextOffset.
    let (mut offset, mut text) = (0, String::new());
    loop {
        let piece = cli.inv(&[
            "GetVmConsoleLog",
            &format!("uuid={uuid}"),
            &format!("offset={offset}"),
        ]);
        assert_eq!(piece["offset"], offset, "{piece}");
        assert!(
            piece["text"].as_str().unwrap().len() <= 64 * 1024,
            "{piece}"
        );
        text.push_str(piece["text"].as_str().unwrap());
        offset = piece["nextOffset"].as_u64().unwrap();
        if offset >= piece["size"].as_u64().unwrap() {
            break;
        }
    }
    assert!(text.contains("ZSTACK-GUEST: booted"), "{text}");
    assert!(cli.inv(&["GetVmConsoleLog", &format!("uuid={uuid}")])["source"].is_null());
    let root = vm["allVolumes"][0]["installPath"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(root.contains("/rootVolumes/acct-"), "{root}");
    let cache =
        s.ps.at
            .join(format!("imagecache/template/{0}/{0}.qcow2", c.image));
    assert!(
        cache.is_file(),
        "the image is cached once on the primary storage"
    );
    let info = ok(Command::new("qemu-img").args(["info", "-U", &root]));
    assert!(
        info.contains(&cache.display().to_string()),
        "the root volume is an overlay on the cache: {info}"
    );
    // The platform tells cloud-init it runs on ZStack.
    let xml = virsh(&["dumpxml", &uuid]);
    assert!(xml.contains("www.zstack.io"), "{xml}");
    // The agent's unit waits for the storage's filesystem at boot.
    let dropin = std::fs::read_to_string(
        "/etc/systemd/system/zstack-kvmagent.service.d/zstack-storage.conf",
    )
    .unwrap();
    assert!(
        dropin.contains(&format!("RequiresMountsFor={}", s.ps.at.display())),
        "{dropin}"
    );
    cli.ok(&["DestroyVmInstance", &format!("uuid={uuid}")]);
    assert!(
        !Path::new(&root).exists(),
        "the root volume is deleted with its VM"
    );
    assert!(cache.is_file(), "the image cache is kept");

    // Each cache mode: in the domain XML, in qemu's command line, and in QueryVolume.
    for (mode, direct, write_cache) in [
        ("none", "\"direct\":true", "\"write-cache\":\"on\""),
        ("writeback", "\"direct\":false", "\"write-cache\":\"on\""),
        (
            "writethrough",
            "\"direct\":false",
            "\"write-cache\":\"off\"",
        ),
    ] {
        cli.ok(&[
            "UpdateGlobalConfig",
            "category=kvm",
            "name=vm.cacheMode",
            &format!("value={mode}"),
        ]);
        let vm = create_vm(cli, c, &format!("cache-{mode}"));
        let uuid = vm["uuid"].as_str().unwrap().to_string();
        assert_eq!(vm["allVolumes"][0]["cacheMode"], mode, "{vm}");
        let xml = virsh(&["dumpxml", &uuid]);
        assert!(xml.contains(&format!("cache='{mode}'")), "{mode}: {xml}");
        let line = cmdline(qemu_pid(&uuid).unwrap());
        assert!(
            line.contains(direct) && line.contains(write_cache),
            "{mode}: {line}"
        );
        cli.ok(&["DestroyVmInstance", &format!("uuid={uuid}")]);
    }

    // A live attach takes the cache mode of that moment.
    cli.ok(&[
        "UpdateGlobalConfig",
        "category=kvm",
        "name=vm.cacheMode",
        "value=writeback",
    ]);
    let vm = create_vm(cli, c, "with-data");
    let uuid = vm["uuid"].as_str().unwrap().to_string();
    // Hot-plug is a conversation with the guest's kernel (ACPI): let it boot first.
    wait_console(&uuid, "ZSTACK-GUEST: ready");
    cli.ok(&[
        "UpdateGlobalConfig",
        "category=kvm",
        "name=vm.cacheMode",
        "value=writethrough",
    ]);
    let vol = cli.uuid(&["CreateDataVolume", "name=data", "diskSize=64M"]);
    let attached = cli.inv(&[
        "AttachDataVolumeToVm",
        &format!("volumeUuid={vol}"),
        &format!("vmInstanceUuid={uuid}"),
    ]);
    assert_eq!(attached["cacheMode"], "writethrough");
    let xml = virsh(&["dumpxml", &uuid]);
    assert!(xml.contains("<target dev='vdb' bus='virtio'/>"), "{xml}");
    assert!(
        xml.contains("cache='writeback'") && xml.contains("cache='writethrough'"),
        "{xml}"
    );
    cli.ok(&["DetachDataVolumeFromVm", &format!("uuid={vol}")]);
    assert!(!virsh(&["dumpxml", &uuid]).contains("vdb"));
    cli.ok(&["DeleteDataVolume", &format!("uuid={vol}")]);
    cli.ok(&["DestroyVmInstance", &format!("uuid={uuid}")]);
    let _ = (&c.zone, &c.cluster, &c.host);
}

#[test]
#[ignore = "needs root, libvirt, qemu and build/*.bin: run by make test; installs on this host and removes it"]
fn the_vm_lifecycle_and_an_agent_restart_that_keeps_the_vm() {
    let s = setup();
    let cli = &s.stack.cli;
    let c = &s.cloud;
    cli.ok(&[
        "UpdateGlobalConfig",
        "category=kvm",
        "name=vm.gracefulStopTimeout",
        "value=5",
    ]);
    let vm = create_vm(cli, c, "life");
    let uuid = vm["uuid"].as_str().unwrap().to_string();
    wait_console(&uuid, "ZSTACK-GUEST: booted");

    // The agent restarts; the VM does not.
    let pid = qemu_pid(&uuid).unwrap();
    ok(Command::new("zstack-ctl").args(["restart", "--service", "zstack-kvmagent"]));
    assert_eq!(
        qemu_pid(&uuid),
        Some(pid),
        "the agent's restart stopped the VM"
    );
    assert_eq!(
        cli.inv(&["ReconnectHost", &format!("uuid={}", c.host)])["status"],
        "Connected"
    );
    assert_eq!(
        cli.list(&["QueryVmInstance", &format!("uuid={uuid}")])[0]["state"],
        "Running"
    );

    // Stop (graceful, forced after the timeout), start, reboot.
    let stopped = cli.inv(&["StopVmInstance", &format!("uuid={uuid}")]);
    assert_eq!(stopped["state"], "Stopped");
    assert!(qemu_pid(&uuid).is_none() || !Path::new(&format!("/proc/{}", pid)).exists());
    assert!(!virsh(&["list", "--name"]).contains(&uuid));
    let started = cli.inv(&["StartVmInstance", &format!("uuid={uuid}")]);
    assert_eq!(started["state"], "Running");
    assert!(virsh(&["list", "--name"]).contains(&uuid));
    assert_eq!(
        cli.inv(&["RebootVmInstance", &format!("uuid={uuid}")])["state"],
        "Running"
    );
    let cold = cli.inv(&["StopVmInstance", &format!("uuid={uuid}"), "type=cold"]);
    assert_eq!(cold["state"], "Stopped");

    // The DB follows the host: a VM killed behind the management node's back is Stopped after a
    // reconnect, one the host runs is Running.
    cli.inv(&["StartVmInstance", &format!("uuid={uuid}")]);
    virsh(&["destroy", &uuid]);
    cli.inv(&["ReconnectHost", &format!("uuid={}", c.host)]);
    assert_eq!(
        cli.list(&["QueryVmInstance", &format!("uuid={uuid}")])[0]["state"],
        "Stopped"
    );

    cli.ok(&["DestroyVmInstance", &format!("uuid={uuid}")]);
    assert!(cli
        .list(&["QueryVmInstance", &format!("uuid={uuid}")])
        .is_empty());
    assert!(!virsh(&["list", "--all", "--name"]).contains(&uuid));
    let _ = json!({});
}

#[test]
#[ignore = "needs root, libvirt, qemu and build/*.bin: run by make test; installs on this host and removes it"]
fn shared_mount_point_refusals() {
    let mut s = setup();
    let cli = &s.stack.cli;
    let c = &s.cloud;
    let smp = |name: &str, url: &str| -> String {
        cli.uuid(&[
            "AddSharedMountPointPrimaryStorage",
            &format!("name={name}"),
            &format!("url={url}"),
            &format!("zoneUuid={}", c.zone),
        ])
    };
    let attach_err = |ps: &str| -> Value {
        cli.err(&[
            "AttachPrimaryStorageToCluster",
            &format!("primaryStorageUuid={ps}"),
            &format!("clusterUuid={}", c.cluster),
        ])
    };

    // A relative or unnormalised URL is refused by the management node.
    for bad in ["zstack_ps", "/a/../b", "/etc"] {
        let e = cli.err(&[
            "AddSharedMountPointPrimaryStorage",
            "name=x",
            &format!("url={bad}"),
            &format!("zoneUuid={}", c.zone),
        ]);
        assert_eq!(e["field"], "url", "{bad}: {e}");
    }
    // A directory that is not a mount point.
    let dirs = tempfile::tempdir().unwrap();
    let plain = dirs.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    let e = attach_err(&smp("plain", &plain.display().to_string()));
    assert!(
        e["message"].as_str().unwrap().contains("not a mount point"),
        "{e}"
    );
    // A read-only filesystem.
    let mut ro = LoopFs::new(&dirs.path().join("ro"), 64);
    ro.umount();
    ro.mount(&["ro"]);
    let e = attach_err(&smp("ro", &ro.at.display().to_string()));
    assert!(
        e["message"].as_str().unwrap().contains("cannot write"),
        "{e}"
    );
    // Storage without O_DIRECT (tmpfs) and cache mode none: the VM is refused with the reason.
    let tmpfs = TmpfsMount::new("size=512m");
    let t_ps = smp("tmpfs", &tmpfs.path().display().to_string());
    cli.inv(&[
        "AttachPrimaryStorageToCluster",
        &format!("primaryStorageUuid={t_ps}"),
        &format!("clusterUuid={}", c.cluster),
    ]);
    let main_ps = cli.list(&["QueryPrimaryStorage", &format!("url={}", s.ps.at.display())])[0]
        ["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    cli.ok(&[
        "DetachPrimaryStorageFromCluster",
        &format!("primaryStorageUuid={main_ps}"),
        &format!("clusterUuid={}", c.cluster),
    ]);
    cli.ok(&[
        "UpdateGlobalConfig",
        "category=kvm",
        "name=vm.cacheMode",
        "value=none",
    ]);
    // tmpfs refuses O_DIRECT before Linux 6.6 and accepts it since: the agent must follow what
    // the filesystem does, refusing exactly when O_DIRECT fails.
    let probe = tmpfs.path().join("odirect-probe");
    let odirect = Command::new("dd")
        .args([
            "if=/dev/zero",
            &format!("of={}", probe.display()),
            "bs=4096",
            "count=1",
            "oflag=direct",
        ])
        .output()
        .unwrap()
        .status
        .success();
    let _ = std::fs::remove_file(&probe);
    let args = [
        "CreateVmInstance".to_string(),
        "name=odirect".to_string(),
        format!("instanceOfferingUuid={}", c.offering),
        format!("imageUuid={}", c.image),
        format!("l3NetworkUuids={}", c.l3),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    if odirect {
        let vm = cli.inv(&args);
        assert_eq!(vm["allVolumes"][0]["cacheMode"], "none", "{vm}");
        cli.ok(&[
            "DestroyVmInstance",
            &format!("uuid={}", vm["uuid"].as_str().unwrap()),
        ]);
    } else {
        let e = cli.err(&args);
        assert!(e["message"].as_str().unwrap().contains("O_DIRECT"), "{e}");
        assert!(
            cli.list(&["QueryVmInstance", "name=odirect"]).is_empty(),
            "a refused VM is not left behind"
        );
    }
    cli.ok(&[
        "DetachPrimaryStorageFromCluster",
        &format!("primaryStorageUuid={t_ps}"),
        &format!("clusterUuid={}", c.cluster),
    ]);
    cli.ok(&[
        "AttachPrimaryStorageToCluster",
        &format!("primaryStorageUuid={main_ps}"),
        &format!("clusterUuid={}", c.cluster),
    ]);

    // Another filesystem at the same path: the host refuses it and is Disconnected with the reason.
    // (A second ext4 image, mounted where the storage's filesystem was.)
    let mut other = LoopFs::new(&dirs.path().join("other"), 64);
    other.umount();
    s.ps.umount();
    let mut moved = LoopFs {
        image: other.image.clone(),
        at: s.ps.at.clone(),
        mounted: false,
    };
    moved.mount(&[]);
    let id_file = s.ps.at.join(".zstack-primary-storage-id");
    assert!(
        !id_file.exists(),
        "the other filesystem carries the storage's id file"
    );
    let e = cli.err(&["ReconnectHost", &format!("uuid={}", c.host)]);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains(".zstack-primary-storage-id"),
        "{e}"
    );
    let h = &cli.list(&["QueryHost", &format!("uuid={}", c.host)])[0];
    assert_eq!(h["status"], "Disconnected", "{h}");
    moved.umount();
    drop(other);
}

#[test]
#[ignore = "needs root, libvirt, qemu and build/*.bin: run by make test; installs on this host and removes it"]
fn an_upgrade_never_stops_a_running_vm() {
    let s = setup();
    let cli = &s.stack.cli;
    let vm = create_vm(cli, &s.cloud, "through-the-upgrade");
    let uuid = vm["uuid"].as_str().unwrap().to_string();
    wait_console(&uuid, "ZSTACK-GUEST: booted");
    let pid = qemu_pid(&uuid).unwrap();

    // The next patch release: the agent and the server restart as 1.2.1; the VM goes on.
    ok(bin_cmd(&bin_path("1.2.1"), &["-u", "-q"]));
    assert_eq!(qemu_pid(&uuid), Some(pid), "the upgrade stopped the VM");
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    let host = cli.inv(&["ReconnectHost", &format!("uuid={}", s.cloud.host)]);
    assert_eq!(host["status"], "Connected");
    assert_eq!(
        cli.list(&["QueryVmInstance", &format!("uuid={uuid}")])[0]["state"],
        "Running"
    );
    let status: Value =
        serde_json::from_str(&ok(Command::new("zstack-ctl").args(["status", "--json"]))).unwrap();
    assert_eq!(status["version"], "1.2.1", "{status}");
    cli.ok(&["DestroyVmInstance", &format!("uuid={uuid}")]);
}

/// A namespace on a test bridge through a veth (`port` on the bridge side), holding `addr`.
fn attach_ns(name: &str, bridge: &str, port: &str, addr: &str) {
    ok(Command::new("ip").args(["netns", "add", name]));
    ok(Command::new("ip").args([
        "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", name,
    ]));
    ok(Command::new("ip").args(["link", "set", port, "master", bridge, "up"]));
    ok(Command::new("ip").args(["-n", name, "link", "set", "eth0", "up"]));
    ok(Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]));
    ok(Command::new("ip").args(["-n", name, "addr", "add", addr, "dev", "eth0"]));
}

struct NamespacesGuard(Vec<&'static str>);

impl Drop for NamespacesGuard {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

#[test]
#[ignore = "needs root, libvirt, qemu and build/*.bin: run by make test; installs on this host and removes it"]
fn a_guest_takes_dhcp_runs_its_userdata_and_answers_through_its_eip() {
    let s = setup();
    let cli = &s.stack.cli;
    let c = &s.cloud;
    // The public side: a bridge and a namespace standing for the internet, holding the gateway.
    let _links = LinksGuard(vec!["br_zspub0".into(), "zsinet".into()]);
    let _ns = NamespacesGuard(vec!["zsk-internet"]);
    ok(Command::new("ip").args(["link", "add", "br_zspub0", "type", "bridge"]));
    ok(Command::new("ip").args(["link", "set", "br_zspub0", "up"]));
    attach_ns("zsk-internet", "br_zspub0", "zsinet", "172.30.0.1/24");

    let flat = cli.list(&["QueryNetworkServiceProvider", "type=Flat"])[0]["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let services = json!({ &flat: ["DHCP", "Userdata", "Eip"] }).to_string();
    cli.ok(&[
        "AttachNetworkServiceToL3Network",
        &format!("l3NetworkUuid={}", c.l3),
        &format!("networkServices={services}"),
    ]);
    let pub_l2 = cli.uuid(&[
        "CreateL2NoVlanNetwork",
        "name=public",
        &format!("zoneUuid={}", c.zone),
        "physicalInterface=zspub0",
    ]);
    cli.ok(&[
        "AttachL2NetworkToCluster",
        &format!("l2NetworkUuid={pub_l2}"),
        &format!("clusterUuid={}", c.cluster),
    ]);
    let pub_l3 = cli.uuid(&[
        "CreateL3Network",
        "name=public",
        &format!("l2NetworkUuid={pub_l2}"),
    ]);
    cli.ok(&[
        "AddIpRange",
        &format!("l3NetworkUuid={pub_l3}"),
        "name=pub",
        "startIp=172.30.0.10",
        "endIp=172.30.0.50",
        "netmask=255.255.255.0",
        "gateway=172.30.0.1",
    ]);

    let userdata = "#!/bin/sh\necho \"userdata-ran $INSTANCE_ID\" > /www/ud.txt\n";
    let vm = cli.inv(&[
        "CreateVmInstance",
        "name=guest1",
        &format!("instanceOfferingUuid={}", c.offering),
        &format!("imageUuid={}", c.image),
        &format!("l3NetworkUuids={}", c.l3),
        &format!("userData={userdata}"),
    ]);
    let uuid = vm["uuid"].as_str().unwrap().to_string();
    let ip = vm["vmNics"][0]["ip"].as_str().unwrap().to_string();
    let nic = vm["vmNics"][0]["uuid"].as_str().unwrap().to_string();
    // DHCP gave it the allocated address; it fetched its instance-id and ran its userdata.
    wait_console(&uuid, "ZSTACK-GUEST: ready");
    let console = console(&uuid);
    assert!(
        console.contains(&format!("ZSTACK-GUEST: dhcp {ip}")),
        "{console}"
    );
    assert!(
        console.contains(&format!("ZSTACK-GUEST: instance-id {uuid}")),
        "{console}"
    );
    assert!(
        console.contains("ZSTACK-GUEST: userdata ran rc=0"),
        "{console}"
    );

    // Its EIP: the internet reaches the guest's web server through the VIP.
    let vip = cli.inv(&["CreateVip", "name=vip", &format!("l3NetworkUuid={pub_l3}")]);
    let vip_ip = vip["ip"].as_str().unwrap().to_string();
    let eip = cli.inv(&[
        "CreateEip",
        "name=eip",
        &format!("vipUuid={}", vip["uuid"].as_str().unwrap()),
        &format!("vmNicUuid={nic}"),
    ]);
    let get = |path: &str| {
        run(Command::new("ip").args([
            "netns",
            "exec",
            "zsk-internet",
            "curl",
            "-s",
            "-m",
            "3",
            &format!("http://{vip_ip}{path}"),
        ]))
    };
    let mut body = String::new();
    wait_until(
        "the guest to answer through its EIP",
        Duration::from_secs(30),
        || {
            let o = get("/ud.txt");
            body = String::from_utf8_lossy(&o.stdout).into_owned();
            o.status.success() && !body.is_empty()
        },
    );
    assert_eq!(body.trim(), format!("userdata-ran {uuid}"));
    let index = String::from_utf8_lossy(&get("/").stdout).into_owned();
    assert_eq!(index.trim(), format!("zstack-test-guest {uuid}"));

    // The host's state drifts (its EIP namespace is gone); a reconnect makes it equal to the DB.
    let eip_ns = zstack_kvmagent::eip::namespace_name(vip["uuid"].as_str().unwrap());
    ok(Command::new("ip").args(["netns", "del", &eip_ns]));
    assert!(!get("/").status.success());
    cli.inv(&["ReconnectHost", &format!("uuid={}", c.host)]);
    wait_until(
        "the EIP to be re-applied by the reconnect",
        Duration::from_secs(30),
        || get("/").status.success(),
    );

    // Detached: the VIP no longer leads to the guest; destroyed: nothing of the VM is left.
    cli.ok(&[
        "DetachEip",
        &format!("uuid={}", eip["uuid"].as_str().unwrap()),
    ]);
    assert!(
        !get("/").status.success(),
        "the VIP still answers after DetachEip"
    );
    cli.ok(&["DestroyVmInstance", &format!("uuid={uuid}")]);
    let namespaces = ok(Command::new("ip").args(["netns", "list"]));
    assert!(
        !namespaces.contains(&format!("zs-l3-{}", c.l3)),
        "{namespaces}"
    );
}

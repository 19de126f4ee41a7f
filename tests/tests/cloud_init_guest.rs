//! End to end with a real cloud image: Debian 12 with Debian's own cloud-init, unmodified and with
//! its default datasource list (scripts/build-cloud-guest-image.sh), booted from its disk as a
//! ZStack VM under TCG on this host (all-in-one install, this host as KVM host 127.0.0.1, shared
//! mount point storage on a loop-mounted filesystem). cloud-init must find the metadata service at
//! 169.254.169.254 by itself (the VM's SMBIOS chassis asset tag says ZStack), set the hostname from
//! meta-data, install the VM's ssh key and run its `#cloud-config` user data; all of it is checked
//! over SSH from a namespace standing for the internet, through the VM's EIP. Prints how long the
//! boot took ("cloud-init guest: ..." lines, which scripts/bench-cloud-guest.sh reports).
//! Installs on this host and removes it afterwards; destroys every VM, bridge and namespace it made.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

use std::os::fd::AsFd;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use zstack_ssh::{Credentials, HostKeyPolicy, NodeKey, Session};
use zstack_tests::cli::*;
use zstack_tests::kvm::*;
use zstack_tests::*;

/// The private L2's physical interface: it does not exist, so the agent makes only its bridge.
const PRIVATE_IFACE: &str = "zsci0";
/// The public L2's interface; its bridge br_zscipub0 is made by the test, with the internet on it.
const PUBLIC_IFACE: &str = "zscipub0";
const PUBLIC_BRIDGE: &str = "br_zscipub0";
const INTERNET_NS: &str = "zsci-internet";
const INTERNET_PORT: &str = "zsciinet";
/// The VM's name, which meta-data serves as its hostname.
const VM_NAME: &str = "ci-guest";
/// Debian's cloud-init puts the VM's keys in the authorized_keys of its default user.
const GUEST_USER: &str = "debian";
/// A Debian boot under TCG on a busy 2-core machine takes minutes; this only bounds a hang.
const BOOT_TIMEOUT: Duration = Duration::from_secs(15 * 60);

const USER_DATA: &str = r#"#cloud-config
write_files:
  - path: /etc/zstack-test/written
    permissions: "0644"
    content: |
      written by cloud-init write_files
runcmd:
  - [sh, -c, "cut -d ' ' -f1 /proc/uptime > /var/tmp/runcmd-uptime && echo runcmd ran > /var/tmp/runcmd-marker"]
"#;

/// Runs `f` on a thread inside network namespace `ns` (`setns` moves only the calling thread), so
/// the sockets it opens are the namespace's.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// What one command printed, and whether it succeeded.
struct Ran {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Logs in as the guest's default user through `addr` with `key`, from the internet namespace,
/// and runs each command; `Err` when the login fails (not booted yet).
fn ssh_run(
    addr: &str,
    key_dir: &std::path::Path,
    commands: &[&[&str]],
) -> Result<Vec<Ran>, String> {
    let addr = addr.to_string();
    let key_dir = key_dir.to_path_buf();
    let commands: Vec<Vec<String>> = commands
        .iter()
        .map(|c| c.iter().map(|a| a.to_string()).collect())
        .collect();
    in_netns(INTERNET_NS, move || {
        let key = NodeKey::load_or_create(&key_dir).map_err(|e| e.to_string())?;
        let session = Session::connect(
            &addr,
            22,
            GUEST_USER,
            Credentials::Key(&key),
            HostKeyPolicy::FirstUse,
        )
        .map_err(|e| e.to_string())?;
        let mut ran = Vec::new();
        for argv in &commands {
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            let out = session.run(&argv).map_err(|e| e.to_string())?;
            ran.push(Ran {
                success: out.success(),
                stdout: out.stdout_text(),
                stderr: out.stderr_text(),
            });
        }
        Ok(ran)
    })
}

/// Removes the test's namespaces when dropped.
struct NamespacesGuard(Vec<&'static str>);

impl Drop for NamespacesGuard {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

#[test]
#[ignore = "needs root, libvirt, qemu, Debian's mirror and build/*.bin: run by make test; installs on this host and removes it"]
fn stock_cloud_init_finds_the_metadata_and_runs_its_cloud_config() {
    // Built (or found in the cache) before anything is installed: a failed build leaves nothing.
    let image = cloud_guest_image();
    ensure_libvirtd();
    let stack = install();
    let cli = &stack.cli;
    let _domains = DomainsGuard;
    let _namespaces = AgentNamespacesGuard::new();
    let _links = LinksGuard(vec![
        format!("br_{PRIVATE_IFACE}"),
        PUBLIC_BRIDGE.into(),
        INTERNET_PORT.into(),
    ]);
    let _ns = NamespacesGuard(vec![INTERNET_NS]);
    let dirs = tempfile::tempdir().unwrap();
    let ps = LoopFs::new(&dirs.path().join("ps"), 4096);
    let bs = dirs.path().join("bs");

    // The cloud: this host, SMP storage, the cloud image, a flat L3 with DHCP, user data and EIPs.
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
    let ps_uuid = cli.uuid(&[
        "AddSharedMountPointPrimaryStorage",
        "name=smp",
        &format!("url={}", ps.at.display()),
        &format!("zoneUuid={zone}"),
    ]);
    cli.ok(&[
        "AttachPrimaryStorageToCluster",
        &format!("primaryStorageUuid={ps_uuid}"),
        &format!("clusterUuid={cluster}"),
    ]);
    // The management node runs as the user zstack: its backup storage directory is its own.
    give_to_server_user(&bs);
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
    let source = bs.join("debian-cloud.qcow2");
    std::fs::copy(&image, &source).unwrap();
    let image_uuid = cli.uuid(&[
        "AddImage",
        "name=debian-cloud",
        &format!("url={}", source.display()),
        &format!("backupStorageUuids={bs_uuid}"),
    ]);
    // cloud-init's Python wants more room than the busybox guest.
    let offering = cli.uuid(&[
        "CreateInstanceOffering",
        "name=small",
        "cpuNum=1",
        "memorySize=512M",
    ]);
    let l2 = cli.uuid(&[
        "CreateL2NoVlanNetwork",
        "name=private",
        &format!("zoneUuid={zone}"),
        &format!("physicalInterface={PRIVATE_IFACE}"),
    ]);
    cli.ok(&[
        "AttachL2NetworkToCluster",
        &format!("l2NetworkUuid={l2}"),
        &format!("clusterUuid={cluster}"),
    ]);
    let l3 = cli.uuid(&[
        "CreateL3Network",
        "name=private",
        &format!("l2NetworkUuid={l2}"),
    ]);
    cli.ok(&[
        "AddIpRange",
        &format!("l3NetworkUuid={l3}"),
        "name=r",
        "startIp=10.97.0.10",
        "endIp=10.97.0.100",
        "netmask=255.255.255.0",
        "gateway=10.97.0.1",
    ]);
    let flat = cli.list(&["QueryNetworkServiceProvider", "type=Flat"])[0]["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let services = json!({ &flat: ["DHCP", "Userdata", "Eip"] }).to_string();
    cli.ok(&[
        "AttachNetworkServiceToL3Network",
        &format!("l3NetworkUuid={l3}"),
        &format!("networkServices={services}"),
    ]);

    // The public side: a bridge, and a namespace standing for the internet holding the gateway.
    ok(Command::new("ip").args(["link", "add", PUBLIC_BRIDGE, "type", "bridge"]));
    ok(Command::new("ip").args(["link", "set", PUBLIC_BRIDGE, "up"]));
    ok(Command::new("ip").args(["netns", "add", INTERNET_NS]));
    ok(Command::new("ip").args([
        "link",
        "add",
        INTERNET_PORT,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        INTERNET_NS,
    ]));
    ok(Command::new("ip").args(["link", "set", INTERNET_PORT, "master", PUBLIC_BRIDGE, "up"]));
    ok(Command::new("ip").args(["-n", INTERNET_NS, "link", "set", "eth0", "up"]));
    ok(Command::new("ip").args(["-n", INTERNET_NS, "link", "set", "lo", "up"]));
    ok(Command::new("ip").args([
        "-n",
        INTERNET_NS,
        "addr",
        "add",
        "172.29.0.1/24",
        "dev",
        "eth0",
    ]));
    let pub_l2 = cli.uuid(&[
        "CreateL2NoVlanNetwork",
        "name=public",
        &format!("zoneUuid={zone}"),
        &format!("physicalInterface={PUBLIC_IFACE}"),
    ]);
    cli.ok(&[
        "AttachL2NetworkToCluster",
        &format!("l2NetworkUuid={pub_l2}"),
        &format!("clusterUuid={cluster}"),
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
        "startIp=172.29.0.10",
        "endIp=172.29.0.50",
        "netmask=255.255.255.0",
        "gateway=172.29.0.1",
    ]);

    // The VM: its key, its #cloud-config, its name as hostname; an EIP before it boots.
    let key_dir = dirs.path().join("key");
    let key = NodeKey::load_or_create(&key_dir).unwrap();
    let created = Instant::now();
    let vm = cli.inv(&[
        "CreateVmInstance",
        &format!("name={VM_NAME}"),
        &format!("instanceOfferingUuid={offering}"),
        &format!("imageUuid={image_uuid}"),
        &format!("l3NetworkUuids={l3}"),
        &format!("sshKey={}", key.public_line().unwrap()),
        &format!("userData={USER_DATA}"),
    ]);
    assert_eq!(vm["state"], "Running", "{vm}");
    let uuid = vm["uuid"].as_str().unwrap().to_string();
    let nic = vm["vmNics"][0]["uuid"].as_str().unwrap().to_string();
    let ip = vm["vmNics"][0]["ip"].as_str().unwrap().to_string();
    let vip = cli.inv(&["CreateVip", "name=vip", &format!("l3NetworkUuid={pub_l3}")]);
    let vip_ip = vip["ip"].as_str().unwrap().to_string();
    cli.inv(&[
        "CreateEip",
        "name=eip",
        &format!("vipUuid={}", vip["uuid"].as_str().unwrap()),
        &format!("vmNicUuid={nic}"),
    ]);

    // sshd answers with the VM's key once cloud-init has installed it; then wait for runcmd.
    let deadline = created + BOOT_TIMEOUT;
    let logged_in = loop {
        let error = match ssh_run(&vip_ip, &key_dir, &[&["true"]]) {
            Ok(_) => break created.elapsed(),
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "no SSH login to {VM_NAME} through {vip_ip} within {BOOT_TIMEOUT:?}: {error}\n\
             console:\n{}",
            console(&uuid)
        );
        std::thread::sleep(Duration::from_secs(5));
    };
    eprintln!(
        "cloud-init guest: ssh login with the VM's key after {:.1} s",
        logged_in.as_secs_f64()
    );
    let user_data_done = loop {
        let marker = ssh_run(
            &vip_ip,
            &key_dir,
            &[&["test", "-s", "/var/tmp/runcmd-marker"]],
        );
        if marker.is_ok_and(|ran| ran[0].success) {
            break created.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "runcmd did not run within {BOOT_TIMEOUT:?}; console:\n{}",
            console(&uuid)
        );
        std::thread::sleep(Duration::from_secs(2));
    };
    eprintln!(
        "cloud-init guest: user data done (runcmd marker seen) {:.1} s after CreateVmInstance",
        user_data_done.as_secs_f64()
    );

    let ran = ssh_run(
        &vip_ip,
        &key_dir,
        &[
            &["hostname"],
            &["cat", "/etc/zstack-test/written"],
            &["cat", "/var/tmp/runcmd-marker"],
            &["cat", "/var/tmp/runcmd-uptime"],
            &["cloud-init", "status", "--wait", "--long"],
            &["cat", "/run/cloud-init/result.json"],
            &["cloud-init", "query", "v1.cloud_name"],
            &["cloud-init", "query", "v1.instance_id"],
            &["sudo", "cat", "/run/cloud-init/ds-identify.log"],
            &["ip", "-4", "-o", "addr", "show", "scope", "global"],
            &[
                "sudo",
                "grep",
                "-E",
                "WARNING|ERROR|Traceback",
                "/var/log/cloud-init.log",
            ],
        ],
    )
    .unwrap();
    let out: Vec<&str> = ran.iter().map(|r| r.stdout.as_str()).collect();
    let problems = format!(
        "cloud-init's status:\n{}{}\ncloud-init's warnings and errors:\n{}",
        out[4], ran[4].stderr, out[10]
    );
    assert_eq!(out[0].trim(), VM_NAME, "the hostname comes from meta-data");
    assert_eq!(out[1], "written by cloud-init write_files\n", "write_files");
    assert_eq!(out[2].trim(), "runcmd ran", "runcmd");
    eprintln!(
        "cloud-init guest: runcmd ran at guest uptime {} s",
        out[3].trim()
    );
    // Stock cloud-init chose the Ec2 datasource by itself (ds-identify: the asset tag is
    // ZStack's), saw the platform as ZStack, and finished without an error.
    assert!(
        ran[4].success && out[4].contains("status: done"),
        "{problems}"
    );
    let result: Value = serde_json::from_str(out[5]).unwrap();
    assert!(
        result["v1"]["datasource"]
            .as_str()
            .is_some_and(|d| d.starts_with("DataSourceEc2")),
        "{result}"
    );
    assert_eq!(result["v1"]["errors"], json!([]), "{result}\n{problems}");
    assert_eq!(out[6].trim(), "zstack", "cloud-init's cloud name");
    assert_eq!(out[7].trim(), uuid, "the instance-id is the VM's uuid");
    assert!(
        out[8].contains("Found single datasource: Ec2"),
        "ds-identify:\n{}",
        out[8]
    );
    assert!(out[9].contains(&format!("inet {ip}/")), "DHCP: {}", out[9]);

    cli.ok(&["DestroyVmInstance", &format!("uuid={uuid}")]);
}

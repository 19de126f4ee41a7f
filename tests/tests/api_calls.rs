//! The management node's API through zstack-cli, call by call, on one real install on this host
//! shared by every test of this binary (harness = false, run by zstack_tests::suite): a zone
//! with a simulator cluster of two hosts (build_cloud) and three running VMs with user data,
//! web1, web2 and db1. Each test leaves that cloud as it found it (what it adds it removes), so
//! the tests hold in any order and alone. Installs on this host and removes it afterwards.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

use std::cell::Cell;
use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};

use serde_json::{json, Value};
use zstack_tests::cli::*;
use zstack_tests::simulated_cloud::*;
use zstack_tests::suite::{self, Test};
use zstack_tests::*;

const USER_DATA: &str = "#cloud-config\nruncmd:\n  - echo hello > /tmp/hello\n";

/// The install and the cloud every test starts from.
struct Flow {
    stack: Stack,
    cloud: Cloud,
    /// web1, web2 and db1 as CreateVmInstance answered.
    vms: Vec<Value>,
    /// How many VMs CreateVmInstance made on this install (jobs it recorded).
    created: Cell<usize>,
}

impl Flow {
    fn boot() -> Flow {
        let stack = install();
        let cloud = build_cloud(&stack.cli, 2, ("10.10.0.10", "10.10.0.200"));
        let vms = ["web1", "web2", "db1"]
            .iter()
            .map(|name| {
                create_vm(
                    &stack.cli,
                    &cloud,
                    name,
                    &[&format!("userData={USER_DATA}")],
                )
            })
            .collect();
        Flow {
            stack,
            cloud,
            vms,
            created: Cell::new(3),
        }
    }

    fn cli(&self) -> &Cli {
        &self.stack.cli
    }

    fn create_vm(&self, name: &str, extra: &[&str]) -> Value {
        let vm = create_vm(self.cli(), &self.cloud, name, extra);
        self.created.set(self.created.get() + 1);
        vm
    }

    fn web1(&self) -> String {
        self.vms[0]["uuid"].as_str().unwrap().to_string()
    }

    fn web1_nic(&self) -> String {
        self.vms[0]["vmNics"][0]["uuid"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

fn main() -> ExitCode {
    suite::run(
        Flow::boot,
        &[
            Test {
                name: "calls_without_a_valid_session_are_refused",
                run: calls_without_a_valid_session_are_refused,
            },
            Test {
                name: "unknown_calls_parameters_and_values_are_refused_saying_what_is_wrong",
                run: unknown_calls_parameters_and_values_are_refused_saying_what_is_wrong,
            },
            Test {
                name: "a_cluster_needs_a_known_hypervisor_and_an_existing_zone",
                run: a_cluster_needs_a_known_hypervisor_and_an_existing_zone,
            },
            Test {
                name: "vms_run_on_the_simulator_hosts_with_distinct_ips_from_the_range",
                run: vms_run_on_the_simulator_hosts_with_distinct_ips_from_the_range,
            },
            Test {
                name: "a_root_password_is_kept_only_as_its_hash_and_a_weak_one_is_refused",
                run: a_root_password_is_kept_only_as_its_hash_and_a_weak_one_is_refused,
            },
            Test {
                name: "queries_take_every_operator_fields_limit_and_count",
                run: queries_take_every_operator_fields_limit_and_count,
            },
            Test {
                name: "the_cli_prints_a_table",
                run: the_cli_prints_a_table,
            },
            Test {
                name: "the_interactive_shell_keeps_the_session_and_answers_each_line",
                run: the_interactive_shell_keeps_the_session_and_answers_each_line,
            },
            Test {
                name: "an_eip_attaches_detaches_and_is_refused_on_the_wrong_l3_and_twice",
                run: an_eip_attaches_detaches_and_is_refused_on_the_wrong_l3_and_twice,
            },
            Test {
                name: "stop_frees_the_host_capacity_start_takes_it_again_on_the_last_host",
                run: stop_frees_the_host_capacity_start_takes_it_again_on_the_last_host,
            },
            Test {
                name: "a_global_config_change_is_seen_by_the_next_query",
                run: a_global_config_change_is_seen_by_the_next_query,
            },
            Test {
                name: "a_data_volume_is_made_at_attach_detached_and_deleted",
                run: a_data_volume_is_made_at_attach_detached_and_deleted,
            },
            Test {
                name: "destroy_frees_the_ip_and_keeps_the_eip_detached",
                run: destroy_frees_the_ip_and_keeps_the_eip_detached,
            },
            Test {
                name: "an_image_comes_from_an_http_mirror_and_must_be_what_its_format_says",
                run: an_image_comes_from_an_http_mirror_and_must_be_what_its_format_says,
            },
            Test {
                name: "primary_storage_in_use_is_not_detached_and_an_unused_one_is",
                run: primary_storage_in_use_is_not_detached_and_an_unused_one_is,
            },
            Test {
                name: "deleting_a_cluster_or_host_in_use_is_refused",
                run: deleting_a_cluster_or_host_in_use_is_refused,
            },
            Test {
                name: "every_vm_creation_is_a_recorded_job",
                run: every_vm_creation_is_a_recorded_job,
            },
            Test {
                name: "the_api_reference_says_which_calls_are_jobs",
                run: the_api_reference_says_which_calls_are_jobs,
            },
            Test {
                name: "log_out_ends_the_session",
                run: log_out_ends_the_session,
            },
        ],
    )
}

/// No session, or a session the node never gave.
fn calls_without_a_valid_session_are_refused(_: &Flow) {
    let anon = Cli::new();
    assert_eq!(anon.err(&["QueryZone"])["code"], "INVALID_SESSION");
    std::fs::create_dir_all(anon.home.path().join(".zstack/cli")).unwrap();
    std::fs::write(
        anon.home.path().join(".zstack/cli/session"),
        "0123456789abcdef0123456789abcdef",
    )
    .unwrap();
    assert_eq!(anon.err(&["QueryZone"])["code"], "INVALID_SESSION");
}

/// An unknown call and parameter, a missing field, a value outside the allowed ones.
fn unknown_calls_parameters_and_values_are_refused_saying_what_is_wrong(f: &Flow) {
    let cli = f.cli();
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
}

fn a_cluster_needs_a_known_hypervisor_and_an_existing_zone(f: &Flow) {
    let cli = f.cli();
    let e = cli.err(&[
        "CreateCluster",
        "name=x",
        &format!("zoneUuid={}", f.cloud.zone),
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
}

/// web1, web2, db1 (with user data): Running on a simulator host, IPs from the range, distinct,
/// the two hosts sharing them by free memory.
fn vms_run_on_the_simulator_hosts_with_distinct_ips_from_the_range(f: &Flow) {
    for vm in &f.vms {
        assert_eq!(vm["state"], "Running", "{vm}");
        assert!(f
            .cloud
            .hosts
            .contains(&vm["hostUuid"].as_str().unwrap().to_string()));
        assert_eq!(vm["allVolumes"].as_array().unwrap().len(), 1);
        assert_eq!(vm["allVolumes"][0]["size"], 1i64 << 30);
    }
    let ips: HashSet<String> = f
        .vms
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
    let hosts_used: HashSet<&str> = f
        .vms
        .iter()
        .map(|v| v["hostUuid"].as_str().unwrap())
        .collect();
    assert_eq!(hosts_used.len(), 2);
}

fn a_root_password_is_kept_only_as_its_hash_and_a_weak_one_is_refused(f: &Flow) {
    let (cli, c) = (f.cli(), &f.cloud);
    let e = cli.err(&[
        "CreateVmInstance",
        "name=weak",
        &format!("instanceOfferingUuid={}", c.offering),
        &format!("imageUuid={}", c.image),
        &format!("l3NetworkUuids={}", c.private_l3),
        "rootPassword=short",
    ]);
    assert_eq!(e["field"], "rootPassword");
    let pw = f.create_vm("with-password", &["rootPassword=Sup3r-Secret-pw"]);
    let hash = ok(Command::new("sqlite3").args([
        "/var/lib/zstack/zstack.db",
        &format!(
            "SELECT root_password_hash FROM vm_instance WHERE uuid = '{}'",
            pw["uuid"].as_str().unwrap()
        ),
    ]));
    let dump = ok(Command::new("sqlite3").args(["/var/lib/zstack/zstack.db", ".dump"]));
    cli.ok(&[
        "DestroyVmInstance",
        &format!("uuid={}", pw["uuid"].as_str().unwrap()),
    ]);
    assert!(hash.starts_with("$6$"), "{hash}");
    assert!(
        !dump.contains("Sup3r-Secret-pw"),
        "the password is in the database"
    );
}

/// On web1, web2 and db1 (1 CPU each, all Running).
fn queries_take_every_operator_fields_limit_and_count(f: &Flow) {
    let cli = f.cli();
    let web1 = f.web1();
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
    let two = format!("uuid?={},{}", web1, f.vms[1]["uuid"].as_str().unwrap());
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
}

/// `--table`: a header, a rule, a row per result.
fn the_cli_prints_a_table(f: &Flow) {
    let table = ok(Command::new("zstack-cli")
        .args(["--table", "QueryZone", "fields=name,description"])
        .env("HOME", f.cli().home.path()));
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
}

/// The shell, fed on stdin.
fn the_interactive_shell_keeps_the_session_and_answers_each_line(f: &Flow) {
    let mut shell = Command::new("zstack-cli")
        .env("HOME", f.cli().home.path())
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
}

/// VIP and EIP on web1's NIC: create attached, detach, attach again; refused on the wrong L3
/// and twice; a VIP in use is not deleted.
fn an_eip_attaches_detaches_and_is_refused_on_the_wrong_l3_and_twice(f: &Flow) {
    let (cli, c) = (f.cli(), &f.cloud);
    let web1_nic = f.web1_nic();
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
    assert_eq!(eip["guestIp"], f.vms[0]["vmNics"][0]["ip"]);
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
    // Left as found.
    cli.ok(&["DeleteEip", &format!("uuid={eip_uuid}")]);
    cli.ok(&[
        "DeleteVip",
        &format!("uuid={}", vip["uuid"].as_str().unwrap()),
    ]);
    cli.ok(&["DeleteVip", &format!("uuid={vip2}")]);
}

/// Stop frees the host's capacity; start takes it again on the VM's last host, with its IP;
/// reboot.
fn stop_frees_the_host_capacity_start_takes_it_again_on_the_last_host(f: &Flow) {
    let cli = f.cli();
    let web1 = f.web1();
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
        started["vmNics"][0]["ip"], f.vms[0]["vmNics"][0]["ip"],
        "a VM keeps its IP"
    );
    assert_eq!(
        cli.inv(&["RebootVmInstance", &format!("uuid={web1}")])["state"],
        "Running"
    );
}

fn a_global_config_change_is_seen_by_the_next_query(f: &Flow) {
    let cli = f.cli();
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
}

/// A data volume on web1: made on the VM's storage at attach, detached, deleted.
fn a_data_volume_is_made_at_attach_detached_and_deleted(f: &Flow) {
    let cli = f.cli();
    let web1 = f.web1();
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
}

/// A VM of its own with an EIP: destroyed, it frees its IP for the next taker; the EIP and VIP
/// are kept, detached.
fn destroy_frees_the_ip_and_keeps_the_eip_detached(f: &Flow) {
    let (cli, c) = (f.cli(), &f.cloud);
    let doomed = f.create_vm("doomed", &[]);
    let vip = cli.uuid(&[
        "CreateVip",
        "name=vip-doomed",
        &format!("l3NetworkUuid={}", c.public_l3),
    ]);
    let eip_uuid = cli.uuid(&[
        "CreateEip",
        "name=eip-doomed",
        &format!("vipUuid={vip}"),
        &format!(
            "vmNicUuid={}",
            doomed["vmNics"][0]["uuid"].as_str().unwrap()
        ),
    ]);
    let used_before = cli.ok(&["QueryVmInstance", "count=true"])["total"]
        .as_i64()
        .unwrap();
    cli.ok(&[
        "DestroyVmInstance",
        &format!("uuid={}", doomed["uuid"].as_str().unwrap()),
    ]);
    assert_eq!(
        cli.ok(&["QueryVmInstance", "count=true"])["total"]
            .as_i64()
            .unwrap(),
        used_before - 1
    );
    assert!(cli.list(&["QueryEip", &format!("uuid={eip_uuid}")])[0]["vmNicUuid"].is_null());
    cli.ok(&["DeleteEip", &format!("uuid={eip_uuid}")]);
    cli.ok(&["DeleteVip", &format!("uuid={vip}")]);
    // A destroyed VM's address can be taken again.
    let freed = doomed["vmNics"][0]["ip"].as_str().unwrap();
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
    cli.ok(&[
        "DeleteVip",
        &format!("uuid={}", vip3["uuid"].as_str().unwrap()),
    ]);
}

/// From an http:// URL the management node reaches (an air-gapped mirror); a file that is not
/// what its format says is refused and not kept; https:// is not fetched.
fn an_image_comes_from_an_http_mirror_and_must_be_what_its_format_says(f: &Flow) {
    let cli = f.cli();
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
    let _ = std::fs::remove_file(&fake);
    assert_eq!(e["field"], "format", "{e}");
    assert_eq!(cli.list(&["QueryImage", "name=fake"]).len(), 0);
    let e = cli.err(&[
        "AddImage",
        "name=x",
        "url=https://example.com/x.qcow2",
        &format!("backupStorageUuids={bs}"),
    ]);
    assert_eq!(e["field"], "url");
    cli.ok(&[
        "DeleteImage",
        &format!("uuid={}", img["uuid"].as_str().unwrap()),
    ]);
}

/// The storage web1, web2 and db1 run from stays attached; a second one is attached, detached
/// and deleted.
fn primary_storage_in_use_is_not_detached_and_an_unused_one_is(f: &Flow) {
    let (cli, c) = (f.cli(), &f.cloud);
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
}

/// Refused with what to do first.
fn deleting_a_cluster_or_host_in_use_is_refused(f: &Flow) {
    let cli = f.cli();
    let e = cli.err(&["DeleteCluster", &format!("uuid={}", f.cloud.cluster)]);
    assert!(e["message"].as_str().unwrap().contains("host"), "{e}");
    let e = cli.err(&[
        "DeleteHost",
        &format!("uuid={}", f.vms[1]["hostUuid"].as_str().unwrap()),
    ]);
    assert_eq!(e["code"], "RESOURCE_IN_USE");
}

/// web1, web2, db1 and each VM the other tests made.
fn every_vm_creation_is_a_recorded_job(f: &Flow) {
    let jobs = f.cli().list(&["QueryJob", "apiName=CreateVmInstance"]);
    assert_eq!(jobs.len(), f.created.get());
    assert!(jobs.iter().all(|j| j["state"] == "Succeeded"), "{jobs:?}");
}

/// The API reference lists every call, and says which are jobs.
fn the_api_reference_says_which_calls_are_jobs(_: &Flow) {
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
}

/// A session of its own (the other tests keep theirs): LogOut forgets it in the CLI and ends it
/// on the node.
fn log_out_ends_the_session(f: &Flow) {
    let cli = Cli::new();
    cli.ok(&[
        "LogInByAccount",
        "accountName=admin",
        &format!("password={}", f.stack.password),
    ]);
    let session = cli.session();
    cli.ok(&["LogOut"]);
    assert!(!cli.home.path().join(".zstack/cli/session").exists());
    let r = ureq::post("http://127.0.0.1:8080/v1/api/QueryZone")
        .set("Authorization", &format!("OAuth {}", session.trim()))
        .send_json(json!({}));
    assert!(matches!(r, Err(ureq::Error::Status(401, _))));
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

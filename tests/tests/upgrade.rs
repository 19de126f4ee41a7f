//! Upgrades on a real install (this host; removed afterwards), with data made through the old
//! release's API and checked through the new one. Needs build/zstack-installer-{1.0.0,1.1.0,1.2.0}.bin.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;
use zstack_tests::*;

const CUSTOM_CRON: &str = "MAILTO=ops\n15 3 * * * zstack-ctl dump_mysql --keep-amount 30\n0 1 * * * /usr/local/bin/rotate\n";

struct Cli {
    home: tempfile::TempDir,
}

impl Cli {
    fn new() -> Cli {
        Cli {
            home: tempfile::tempdir().unwrap(),
        }
    }
    fn call(&self, args: &[&str]) -> Value {
        let o = run(Command::new("zstack-cli")
            .args(args)
            .env("HOME", self.home.path()));
        serde_json::from_str(&String::from_utf8_lossy(&o.stdout))
            .unwrap_or_else(|e| panic!("zstack-cli {args:?}: {e}: {}", text(&o)))
    }
    fn login(&self) {
        let props = std::fs::read_to_string("/etc/zstack/zstack.properties").unwrap();
        let pw = props
            .lines()
            .find_map(|l| l.strip_prefix("admin.password = "))
            .unwrap()
            .to_string();
        let r = self.call(&[
            "LogInByAccount",
            "accountName=admin",
            &format!("password={pw}"),
        ]);
        assert!(r["inventory"]["uuid"].is_string(), "{r}");
    }
    fn zones(&self) -> Vec<String> {
        let r = self.call(&["QueryZone"]);
        let mut v: Vec<String> = r["inventories"]
            .as_array()
            .unwrap_or_else(|| panic!("{r}"))
            .iter()
            .map(|z| z["name"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    }
    fn cache_mode(&self) -> String {
        let r = self.call(&["QueryGlobalConfig", "category=kvm", "name=vm.cacheMode"]);
        r["inventories"][0]["value"]
            .as_str()
            .unwrap_or_else(|| panic!("{r}"))
            .to_string()
    }
}

fn health_version() -> Option<String> {
    let o =
        run(Command::new("curl").args(["-sf", "--max-time", "3", "http://127.0.0.1:8080/health"]));
    let v: Value = serde_json::from_slice(&o.stdout).ok()?;
    v["version"].as_str().map(str::to_string)
}

/// Installs `version` for real and makes the operator's data and edits through its API.
fn install_with_data(version: &str, cli: &Cli) {
    assert!(!installed_on_host(), "ZStack is already installed on this host; this test installs for real and removes it afterwards");
    ok(bin_cmd(&bin_path(version), &["-I", "127.0.0.1", "-q"]));
    cli.login();
    let z = cli.call(&["CreateZone", &format!("name=zone-{version}")]);
    assert!(z["inventory"]["uuid"].is_string(), "{z}");
    if version != "1.0.0" {
        let r = cli.call(&[
            "UpdateGlobalConfig",
            "category=kvm",
            "name=vm.cacheMode",
            "value=1",
        ]);
        assert_eq!(
            r["inventory"]["value"], "1",
            "1.1 takes the integer cache mode: {r}"
        );
    }
    // Config, cron and backup edits of the operator.
    let p = Path::new("/etc/zstack/zstack.properties");
    let props = std::fs::read_to_string(p).unwrap() + "\n# our site\nmy.site = dc1\n";
    std::fs::write(p, props).unwrap();
    ok(Command::new("sh").arg("-c").arg(format!(
        "printf '{}' | crontab -",
        CUSTOM_CRON.replace('\n', "\\n")
    )));
    ok(Command::new("zstack-ctl").args([
        "dump_mysql",
        "--file-name",
        format!("mine-{version}").as_str(),
    ]));
    // Releases before 1.2.0 run the management node as root, and make no user zstack.
    assert_eq!(
        process_uids(server_pid()),
        vec![0; 4],
        "{version} runs it as root"
    );
    assert_eq!(server_user(), None, "{version} makes no user zstack");
}

fn server_pid() -> u32 {
    let status: Value =
        serde_json::from_str(&ok(Command::new("zstack-ctl").args(["status", "--json"]))).unwrap();
    status["services"][0]["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("{status}")) as u32
}

fn assert_upgraded_with_everything_kept(cli: &Cli, from: &[&str]) {
    assert_eq!(health_version().as_deref(), Some("1.2.0"));
    let expected: Vec<String> = from.iter().map(|v| format!("zone-{v}")).collect();
    assert_eq!(cli.zones(), expected, "every zone is still there");
    let first = from[0];
    // 1.0 had no cache mode (1.1 added it as 0, and the chain through 1.1 set 0): none;
    // 1.1's 1 maps to writethrough.
    assert_eq!(
        cli.cache_mode(),
        if first == "1.0.0" {
            "none"
        } else {
            "writethrough"
        }
    );
    let props = std::fs::read_to_string("/etc/zstack/zstack.properties").unwrap();
    assert!(
        props.contains("my.site = dc1") && props.contains("# our site"),
        "config edits kept: {props}"
    );
    assert!(
        props.contains("management.api.port = 8080") && !props.contains("\napi.port"),
        "the key was renamed: {props}"
    );
    assert_eq!(
        ok(Command::new("crontab").arg("-l")),
        CUSTOM_CRON,
        "cron edits kept, no second line added"
    );
    let backups: Vec<String> = std::fs::read_dir("/var/lib/zstack/mysql-backup")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        backups
            .iter()
            .any(|b| b.starts_with(&format!("mine-{first}-"))),
        "old backups kept: {backups:?}"
    );
    assert!(
        backups.iter().any(|b| b.starts_with("zstack-upgrade-")),
        "the pre-upgrade backup is kept: {backups:?}"
    );
    assert!(!Path::new("/var/lib/zstack-installer.journal").exists());
    let status: Value =
        serde_json::from_str(&ok(Command::new("zstack-ctl").args(["status", "--json"]))).unwrap();
    assert_eq!(status["version"], "1.2.0");
    // 1.2.0 runs it as the user zstack, which owns its data now; zstack.properties is root's,
    // readable by that group only.
    use std::os::unix::fs::MetadataExt;
    let (uid, gid) = server_user().expect("the upgrade made the user zstack");
    assert_eq!(process_uids(server_pid()), vec![uid; 4]);
    for p in ["/var/lib/zstack", "/var/lib/zstack/zstack.db"] {
        let m = std::fs::metadata(p).unwrap();
        assert_eq!((m.uid(), m.gid()), (uid, gid), "{p}");
    }
    let m = std::fs::metadata("/etc/zstack/zstack.properties").unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (0, gid, 0o640));
}

#[test]
#[ignore = "needs root and build/*.bin: run by make test; installs on this host and removes it"]
fn every_chain_to_1_2_keeps_everything() {
    require_root();
    for chain in [
        &["1.0.0", "1.2.0"][..],
        &["1.1.0", "1.2.0"],
        &["1.0.0", "1.1.0", "1.2.0"],
    ] {
        let _cleanup = HostInstallGuard;
        let cli = Cli::new();
        install_with_data(chain[0], &cli);
        for next in &chain[1..] {
            let out = ok(bin_cmd(&bin_path(next), &["-u", "--json"]));
            let s: Value = serde_json::from_str(&out).unwrap();
            assert_eq!(s["mode"], "upgrade");
            assert_eq!(s["version"], *next);
            assert_eq!(
                health_version().as_deref(),
                Some(*next),
                "{chain:?}: {next} runs"
            );
            if *next == "1.1.0" {
                // Data made in 1.1 too, on the way.
                cli.login();
                cli.call(&["CreateZone", "name=zone-1.1.0"]);
                assert_eq!(
                    cli.call(&[
                        "UpdateGlobalConfig",
                        "category=kvm",
                        "name=vm.cacheMode",
                        "value=0"
                    ])["inventory"]["value"],
                    "0"
                );
            }
        }
        let versions: Vec<String> = std::fs::read_dir("/usr/local/zstack/versions")
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            versions.len(),
            2,
            "the previous release is kept until the next upgrade, older ones go: {versions:?}"
        );
        cli.login();
        assert_upgraded_with_everything_kept(&cli, &chain[..chain.len() - 1]);
    }
}

#[test]
#[ignore = "needs root and build/*.bin: run by make test; installs on this host and removes it"]
fn nothing_installed_same_version_and_downgrade_are_refused_changing_nothing() {
    require_root();
    let _cleanup = HostInstallGuard;
    let o = run(bin_cmd(&bin_path("1.2.0"), &["-u"]));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("nothing to upgrade; install it with: bash zstack-installer-1.2.0.bin"),
        "{}",
        text(&o)
    );
    ok(bin_cmd(&bin_path("1.2.0"), &["-I", "127.0.0.1", "-q"]));
    let before = host_snapshot();
    for (bin, says) in [
        ("1.2.0", "already installed"),
        ("1.1.0", "a downgrade is refused"),
    ] {
        let o = run(bin_cmd(&bin_path(bin), &["-u"]));
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(text(&o).contains(says), "{}", text(&o));
        assert_eq!(diff(&before, &host_snapshot()), Vec::<String>::new());
    }
}

/// After a failed or interrupted upgrade: 1.1.0 runs with its data, as before.
fn assert_old_release_intact(cli: &Cli, what: &str) {
    assert_eq!(
        health_version().as_deref(),
        Some("1.1.0"),
        "{what}: the old release runs"
    );
    cli.login();
    assert_eq!(cli.zones(), ["zone-1.1.0"], "{what}");
    assert_eq!(cli.cache_mode(), "1", "{what}: the DB is 1.1's");
    let props = std::fs::read_to_string("/etc/zstack/zstack.properties").unwrap();
    assert!(
        props.contains("api.port = 8080") && props.contains("my.site = dc1"),
        "{what}: {props}"
    );
    assert_eq!(
        std::fs::read_link("/usr/local/zstack/current").unwrap(),
        Path::new("versions/1.1.0"),
        "{what}"
    );
    assert!(
        !Path::new("/usr/local/zstack/versions/1.2.0").exists(),
        "{what}: the new tree is removed"
    );
    assert_eq!(ok(Command::new("crontab").arg("-l")), CUSTOM_CRON);
    // As root again, the user zstack gone, its files root's again.
    assert_eq!(process_uids(server_pid()), vec![0; 4], "{what}");
    assert_eq!(
        server_user(),
        None,
        "{what}: the user made by the run is removed"
    );
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata("/var/lib/zstack/zstack.db").unwrap();
    assert_eq!((m.uid(), m.gid()), (0, 0), "{what}");
}

const UPGRADE_STEPS: [&str; 10] = [
    "backup", "stop", "migrate", "config", "pki", "current", "user", "units", "cron", "start",
];

#[test]
#[ignore = "needs root and build/*.bin: run by make test; installs on this host and removes it"]
fn a_failure_at_any_upgrade_step_leaves_the_old_release_running_with_its_data() {
    require_root();
    for step in UPGRADE_STEPS {
        let _cleanup = HostInstallGuard;
        let cli = Cli::new();
        install_with_data("1.1.0", &cli);
        let o = run(bin_cmd(&bin_path("1.2.0"), &["-u"]).env("ZSTACK_FAILPOINT", step));
        assert_eq!(o.status.code(), Some(1), "{step}: {}", text(&o));
        let msg = text(&o);
        assert!(
            msg.contains(step) && msg.contains("failed") && msg.contains("put back"),
            "{step}: {msg}"
        );
        if step != "backup" {
            assert!(
                msg.contains("zstack-upgrade-1.1.0-to-1.2.0-"),
                "{step}: the message says where the backup is: {msg}"
            );
        }
        assert_old_release_intact(&cli, step);
    }
}

#[test]
#[ignore = "needs root and build/*.bin: run by make test; installs on this host and removes it"]
fn an_upgrade_killed_at_any_step_is_rolled_back_by_the_next_run() {
    require_root();
    for step in UPGRADE_STEPS {
        let _cleanup = HostInstallGuard;
        let cli = Cli::new();
        install_with_data("1.1.0", &cli);
        let child = bin_cmd(&bin_path("1.2.0"), &["-u"])
            .env("ZSTACK_FAILPOINT", format!("{step}:pause"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        wait_for_pause(Path::new("/var/log/zstack-installer.log"), step);
        signal_group(child, nix::sys::signal::Signal::SIGKILL);
        assert!(
            Path::new("/var/lib/zstack-installer.journal").exists(),
            "{step}: journal left"
        );
        // Any next run rolls it back first; this one (1.1.0 -u) is then refused as the same version.
        let o = run(bin_cmd(&bin_path("1.1.0"), &["-u"]));
        assert!(
            text(&o).contains("did not finish; putting back")
                && text(&o).contains("already installed"),
            "{step}: {}",
            text(&o)
        );
        assert_old_release_intact(&cli, &format!("kill -9 at {step}"));
        // And the upgrade then goes through.
        ok(bin_cmd(&bin_path("1.2.0"), &["-u", "-q"]));
        cli.login();
        assert_eq!(health_version().as_deref(), Some("1.2.0"));
        assert_eq!(cli.cache_mode(), "writethrough", "{step}");
    }
}

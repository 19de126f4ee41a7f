//! restore_mysql round trip through the API on a real install: data made, backed up, changed,
//! restored: the API shows the backed-up state. Installs on this host and removes it afterwards.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

use std::process::Command;

use zstack_tests::*;

fn cli(home: &std::path::Path, args: &[&str]) -> serde_json::Value {
    let o = run(Command::new("zstack-cli").args(args).env("HOME", home));
    serde_json::from_str(&String::from_utf8_lossy(&o.stdout))
        .unwrap_or_else(|e| panic!("zstack-cli {args:?}: {e}: {}", text(&o)))
}

fn names(v: &serde_json::Value) -> Vec<String> {
    let mut n: Vec<String> = v["inventories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|z| z["name"].as_str().unwrap().to_string())
        .collect();
    n.sort();
    n
}

#[test]
#[ignore = "needs root and build/*.bin: run by make test; installs on this host and removes it"]
fn restore_brings_back_the_backed_up_state_through_the_api() {
    require_root();
    assert!(!installed_on_host(), "ZStack is already installed on this host; this test installs for real and removes it afterwards");
    let _cleanup = HostInstallGuard;
    let home = tempfile::tempdir().unwrap();
    let out = ok(bin_cmd(&bin_path("1.2.0"), &["-I", "127.0.0.1", "--json"]));
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    let password = summary["admin_password"]
        .as_str()
        .expect("the first install prints the password")
        .to_string();

    // Without a session, calls are refused; with a wrong password, login is refused.
    assert_eq!(
        cli(home.path(), &["QueryZone"])["error"]["code"],
        "INVALID_SESSION"
    );
    assert_eq!(
        cli(
            home.path(),
            &[
                "LogInByAccount",
                "accountName=admin",
                "password=wrong-password"
            ]
        )["error"]["code"],
        "WRONG_CREDENTIALS"
    );
    let login = cli(
        home.path(),
        &[
            "LogInByAccount",
            "accountName=admin",
            &format!("password={password}"),
        ],
    );
    assert!(login["inventory"]["uuid"].is_string(), "{login}");

    // The state to back up.
    cli(home.path(), &["CreateZone", "name=zone-a"]);
    cli(home.path(), &["CreateZone", "name=zone-b"]);
    cli(
        home.path(),
        &[
            "UpdateGlobalConfig",
            "category=kvm",
            "name=vm.cacheMode",
            "value=writethrough",
        ],
    );
    let backup: serde_json::Value = serde_json::from_str(&ok(
        Command::new("zstack-ctl").args(["dump_mysql", "--json"])
    ))
    .unwrap();
    let file = backup["backup"]["file"].as_str().unwrap().to_string();

    // Changed after the backup.
    let b = cli(home.path(), &["QueryZone", "name=zone-b"]);
    let b_uuid = b["inventories"][0]["uuid"].as_str().unwrap().to_string();
    cli(home.path(), &["DeleteZone", &format!("uuid={b_uuid}")]);
    cli(home.path(), &["CreateZone", "name=zone-c"]);
    cli(
        home.path(),
        &[
            "UpdateGlobalConfig",
            "category=kvm",
            "name=vm.cacheMode",
            "value=writeback",
        ],
    );
    assert_eq!(
        names(&cli(home.path(), &["QueryZone"])),
        ["zone-a", "zone-c"]
    );

    let out = ok(Command::new("zstack-ctl").args(["restore_mysql", "--from-file", &file]));
    assert!(out.contains("restarted"), "{out}");

    // The API shows the backed-up state (the session made before the backup is in it too).
    let zones = cli(home.path(), &["QueryZone"]);
    assert_eq!(names(&zones), ["zone-a", "zone-b"], "{zones}");
    let cfg = cli(
        home.path(),
        &["QueryGlobalConfig", "category=kvm", "name=vm.cacheMode"],
    );
    assert_eq!(cfg["inventories"][0]["value"], "writethrough", "{cfg}");
    let status: serde_json::Value =
        serde_json::from_str(&ok(Command::new("zstack-ctl").args(["status", "--json"]))).unwrap();
    assert!(
        status["last_backup"]["path"]
            .as_str()
            .unwrap()
            .contains("zstack-before-restore-"),
        "{status}"
    );
    assert_eq!(cli(home.path(), &["LogOut"]), serde_json::json!({}));
    assert_eq!(
        cli(home.path(), &["QueryZone"])["error"]["code"],
        "INVALID_SESSION"
    );
}

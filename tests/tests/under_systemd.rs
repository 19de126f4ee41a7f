//! The install under a real systemd: a debootstrap'd Debian booted by systemd-nspawn with systemd
//! as PID 1 (here the host has no system bus, hence --register=no --keep-unit), its own network
//! namespace (--private-network), commands run inside with nsenter. After the install both units
//! are enabled and active and pass systemd-analyze verify; `systemctl stop zstack-server` is seen
//! by `zstack-ctl status`; after the container reboots both units are active again. The
//! management node runs as the user zstack in its sandbox: `systemd-analyze security
//! zstack-server` scores it (printed) at 4.0 or lower; the agent runs as root.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

use std::time::{Duration, Instant};

use zstack_tests::nspawn::{comm, Container};
use zstack_tests::*;

#[test]
#[ignore = "needs root, debootstrap and systemd-nspawn: run by make test"]
fn installed_units_are_enabled_active_and_survive_a_reboot_under_systemd() {
    require_root();
    let bin = bin_path("1.2.0");
    let (dir, root) = zstack_tests::nspawn::debian_rootfs("zstack-nspawn-");
    std::fs::copy(&bin, root.join("root/zstack-installer-1.2.0.bin")).unwrap();
    let log = dir.path().join("nspawn.log");

    let c = Container::boot(&root, &log);
    assert_eq!(comm(c.pid1), "systemd");
    let o = c.sh("bash /root/zstack-installer-1.2.0.bin --json");
    assert!(
        o.status.success(),
        "install under systemd failed:\n{}",
        text(&o)
    );
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["init"], "systemd", "{summary}");
    assert_eq!(summary["services_started"], true);

    for unit in ["zstack-server.service", "zstack-kvmagent.service"] {
        let enabled = c.sh(&format!("systemctl is-enabled {unit}"));
        assert_eq!(
            String::from_utf8_lossy(&enabled.stdout).trim(),
            "enabled",
            "{}",
            text(&enabled)
        );
        let active = c.sh(&format!("systemctl is-active {unit}"));
        assert_eq!(
            String::from_utf8_lossy(&active.stdout).trim(),
            "active",
            "{}",
            text(&active)
        );
        let verify = c.sh(&format!(
            "systemd-analyze verify /etc/systemd/system/{unit}"
        ));
        assert!(
            verify.status.success(),
            "systemd-analyze verify {unit}: {}",
            text(&verify)
        );
        assert!(
            !text(&verify).contains(unit),
            "warnings about {unit}: {}",
            text(&verify)
        );
    }
    assert_the_server_runs_as_zstack_in_its_sandbox(&c);

    let status = c.sh("zstack-ctl status");
    assert!(status.status.success(), "{}", text(&status));
    let s = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(
        s.contains("managed by systemd") && s.matches("running, pid").count() == 2,
        "{s}"
    );

    // systemctl stop is what zstack-ctl status sees.
    let o = c.sh("systemctl stop zstack-server");
    assert!(o.status.success(), "{}", text(&o));
    let s = String::from_utf8_lossy(&c.sh("zstack-ctl status").stdout).into_owned();
    assert!(
        s.lines()
            .any(|l| l.starts_with("zstack-server:") && l.contains("stopped")),
        "{s}"
    );
    assert!(
        s.lines()
            .any(|l| l.starts_with("zstack-kvmagent:") && l.contains("running")),
        "{s}"
    );
    // zstack-ctl start goes through systemctl too.
    let o = c.sh("zstack-ctl start");
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&c.sh("systemctl is-active zstack-server").stdout).trim(),
        "active"
    );

    // After a reboot both come back by themselves.
    let c = c.reboot(&log);
    for unit in ["zstack-server.service", "zstack-kvmagent.service"] {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let active = c.sh(&format!("systemctl is-active {unit}"));
            if String::from_utf8_lossy(&active.stdout).trim() == "active" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{unit} is not active after the reboot: {}",
                text(&c.sh(&format!("systemctl status {unit}")))
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    assert_the_server_runs_as_zstack_in_its_sandbox(&c);
    let o = c.sh("curl -sf http://127.0.0.1:8080/health");
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("zstack-server"),
        "{}",
        text(&o)
    );
}

/// The Uid: line of a unit's main process inside the container.
fn main_uids(c: &Container, unit: &str) -> String {
    let o = c.sh(&format!(
        "grep ^Uid: /proc/$(systemctl show -p MainPID --value {unit})/status"
    ));
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .skip(1)
        .collect::<Vec<_>>()
        .join(" ")
}

fn assert_the_server_runs_as_zstack_in_its_sandbox(c: &Container) {
    let id = c.sh("id -u zstack");
    assert!(id.status.success(), "{}", text(&id));
    let uid = String::from_utf8_lossy(&id.stdout).trim().to_string();
    assert_eq!(
        main_uids(c, "zstack-server"),
        [uid.as_str(); 4].join(" "),
        "real, effective, saved and fs uid"
    );
    assert_eq!(
        main_uids(c, "zstack-kvmagent"),
        "0 0 0 0",
        "the agent is root"
    );
    // It writes its database: a call that changes something answers.
    let o = c.sh(
        "p=$(sed -n 's/^admin.password *= *//p' /etc/zstack/zstack.properties) && \
         HOME=/root zstack-cli LogInByAccount accountName=admin password=\"$p\" >/dev/null && \
         HOME=/root zstack-cli CreateZone name=sandboxed-$RANDOM",
    );
    assert!(o.status.success(), "{}", text(&o));

    let o = c.sh("systemd-analyze security --no-pager zstack-server.service");
    let report = text(&o);
    let score: f64 = report
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for zstack-server.service:"))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no overall exposure level in:\n{report}"));
    println!("systemd-analyze security zstack-server: {score}");
    assert!(
        score <= 4.0,
        "zstack-server's exposure level is {score}, above 4.0:\n{report}"
    );
    let agent = c.sh("systemd-analyze security --no-pager zstack-kvmagent.service");
    if let Some(line) = text(&agent)
        .lines()
        .find(|l| l.contains("Overall exposure level"))
    {
        println!("systemd-analyze security zstack-kvmagent (root, no mount namespace): {line}");
    }
}

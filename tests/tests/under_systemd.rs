//! The install under a real systemd: a debootstrap'd Debian booted by systemd-nspawn with systemd
//! as PID 1 (here the host has no system bus, hence --register=no --keep-unit), its own network
//! namespace (--private-network), commands run inside with nsenter. After the install both units
//! are enabled and active and pass systemd-analyze verify; `systemctl stop zstack-server` is seen
//! by `zstack-ctl status`; after the container reboots both units are active again.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use zstack_tests::*;

/// A booted container; powered off and killed when dropped.
struct Container {
    root: PathBuf,
    nspawn: Child,
    pid1: u32,
}

impl Container {
    fn boot(root: &Path, log: &Path) -> Container {
        let log = std::fs::File::create(log).unwrap();
        let nspawn = Command::new("systemd-nspawn")
            .args([
                "--boot",
                "--register=no",
                "--keep-unit",
                "--private-network",
                "--quiet",
            ])
            .arg(format!("--machine=zstack-test-{}", std::process::id()))
            .arg("-D")
            .arg(root)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("systemd-nspawn");
        let deadline = Instant::now() + Duration::from_secs(60);
        let pid1 = loop {
            if let Some(p) = children(nspawn.id())
                .into_iter()
                .find(|p| comm(*p) == "systemd")
            {
                break p;
            }
            assert!(
                Instant::now() < deadline,
                "the container's systemd did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let c = Container {
            root: root.to_path_buf(),
            nspawn,
            pid1,
        };
        c.wait_booted();
        c
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(self.pid1.to_string())
            .args(["-m", "-u", "-i", "-n", "-p", "-r", "-w", "--", "env", "-i"]);
        c.args([
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME=/root",
            "LANG=C.UTF-8",
        ]);
        c.args(args);
        c
    }

    fn sh(&self, script: &str) -> std::process::Output {
        run(self.cmd(&["sh", "-c", script]))
    }

    fn wait_booted(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let o = run(self.cmd(&["systemctl", "is-system-running"]));
            let state = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if state == "running" || state == "degraded" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the container did not finish booting: {state}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// `systemctl reboot` inside: nspawn exits (it does not reboot by itself), and is started again.
    fn reboot(mut self, log: &Path) -> Container {
        let _ = run(self.cmd(&["systemctl", "reboot"]));
        let deadline = Instant::now() + Duration::from_secs(90);
        while self.nspawn.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "the container did not go down for the reboot"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let root = self.root.clone();
        std::mem::forget(self);
        Container::boot(&root, log)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = run(self.cmd(&["systemctl", "poweroff"]));
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.nspawn.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
    }
}

fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(c) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(c.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
            }
        }
    }
    out
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[test]
#[ignore = "needs root, debootstrap and systemd-nspawn: run by make test"]
fn installed_units_are_enabled_active_and_survive_a_reboot_under_systemd() {
    require_root();
    let bin = bin_path("1.2.0");
    let dir = tempfile::Builder::new()
        .prefix("zstack-nspawn-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let root = dir.path().join("root");
    ok(Command::new("bash")
        .arg(repo_root().join("scripts/debian-systemd-rootfs.sh"))
        .arg(&root));
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
    let o = c.sh("curl -sf http://127.0.0.1:8080/health");
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("zstack-server"),
        "{}",
        text(&o)
    );
}

//! Hosts for the tests: a debootstrap'd Debian (scripts/debian-systemd-rootfs.sh) booted by
//! systemd-nspawn with systemd as PID 1 (the host has no system bus here, hence --register=no
//! --keep-unit); commands run inside with nsenter. A container either has a network namespace of
//! its own with no link out, or its `host0` on a test bridge of this machine, where it is a host
//! the management node reaches over SSH.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{ok, repo_root, run};

/// A fresh Debian root filesystem (scripts/debian-systemd-rootfs.sh, cached between runs) in a
/// temporary directory of /var/tmp named `prefix...`, removed when the directory is dropped.
pub fn debian_rootfs(prefix: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/var/tmp")
        .unwrap();
    let root = dir.path().join("root");
    ok(Command::new("bash")
        .arg(repo_root().join("scripts/debian-systemd-rootfs.sh"))
        .arg(&root));
    (dir, root)
}

/// A booted container; powered off and killed when dropped.
pub struct Container {
    root: PathBuf,
    name: String,
    network: Vec<String>,
    nspawn: Child,
    /// The container's systemd, as this machine's PID namespace sees it.
    pub pid1: u32,
}

impl Container {
    /// Boots `root` in a network namespace of its own with no link out.
    pub fn boot(root: &Path, log: &Path) -> Container {
        Container::boot_with(
            root,
            log,
            &format!("zstack-test-{}", std::process::id()),
            &["--private-network"],
        )
    }

    /// Boots `root` as machine `name`, its `host0` interface on the host bridge `bridge`.
    pub fn boot_on_bridge(root: &Path, log: &Path, name: &str, bridge: &str) -> Container {
        Container::boot_with(root, log, name, &[&format!("--network-bridge={bridge}")])
    }

    fn boot_with(root: &Path, log: &Path, name: &str, network: &[&str]) -> Container {
        let log = std::fs::File::create(log).unwrap();
        let nspawn = Command::new("systemd-nspawn")
            .args(["--boot", "--register=no", "--keep-unit", "--quiet"])
            .args(network)
            .arg(format!("--machine={name}"))
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
            name: name.to_string(),
            network: network.iter().map(|s| s.to_string()).collect(),
            nspawn,
            pid1,
        };
        c.wait_booted();
        c
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
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

    pub fn sh(&self, script: &str) -> std::process::Output {
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
    pub fn reboot(mut self, log: &Path) -> Container {
        let _ = run(self.cmd(&["systemctl", "reboot"]));
        let deadline = Instant::now() + Duration::from_secs(90);
        while self.nspawn.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "the container did not go down for the reboot"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let (root, name, network) = (self.root.clone(), self.name.clone(), self.network.clone());
        std::mem::forget(self);
        let network: Vec<&str> = network.iter().map(String::as_str).collect();
        Container::boot_with(&root, log, &name, &network)
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

pub fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

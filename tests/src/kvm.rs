//! What the end-to-end tests with real VMs need on this host: libvirtd running (started by hand
//! where systemd is not PID 1, qemu as root), the guest image, filesystems mounted for shared
//! mount point storage, and the bridges the agent made removed afterwards.
#![allow(clippy::unwrap_used)] // test helpers: a panic is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::*;

/// Makes sure libvirtd answers on qemu:///system: where it is not running (no systemd here),
/// configures qemu to run as root and starts virtlogd and libvirtd as daemons.
pub fn ensure_libvirtd() {
    let answers = || {
        Command::new("virsh")
            .args(["-c", "qemu:///system", "version"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if answers() {
        return;
    }
    let conf = Path::new("/etc/libvirt/qemu.conf");
    let text = std::fs::read_to_string(conf).unwrap_or_default();
    if !text.lines().any(|l| l.trim_start().starts_with("user =")) {
        std::fs::write(conf, format!("{text}\nuser = \"root\"\ngroup = \"root\"\n")).unwrap();
    }
    let _ = Command::new("virtlogd").arg("-d").status();
    ok(Command::new("libvirtd").arg("-d"));
    wait_until("libvirtd to answer", Duration::from_secs(30), answers);
}

/// The guest image, built from Debian packages by scripts/build-guest-image.sh (cached).
pub fn guest_image() -> PathBuf {
    let out = repo_root().join("build/guest/zstack-test-guest.qcow2");
    ok(Command::new("bash")
        .arg(repo_root().join("scripts/build-guest-image.sh"))
        .arg(&out));
    assert!(out.is_file(), "the guest image was not built");
    out
}

/// The guest image of real Debian with Debian's own cloud-init, built from Debian packages by
/// scripts/build-cloud-guest-image.sh (cached, keyed by the script's sha256).
pub fn cloud_guest_image() -> PathBuf {
    let out = repo_root().join("build/guest/zstack-cloud-guest.qcow2");
    ok(Command::new("bash")
        .arg(repo_root().join("scripts/build-cloud-guest-image.sh"))
        .arg(&out));
    assert!(out.is_file(), "the cloud guest image was not built");
    out
}

/// An ext4 filesystem in a file under /var/tmp (not tmpfs: it must support O_DIRECT), loop-mounted
/// at `at`; unmounted and removed when dropped.
pub struct LoopFs {
    pub image: PathBuf,
    pub at: PathBuf,
    pub mounted: bool,
}

impl LoopFs {
    pub fn new(at: &Path, size_mb: u64) -> LoopFs {
        let image = PathBuf::from(format!(
            "/var/tmp/zstack-test-{}-{}.ext4",
            std::process::id(),
            at.file_name().unwrap().to_string_lossy()
        ));
        ok(Command::new("truncate")
            .arg("-s")
            .arg(format!("{size_mb}M"))
            .arg(&image));
        ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image));
        std::fs::create_dir_all(at).unwrap();
        let mut fs = LoopFs {
            image,
            at: at.to_path_buf(),
            mounted: false,
        };
        fs.mount(&[]);
        fs
    }

    pub fn mount(&mut self, options: &[&str]) {
        let mut opts = vec!["loop"];
        opts.extend_from_slice(options);
        ok(Command::new("mount")
            .arg("-o")
            .arg(opts.join(","))
            .arg(&self.image)
            .arg(&self.at));
        self.mounted = true;
    }

    pub fn umount(&mut self) {
        if self.mounted {
            ok(Command::new("umount").arg(&self.at));
            self.mounted = false;
        }
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg("-l").arg(&self.at).output();
        }
        let _ = std::fs::remove_file(&self.image);
    }
}

/// Removes the named links (bridges the agent made for a test's L2 networks) when dropped.
pub struct LinksGuard(pub Vec<String>);

impl Drop for LinksGuard {
    fn drop(&mut self) {
        for l in &self.0 {
            let _ = Command::new("ip").args(["link", "del", l]).output();
        }
    }
}

/// The network namespaces the agent makes for L3 networks (`zs-l3-…`) and EIPs (`zs-eip-…`).
fn agent_namespaces() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("zs-l3-") || n.starts_with("zs-eip-"))
        .map(str::to_string)
        .collect()
}

/// Removes, when dropped, the agent's namespaces that appeared after it was made, with the
/// processes in them (the L3's dnsmasq): a failed VM test leaves no network state behind.
pub struct AgentNamespacesGuard(Vec<String>);

impl AgentNamespacesGuard {
    pub fn new() -> AgentNamespacesGuard {
        AgentNamespacesGuard(agent_namespaces())
    }
}

impl Default for AgentNamespacesGuard {
    fn default() -> Self {
        AgentNamespacesGuard::new()
    }
}

impl Drop for AgentNamespacesGuard {
    fn drop(&mut self) {
        for ns in agent_namespaces() {
            if self.0.contains(&ns) {
                continue;
            }
            if let Ok(o) = Command::new("ip").args(["netns", "pids", &ns]).output() {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    let _ = Command::new("kill").arg(pid).output();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        }
    }
}

/// Destroys every libvirt domain named like a ZStack VM (32 hex digits) when dropped, so a failed
/// test leaves no qemu behind.
pub struct DomainsGuard;

impl Drop for DomainsGuard {
    fn drop(&mut self) {
        let out = Command::new("virsh")
            .args(["-c", "qemu:///system", "list", "--name"])
            .output();
        if let Ok(o) = out {
            for name in String::from_utf8_lossy(&o.stdout).lines() {
                let name = name.trim();
                if name.len() == 32 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                    let _ = Command::new("virsh")
                        .args(["-c", "qemu:///system", "destroy", name])
                        .output();
                }
            }
        }
    }
}

/// The pid of the qemu running the VM, from libvirt's pid file.
pub fn qemu_pid(vm: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/run/libvirt/qemu/{vm}.pid"))
        .ok()
        .and_then(|p| p.trim().parse().ok())
}

pub fn virsh(args: &[&str]) -> String {
    let mut all = vec!["-c", "qemu:///system"];
    all.extend_from_slice(args);
    ok(Command::new("virsh").args(&all))
}

/// The console log of a VM, as the agent has libvirt write it.
pub fn console(vm: &str) -> String {
    std::fs::read_to_string(format!("/var/log/zstack/vms/{vm}.console.log")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[ignore = "needs root: run by make test"]
    fn the_namespaces_guard_removes_only_new_agent_namespaces_and_their_processes() {
        require_root();
        let old = "zs-l3-00000000000000000000000000guard0";
        let new = "zs-eip-0000000000000000000000000guard1";
        for ns in [old, new] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        ok(Command::new("ip").args(["netns", "add", old]));
        let guard = AgentNamespacesGuard::new();
        ok(Command::new("ip").args(["netns", "add", new]));
        let sleeper = Command::new("ip")
            .args(["netns", "exec", new, "sleep", "600"])
            .spawn()
            .unwrap();
        wait_until(
            "the process to enter the namespace",
            Duration::from_secs(10),
            || {
                !ok(Command::new("ip").args(["netns", "pids", new]))
                    .trim()
                    .is_empty()
            },
        );
        drop(guard);
        let left = agent_namespaces();
        assert!(!left.contains(&new.to_string()), "{left:?}");
        assert!(left.contains(&old.to_string()), "{left:?}");
        let mut sleeper = sleeper;
        let status = sleeper.wait().unwrap();
        assert!(!status.success(), "the process in the namespace was killed");
        ok(Command::new("ip").args(["netns", "del", old]));
    }
}

//! Which virtualization the VMs of this host get (`kvmagent.virtualization`: `auto`, `kvm` or
//! `qemu`), and why. `auto` does not trust `/dev/kvm` opening: on a nested host without
//! hardware support it opens, yet every guest dies at its first instruction (qemu's "failed to
//! set MSR" assertion). So `auto` boots a probe guest with `-accel kvm` and the CPU model the
//! domains use (`host-passthrough`, `-cpu host`), and picks `kvm` only when that guest reaches its
//! firmware: SeaBIOS writes its banner to the debug port (0x402), which the probe reads from a
//! file. The probe is killed as soon as the banner is there, or after [`PROBE_TIMEOUT`].

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long the probe guest may take to reach its firmware.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// The emulator libvirt runs for x86_64 domains.
pub const QEMU: &str = "qemu-system-x86_64";
/// What SeaBIOS writes first on its debug port.
const FIRMWARE_BANNER: &[u8] = b"SeaBIOS";

/// The virtualization chosen, and why (shown as the host's `virtualizationReason`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Virtualization {
    /// libvirt's domain type: `kvm` or `qemu` (TCG).
    pub domain_type: &'static str,
    pub reason: String,
}

/// The virtualization for the setting: `kvm` or `qemu` as set; `auto` probes (see the module).
pub fn choose(setting: &str) -> Virtualization {
    match setting {
        "kvm" => Virtualization {
            domain_type: "kvm",
            reason: "kvmagent.virtualization=kvm".to_string(),
        },
        "qemu" => Virtualization {
            domain_type: "qemu",
            reason: "kvmagent.virtualization=qemu".to_string(),
        },
        _ => auto(Path::new("/dev/kvm"), QEMU, &std::env::temp_dir()),
    }
}

/// `auto`: `kvm` when `kvm_device` opens and a probe guest run by `qemu` with `-accel kvm`
/// reaches its firmware; else `qemu`, saying why. `work_dir` holds the probe's debug-port file.
pub fn auto(kvm_device: &Path, qemu: &str, work_dir: &Path) -> Virtualization {
    let tcg = |why: String| Virtualization {
        domain_type: "qemu",
        reason: format!("auto: {why}; VMs run under TCG (software emulation)"),
    };
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(kvm_device)
    {
        return tcg(format!("{} cannot be opened ({e})", kvm_device.display()));
    }
    match probe(qemu, work_dir, PROBE_TIMEOUT) {
        Ok(()) => Virtualization {
            domain_type: "kvm",
            reason: format!(
                "auto: a probe guest with -accel kvm -cpu host reached its firmware on {}",
                kvm_device.display()
            ),
        },
        Err(why) => tcg(format!(
            "{} opens, but a probe guest with -accel kvm -cpu host did not reach its firmware: {why}",
            kvm_device.display()
        )),
    }
}

/// Why the probe guest did not reach its firmware.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} exited ({status}){}", last_words(.stderr))]
    Exited {
        program: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("no firmware output within {0:?}")]
    Timeout(Duration),
    #[error("cannot wait for the probe: {0}")]
    Wait(std::io::Error),
}

fn last_words(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        String::new()
    } else {
        format!(": {}", lines[lines.len().saturating_sub(2)..].join("; "))
    }
}

/// The probe's debug-port file, removed when dropped.
struct DebugFile(PathBuf);

impl Drop for DebugFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Boots a guest without disks under `qemu -accel kvm -cpu host` until its firmware writes to
/// the debug port; the guest is killed then, or after `timeout`.
pub fn probe(qemu: &str, work_dir: &Path, timeout: Duration) -> Result<(), ProbeError> {
    let debug = DebugFile(work_dir.join(format!("zstack-kvm-probe-{}.log", std::process::id())));
    let _ = std::fs::remove_file(&debug.0);
    let chardev = format!("file,id=zsprobe,path={}", debug.0.display());
    let mut child = Command::new(qemu)
        .args([
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-machine",
            "pc",
            "-m",
            "32",
            "-nodefaults",
            "-no-reboot",
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            "none",
            "-chardev",
            &chardev,
            "-device",
            "isa-debugcon,iobase=0x402,chardev=zsprobe",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ProbeError::Spawn {
            program: qemu.to_string(),
            source,
        })?;
    let start = Instant::now();
    let outcome = loop {
        let reached = std::fs::read(&debug.0)
            .map(|b| {
                b.windows(FIRMWARE_BANNER.len())
                    .any(|w| w == FIRMWARE_BANNER)
            })
            .unwrap_or(false);
        if reached {
            break Ok(());
        }
        match child.try_wait() {
            Ok(Some(status)) => {
                let mut stderr = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut stderr);
                }
                break Err(ProbeError::Exited {
                    program: qemu.to_string(),
                    status,
                    stderr,
                });
            }
            Ok(None) => {}
            Err(e) => break Err(ProbeError::Wait(e)),
        }
        if start.elapsed() >= timeout {
            break Err(ProbeError::Timeout(timeout));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = child.kill();
    let _ = child.wait();
    outcome
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a panic is a failed test

    use super::*;

    /// A stand-in for qemu: a script that finds the debug-port file in its arguments and runs
    /// `body` with it as $dbg.
    fn fake_qemu(dir: &Path, body: &str) -> String {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("fake-qemu");
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\nfor a in \"$@\"; do case \"$a\" in file,id=zsprobe,path=*) dbg=\"${{a#file,id=zsprobe,path=}}\";; esac; done\n{body}\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path.display().to_string()
    }

    #[test]
    fn kvm_only_when_the_probe_reaches_its_firmware() {
        let dir = tempfile::tempdir().unwrap();
        let device = dir.path().join("kvm");
        std::fs::write(&device, b"").unwrap();

        let boots = fake_qemu(
            dir.path(),
            "printf 'SeaBIOS (version x)\\n' > \"$dbg\"; exec sleep 30",
        );
        let v = auto(&device, &boots, dir.path());
        assert_eq!(v.domain_type, "kvm", "{v:?}");
        assert!(v.reason.contains("reached its firmware"), "{v:?}");

        // The nested host: /dev/kvm opens, the guest dies at once.
        let dies = fake_qemu(
            dir.path(),
            "echo 'qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69' >&2; exit 134",
        );
        let v = auto(&device, &dies, dir.path());
        assert_eq!(v.domain_type, "qemu", "{v:?}");
        assert!(v.reason.contains("failed to set MSR"), "{v:?}");

        // A guest that hangs before its firmware is given up on.
        let hangs = fake_qemu(dir.path(), "exec sleep 30");
        let e = probe(&hangs, dir.path(), Duration::from_millis(300)).unwrap_err();
        assert!(matches!(e, ProbeError::Timeout(_)), "{e}");

        let v = auto(&dir.path().join("no-kvm"), &boots, dir.path());
        assert_eq!(v.domain_type, "qemu", "{v:?}");
        assert!(v.reason.contains("cannot be opened"), "{v:?}");

        let v = auto(&device, "/nonexistent/qemu", dir.path());
        assert_eq!(v.domain_type, "qemu", "{v:?}");
        assert_eq!(choose("kvm").domain_type, "kvm");
        assert_eq!(choose("qemu").domain_type, "qemu");
        // The probe leaves no file behind.
        assert!(!std::fs::read_dir(dir.path()).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("zstack-kvm-probe")));
    }
}

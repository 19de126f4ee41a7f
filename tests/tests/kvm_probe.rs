//! `kvmagent.virtualization=auto` on this host: the agent's probe must agree with what qemu under
//! KVM really does here. A host whose /dev/kvm opens but cannot run a guest (nested virtualization
//! without hardware support, as on the CI machines) must get TCG, with the reason saying so.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use zstack_kvmagent::virtualization::{self, QEMU};
use zstack_tests::*;

/// Independently of the probe: does a KVM guest with the domains' CPU model stay alive for two
/// seconds here (a guest that cannot run dies at once, with qemu's assertion)?
fn kvm_guest_survives() -> bool {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return false;
    }
    let mut child = Command::new(QEMU)
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
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            "none",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(2);
    while Instant::now() < end {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    true
}

#[test]
#[ignore = "needs root and qemu: run by make test"]
fn auto_picks_kvm_only_where_a_kvm_guest_really_runs() {
    require_root();
    let chosen = virtualization::choose("auto");
    let expected = if kvm_guest_survives() { "kvm" } else { "qemu" };
    assert_eq!(chosen.domain_type, expected, "{chosen:?}");
    assert!(chosen.reason.starts_with("auto: "), "{chosen:?}");
    if expected == "qemu" {
        assert!(chosen.reason.contains("TCG"), "{chosen:?}");
    }
    eprintln!("{}: {}", chosen.domain_type, chosen.reason);
}

//! Driving an installed stack through zstack-cli, for the end-to-end tests.
#![allow(clippy::unwrap_used)] // test helpers: a panic is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::*;

/// zstack-cli with its own HOME (session file, history).
pub struct Cli {
    pub home: tempfile::TempDir,
}

impl Default for Cli {
    fn default() -> Self {
        Self::new()
    }
}

impl Cli {
    pub fn new() -> Cli {
        Cli {
            home: tempfile::tempdir().unwrap(),
        }
    }

    pub fn raw(&self, args: &[&str]) -> std::process::Output {
        run(Command::new("zstack-cli")
            .args(args)
            .env("HOME", self.home.path()))
    }

    /// The answer of a call that must succeed.
    pub fn ok(&self, args: &[&str]) -> Value {
        let o = self.raw(args);
        assert!(
            o.status.success(),
            "zstack-cli {args:?} failed: {}",
            text(&o)
        );
        let v: Value = serde_json::from_str(&String::from_utf8_lossy(&o.stdout)).unwrap();
        assert!(v.get("error").is_none(), "zstack-cli {args:?}: {v}");
        v
    }

    /// The error of a call that must be refused: exit 1 and `{"error": {...}}`.
    pub fn err(&self, args: &[&str]) -> Value {
        let o = self.raw(args);
        assert_eq!(
            o.status.code(),
            Some(1),
            "zstack-cli {args:?} was not refused: {}",
            text(&o)
        );
        let v: Value = serde_json::from_str(&String::from_utf8_lossy(&o.stdout)).unwrap();
        v["error"].clone()
    }

    pub fn inv(&self, args: &[&str]) -> Value {
        self.ok(args)["inventory"].clone()
    }

    pub fn uuid(&self, args: &[&str]) -> String {
        let inv = self.inv(args);
        inv["uuid"]
            .as_str()
            .unwrap_or_else(|| panic!("{args:?}: no uuid in {inv}"))
            .to_string()
    }

    pub fn list(&self, args: &[&str]) -> Vec<Value> {
        self.ok(args)["inventories"].as_array().unwrap().clone()
    }

    pub fn session(&self) -> String {
        std::fs::read_to_string(self.home.path().join(".zstack/cli/session")).unwrap()
    }
}

/// Installs the .bin on this host, logs in; removes everything when dropped.
pub struct Stack {
    pub cli: Cli,
    pub password: String,
    _guard: HostInstallGuard,
}

pub fn install() -> Stack {
    install_with_ip("127.0.0.1")
}

/// Installs with the management node at `ip` (`-I`), an address of this machine that hosts of
/// the test (containers on a test bridge) reach it at.
pub fn install_with_ip(ip: &str) -> Stack {
    require_root();
    assert!(
        !installed_on_host(),
        "ZStack is already installed on this host; this test installs for real and removes it afterwards"
    );
    let guard = HostInstallGuard;
    let out = ok(bin_cmd(&bin_path("1.2.0"), &["-I", ip, "--json"]));
    let summary: Value = serde_json::from_str(&out).unwrap();
    let password = summary["admin_password"].as_str().unwrap().to_string();
    let cli = Cli::new();
    cli.ok(&[
        "LogInByAccount",
        "accountName=admin",
        &format!("password={password}"),
    ]);
    Stack {
        cli,
        password,
        _guard: guard,
    }
}

/// A qcow2 image of `size`, made with qemu-img.
pub fn qcow2(dir: &Path, size: &str) -> PathBuf {
    let p = dir.join("guest.qcow2");
    ok(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&p)
        .arg(size));
    p
}

pub fn sha256_hex(p: &Path) -> String {
    let out = ok(Command::new("sha256sum").arg(p));
    out.split_whitespace().next().unwrap().to_string()
}

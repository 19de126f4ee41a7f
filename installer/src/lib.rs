//! The ZStack offline installer.
//!
//! `zstack-installer-<version>.bin` is a sh header, the multi-call `zstack` program, the payload,
//! the unpacker and a trailer ([`binfmt`]); [`assemble`] builds it. The installer is not a
//! program of its own: [`main_with_args`] is what `zstack` runs when it is called
//! `zstack-installer` (payload/zstack). The header checks the file's size, has the unpacker
//! check the program's sha256 and decompress it, then runs it under that name; the installer
//! checks every part again ([`binfmt::verify`]) before doing anything, and then either only
//! reads the file (`--check`, `--info`, `--list`, `--extract`) or installs ([`install`]).

pub mod assemble;
pub mod binfmt;
pub mod install;
pub mod options;
pub mod preflight;
pub mod report;
pub mod undo;
pub mod upgrade_steps;

use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Parser;
use serde_json::json;

use crate::install::{DryRunDone, Summary};
use crate::options::Options;
use crate::report::Reporter;

/// Runs the installer with `args`; returns the exit code.
pub fn main_with_args(args: Vec<std::ffi::OsString>) -> i32 {
    let opts = match Options::try_parse_from(args) {
        Ok(o) => o,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let json = opts.json;
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        if let Err(e) = signal_hook::flag::register(sig, interrupted.clone()) {
            eprintln!("zstack-installer: cannot handle signals: {e}");
            return 1;
        }
    }
    match run(&opts, &interrupted) {
        Ok(()) => 0,
        Err(e) if e.downcast_ref::<DryRunDone>().is_some() => 0,
        Err(e) if interrupted.load(std::sync::atomic::Ordering::SeqCst) => {
            eprintln!("zstack-installer: interrupted: {e:#}");
            130
        }
        Err(e) => {
            if json {
                println!("{}", json!({"ok": false, "error": format!("{e:#}")}));
            } else {
                eprintln!("zstack-installer: {e:#}");
            }
            1
        }
    }
}

fn run(opts: &Options, interrupted: &Arc<AtomicBool>) -> anyhow::Result<()> {
    let Some(path) = &opts.bin else {
        bail!("this program runs from inside zstack-installer-<version>.bin; run that file: bash zstack-installer-<version>.bin");
    };
    let verified = binfmt::verify(path)?;
    let t = &verified.trailer;
    if opts.check {
        if opts.json {
            println!(
                "{}",
                json!({"ok": true, "file": path, "version": t.version, "verified": ["header", "installer", "payload", "unpacker", "trailer"]})
            );
        } else {
            println!(
                "{}: OK ({} {}; header, installer program, payload, unpacker and trailer verified)",
                path.display(),
                t.product,
                t.version
            );
        }
        return Ok(());
    }
    if opts.info {
        if opts.json {
            println!("{}", json!({"ok": true, "file": path, "trailer": t}));
        } else {
            println!("product:          {}", t.product);
            println!("version:          {}", t.version);
            println!("build date:       {}", t.build_date);
            println!("file size:        {} bytes", t.total_size);
            println!(
                "header:           {} bytes, sha256 {}",
                t.header_size, t.header_sha256
            );
            println!(
                "installer:        {} bytes, sha256 {}",
                t.installer_size, t.installer_sha256
            );
            println!(
                "payload:          {} bytes, sha256 {}",
                t.payload_size, t.payload_sha256
            );
            println!(
                "unpacker:         {} bytes, sha256 {}",
                t.unpacker_size, t.unpacker_sha256
            );
            println!(
                "unpacked:         {} bytes in {} files",
                t.unpacked_size, t.file_count
            );
        }
        return Ok(());
    }
    if opts.list {
        let m = verified.manifest()?;
        if opts.json {
            let files: Vec<_> = m
                .entries
                .iter()
                .map(|e| match e {
                    zstack_common::release::ManifestEntry::File { path, mode, size, sha256 } => {
                        json!({"path": path, "type": "file", "mode": format!("{mode:o}"), "size": size, "sha256": sha256})
                    }
                    zstack_common::release::ManifestEntry::Symlink { path, target } => {
                        json!({"path": path, "type": "symlink", "target": target})
                    }
                })
                .collect();
            println!("{}", json!({"ok": true, "files": files}));
        } else {
            let mut out = std::io::stdout().lock();
            for e in &m.entries {
                match e {
                    zstack_common::release::ManifestEntry::File {
                        path,
                        mode,
                        size,
                        sha256,
                    } => writeln!(out, "{mode:04o} {size:>10} {sha256} {path}")?,
                    zstack_common::release::ManifestEntry::Symlink { path, target } => {
                        writeln!(out, "link {:>10} {:64} {path} -> {target}", "", "")?
                    }
                }
            }
        }
        return Ok(());
    }
    if let Some(dir) = &opts.extract {
        if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
            bail!(
                "{} is not empty; give a new or empty directory to --extract",
                dir.display()
            );
        }
        let created = !dir.exists();
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        match verified.extract(dir, |_| {}) {
            Ok(m) => {
                if opts.json {
                    println!(
                        "{}",
                        json!({"ok": true, "dir": dir, "files": m.entries.len()})
                    );
                } else {
                    println!(
                        "extracted {} files of {} {} into {}",
                        m.entries.len(),
                        t.product,
                        t.version,
                        dir.display()
                    );
                }
                return Ok(());
            }
            Err(e) => {
                // Leave nothing half-extracted behind.
                if created {
                    let _ = std::fs::remove_dir_all(dir);
                } else if let Ok(entries) = std::fs::read_dir(dir) {
                    for en in entries.flatten() {
                        let p = en.path();
                        let _ = if p.is_dir() {
                            std::fs::remove_dir_all(&p)
                        } else {
                            std::fs::remove_file(&p)
                        };
                    }
                }
                return Err(e.into());
            }
        }
    }

    let mut rep = Reporter::new(opts.quiet || opts.json, opts.debug);
    let summary = install::install(opts, &verified, &mut rep, interrupted)?;
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary);
    }
    Ok(())
}

fn print_summary(s: &Summary) {
    let root = |p: &std::path::Path| match &s.sysroot {
        Some(r) => r
            .join(p.strip_prefix("/").unwrap_or(p))
            .display()
            .to_string(),
        None => p.display().to_string(),
    };
    println!();
    if !s.changed {
        println!(
            "Nothing to change: {} {} is installed as it should be.",
            s.product, s.version
        );
    } else if let Some(r) = &s.sysroot {
        println!(
            "{} {} is installed into the sysroot {} (nothing was started).",
            s.product,
            s.version,
            r.display()
        );
    } else if let Some(from) = &s.upgraded_from {
        println!(
            "{} is upgraded from {from} to {}{}.",
            s.product,
            s.version,
            if s.services_started {
                " and running"
            } else {
                ""
            }
        );
        if let Some(b) = &s.backup {
            println!("The database as it was before is backed up in {}", root(b));
        }
    } else if s.services_started {
        println!("{} {} is installed and running.", s.product, s.version);
    } else {
        println!(
            "{} {} is installed (not started: -z). Start it with: zstack-ctl start",
            s.product, s.version
        );
    }
    println!();
    if let Some(api) = &s.api_url {
        println!("  API:            {api}");
        if let Some(url) = dashboard_url(s, &root(&s.properties)) {
            println!("  dashboard:      {url}");
        }
    }
    println!("  host agent:     port {} on this host", s.agent_port);
    if s.api_url.is_some() {
        match &s.admin_password {
            Some(pw) => {
                println!("  log in:         zstack-cli LogInByAccount accountName=admin password={pw}");
                println!("                  (shown once; it is also in {}, readable by root only)", root(&s.properties));
            }
            None => println!(
                "  log in:         zstack-cli LogInByAccount accountName=admin password=<admin.password in {}>",
                root(&s.properties)
            ),
        }
    }
    println!("  operate:        zstack-ctl status | start | stop | restart");
    println!("  release:        {}", root(&s.release_dir));
    println!("  config:         {}", root(&s.properties));
    if let Some(db) = &s.database {
        println!("  database:       {}", root(db));
    }
    if let Some(b) = &s.backup_dir {
        println!("  backups:        {} (root's crontab: 30 0,12 * * * zstack-ctl dump_mysql --keep-amount 14)", root(b));
    }
    println!(
        "  logs:           {} (installer: {})",
        root(&s.log_dir),
        root(&s.installer_log)
    );
    let units = s.units.join(" and ");
    if s.sysroot.is_some() {
        println!("  units:          {units} (installed and enabled; nothing runs in a sysroot)");
    } else {
        println!(
            "  services:       {}",
            match s.init {
                zstack_common::service::InitSystem::Systemd =>
                    format!("systemd units {units}, enabled at boot"),
                zstack_common::service::InitSystem::Supervisor => format!(
                    "{units} supervised by zstack-ctl (systemd is not PID 1 on this host); units installed for when it is"
                ),
            }
        );
    }
    println!("  took:           {:.1}s", s.elapsed_ms as f64 / 1000.0);
}

/// The dashboard's address (1.2.0 on): `dashboard.port` of the installed zstack.properties.
fn dashboard_url(s: &Summary, properties: &str) -> Option<String> {
    let version = semver::Version::parse(&s.version).ok()?;
    if version < semver::Version::new(1, 2, 0) {
        return None;
    }
    let props = zstack_common::Properties::load(std::path::Path::new(properties)).ok()?;
    let port = zstack_common::service::dashboard_port(&props).ok()?;
    Some(format!("http://{}:{port}", s.management_ip))
}

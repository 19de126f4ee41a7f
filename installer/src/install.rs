//! A fresh install (and a safe re-run of one), step by step:
//!
//! 0. Read what is already on the host (installed release, database schema) and refuse what a
//!    plain install must not do (a downgrade, an upgrade without `-u`, a foreign database).
//! 1. Preflight ([`crate::preflight`]): every check before any change, all failures together.
//! 2. Take the installer lock; a second installer says which process holds it.
//! 3. Unpack the release into `<root>/versions/<version>/` (through a staging directory, each
//!    file checked against the MANIFEST), switch `current` atomically, link the commands.
//! 4. Write `/etc/zstack/zstack.properties` (0600, generated secrets; a re-run keeps every value
//!    and only adds keys that are missing).
//! 5. Create the database and apply the migrations through the ledger.
//! 6. Render and install the systemd units (enabled), and the dump_mysql crontab line.
//! 7. Start the services (systemd, or zstack-ctl's own supervisor) and wait until they answer.
//! 8. Print the summary.
//!
//! Every change is recorded in an [`UndoLog`] first; a failure or Ctrl-C at any step replays it,
//! so the host is left as it was. `ZSTACK_FAILPOINT=<step>` (a test aid) makes the named step fail
//! after it has made its changes: unpack, current, links, config, database, units, cron, start;
//! `ZSTACK_FAILPOINT=<step>:pause` instead waits there (up to 60 s) for a signal, so a test can
//! interrupt a run at a known point.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use zstack_common::fsutil::{
    self, atomic_symlink, atomic_write, create_dir_all_tracked, read_link_optional, read_optional,
};
use zstack_common::release::{Manifest, MANIFEST_FILE};
use zstack_common::service::{keys, InitSystem, Service};
use zstack_common::templates::Templates;
use zstack_common::{Layout, Properties, Release};

use crate::binfmt::VerifiedBin;
use crate::options::Options;
use crate::preflight::{self, Preflight};
use crate::report::Reporter;
use crate::undo::{Undo, UndoLog};

/// Environment variable naming a step that must fail (test aid).
pub const FAILPOINT_ENV: &str = "ZSTACK_FAILPOINT";

#[derive(Debug, Serialize)]
pub struct StepReport {
    pub id: &'static str,
    pub title: &'static str,
    pub changed: bool,
    pub outcome: String,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub ok: bool,
    pub product: String,
    pub version: String,
    pub mode: &'static str,
    /// With `-u`: the release upgraded from, and the verified backup taken first.
    pub upgraded_from: Option<String>,
    pub backup: Option<PathBuf>,
    pub sysroot: Option<PathBuf>,
    pub install_root: PathBuf,
    pub release_dir: PathBuf,
    pub properties: PathBuf,
    pub database: Option<PathBuf>,
    pub backup_dir: Option<PathBuf>,
    pub log_dir: PathBuf,
    pub installer_log: PathBuf,
    pub api_url: Option<String>,
    pub agent_port: u16,
    pub management_ip: String,
    pub init: InitSystem,
    pub services_started: bool,
    /// The admin password, only on the run that generated it.
    pub admin_password: Option<String>,
    pub changed: bool,
    pub steps: Vec<StepReport>,
    pub warnings: Vec<String>,
    pub elapsed_ms: u128,
}

/// The steps of an upgrade (`-u`), in order.
const UPGRADE_STEPS: &[(&str, &str)] = &[
    ("unpack", "Unpack the new release"),
    ("backup", "Back up the database (verified)"),
    ("stop", "Stop the management node"),
    ("migrate", "Migrate the database"),
    ("config", "Migrate zstack.properties"),
    ("current", "Switch `current`"),
    ("links", "Link the commands into /usr/bin"),
    ("units", "Re-render the systemd units"),
    ("cron", "Keep the backup crontab line"),
    ("start", "Restart the services"),
];

/// The steps of an install, in order.
const STEPS: &[(&str, &str)] = &[
    ("unpack", "Unpack the release"),
    ("current", "Switch `current`"),
    ("links", "Link the commands into /usr/bin"),
    ("config", "Write zstack.properties"),
    ("database", "Create the database"),
    ("units", "Install the systemd units"),
    ("cron", "Install the backup crontab line"),
    ("start", "Start the services"),
];

struct Run<'a> {
    opts: &'a Options,
    layout: Layout,
    bin: &'a VerifiedBin,
    version: semver::Version,
    services: Vec<Service>,
    undo: UndoLog,
    management_ip: String,
    admin_password: Option<String>,
    props: Option<Properties>,
    templates: Option<Templates>,
    /// Safety copies that are removed once the whole run has succeeded.
    discard_on_success: Vec<PathBuf>,
    /// With `-u`: the release being upgraded from.
    upgrade_from: Option<semver::Version>,
    /// With `-u`: the verified backup taken before the database changes.
    backup: Option<PathBuf>,
}

/// Runs an install. On failure the host has been rolled back and the error says what failed.
pub fn install(
    opts: &Options,
    bin: &VerifiedBin,
    rep: &mut Reporter,
    interrupted: &Arc<AtomicBool>,
) -> anyhow::Result<Summary> {
    let started = Instant::now();
    // The sysroot is made absolute but not created: nothing may change before preflight passes.
    let sysroot = std::path::absolute(opts.sysroot.clone().unwrap_or_else(|| PathBuf::from("/")))
        .context("cannot resolve the sysroot path")?;
    let layout = Layout::new(&sysroot, &opts.install_root);
    let version = semver::Version::parse(&bin.trailer.version).context("the .bin's version")?;
    let services = if opts.host_only {
        vec![Service::KvmAgent]
    } else {
        vec![Service::Server, Service::KvmAgent]
    };

    // A run cut off before (a crash, kill -9) left its journal: put back what it changed first,
    // under the lock, so every check below sees the host as it was before that run.
    let journal = layout.host(layout.installer_journal());
    let mut early_lock = None;
    if journal.exists() && opts.dry_run {
        rep.warn(&format!(
            "an earlier installer run did not finish ({}); a real run will first put back what it changed",
            journal.display()
        ));
    } else if journal.exists() {
        early_lock = Some(take_lock(&layout)?);
        if let Some(mut old) = UndoLog::load(&journal)? {
            rep.warn(&format!(
                "an earlier installer run ({}) did not finish; putting back what it changed",
                old.what
            ));
            let failures = old.rollback(&layout);
            if !failures.is_empty() {
                bail!(
                    "cannot put back what the interrupted run changed (journal {}):\n  {}",
                    journal.display(),
                    failures.join("\n  ")
                );
            }
            rep.info("the interrupted run was rolled back; the host is as it was before it");
        }
    }

    // 0 + 1: what is here, and preflight.
    let mut problems = existing_install_problems(opts, &layout, &version);
    let upgrade_from = if opts.upgrade {
        Release::current(&layout).and_then(|r| r.semver().ok())
    } else {
        None
    };
    let db_size = std::fs::metadata(layout.host(layout.db_file()))
        .map(|m| m.len())
        .unwrap_or(0);
    let pre = Preflight {
        opts,
        layout: &layout,
        services: &services,
        unpacked_size: bin.trailer.unpacked_size,
        // The backup and its verification copy.
        extra_data: if upgrade_from.is_some() {
            db_size * 2
        } else {
            0
        },
    };
    let findings = match pre.run() {
        Ok(f) if problems.is_empty() => f,
        Ok(_) => {
            return Err(preflight_error(problems));
        }
        Err(mut p) => {
            problems.append(&mut p);
            return Err(preflight_error(problems));
        }
    };
    for w in &findings.warnings {
        rep.warn(w);
    }
    let management_ip = opts
        .management_ip
        .clone()
        .or_else(|| existing_ip(&layout))
        .or_else(preflight::default_route_ip)
        .unwrap_or_else(|| "127.0.0.1".to_string());
    rep.debug(&format!(
        "system: {}, management IP {management_ip}",
        findings.os_name
    ));

    let init = InitSystem::detect(&layout);
    if opts.dry_run {
        print_plan(opts, &layout, &version, &services, &management_ip, init);
        bail_ok_dry_run()?;
    }

    // 2: the lock (under a sysroot, the sysroot is created first to hold it).
    if layout.is_sysroot() {
        std::fs::create_dir_all(&sysroot)
            .with_context(|| format!("cannot create the sysroot {}", sysroot.display()))?;
    }
    let _lock = match early_lock {
        Some(l) => l,
        None => take_lock(&layout)?,
    };
    if let Ok(log) =
        zstack_common::logfile::LogFile::open(&layout.host(layout.installer_log()), false)
    {
        rep.set_log(log);
    }
    rep.info(&format!(
        "{} {} {} ({}) on {}{}",
        match &upgrade_from {
            Some(from) => format!("Upgrading from {from} to"),
            None => "Installing".to_string(),
        },
        bin.trailer.product,
        version,
        if opts.host_only {
            "host agent only"
        } else {
            "all-in-one"
        },
        findings.os_name,
        if layout.is_sysroot() {
            format!(" into sysroot {}", sysroot.display())
        } else {
            String::new()
        }
    ));

    let mut run = Run {
        opts,
        layout,
        bin,
        version,
        services,
        undo: UndoLog::on_disk(
            journal,
            match &upgrade_from {
                Some(from) => format!("upgrade from {from} to {}", bin.trailer.version),
                None => format!("install of {}", bin.trailer.version),
            },
        )?,
        management_ip,
        admin_password: None,
        props: None,
        templates: None,
        discard_on_success: Vec::new(),
        upgrade_from,
        backup: None,
    };
    let mut reports = Vec::new();
    let plan = if run.upgrade_from.is_some() {
        UPGRADE_STEPS
    } else {
        STEPS
    };
    let steps: Vec<_> = plan.iter().filter(|(id, _)| run.wants(id)).collect();
    let total = steps.len();
    for (i, (id, title)) in steps.iter().enumerate() {
        rep.step_start(i + 1, total, title);
        let result = if interrupted.load(Ordering::SeqCst) {
            Err(anyhow::anyhow!("interrupted"))
        } else {
            run.step(id, rep).and_then(|outcome| {
                failpoint(id, interrupted, rep)?;
                if interrupted.load(Ordering::SeqCst) {
                    bail!("interrupted");
                }
                Ok(outcome)
            })
        };
        match result {
            Ok((changed, outcome)) => {
                rep.step_done(&outcome);
                reports.push(StepReport {
                    id,
                    title,
                    changed,
                    outcome,
                });
            }
            Err(e) => {
                rep.step_failed(&format!("{e:#}"));
                let failures = run.undo.rollback(&run.layout);
                let rolled = if failures.is_empty() {
                    "everything this run changed was put back".to_string()
                } else {
                    format!("rolling back left problems:\n  {}", failures.join("\n  "))
                };
                return Err(e.context(format!(
                    "step {} of {total} ({title}) failed; {rolled}",
                    i + 1
                )));
            }
        }
    }

    run.undo.commit();
    if let Some(from) = &run.upgrade_from {
        // The release upgraded from is kept (for a manual roll back) until the next upgrade.
        prune_old_releases(&run.layout, &[from.to_string(), run.version.to_string()]);
    }
    for p in &run.discard_on_success {
        let _ = if p.is_dir() {
            std::fs::remove_dir_all(p)
        } else {
            std::fs::remove_file(p)
        };
    }
    let changed = reports.iter().any(|r| r.changed);
    let props = run.props.as_ref();
    let api_port = props
        .and_then(|p| Service::Server.port(p).ok())
        .unwrap_or(8080);
    let agent_port = props
        .and_then(|p| Service::KvmAgent.port(p).ok())
        .unwrap_or(7070);
    let l = &run.layout;
    let server = run.services.contains(&Service::Server);
    Ok(Summary {
        ok: true,
        product: run.bin.trailer.product.clone(),
        version: run.version.to_string(),
        mode: if run.upgrade_from.is_some() {
            "upgrade"
        } else if opts.host_only {
            "host-only"
        } else {
            "all-in-one"
        },
        upgraded_from: run.upgrade_from.as_ref().map(|v| v.to_string()),
        backup: run.backup.clone(),
        sysroot: l.is_sysroot().then(|| l.sysroot().to_path_buf()),
        install_root: l.install_root().to_path_buf(),
        release_dir: l.version_dir(&run.version.to_string()),
        properties: l.properties_file(),
        database: server.then(|| l.db_file()),
        backup_dir: server.then(|| l.backup_dir()),
        log_dir: l.log_dir(),
        installer_log: l.installer_log(),
        api_url: server.then(|| format!("http://{}:{api_port}", run.management_ip)),
        agent_port,
        management_ip: run.management_ip.clone(),
        init,
        services_started: run.wants("start"),
        admin_password: run.admin_password.clone(),
        changed,
        steps: reports,
        warnings: findings.warnings,
        elapsed_ms: started.elapsed().as_millis(),
    })
}

/// Honours `ZSTACK_FAILPOINT` after step `id` has made its changes.
fn failpoint(id: &str, interrupted: &AtomicBool, rep: &Reporter) -> anyhow::Result<()> {
    let Ok(fp) = std::env::var(FAILPOINT_ENV) else {
        return Ok(());
    };
    if fp == id {
        bail!("failpoint {FAILPOINT_ENV}={id} triggered (test aid)");
    }
    if fp.strip_suffix(":pause") == Some(id) {
        rep.info(&format!("failpoint: paused after step {id} (test aid)"));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !interrupted.load(Ordering::SeqCst) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

/// The error preflight problems make: every one on its own line.
fn preflight_error(problems: Vec<String>) -> anyhow::Error {
    anyhow::anyhow!(
        "preflight found {} problem(s); nothing was changed:\n  - {}",
        problems.len(),
        problems.join("\n  - ")
    )
}

/// A dry run ends here with success; the caller prints nothing more.
fn bail_ok_dry_run() -> anyhow::Result<()> {
    Err(anyhow::Error::new(DryRunDone))
}

/// Marker: a dry run finished (not a failure).
#[derive(Debug, thiserror::Error)]
#[error("dry run: nothing was changed")]
pub struct DryRunDone;

/// What a plain install must refuse given what is already installed.
/// Removes release trees other than `keep` (and any leftover staging directory).
fn prune_old_releases(layout: &Layout, keep: &[String]) {
    let Ok(rd) = std::fs::read_dir(layout.host(layout.versions_dir())) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !keep.contains(&name) && e.path().is_dir() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn existing_install_problems(
    opts: &Options,
    layout: &Layout,
    version: &semver::Version,
) -> Vec<String> {
    let mut problems = Vec::new();
    if opts.upgrade {
        match Release::current(layout).map(|r| (r.version.clone(), r.semver())) {
            None => problems.push(format!(
                "ZStack is not installed here, so there is nothing to upgrade; install it with: bash zstack-installer-{version}.bin"
            )),
            Some((v, Err(_))) => problems.push(format!("the installed release has an unreadable version {v:?}")),
            Some((_, Ok(v))) if &v > version && !opts.force => problems.push(format!(
                "ZStack {v} is installed here, newer than {version}: a downgrade is refused (-F forces it)"
            )),
            Some((_, Ok(v))) if &v == version && !opts.force => problems.push(format!(
                "ZStack {v} is already installed here: nothing to upgrade (-F runs it again)"
            )),
            Some(_) => {}
        }
        return problems;
    }
    if let Some(installed) = Release::current(layout) {
        if let Ok(v) = installed.semver() {
            if &v < version {
                problems.push(format!(
                    "ZStack {v} is installed here; upgrade it with: bash zstack-installer-{version}.bin -u"
                ));
            } else if &v > version && !opts.force {
                problems.push(format!(
                    "a newer ZStack ({v}) is installed here; installing {version} over it would be a downgrade (refused; -F forces it)"
                ));
            }
        }
    }
    if opts.host_only {
        return problems;
    }
    let db = layout.host(layout.db_file());
    if db.exists() && !opts.drop_db {
        match db_schema_version(&db) {
            Ok(Some(v)) if &v == version => {}
            Ok(Some(v)) if &v < version && !opts.keep_db => problems.push(format!(
                "{} holds a ZStack {v} database; upgrade with -u, keep and migrate it with -k, \
                 or drop it with -D (a copy is kept in {})",
                db.display(),
                layout.backup_dir().display()
            )),
            Ok(Some(v)) if &v > version => problems.push(format!(
                "{} was made by ZStack {v}, newer than {version}; install {v} or later, or drop it with -D",
                db.display()
            )),
            Ok(Some(_)) => {}
            Ok(None) => problems.push(format!(
                "{} exists but is not a ZStack database; move it away or drop it with -D",
                db.display()
            )),
            Err(e) => problems.push(format!(
                "cannot read the existing database {}: {e}; move it away or drop it with -D",
                db.display()
            )),
        }
    }
    problems
}

/// The highest migration in the ledger of an existing DB, read without changing the file.
fn db_schema_version(db: &Path) -> anyhow::Result<Option<semver::Version>> {
    let conn = zstack_db::open_read_only(db)?;
    Ok(zstack_db::ledger_version(&conn, db)?)
}

fn existing_ip(layout: &Layout) -> Option<String> {
    Properties::load(&layout.host(layout.properties_file()))
        .ok()?
        .get(keys::MANAGEMENT_IP)
        .map(str::to_string)
}

fn print_plan(
    opts: &Options,
    layout: &Layout,
    version: &semver::Version,
    services: &[Service],
    ip: &str,
    init: InitSystem,
) {
    let names: Vec<_> = services.iter().map(|s| s.name()).collect();
    println!("Plan (dry run, nothing will be changed):");
    println!(
        "  1. unpack ZStack {version} into {}",
        layout
            .host(layout.version_dir(&version.to_string()))
            .display()
    );
    println!(
        "  2. point {} at versions/{version}",
        layout.host(layout.current_link()).display()
    );
    println!(
        "  3. link zstack-ctl and zstack-cli into {}",
        layout.host("/usr/bin").display()
    );
    println!(
        "  4. write {} (management IP {ip}; existing values kept)",
        layout.host(layout.properties_file()).display()
    );
    if services.contains(&Service::Server) {
        let db = layout.host(layout.db_file());
        println!(
            "  5. {} the database {} and apply migrations up to {version}",
            if opts.drop_db && db.exists() {
                "drop (keeping a copy) and recreate"
            } else if db.exists() {
                "keep"
            } else {
                "create"
            },
            db.display()
        );
    }
    println!(
        "  6. install and enable the systemd units of {}",
        names.join(", ")
    );
    if services.contains(&Service::Server) {
        println!("  7. add `30 0,12 * * * zstack-ctl dump_mysql --keep-amount 14` to root's crontab unless a dump_mysql line is there");
    }
    if layout.is_sysroot() || opts.no_start {
        println!(
            "  8. start nothing ({})",
            if layout.is_sysroot() {
                "--sysroot"
            } else {
                "-z"
            }
        );
    } else {
        println!(
            "  8. start {} ({}) and wait until they answer",
            names.join(", "),
            match init {
                InitSystem::Systemd => "with systemd",
                InitSystem::Supervisor => "supervised by zstack-ctl: systemd is not PID 1 here",
            }
        );
    }
}

/// Holds the installer lock for the life of the run.
pub struct InstallerLock {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

fn take_lock(layout: &Layout) -> anyhow::Result<InstallerLock> {
    use std::io::{Seek, Write};
    let path = layout.host(layout.installer_lock());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            lock.set_len(0)?;
            lock.rewind()?;
            writeln!(lock, "{}", std::process::id())?;
            Ok(InstallerLock { _lock: lock })
        }
        Err((_, _)) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            let pid = holder.trim();
            let cmd = pid
                .parse()
                .ok()
                .and_then(zstack_common::process::cmdline)
                .unwrap_or_default();
            bail!(
                "another ZStack installer is running (pid {pid}{}); wait for it to finish (lock: {})",
                if cmd.is_empty() { String::new() } else { format!(": {cmd}") },
                path.display()
            )
        }
    }
}

impl Run<'_> {
    fn wants(&self, id: &str) -> bool {
        let server = self.services.contains(&Service::Server);
        let upgrade = self.upgrade_from.is_some();
        match id {
            "backup" | "stop" | "migrate" => upgrade && server,
            "database" => !upgrade && server,
            "cron" => server,
            "start" => !self.opts.no_start && !self.layout.is_sysroot(),
            _ => true,
        }
    }

    fn step(&mut self, id: &str, rep: &Reporter) -> anyhow::Result<(bool, String)> {
        match id {
            "unpack" => self.unpack(rep),
            "current" => self.switch_current(),
            "links" => self.link_commands(),
            "config" => self.write_config(),
            "database" => self.create_database(),
            "backup" => self.backup_db(),
            "stop" => self.stop_server(),
            "migrate" => self.migrate_db(),
            "units" => self.install_units(),
            "cron" => self.install_cron(),
            "start" => self.start(rep),
            other => bail!("unknown step {other}"),
        }
    }

    fn version_str(&self) -> String {
        self.version.to_string()
    }

    fn backup_db(&mut self) -> anyhow::Result<(bool, String)> {
        let from = self.upgrade_from.clone().context("not an upgrade")?;
        let name = format!("zstack-upgrade-{from}-to-{}", self.version);
        let r = zstack_ctl::backup::dump(&self.layout, &name, 10)
            .context("the backup before the upgrade failed; the upgrade is aborted")?;
        self.backup = Some(r.file.clone());
        Ok((
            true,
            format!("{} (restored, integrity_check passed)", r.file.display()),
        ))
    }

    fn stop_server(&mut self) -> anyhow::Result<(bool, String)> {
        let l = self.layout.clone();
        if l.is_sysroot() {
            return Ok((false, "nothing runs in a sysroot".into()));
        }
        let init = InitSystem::detect(&l);
        if zstack_ctl::lifecycle::service_pid(&l, init, Service::Server).is_none() {
            return Ok((false, "the management node was not running".into()));
        }
        self.undo.push(Undo::Start(vec![Service::Server]));
        zstack_ctl::lifecycle::stop(&l, &[Service::Server], zstack_ctl::lifecycle::STOP_TIMEOUT)?;
        Ok((
            true,
            "stopped; the host agent and the VMs keep running".into(),
        ))
    }

    fn migrate_db(&mut self) -> anyhow::Result<(bool, String)> {
        let l = self.layout.clone();
        let backup = self.backup.clone().context("no backup was taken")?;
        let db = l.host(l.db_file());
        let shipped = zstack_db::load_migrations(
            &l.host(l.version_dir(&self.version_str()).join("migrations")),
        )?;
        self.undo.push(Undo::RestoreDb { backup });
        let conn = zstack_db::open_existing(&db)?;
        let ledger = zstack_db::MigrationLedger::new(&conn, &db)?;
        let before = ledger.schema_version()?;
        let applied = ledger.migrate(&shipped, &self.version)?;
        let names: Vec<&str> = applied.iter().map(|m| m.file.as_str()).collect();
        Ok((
            !applied.is_empty(),
            format!(
                "schema {} -> {}: {}",
                before
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "none".into()),
                self.version,
                if names.is_empty() {
                    "nothing to apply".to_string()
                } else {
                    names.join(", ")
                }
            ),
        ))
    }

    /// Creates `dir` (host path) and records the directories it made.
    fn mkdirs(&mut self, dir: &Path, mode: u32) -> anyhow::Result<()> {
        let made = create_dir_all_tracked(dir, mode)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        if let Some(first) = made.into_iter().next() {
            self.undo.push(Undo::Remove(first));
        }
        Ok(())
    }

    /// Writes a file if its content differs, recording how to put back the old one.
    fn put_file(&mut self, path: &Path, content: &[u8], mode: u32) -> anyhow::Result<bool> {
        use std::os::unix::fs::PermissionsExt;
        let old = read_optional(path).with_context(|| format!("cannot read {}", path.display()))?;
        let old_mode = std::fs::metadata(path)
            .map(|m| m.permissions().mode() & 0o7777)
            .ok();
        if old.as_deref() == Some(content) && old_mode == Some(mode) {
            return Ok(false);
        }
        if let Some(dir) = path.parent() {
            self.mkdirs(dir, 0o755)?;
        }
        self.undo.push(match old {
            Some(content) => Undo::RestoreFile {
                path: path.to_path_buf(),
                content,
                mode: old_mode.unwrap_or(0o644),
            },
            None => Undo::Remove(path.to_path_buf()),
        });
        atomic_write(path, content, mode)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(true)
    }

    /// Points a symlink at `target` if it does not already, recording the old state.
    fn put_symlink(&mut self, link: &Path, target: &Path) -> anyhow::Result<bool> {
        let old = read_link_optional(link)?;
        if old.as_deref() == Some(target) {
            return Ok(false);
        }
        if let Some(dir) = link.parent() {
            self.mkdirs(dir, 0o755)?;
        }
        match (old, std::fs::symlink_metadata(link)) {
            (Some(old), _) => self.undo.push(Undo::RestoreSymlink {
                path: link.to_path_buf(),
                target: old,
            }),
            (None, Ok(meta)) => {
                // A regular file in the way (preflight allowed it only with -F): keep its content.
                use std::os::unix::fs::PermissionsExt;
                let content = std::fs::read(link)?;
                self.undo.push(Undo::RestoreFile {
                    path: link.to_path_buf(),
                    content,
                    mode: meta.permissions().mode() & 0o7777,
                });
            }
            (None, Err(_)) => self.undo.push(Undo::Remove(link.to_path_buf())),
        }
        atomic_symlink(target, link).with_context(|| format!("cannot link {}", link.display()))?;
        Ok(true)
    }

    fn unpack(&mut self, rep: &Reporter) -> anyhow::Result<(bool, String)> {
        let ver = self.version_str();
        let dest = self.layout.host(self.layout.version_dir(&ver));
        let mut replaced: Option<PathBuf> = None;
        if dest.exists() {
            let check = std::fs::read_to_string(dest.join(MANIFEST_FILE))
                .map_err(anyhow::Error::from)
                .and_then(|t| Ok(Manifest::parse(&t)?))
                .and_then(|m| Ok(m.verify_tree(&dest)?));
            match check {
                Ok(()) => {
                    return Ok((
                        false,
                        format!("unchanged: {} is in place and verified", dest.display()),
                    ))
                }
                Err(e) if self.opts.force => {
                    rep.detail(&format!(
                        "{} differs from the release ({e:#}); replacing it (-F)",
                        dest.display()
                    ));
                    let aside =
                        dest.with_file_name(format!(".{ver}.replaced-{}", std::process::id()));
                    std::fs::rename(&dest, &aside)?;
                    self.undo.push(Undo::MoveBack {
                        from: aside.clone(),
                        to: dest.clone(),
                    });
                    replaced = Some(aside);
                }
                Err(e) => bail!(
                    "{} exists but differs from this release ({e:#}); run with -F to replace it",
                    dest.display()
                ),
            }
        }
        let versions = self.layout.host(self.layout.versions_dir());
        self.mkdirs(&versions, 0o755)?;
        let staging = versions.join(format!(".{ver}.partial-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir(&staging)
            .with_context(|| format!("cannot create {}", staging.display()))?;
        self.undo.push(Undo::Remove(staging.clone()));
        let total = self.bin.trailer.unpacked_size.max(1);
        let manifest = self.bin.extract(&staging, |done| {
            rep.detail(&format!("{}%", done * 100 / total))
        })?;
        fsutil::sync_dir(&staging)?;
        std::fs::rename(&staging, &dest)
            .with_context(|| format!("cannot move the release into {}", dest.display()))?;
        self.undo.push(Undo::Remove(dest.clone()));
        if let Some(old) = replaced {
            // The replaced tree stays until the run has succeeded, so a rollback can put it back.
            self.discard_on_success.push(old);
        }
        Ok((
            true,
            format!(
                "{} files ({} MiB) into {}",
                manifest.entries.len(),
                manifest.total_size() >> 20,
                dest.display()
            ),
        ))
    }

    fn switch_current(&mut self) -> anyhow::Result<(bool, String)> {
        let link = self.layout.host(self.layout.current_link());
        let target = PathBuf::from("versions").join(self.version_str());
        if self.put_symlink(&link, &target)? {
            Ok((true, format!("current -> {}", target.display())))
        } else {
            Ok((false, format!("unchanged: current -> {}", target.display())))
        }
    }

    fn link_commands(&mut self) -> anyhow::Result<(bool, String)> {
        let mut changed = Vec::new();
        for name in ["zstack-ctl", "zstack-cli"] {
            let link = self.layout.host(self.layout.usr_bin(name));
            let target = self.layout.current_bin(name);
            if self.put_symlink(&link, &target)? {
                changed.push(name);
            }
        }
        Ok(if changed.is_empty() {
            (
                false,
                "unchanged: zstack-ctl and zstack-cli are linked".into(),
            )
        } else {
            (true, format!("linked {}", changed.join(", ")))
        })
    }

    fn templates(&mut self) -> anyhow::Result<&Templates> {
        if self.templates.is_none() {
            let dir = self.layout.host(
                self.layout
                    .version_dir(&self.version_str())
                    .join("templates"),
            );
            self.templates = Some(Templates::load(&dir)?);
        }
        self.templates.as_ref().context("templates")
    }

    fn write_config(&mut self) -> anyhow::Result<(bool, String)> {
        let path = self.layout.host(self.layout.properties_file());
        self.mkdirs(&self.layout.host(self.layout.etc_dir()), 0o755)?;
        let password = zstack_common::secret::random_password()?;
        let ctx = serde_json::json!({
            "version": self.version_str(),
            "management_ip": self.management_ip,
            "api_port": Service::Server.default_port(),
            "agent_port": Service::KvmAgent.default_port(),
            "agent_secret": zstack_common::secret::random_hex(32)?,
            "admin_password": password,
            "release": {"major": self.version.major, "minor": self.version.minor, "patch": self.version.patch},
        });
        let rendered = self
            .templates()?
            .render("config/zstack.properties.tera", &ctx)?;
        let defaults = Properties::parse(&rendered, "config/zstack.properties.tera")?;
        let (props, what) = match read_optional(&path)? {
            None => {
                self.admin_password = Some(password);
                (defaults, "written with new secrets".to_string())
            }
            Some(bytes) => {
                let mut props = Properties::parse(
                    &String::from_utf8_lossy(&bytes),
                    &path.display().to_string(),
                )?;
                let mut renamed = Vec::new();
                if let Some(from) = &self.upgrade_from {
                    for step in crate::upgrade_steps::config_steps_between(from, &self.version) {
                        if (step.apply)(&mut props) {
                            renamed.push(step.what);
                        }
                    }
                }
                let added = props.add_missing(&defaults);
                if added.iter().any(|k| k == keys::ADMIN_PASSWORD) {
                    self.admin_password = Some(password);
                }
                let mut what = if added.is_empty() {
                    "your settings kept".to_string()
                } else {
                    format!("your settings kept; added {}", added.join(", "))
                };
                for r in renamed {
                    what.push_str(&format!("; {r}"));
                }
                if let Some(ip) = &self.opts.management_ip {
                    if props.set(keys::MANAGEMENT_IP, ip) {
                        what.push_str(&format!("; {} set to {ip} (-I)", keys::MANAGEMENT_IP));
                    }
                }
                (props, what)
            }
        };
        let changed = self.put_file(&path, props.render().as_bytes(), 0o600)?;
        self.props = Some(props);
        Ok(if changed {
            (true, format!("{}: {what}", path.display()))
        } else {
            (false, format!("unchanged: {}", path.display()))
        })
    }

    fn create_database(&mut self) -> anyhow::Result<(bool, String)> {
        let l = self.layout.clone();
        self.mkdirs(&l.host(l.data_dir()), 0o755)?;
        self.mkdirs(&l.host(l.backup_dir()), 0o700)?;
        self.mkdirs(&l.host(l.log_dir()), 0o755)?;
        let db = l.host(l.db_file());
        let mut note = String::new();
        if db.exists() && self.opts.drop_db {
            let stamp = chrono::Local::now().format("%Y-%m-%d_%H-%M-%S");
            for suffix in ["", "-wal", "-shm"] {
                let from = PathBuf::from(format!("{}{suffix}", db.display()));
                if from.exists() {
                    let to = l
                        .host(l.backup_dir())
                        .join(format!("zstack-dropped-{stamp}.db{suffix}"));
                    std::fs::rename(&from, &to)
                        .with_context(|| format!("cannot move {} aside", from.display()))?;
                    self.undo.push(Undo::MoveBack {
                        from: to.clone(),
                        to: from,
                    });
                    if suffix.is_empty() {
                        note = format!("; the old database was moved to {}", to.display());
                    }
                }
            }
        }
        let shipped = zstack_db::load_migrations(
            &l.host(l.version_dir(&self.version_str()).join("migrations")),
        )?;
        let existed = db.exists();
        if existed {
            // Migrating an existing DB: keep a copy to put back if anything later fails.
            let conn = zstack_db::open_existing(&db)?;
            let ledger = zstack_db::MigrationLedger::new(&conn, &db)?;
            ledger.verify(&shipped)?;
            let before = ledger.schema_version()?;
            let pending = ledger.pending(&shipped, &self.version)?;
            if pending.is_empty() {
                return Ok((
                    false,
                    format!("unchanged: {} is at schema {}", db.display(), self.version),
                ));
            }
            let copy = l
                .host(l.backup_dir())
                .join(format!(".zstack-pre-install-{}.db", std::process::id()));
            conn.backup(rusqlite::DatabaseName::Main, &copy, None)
                .with_context(|| format!("cannot copy the database to {}", copy.display()))?;
            drop(ledger);
            drop(conn);
            self.undo
                .push(Undo::Remove(PathBuf::from(format!("{}-wal", db.display()))));
            self.undo
                .push(Undo::Remove(PathBuf::from(format!("{}-shm", db.display()))));
            self.undo.push(Undo::MoveBack {
                from: copy.clone(),
                to: db.clone(),
            });
            let conn = zstack_db::open_existing(&db)?;
            let ledger = zstack_db::MigrationLedger::new(&conn, &db)?;
            let applied = ledger.migrate(&shipped, &self.version)?;
            drop(ledger);
            drop(conn);
            self.discard_on_success.push(copy);
            return Ok((
                true,
                format!(
                    "{} migrated from schema {} to {} ({} migration(s)){note}",
                    db.display(),
                    before
                        .map(|v| v.to_string())
                        .unwrap_or_else(|| "none".into()),
                    self.version,
                    applied.len()
                ),
            ));
        }
        for suffix in ["", "-wal", "-shm"] {
            self.undo.push(Undo::Remove(PathBuf::from(format!(
                "{}{suffix}",
                db.display()
            ))));
        }
        let conn = zstack_db::open(&db)?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600))?;
        }
        let ledger = zstack_db::MigrationLedger::new(&conn, &db)?;
        let applied = ledger.migrate(&shipped, &self.version)?;
        Ok((
            true,
            format!(
                "{} created at schema {} ({} migrations){note}",
                db.display(),
                self.version,
                applied.len()
            ),
        ))
    }

    fn install_units(&mut self) -> anyhow::Result<(bool, String)> {
        let l = self.layout.clone();
        let init = InitSystem::detect(&l);
        if init == InitSystem::Systemd {
            self.undo.push(Undo::DaemonReload);
        }
        let props = self.props.clone().unwrap_or_default();
        let mut changed = Vec::new();
        for s in self.services.clone() {
            let ctx = serde_json::json!({
                "version": self.version_str(),
                "install_root": l.install_root(),
                "api_port": Service::Server.port(&props).map_err(anyhow::Error::msg)?,
                "agent_port": Service::KvmAgent.port(&props).map_err(anyhow::Error::msg)?,
                "storage_mounts": Vec::<String>::new(),
            });
            let text = self.templates()?.render(&s.unit_template(), &ctx)?;
            let unit_path = l.host(l.systemd_dir().join(s.unit()));
            let wrote = self.put_file(&unit_path, text.as_bytes(), 0o644)?;
            // Enabled as `systemctl enable` would: a link in multi-user.target.wants.
            let wants = l.host(
                l.systemd_dir()
                    .join("multi-user.target.wants")
                    .join(s.unit()),
            );
            let linked = self.put_symlink(&wants, &l.systemd_dir().join(s.unit()))?;
            if wrote || linked {
                changed.push(s.unit());
            }
        }
        if init == InitSystem::Systemd && !changed.is_empty() {
            let st = std::process::Command::new("systemctl")
                .arg("daemon-reload")
                .status()?;
            if !st.success() {
                bail!("systemctl daemon-reload failed ({st})");
            }
        }
        Ok(if changed.is_empty() {
            (false, "unchanged: units installed and enabled".into())
        } else {
            (
                true,
                format!("installed and enabled {}", changed.join(", ")),
            )
        })
    }

    fn install_cron(&mut self) -> anyhow::Result<(bool, String)> {
        let line = zstack_ctl::cron::render_line(self.templates()?)?;
        let before = zstack_ctl::cron::read(&self.layout)?;
        let (after, change) =
            zstack_ctl::cron::with_dump_line(before.as_deref().unwrap_or(""), &line);
        match change {
            zstack_ctl::cron::CronChange::AlreadyPresent { line } => Ok((
                false,
                format!("unchanged: root's crontab already runs `{line}`"),
            )),
            zstack_ctl::cron::CronChange::Added { line } => {
                self.undo.push(Undo::RestoreCrontab(before));
                zstack_ctl::cron::write(&self.layout, Some(&after))?;
                Ok((true, format!("added `{line}`")))
            }
        }
    }

    fn start(&mut self, rep: &Reporter) -> anyhow::Result<(bool, String)> {
        let l = self.layout.clone();
        let props = self.props.clone().context("configuration not loaded")?;
        let init = InitSystem::detect(&l);
        let mut to_start = Vec::new();
        let mut restarted = Vec::new();
        for &s in &self.services {
            match zstack_ctl::lifecycle::service_pid(&l, init, s) {
                None => to_start.push(s),
                Some(_) => match zstack_ctl::lifecycle::check_health(&props, s) {
                    Ok(h) if h.version == self.version.to_string() => {}
                    _ => restarted.push(s),
                },
            }
        }
        if !restarted.is_empty() {
            // A failure later starts them again, as the release that is current by then.
            self.undo.push(Undo::Start(restarted.clone()));
            zstack_ctl::lifecycle::stop(&l, &restarted, zstack_ctl::lifecycle::STOP_TIMEOUT)?;
            to_start.extend(restarted.iter().copied());
        }
        if to_start.is_empty() {
            return Ok((
                false,
                "unchanged: all services are running and answering".into(),
            ));
        }
        // /run/zstack (pid and lock files) goes too if this run made it.
        self.mkdirs(&l.host(l.run_dir()), 0o755)?;
        self.undo.push(Undo::Stop(to_start.clone()));
        if init == InitSystem::Supervisor {
            rep.detail("systemd is not PID 1: zstack-ctl supervises the services");
        }
        zstack_ctl::lifecycle::start(&l, &props, &to_start, Duration::from_secs(90))?;
        for &s in &to_start {
            let h = zstack_ctl::lifecycle::check_health(&props, s).map_err(anyhow::Error::msg)?;
            if h.version != self.version.to_string() {
                bail!(
                    "{} answers as release {}, not {}",
                    s.name(),
                    h.version,
                    self.version
                );
            }
        }
        let names: Vec<_> = to_start.iter().map(|s| s.name()).collect();
        Ok((
            true,
            format!(
                "{} running and answering ({})",
                names.join(" and "),
                match init {
                    InitSystem::Systemd => "systemd",
                    InitSystem::Supervisor => "supervised by zstack-ctl; systemd is not PID 1 here",
                }
            ),
        ))
    }
}

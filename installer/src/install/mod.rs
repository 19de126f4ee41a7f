//! An install, an upgrade (`-u`) and a safe re-run of either, as [`install`] reads:
//!
//! 1. [`Target::of`]: what is installed where (sysroot, install root, release, the services:
//!    the management node and the host agent, or the agent alone with `--host-only`).
//! 2. [`recover_interrupted_run`]: a journal left by a run that was cut off is replayed first,
//!    under the lock, so everything after sees the host as it was before that run.
//! 3. [`make_plan`]: what is already installed (release, database schema) and what a run must
//!    refuse (a downgrade, an upgrade without `-u`, a foreign database), then preflight
//!    ([`crate::preflight`]: every check before any change, all failures together); the
//!    management IP, the init system and the steps ([`plan::steps`]). `--dry-run` prints the
//!    plan and stops here.
//! 4. [`lock_the_host`]: the installer lock; a second installer says which process holds it.
//! 5. [`begin_run`] and [`run_steps`]: the steps, one method each in [`steps`]:
//!    - `unpack`: the release into `<root>/versions/<version>/` through a staging directory,
//!      each file checked against the MANIFEST;
//!    - `backup`, `stop`, `migrate` (upgrade): a verified backup of the database, the
//!      management node stopped, the migrations applied through the ledger;
//!    - `config`: `/etc/zstack/zstack.properties` (0600, generated secrets; a re-run keeps every
//!      value and only adds keys that are missing; an upgrade applies the config steps of the
//!      releases in between);
//!    - `current`: the `current` symlink switched atomically; `links`: the commands in /usr/bin;
//!    - `pki` (1.2.0 on, management node): the cloud's CA, the node's and the local host's
//!      certificates, the node's SSH key ([`certificates`]);
//!    - `database` (install): the database created, or an existing one migrated;
//!    - `user` (1.2.0 and later): the system user `zstack` made, and the management node's files
//!      given to it (`zstack_common::server_files`: its data directory and database, its log,
//!      zstack.properties to read); each change journalled, so a failed run takes them back;
//!    - `units`: the systemd units rendered, installed and enabled; `cron`: the dump_mysql line;
//!    - `start`: the services started (systemd, or zstack-ctl's own supervisor) and answering.
//! 6. [`finish_run`]: the journal and the safety copies go; [`summary`] says what was done.
//!
//! Every change is recorded in an [`UndoLog`] first; a failure or Ctrl-C at any step replays it,
//! so the host is left as it was. `ZSTACK_FAILPOINT=<step>` (a test aid) makes the named step fail
//! after it has made its changes; `ZSTACK_FAILPOINT=<step>:pause` instead waits there (up to
//! 60 s) for a signal, so a test can interrupt a run at a known point.

mod certificates;
mod lock;
mod plan;
mod run;
mod steps;

pub use lock::InstallerLock;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use zstack_common::service::{InitSystem, Service};
use zstack_common::{Layout, Release};

use crate::binfmt::VerifiedBin;
use crate::options::Options;
use crate::preflight::{self, Preflight};
use crate::report::Reporter;
use crate::undo::UndoLog;

use lock::take_lock;
use plan::{existing_install_problems, existing_ip, print_plan};
use run::Run;

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
    /// The systemd units this run installed: zstack-kvmagent, and zstack-server unless
    /// `--host-only`.
    pub units: Vec<String>,
    pub services_started: bool,
    /// The admin password, only on the run that generated it.
    pub admin_password: Option<String>,
    pub changed: bool,
    pub steps: Vec<StepReport>,
    pub warnings: Vec<String>,
    pub elapsed_ms: u128,
}

/// Runs an install or an upgrade. On failure the host has been rolled back and the error says
/// what failed.
pub fn install(
    opts: &Options,
    bin: &VerifiedBin,
    rep: &mut Reporter,
    interrupted: &Arc<AtomicBool>,
) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let target = Target::of(opts, bin)?;
    let recovery_lock = recover_interrupted_run(opts, &target.layout, rep)?;
    let plan = make_plan(opts, bin, &target, rep)?;
    if opts.dry_run {
        print_plan(
            opts,
            &target.layout,
            &target.version,
            &target.services,
            &plan.management_ip,
            plan.init,
        );
        return Err(anyhow::Error::new(DryRunDone));
    }
    let _lock = match recovery_lock {
        Some(lock) => lock,
        None => lock_the_host(&target.layout)?,
    };
    announce(opts, bin, &target, &plan, rep);
    let mut run = begin_run(opts, bin, target, &plan)?;
    let reports = run_steps(&mut run, &plan, rep, interrupted)?;
    finish_run(&mut run);
    Ok(summary(opts, &run, plan, reports, started))
}

/// What is being installed, and where: nothing on the host is read or changed yet.
struct Target {
    layout: Layout,
    version: semver::Version,
    services: Vec<Service>,
}

impl Target {
    fn of(opts: &Options, bin: &VerifiedBin) -> anyhow::Result<Target> {
        // The sysroot is made absolute but not created: nothing may change before preflight passes.
        let sysroot =
            std::path::absolute(opts.sysroot.clone().unwrap_or_else(|| PathBuf::from("/")))
                .context("cannot resolve the sysroot path")?;
        Ok(Target {
            layout: Layout::new(&sysroot, &opts.install_root),
            version: semver::Version::parse(&bin.trailer.version).context("the .bin's version")?,
            services: if opts.host_only {
                vec![Service::KvmAgent]
            } else {
                vec![Service::Server, Service::KvmAgent]
            },
        })
    }
}

/// A run cut off before (a crash, kill -9) left its journal: puts back what it changed first,
/// under the lock (returned, to be kept for this run), so every check after sees the host as it
/// was before that run. A dry run only warns.
fn recover_interrupted_run(
    opts: &Options,
    layout: &Layout,
    rep: &mut Reporter,
) -> anyhow::Result<Option<InstallerLock>> {
    let journal = layout.host(layout.installer_journal());
    if !journal.exists() {
        return Ok(None);
    }
    if opts.dry_run {
        rep.warn(&format!(
            "an earlier installer run did not finish ({}); a real run will first put back what it changed",
            journal.display()
        ));
        return Ok(None);
    }
    let lock = take_lock(layout)?;
    if let Some(mut old) = UndoLog::load(&journal)? {
        rep.warn(&format!(
            "an earlier installer run ({}) did not finish; putting back what it changed",
            old.what
        ));
        let failures = old.rollback(layout);
        if !failures.is_empty() {
            bail!(
                "cannot put back what the interrupted run changed (journal {}):\n  {}",
                journal.display(),
                failures.join("\n  ")
            );
        }
        rep.info("the interrupted run was rolled back; the host is as it was before it");
    }
    Ok(Some(lock))
}

/// What this run will do, decided before anything changes: what is installed, preflight, the
/// management IP and init system, and the steps.
struct Plan {
    upgrade_from: Option<semver::Version>,
    findings: preflight::Findings,
    management_ip: String,
    init: InitSystem,
    steps: Vec<(&'static str, &'static str)>,
}

impl Plan {
    fn starts_services(&self) -> bool {
        self.steps.iter().any(|(id, _)| *id == "start")
    }
}

/// Reads what is already installed and runs preflight; every problem found is reported
/// together, and nothing is changed.
fn make_plan(
    opts: &Options,
    bin: &VerifiedBin,
    target: &Target,
    rep: &mut Reporter,
) -> anyhow::Result<Plan> {
    let layout = &target.layout;
    let mut problems = existing_install_problems(opts, layout, &target.version);
    let upgrade_from = if opts.upgrade {
        Release::current(layout).and_then(|r| r.semver().ok())
    } else {
        None
    };
    let db_size = std::fs::metadata(layout.host(layout.db_file()))
        .map(|m| m.len())
        .unwrap_or(0);
    let pre = Preflight {
        opts,
        layout,
        services: &target.services,
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
        Ok(_) => return Err(preflight_error(problems)),
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
        .or_else(|| existing_ip(layout))
        .or_else(preflight::default_route_ip)
        .unwrap_or_else(|| "127.0.0.1".to_string());
    rep.debug(&format!(
        "system: {}, management IP {management_ip}",
        findings.os_name
    ));
    let steps = plan::steps(
        upgrade_from.is_some(),
        target.services.contains(&Service::Server),
        zstack_common::server_files::runs_as_server_user(&target.version),
        !opts.no_start && !layout.is_sysroot(),
    );
    Ok(Plan {
        upgrade_from,
        findings,
        management_ip,
        init: InitSystem::detect(layout),
        steps,
    })
}

/// Takes the installer lock (under a sysroot, the sysroot is created first to hold it).
fn lock_the_host(layout: &Layout) -> anyhow::Result<InstallerLock> {
    if layout.is_sysroot() {
        std::fs::create_dir_all(layout.sysroot())
            .with_context(|| format!("cannot create the sysroot {}", layout.sysroot().display()))?;
    }
    take_lock(layout)
}

/// Opens the installer log and says what this run is.
fn announce(opts: &Options, bin: &VerifiedBin, target: &Target, plan: &Plan, rep: &mut Reporter) {
    let layout = &target.layout;
    if let Ok(log) =
        zstack_common::logfile::LogFile::open(&layout.host(layout.installer_log()), false)
    {
        rep.set_log(log);
    }
    rep.info(&format!(
        "{} {} {} ({}) on {}{}",
        match &plan.upgrade_from {
            Some(from) => format!("Upgrading from {from} to"),
            None => "Installing".to_string(),
        },
        bin.trailer.product,
        target.version,
        if opts.host_only {
            "host agent only"
        } else {
            "all-in-one"
        },
        plan.findings.os_name,
        if layout.is_sysroot() {
            format!(" into sysroot {}", layout.sysroot().display())
        } else {
            String::new()
        }
    ));
}

/// The run's state, with its undo journal started on disk.
fn begin_run<'a>(
    opts: &'a Options,
    bin: &'a VerifiedBin,
    target: Target,
    plan: &Plan,
) -> anyhow::Result<Run<'a>> {
    let journal = target.layout.host(target.layout.installer_journal());
    let what = match &plan.upgrade_from {
        Some(from) => format!("upgrade from {from} to {}", bin.trailer.version),
        None => format!("install of {}", bin.trailer.version),
    };
    Ok(Run {
        opts,
        layout: target.layout,
        bin,
        version: target.version,
        services: target.services,
        undo: UndoLog::on_disk(journal, what)?,
        management_ip: plan.management_ip.clone(),
        admin_password: None,
        props: None,
        templates: None,
        discard_on_success: Vec::new(),
        upgrade_from: plan.upgrade_from.clone(),
        backup: None,
    })
}

/// Runs the plan's steps in order; a failure, a failpoint or a signal rolls back everything the
/// run changed, and the error names the step.
fn run_steps(
    run: &mut Run,
    plan: &Plan,
    rep: &mut Reporter,
    interrupted: &AtomicBool,
) -> anyhow::Result<Vec<StepReport>> {
    let total = plan.steps.len();
    let mut reports = Vec::new();
    for (i, &(id, title)) in plan.steps.iter().enumerate() {
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
    Ok(reports)
}

/// Every step succeeded: the journal goes, and so do the safety copies (and, after an upgrade,
/// release trees older than the one upgraded from).
fn finish_run(run: &mut Run) {
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
}

/// What the run did and where everything is, for the operator.
fn summary(
    opts: &Options,
    run: &Run,
    plan: Plan,
    reports: Vec<StepReport>,
    started: Instant,
) -> Summary {
    let services_started = plan.starts_services();
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
    Summary {
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
        init: plan.init,
        units: run.services.iter().map(|s| s.name().to_string()).collect(),
        services_started,
        admin_password: run.admin_password.clone(),
        changed,
        steps: reports,
        warnings: plan.findings.warnings,
        elapsed_ms: started.elapsed().as_millis(),
    }
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

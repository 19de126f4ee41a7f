//! What a run will do: the steps of an install and of an upgrade, what is already on the host
//! that a run must refuse, and the plan a dry run prints.

use std::path::Path;

use zstack_common::service::{keys, InitSystem, Service};
use zstack_common::{Layout, Properties, Release};

use crate::options::Options;

/// The steps of an upgrade (`-u`), in order.
const UPGRADE_STEPS: &[(&str, &str)] = &[
    ("unpack", "Unpack the new release"),
    ("backup", "Back up the database (verified)"),
    ("stop", "Stop the management node"),
    ("migrate", "Migrate the database"),
    ("config", "Migrate zstack.properties"),
    ("pki", "Make or keep the cloud's certificates"),
    ("current", "Switch `current`"),
    ("links", "Link the commands into /usr/bin"),
    (
        "user",
        "Give the management node's files to the user zstack",
    ),
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
    ("pki", "Make the cloud's certificates"),
    ("database", "Create the database"),
    (
        "user",
        "Create the user zstack and give it the management node's files",
    ),
    ("units", "Install the systemd units"),
    ("cron", "Install the backup crontab line"),
    ("start", "Start the services"),
];

/// The steps this run takes, in order: an upgrade's or an install's; the database, backup and
/// crontab steps only where the management node is installed (`user` only where it runs as the
/// user zstack: 1.2.0 and later); `start` unless told not to start.
pub(super) fn steps(
    upgrade: bool,
    server: bool,
    server_user: bool,
    start: bool,
) -> Vec<(&'static str, &'static str)> {
    let all = if upgrade { UPGRADE_STEPS } else { STEPS };
    all.iter()
        .copied()
        .filter(|(id, _)| match *id {
            "backup" | "stop" | "migrate" | "database" | "cron" => server,
            "user" => server && server_user,
            "start" => start,
            _ => true,
        })
        .collect()
}

pub(super) fn existing_install_problems(
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
pub(super) fn db_schema_version(db: &Path) -> anyhow::Result<Option<semver::Version>> {
    let conn = zstack_db::open_read_only(db)?;
    Ok(zstack_db::ledger_version(&conn, db)?)
}

pub(super) fn existing_ip(layout: &Layout) -> Option<String> {
    Properties::load(&layout.host(layout.properties_file()))
        .ok()?
        .get(keys::MANAGEMENT_IP)
        .map(str::to_string)
}

pub(super) fn print_plan(
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

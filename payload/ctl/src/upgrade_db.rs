//! `zstack-ctl upgrade_db [--dry-run] [--force] [--no-backup]`: brings the database to the schema
//! of the installed release, as the original's command did.
//!
//! 1. Refuse while the management node runs (it holds the schema it started with), unless
//!    `--force`, as the original's "bypass management nodes status check".
//! 2. Check the ledger against the shipped migrations (changed, unknown or missing ones refused).
//! 3. `--dry-run`: list the pending migrations and stop.
//! 4. Back the DB up with dump_mysql's code and its verification (skipped with `--no-backup`);
//!    a failed backup aborts before any change.
//! 5. Apply the pending migrations in (version, name) order, each in its own transaction.

use std::path::PathBuf;

use anyhow::{bail, Context};
use serde::Serialize;
use zstack_common::service::{InitSystem, Service};
use zstack_common::{Layout, Release};

use crate::{backup, lifecycle};

pub const BACKUP_NAME: &str = "zstack-db-before-upgrade";

#[derive(Debug, Serialize)]
pub struct UpgradeDbReport {
    pub from: Option<String>,
    pub to: String,
    pub pending: Vec<String>,
    pub applied: bool,
    pub backup: Option<PathBuf>,
}

pub fn upgrade_db(
    layout: &Layout,
    dry_run: bool,
    force: bool,
    no_backup: bool,
) -> anyhow::Result<UpgradeDbReport> {
    let release = Release::current(layout).context("no ZStack release is installed here")?;
    let target = release.semver()?;
    let db = layout.host(layout.db_file());
    if !db.exists() {
        bail!(
            "the database {} does not exist; install ZStack first",
            db.display()
        );
    }
    let init = InitSystem::detect(layout);
    if !dry_run
        && !force
        && !layout.is_sysroot()
        && lifecycle::service_pid(layout, init, Service::Server).is_some()
    {
        bail!("the management node is running; stop it first (zstack-ctl stop --service zstack-server), or use --force");
    }
    let shipped =
        zstack_db::load_migrations(&layout.host(layout.current_link().join("migrations")))?;
    // A dry run reads only; the real run opens the DB for writing.
    let conn = if dry_run {
        zstack_db::open_read_only(&db)?
    } else {
        zstack_db::open_existing(&db)?
    };
    let ledger = zstack_db::MigrationLedger::new(&conn, &db)?;
    ledger.verify(&shipped)?;
    let from = ledger.schema_version()?.map(|v| v.to_string());
    let pending: Vec<String> = ledger
        .pending(&shipped, &target)?
        .iter()
        .map(|m| m.file.clone())
        .collect();
    let mut report = UpgradeDbReport {
        from,
        to: target.to_string(),
        pending,
        applied: false,
        backup: None,
    };
    if dry_run || report.pending.is_empty() {
        return Ok(report);
    }
    if !no_backup {
        let dump = backup::dump(layout, BACKUP_NAME, 10)
            .context("the backup before the upgrade failed; nothing was changed")?;
        report.backup = Some(dump.file);
    }
    ledger.migrate(&shipped, &target)?;
    report.applied = true;
    Ok(report)
}

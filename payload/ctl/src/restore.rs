//! `zstack-ctl restore_mysql --from-file FILE`.
//!
//! 1. Verify the file (as a dump does: sha256, opens, integrity_check) before touching anything.
//! 2. Refuse a backup whose schema is newer than the installed release.
//! 3. Back up the current DB and configuration (`zstack-before-restore-*`), so a restore can itself
//!    be undone.
//! 4. Stop the management node; move the current DB aside; put the backup's DB in place (stale
//!    -wal/-shm files removed) and its zstack.properties; migrate the DB if it is older.
//! 5. Start the management node again if it was running. On a failure in step 4 the DB and the
//!    configuration are put back as they were.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Serialize;
use zstack_common::service::{InitSystem, Service};
use zstack_common::{Layout, Properties, Release};

use crate::backup::{self, BackupMeta};
use crate::lifecycle;

#[derive(Debug, Serialize)]
pub struct RestoreReport {
    pub from: PathBuf,
    pub meta: BackupMeta,
    pub safety_backup: Option<PathBuf>,
    pub migrated_from: Option<String>,
    pub restarted: bool,
}

pub const SAFETY_BACKUP_NAME: &str = "zstack-before-restore";

pub fn restore(layout: &Layout, from: &Path) -> anyhow::Result<RestoreReport> {
    let release = Release::current(layout)
        .context("no ZStack release is installed here; install one before restoring")?;
    let release_version = release.semver()?;
    let backup_dir = layout.host(layout.backup_dir());
    std::fs::create_dir_all(&backup_dir)
        .with_context(|| format!("cannot create {}", backup_dir.display()))?;
    let scratch = backup::Scratch::dir_in(&backup_dir, &format!(".restore-{}", std::process::id()))
        .with_context(|| {
            format!(
                "cannot create a scratch directory in {}",
                backup_dir.display()
            )
        })?;

    // 1 + 2.
    let verified = backup::verify_file(from, scratch.path())?;
    if let Some(v) = &verified.meta.schema_version {
        let v = semver::Version::parse(v).with_context(|| format!("backup schema version {v}"))?;
        if v > release_version {
            bail!(
                "{} holds a database of schema {v}, newer than the installed release {release_version}; \
                 install ZStack {v} or later to restore it",
                from.display()
            );
        }
    } else {
        bail!(
            "{} holds a database without a migration ledger: not a ZStack database",
            from.display()
        );
    }
    let shipped =
        zstack_db::load_migrations(&layout.host(layout.current_link().join("migrations")))?;
    {
        let conn = rusqlite::Connection::open(&verified.db)?;
        let ledger = zstack_db::MigrationLedger::new(&conn, &verified.db)?;
        ledger
            .verify(&shipped)
            .context("the backup's migration ledger does not match this release")?;
    }

    // 3.
    let db = layout.host(layout.db_file());
    let safety_backup = if db.exists() {
        Some(
            backup::dump(layout, SAFETY_BACKUP_NAME, 10)
                .context("cannot back up the current database first")?
                .file,
        )
    } else {
        None
    };

    // 4.
    let init = InitSystem::detect(layout);
    let was_running =
        !layout.is_sysroot() && lifecycle::service_pid(layout, init, Service::Server).is_some();
    if was_running {
        lifecycle::stop(layout, &[Service::Server], lifecycle::STOP_TIMEOUT)?;
    }
    let aside = PathBuf::from(format!("{}.before-restore", db.display()));
    let props_path = layout.host(layout.properties_file());
    let old_props = zstack_common::fsutil::read_optional(&props_path)?;
    let result = (|| -> anyhow::Result<Option<String>> {
        if db.exists() {
            // The old DB's WAL belongs to it: checkpoint it in, then move the DB aside.
            if let Ok(conn) = rusqlite::Connection::open(&db) {
                let _ = conn.pragma_update(None, "wal_checkpoint", "TRUNCATE");
            }
            std::fs::rename(&db, &aside)?;
        }
        backup::install_db(&verified.db, &db)?;
        if let Some(p) = &verified.properties {
            let text = std::fs::read_to_string(p)?;
            Properties::parse(&text, "the backup's zstack.properties")?;
            zstack_common::fsutil::atomic_write(&props_path, text.as_bytes(), 0o600)?;
        }
        let conn = zstack_db::open_existing(&db)?;
        let ledger = zstack_db::MigrationLedger::new(&conn, &db)?;
        let before = ledger.schema_version()?;
        let applied = ledger.migrate(&shipped, &release_version)?;
        Ok((!applied.is_empty()).then(|| before.map(|v| v.to_string()).unwrap_or_default()))
    })();
    let migrated_from = match result {
        Ok(m) => {
            let _ = std::fs::remove_file(&aside);
            m
        }
        Err(e) => {
            // Put everything back as it was.
            for suffix in ["-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
            }
            if aside.exists() {
                let _ = std::fs::rename(&aside, &db);
            }
            if let Some(old) = old_props {
                let _ = zstack_common::fsutil::atomic_write(&props_path, &old, 0o600);
            }
            if was_running {
                let _ = start_server(layout);
            }
            return Err(
                e.context("restore failed; the previous database and configuration were put back")
            );
        }
    };

    // 5.
    if was_running {
        start_server(layout)?;
    }
    Ok(RestoreReport {
        from: from.to_path_buf(),
        meta: verified.meta,
        safety_backup,
        migrated_from,
        restarted: was_running,
    })
}

fn start_server(layout: &Layout) -> anyhow::Result<()> {
    let props = Properties::load(&layout.host(layout.properties_file()))?;
    lifecycle::start(layout, &props, &[Service::Server], lifecycle::START_TIMEOUT)?;
    Ok(())
}

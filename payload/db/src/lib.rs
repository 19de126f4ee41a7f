//! The management node's database: SQLite in WAL mode at `/var/lib/zstack/zstack.db`, and the
//! [`MigrationLedger`] that moves its schema from release to release.
//!
//! Migrations ship in every release tree as `migrations/V<semver>__<what>.sql`. They are applied
//! in ascending semver order, each in its own transaction together with its ledger row, so a
//! migration is either wholly applied and recorded or not at all. The ledger keeps the sha256 of
//! each applied file; a DB whose applied migrations differ from the shipped ones (changed,
//! missing, or unknown to this release) is refused, never "repaired" by guesswork.

// DbError carries the migration's version and name for its message; it is returned on cold
// paths only (opening, migrating), where its size costs nothing.
#![allow(clippy::result_large_err)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use semver::Version;
use sha2::{Digest, Sha256};

/// Name of the ledger table.
pub const LEDGER_TABLE: &str = "schema_migrations";

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database {path}: {source}")]
    Sqlite {
        path: String,
        source: rusqlite::Error,
    },
    #[error("cannot read migrations from {path}: {source}")]
    ReadMigrations {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("migration file {file} is not named V<x.y.z>__<what>.sql")]
    BadMigrationName { file: String },
    #[error("two migration files share version and name: {a} and {b}")]
    Duplicate { a: String, b: String },
    #[error(
        "migration {version} ({name}) was changed after it was applied to this database \
         (sha256 {applied} in the ledger, {shipped} shipped); restore the shipped file or the DB from a backup"
    )]
    ChangedMigration {
        version: Version,
        name: String,
        applied: String,
        shipped: String,
    },
    #[error(
        "the database has migration {version} ({name}) that this release does not know: \
         it was made by a newer release; install that release or restore an older backup"
    )]
    UnknownMigration { version: Version, name: String },
    #[error(
        "migration {version} ({name}) is missing from the database although later ones are applied; \
         the DB was not made by ZStack's installer or was edited by hand"
    )]
    MissingMigration { version: Version, name: String },
    #[error("migration {version} ({name}) failed: {source}")]
    MigrationFailed {
        version: Version,
        name: String,
        source: rusqlite::Error,
    },
}

fn sqlite_err(path: &Path) -> impl FnOnce(rusqlite::Error) -> DbError + '_ {
    move |source| DbError::Sqlite {
        path: path.display().to_string(),
        source,
    }
}

/// Opens (creating if needed) the database at `path` in WAL mode with a busy timeout, so the
/// management node, `zstack-ctl` and the installer can share it.
pub fn open(path: &Path) -> Result<Connection, DbError> {
    let conn = Connection::open(path).map_err(sqlite_err(path))?;
    configure(&conn, path)?;
    Ok(conn)
}

/// Opens an existing database, failing if it is absent.
pub fn open_existing(path: &Path) -> Result<Connection, DbError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite_err(path))?;
    configure(&conn, path)?;
    Ok(conn)
}

/// Opens an existing database for reading without changing anything on disk: not its journal
/// mode, and no -wal/-shm files. A read-only open of a WAL database normally creates those, so
/// when they are absent (no writer has it open) the file is opened as immutable.
pub fn open_read_only(path: &Path) -> Result<Connection, DbError> {
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    let uri = if wal.exists() {
        format!("file:{}?mode=ro", path.display())
    } else {
        format!("file:{}?immutable=1", path.display())
    };
    Connection::open_with_flags(
        uri,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(sqlite_err(path))
}

/// The highest migration in the ledger of `conn`'s database; `None` when it has no ledger
/// (not a ZStack database) or an empty one. Reads only.
pub fn ledger_version(conn: &Connection, path: &Path) -> Result<Option<Version>, DbError> {
    let has: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [LEDGER_TABLE],
            |r| r.get(0),
        )
        .map_err(sqlite_err(path))?;
    if has == 0 {
        return Ok(None);
    }
    let mut stmt = conn
        .prepare(&format!("SELECT version FROM {LEDGER_TABLE}"))
        .map_err(sqlite_err(path))?;
    let versions = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(sqlite_err(path))?
        .filter_map(|v| v.ok().and_then(|v| Version::parse(&v).ok()))
        .max();
    Ok(versions)
}

fn configure(conn: &Connection, path: &Path) -> Result<(), DbError> {
    conn.busy_timeout(Duration::from_secs(30))
        .map_err(sqlite_err(path))?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(sqlite_err(path))?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(sqlite_err(path))?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(sqlite_err(path))?;
    Ok(())
}

/// One shipped migration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    pub version: Version,
    pub name: String,
    pub file: String,
    pub sql: String,
    pub checksum: String,
}

impl Migration {
    /// Parses `V1.2.0__cache_mode_names.sql` into (1.2.0, "cache_mode_names").
    pub fn parse_file_name(file: &str) -> Option<(Version, String)> {
        let stem = file.strip_prefix('V')?.strip_suffix(".sql")?;
        let (ver, name) = stem.split_once("__")?;
        if name.is_empty() {
            return None;
        }
        Some((Version::parse(ver).ok()?, name.to_string()))
    }

    pub fn new(file: &str, sql: String) -> Result<Migration, DbError> {
        let (version, name) =
            Self::parse_file_name(file).ok_or_else(|| DbError::BadMigrationName {
                file: file.to_string(),
            })?;
        let checksum = hex::encode(Sha256::digest(sql.as_bytes()));
        Ok(Migration {
            version,
            name,
            file: file.to_string(),
            sql,
            checksum,
        })
    }

    fn key(&self) -> (&Version, &str) {
        (&self.version, &self.name)
    }
}

/// Reads every `V*.sql` in `dir`, sorted by version.
pub fn load_migrations(dir: &Path) -> Result<Vec<Migration>, DbError> {
    let read_err = |source| DbError::ReadMigrations {
        path: dir.to_path_buf(),
        source,
    };
    let mut out: Vec<Migration> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let file = entry.file_name().to_string_lossy().into_owned();
        if !file.ends_with(".sql") {
            continue;
        }
        let sql = std::fs::read_to_string(entry.path()).map_err(read_err)?;
        out.push(Migration::new(&file, sql)?);
    }
    sort_and_check(out)
}

/// Migrations run in (version, name) order; a release may carry several, named `01_x`, `02_y`.
fn sort_and_check(mut out: Vec<Migration>) -> Result<Vec<Migration>, DbError> {
    out.sort_by(|a, b| a.key().cmp(&b.key()));
    for w in out.windows(2) {
        if w[0].key() == w[1].key() {
            return Err(DbError::Duplicate {
                a: w[0].file.clone(),
                b: w[1].file.clone(),
            });
        }
    }
    Ok(out)
}

/// A row of the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub version: Version,
    pub name: String,
    pub checksum: String,
    pub applied_at: String,
}

/// The record of which migrations a database has had, and the code that applies the rest.
pub struct MigrationLedger<'c> {
    conn: &'c Connection,
    path: PathBuf,
}

impl<'c> MigrationLedger<'c> {
    /// Opens the ledger of `conn`, creating its table if the DB is new.
    pub fn new(conn: &'c Connection, path: &Path) -> Result<Self, DbError> {
        conn.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {LEDGER_TABLE} (
                version     TEXT NOT NULL,
                name        TEXT NOT NULL,
                checksum    TEXT NOT NULL,
                applied_at  TEXT NOT NULL,
                duration_ms INTEGER NOT NULL,
                PRIMARY KEY (version, name)
            );"
        ))
        .map_err(sqlite_err(path))?;
        Ok(MigrationLedger {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// Every applied migration, by version.
    pub fn applied(&self) -> Result<Vec<Applied>, DbError> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT version, name, checksum, applied_at FROM {LEDGER_TABLE}"
            ))
            .map_err(sqlite_err(&self.path))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .map_err(sqlite_err(&self.path))?;
        let mut out = Vec::new();
        for row in rows {
            let (v, name, checksum, applied_at) = row.map_err(sqlite_err(&self.path))?;
            let version = Version::parse(&v).map_err(|_| DbError::UnknownMigration {
                version: Version::new(0, 0, 0),
                name: format!("{v} {name}"),
            })?;
            out.push(Applied {
                version,
                name,
                checksum,
                applied_at,
            });
        }
        out.sort_by(|a, b| (&a.version, &a.name).cmp(&(&b.version, &b.name)));
        Ok(out)
    }

    /// The schema version: the highest applied migration, if any.
    pub fn schema_version(&self) -> Result<Option<Version>, DbError> {
        Ok(self.applied()?.last().map(|a| a.version.clone()))
    }

    /// Checks the ledger against the shipped migrations: every applied one must be shipped with
    /// the same checksum, and no shipped one may be skipped below the highest applied.
    pub fn verify(&self, shipped: &[Migration]) -> Result<(), DbError> {
        let applied = self.applied()?;
        for a in &applied {
            match shipped
                .iter()
                .find(|m| m.version == a.version && m.name == a.name)
            {
                None => {
                    return Err(DbError::UnknownMigration {
                        version: a.version.clone(),
                        name: a.name.clone(),
                    })
                }
                Some(m) if m.checksum != a.checksum => {
                    return Err(DbError::ChangedMigration {
                        version: a.version.clone(),
                        name: m.file.clone(),
                        applied: a.checksum.clone(),
                        shipped: m.checksum.clone(),
                    })
                }
                Some(_) => {}
            }
        }
        if let Some(top) = applied.last() {
            let below_top = |m: &&Migration| m.key() < (&top.version, top.name.as_str());
            for m in shipped.iter().filter(below_top) {
                if !applied
                    .iter()
                    .any(|a| a.version == m.version && a.name == m.name)
                {
                    return Err(DbError::MissingMigration {
                        version: m.version.clone(),
                        name: m.name.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The shipped migrations not yet applied, up to and including `target`.
    pub fn pending<'m>(
        &self,
        shipped: &'m [Migration],
        target: &Version,
    ) -> Result<Vec<&'m Migration>, DbError> {
        let applied = self.applied()?;
        Ok(shipped
            .iter()
            .filter(|m| {
                &m.version <= target
                    && !applied
                        .iter()
                        .any(|a| a.version == m.version && a.name == m.name)
            })
            .collect())
    }

    /// Applies one migration and records it, in one transaction.
    pub fn apply(&self, m: &Migration) -> Result<(), DbError> {
        let started = std::time::Instant::now();
        let failed = |source| DbError::MigrationFailed {
            version: m.version.clone(),
            name: m.name.clone(),
            source,
        };
        self.conn.execute_batch("BEGIN IMMEDIATE").map_err(failed)?;
        let result = self.conn.execute_batch(&m.sql).and_then(|()| {
            self.conn.execute(
                &format!(
                    "INSERT INTO {LEDGER_TABLE} (version, name, checksum, applied_at, duration_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5)"
                ),
                rusqlite::params![
                    m.version.to_string(),
                    m.name,
                    m.checksum,
                    chrono::Utc::now().to_rfc3339(),
                    started.elapsed().as_millis() as i64
                ],
            )
        });
        match result {
            Ok(_) => self.conn.execute_batch("COMMIT").map_err(failed),
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(failed(e))
            }
        }
    }

    /// Verifies the ledger, then applies every pending migration up to `target`, in order.
    /// Returns the ones applied.
    pub fn migrate<'m>(
        &self,
        shipped: &'m [Migration],
        target: &Version,
    ) -> Result<Vec<&'m Migration>, DbError> {
        self.verify(shipped)?;
        let pending = self.pending(shipped, target)?;
        for m in &pending {
            self.apply(m)?;
        }
        Ok(pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> Vec<Migration> {
        sort_and_check(vec![
            Migration::new("V1.1.0__b.sql", "CREATE TABLE b (x INTEGER);".into()).unwrap(),
            Migration::new("V1.0.0__a.sql", "CREATE TABLE a (x INTEGER);".into()).unwrap(),
            Migration::new("V1.2.0__c.sql", "ALTER TABLE a ADD COLUMN y TEXT;".into()).unwrap(),
        ])
        .unwrap()
    }

    #[test]
    fn file_names() {
        assert_eq!(
            Migration::parse_file_name("V1.2.0__cache_mode.sql"),
            Some((Version::new(1, 2, 0), "cache_mode".into()))
        );
        assert_eq!(Migration::parse_file_name("V1.2__x.sql"), None);
        assert_eq!(Migration::parse_file_name("V1.2.0__.sql"), None);
        assert_eq!(Migration::parse_file_name("1.2.0__x.sql"), None);
    }

    #[test]
    fn migrates_in_order_up_to_target_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("z.db");
        let conn = open(&path).unwrap();
        let ledger = MigrationLedger::new(&conn, &path).unwrap();
        let s = shipped();
        let applied = ledger.migrate(&s, &Version::new(1, 1, 0)).unwrap();
        assert_eq!(applied.len(), 2);
        assert_eq!(
            ledger.schema_version().unwrap(),
            Some(Version::new(1, 1, 0))
        );
        let applied = ledger.migrate(&s, &Version::new(1, 2, 0)).unwrap();
        assert_eq!(applied.len(), 1);
        assert!(ledger
            .migrate(&s, &Version::new(1, 2, 0))
            .unwrap()
            .is_empty());
        conn.execute("INSERT INTO a (x, y) VALUES (1, 'z')", [])
            .unwrap();
    }

    #[test]
    fn refuses_a_changed_an_unknown_and_a_missing_migration() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("z.db");
        let conn = open(&path).unwrap();
        let ledger = MigrationLedger::new(&conn, &path).unwrap();
        let s = shipped();
        ledger.migrate(&s, &Version::new(1, 2, 0)).unwrap();

        let mut changed = s.clone();
        changed[1] = Migration::new("V1.1.0__b.sql", "CREATE TABLE b (x TEXT);".into()).unwrap();
        let e = ledger.verify(&changed).unwrap_err();
        assert!(matches!(e, DbError::ChangedMigration { .. }), "{e}");
        assert!(e.to_string().contains("V1.1.0__b.sql"), "{e}");

        let older = s[..2].to_vec();
        assert!(matches!(
            ledger.verify(&older).unwrap_err(),
            DbError::UnknownMigration { .. }
        ));

        conn.execute("DELETE FROM schema_migrations WHERE version = '1.0.0'", [])
            .unwrap();
        assert!(matches!(
            ledger.verify(&s).unwrap_err(),
            DbError::MissingMigration { .. }
        ));
    }

    #[test]
    fn a_failing_migration_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("z.db");
        let conn = open(&path).unwrap();
        let ledger = MigrationLedger::new(&conn, &path).unwrap();
        let bad = vec![Migration::new(
            "V1.0.0__bad.sql",
            "CREATE TABLE t (x INTEGER); INSERT INTO nope VALUES (1);".into(),
        )
        .unwrap()];
        assert!(ledger.migrate(&bad, &Version::new(1, 0, 0)).is_err());
        assert_eq!(ledger.schema_version().unwrap(), None);
        let n: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 't'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 0);
    }
}

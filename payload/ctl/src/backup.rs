//! `zstack-ctl dump_mysql` and `restore_mysql`: database backups that can be trusted.
//!
//! The name stays for compatibility with the original's cron line; the database is SQLite.
//!
//! A dump, step by step:
//! 1. Refuse clearly when the DB is missing, the file name or keep-amount is bad, or the backup
//!    directory cannot be written.
//! 2. Take the dump lock (`.dump_mysql.lock` in the backup directory): a cron run and a person's
//!    run at the same moment are serialised, never interleaved.
//! 3. Copy the live DB with SQLite's online backup API in one step: a consistent snapshot taken
//!    under a read transaction, while the management node keeps writing (WAL mode).
//! 4. Pack the snapshot, `zstack.properties` and a `backup.json` describing both into a
//!    zstd-compressed tar, written to a hidden `.partial` name in the same directory.
//! 5. Verify it: unpack the DB from the archive into a scratch directory, check its sha256,
//!    open it, and run `PRAGMA integrity_check`.
//! 6. Only then rename it to `<file-name>-YYYY-MM-DD_HH-MM-SS.zst`, and only then rotate: keep the
//!    newest `--keep-amount` backups with that file name; nothing else in the directory is touched.
//!
//! Any failure (including a full disk) removes the partial file and scratch directory: no partial
//! backup is ever left, and earlier backups are untouched. Restore reads `.zst` and `.gz` backups.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use chrono::{Local, NaiveDateTime};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zstack_common::{Layout, Release};

pub const DEFAULT_FILE_NAME: &str = "zstack-backup-db";
pub const DEFAULT_KEEP_AMOUNT: usize = 60;
const TIME_FORMAT: &str = "%Y-%m-%d_%H-%M-%S";
const META_ENTRY: &str = "backup.json";
const DB_ENTRY: &str = "zstack.db";
const PROPERTIES_ENTRY: &str = "zstack.properties";

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("the database {0} does not exist: nothing to back up (is ZStack installed here?)")]
    NoDatabase(PathBuf),
    #[error("--file-name {0:?} is not valid: use letters, digits, '.', '_' and '-' only, not starting with '.'")]
    BadFileName(String),
    #[error("--keep-amount must be at least 1 (the new backup is always kept)")]
    BadKeepAmount,
    #[error("cannot write to the backup directory {dir}: {source}; check its permissions and the filesystem")]
    NotWritable { dir: PathBuf, source: io::Error },
    #[error("no space left in {dir} while writing the backup; nothing was written and earlier backups are intact; free some space and run again")]
    DiskFull { dir: PathBuf },
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    #[error("database error while {context}: {source}")]
    Sqlite {
        context: String,
        source: rusqlite::Error,
    },
    #[error("{path} is not a valid ZStack backup: {why}")]
    Invalid { path: PathBuf, why: String },
}

type Result<T> = std::result::Result<T, BackupError>;

fn io_ctx(context: impl Into<String>) -> impl FnOnce(io::Error) -> BackupError {
    let context = context.into();
    move |source| BackupError::Io { context, source }
}

fn sql_ctx(context: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> BackupError {
    let context = context.into();
    move |source| BackupError::Sqlite { context, source }
}

/// What a backup says about itself (`backup.json` inside it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackupMeta {
    pub product: String,
    /// Release installed when the backup was made.
    pub release: Option<String>,
    /// Highest migration in the DB's ledger.
    pub schema_version: Option<String>,
    pub created: String,
    pub db_size: u64,
    pub db_sha256: String,
    pub has_properties: bool,
}

/// The result of a dump.
#[derive(Debug, Clone, Serialize)]
pub struct DumpReport {
    pub file: PathBuf,
    pub size: u64,
    pub meta: BackupMeta,
    pub removed: Vec<PathBuf>,
    pub kept: usize,
}

/// One of our backups in the directory, found by its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupFile {
    pub path: PathBuf,
    pub taken: NaiveDateTime,
}

fn valid_file_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The time stamp of `file` if it is `<name>-YYYY-MM-DD_HH-MM-SS.(zst|gz)`.
pub fn parse_backup_name(name: &str, file: &str) -> Option<NaiveDateTime> {
    let rest = file.strip_prefix(name)?.strip_prefix('-')?;
    let stamp = rest
        .strip_suffix(".zst")
        .or_else(|| rest.strip_suffix(".gz"))?;
    if stamp.len() != 19 {
        return None;
    }
    NaiveDateTime::parse_from_str(stamp, TIME_FORMAT).ok()
}

/// Our backups named `name` in `dir`, newest first.
pub fn list_backups(dir: &Path, name: &str) -> Result<Vec<BackupFile>> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_ctx(format!("cannot list {}", dir.display()))(e)),
    };
    for entry in rd {
        let entry = entry.map_err(io_ctx(format!("cannot list {}", dir.display())))?;
        let file = entry.file_name().to_string_lossy().into_owned();
        if let Some(taken) = parse_backup_name(name, &file) {
            if entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
                out.push(BackupFile {
                    path: entry.path(),
                    taken,
                });
            }
        }
    }
    out.sort_by(|a, b| b.taken.cmp(&a.taken).then(b.path.cmp(&a.path)));
    Ok(out)
}

/// The newest backup of any name made by dump_mysql in `dir`.
pub fn latest_backup(dir: &Path) -> Option<BackupFile> {
    let rd = fs::read_dir(dir).ok()?;
    rd.flatten()
        .filter_map(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            let stem = file
                .strip_suffix(".zst")
                .or_else(|| file.strip_suffix(".gz"))?;
            let (name, stamp) = stem.split_at(stem.len().checked_sub(20)?);
            let taken =
                NaiveDateTime::parse_from_str(stamp.strip_prefix('-')?, TIME_FORMAT).ok()?;
            // Names have whole seconds; the file's mtime orders two backups of one second.
            let mtime = e.metadata().and_then(|m| m.modified()).ok();
            (!name.is_empty()).then(|| {
                (
                    taken,
                    mtime,
                    BackupFile {
                        path: e.path(),
                        taken,
                    },
                )
            })
        })
        .max_by_key(|(taken, mtime, _)| (*taken, *mtime))
        .map(|(_, _, b)| b)
}

fn is_enospc(e: &io::Error) -> bool {
    e.raw_os_error() == Some(nix::libc::ENOSPC) || e.raw_os_error() == Some(nix::libc::EDQUOT)
}

/// Removes what it guards when dropped: partial files and scratch directories. Dump, restore
/// and the installer's rollback all work through one.
pub struct Scratch(Vec<PathBuf>);

impl Scratch {
    /// A new, empty directory `parent/name`, removed on drop.
    pub fn dir_in(parent: &Path, name: &str) -> io::Result<Scratch> {
        let p = parent.join(name);
        let _ = fs::remove_dir_all(&p);
        fs::create_dir(&p)?;
        Ok(Scratch(vec![p]))
    }

    /// The directory (or first path) it guards.
    pub fn path(&self) -> &Path {
        &self.0[0]
    }

    /// Guards `p` too.
    pub fn guard(&mut self, p: PathBuf) {
        self.0.push(p);
    }

    /// Stops guarding `p`: it is kept.
    pub fn keep(&mut self, p: &Path) {
        self.0.retain(|x| x != p);
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = if p.is_dir() {
                fs::remove_dir_all(p)
            } else {
                fs::remove_file(p)
            };
        }
    }
}

/// Puts the database file `from` in place at `db`: stale `-wal`/`-shm` files of the DB it
/// replaces are removed first (they would be replayed into the new file), and the new file is
/// copied beside `db` with mode 0600 and renamed over it, so `db` is never half-written.
pub fn install_db(from: &Path, db: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for suffix in ["-wal", "-shm"] {
        let _ = fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let staged = PathBuf::from(format!("{}.restoring", db.display()));
    fs::copy(from, &staged)?;
    fs::set_permissions(&staged, fs::Permissions::from_mode(0o600))?;
    fs::rename(&staged, db)
}

/// `zstack-ctl dump_mysql`.
pub fn dump(layout: &Layout, file_name: &str, keep_amount: usize) -> Result<DumpReport> {
    if !valid_file_name(file_name) {
        return Err(BackupError::BadFileName(file_name.to_string()));
    }
    if keep_amount == 0 {
        return Err(BackupError::BadKeepAmount);
    }
    let db = layout.host(layout.db_file());
    if !db.is_file() {
        return Err(BackupError::NoDatabase(db));
    }
    let dir = layout.host(layout.backup_dir());
    ensure_writable_dir(&dir)?;
    let _lock = lock_dir(&dir)?;

    // A name per second; a second dump within the same second waits for the next one.
    let (stamp, final_path) = loop {
        let stamp = Local::now().format(TIME_FORMAT).to_string();
        let p = dir.join(format!("{file_name}-{stamp}.zst"));
        if !p.exists() {
            break (stamp, p);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let partial = dir.join(format!(".{file_name}-{stamp}.zst.partial"));
    let full = |e: io::Error, what: &str| {
        if is_enospc(&e) {
            BackupError::DiskFull { dir: dir.clone() }
        } else {
            BackupError::Io {
                context: what.to_string(),
                source: e,
            }
        }
    };
    let mut scratch = Scratch::dir_in(&dir, &format!(".dump-{}-{stamp}", std::process::id()))
        .map_err(|e| full(e, "cannot create a scratch directory"))?;
    scratch.guard(partial.clone());
    let scratch_dir = scratch.path().to_path_buf();

    // 3. Consistent snapshot through the online backup API, in one step.
    let snapshot = scratch_dir.join(DB_ENTRY);
    online_copy(&db, &snapshot).map_err(|e| match e {
        BackupError::Sqlite {
            source: rusqlite::Error::SqliteFailure(f, _),
            ..
        } if f.code == rusqlite::ErrorCode::DiskFull => BackupError::DiskFull { dir: dir.clone() },
        other => other,
    })?;
    let (db_sha256, db_size) = sha256_file(&snapshot)?;
    let schema_version = schema_version_of(&snapshot)?;
    let props_path = layout.host(layout.properties_file());
    let props = zstack_common::fsutil::read_optional(&props_path)
        .map_err(io_ctx(format!("cannot read {}", props_path.display())))?;
    let meta = BackupMeta {
        product: zstack_common::PRODUCT.to_string(),
        release: Release::current(layout).map(|r| r.version),
        schema_version,
        created: Local::now().to_rfc3339(),
        db_size,
        db_sha256,
        has_properties: props.is_some(),
    };

    // 4. Pack.
    write_archive(&partial, &meta, &snapshot, props.as_deref())
        .map_err(|e| full(e, "cannot write the backup"))?;
    fs::remove_file(&snapshot).map_err(io_ctx("cannot remove the snapshot"))?;

    // 5. Verify what was written, from the file itself.
    let verified = verify_file(&partial, &scratch_dir).map_err(|e| match e {
        BackupError::Io { source, .. } if is_enospc(&source) => {
            BackupError::DiskFull { dir: dir.clone() }
        }
        other => other,
    })?;
    if verified.meta != meta {
        return Err(BackupError::Invalid {
            path: partial,
            why: "its description changed while it was written".into(),
        });
    }

    // 6. Into place, then rotate.
    fs::rename(&partial, &final_path).map_err(io_ctx("cannot move the backup into place"))?;
    zstack_common::fsutil::sync_dir(&dir).map_err(io_ctx("cannot sync the backup directory"))?;
    scratch.keep(&partial);
    drop(scratch);

    let ours = list_backups(&dir, file_name)?;
    let mut removed = Vec::new();
    for old in ours.iter().skip(keep_amount) {
        if old.path == final_path {
            continue;
        }
        fs::remove_file(&old.path).map_err(io_ctx(format!(
            "cannot remove the old backup {}",
            old.path.display()
        )))?;
        removed.push(old.path.clone());
    }
    let size = fs::metadata(&final_path).map(|m| m.len()).unwrap_or(0);
    Ok(DumpReport {
        file: final_path,
        size,
        meta,
        removed,
        kept: ours.len().min(keep_amount),
    })
}

fn ensure_writable_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if !dir.exists() {
        fs::create_dir_all(dir).map_err(|source| BackupError::NotWritable {
            dir: dir.to_path_buf(),
            source,
        })?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|source| {
            BackupError::NotWritable {
                dir: dir.to_path_buf(),
                source,
            }
        })?;
    }
    // Root passes permission checks, so test by creating a file, as the dump will.
    let probe = dir.join(format!(".write-test-{}", std::process::id()));
    match File::create(&probe) {
        Ok(_) => {
            let _ = fs::remove_file(&probe);
            Ok(())
        }
        Err(e) if is_enospc(&e) => Err(BackupError::DiskFull {
            dir: dir.to_path_buf(),
        }),
        Err(source) => Err(BackupError::NotWritable {
            dir: dir.to_path_buf(),
            source,
        }),
    }
}

fn lock_dir(dir: &Path) -> Result<nix::fcntl::Flock<File>> {
    let path = dir.join(".dump_mysql.lock");
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| BackupError::NotWritable {
            dir: dir.to_path_buf(),
            source,
        })?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| io_ctx(format!("cannot lock {}", path.display()))(io::Error::from(e)))
}

/// Copies the live DB at `src` to `dest` with the online backup API, in one step, so the copy is
/// one consistent snapshot even while other processes write.
fn online_copy(src: &Path, dest: &Path) -> Result<()> {
    let source = rusqlite::Connection::open_with_flags(
        src,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql_ctx(format!("opening {}", src.display())))?;
    source
        .busy_timeout(std::time::Duration::from_secs(30))
        .map_err(sql_ctx("setting a busy timeout"))?;
    let mut target = rusqlite::Connection::open(dest)
        .map_err(sql_ctx(format!("creating {}", dest.display())))?;
    {
        let backup = rusqlite::backup::Backup::new(&source, &mut target)
            .map_err(sql_ctx("starting the online backup"))?;
        // -1: every page in one step, under one read transaction: a consistent snapshot.
        loop {
            match backup.step(-1).map_err(sql_ctx("copying the database"))? {
                rusqlite::backup::StepResult::Done => break,
                rusqlite::backup::StepResult::Busy | rusqlite::backup::StepResult::Locked => {
                    std::thread::sleep(std::time::Duration::from_millis(50))
                }
                _ => {}
            }
        }
    }
    // The copy is a standalone file: no WAL beside it.
    target
        .pragma_update(None, "journal_mode", "DELETE")
        .map_err(sql_ctx("finishing the copy"))?;
    target
        .close()
        .map_err(|(_, e)| sql_ctx("closing the copy")(e))?;
    Ok(())
}

fn sha256_file(p: &Path) -> Result<(String, u64)> {
    let mut f = File::open(p).map_err(io_ctx(format!("cannot read {}", p.display())))?;
    let mut h = Sha256::new();
    let n = io::copy(&mut f, &mut h).map_err(io_ctx(format!("cannot read {}", p.display())))?;
    Ok((hex::encode(h.finalize()), n))
}

/// The highest migration version in a DB's ledger.
pub fn schema_version_of(db: &Path) -> Result<Option<String>> {
    let read = |e: zstack_db::DbError| BackupError::Invalid {
        path: db.to_path_buf(),
        why: e.to_string(),
    };
    let conn = zstack_db::open_read_only(db).map_err(read)?;
    Ok(zstack_db::ledger_version(&conn, db)
        .map_err(read)?
        .map(|v| v.to_string()))
}

fn write_archive(
    path: &Path,
    meta: &BackupMeta,
    db: &Path,
    props: Option<&[u8]>,
) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    let mut enc = zstd::stream::write::Encoder::new(BufWriter::with_capacity(1 << 20, file), 3)?;
    let _ = enc.multithread(2);
    let mut tar = tar::Builder::new(enc);
    let meta_json = serde_json::to_vec_pretty(meta).map_err(io::Error::other)?;
    append(&mut tar, META_ENTRY, &meta_json)?;
    let mut h = tar::Header::new_gnu();
    h.set_size(meta.db_size);
    h.set_mode(0o600);
    h.set_mtime(chrono::Utc::now().timestamp() as u64);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(
        &mut h,
        DB_ENTRY,
        BufReader::with_capacity(1 << 20, File::open(db)?),
    )?;
    if let Some(p) = props {
        append(&mut tar, PROPERTIES_ENTRY, p)?;
    }
    let buf = tar.into_inner()?.finish()?;
    let file = buf.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()
}

fn append<W: Write>(tar: &mut tar::Builder<W>, name: &str, bytes: &[u8]) -> io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(bytes.len() as u64);
    h.set_mode(0o600);
    h.set_mtime(chrono::Utc::now().timestamp() as u64);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, name, bytes)
}

/// A backup unpacked into a scratch directory and checked.
#[derive(Debug)]
pub struct VerifiedBackup {
    pub meta: BackupMeta,
    pub db: PathBuf,
    pub properties: Option<PathBuf>,
}

/// Opens a backup file, `.zst` or `.gz` (told apart by their magic bytes).
fn open_backup(path: &Path) -> Result<Box<dyn Read>> {
    let mut f = File::open(path).map_err(io_ctx(format!("cannot read {}", path.display())))?;
    let mut magic = [0u8; 4];
    let n = f
        .read(&mut magic)
        .map_err(io_ctx(format!("cannot read {}", path.display())))?;
    let f = File::open(path).map_err(io_ctx(format!("cannot read {}", path.display())))?;
    let r = BufReader::with_capacity(1 << 20, f);
    if n >= 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
        let d = zstd::stream::read::Decoder::with_buffer(r).map_err(io_ctx("cannot start zstd"))?;
        Ok(Box::new(d))
    } else if n >= 2 && magic[..2] == [0x1f, 0x8b] {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(r)))
    } else {
        Err(BackupError::Invalid {
            path: path.into(),
            why: "it is neither zstd nor gzip".into(),
        })
    }
}

/// Unpacks `path` into `scratch` and checks it: the description, the DB's sha256, that the DB
/// opens and passes `PRAGMA integrity_check`.
pub fn verify_file(path: &Path, scratch: &Path) -> Result<VerifiedBackup> {
    let invalid = |why: String| BackupError::Invalid {
        path: path.to_path_buf(),
        why,
    };
    let mut archive = tar::Archive::new(open_backup(path)?);
    let mut meta: Option<BackupMeta> = None;
    let mut db: Option<(PathBuf, String)> = None;
    let mut properties = None;
    let entries = archive.entries().map_err(|e| invalid(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| invalid(e.to_string()))?;
        let name = entry
            .path()
            .map_err(|e| invalid(e.to_string()))?
            .to_string_lossy()
            .into_owned();
        match name.as_str() {
            META_ENTRY => {
                let mut text = String::new();
                entry
                    .read_to_string(&mut text)
                    .map_err(|e| invalid(e.to_string()))?;
                meta = Some(
                    serde_json::from_str(&text)
                        .map_err(|e| invalid(format!("backup.json: {e}")))?,
                );
            }
            DB_ENTRY | PROPERTIES_ENTRY => {
                let out = scratch.join(&name);
                let mut w = BufWriter::with_capacity(
                    1 << 20,
                    File::create(&out)
                        .map_err(io_ctx(format!("cannot write {}", out.display())))?,
                );
                let mut h = Sha256::new();
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = entry
                        .read(&mut buf)
                        .map_err(|e| invalid(format!("{name}: {e}")))?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                    w.write_all(&buf[..n])
                        .map_err(io_ctx(format!("cannot write {}", out.display())))?;
                }
                w.flush()
                    .map_err(io_ctx(format!("cannot write {}", out.display())))?;
                if name == DB_ENTRY {
                    db = Some((out, hex::encode(h.finalize())));
                } else {
                    properties = Some(out);
                }
            }
            other => return Err(invalid(format!("unexpected entry {other}"))),
        }
    }
    let meta = meta.ok_or_else(|| invalid("it has no backup.json".into()))?;
    let (db, sha) = db.ok_or_else(|| invalid("it holds no database".into()))?;
    if sha != meta.db_sha256 {
        return Err(invalid(
            "the database inside does not match its recorded sha256".into(),
        ));
    }
    let conn =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| invalid(format!("the database does not open: {e}")))?;
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| invalid(format!("integrity_check failed to run: {e}")))?;
    if check != "ok" {
        return Err(invalid(format!("PRAGMA integrity_check says: {check}")));
    }
    Ok(VerifiedBackup {
        meta,
        db,
        properties,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_names() {
        let t = parse_backup_name(
            "zstack-backup-db",
            "zstack-backup-db-2026-11-24_12-30-05.zst",
        )
        .unwrap();
        assert_eq!(t.format(TIME_FORMAT).to_string(), "2026-11-24_12-30-05");
        assert!(parse_backup_name(
            "zstack-backup-db",
            "zstack-backup-db-2026-11-24_12-30-05.gz"
        )
        .is_some());
        assert!(parse_backup_name(
            "zstack-backup-db",
            "zstack-backup-db-2026-11-24_12-30-05.zst.partial"
        )
        .is_none());
        assert!(parse_backup_name("zstack-backup-db", "other-2026-11-24_12-30-05.zst").is_none());
        assert!(parse_backup_name("zstack", "zstack-backup-db-2026-11-24_12-30-05.zst").is_none());
        assert!(parse_backup_name("zstack-backup-db", "zstack-backup-db-notes.txt").is_none());
    }

    #[test]
    fn file_names() {
        assert!(valid_file_name("zstack-backup-db"));
        assert!(!valid_file_name("../etc/passwd"));
        assert!(!valid_file_name(".hidden"));
        assert!(!valid_file_name(""));
        assert!(!valid_file_name("a b"));
    }
}

//! `zstack-ctl dump_mysql` / `restore_mysql` against a real install in a sysroot.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use zstack_tests::*;

const V: &str = "1.2.0";

/// A sysroot with ZStack installed by the real .bin.
struct Installed {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Installed {
    fn new() -> Installed {
        require_root();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        ok(bin_cmd(
            &bin_path(V),
            &["--sysroot", root.to_str().unwrap(), "-q"],
        ));
        Installed { _dir: dir, root }
    }
    fn ctl(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.root.join("usr/local/zstack/current/bin/zstack-ctl"));
        c.args(args).env("ZSTACK_SYSROOT", &self.root);
        c
    }
    fn db(&self) -> PathBuf {
        self.root.join("var/lib/zstack/zstack.db")
    }
    fn backup_dir(&self) -> PathBuf {
        self.root.join("var/lib/zstack/mysql-backup")
    }
    fn backups(&self, name: &str) -> Vec<PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(self.backup_dir())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let f = p.file_name().unwrap().to_string_lossy().into_owned();
                f.starts_with(&format!("{name}-20")) && (f.ends_with(".zst") || f.ends_with(".gz"))
            })
            .collect();
        v.sort();
        v
    }
}

/// Unpacks a backup with the system's zstd and tar, as an operator could, into `dir`.
fn unpack(backup: &Path, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let o = run(Command::new("sh").arg("-c").arg(format!(
        "zstd -dc '{}' | tar -x -C '{}'",
        backup.display(),
        dir.display()
    )));
    assert!(o.status.success(), "{}", text(&o));
    dir.join("zstack.db")
}

#[test]
#[ignore = "needs root and build/*.bin: run by make test"]
fn backups_taken_under_a_continuous_writer_are_consistent_prefixes() {
    let z = Installed::new();
    {
        let c = rusqlite::Connection::open(z.db()).unwrap();
        c.execute_batch("CREATE TABLE writer_rows (seq INTEGER PRIMARY KEY, pad TEXT NOT NULL);")
            .unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let db = z.db();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let c = rusqlite::Connection::open(db).unwrap();
            c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
            let mut seq = 0i64;
            while !stop.load(Ordering::SeqCst) {
                // Each transaction adds 50 rows: a torn copy would show a count not a multiple of 50.
                let tx = c.unchecked_transaction().unwrap();
                for _ in 0..50 {
                    seq += 1;
                    tx.execute(
                        "INSERT INTO writer_rows (seq, pad) VALUES (?1, ?2)",
                        rusqlite::params![seq, "x".repeat(200)],
                    )
                    .unwrap();
                }
                tx.commit().unwrap();
            }
            seq
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    for _ in 0..5 {
        let out = ok(z.ctl(&["dump_mysql", "--file-name", "busy", "--keep-amount", "10"]));
        assert!(out.contains("verified"), "{out}");
    }
    stop.store(true, Ordering::SeqCst);
    let written = writer.join().unwrap();
    let backups = z.backups("busy");
    assert_eq!(backups.len(), 5);
    let mut last = 0;
    for (i, b) in backups.iter().enumerate() {
        let scratch = tempfile::tempdir().unwrap();
        let db = unpack(b, scratch.path());
        let c = rusqlite::Connection::open(&db).unwrap();
        let check: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        let (n, max): (i64, Option<i64>) = c
            .query_row("SELECT count(*), max(seq) FROM writer_rows", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(
            Some(n),
            max.or(Some(0)),
            "backup {i}: rows are exactly 1..=n, a prefix"
        );
        assert_eq!(n % 50, 0, "backup {i}: no transaction torn");
        assert!(n >= last && n <= written, "backups follow the writer");
        last = n;
    }
    assert!(last > 0, "the writer wrote during the backups");
    // Every one restores (here: the last; the round trip is checked below).
    ok(z.ctl(&[
        "restore_mysql",
        "--from-file",
        backups.last().unwrap().to_str().unwrap(),
    ]));
    let c = rusqlite::Connection::open(z.db()).unwrap();
    let n: i64 = c
        .query_row("SELECT count(*) FROM writer_rows", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, last);
}

#[test]
#[ignore = "needs root and build/*.bin: run by make test"]
fn rotation_keeps_exactly_the_newest_of_ours_and_every_foreign_file() {
    let z = Installed::new();
    let dir = z.backup_dir();
    let foreign = [
        "notes.txt",
        "other-2020-01-01_00-00-00.zst",
        "busy-2020-01-01_00-00-00.zst.partial",
        "busy-2020-01-01_00-00-00.zst.bak",
        "busybox-2020-01-01_00-00-00.zst",
        "zstack-dropped-2020-01-01_00-00-00.db",
    ];
    for f in foreign {
        std::fs::write(dir.join(f), f).unwrap();
    }
    // An old backup of ours (made by hand, older than every new one) goes first.
    let old = dir.join("busy-2020-01-01_00-00-00.zst");
    std::fs::write(&old, b"old").unwrap();
    let mut made = Vec::new();
    for _ in 0..10 {
        let out = ok(z.ctl(&[
            "dump_mysql",
            "--file-name",
            "busy",
            "--keep-amount",
            "3",
            "--json",
        ]));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        made.push(PathBuf::from(v["backup"]["file"].as_str().unwrap()));
    }
    let kept = z.backups("busy");
    assert_eq!(kept, made[7..].to_vec(), "exactly the newest three of ours");
    for f in foreign {
        assert_eq!(
            std::fs::read_to_string(dir.join(f)).unwrap(),
            f,
            "foreign file {f} untouched"
        );
    }
    assert!(!old.exists());
    let o = run(z.ctl(&["dump_mysql", "--keep-amount", "0"]));
    assert!(
        !o.status.success() && text(&o).contains("at least 1"),
        "{}",
        text(&o)
    );
}

#[test]
#[ignore = "needs root and build/*.bin: run by make test"]
fn two_dumps_at_once_both_succeed() {
    let z = Installed::new();
    let a = z
        .ctl(&["dump_mysql", "--file-name", "pair"])
        .spawn()
        .unwrap();
    let b = z
        .ctl(&["dump_mysql", "--file-name", "pair"])
        .spawn()
        .unwrap();
    assert!(a.wait_with_output().unwrap().status.success());
    assert!(b.wait_with_output().unwrap().status.success());
    let backups = z.backups("pair");
    assert_eq!(
        backups.len(),
        2,
        "two distinct, complete backups: {backups:?}"
    );
    for bk in backups {
        let s = tempfile::tempdir().unwrap();
        let db = unpack(&bk, s.path());
        let c = rusqlite::Connection::open(db).unwrap();
        let check: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
    }
}

fn dir_state(dir: &Path) -> Snapshot {
    snapshot(dir, &|rel: &Path| rel == Path::new(".dump_mysql.lock"))
}

#[test]
#[ignore = "needs root and build/*.bin: run by make test"]
fn disk_full_unwritable_and_missing_db_fail_clearly_leaving_no_partial_file() {
    let z = Installed::new();
    let dir = z.backup_dir();
    // A small filesystem for the backups; a first, small backup fits.
    let small = TmpfsMount::new("size=1m");
    ok(Command::new("mount")
        .arg("--bind")
        .arg(small.path())
        .arg(&dir));
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).output();
        }
    }
    let _unmount = Unmount(dir.clone());
    ok(z.ctl(&["dump_mysql"]));
    let before = dir_state(&dir);
    // Grow the DB with incompressible data past the filesystem's size.
    {
        let c = rusqlite::Connection::open(z.db()).unwrap();
        c.execute_batch("CREATE TABLE blobs (b BLOB);").unwrap();
        for _ in 0..40 {
            c.execute("INSERT INTO blobs VALUES (randomblob(65536))", [])
                .unwrap();
        }
    }
    let o = run(z.ctl(&["dump_mysql"]));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let msg = text(&o);
    assert!(msg.contains("no space left"), "{msg}");
    assert!(msg.lines().count() <= 2, "short and plain for cron: {msg}");
    assert_eq!(
        diff(&before, &dir_state(&dir)),
        Vec::<String>::new(),
        "no partial file; earlier backups intact"
    );
    drop(_unmount);

    // An unwritable (read-only) backup directory.
    ok(Command::new("mount").arg("--bind").arg(&dir).arg(&dir));
    ok(Command::new("mount")
        .args(["-o", "remount,bind,ro"])
        .arg(&dir));
    let _ro = Unmount(dir.clone());
    let before = dir_state(&dir);
    let o = run(z.ctl(&["dump_mysql"]));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("cannot write to the backup directory"),
        "{}",
        text(&o)
    );
    assert_eq!(diff(&before, &dir_state(&dir)), Vec::<String>::new());
    drop(_ro);

    // A missing database.
    std::fs::rename(z.db(), z.db().with_extension("moved")).unwrap();
    let o = run(z.ctl(&["dump_mysql"]));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("does not exist: nothing to back up"),
        "{}",
        text(&o)
    );
}

#[test]
#[ignore = "needs root and build/*.bin: run by make test"]
fn restore_refuses_damaged_and_newer_backups_and_takes_the_config_along() {
    let z = Installed::new();
    let out = ok(z.ctl(&["dump_mysql", "--json"]));
    let file = PathBuf::from(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["backup"]["file"]
            .as_str()
            .unwrap(),
    );

    // Change the configuration and the DB; the restore brings both back.
    ok(z.ctl(&["configure", "management.server.ip=10.20.30.40"]));
    {
        let c = rusqlite::Connection::open(z.db()).unwrap();
        c.execute(
            "UPDATE global_config SET value='writeback' WHERE name='vm.cacheMode'",
            [],
        )
        .unwrap();
    }
    ok(z.ctl(&["restore_mysql", "--from-file", file.to_str().unwrap()]));
    let props = std::fs::read_to_string(z.root.join("etc/zstack/zstack.properties")).unwrap();
    assert!(!props.contains("10.20.30.40"), "{props}");
    let c = rusqlite::Connection::open(z.db()).unwrap();
    let v: String = c
        .query_row(
            "SELECT value FROM global_config WHERE name='vm.cacheMode'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(v, "none");
    assert!(
        !z.backups("zstack-before-restore").is_empty(),
        "the DB before the restore was backed up"
    );

    // A damaged file is refused before anything changes.
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    let damaged = z.root.join("damaged.zst");
    std::fs::write(&damaged, bytes).unwrap();
    let before = snapshot(&z.root.join("var/lib/zstack"), &|r: &Path| {
        r.starts_with("mysql-backup")
    });
    let o = run(z.ctl(&["restore_mysql", "--from-file", damaged.to_str().unwrap()]));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("not a valid ZStack backup"),
        "{}",
        text(&o)
    );
    assert_eq!(
        diff(
            &before,
            &snapshot(&z.root.join("var/lib/zstack"), &|r: &Path| r
                .starts_with("mysql-backup"))
        ),
        Vec::<String>::new()
    );

    // A backup from a newer schema is refused.
    let scratch = tempfile::tempdir().unwrap();
    let db = unpack(&file, scratch.path());
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute(
            "INSERT INTO schema_migrations VALUES ('9.0.0','future','00',datetime(),0)",
            [],
        )
        .unwrap();
        c.pragma_update(None, "journal_mode", "DELETE").unwrap();
    }
    let meta_path = scratch.path().join("backup.json");
    let mut meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&meta_path).unwrap()).unwrap();
    use sha2::Digest;
    meta["db_sha256"] = hex::encode(sha2::Sha256::digest(std::fs::read(&db).unwrap())).into();
    meta["db_size"] = std::fs::metadata(&db).unwrap().len().into();
    meta["schema_version"] = "9.0.0".into();
    std::fs::write(&meta_path, serde_json::to_vec(&meta).unwrap()).unwrap();
    let newer = z.root.join("newer.gz");
    ok(Command::new("sh").arg("-c").arg(format!(
        "cd '{}' && tar -c backup.json zstack.db zstack.properties | gzip > '{}'",
        scratch.path().display(),
        newer.display()
    )));
    let o = run(z.ctl(&["restore_mysql", "--from-file", newer.to_str().unwrap()]));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("newer than the installed release"),
        "{}",
        text(&o)
    );
}

#[test]
#[ignore = "needs root and build/*.bin: run by make test"]
fn install_cron_is_idempotent_and_keeps_other_lines() {
    let z = Installed::new();
    let cron = z.root.join("var/spool/cron/crontabs/root");
    std::fs::write(&cron, "MAILTO=ops\n0 1 * * * /usr/local/bin/rotate\n").unwrap();
    let out = ok(z.ctl(&["install_cron"]));
    assert!(out.contains("added"), "{out}");
    let out = ok(z.ctl(&["install_cron"]));
    assert!(out.contains("already"), "{out}");
    let text_cron = std::fs::read_to_string(&cron).unwrap();
    assert_eq!(text_cron, "MAILTO=ops\n0 1 * * * /usr/local/bin/rotate\n30 0,12 * * * zstack-ctl dump_mysql --keep-amount 14\n");
    // Valid cron syntax: five time fields within range, then the command.
    let line = text_cron.lines().last().unwrap();
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&f[..5], ["30", "0,12", "*", "*", "*"]);
    assert_eq!(f[5..].join(" "), "zstack-ctl dump_mysql --keep-amount 14");
}

/// A backup of a ZStack 1.1.0 database (see [`make_old_db`]), as dump_mysql lays it out, gzip'd.
fn make_1_1_backup(dir: &Path) -> PathBuf {
    use sha2::Digest;
    let stage = dir.join("stage");
    std::fs::create_dir_all(&stage).unwrap();
    let db = stage.join("zstack.db");
    make_old_db(&db, "1.1.0");
    let bytes = std::fs::read(&db).unwrap();
    let meta = serde_json::json!({
        "product": "ZStack", "release": "1.1.0", "schema_version": "1.1.0", "created": "2025-01-01T00:00:00+00:00",
        "db_size": bytes.len(), "db_sha256": hex::encode(sha2::Sha256::digest(&bytes)), "has_properties": false,
    });
    std::fs::write(
        stage.join("backup.json"),
        serde_json::to_vec(&meta).unwrap(),
    )
    .unwrap();
    let out = dir.join("zstack-backup-db-2025-01-01_00-00-00.gz");
    ok(Command::new("sh").arg("-c").arg(format!(
        "cd '{}' && tar -c backup.json zstack.db | gzip > '{}'",
        stage.display(),
        out.display()
    )));
    out
}

#[test]
#[ignore = "needs root and build/*.bin: run by make test"]
fn an_older_backup_is_restored_and_migrated() {
    let z = Installed::new();
    let scratch = tempfile::tempdir().unwrap();
    let old = make_1_1_backup(scratch.path());
    let out = ok(z.ctl(&["restore_mysql", "--from-file", old.to_str().unwrap()]));
    assert!(
        out.contains("migrated the restored database from schema 1.1.0"),
        "{out}"
    );
    assert_eq!(schema_version(&z.db()), "1.2.0");
    let c = rusqlite::Connection::open(z.db()).unwrap();
    let mode: String = c
        .query_row(
            "SELECT value FROM global_config WHERE name = 'vm.cacheMode'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(mode, "writethrough", "1.1's integer 1 maps to writethrough");
    let zone: String = c
        .query_row("SELECT name FROM zone WHERE uuid = 'z0'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(zone, "old-zone");
    // The backup had no zstack.properties: the installed one is kept.
    assert!(
        std::fs::read_to_string(z.root.join("etc/zstack/zstack.properties"))
            .unwrap()
            .contains("management.hostTls.port")
    );
}

#[test]
#[ignore = "needs root and build/*.bin: run by make test"]
fn configure_validates_every_pair_and_rewrites_atomically() {
    let z = Installed::new();
    let path = z.root.join("etc/zstack/zstack.properties");
    let before = std::fs::read_to_string(&path).unwrap();
    let o = run(z.ctl(&[
        "configure",
        "management.server.ip=10.0.0.7",
        "kvmagent.prot=7071",
        "management.api.port=99999",
    ]));
    assert_eq!(o.status.code(), Some(1));
    let msg = text(&o);
    assert!(
        msg.contains("did you mean kvmagent.port")
            && msg.contains("port number 1-65535")
            && msg.contains("nothing was changed"),
        "{msg}"
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        before,
        "a refused configure changes nothing"
    );

    ok(z.ctl(&[
        "configure",
        "management.server.ip=10.0.0.7",
        "kvmagent.port=7071",
    ]));
    let after = std::fs::read_to_string(&path).unwrap();
    assert!(
        after.contains("management.server.ip = 10.0.0.7") && after.contains("kvmagent.port = 7071"),
        "{after}"
    );
    assert_eq!(
        after.lines().filter(|l| l.starts_with('#')).count(),
        before.lines().filter(|l| l.starts_with('#')).count(),
        "comments kept"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let shown = ok(z.ctl(&["show_configuration"]));
    assert!(
        shown.contains("kvmagent.port = 7071") && shown.contains("admin.password = ********"),
        "{shown}"
    );
    assert!(
        !shown.contains(
            &after
                .lines()
                .find(|l| l.starts_with("admin.password"))
                .unwrap()[17..]
        ),
        "secrets masked"
    );
    let v = ok(z.ctl(&["version"]));
    assert!(v.contains("installed release: 1.2.0"), "{v}");
}

#[test]
#[ignore = "needs root and build/*.bin: run by make test"]
fn taillog_prints_the_end_and_follows() {
    use std::io::{BufRead, Write};
    let z = Installed::new();
    let log = z.root.join("var/log/zstack/management-server.log");
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    std::fs::write(
        &log,
        (1..=10).map(|i| format!("line {i}\n")).collect::<String>(),
    )
    .unwrap();
    let out = ok(z.ctl(&["taillog", "-n", "3", "--no-follow"]));
    assert_eq!(out.trim(), "line 8\nline 9\nline 10");
    let mut child = z
        .ctl(&["taillog", "-n", "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Lines are read on a thread, so a missing line fails the test instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let timeout = std::time::Duration::from_secs(10);
    let first = rx
        .recv_timeout(timeout)
        .expect("taillog prints the last line");
    assert_eq!(first.trim(), "line 10");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .unwrap()
        .write_all(b"appended later\n")
        .unwrap();
    let next = rx.recv_timeout(timeout);
    let _ = child.kill();
    let _ = child.wait();
    let next = next.expect("taillog follows what is appended");
    assert_eq!(next.trim(), "appended later");
}

#[test]
#[ignore = "needs root and build/*.bin: run by make test"]
fn upgrade_db_backs_up_then_migrates_and_refuses_a_changed_migration() {
    use sha2::Digest;
    let z = Installed::new();
    std::fs::remove_file(z.db()).unwrap();
    make_old_db(&z.db(), "1.0.0");
    let sum = || hex::encode(sha2::Sha256::digest(std::fs::read(z.db()).unwrap()));
    let before = sum();

    let out = ok(z.ctl(&["upgrade_db", "--dry-run"]));
    assert!(
        out.contains("would migrate (dry run) schema 1.0.0 -> 1.2.0")
            && out.contains("V1.1.0__01_kvm_cache_mode_and_l3.sql"),
        "{out}"
    );
    assert_eq!(sum(), before, "--dry-run changes nothing");
    assert!(z.backups(upgrade_name()).is_empty());

    let out = ok(z.ctl(&["upgrade_db"]));
    assert!(out.contains("migrated schema 1.0.0 -> 1.2.0"), "{out}");
    assert_eq!(
        z.backups(upgrade_name()).len(),
        1,
        "a verified backup first"
    );
    assert_eq!(schema_version(&z.db()), "1.2.0");
    let c = rusqlite::Connection::open(z.db()).unwrap();
    let zone: String = c
        .query_row("SELECT name FROM zone WHERE uuid = 'z0'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(zone, "old-zone");
    drop(c);
    assert!(ok(z.ctl(&["upgrade_db"])).contains("nothing to do"));

    // A shipped migration changed after it was applied is refused, by name.
    let m = z
        .root
        .join("usr/local/zstack/current/migrations/V1.1.0__01_kvm_cache_mode_and_l3.sql");
    let mut sql = std::fs::read_to_string(&m).unwrap();
    sql.push_str("\n-- edited by hand\n");
    std::fs::write(&m, sql).unwrap();
    let o = run(z.ctl(&["upgrade_db"]));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("V1.1.0__01_kvm_cache_mode_and_l3.sql")
            && text(&o).contains("changed after it was applied"),
        "{}",
        text(&o)
    );
}

fn upgrade_name() -> &'static str {
    "zstack-db-before-upgrade"
}

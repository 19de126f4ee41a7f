//! Helpers shared by the integration and end-to-end tests (tests/tests/*.rs). Those tests run as
//! root against the real `.bin` built by `make bin`; `make test` runs them with
//! `--include-ignored`.

pub mod cli;
pub mod kvm;
pub mod nspawn;
pub mod simulated_cloud;
pub mod suite;
pub mod webdriver;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// `build/zstack-installer-<version>.bin`, which `make bin VERSION=<version>` builds.
pub fn bin_path(version: &str) -> PathBuf {
    let p = repo_root().join(format!("build/zstack-installer-{version}.bin"));
    assert!(
        p.exists(),
        "{} is missing: run `make bin VERSION={version}` first",
        p.display()
    );
    p
}

/// Fails the test unless it runs as root, then waits for this host to be the test binary's
/// alone (see [`hold_the_host`]).
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (make test runs it as root)"
    );
    hold_the_host();
}

/// Where test binaries that install on this host, boot containers or start daemons queue.
pub const HOST_TEST_LOCK: &str = "/run/lock/zstack-tests-on-this-host.lock";

/// Takes the host for this test binary until it exits: tests of two checkouts run at once would
/// install over each other. The lock file is opened close-on-exec (Rust's default), so daemons
/// a test starts (libvirtd, virtlogd, dnsmasq) never inherit it and hold the host after the test.
pub fn hold_the_host() {
    static HELD: std::sync::OnceLock<nix::fcntl::Flock<std::fs::File>> = std::sync::OnceLock::new();
    HELD.get_or_init(|| {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(HOST_TEST_LOCK)
            .unwrap_or_else(|e| panic!("cannot open {HOST_TEST_LOCK}: {e}"));
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .unwrap_or_else(|(_, e)| panic!("cannot lock {HOST_TEST_LOCK}: {e}"))
    });
}

/// Runs a command and returns its output (never panics on a non-zero exit).
pub fn run(mut cmd: impl std::borrow::BorrowMut<Command>) -> Output {
    let cmd = cmd.borrow_mut();
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// stdout + stderr as one string, for assertions and failure messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `bash <bin> args...`
pub fn bin_cmd(bin: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("bash");
    c.arg(bin).args(args);
    c
}

/// Runs a command that must succeed and returns its stdout.
pub fn ok(mut cmd: impl std::borrow::BorrowMut<Command>) -> String {
    let cmd = cmd.borrow_mut();
    let o = run(&mut *cmd);
    assert!(
        o.status.success(),
        "{cmd:?} failed ({}):\n{}",
        o.status,
        text(&o)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// What a directory tree holds: for every path, its type, mode, owner and content hash or link
/// target.
/// Two equal snapshots mean nothing in the tree changed.
pub type Snapshot = BTreeMap<PathBuf, String>;

/// Snapshots `root`, leaving out paths for which `skip` is true.
pub fn snapshot(root: &Path, skip: &dyn Fn(&Path) -> bool) -> Snapshot {
    use sha2::{Digest, Sha256};
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        let rel = p.strip_prefix(root).unwrap_or(&p).to_path_buf();
        if skip(&rel) {
            continue;
        }
        let mode = meta.permissions().mode() & 0o7777;
        let owner = {
            use std::os::unix::fs::MetadataExt;
            format!("{}:{}", meta.uid(), meta.gid())
        };
        let desc = if meta.file_type().is_symlink() {
            format!(
                "link -> {}",
                std::fs::read_link(&p)
                    .map(|t| t.display().to_string())
                    .unwrap_or_default()
            )
        } else if meta.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
            format!("dir {mode:o} {owner}")
        } else {
            let content = std::fs::read(&p).unwrap_or_default();
            format!(
                "file {mode:o} {owner} {}",
                hex::encode(Sha256::digest(&content))
            )
        };
        out.insert(rel, desc);
    }
    out
}

/// The differences between two snapshots, one line each.
pub fn diff(a: &Snapshot, b: &Snapshot) -> Vec<String> {
    let mut d = Vec::new();
    for (k, v) in a {
        match b.get(k) {
            None => d.push(format!("removed {}", k.display())),
            Some(w) if w != v => d.push(format!("changed {}: {v} -> {w}", k.display())),
            _ => {}
        }
    }
    for k in b.keys() {
        if !a.contains_key(k) {
            d.push(format!("added {}", k.display()));
        }
    }
    d
}

/// Paths of the real host that an install touches; snapshotting them shows whether a refused
/// run changed the host.
pub const HOST_PATHS: &[&str] = &[
    "/usr/local/zstack",
    "/etc/zstack",
    "/var/lib/zstack",
    "/var/log/zstack",
    "/usr/bin/zstack-ctl",
    "/usr/bin/zstack-cli",
    "/etc/systemd/system/zstack-server.service",
    "/etc/systemd/system/zstack-kvmagent.service",
    "/etc/systemd/system/multi-user.target.wants",
    "/run/zstack",
    "/var/lib/zstack-installer.journal",
];

/// A snapshot of the host's ZStack paths and root's crontab.
pub fn host_snapshot() -> Snapshot {
    let mut s = Snapshot::new();
    for p in HOST_PATHS {
        for (k, v) in snapshot(Path::new(p), &|_| false) {
            s.insert(Path::new(p).join(k), v);
        }
    }
    let cron = run(Command::new("crontab").args(["-l"]));
    s.insert(
        PathBuf::from("crontab"),
        String::from_utf8_lossy(&cron.stdout).into_owned(),
    );
    for db in ["passwd", "group"] {
        let entry = run(Command::new("getent").args([db, SERVER_USER]));
        s.insert(
            PathBuf::from(format!("{db} {SERVER_USER}")),
            String::from_utf8_lossy(&entry.stdout).into_owned(),
        );
    }
    s
}

/// The user the management node runs as.
pub const SERVER_USER: &str = "zstack";

/// The uid and gid of [`SERVER_USER`], if it exists.
pub fn server_user() -> Option<(u32, u32)> {
    nix::unistd::User::from_name(SERVER_USER)
        .ok()
        .flatten()
        .map(|u| (u.uid.as_raw(), u.gid.as_raw()))
}

/// Gives `dir` (made if missing) to the management node's user, as an operator does for a local
/// backup storage directory: the management node runs as that user and cannot make directories
/// where only root may. Its parents must let that user through (a tempdir is 0700: made 0755).
pub fn give_to_server_user(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    let (uid, gid) = server_user().expect("the user zstack exists: ZStack is installed");
    std::os::unix::fs::chown(dir, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", dir.display()));
    let mut p = dir.parent();
    while let Some(parent) = p {
        if let Ok(meta) = std::fs::metadata(parent) {
            let mode = meta.permissions().mode();
            if mode & 0o001 == 0 {
                let _ = std::fs::set_permissions(
                    parent,
                    std::fs::Permissions::from_mode((mode & 0o7777) | 0o755),
                );
            }
        }
        p = parent.parent();
    }
}

/// The uid of a running process (`Uid:` of /proc/<pid>/status: real, effective, saved, fs).
pub fn process_uids(pid: u32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// True if a ZStack release is installed on the real host.
pub fn installed_on_host() -> bool {
    Path::new("/usr/local/zstack/current").exists() || Path::new("/etc/zstack").exists()
}

/// Stops the services and removes everything an install put on the real host, keeping every
/// crontab line but the dump_mysql one.
pub fn uninstall_from_host() {
    if Path::new("/usr/bin/zstack-ctl").exists() {
        let _ = Command::new("/usr/bin/zstack-ctl")
            .args(["stop", "--timeout", "30"])
            .output();
    }
    for p in HOST_PATHS {
        let path = Path::new(p);
        if p.ends_with(".wants") {
            for unit in ["zstack-server.service", "zstack-kvmagent.service"] {
                let _ = std::fs::remove_file(path.join(unit));
            }
            continue;
        }
        let _ = if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(path)
        } else {
            std::fs::remove_file(path)
        };
    }
    let _ = std::fs::remove_file("/var/log/zstack-installer.log");
    let _ = std::fs::remove_dir_all("/run/zstack");
    // The user too, so the next install makes it again (the group goes with it).
    if server_user().is_some() {
        let _ = Command::new("userdel").arg(SERVER_USER).output();
    }
    let cron = run(Command::new("crontab").args(["-l"]));
    if cron.status.success() {
        let kept: String = String::from_utf8_lossy(&cron.stdout)
            .lines()
            .filter(|l| !l.contains("zstack-ctl dump_mysql"))
            .map(|l| format!("{l}\n"))
            .collect();
        if kept.trim().is_empty() {
            let _ = Command::new("crontab").arg("-r").output();
        } else {
            use std::io::Write;
            if let Ok(mut child) = Command::new("crontab")
                .arg("-")
                .stdin(std::process::Stdio::piped())
                .spawn()
            {
                if let Some(mut stdin) = child.stdin.take() {
                    let _ = stdin.write_all(kept.as_bytes());
                }
                let _ = child.wait();
            }
        }
    }
}

/// Removes the real-host install when dropped, so a failing test leaves a clean machine.
pub struct HostInstallGuard;

impl Drop for HostInstallGuard {
    fn drop(&mut self) {
        uninstall_from_host();
    }
}

/// The `key=value` fields of a .bin's trailer (its last 1 KiB).
pub fn trailer_fields(bin: &Path) -> BTreeMap<String, String> {
    let bytes = std::fs::read(bin).expect("read .bin");
    let t = &bytes[bytes.len() - 1024..];
    String::from_utf8_lossy(t)
        .lines()
        .filter_map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// A network namespace made by a test, deleted when dropped.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(name: &str) -> NetNs {
        let _ = run(Command::new("ip").args(["netns", "del", name]));
        ok(Command::new("ip").args(["netns", "add", name]));
        ok(Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]));
        NetNs {
            name: name.to_string(),
        }
    }

    /// A command run inside the namespace.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A tmpfs mounted for a test, unmounted when dropped.
pub struct TmpfsMount {
    pub dir: tempfile::TempDir,
}

impl TmpfsMount {
    pub fn new(options: &str) -> TmpfsMount {
        let dir = tempfile::tempdir().expect("tempdir");
        ok(Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir.path()));
        TmpfsMount { dir }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .output();
    }
}

/// Makes at `db` a ZStack database as release `version` left it: the shipped migrations up to
/// that release applied, with their ledger rows; as 1.1 did, the cache mode is an integer (1),
/// and a zone `old-zone` (uuid `z0`) stands for the operator's data.
pub fn make_old_db(db: &Path, version: &str) {
    use sha2::Digest;
    let c = rusqlite::Connection::open(db).expect("create db");
    c.execute_batch(
        "CREATE TABLE schema_migrations (version TEXT NOT NULL, name TEXT NOT NULL, checksum TEXT NOT NULL,
         applied_at TEXT NOT NULL, duration_ms INTEGER NOT NULL, PRIMARY KEY (version, name));",
    )
    .expect("ledger");
    let top = semver_triplet(version);
    let mut files: Vec<_> = std::fs::read_dir(repo_root().join("payload/migrations"))
        .expect("migrations")
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    for f in files {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some((ver, what)) = name
            .trim_start_matches('V')
            .trim_end_matches(".sql")
            .split_once("__")
        else {
            continue;
        };
        if semver_triplet(ver) > top {
            continue;
        }
        let sql = std::fs::read_to_string(&f).expect("read migration");
        c.execute_batch(&sql).expect("apply migration");
        c.execute(
            "INSERT INTO schema_migrations VALUES (?1, ?2, ?3, '2025-01-01T00:00:00Z', 1)",
            rusqlite::params![ver, what, hex::encode(sha2::Sha256::digest(sql.as_bytes()))],
        )
        .expect("ledger row");
    }
    c.execute(
        "UPDATE global_config SET value = '1' WHERE name = 'vm.cacheMode'",
        [],
    )
    .expect("cache mode");
    c.execute(
        "INSERT INTO zone (uuid, name, state, create_date, last_op_date) VALUES ('z0', 'old-zone', 'Enabled', 'x', 'x')",
        [],
    )
    .expect("zone");
}

fn semver_triplet(v: &str) -> (u64, u64, u64) {
    let mut it = v.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    (
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
    )
}

/// Waits until `done` holds, failing the test with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: std::time::Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Waits until the installer run logging to `log` pauses after `step` (ZSTACK_FAILPOINT=<step>:pause).
pub fn wait_for_pause(log: &Path, step: &str) {
    let needle = format!("paused after step {step} ");
    wait_until(
        &format!("the installer to pause after {step}"),
        std::time::Duration::from_secs(60),
        || {
            std::fs::read_to_string(log)
                .unwrap_or_default()
                .contains(&needle)
        },
    );
}

/// Sends `sig` to the process group that `child` leads (as a terminal or `kill -9 -<pgid>` does)
/// and waits for the child.
pub fn signal_group(
    child: std::process::Child,
    sig: nix::sys::signal::Signal,
) -> std::process::Output {
    let pgid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::killpg(pgid, sig).expect("signal the process group");
    child.wait_with_output().expect("wait for the killed run")
}

/// The highest migration version in the ledger of the DB at `db`.
pub fn schema_version(db: &Path) -> String {
    let c = rusqlite::Connection::open(db).expect("open db");
    c.query_row("SELECT max(version) FROM schema_migrations", [], |r| {
        r.get(0)
    })
    .expect("ledger")
}

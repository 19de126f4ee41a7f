//! The offline installer, end to end: the real `.bin` from `make bin`, run as root.
//! Most tests install into a --sysroot so they can check every file without touching the host;
//! the real-install test installs on this host and removes everything afterwards.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use zstack_tests::*;

const V: &str = "1.2.0";
const CRON_LINE: &str = "30 0,12 * * * zstack-ctl dump_mysql --keep-amount 14";

/// A sysroot snapshot without what every run leaves by design: the lock and the installer log.
fn sysroot_state(root: &Path) -> Snapshot {
    snapshot(root, &|rel: &Path| {
        rel.starts_with("run/lock")
            || rel.starts_with("run") && rel == Path::new("run")
            || rel.starts_with("var/log/zstack-installer.log")
            || rel == Path::new("var/log")
            || rel == Path::new("var/lib")
            || rel == Path::new("var")
            || rel == Path::new("")
    })
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
#[ignore = "needs root and build/*.bin: run by make test"]
fn sysroot_install_lays_down_every_file_and_a_rerun_changes_nothing() {
    require_root();
    let bin = bin_path(V);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let out = ok(bin_cmd(
        &bin,
        &["--sysroot", root.to_str().unwrap(), "--json"],
    ));
    let summary: serde_json::Value = serde_json::from_str(&out).expect("--json prints JSON");
    assert_eq!(summary["ok"], true);
    assert_eq!(summary["version"], V);
    assert_eq!(summary["changed"], true);
    assert_eq!(
        summary["services_started"], false,
        "a sysroot install starts nothing"
    );

    let r = |p: &str| root.join(p.trim_start_matches('/'));
    // Every path of DESIGN.md's "Files on an installed host", with its mode.
    assert_eq!(
        mode(&r("/usr/local/zstack/versions/1.2.0/bin/zstack")),
        0o755
    );
    assert_eq!(
        std::fs::read_link(r("/usr/local/zstack/current")).unwrap(),
        PathBuf::from("versions/1.2.0")
    );
    for name in ["zstack-ctl", "zstack-cli"] {
        assert_eq!(
            std::fs::read_link(r(&format!("/usr/bin/{name}"))).unwrap(),
            PathBuf::from(format!("/usr/local/zstack/current/bin/{name}"))
        );
        assert_eq!(
            std::fs::read_link(r(&format!("/usr/local/zstack/versions/1.2.0/bin/{name}"))).unwrap(),
            PathBuf::from("zstack")
        );
    }
    let props = std::fs::read_to_string(r("/etc/zstack/zstack.properties")).unwrap();
    assert_eq!(
        mode(&r("/etc/zstack/zstack.properties")),
        0o640,
        "secrets: root writes, the management node's group reads, nobody else"
    );
    for key in [
        "management.server.ip",
        "management.api.port = 8080",
        "kvmagent.port = 7070",
        "management.hostTls.port = 8443",
        "admin.password",
    ] {
        assert!(
            props.contains(key),
            "zstack.properties lacks {key}:\n{props}"
        );
    }
    // The cloud's CA, root-only, and the certificates of the management node and of the local
    // host (whose agent serves with it); the node's SSH key for adding hosts.
    assert_eq!(mode(&r("/etc/zstack/ca")), 0o700);
    assert_eq!(mode(&r("/etc/zstack/ca/ca.key")), 0o600);
    for key in [
        "/etc/zstack/pki/management-node.key",
        "/etc/zstack/pki/host.key",
        "/etc/zstack/ssh/id_ed25519",
    ] {
        assert_eq!(mode(&r(key)), 0o600, "{key}");
    }
    for cert in ["ca", "management-node", "host"] {
        let pem = std::fs::read_to_string(r(&format!("/etc/zstack/pki/{cert}.pem"))).unwrap();
        assert!(
            pem.starts_with("-----BEGIN CERTIFICATE-----"),
            "{cert}: {pem}"
        );
    }
    assert!(!props.contains("kvmagent.secret"), "{props}");
    assert_eq!(mode(&r("/var/lib/zstack/zstack.db")), 0o600);
    assert_eq!(mode(&r("/var/lib/zstack/mysql-backup")), 0o700);
    assert!(r("/var/log/zstack").is_dir());

    // The DB carries the migration ledger at 1.2.0, every shipped migration applied once.
    let conn = rusqlite::Connection::open(r("/var/lib/zstack/zstack.db")).unwrap();
    let rows: Vec<(String, String, String)> = conn
        .prepare("SELECT version, name, checksum FROM schema_migrations ORDER BY version, name")
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let shipped: Vec<_> = std::fs::read_dir(repo_root().join("payload/migrations"))
        .unwrap()
        .collect();
    assert_eq!(
        rows.len(),
        shipped.len(),
        "every migration applied: {rows:?}"
    );
    assert_eq!(rows.last().unwrap().0, "1.2.0");
    assert!(rows.iter().all(|r| r.2.len() == 64), "checksums recorded");
    let cache_mode: String = conn
        .query_row(
            "SELECT value FROM global_config WHERE category='kvm' AND name='vm.cacheMode'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(cache_mode, "none");

    // Units: rendered for the logical paths, enabled as systemctl enable would.
    let server = std::fs::read_to_string(r("/etc/systemd/system/zstack-server.service")).unwrap();
    assert!(
        server.contains("ExecStart=/usr/local/zstack/current/bin/zstack-server\n"),
        "{server}"
    );
    assert!(server.contains("WantedBy=multi-user.target"));
    let agent = std::fs::read_to_string(r("/etc/systemd/system/zstack-kvmagent.service")).unwrap();
    assert!(
        agent.contains("ExecStart=/usr/local/zstack/current/bin/zstack-kvmagent\n"),
        "{agent}"
    );
    assert!(
        agent.contains("KillMode=process"),
        "an agent restart must never kill VMs"
    );
    for unit in ["zstack-server.service", "zstack-kvmagent.service"] {
        assert_eq!(mode(&r(&format!("/etc/systemd/system/{unit}"))), 0o644);
        assert_eq!(
            std::fs::read_link(r(&format!(
                "/etc/systemd/system/multi-user.target.wants/{unit}"
            )))
            .unwrap(),
            PathBuf::from(format!("/etc/systemd/system/{unit}"))
        );
    }
    // Root's crontab (Debian's spool inside the sysroot) has the line exactly once.
    let cron = std::fs::read_to_string(r("/var/spool/cron/crontabs/root")).unwrap();
    assert_eq!(cron, format!("{CRON_LINE}\n"));

    // A second run changes nothing and says so.
    let before = sysroot_state(&root);
    let out = ok(bin_cmd(
        &bin,
        &["--sysroot", root.to_str().unwrap(), "--json"],
    ));
    let again: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(again["changed"], false, "{out}");
    assert!(
        again["admin_password"].is_null(),
        "the password is printed once only"
    );
    assert!(again["steps"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["outcome"].as_str().unwrap().starts_with("unchanged")));
    assert_eq!(diff(&before, &sysroot_state(&root)), Vec::<String>::new());
    let o = run(bin_cmd(&bin, &["--sysroot", root.to_str().unwrap()]));
    assert!(text(&o).contains("Nothing to change"), "{}", text(&o));
}

#[test]
#[ignore = "needs root and build/*.bin: run by make test"]
fn a_rerun_keeps_the_operators_edits() {
    require_root();
    let bin = bin_path(V);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    ok(bin_cmd(&bin, &["--sysroot", root.to_str().unwrap(), "-q"]));
    let props_path = root.join("etc/zstack/zstack.properties");
    let cron_path = root.join("var/spool/cron/crontabs/root");
    // The operator sets an IP, adds a comment, drops a key; edits the cron schedule, adds a job.
    let props = std::fs::read_to_string(&props_path).unwrap();
    let edited: String = props
        .lines()
        .filter(|l| !l.starts_with("kvmagent.port"))
        .map(|l| {
            if l.starts_with("management.server.ip") {
                "management.server.ip = 10.1.2.3".to_string()
            } else {
                l.to_string()
            }
        })
        .map(|l| l + "\n")
        .collect::<String>()
        + "# my note\n";
    std::fs::write(&props_path, &edited).unwrap();
    let cron = "MAILTO=ops\n15 3 * * * zstack-ctl dump_mysql --keep-amount 30\n0 1 * * * /usr/local/bin/rotate\n";
    std::fs::write(&cron_path, cron).unwrap();

    ok(bin_cmd(&bin, &["--sysroot", root.to_str().unwrap(), "-q"]));
    let after = std::fs::read_to_string(&props_path).unwrap();
    assert!(after.contains("management.server.ip = 10.1.2.3"), "{after}");
    assert!(after.contains("# my note"), "{after}");
    assert!(
        after.contains("kvmagent.port = 7070"),
        "the missing key is added back: {after}"
    );
    assert!(after.starts_with(
        &edited[..edited.find("# my note").unwrap()]
            .lines()
            .next()
            .unwrap()
            .to_string()
    ));
    assert_eq!(mode(&props_path), 0o640);
    assert_eq!(
        std::fs::read_to_string(&cron_path).unwrap(),
        cron,
        "the operator's cron edits are kept"
    );
}

/// Flips one byte of a copy of the .bin at `offset`.
fn flipped_copy(bin: &Path, dir: &Path, offset: u64) -> PathBuf {
    let mut bytes = std::fs::read(bin).unwrap();
    bytes[offset as usize] ^= 0x5a;
    let p = dir.join(format!("flip-{offset}.bin"));
    std::fs::write(&p, bytes).unwrap();
    p
}

fn assert_refused_changing_nothing(bin: &Path, what: &str) {
    let o = run(bin_cmd(bin, &["--check"]));
    assert!(!o.status.success(), "--check accepted {what}: {}", text(&o));
    let root = tempfile::tempdir().unwrap();
    let sysroot = root.path().join("root");
    let o = run(bin_cmd(bin, &["--sysroot", sysroot.to_str().unwrap()]));
    assert!(
        !o.status.success(),
        "an install accepted {what}: {}",
        text(&o)
    );
    let msg = text(&o);
    assert!(
        msg.contains("damaged")
            || msg.contains("truncated")
            || msg.contains("appended")
            || msg.contains("copy"),
        "{what}: the message must say the file is damaged: {msg}"
    );
    assert!(
        !sysroot.exists(),
        "{what}: the refused install created {}",
        sysroot.display()
    );
}

#[test]
#[ignore = "needs root and build/*.bin: run by make test"]
fn any_flipped_byte_a_truncated_file_or_appended_bytes_are_refused() {
    require_root();
    let bin = bin_path(V);
    let t = trailer_fields(&bin);
    let n = |k: &str| t[k].parse::<u64>().unwrap();
    let (header, installer, payload, total) = (
        n("header_size"),
        n("installer_size"),
        n("payload_size"),
        n("total_size"),
    );
    let dir = tempfile::tempdir().unwrap();
    // A byte in each part: the header's offsets, its padding, the installer, the payload, the
    // trailer's fields and its padding.
    let header_text =
        String::from_utf8_lossy(&std::fs::read(&bin).unwrap()[..header as usize]).into_owned();
    let sha_at = header_text.find("ZS_INSTALLER_SHA256=").unwrap() as u64 + 25;
    let offsets = [
        ("header (installer checksum)", sha_at),
        ("header (padding)", header - 10),
        ("installer (start)", header + 1),
        ("installer (middle)", header + installer / 2),
        ("payload (start)", header + installer + 3),
        ("payload (middle)", header + installer + payload / 2),
        ("payload (end)", header + installer + payload - 1),
        ("trailer (fields)", total - 1024 + 40),
        ("trailer (padding)", total - 200),
        ("trailer (checksum)", total - 5),
    ];
    for (what, off) in offsets {
        assert_refused_changing_nothing(&flipped_copy(&bin, dir.path(), off), what);
    }
    let bytes = std::fs::read(&bin).unwrap();
    let truncated = dir.path().join("truncated.bin");
    std::fs::write(&truncated, &bytes[..bytes.len() - 4000]).unwrap();
    assert_refused_changing_nothing(&truncated, "a truncated file");
    let o = run(bin_cmd(&truncated, &["--check"]));
    assert!(text(&o).contains("truncated"), "{}", text(&o));
    let appended = dir.path().join("appended.bin");
    let mut more = bytes.clone();
    more.extend_from_slice(b"garbage\n");
    std::fs::write(&appended, &more).unwrap();
    assert_refused_changing_nothing(&appended, "appended bytes");
    let o = run(bin_cmd(&appended, &["--check"]));
    assert!(text(&o).contains("8 bytes appended"), "{}", text(&o));
    // The intact file passes, under sh and when executed directly too.
    ok(bin_cmd(&bin, &["--check"]));
    ok(Command::new("sh").arg(&bin).arg("--check"));
    ok(Command::new(&bin).arg("--check"));
}

#[test]
#[ignore = "needs root and build/*.bin: run by make test"]
fn read_only_modes_need_no_root_and_change_nothing() {
    require_root();
    let bin = bin_path(V);
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let copy = dir.path().join("z.bin");
    std::fs::copy(&bin, &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    let nobody = |args: &[&str]| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "bash"])
            .arg(&copy)
            .args(args);
        c.env("TMPDIR", dir.path());
        c
    };
    let before = host_snapshot();
    assert!(ok(&mut nobody(&["--check"])).contains("OK"));
    let info = ok(&mut nobody(&["--info"]));
    for field in [
        "product:",
        "version:          1.2.0",
        "build date:",
        "sha256",
    ] {
        assert!(info.contains(field), "{info}");
    }
    let list = ok(&mut nobody(&["--list"]));
    assert!(
        list.contains("bin/zstack")
            && list.contains("migrations/V1.2.0__")
            && list.contains("templates/systemd/zstack-server.service.tera"),
        "{list}"
    );
    let out = dir.path().join("tree");
    ok(&mut nobody(&["--extract", out.to_str().unwrap()]));
    assert!(
        out.join("bin/zstack").is_file()
            && out.join("MANIFEST").is_file()
            && out.join("release.json").is_file()
    );
    let plan = ok(&mut nobody(&[
        "--dry-run",
        "--sysroot",
        dir.path().join("sr").to_str().unwrap(),
    ]));
    assert!(plan.contains("Plan (dry run"), "{plan}");
    assert!(!dir.path().join("sr").exists(), "--dry-run changed nothing");
    // --extract into a non-empty directory is refused.
    let o = run(&mut nobody(&["--extract", out.to_str().unwrap()]));
    assert!(
        !o.status.success() && text(&o).contains("not empty"),
        "{}",
        text(&o)
    );
    // Nothing is left in TMPDIR by any run.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with("zstack-installer."))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary directories left: {leftovers:?}"
    );
    assert_eq!(diff(&before, &host_snapshot()), Vec::<String>::new());
}

#[test]
#[ignore = "needs root and build/*.bin: run by make test"]
fn unknown_options_are_an_error_and_help_lists_every_option() {
    require_root();
    let bin = bin_path(V);
    let o = run(bin_cmd(&bin, &["--bogus"]));
    assert!(!o.status.success());
    assert!(text(&o).contains("--bogus"), "{}", text(&o));
    let help = ok(bin_cmd(&bin, &["-h"]));
    for opt in [
        "--check",
        "--info",
        "--list",
        "--extract",
        "-r <DIR>",
        "-I <IP>",
        "-z",
        "-D",
        "-k",
        "-F",
        "-q",
        "-d",
        "--sysroot",
        "--dry-run",
        "--json",
        "--host-only",
    ] {
        assert!(help.contains(opt), "-h does not list {opt}:\n{help}");
    }
}

#[test]
#[ignore = "needs root and build/*.bin: run by make test"]
fn tmpdir_on_a_noexec_mount_still_works_and_nothing_is_left_behind() {
    require_root();
    let bin = bin_path(V);
    let noexec = TmpfsMount::new("noexec,size=64m");
    let o = run(bin_cmd(&bin, &["--check"]).env("TMPDIR", noexec.path()));
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("cannot run a program from"),
        "the fallback is reported: {}",
        text(&o)
    );
    assert_eq!(
        std::fs::read_dir(noexec.path()).unwrap().count(),
        0,
        "nothing left in TMPDIR"
    );
    // A failing run cleans up too.
    let private = tempfile::tempdir().unwrap();
    let o = run(bin_cmd(&bin, &["--extract", "/proc/no/such/dir"]).env("TMPDIR", private.path()));
    assert!(!o.status.success());
    assert_eq!(
        std::fs::read_dir(private.path()).unwrap().count(),
        0,
        "nothing left after a failure"
    );
}

#[test]
#[ignore = "needs root and build/*.bin: run by make test"]
fn ctrl_c_rolls_back_and_cleans_up() {
    require_root();
    let bin = bin_path(V);
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let root = dir.path().join("root");
    let child = bin_cmd(&bin, &["--sysroot", root.to_str().unwrap()])
        .env("TMPDIR", &tmp)
        .env("ZSTACK_FAILPOINT", "config:pause")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let props = root.join("etc/zstack/zstack.properties");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !props.exists() {
        assert!(
            Instant::now() < deadline,
            "the installer never reached the config step"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // As a terminal's Ctrl-C does: SIGINT to the whole foreground process group.
    let out = signal_group(child, nix::sys::signal::Signal::SIGINT);
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("put back"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        sysroot_state(&root),
        Snapshot::new(),
        "everything the run made is removed"
    );
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "the temporary directory is removed"
    );
}

#[test]
#[ignore = "needs root and build/*.bin: run by make test"]
fn a_failure_at_any_step_leaves_the_host_as_it_was() {
    require_root();
    let bin = bin_path(V);
    for step in [
        "unpack", "current", "links", "config", "pki", "database", "user", "units", "cron",
    ] {
        // On a fresh host: nothing is left.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let o = run(
            bin_cmd(&bin, &["--sysroot", root.to_str().unwrap()]).env("ZSTACK_FAILPOINT", step)
        );
        assert_eq!(o.status.code(), Some(1), "{step}: {}", text(&o));
        assert!(
            text(&o).contains("failed") && text(&o).contains(step),
            "{step}: the message names the step: {}",
            text(&o)
        );
        assert_eq!(sysroot_state(&root), Snapshot::new(), "{step}: leftovers");

        // Over an install the operator changed: every change is put back.
        ok(bin_cmd(&bin, &["--sysroot", root.to_str().unwrap(), "-q"]));
        let props = root.join("etc/zstack/zstack.properties");
        let text_props = std::fs::read_to_string(&props)
            .unwrap()
            .replace("kvmagent.port = 7070\n", "");
        std::fs::write(&props, text_props).unwrap();
        std::fs::write(
            root.join("var/spool/cron/crontabs/root"),
            "0 1 * * * /bin/true\n",
        )
        .unwrap();
        std::fs::remove_file(root.join("etc/systemd/system/zstack-server.service")).unwrap();
        std::fs::remove_file(root.join("usr/bin/zstack-cli")).unwrap();
        let before = sysroot_state(&root);
        let o = run(
            bin_cmd(&bin, &["--sysroot", root.to_str().unwrap()]).env("ZSTACK_FAILPOINT", step)
        );
        assert_eq!(o.status.code(), Some(1), "{step}: {}", text(&o));
        assert_eq!(
            diff(&before, &sysroot_state(&root)),
            Vec::<String>::new(),
            "{step}: not rolled back"
        );
    }
}

#[test]
#[ignore = "needs root and build/*.bin: run by make test"]
fn a_second_installer_is_refused_and_names_the_first() {
    require_root();
    let bin = bin_path(V);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let first = bin_cmd(&bin, &["--sysroot", root.to_str().unwrap()])
        .env("ZSTACK_FAILPOINT", "unpack:pause")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let lock = root.join("run/lock/zstack-installer.lock");
    let deadline = Instant::now() + Duration::from_secs(30);
    let holder = loop {
        let pid = std::fs::read_to_string(&lock).unwrap_or_default();
        if !pid.trim().is_empty() && root.join("usr/local/zstack/versions/1.2.0").exists() {
            break pid.trim().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "the first installer never took the lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let before = sysroot_state(&root);
    let o = run(bin_cmd(&bin, &["--sysroot", root.to_str().unwrap()]));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("another ZStack installer is running")
            && text(&o).contains(&format!("pid {holder}")),
        "{}",
        text(&o)
    );
    assert_eq!(diff(&before, &sysroot_state(&root)), Vec::<String>::new());
    signal_group(first, nix::sys::signal::Signal::SIGINT);
    assert_eq!(sysroot_state(&root), Snapshot::new());
}

#[test]
#[ignore = "needs root and build/*.bin: run by make test"]
fn an_unsupported_os_is_refused_with_the_supported_list() {
    require_root();
    let bin = bin_path(V);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    for (os, ver) in [
        ("debian", "11"),
        ("ubuntu", "20.04"),
        ("centos", "7"),
        ("opensuse-leap", "15.5"),
    ] {
        let f = dir.path().join(format!("os-release-{os}"));
        std::fs::write(
            &f,
            format!("ID={os}\nVERSION_ID=\"{ver}\"\nPRETTY_NAME=\"{os} {ver}\"\n"),
        )
        .unwrap();
        let o =
            run(bin_cmd(&bin, &["--sysroot", root.to_str().unwrap()]).env("ZSTACK_OS_RELEASE", &f));
        assert_eq!(o.status.code(), Some(1));
        let msg = text(&o);
        assert!(
            msg.contains(&format!("{os} {ver} is not supported"))
                && msg.contains("Debian 12+")
                && msg.contains("Rocky"),
            "{msg}"
        );
        assert!(!root.exists(), "refused runs change nothing");
    }
    for (os, ver) in [("ubuntu", "22.04"), ("rocky", "9.4"), ("almalinux", "8.10")] {
        let f = dir.path().join(format!("os-release-{os}"));
        std::fs::write(&f, format!("ID={os}\nVERSION_ID=\"{ver}\"\n")).unwrap();
        let o = run(
            bin_cmd(&bin, &["--sysroot", root.to_str().unwrap(), "--dry-run"])
                .env("ZSTACK_OS_RELEASE", &f),
        );
        assert!(o.status.success(), "{os} {ver} is supported: {}", text(&o));
    }
}

#[test]
#[ignore = "needs root and build/*.bin: run by make test"]
fn too_little_disk_is_refused() {
    require_root();
    let bin = bin_path(V);
    let small = TmpfsMount::new("size=4m");
    let o = run(bin_cmd(
        &bin,
        &["--sysroot", small.path().to_str().unwrap()],
    ));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("not enough free disk space"),
        "{}",
        text(&o)
    );
    assert_eq!(
        std::fs::read_dir(small.path()).unwrap().count(),
        0,
        "nothing written"
    );
}

/// A PATH holding every program of this host but `missing`.
fn path_without(missing: &str, dir: &Path) -> String {
    let farm = dir.join("bin");
    std::fs::create_dir_all(&farm).unwrap();
    for d in [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ] {
        let Ok(rd) = std::fs::read_dir(d) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            if name == missing || farm.join(&name).exists() {
                continue;
            }
            let _ = std::os::unix::fs::symlink(e.path(), farm.join(&name));
        }
    }
    farm.display().to_string()
}

#[test]
#[ignore = "needs root and build/*.bin: run by make test"]
fn a_missing_tool_not_root_and_a_busy_port_are_refused_on_the_real_host() {
    require_root();
    let bin = bin_path(V);
    let dir = tempfile::tempdir().unwrap();
    let before = host_snapshot();

    // A missing system tool: named with the package to install.
    let o = run(bin_cmd(&bin, &["-z"]).env("PATH", path_without("dnsmasq", dir.path())));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("dnsmasq is not installed: install package dnsmasq-base"),
        "{}",
        text(&o)
    );
    assert_eq!(diff(&before, &host_snapshot()), Vec::<String>::new());

    // Not root.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.path().join("z.bin");
    std::fs::copy(&bin, &copy).unwrap();
    let o = run(Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "bash"])
        .arg(&copy)
        .env("TMPDIR", "/tmp"));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("must run as root"), "{}", text(&o));
    assert_eq!(diff(&before, &host_snapshot()), Vec::<String>::new());

    // A port in use, in a namespace of the test's own; every problem is reported together.
    let ns = NetNs::new("zst-port");
    let mut holder = ns
        .cmd("python3")
        .args(["-c", "import socket,time\ns=socket.socket()\ns.bind(('0.0.0.0',8080))\ns.listen()\nprint('up',flush=True)\ntime.sleep(60)"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "up");
    let o = run(ns
        .cmd("bash")
        .arg(&bin)
        .env("PATH", path_without("dnsmasq", &dir.path().join("p2"))));
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let msg = text(&o);
    assert!(
        msg.contains("port 8080") && msg.contains("in use by pid") && msg.contains("python3"),
        "{msg}"
    );
    assert!(
        msg.contains("dnsmasq is not installed"),
        "all problems together: {msg}"
    );
    assert_eq!(diff(&before, &host_snapshot()), Vec::<String>::new());
}

#[test]
#[ignore = "needs root and build/*.bin: run by make test; installs on this host and removes it"]
fn a_real_install_starts_answers_and_stops() {
    require_root();
    assert!(
        !installed_on_host(),
        "ZStack is already installed on this host; this test installs for real and would remove it afterwards"
    );
    let _cleanup = HostInstallGuard;
    let bin = bin_path(V);

    // A failure at the last step (start) puts everything back, services stopped.
    let before = host_snapshot();
    let o = run(bin_cmd(&bin, &["-I", "127.0.0.1"]).env("ZSTACK_FAILPOINT", "start"));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert_eq!(
        diff(&before, &host_snapshot()),
        Vec::<String>::new(),
        "a failed start is rolled back"
    );
    assert!(
        ureq_health(8080).is_err(),
        "the management node was stopped by the rollback"
    );

    let out = ok(bin_cmd(&bin, &["-I", "127.0.0.1", "--json"]));
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["services_started"], true);
    assert_eq!(summary["init"], "supervisor", "systemd is not PID 1 here");
    assert_eq!(summary["api_url"], "http://127.0.0.1:8080");
    let h = ureq_health(8080).expect("the management node answers");
    assert!(
        h.contains("\"service\":\"zstack-server\"") && h.contains("1.2.0"),
        "{h}"
    );
    // The agent speaks only HTTPS with a client certificate of the cloud: curl (OpenSSL) with
    // this host's certificate gets its health; plain HTTP gets nothing.
    let agent = agent_health().expect("the agent answers");
    assert!(agent.contains("\"service\":\"zstack-kvmagent\""), "{agent}");
    assert!(
        ureq_health(7070).is_err(),
        "no plain HTTP on the agent's port"
    );
    assert_runs_as_zstack_and_owns_its_files();

    let status: serde_json::Value =
        serde_json::from_str(&ok(Command::new("zstack-ctl").args(["status", "--json"]))).unwrap();
    for s in status["services"].as_array().unwrap() {
        assert_eq!(s["running"], true, "{status}");
        assert_eq!(s["health"]["version"], "1.2.0", "{status}");
    }
    assert_eq!(status["api"], "http://127.0.0.1:8080");
    let human = ok(Command::new("zstack-ctl").arg("status"));
    assert!(human.contains("supervised by zstack-ctl"), "{human}");

    // The units pass systemd-analyze verify with the binaries in place.
    for unit in ["zstack-server.service", "zstack-kvmagent.service"] {
        let o = run(Command::new("systemd-analyze")
            .args(["verify", &format!("/etc/systemd/system/{unit}")]));
        let msg = text(&o);
        assert!(o.status.success(), "systemd-analyze verify {unit}: {msg}");
        assert!(!msg.contains(unit), "warnings about {unit}: {msg}");
    }

    // The crontab line, once.
    let cron = ok(Command::new("crontab").arg("-l"));
    assert_eq!(cron.matches("zstack-ctl dump_mysql").count(), 1, "{cron}");
    assert!(cron.contains(CRON_LINE));

    // A re-run changes nothing: the services keep their pids.
    let pids = |s: &serde_json::Value| -> Vec<u64> {
        s["services"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["pid"].as_u64().unwrap_or(0))
            .collect()
    };
    let again: serde_json::Value = serde_json::from_str(&ok(bin_cmd(&bin, &["--json"]))).unwrap();
    assert_eq!(again["changed"], false, "{again}");
    let status2: serde_json::Value =
        serde_json::from_str(&ok(Command::new("zstack-ctl").args(["status", "--json"]))).unwrap();
    assert_eq!(pids(&status), pids(&status2));

    // The supervisor restarts a service that dies.
    let server_pid = status["services"][0]["pid"].as_u64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s: serde_json::Value =
            serde_json::from_str(&ok(Command::new("zstack-ctl").args(["status", "--json"])))
                .unwrap();
        let p = s["services"][0]["pid"].as_u64();
        if s["services"][0]["health"]["status"] == "ok"
            && p.is_some()
            && p != Some(server_pid as u64)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the management node was not restarted: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // zstack-ctl stop stops both; status says so; start brings them back.
    ok(Command::new("zstack-ctl").arg("stop"));
    let stopped: serde_json::Value =
        serde_json::from_str(&ok(Command::new("zstack-ctl").args(["status", "--json"]))).unwrap();
    for s in stopped["services"].as_array().unwrap() {
        assert_eq!(s["running"], false, "{stopped}");
    }
    assert!(ok(Command::new("zstack-ctl").arg("status")).contains("stopped"));
    assert!(ureq_health(8080).is_err());
    ok(Command::new("zstack-ctl").arg("start_node"));
    ureq_health(8080).expect("answers after start_node");
    let pid_of = |s: &serde_json::Value| s["services"][0]["pid"].as_u64();
    let before_restart: serde_json::Value =
        serde_json::from_str(&ok(Command::new("zstack-ctl").args(["status", "--json"]))).unwrap();
    ok(Command::new("zstack-ctl").arg("restart"));
    let after_restart: serde_json::Value =
        serde_json::from_str(&ok(Command::new("zstack-ctl").args(["status", "--json"]))).unwrap();
    assert_ne!(
        pid_of(&before_restart),
        pid_of(&after_restart),
        "restart runs a new process"
    );
    assert_eq!(after_restart["services"][0]["health"]["status"], "ok");
    ok(Command::new("zstack-ctl").arg("stop_node"));
    assert!(ureq_health(8080).is_err(), "stop_node stops it");
    ok(Command::new("zstack-ctl").arg("start"));
    ureq_health(8080).expect("answers after start");
    ok(Command::new("zstack-ctl").args(["stop", "--service", "zstack-server"]));
    assert!(ureq_health(8080).is_err());
    agent_health().expect("the agent still runs");
}

/// GET https://127.0.0.1:7070/health with curl, as this host (its certificate and key, the
/// cloud's CA).
fn agent_health() -> Result<String, String> {
    let o = run(Command::new("curl").args([
        "-sf",
        "--max-time",
        "3",
        "--cacert",
        "/etc/zstack/pki/ca.pem",
        "--cert",
        "/etc/zstack/pki/host.pem",
        "--key",
        "/etc/zstack/pki/host.key",
        "https://127.0.0.1:7070/health",
    ]));
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(text(&o))
    }
}

/// The user zstack is a system user without a login; the management node runs as it (real,
/// effective, saved and fs uid), the agent as root; the management node's files are its own,
/// zstack.properties root's and readable by its group only, the agent's state and the backups
/// stay root's.
fn assert_runs_as_zstack_and_owns_its_files() {
    use std::os::unix::fs::MetadataExt;
    let passwd = ok(Command::new("getent").args(["passwd", "zstack"]));
    let fields: Vec<&str> = passwd.trim().split(':').collect();
    assert_eq!(fields.len(), 7, "{passwd}");
    let (uid, gid): (u32, u32) = (fields[2].parse().unwrap(), fields[3].parse().unwrap());
    assert!(uid < 1000, "a system user: {passwd}");
    assert_eq!(fields[5], "/var/lib/zstack", "{passwd}");
    assert!(
        fields[6].ends_with("nologin") || fields[6] == "/bin/false",
        "{passwd}"
    );
    let group = ok(Command::new("getent").args(["group", "zstack"]));
    assert!(group.contains(&format!(":{gid}:")), "{group}");

    let status: serde_json::Value =
        serde_json::from_str(&ok(Command::new("zstack-ctl").args(["status", "--json"]))).unwrap();
    let pid_of = |name: &str| {
        status["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["service"] == name)
            .and_then(|s| s["pid"].as_u64())
            .unwrap_or_else(|| panic!("{name} has no pid: {status}")) as u32
    };
    assert_eq!(process_uids(pid_of("zstack-server")), vec![uid; 4]);
    assert_eq!(process_uids(pid_of("zstack-kvmagent")), vec![0; 4]);
    let groups = std::fs::read_to_string(format!("/proc/{}/status", pid_of("zstack-server")))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Groups:"))
        .unwrap()
        .to_string();
    assert_eq!(groups.trim(), "Groups:", "no supplementary group of root's");
    let no_new_privs = std::fs::read_to_string(format!("/proc/{}/status", pid_of("zstack-server")))
        .unwrap()
        .lines()
        .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["NoNewPrivs:", "1"]);
    assert!(no_new_privs, "as the unit's NoNewPrivileges=yes");

    let owner = |p: &str| {
        let m = std::fs::metadata(p).unwrap_or_else(|e| panic!("{p}: {e}"));
        (m.uid(), m.gid(), m.mode() & 0o7777)
    };
    assert_eq!(owner("/var/lib/zstack"), (uid, gid, 0o755));
    assert_eq!(owner("/var/lib/zstack/zstack.db"), (uid, gid, 0o600));
    assert_eq!(
        owner("/var/log/zstack/management-server.log"),
        (uid, gid, 0o640)
    );
    assert_eq!(owner("/etc/zstack/zstack.properties"), (0, gid, 0o640));
    assert_eq!(owner("/var/lib/zstack/mysql-backup"), (0, 0, 0o700));
    assert_eq!(owner("/var/log/zstack").0, 0);
    assert_eq!(owner("/var/lib/zstack/kvmagent").0, 0, "the agent's state");
}

/// GET /health on a local port with curl (the tests have no HTTP client of their own).
fn ureq_health(port: u16) -> Result<String, String> {
    let o = run(Command::new("curl").args([
        "-sf",
        "--max-time",
        "3",
        &format!("http://127.0.0.1:{port}/health"),
    ]));
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(text(&o))
    }
}

#[test]
#[ignore = "needs root and build/*.bin: run by make test"]
fn host_only_install_root_drop_db_and_bad_ip() {
    require_root();
    let bin = bin_path(V);
    let dir = tempfile::tempdir().unwrap();

    // --host-only: the agent alone; no database, no server unit, no cron line.
    let root = dir.path().join("agent");
    let out = ok(bin_cmd(
        &bin,
        &["--sysroot", root.to_str().unwrap(), "--host-only", "--json"],
    ));
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["mode"], "host-only");
    assert!(root
        .join("etc/systemd/system/zstack-kvmagent.service")
        .exists());
    assert!(!root
        .join("etc/systemd/system/zstack-server.service")
        .exists());
    assert!(!root.join("var/lib/zstack/zstack.db").exists());
    assert!(!root.join("var/spool/cron/crontabs/root").exists());
    let props = std::fs::read_to_string(root.join("etc/zstack/zstack.properties")).unwrap();
    // No shared secret any more, and no CA on a compute host: its certificate comes when a
    // management node adds it.
    assert!(!props.contains("kvmagent.secret"), "{props}");
    assert!(!root.join("etc/zstack/ca").exists());
    assert!(!root.join("etc/zstack/pki/host.pem").exists());
    // A compute host has no accounts: no admin password on it, none in the summary.
    assert!(!props.contains("admin.password"), "{props}");
    assert!(s["admin_password"].is_null(), "{out}");
    assert_eq!(s["units"], serde_json::json!(["zstack-kvmagent"]), "{out}");
    // The summary an operator reads names the agent's unit and never the server's.
    let out = ok(bin_cmd(
        &bin,
        &["--sysroot", root.to_str().unwrap(), "--host-only"],
    ));
    assert!(out.contains("units:          zstack-kvmagent"), "{out}");
    assert!(!out.contains("zstack-server"), "{out}");
    assert!(
        !std::fs::read_to_string(root.join("etc/zstack/zstack.properties"))
            .unwrap()
            .contains("admin.password")
    );

    // -r DIR: everything points into the other install root.
    let root = dir.path().join("opt");
    let out = ok(bin_cmd(
        &bin,
        &["--sysroot", root.to_str().unwrap(), "-r", "/opt/zs", "-q"],
    ));
    assert!(
        out.contains("units:          zstack-server and zstack-kvmagent"),
        "{out}"
    );
    assert!(
        std::fs::read_to_string(root.join("etc/zstack/zstack.properties"))
            .unwrap()
            .contains("admin.password = ")
    );
    assert!(root.join("opt/zs/versions/1.2.0/bin/zstack").is_file());
    assert_eq!(
        std::fs::read_link(root.join("usr/bin/zstack-ctl")).unwrap(),
        PathBuf::from("/opt/zs/current/bin/zstack-ctl")
    );
    let unit =
        std::fs::read_to_string(root.join("etc/systemd/system/zstack-server.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/opt/zs/current/bin/zstack-server"),
        "{unit}"
    );

    // -D: the old database is kept aside in mysql-backup, a new one made.
    let db = root.join("var/lib/zstack/zstack.db");
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch("CREATE TABLE marker (x INTEGER); INSERT INTO marker VALUES (42);")
            .unwrap();
    }
    let out = ok(bin_cmd(
        &bin,
        &[
            "--sysroot",
            root.to_str().unwrap(),
            "-r",
            "/opt/zs",
            "-D",
            "--json",
        ],
    ));
    assert!(out.contains("the old database was moved to"), "{out}");
    let c = rusqlite::Connection::open(&db).unwrap();
    let n: i64 = c
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name='marker'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 0, "a new database");
    let dropped: Vec<_> = std::fs::read_dir(root.join("var/lib/zstack/mysql-backup"))
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("zstack-dropped-")
        })
        .collect();
    assert_eq!(dropped.len(), 1, "the dropped DB is kept");
    let old = rusqlite::Connection::open(dropped[0].path()).unwrap();
    let x: i64 = old
        .query_row("SELECT x FROM marker", [], |r| r.get(0))
        .unwrap();
    assert_eq!(x, 42);

    // -D and -k together, a bad -I, a relative -r: refused, nothing changed.
    let fresh = dir.path().join("fresh");
    for args in [
        vec!["-D", "-k"],
        vec!["-I", "10.0.0.300"],
        vec!["-r", "relative/root"],
    ] {
        let mut a = vec!["--sysroot", fresh.to_str().unwrap()];
        a.extend(args.iter().copied());
        let o = run(bin_cmd(&bin, &a));
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", text(&o));
        assert!(text(&o).contains("preflight found"), "{}", text(&o));
        assert!(!fresh.exists());
    }
}

#[test]
#[ignore = "needs root and build/*.bin: run by make test"]
fn an_older_database_needs_k_to_be_kept_and_migrated() {
    require_root();
    let bin = bin_path(V);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("var/lib/zstack")).unwrap();
    let db = root.join("var/lib/zstack/zstack.db");
    make_old_db(&db, "1.1.0");
    let before = sysroot_state(&root);
    let o = run(bin_cmd(&bin, &["--sysroot", root.to_str().unwrap()]));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let msg = text(&o);
    assert!(
        msg.contains("holds a ZStack 1.1.0 database")
            && msg.contains("-u")
            && msg.contains("-k")
            && msg.contains("-D"),
        "{msg}"
    );
    assert_eq!(
        diff(&before, &sysroot_state(&root)),
        Vec::<String>::new(),
        "refused: nothing changed"
    );

    let out = ok(bin_cmd(
        &bin,
        &["--sysroot", root.to_str().unwrap(), "-k", "--json"],
    ));
    assert!(out.contains("migrated from schema 1.1.0 to 1.2.0"), "{out}");
    let c = rusqlite::Connection::open(&db).unwrap();
    let mode: String = c
        .query_row(
            "SELECT value FROM global_config WHERE name = 'vm.cacheMode'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(mode, "writethrough");
    let zone: String = c
        .query_row("SELECT name FROM zone WHERE uuid = 'z0'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(zone, "old-zone", "the operator's data is kept");
    assert!(
        !std::fs::read_dir(root.join("var/lib/zstack/mysql-backup"))
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().contains("pre-install")),
        "the safety copy is removed after success"
    );
}

#[test]
#[ignore = "needs root and build/*.bin: run by make test"]
fn a_run_killed_half_way_is_rolled_back_by_the_next_one() {
    require_root();
    let bin = bin_path(V);
    for step in ["unpack", "config", "pki", "database", "units", "cron"] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        // An operator's install to come back to.
        ok(bin_cmd(&bin, &["--sysroot", root.to_str().unwrap(), "-q"]));
        let props = root.join("etc/zstack/zstack.properties");
        std::fs::write(
            &props,
            std::fs::read_to_string(&props)
                .unwrap()
                .replace("kvmagent.port = 7070\n", ""),
        )
        .unwrap();
        std::fs::remove_file(root.join("etc/systemd/system/zstack-server.service")).unwrap();
        std::fs::write(
            root.join("var/spool/cron/crontabs/root"),
            "0 1 * * * /bin/true\n",
        )
        .unwrap();
        let before = sysroot_state(&root);

        let child = bin_cmd(&bin, &["--sysroot", root.to_str().unwrap()])
            .env("ZSTACK_FAILPOINT", format!("{step}:pause"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        let journal = root.join("var/lib/zstack-installer.journal");
        wait_for_pause(&root.join("var/log/zstack-installer.log"), step);
        // kill -9, the whole run at once: nothing gets to clean up.
        signal_group(child, nix::sys::signal::Signal::SIGKILL);
        assert!(journal.exists(), "{step}: the journal survives the kill");

        // A dry run only reports it.
        let o = run(bin_cmd(
            &bin,
            &["--sysroot", root.to_str().unwrap(), "--dry-run"],
        ));
        assert!(text(&o).contains("did not finish"), "{step}: {}", text(&o));
        assert!(journal.exists());
        // The next run puts everything back first, before its own checks: one that preflight
        // refuses shows the host exactly as it was before the killed run.
        let os = dir.path().join("os-release");
        std::fs::write(&os, "ID=debian\nVERSION_ID=\"11\"\n").unwrap();
        let o = run(
            bin_cmd(&bin, &["--sysroot", root.to_str().unwrap()]).env("ZSTACK_OS_RELEASE", &os)
        );
        assert_eq!(o.status.code(), Some(1), "{step}: {}", text(&o));
        assert!(
            text(&o).contains("did not finish; putting back") && text(&o).contains("rolled back"),
            "{step}: {}",
            text(&o)
        );
        assert!(!journal.exists(), "{step}: the journal is gone once done");
        assert_eq!(
            diff(&before, &sysroot_state(&root)),
            Vec::<String>::new(),
            "{step}: not rolled back"
        );
        // And a normal run then repairs the operator's removals, keeping the edits.
        ok(bin_cmd(&bin, &["--sysroot", root.to_str().unwrap(), "-q"]));
        assert!(root
            .join("etc/systemd/system/zstack-server.service")
            .exists());
        assert_eq!(
            std::fs::read_to_string(root.join("var/spool/cron/crontabs/root")).unwrap(),
            format!("0 1 * * * /bin/true\n{CRON_LINE}\n")
        );
    }
}

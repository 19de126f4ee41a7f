//! `zstack-ctl`, the operator's tool: start, stop and watch the services, install the backup
//! cron line, and (in later commands) back up, restore and upgrade the database.

pub mod backup;
pub mod configure;
pub mod cron;
pub mod host_certificate;
pub mod lifecycle;
pub mod restore;
pub mod server_files;
pub mod upgrade_db;

use std::path::Path;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use serde_json::json;
use zstack_common::service::{keys, InitSystem, Service};
use zstack_common::templates::Templates;
use zstack_common::{Layout, Properties, Release};

#[derive(Parser, Debug)]
#[command(
    name = "zstack-ctl",
    about = "ZStack operator tool",
    disable_version_flag = true
)]
struct Cli {
    /// Print the result as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start the management node and the host agent installed here.
    #[command(alias = "start_node")]
    Start(ServiceArgs),
    /// Stop them (running VMs are never stopped).
    #[command(alias = "stop_node")]
    Stop(ServiceArgs),
    /// Stop, then start.
    Restart(ServiceArgs),
    /// Show whether each service runs, its pid, version and address, and the database.
    Status,
    /// Print the version of this program and of the installed release.
    Version,
    /// Back up the database and zstack.properties (consistent while the node runs), verified, rotated.
    #[command(name = "dump_mysql")]
    DumpMysql {
        /// The filename you want to save the database, default is 'zstack-backup-db'
        #[arg(long = "file-name", value_name = "FILE_NAME", default_value = backup::DEFAULT_FILE_NAME)]
        file_name: String,
        /// The amount of backup files you want to keep, older backup files will be deleted, default number is 60
        #[arg(long = "keep-amount", value_name = "KEEP_AMOUNT", default_value_t = backup::DEFAULT_KEEP_AMOUNT)]
        keep_amount: usize,
    },
    /// Restore a backup made by dump_mysql (.zst or .gz): verified first, the current DB backed up first.
    #[command(name = "restore_mysql")]
    RestoreMysql {
        /// The backup file.
        #[arg(long = "from-file", value_name = "FILE")]
        from_file: std::path::PathBuf,
    },
    /// Set keys of zstack.properties: zstack-ctl configure key=value ...
    Configure { pairs: Vec<String> },
    /// Print zstack.properties (secrets masked unless --show-secrets).
    #[command(name = "show_configuration")]
    ShowConfiguration {
        #[arg(long)]
        show_secrets: bool,
    },
    /// Print the end of a service's log and follow it.
    Taillog {
        /// zstack-server (default) or zstack-kvmagent.
        #[arg(long, default_value = "zstack-server")]
        service: String,
        /// Lines to print first.
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: usize,
        /// Print and exit instead of following.
        #[arg(long)]
        no_follow: bool,
    },
    /// Apply the installed release's pending migrations to the database (after a verified backup).
    #[command(name = "upgrade_db")]
    UpgradeDb {
        /// List the pending migrations and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Run even if the management node is running.
        #[arg(long)]
        force: bool,
        /// Skip the backup taken first.
        #[arg(long)]
        no_backup: bool,
    },
    /// Print the /etc/fstab line for a shared mount point primary storage (nothing is changed).
    #[command(name = "fstab_line")]
    FstabLine {
        /// The storage's mount point, as given to AddSharedMountPointPrimaryStorage.
        #[arg(long)]
        url: String,
        /// What to mount there, e.g. nfs-server:/export/zstack or /dev/disk/by-uuid/...
        #[arg(long)]
        source: String,
        /// The filesystem type, e.g. nfs, glusterfs, ocfs2, ext4.
        #[arg(long, default_value = "nfs")]
        fstype: String,
    },
    /// Add the periodic dump_mysql line to root's crontab, unless one is there.
    #[command(name = "install_cron")]
    InstallCron,
    /// Make this host's key (/etc/zstack/pki/host.key) if it has none and print a certificate
    /// request for the host at IP (run by the management node while it adds the host).
    #[command(name = "host_certificate_request")]
    HostCertificateRequest {
        /// The address the management node reaches this host at.
        #[arg(long)]
        ip: String,
    },
    /// Install this host's certificate: reads {"certificate": PEM, "ca": PEM} on standard input,
    /// checks it is for this host's key and of that CA's cloud, and prints its serial.
    #[command(name = "host_certificate_install")]
    HostCertificateInstall,
    /// Run one service in the foreground and restart it when it dies (used where systemd is not PID 1).
    #[command(hide = true)]
    Supervise { service: String },
    /// Make the user zstack if missing and give it the management node's files (run as root by
    /// the unit's ExecStartPre and before every start).
    #[command(name = "own_server_files", hide = true)]
    OwnServerFiles,
}

#[derive(clap::Args, Debug)]
struct ServiceArgs {
    /// Only this service: zstack-server or zstack-kvmagent.
    #[arg(long)]
    service: Option<String>,
    /// Seconds to wait for each service.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

fn parse_service(name: &str) -> anyhow::Result<Service> {
    Service::ALL
        .into_iter()
        .find(|s| s.name() == name)
        .with_context(|| format!("unknown service {name:?}: use zstack-server or zstack-kvmagent"))
}

fn selected(layout: &Layout, args: &ServiceArgs) -> anyhow::Result<Vec<Service>> {
    let installed = lifecycle::installed_services(layout);
    match &args.service {
        Some(name) => {
            let s = parse_service(name)?;
            if !installed.contains(&s) {
                bail!("{name} is not installed on this host");
            }
            Ok(vec![s])
        }
        None if installed.is_empty() => bail!(
            "ZStack is not installed here (no unit file in {}); run the installer first",
            layout.host(layout.systemd_dir()).display()
        ),
        None => Ok(installed),
    }
}

fn load_props(layout: &Layout) -> anyhow::Result<Properties> {
    Ok(Properties::load(&layout.host(layout.properties_file()))?)
}

/// Entry point of `zstack-ctl`; returns the process exit code.
pub fn main_with_args(args: Vec<std::ffi::OsString>) -> i32 {
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let json = cli.json;
    match run(cli) {
        Ok(()) => 0,
        Err(e) => {
            if json {
                println!("{}", json!({"ok": false, "error": format!("{e:#}")}));
            } else {
                eprintln!("zstack-ctl: error: {e:#}");
            }
            1
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let layout = Layout::from_env();
    let json = cli.json;
    match cli.command {
        Cmd::Start(args) => {
            let services = selected(&layout, &args)?;
            let props = load_props(&layout)?;
            let init = InitSystem::detect(&layout);
            let started = lifecycle::start(&layout, &props, &services, secs(args.timeout))?;
            report_changes(json, init, &started, "started", "already running");
        }
        Cmd::Stop(args) => {
            let services = selected(&layout, &args)?;
            let init = InitSystem::detect(&layout);
            let stopped = lifecycle::stop(&layout, &services, secs(args.timeout))?;
            report_changes(json, init, &stopped, "stopped", "was not running");
        }
        Cmd::Restart(args) => {
            let services = selected(&layout, &args)?;
            let props = load_props(&layout)?;
            let init = InitSystem::detect(&layout);
            lifecycle::stop(&layout, &services, secs(args.timeout))?;
            let started = lifecycle::start(&layout, &props, &services, secs(args.timeout))?;
            report_changes(json, init, &started, "restarted", "restarted");
        }
        Cmd::Status => status(&layout, json)?,
        Cmd::Version => {
            let this = Release::of_running_program();
            let installed = Release::current(&layout);
            if json {
                println!(
                    "{}",
                    json!({"ok": true, "program": this.map(|r| r.version), "installed": installed.map(|r| r.version)})
                );
            } else {
                println!(
                    "zstack-ctl {}\ninstalled release: {}",
                    this.map(|r| r.version)
                        .unwrap_or_else(|| "(outside a release tree)".into()),
                    installed
                        .map(|r| r.version)
                        .unwrap_or_else(|| "none".into())
                );
            }
        }
        Cmd::FstabLine {
            url,
            source,
            fstype,
        } => {
            let line = fstab_line(&layout, &url, &source, &fstype)?;
            if json {
                println!("{}", json!({"ok": true, "line": line}));
            } else {
                println!("{line}");
            }
        }
        Cmd::InstallCron => {
            let templates = release_templates(&layout)?;
            let change = cron::install(&layout, &templates)?;
            if json {
                println!("{}", json!({"ok": true, "crontab": change}));
            } else {
                match change {
                    cron::CronChange::Added { line } => println!("added to root's crontab: {line}"),
                    cron::CronChange::AlreadyPresent { line } => {
                        println!("root's crontab already runs dump_mysql, left as it is: {line}")
                    }
                }
            }
        }
        Cmd::HostCertificateRequest { ip } => {
            let r = host_certificate::request(&layout, &ip)?;
            if json {
                println!(
                    "{}",
                    json!({"ok": true, "request": r.request, "certificate": r.certificate})
                );
            } else {
                print!("{}", r.request);
            }
        }
        Cmd::HostCertificateInstall => {
            let serial = host_certificate::install(&layout, std::io::stdin().lock())?;
            if json {
                println!("{}", json!({"ok": true, "serial": serial}));
            } else {
                println!("{serial}");
            }
        }
        Cmd::Supervise { service } => lifecycle::supervise(&layout, parse_service(&service)?)?,
        Cmd::OwnServerFiles => {
            let changes = server_files::give_server_its_files(&layout)?;
            for c in &changes {
                println!(
                    "{}: owner {}:{} mode {:o}",
                    c.path.display(),
                    c.after.uid,
                    c.after.gid,
                    c.after.mode
                );
            }
        }
        Cmd::DumpMysql {
            file_name,
            keep_amount,
        } => {
            let r = backup::dump(&layout, &file_name, keep_amount)?;
            if json {
                println!("{}", json!({"ok": true, "backup": r}));
            } else {
                println!(
                    "backup written and verified: {} ({})",
                    r.file.display(),
                    human_size(r.size)
                );
                if !r.removed.is_empty() {
                    println!(
                        "removed {} older backup(s) named {file_name} (keeping {keep_amount})",
                        r.removed.len()
                    );
                }
            }
        }
        Cmd::RestoreMysql { from_file } => {
            let r = restore::restore(&layout, &from_file)?;
            if json {
                println!("{}", json!({"ok": true, "restore": r}));
            } else {
                println!("restored {} (made {})", r.from.display(), r.meta.created);
                if let Some(s) = &r.safety_backup {
                    println!(
                        "the database as it was before is backed up in {}",
                        s.display()
                    );
                }
                if let Some(v) = &r.migrated_from {
                    println!("migrated the restored database from schema {v}");
                }
                if r.restarted {
                    println!("the management node was restarted");
                }
            }
        }
        Cmd::UpgradeDb {
            dry_run,
            force,
            no_backup,
        } => {
            let r = upgrade_db::upgrade_db(&layout, dry_run, force, no_backup)?;
            if json {
                println!("{}", json!({"ok": true, "upgrade_db": r}));
            } else if r.pending.is_empty() {
                println!("the database is at schema {}: nothing to do", r.to);
            } else {
                if let Some(b) = &r.backup {
                    println!("backed up to {}", b.display());
                }
                println!(
                    "{} schema {} -> {}: {}",
                    if r.applied {
                        "migrated"
                    } else {
                        "would migrate (dry run)"
                    },
                    r.from.as_deref().unwrap_or("none"),
                    r.to,
                    r.pending.join(", ")
                );
            }
        }
        Cmd::Configure { pairs } => {
            let changed = configure::configure(&layout, &pairs)?;
            if json {
                println!("{}", json!({"ok": true, "changed": changed}));
            } else if changed.is_empty() {
                println!("nothing changed: the values were already set");
            } else {
                println!(
                    "set {}; restart to apply: zstack-ctl restart",
                    changed.join(", ")
                );
            }
        }
        Cmd::ShowConfiguration { show_secrets } => {
            let entries = configure::show(&layout, show_secrets)?;
            if json {
                let m: serde_json::Map<_, _> = entries
                    .into_iter()
                    .map(|(k, v)| (k, serde_json::Value::String(v)))
                    .collect();
                println!("{}", json!({"ok": true, "properties": m}));
            } else {
                for (k, v) in entries {
                    println!("{k} = {v}");
                }
            }
        }
        Cmd::Taillog {
            service,
            lines,
            no_follow,
        } => {
            let s = parse_service(&service)?;
            taillog(&layout.host(s.log_file(&layout)), lines, !no_follow)?;
        }
    }
    Ok(())
}

fn human_age(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn human_size(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / 1048576.0)
    } else {
        format!("{:.1} KiB", n as f64 / 1024.0)
    }
}

/// Prints the last `lines` lines of `path`, then (with `follow`) what is appended, until killed.
fn taillog(path: &Path, lines: usize, follow: bool) -> anyhow::Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // The tail and the follow start from one length, so no line written in between is lost.
    let mut head = Vec::new();
    f.read_to_end(&mut head)?;
    let mut pos = head.len() as u64;
    let text = String::from_utf8_lossy(&head);
    let all: Vec<&str> = text.lines().collect();
    println!("{}", all[all.len().saturating_sub(lines)..].join("\n"));
    if !follow {
        return Ok(());
    }
    let mut buf = Vec::new();
    loop {
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if len < pos {
            // Truncated or rotated: start from the top of the new file.
            f = std::fs::File::open(path)?;
            pos = 0;
        }
        if len > pos {
            f.seek(SeekFrom::Start(pos))?;
            buf.clear();
            Read::by_ref(&mut f).take(len - pos).read_to_end(&mut buf)?;
            pos = len;
            std::io::stdout().write_all(&buf)?;
            std::io::stdout().flush()?;
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

fn secs(s: u64) -> std::time::Duration {
    std::time::Duration::from_secs(s)
}

/// The templates of the release this program belongs to.
fn release_templates(layout: &Layout) -> anyhow::Result<Templates> {
    let exe = std::env::current_exe()?.canonicalize()?;
    let tree = exe
        .parent()
        .and_then(Path::parent)
        .context("cannot locate the release tree")?;
    let dir = tree.join("templates");
    let dir = if dir.is_dir() {
        dir
    } else {
        layout.host(layout.current_link().join("templates"))
    };
    Ok(Templates::load(&dir)?)
}

fn report_changes(
    json: bool,
    init: InitSystem,
    changes: &[(Service, bool)],
    did: &str,
    didnt: &str,
) {
    if json {
        let items: Vec<_> = changes
            .iter()
            .map(|(s, changed)| json!({"service": s.name(), "changed": changed}))
            .collect();
        println!("{}", json!({"ok": true, "init": init, "services": items}));
        return;
    }
    if init == InitSystem::Supervisor {
        println!("systemd is not PID 1 here: zstack-ctl supervises the services itself");
    }
    for (s, changed) in changes {
        println!("{}: {}", s.name(), if *changed { did } else { didnt });
    }
}

/// The fstab line for a shared mount point: `_netdev` waits for the network, `nofail` lets the
/// host boot without the storage (the agent then refuses it, and its unit waits for the mount).
fn fstab_line(layout: &Layout, url: &str, source: &str, fstype: &str) -> anyhow::Result<String> {
    render_fstab_line(&release_templates(layout)?, url, source, fstype)
}

fn render_fstab_line(
    templates: &Templates,
    url: &str,
    source: &str,
    fstype: &str,
) -> anyhow::Result<String> {
    let ok_path = url.starts_with('/')
        && (url == "/" || !url.ends_with('/'))
        && !url.split('/').any(|c| c == "." || c == "..")
        && !url.contains(char::is_whitespace);
    if !ok_path {
        bail!("--url {url:?} must be an absolute, normalised path without spaces, e.g. /zstack_ps");
    }
    for (what, v) in [("--source", source), ("--fstype", fstype)] {
        if v.is_empty() || v.contains(char::is_whitespace) || v.contains('#') {
            bail!("{what} {v:?} must be non-empty, without spaces or #");
        }
    }
    let options = if matches!(fstype, "ext4" | "xfs" | "btrfs") {
        "defaults,nofail"
    } else {
        "defaults,_netdev,nofail"
    };
    let line = templates.render(
        "fstab/smp.fstab.tera",
        &json!({"source": source, "url": url, "fstype": fstype, "options": options}),
    )?;
    Ok(line.trim().to_string())
}

fn status(layout: &Layout, json: bool) -> anyhow::Result<()> {
    let services = lifecycle::installed_services(layout);
    if services.is_empty() {
        bail!("ZStack is not installed here; run the installer first");
    }
    let props = load_props(layout)?;
    let init = InitSystem::detect(layout);
    let release = Release::current(layout);
    let statuses = lifecycle::status(layout, &props, &services);
    let ip = props
        .get(keys::MANAGEMENT_IP)
        .unwrap_or("127.0.0.1")
        .to_string();
    let api = Service::Server
        .port(&props)
        .map(|p| format!("http://{ip}:{p}"))
        .ok();
    // The dashboard came with 1.2.0.
    let dashboard = release
        .as_ref()
        .and_then(|r| r.semver().ok())
        .filter(|v| *v >= semver::Version::new(1, 2, 0))
        .and_then(|_| zstack_common::service::dashboard_port(&props).ok())
        .map(|p| format!("http://{ip}:{p}"));
    let db = layout.host(layout.db_file());
    let db_size = std::fs::metadata(&db).ok().map(|m| m.len());
    let last_backup = backup::latest_backup(&layout.host(layout.backup_dir()));
    let backup_age = last_backup.as_ref().map(|b| {
        (chrono::Local::now().naive_local() - b.taken)
            .num_seconds()
            .max(0)
    });
    if json {
        println!(
            "{}",
            json!({
                "ok": true,
                "version": release.as_ref().map(|r| r.version.clone()),
                "init": init,
                "api": api,
                "dashboard": dashboard,
                "db": {"path": db, "size": db_size},
                "last_backup": last_backup.as_ref().map(|b| json!({"path": b.path, "age_seconds": backup_age})),
                "services": statuses,
            })
        );
        return Ok(());
    }
    println!(
        "ZStack {} at {}",
        release
            .map(|r| r.version)
            .unwrap_or_else(|| "(no release is current)".into()),
        layout.host(layout.current_link()).display()
    );
    match init {
        InitSystem::Systemd => println!("services: managed by systemd"),
        InitSystem::Supervisor => {
            println!("services: supervised by zstack-ctl (systemd is not PID 1 here)")
        }
    }
    for st in &statuses {
        let state = match (&st.pid, &st.health, &st.health_error) {
            (None, _, _) => "stopped".to_string(),
            (Some(pid), Some(h), _) if h.status == lifecycle::WAITING_TO_JOIN => format!(
                "running, pid {pid}, version {}, waiting to be added to a cloud (no certificate \
                 yet: AddKVMHost on the management node)",
                h.version
            ),
            (Some(pid), Some(h), _) => format!("running, pid {pid}, version {}", h.version),
            (Some(pid), None, Some(e)) => format!("running, pid {pid}, NOT ANSWERING: {e}"),
            (Some(pid), None, None) => format!("running, pid {pid}"),
        };
        println!("{:<17} {state}", format!("{}:", st.service));
    }
    if services.contains(&Service::Server) {
        if let Some(api) = api {
            println!("{:<17} {api}", "API:");
        }
        if let Some(url) = dashboard {
            println!("{:<17} {url}", "dashboard:");
        }
        match db_size {
            Some(size) => println!(
                "{:<17} {} ({:.1} MiB)",
                "database:",
                db.display(),
                size as f64 / 1048576.0
            ),
            None => println!("{:<17} {} (missing)", "database:", db.display()),
        }
        match (&last_backup, backup_age) {
            (Some(b), Some(age)) => println!(
                "{:<17} {} ({} ago)",
                "last backup:",
                b.path.display(),
                human_age(age)
            ),
            _ => println!("{:<17} none yet (zstack-ctl dump_mysql)", "last backup:"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_fstab_line_of_a_shared_mount_point() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../templates");
        let t = zstack_common::templates::Templates::load(&dir).unwrap();
        assert_eq!(
            super::render_fstab_line(&t, "/zstack_ps", "nfs1:/export/zs", "nfs").unwrap(),
            "nfs1:/export/zs /zstack_ps nfs defaults,_netdev,nofail 0 0"
        );
        assert!(super::render_fstab_line(&t, "zstack_ps", "x", "nfs").is_err());
        assert!(super::render_fstab_line(&t, "/a/../b", "x", "nfs").is_err());
        assert!(super::render_fstab_line(&t, "/ps", "two words", "nfs").is_err());
    }
}

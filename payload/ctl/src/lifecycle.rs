//! Starting, stopping and watching the services.
//!
//! Where systemd is PID 1 the units are driven with `systemctl`, and systemd does the
//! supervising. Everywhere else (containers, hosts with another init) `zstack-ctl` is the
//! supervisor: `start` launches one detached `zstack-ctl supervise <service>` process per service,
//! which runs the service, restarts it with back-off when it dies, and on SIGTERM stops it. Both
//! write pid files under `/run/zstack`, and every pid read back is checked against
//! `/proc/<pid>/cmdline` so that a recycled pid is never signalled.
//!
//! From 1.2.0 the management node runs as the user `zstack` in both modes: its unit says
//! `User=zstack` (with systemd's sandboxing), and the supervisor drops to that user (groups,
//! gid, uid, and no_new_privs, as `NoNewPrivileges=yes`) before it runs the program. Either way
//! the user gets its files first ([`crate::server_files`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Serialize;
use zstack_common::health::{self, Health};
use zstack_common::logfile::LogFile;
use zstack_common::server_files::{runs_as_server_user, SERVER_HOME, SERVER_USER};
use zstack_common::service::{InitSystem, Service};
use zstack_common::{Layout, Properties, Release};

/// How long `start` waits for a service to answer its health check.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `stop` waits for a service to exit before killing it.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// The services installed on this host: those whose unit file is in place (an all-in-one
/// install has both, `--host-only` only the agent).
pub fn installed_services(layout: &Layout) -> Vec<Service> {
    Service::ALL
        .into_iter()
        .filter(|s| layout.host(layout.systemd_dir().join(s.unit())).exists())
        .collect()
}

/// The state of one service as `status` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    pub service: &'static str,
    pub running: bool,
    pub pid: Option<u32>,
    pub health: Option<Health>,
    pub health_error: Option<String>,
    pub url: Option<String>,
}

/// Reads the pid in `file` if that process is alive and is ours.
pub fn live_pid(file: &Path) -> Option<u32> {
    zstack_common::process::live_pid(file, "zstack")
}

/// True if `pid` runs and is a ZStack program (not a recycled pid of something else).
pub fn is_ours(pid: u32) -> bool {
    zstack_common::process::runs(pid, "zstack")
}

fn systemctl(args: &[&str]) -> anyhow::Result<std::process::Output> {
    Command::new("systemctl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run systemctl {}", args.join(" ")))
}

fn systemd_main_pid(service: Service) -> Option<u32> {
    let out = systemctl(&["show", "-p", "MainPID", "--value", &service.unit()]).ok()?;
    let pid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    (pid != 0).then_some(pid)
}

/// The pid of the running service, however it was started.
pub fn service_pid(layout: &Layout, init: InitSystem, service: Service) -> Option<u32> {
    match init {
        InitSystem::Systemd => systemd_main_pid(service),
        InitSystem::Supervisor => live_pid(&layout.host(service.pid_file(layout))),
    }
}

/// The status of an agent that runs but has no certificate yet: it listens on nothing until a
/// management node adds the host.
pub const WAITING_TO_JOIN: &str = "waiting-to-join";

/// Asks a service for its health. The agent takes only clients with a certificate of the
/// cloud: it is asked with this host's own certificate (which its `/health` accepts). An agent
/// without a certificate answers nothing; its health is then [`WAITING_TO_JOIN`], with the
/// release of the program that runs.
pub fn check_health(
    layout: &Layout,
    props: &Properties,
    service: Service,
) -> Result<Health, String> {
    let url = service.local_health_url(props)?;
    match service {
        Service::Server => health::fetch(&url, None, Duration::from_secs(3)),
        Service::KvmAgent => {
            let pki = zstack_pki::MachinePki::new(layout.host(layout.pki_dir()));
            if !pki.has_identity(zstack_pki::Role::Host) {
                return waiting_agent(layout);
            }
            let tls = local_agent_tls(&pki).map_err(|e| {
                format!(
                    "this host's certificates in {} are unusable: {e}",
                    pki.dir().display()
                )
            })?;
            health::fetch(&url, Some(tls), Duration::from_secs(3))
        }
    }
}

/// A client of the local agent: this host's certificate, the cloud's CA. The revocation list
/// is left out: this asks whether the agent runs, not whether the cloud still trusts it.
fn local_agent_tls(
    pki: &zstack_pki::MachinePki,
) -> Result<Arc<rustls::ClientConfig>, zstack_pki::PkiError> {
    let identity = pki.identity(zstack_pki::Role::Host)?;
    let trust = zstack_pki::tls::Trust {
        crl_pem: None,
        ..pki.trust()?
    };
    zstack_pki::tls::client_config(Some(&identity), &trust, zstack_pki::Role::Host)
}

/// The health of an agent waiting for its certificate, from its process.
fn waiting_agent(layout: &Layout) -> Result<Health, String> {
    let init = InitSystem::detect(layout);
    let pid =
        service_pid(layout, init, Service::KvmAgent).ok_or("the KVM host agent is not running")?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map_err(|e| format!("cannot read the program of pid {pid}: {e}"))?;
    let tree = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("{} is not in a release tree", exe.display()))?;
    let release = zstack_common::Release::of_tree(tree).map_err(|e| e.to_string())?;
    Ok(Health {
        product: zstack_common::PRODUCT.to_string(),
        service: Service::KvmAgent.name().to_string(),
        version: release.version,
        status: WAITING_TO_JOIN.to_string(),
        pid,
    })
}

pub fn status(layout: &Layout, props: &Properties, services: &[Service]) -> Vec<ServiceStatus> {
    let init = InitSystem::detect(layout);
    services
        .iter()
        .map(|&s| {
            let pid = service_pid(layout, init, s);
            let (health, health_error) = if pid.is_some() {
                match check_health(layout, props, s) {
                    Ok(h) => (Some(h), None),
                    Err(e) => (None, Some(e)),
                }
            } else {
                (None, None)
            };
            ServiceStatus {
                service: s.name(),
                running: pid.is_some(),
                pid,
                health,
                health_error,
                url: s.local_health_url(props).ok(),
            }
        })
        .collect()
}

/// Starts `services` and waits until each answers its health check. Already-running ones are
/// left alone. Returns, for each, whether this call started it.
pub fn start(
    layout: &Layout,
    props: &Properties,
    services: &[Service],
    timeout: Duration,
) -> anyhow::Result<Vec<(Service, bool)>> {
    if layout.is_sysroot() {
        bail!(
            "services are never started inside a sysroot ({})",
            layout.sysroot().display()
        );
    }
    let init = InitSystem::detect(layout);
    let mut started = Vec::new();
    for &s in services {
        let was_running = service_pid(layout, init, s).is_some();
        if !was_running && s == Service::Server && server_runs_as_its_user(layout) {
            crate::server_files::give_server_its_files(layout)?;
        }
        if !was_running {
            match init {
                InitSystem::Systemd => {
                    let out = systemctl(&["start", &s.unit()])?;
                    if !out.status.success() {
                        bail!(
                            "systemctl start {} failed: {}",
                            s.unit(),
                            String::from_utf8_lossy(&out.stderr).trim()
                        );
                    }
                }
                InitSystem::Supervisor => spawn_supervisor(layout, s)?,
            }
        }
        started.push((s, !was_running));
    }
    for &(s, _) in &started {
        wait_healthy(layout, props, s, timeout)?;
    }
    Ok(started)
}

fn spawn_supervisor(layout: &Layout, service: Service) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let run_dir = layout.host(layout.run_dir());
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("cannot create {}", run_dir.display()))?;
    let log_path = layout.host(service.log_file(layout));
    if let Some(dir) = log_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let ctl = layout.host(layout.current_bin("zstack-ctl"));
    Command::new(&ctl)
        .args(["supervise", service.name()])
        // Not the caller's directory (the installer's is a temporary one, removed when it
        // exits), nor its installer-only variables.
        .current_dir("/")
        .env_remove("ZSTACK_BIN_PATH")
        .env_remove("ZSTACK_FAILPOINT")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: a Ctrl-C in the terminal that ran `start` must not reach it.
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot run {}", ctl.display()))?;
    Ok(())
}

/// True if the installed release runs the management node as the user `zstack` (1.2.0 and
/// later; earlier releases ran it as root).
pub fn server_runs_as_its_user(layout: &Layout) -> bool {
    Release::current(layout)
        .and_then(|r| r.semver().ok())
        .is_some_and(|v| runs_as_server_user(&v))
}

/// The command that runs `service`'s program: the management node as the user `zstack`
/// (after giving it its files) where the installed release says so, like its unit.
fn service_command(layout: &Layout, service: Service, program: &Path) -> anyhow::Result<Command> {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(program);
    cmd.stdin(Stdio::null());
    if service == Service::Server && server_runs_as_its_user(layout) && !layout.is_sysroot() {
        crate::server_files::give_server_its_files(layout)?;
        let user = crate::server_files::lookup()?
            .with_context(|| format!("the user {SERVER_USER} does not exist"))?;
        // std drops the supplementary groups (setgroups(0)), then setgid, then setuid.
        cmd.uid(user.uid)
            .gid(user.gid)
            .env("HOME", SERVER_HOME)
            .env("USER", SERVER_USER)
            .env("LOGNAME", SERVER_USER);
    }
    Ok(cmd)
}

/// Waits until `service` answers its health check, or fails with the tail of its log.
pub fn wait_healthy(
    layout: &Layout,
    props: &Properties,
    service: Service,
    timeout: Duration,
) -> anyhow::Result<Health> {
    let deadline = Instant::now() + timeout;
    let mut last_error;
    loop {
        match check_health(layout, props, service) {
            Ok(h) => return Ok(h),
            Err(e) => last_error = e,
        }
        if Instant::now() >= deadline {
            let log = layout.host(service.log_file(layout));
            bail!(
                "the {} ({}) did not become healthy within {}s: {last_error}\nlast lines of {}:\n{}",
                service.description(),
                service.name(),
                timeout.as_secs(),
                log.display(),
                tail(&log, 20)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The last `n` lines of a file, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read it: {e})"),
    }
}

/// Stops `services`. Returns, for each, whether it was running.
pub fn stop(
    layout: &Layout,
    services: &[Service],
    timeout: Duration,
) -> anyhow::Result<Vec<(Service, bool)>> {
    let init = InitSystem::detect(layout);
    let mut out = Vec::new();
    for &s in services {
        let was_running = service_pid(layout, init, s).is_some();
        match init {
            InitSystem::Systemd => {
                let o = systemctl(&["stop", &s.unit()])?;
                if !o.status.success() {
                    bail!(
                        "systemctl stop {} failed: {}",
                        s.unit(),
                        String::from_utf8_lossy(&o.stderr).trim()
                    );
                }
            }
            InitSystem::Supervisor => stop_supervised(layout, s, timeout)?,
        }
        out.push((s, was_running));
    }
    Ok(out)
}

fn stop_supervised(layout: &Layout, service: Service, timeout: Duration) -> anyhow::Result<()> {
    let sup_file = layout.host(service.supervisor_pid_file(layout));
    let pid_file = layout.host(service.pid_file(layout));
    // The supervisor stops the service and then exits; a service without a supervisor (its
    // supervisor was killed) is stopped directly.
    let targets: Vec<u32> = [live_pid(&sup_file), live_pid(&pid_file)]
        .into_iter()
        .flatten()
        .collect();
    if let Some(&first) = targets.first() {
        signal(first, Signal::SIGTERM);
        if live_pid(&sup_file).is_none() {
            for &p in &targets[1..] {
                signal(p, Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + timeout;
        while targets.iter().any(|&p| is_ours(p)) {
            if Instant::now() >= deadline {
                for &p in &targets {
                    signal(p, Signal::SIGKILL);
                }
                std::thread::sleep(Duration::from_millis(200));
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    remove_if_stale(&sup_file);
    remove_if_stale(&pid_file);
    Ok(())
}

fn signal(pid: u32, sig: Signal) {
    if let Ok(p) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(p), sig);
    }
}

fn remove_if_stale(file: &Path) {
    if file.exists() && live_pid(file).is_none() {
        let _ = std::fs::remove_file(file);
    }
}

/// `zstack-ctl supervise <service>`: runs the service in the foreground, restarting it when it
/// dies, until SIGTERM/SIGINT. Only one supervisor per service runs (a lock file says so).
pub fn supervise(layout: &Layout, service: Service) -> anyhow::Result<()> {
    use nix::fcntl::{Flock, FlockArg};
    let run_dir = layout.host(layout.run_dir());
    std::fs::create_dir_all(&run_dir)?;
    let lock_path = run_dir.join(format!("{}.lock", service.name()));
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)?;
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock)
        .map_err(|_| anyhow::anyhow!("another supervisor of {} is running", service.name()))?;
    let log = LogFile::open(&layout.host(service.log_file(layout)), false)?;
    let sup_file = layout.host(service.supervisor_pid_file(layout));
    let pid_file = layout.host(service.pid_file(layout));
    zstack_common::fsutil::atomic_write(
        &sup_file,
        format!("{}\n", std::process::id()).as_bytes(),
        0o644,
    )?;

    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    // A closed terminal must not stop the cloud.
    signal_hook::flag::register(
        signal_hook::consts::SIGHUP,
        Arc::new(AtomicBool::new(false)),
    )?;

    if service == Service::Server && server_runs_as_its_user(layout) {
        // As the unit's NoNewPrivileges=yes: this supervisor runs only the management node, and
        // neither gains privileges through exec from here on (set-uid programs, file caps).
        nix::sys::prctl::set_no_new_privs().context("cannot set no_new_privs")?;
    }
    let mut backoff = Duration::from_secs(1);
    log.info(&format!(
        "supervisor of {} started (no systemd on this host), pid {}",
        service.name(),
        std::process::id()
    ));
    while !stop.load(Ordering::SeqCst) {
        // Resolved through `current` at each start, so a restart after an upgrade runs the new release.
        let program: PathBuf = layout.host(layout.current_bin(service.name()));
        let started = Instant::now();
        let spawned = service_command(layout, service, &program).and_then(|mut c| {
            c.spawn()
                .with_context(|| format!("cannot run {}", program.display()))
        });
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                log.error(&format!("{e:#}"));
                sleep_unless(&stop, backoff);
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        zstack_common::fsutil::atomic_write(
            &pid_file,
            format!("{}\n", child.id()).as_bytes(),
            0o644,
        )?;
        let status = loop {
            if let Some(st) = child.try_wait()? {
                break Some(st);
            }
            if stop.load(Ordering::SeqCst) {
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        match status {
            None => {
                signal(child.id(), Signal::SIGTERM);
                let deadline = Instant::now() + STOP_TIMEOUT;
                while child.try_wait()?.is_none() {
                    if Instant::now() >= deadline {
                        log.warn(&format!(
                            "{} did not stop in time; killing it",
                            service.name()
                        ));
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            Some(st) => {
                if started.elapsed() > Duration::from_secs(60) {
                    backoff = Duration::from_secs(1);
                }
                log.warn(&format!(
                    "{} exited ({st}); restarting in {}s",
                    service.name(),
                    backoff.as_secs()
                ));
                sleep_unless(&stop, backoff);
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
    let _ = std::fs::remove_file(&pid_file);
    let _ = std::fs::remove_file(&sup_file);
    log.info(&format!("supervisor of {} stopped", service.name()));
    Ok(())
}

fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let deadline = Instant::now() + d;
    while Instant::now() < deadline && !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
}

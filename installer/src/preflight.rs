//! Preflight: every check before any change, all failures reported together.

use std::net::{IpAddr, TcpListener};
use std::path::{Path, PathBuf};

use zstack_common::os::{find_program, Family, OsRelease, REQUIRED_TOOLS};
use zstack_common::service::Service;
use zstack_common::{Layout, Properties};

use crate::options::Options;

/// Room wanted for the database, logs and the first backups, beyond the release tree.
pub const DATA_RESERVE: u64 = 256 << 20;

/// What preflight learned that the steps need.
#[derive(Debug, Clone)]
pub struct Findings {
    pub family: Family,
    pub os_name: String,
    pub warnings: Vec<String>,
}

pub struct Preflight<'a> {
    pub opts: &'a Options,
    pub layout: &'a Layout,
    pub services: &'a [Service],
    /// Bytes the release tree takes unpacked.
    pub unpacked_size: u64,
    /// Bytes wanted beyond that in the data directory (an upgrade's DB backup).
    pub extra_data: u64,
}

impl Preflight<'_> {
    /// Runs every check. `Err` holds every problem found, each a sentence saying what to do.
    pub fn run(&self) -> Result<Findings, Vec<String>> {
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        let sysroot = self.layout.is_sysroot();

        if !sysroot && !nix::unistd::geteuid().is_root() {
            problems.push(
                "the installer must run as root (try: sudo bash zstack-installer-<version>.bin), \
                 or install into a directory with --sysroot DIR"
                    .to_string(),
            );
        }

        let (family, os_name) = match OsRelease::read(self.layout.sysroot())
            .or_else(|_| OsRelease::read(Path::new("/")))
        {
            Ok(os) => {
                let name = if os.pretty_name.is_empty() {
                    os.id.clone()
                } else {
                    os.pretty_name.clone()
                };
                match os.supported_family() {
                    Ok(f) => (f, name),
                    Err(e) => {
                        problems.push(e);
                        (Family::Debian, name)
                    }
                }
            }
            Err(e) => {
                problems.push(format!(
                    "cannot read /etc/os-release to identify the system: {e}"
                ));
                (Family::Debian, "unknown".into())
            }
        };

        let arch = nix::sys::utsname::uname()
            .map(|u| u.machine().to_string_lossy().into_owned())
            .unwrap_or_default();
        if arch != "x86_64" {
            problems.push(format!("this host is {arch}; ZStack runs on x86_64 only"));
        }

        self.check_disk(&mut problems);

        if !sysroot && !self.opts.no_start {
            for &s in self.services {
                let mut ports = vec![s.default_port()];
                if s == Service::Server {
                    ports.push(zstack_common::service::DEFAULT_HOST_TLS_PORT);
                }
                for port in ports {
                    if let Some(p) = port_problem(s, port) {
                        problems.push(p);
                    }
                }
            }
        }

        let path = std::env::var_os("PATH").unwrap_or_default();
        for tool in REQUIRED_TOOLS {
            if tool
                .programs
                .iter()
                .any(|p| find_program(p, &path).is_some())
            {
                continue;
            }
            let msg = format!(
                "{} is not installed: install package {} from this host's own repository \
                 (e.g. `{}`)",
                tool.what,
                tool.package(family),
                match family {
                    Family::Debian => format!("apt-get install {}", tool.package(family)),
                    Family::Rhel => format!("dnf install {}", tool.package(family)),
                }
            );
            if sysroot {
                warnings.push(msg);
            } else {
                problems.push(msg);
            }
        }

        if let Some(ip) = &self.opts.management_ip {
            if ip.parse::<IpAddr>().is_err() {
                problems.push(format!("-I {ip}: not an IP address"));
            }
        }
        if self.opts.drop_db && self.opts.keep_db {
            problems.push(
                "-D (drop the database) and -k (keep it) contradict each other; give one".into(),
            );
        }
        if !self.opts.install_root.is_absolute() {
            problems.push(format!(
                "-r {}: the install root must be an absolute path",
                self.opts.install_root.display()
            ));
        }

        self.check_command_links(&mut problems);
        self.check_properties(&mut problems);

        if problems.is_empty() {
            Ok(Findings {
                family,
                os_name,
                warnings,
            })
        } else {
            Err(problems)
        }
    }

    fn check_disk(&self, problems: &mut Vec<String>) {
        let l = self.layout;
        let need_tree = self.unpacked_size * 2; // the tree, and its staging copy while unpacking
        let need_data = self.extra_data
            + if self.services.contains(&Service::Server) {
                DATA_RESERVE
            } else {
                16 << 20
            };
        let places = [
            (l.host(l.install_root()), need_tree, "the release tree"),
            (
                l.host(l.data_dir()),
                need_data,
                "the database, logs and backups",
            ),
        ];
        let mut per_fs: Vec<(u64, PathBuf, u64, u64, Vec<&str>)> = Vec::new(); // dev, path, need, avail, what
        for (path, need, what) in places {
            let existing = nearest_existing(&path);
            let Ok(meta) = std::fs::metadata(&existing) else {
                continue;
            };
            use std::os::unix::fs::MetadataExt;
            let avail = match nix::sys::statvfs::statvfs(&existing) {
                Ok(s) => s.blocks_available() * s.fragment_size(),
                Err(e) => {
                    problems.push(format!(
                        "cannot measure free space at {}: {e}",
                        existing.display()
                    ));
                    continue;
                }
            };
            if let Some(entry) = per_fs.iter_mut().find(|e| e.0 == meta.dev()) {
                entry.2 += need;
                entry.4.push(what);
            } else {
                per_fs.push((meta.dev(), existing, need, avail, vec![what]));
            }
        }
        for (_, path, need, avail, what) in per_fs {
            if avail < need {
                problems.push(format!(
                    "not enough free disk space at {}: {} MiB free, {} MiB needed for {}; free some space",
                    path.display(),
                    avail >> 20,
                    need.div_ceil(1 << 20),
                    what.join(" and ")
                ));
            }
        }
    }

    fn check_command_links(&self, problems: &mut Vec<String>) {
        if self.opts.force {
            return;
        }
        for name in ["zstack-ctl", "zstack-cli"] {
            let p = self.layout.host(self.layout.usr_bin(name));
            match std::fs::symlink_metadata(&p) {
                Err(_) => {}
                Ok(m) if m.file_type().is_symlink() => {
                    let target = std::fs::read_link(&p).unwrap_or_default();
                    if !target.to_string_lossy().contains("/current/bin/") {
                        problems.push(format!(
                            "{} links to {}, not to a ZStack release; remove it or run with -F",
                            p.display(),
                            target.display()
                        ));
                    }
                }
                Ok(_) => problems.push(format!(
                    "{} exists and is not ZStack's link; remove it or run with -F to replace it",
                    p.display()
                )),
            }
        }
    }

    fn check_properties(&self, problems: &mut Vec<String>) {
        let p = self.layout.host(self.layout.properties_file());
        if p.exists() {
            if let Err(e) = Properties::load(&p) {
                problems.push(format!("{e}; fix the line (the installer keeps your settings and will not overwrite the file)"));
            }
        }
    }
}

fn nearest_existing(p: &Path) -> PathBuf {
    let mut cur = p.to_path_buf();
    while !cur.exists() {
        match cur.parent() {
            Some(parent) => cur = parent.to_path_buf(),
            None => break,
        }
    }
    cur
}

/// `None` if the service's port is free, or is held by that ZStack service itself (a re-run).
fn port_problem(service: Service, port: u16) -> Option<String> {
    match TcpListener::bind(("0.0.0.0", port)) {
        Ok(_) => None,
        Err(_) => {
            let holder = port_holder(port);
            // The kernel keeps the first 15 bytes of a program's name.
            let own: String = service.name().chars().take(15).collect();
            if holder.as_ref().is_some_and(|(_, comm)| *comm == own) {
                return None;
            }
            let holder = holder
                .map(|(pid, comm)| format!(" by pid {pid} ({comm})"))
                .unwrap_or_default();
            Some(format!(
                "port {port}, which the {} ({}) needs, is in use{holder}; stop that program or free the port",
                service.description(),
                service.name()
            ))
        }
    }
}

/// "pid N (name)" of the process listening on TCP `port`, found through /proc.
/// The pid and program name of the process listening on `port`.
fn port_holder(port: u16) -> Option<(String, String)> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                continue; // not LISTEN
            }
            let local_port = f[1]
                .rsplit(':')
                .next()
                .and_then(|h| u16::from_str_radix(h, 16).ok());
            if local_port == Some(port) {
                inodes.push(format!("socket:[{}]", f[9]));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for proc_entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let pid = proc_entry.file_name().to_string_lossy().into_owned();
        if !pid.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(t) = std::fs::read_link(fd.path()) {
                if inodes.iter().any(|i| t.as_os_str() == i.as_str()) {
                    let comm =
                        std::fs::read_to_string(proc_entry.path().join("comm")).unwrap_or_default();
                    return Some((pid, comm.trim().to_string()));
                }
            }
        }
    }
    None
}

/// The IPv4 address of the interface that carries the default route, if any.
pub fn default_route_ip() -> Option<String> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    let iface = routes.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[1] == "00000000").then(|| f[0].to_string())
    })?;
    nix::ifaddrs::getifaddrs().ok()?.find_map(|ifa| {
        if ifa.interface_name != iface {
            return None;
        }
        let addr = ifa.address?;
        addr.as_sockaddr_in().map(|sin| sin.ip().to_string())
    })
}

//! The two long-running services of the stack and what identifies each: program, systemd unit,
//! port, log file and pid files.

use std::path::{Path, PathBuf};

use crate::{Layout, Properties};

/// Keys of `zstack.properties` that the programs read.
pub mod keys {
    pub const MANAGEMENT_IP: &str = "management.server.ip";
    pub const API_PORT: &str = "management.api.port";
    /// The API port's name in releases before 1.2.0; 1.2.0's upgrade step renames it.
    pub const LEGACY_API_PORT: &str = "api.port";
    pub const AGENT_PORT: &str = "kvmagent.port";
    /// The shared secret of releases before 1.2.0, which certificates replaced; 1.2.0's upgrade
    /// step removes it.
    pub const LEGACY_AGENT_SECRET: &str = "kvmagent.secret";
    /// The port of the management node's host channel (HTTPS, host certificates only): where
    /// agents download images.
    pub const HOST_TLS_PORT: &str = "management.hostTls.port";
    /// How the agent runs VMs: `auto` (kvm where /dev/kvm opens), `kvm`, or `qemu` (TCG, for
    /// hosts where /dev/kvm exists but cannot run guests, e.g. nested without hardware support).
    pub const AGENT_VIRTUALIZATION: &str = "kvmagent.virtualization";
    pub const ADMIN_PASSWORD: &str = "admin.password";
    /// Comma-separated directories of the management node that AddImage may read local files
    /// from (none by default).
    pub const IMAGE_SOURCE_DIRECTORIES: &str = "image.sourceDirectories";
    /// The port of the web dashboard zstack-server serves (5000).
    pub const DASHBOARD_PORT: &str = "dashboard.port";
}

/// The host channel's port when `management.hostTls.port` is absent.
pub const DEFAULT_HOST_TLS_PORT: u16 = 8443;

/// The port of the management node's host channel: `management.hostTls.port`, 8443 when absent.
pub fn host_tls_port(props: &Properties) -> Result<u16, String> {
    props.get_or(keys::HOST_TLS_PORT, DEFAULT_HOST_TLS_PORT)
}

/// The original's dashboard port.
pub const DEFAULT_DASHBOARD_PORT: u16 = 5000;

/// The port of the dashboard zstack-server serves: `dashboard.port`, 5000 when absent.
pub fn dashboard_port(props: &Properties) -> Result<u16, String> {
    props.get_or(keys::DASHBOARD_PORT, DEFAULT_DASHBOARD_PORT)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Service {
    /// The management node: HTTP API, DB, orchestration.
    Server,
    /// The KVM host agent.
    KvmAgent,
}

impl Service {
    pub const ALL: [Service; 2] = [Service::Server, Service::KvmAgent];

    /// The program name, which is also the systemd unit's base name.
    pub fn name(self) -> &'static str {
        match self {
            Service::Server => "zstack-server",
            Service::KvmAgent => "zstack-kvmagent",
        }
    }

    pub fn unit(self) -> String {
        format!("{}.service", self.name())
    }

    /// The unit template under `templates/`.
    pub fn unit_template(self) -> String {
        format!("systemd/{}.service.tera", self.name())
    }

    pub fn description(self) -> &'static str {
        match self {
            Service::Server => "management node",
            Service::KvmAgent => "KVM host agent",
        }
    }

    pub fn port_key(self) -> &'static str {
        match self {
            Service::Server => keys::API_PORT,
            Service::KvmAgent => keys::AGENT_PORT,
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Service::Server => 8080,
            Service::KvmAgent => 7070,
        }
    }

    /// The port configured in `props`, or the default.
    pub fn port(self, props: &Properties) -> Result<u16, String> {
        if self == Service::Server && !props.contains(keys::API_PORT) {
            return props.get_or(keys::LEGACY_API_PORT, self.default_port());
        }
        props.get_or(self.port_key(), self.default_port())
    }

    /// The service's own log file (logical path).
    pub fn log_file(self, layout: &Layout) -> PathBuf {
        layout.log_dir().join(match self {
            Service::Server => "management-server.log",
            Service::KvmAgent => "kvmagent.log",
        })
    }

    /// Pid file of the service process when it runs without systemd (logical path).
    pub fn pid_file(self, layout: &Layout) -> PathBuf {
        layout.run_dir().join(format!("{}.pid", self.name()))
    }

    /// Pid file of the supervisor that keeps the service running without systemd.
    pub fn supervisor_pid_file(self, layout: &Layout) -> PathBuf {
        layout
            .run_dir()
            .join(format!("{}.supervisor.pid", self.name()))
    }

    /// The health URL on this host. The agent serves only HTTPS with client certificates.
    pub fn local_health_url(self, props: &Properties) -> Result<String, String> {
        let scheme = match self {
            Service::Server => "http",
            Service::KvmAgent => "https",
        };
        Ok(format!("{scheme}://127.0.0.1:{}/health", self.port(props)?))
    }
}

/// How services are started on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InitSystem {
    /// systemd is PID 1: units are enabled and started with systemctl.
    Systemd,
    /// No systemd: `zstack-ctl` starts each service under its own supervisor process.
    Supervisor,
}

impl InitSystem {
    /// systemd's own test (sd_booted(3)): `/run/systemd/system` exists only when systemd is PID 1.
    pub fn detect(layout: &Layout) -> InitSystem {
        if !layout.is_sysroot() && Path::new("/run/systemd/system").is_dir() {
            InitSystem::Systemd
        } else {
            InitSystem::Supervisor
        }
    }
}

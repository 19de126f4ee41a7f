//! The host's programs, behind one small trait so the VM logic can be tested without libvirt:
//! `virsh` for libvirt (the tool is libvirt's own interface), `qemu-img` for disk files, `ip` for
//! bridges. Arguments are always built as lists, never through a shell.

use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{program} is not installed on this host ({package}): {source}")]
    Missing {
        program: String,
        package: &'static str,
        source: std::io::Error,
    },
    #[error("{command} failed: {message}")]
    Failed {
        command: String,
        message: String,
        /// The exit status; None when a signal ended the program.
        status: Option<i32>,
    },
}

impl HostError {
    pub fn message(&self) -> String {
        self.to_string()
    }
}

/// What the agent asks of the host's tools.
pub trait HostTools: Send + Sync {
    /// Runs `program args`, returns stdout; a non-zero exit is an error with stderr.
    fn run(&self, program: &str, args: &[&str]) -> Result<String, HostError>;
}

/// Where libvirtd listens; its absence means libvirtd is not running.
const LIBVIRT_SOCKET: &str = "/run/libvirt/libvirt-sock";

/// The real tools.
pub struct SystemTools;

fn package_of(program: &str) -> &'static str {
    match program {
        "virsh" => "apt-get install libvirt-clients libvirt-daemon-system",
        "qemu-img" => "apt-get install qemu-utils",
        "ip" | "bridge" => "apt-get install iproute2",
        "nft" => "apt-get install nftables",
        "arping" => "apt-get install iputils-arping",
        "nsenter" => "apt-get install util-linux",
        "dnsmasq" => "apt-get install dnsmasq-base",
        _ => "see the install guide",
    }
}

impl HostTools for SystemTools {
    fn run(&self, program: &str, args: &[&str]) -> Result<String, HostError> {
        let out = Command::new(program)
            .args(args)
            .env("LC_ALL", "C")
            .output()
            .map_err(|source| HostError::Missing {
                program: program.to_string(),
                package: package_of(program),
                source,
            })?;
        if !out.status.success() {
            let mut message = String::from_utf8_lossy(&out.stderr).trim().to_string();
            if message.is_empty() {
                message = String::from_utf8_lossy(&out.stdout).trim().to_string();
            }
            // Told by the socket's absence, not by virsh's words.
            if program == "virsh" && !std::path::Path::new(LIBVIRT_SOCKET).exists() {
                message.push_str(
                    "; libvirtd is not running on this host: start it (systemctl start libvirtd, \
                     or libvirtd -d where systemd is not PID 1)",
                );
            }
            return Err(HostError::Failed {
                command: format!("{program} {}", args.join(" ")),
                message,
                status: out.status.code(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// libvirt through virsh, on the system connection.
pub struct Virsh<'a> {
    pub tools: &'a dyn HostTools,
}

pub const VIRSH_URI: &str = "qemu:///system";

impl Virsh<'_> {
    fn virsh(&self, args: &[&str]) -> Result<String, HostError> {
        let mut all = vec!["-c", VIRSH_URI];
        all.extend_from_slice(args);
        self.tools.run("virsh", &all)
    }

    /// Every domain with its state (`running`, `paused`, `shut off`, ...).
    pub fn list(&self) -> Result<Vec<(String, String)>, HostError> {
        Ok(parse_list(&self.virsh(&["list", "--all"])?))
    }

    pub fn state(&self, name: &str) -> Result<Option<String>, HostError> {
        Ok(self
            .list()?
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s))
    }

    pub fn create(&self, xml_file: &str) -> Result<(), HostError> {
        self.virsh(&["create", xml_file]).map(|_| ())
    }
    pub fn shutdown(&self, name: &str) -> Result<(), HostError> {
        self.virsh(&["shutdown", name]).map(|_| ())
    }
    pub fn destroy(&self, name: &str) -> Result<(), HostError> {
        self.virsh(&["destroy", name]).map(|_| ())
    }
    pub fn reboot(&self, name: &str) -> Result<(), HostError> {
        self.virsh(&["reboot", name]).map(|_| ())
    }
    pub fn attach_device(&self, name: &str, xml_file: &str) -> Result<(), HostError> {
        self.virsh(&["attach-device", name, xml_file, "--live"])
            .map(|_| ())
    }
    pub fn detach_device(&self, name: &str, xml_file: &str) -> Result<(), HostError> {
        self.virsh(&["detach-device", name, xml_file, "--live"])
            .map(|_| ())
    }
    pub fn dumpxml(&self, name: &str) -> Result<String, HostError> {
        self.virsh(&["dumpxml", name])
    }
    /// (libvirt, qemu) versions as `virsh version` reports them.
    pub fn versions(&self) -> Result<(Option<String>, Option<String>), HostError> {
        Ok(parse_versions(&self.virsh(&["version"])?))
    }
}

/// Parses `virsh list --all`:
/// ```text
///  Id   Name                               State
/// ---------------------------------------------------
///  1    2b3c...                            running
///  -    other                              shut off
/// ```
pub fn parse_list(out: &str) -> Vec<(String, String)> {
    out.lines()
        .skip_while(|l| !l.trim_start().starts_with("---"))
        .skip(1)
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let _id = parts.next()?;
            let name = parts.next()?.to_string();
            let state = parts.collect::<Vec<_>>().join(" ");
            (!state.is_empty()).then_some((name, state))
        })
        .collect()
}

/// Parses `virsh version` ("Using library: libvirt 9.0.0", "Running hypervisor: QEMU 7.2.0").
pub fn parse_versions(out: &str) -> (Option<String>, Option<String>) {
    let after = |prefix: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().last())
            .map(str::to_string)
    };
    (
        after("Using library: libvirt"),
        after("Running hypervisor: QEMU"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_virsh_list() {
        let out = " Id   Name                               State\n\
                   --------------------------------------------------\n \
                   3    0123456789abcdef0123456789abcdef   running\n \
                   -    old                                shut off\n\n";
        assert_eq!(
            parse_list(out),
            vec![
                (
                    "0123456789abcdef0123456789abcdef".to_string(),
                    "running".to_string()
                ),
                ("old".to_string(), "shut off".to_string())
            ]
        );
        assert!(parse_list("").is_empty());
    }

    #[test]
    fn reads_virsh_version() {
        let out = "Compiled against library: libvirt 9.0.0\nUsing library: libvirt 9.0.0\n\
                   Using API: QEMU 9.0.0\nRunning hypervisor: QEMU 7.2.19\n";
        assert_eq!(
            parse_versions(out),
            (Some("9.0.0".into()), Some("7.2.19".into()))
        );
    }
}

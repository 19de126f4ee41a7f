//! Which operating system a host runs, read from os-release(5), and what the stack needs of it.

use std::path::Path;

/// Environment variable that points the OS detection at another os-release file (tests).
pub const OS_RELEASE_ENV: &str = "ZSTACK_OS_RELEASE";

/// The package families whose offline repositories we know the package names of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Debian,
    Rhel,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsRelease {
    pub id: String,
    pub id_like: Vec<String>,
    pub version_id: String,
    pub pretty_name: String,
}

/// The supported systems, as the refusal message lists them.
pub const SUPPORTED: &str =
    "Debian 12+, Ubuntu 22.04+, CentOS Stream / Rocky Linux / AlmaLinux / RHEL 8+ (x86_64)";

impl OsRelease {
    pub fn parse(text: &str) -> OsRelease {
        let mut r = OsRelease {
            id: String::new(),
            id_like: Vec::new(),
            version_id: String::new(),
            pretty_name: String::new(),
        };
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let v = v.trim().trim_matches('"').trim_matches('\'').to_string();
            match k.trim() {
                "ID" => r.id = v.to_lowercase(),
                "ID_LIKE" => r.id_like = v.split_whitespace().map(str::to_lowercase).collect(),
                "VERSION_ID" => r.version_id = v,
                "PRETTY_NAME" => r.pretty_name = v,
                _ => {}
            }
        }
        r
    }

    /// Reads `ZSTACK_OS_RELEASE`, else `<root>/etc/os-release`, else `<root>/usr/lib/os-release`.
    pub fn read(root: &Path) -> std::io::Result<OsRelease> {
        if let Some(p) = std::env::var_os(OS_RELEASE_ENV) {
            return std::fs::read_to_string(p).map(|t| OsRelease::parse(&t));
        }
        let etc = root.join("etc/os-release");
        let text = std::fs::read_to_string(&etc)
            .or_else(|_| std::fs::read_to_string(root.join("usr/lib/os-release")))?;
        Ok(OsRelease::parse(&text))
    }

    fn major(&self) -> Option<u32> {
        self.version_id.split('.').next()?.parse().ok()
    }

    fn version_pair(&self) -> Option<(u32, u32)> {
        let mut it = self.version_id.split('.');
        let major = it.next()?.parse().ok()?;
        let minor = it.next().map(|m| m.parse().unwrap_or(0)).unwrap_or(0);
        Some((major, minor))
    }

    /// The family if this system is a supported one, or a sentence saying why not.
    pub fn supported_family(&self) -> Result<Family, String> {
        let name = if self.pretty_name.is_empty() {
            format!("{} {}", self.id, self.version_id)
        } else {
            self.pretty_name.clone()
        };
        let unsupported = || format!("{name} is not supported; supported systems: {SUPPORTED}");
        match self.id.as_str() {
            "debian" => match self.major() {
                Some(v) if v >= 12 => Ok(Family::Debian),
                _ => Err(unsupported()),
            },
            "ubuntu" => match self.version_pair() {
                Some(v) if v >= (22, 4) => Ok(Family::Debian),
                _ => Err(unsupported()),
            },
            "centos" | "rocky" | "almalinux" | "rhel" => match self.major() {
                Some(v) if v >= 8 => Ok(Family::Rhel),
                _ => Err(unsupported()),
            },
            _ => Err(unsupported()),
        }
    }
}

/// A system tool the stack needs, the names it may have, and the package that provides it.
pub struct RequiredTool {
    /// What the tool is for, as a message names it.
    pub what: &'static str,
    /// Program names, any one of which will do (searched on PATH).
    pub programs: &'static [&'static str],
    pub debian_package: &'static str,
    pub rhel_package: &'static str,
}

impl RequiredTool {
    pub fn package(&self, family: Family) -> &'static str {
        match family {
            Family::Debian => self.debian_package,
            Family::Rhel => self.rhel_package,
        }
    }
}

/// The tools the management node and the host agent use on a host.
pub const REQUIRED_TOOLS: &[RequiredTool] = &[
    RequiredTool {
        what: "qemu-img",
        programs: &["qemu-img"],
        debian_package: "qemu-utils",
        rhel_package: "qemu-img",
    },
    RequiredTool {
        what: "qemu-system-x86_64",
        programs: &["qemu-system-x86_64", "qemu-kvm"],
        debian_package: "qemu-system-x86",
        rhel_package: "qemu-kvm",
    },
    RequiredTool {
        what: "libvirtd",
        programs: &["libvirtd", "virtqemud"],
        debian_package: "libvirt-daemon-system",
        rhel_package: "libvirt-daemon-kvm",
    },
    RequiredTool {
        what: "dnsmasq",
        programs: &["dnsmasq"],
        debian_package: "dnsmasq-base",
        rhel_package: "dnsmasq",
    },
    RequiredTool {
        what: "nft or iptables",
        programs: &["nft", "iptables"],
        debian_package: "nftables",
        rhel_package: "nftables",
    },
    RequiredTool {
        what: "ip",
        programs: &["ip"],
        debian_package: "iproute2",
        rhel_package: "iproute",
    },
    RequiredTool {
        what: "crontab",
        programs: &["crontab"],
        debian_package: "cron",
        rhel_package: "cronie",
    },
];

/// Finds `program` on `path` (a PATH-style list), returning its full path if executable.
pub fn find_program(program: &str, path: &std::ffi::OsStr) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path).find_map(|dir| {
        let p = dir.join(program);
        let meta = std::fs::metadata(&p).ok()?;
        (meta.is_file() && meta.permissions().mode() & 0o111 != 0).then_some(p)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(id: &str, ver: &str) -> OsRelease {
        OsRelease::parse(&format!(
            "ID={id}\nVERSION_ID=\"{ver}\"\nPRETTY_NAME=\"{id} {ver}\"\n"
        ))
    }

    #[test]
    fn supported_systems() {
        assert_eq!(os("debian", "12").supported_family(), Ok(Family::Debian));
        assert_eq!(os("ubuntu", "22.04").supported_family(), Ok(Family::Debian));
        assert_eq!(os("ubuntu", "24.04").supported_family(), Ok(Family::Debian));
        assert_eq!(os("rocky", "9.3").supported_family(), Ok(Family::Rhel));
        assert_eq!(os("almalinux", "8.10").supported_family(), Ok(Family::Rhel));
        assert_eq!(os("centos", "8").supported_family(), Ok(Family::Rhel));
    }

    #[test]
    fn unsupported_systems_list_the_supported_ones() {
        for (id, v) in [
            ("debian", "11"),
            ("ubuntu", "20.04"),
            ("centos", "7"),
            ("arch", ""),
        ] {
            let e = os(id, v).supported_family().unwrap_err();
            assert!(e.contains("Debian 12+"), "{e}");
        }
    }
}

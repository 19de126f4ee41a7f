//! Where every file of an installed ZStack lives (DESIGN.md, "Files on an installed host").
//!
//! A [`Layout`] holds two things: the *sysroot* (`/` on a real host, any directory for tests and
//! image builders, from `ZSTACK_SYSROOT` or the installer's `--sysroot`) and the *install root*
//! (`/usr/local/zstack` unless the installer was given `-r DIR`). Paths come in two flavours:
//! the *logical* path, as the installed system itself will see it (used inside rendered files
//! such as systemd units), and the *host* path, where this process must read or write it now
//! (the logical path under the sysroot).

use std::path::{Component, Path, PathBuf};

/// The default install root, as in the original installer.
pub const DEFAULT_INSTALL_ROOT: &str = "/usr/local/zstack";
/// Environment variable that moves every path under a directory and disables starting services.
pub const SYSROOT_ENV: &str = "ZSTACK_SYSROOT";

/// The file layout of one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    sysroot: PathBuf,
    install_root: PathBuf,
}

impl Layout {
    /// A layout with an explicit sysroot (`/` for the real host) and install root (logical).
    pub fn new(sysroot: impl Into<PathBuf>, install_root: impl Into<PathBuf>) -> Self {
        Layout {
            sysroot: sysroot.into(),
            install_root: install_root.into(),
        }
    }

    /// The layout the running program belongs to: the sysroot from `ZSTACK_SYSROOT` (or `/`),
    /// and the install root deduced from where this executable lives
    /// (`<root>/versions/<ver>/bin/zstack`), falling back to `/usr/local/zstack`.
    pub fn from_env() -> Self {
        let sysroot = std::env::var_os(SYSROOT_ENV)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/"));
        let install_root = std::env::current_exe()
            .ok()
            .and_then(|exe| install_root_of_exe(&exe, &sysroot))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_INSTALL_ROOT));
        Layout::new(sysroot, install_root)
    }

    /// True when this layout writes into a directory other than the real root: nothing may be
    /// started then, and nothing outside the sysroot touched.
    pub fn is_sysroot(&self) -> bool {
        self.sysroot != Path::new("/")
    }

    pub fn sysroot(&self) -> &Path {
        &self.sysroot
    }

    /// Maps a logical absolute path to where it is on this host now.
    pub fn host(&self, logical: impl AsRef<Path>) -> PathBuf {
        let logical = logical.as_ref();
        let rel: PathBuf = logical
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        self.sysroot.join(rel)
    }

    // ---- logical paths -------------------------------------------------------------------

    pub fn install_root(&self) -> &Path {
        &self.install_root
    }
    pub fn versions_dir(&self) -> PathBuf {
        self.install_root.join("versions")
    }
    pub fn version_dir(&self, version: &str) -> PathBuf {
        self.versions_dir().join(version)
    }
    pub fn current_link(&self) -> PathBuf {
        self.install_root.join("current")
    }
    /// A program of the current release, as units and links name it.
    pub fn current_bin(&self, name: &str) -> PathBuf {
        self.current_link().join("bin").join(name)
    }
    pub fn etc_dir(&self) -> PathBuf {
        PathBuf::from("/etc/zstack")
    }
    /// The cloud's certificate authority (management node only; 0700, key 0600).
    pub fn ca_dir(&self) -> PathBuf {
        self.etc_dir().join("ca")
    }
    /// This machine's certificates and keys, the CA it trusts and the CA's revocation list.
    pub fn pki_dir(&self) -> PathBuf {
        self.etc_dir().join("pki")
    }
    /// The management node's SSH key, which hosts are deployed with.
    pub fn ssh_dir(&self) -> PathBuf {
        self.etc_dir().join("ssh")
    }
    pub fn properties_file(&self) -> PathBuf {
        self.etc_dir().join("zstack.properties")
    }
    pub fn data_dir(&self) -> PathBuf {
        PathBuf::from("/var/lib/zstack")
    }
    pub fn db_file(&self) -> PathBuf {
        self.data_dir().join("zstack.db")
    }
    pub fn backup_dir(&self) -> PathBuf {
        self.data_dir().join("mysql-backup")
    }
    pub fn log_dir(&self) -> PathBuf {
        PathBuf::from("/var/log/zstack")
    }
    pub fn run_dir(&self) -> PathBuf {
        PathBuf::from("/run/zstack")
    }
    pub fn systemd_dir(&self) -> PathBuf {
        PathBuf::from("/etc/systemd/system")
    }
    pub fn usr_bin(&self, name: &str) -> PathBuf {
        PathBuf::from("/usr/bin").join(name)
    }
    pub fn installer_lock(&self) -> PathBuf {
        PathBuf::from("/run/lock/zstack-installer.lock")
    }
    /// The undo journal of an installer run in progress (see the installer's `undo` module).
    pub fn installer_journal(&self) -> PathBuf {
        PathBuf::from("/var/lib/zstack-installer.journal")
    }
    pub fn installer_log(&self) -> PathBuf {
        PathBuf::from("/var/log/zstack-installer.log")
    }
}

/// `<sysroot>/<root>/versions/<ver>/bin/<exe>` -> `<root>` (logical), if the exe lives there.
fn install_root_of_exe(exe: &Path, sysroot: &Path) -> Option<PathBuf> {
    let exe = exe.canonicalize().ok()?;
    let bin = exe.parent()?;
    let version_dir = bin.parent()?;
    let versions = version_dir.parent()?;
    if bin.file_name()? != "bin" || versions.file_name()? != "versions" {
        return None;
    }
    let root = versions.parent()?;
    let sysroot = sysroot.canonicalize().ok()?;
    let rel = root.strip_prefix(&sysroot).ok()?;
    Some(Path::new("/").join(rel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths_live_under_the_sysroot() {
        let l = Layout::new("/tmp/root", DEFAULT_INSTALL_ROOT);
        assert_eq!(
            l.host(l.db_file()),
            PathBuf::from("/tmp/root/var/lib/zstack/zstack.db")
        );
        assert_eq!(l.host("/../etc/x"), PathBuf::from("/tmp/root/etc/x"));
        assert!(l.is_sysroot());
        let real = Layout::new("/", DEFAULT_INSTALL_ROOT);
        assert_eq!(
            real.host(real.current_link()),
            PathBuf::from("/usr/local/zstack/current")
        );
        assert!(!real.is_sysroot());
    }

    #[test]
    fn install_root_is_found_from_the_executable() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("opt/zs/versions/1.2.0/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("zstack"), b"").unwrap();
        assert_eq!(
            install_root_of_exe(&bin.join("zstack"), dir.path()),
            Some(PathBuf::from("/opt/zs"))
        );
        assert_eq!(
            install_root_of_exe(&dir.path().join("opt"), dir.path()),
            None
        );
    }
}

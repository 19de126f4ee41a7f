//! The user the management node runs as, and the files it owns or reads: one list
//! ([`server_paths`]) that the installer, `zstack-ctl` (which gives the user its files before
//! every start) and the systemd unit (its `ReadWritePaths=`) all take.
//!
//! From 1.2.0, zstack-server runs as the system user `zstack` (as the original did); releases
//! before ran it as root. The host agent stays root: it drives libvirt, bridges and namespaces.

use std::path::PathBuf;

use crate::Layout;

/// The system user (and its group) zstack-server runs as.
pub const SERVER_USER: &str = "zstack";
/// Its home: the management node's data directory.
pub const SERVER_HOME: &str = "/var/lib/zstack";

/// True if `release` runs zstack-server as [`SERVER_USER`] (1.2.0 and later); earlier
/// releases ran it as root.
pub fn runs_as_server_user(release: &semver::Version) -> bool {
    *release >= semver::Version::new(1, 2, 0)
}

/// Who owns a path of the management node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// `zstack:zstack`: the management node writes it.
    Server,
    /// `root:zstack`: root writes it, the management node only reads it (through its group).
    RootReadByServer,
}

/// What a path is, and whether it is made when missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// A directory (not made: the installer makes it).
    Dir,
    /// A file that is left alone while it does not exist (the database's -wal and -shm).
    File,
    /// A file made empty when missing, so the management node can write it without writing in
    /// its directory (its log in /var/log/zstack, where the agent's logs are too).
    CreatedFile,
}

/// One path of the management node: its owner and mode, and whether the sandbox of its unit
/// lets it write there (`ReadWritePaths=`; everything else is read-only to it:
/// `ProtectSystem=strict`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerPath {
    /// The logical path.
    pub path: PathBuf,
    pub kind: PathKind,
    pub owner: Owner,
    pub mode: u32,
    pub writable: bool,
}

/// Every path the management node owns or reads, in the order they are given to it (a
/// directory before what is in it). Not recursive: `/var/lib/zstack/kvmagent` (the agent's
/// state, root's) and `mysql-backup` (dump_mysql's, root's) stay root's.
///
/// The cloud's trust: the management node signs with the CA (`/etc/zstack/ca`, its key 0600),
/// serves and drives agents with its own certificate and key in `/etc/zstack/pki`, where it also
/// writes the CA's revocation list (so that directory is writable to it; the local host's
/// `host.key` in it stays root's), and deploys hosts with its SSH key (`/etc/zstack/ssh`).
pub fn server_paths(layout: &Layout) -> Vec<ServerPath> {
    let db = layout.db_file().display().to_string();
    let p = |path: PathBuf, kind, owner, mode, writable| ServerPath {
        path,
        kind,
        owner,
        mode,
        writable,
    };
    use {Owner::*, PathKind::*};
    vec![
        p(layout.data_dir(), Dir, Server, 0o755, true),
        p(layout.db_file(), File, Server, 0o600, false),
        p(
            PathBuf::from(format!("{db}-wal")),
            File,
            Server,
            0o600,
            false,
        ),
        p(
            PathBuf::from(format!("{db}-shm")),
            File,
            Server,
            0o600,
            false,
        ),
        p(
            crate::Service::Server.log_file(layout),
            CreatedFile,
            Server,
            0o640,
            true,
        ),
        p(
            layout.properties_file(),
            File,
            RootReadByServer,
            PROPERTIES_MODE,
            false,
        ),
        p(layout.ca_dir(), Dir, Server, 0o700, false),
        p(layout.ca_dir().join("ca.key"), File, Server, 0o600, false),
        p(layout.pki_dir(), Dir, Server, 0o755, true),
        p(
            layout.pki_dir().join("management-node.key"),
            File,
            Server,
            0o600,
            false,
        ),
        p(layout.ssh_dir(), Dir, Server, 0o700, false),
        p(
            layout.ssh_dir().join("id_ed25519"),
            File,
            Server,
            0o600,
            false,
        ),
    ]
}

/// The mode of zstack.properties where the management node runs as [`SERVER_USER`]: it holds
/// the admin password and the agent secret, so only root writes it and only its group
/// (`zstack`) reads it.
pub const PROPERTIES_MODE: u32 = 0o640;

/// The mode of zstack.properties a release writes: readable by the management node's group from
/// 1.2.0, root's alone before.
pub fn properties_mode(release: &semver::Version) -> u32 {
    if runs_as_server_user(release) {
        PROPERTIES_MODE
    } else {
        0o600
    }
}

/// The paths of the unit's `ReadWritePaths=`: what the management node writes.
pub fn writable_paths(layout: &Layout) -> Vec<PathBuf> {
    server_paths(layout)
        .into_iter()
        .filter(|p| p.writable)
        .map(|p| p.path)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_user_came_with_1_2_0() {
        let v = |s: &str| semver::Version::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert!(!runs_as_server_user(&v("1.1.0")));
        assert!(runs_as_server_user(&v("1.2.0")));
        assert!(runs_as_server_user(&v("1.2.1")));
        assert_eq!(properties_mode(&v("1.0.0")), 0o600);
        assert_eq!(properties_mode(&v("1.2.0")), 0o640);
    }

    #[test]
    fn it_writes_its_data_and_its_log_and_reads_the_rest() {
        let l = Layout::new("/", crate::layout::DEFAULT_INSTALL_ROOT);
        assert_eq!(
            writable_paths(&l),
            vec![
                PathBuf::from("/var/lib/zstack"),
                PathBuf::from("/var/log/zstack/management-server.log"),
                PathBuf::from("/etc/zstack/pki"),
            ]
        );
        let all = server_paths(&l);
        let props = all
            .iter()
            .find(|p| p.path == l.properties_file())
            .unwrap_or_else(|| panic!("{all:?}"));
        assert_eq!(props.owner, Owner::RootReadByServer);
        assert_eq!(props.mode & 0o007, 0, "never world-readable");
        // Directories come before what is in them.
        for (i, p) in all.iter().enumerate() {
            assert!(
                !all[i + 1..].iter().any(|q| p.path.starts_with(&q.path)),
                "{p:?}"
            );
        }
    }
}

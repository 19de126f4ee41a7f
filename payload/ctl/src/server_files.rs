//! Giving the management node's user its files ([`zstack_common::server_files`]): the system
//! user `zstack` is made when missing, and each listed path gets its owner and mode. The
//! installer records these changes in its journal (a failed run puts them back);
//! `zstack-ctl` does the same before every start of the management node (`start`, the
//! supervisor, and the unit's `ExecStartPre=+zstack-ctl own_server_files`), so a database put
//! back by restore_mysql or a zstack.properties rewritten by `configure` is readable by it again.
//!
//! Every path is opened without following symlinks and changed through its descriptor, and a
//! file with more than one hard link is refused: the management node owns
//! `/var/lib/zstack`, and must not be able to make root hand it a file of someone else's.

use std::fs::File;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use zstack_common::server_files::{server_paths, Owner, PathKind, SERVER_HOME, SERVER_USER};
use zstack_common::Layout;

/// The uid and gid of the management node's user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerUser {
    pub uid: u32,
    pub gid: u32,
}

/// The user `zstack`, if it exists.
pub fn lookup() -> anyhow::Result<Option<ServerUser>> {
    let user = nix::unistd::User::from_name(SERVER_USER)
        .with_context(|| format!("cannot look up the user {SERVER_USER}"))?;
    Ok(user.map(|u| ServerUser {
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
    }))
}

/// What [`ensure_user`] found or made.
#[derive(Debug, Clone, Copy)]
pub struct MadeUser {
    pub user: ServerUser,
    pub created_user: bool,
    pub created_group: bool,
}

/// Makes the system user and group `zstack` (no login shell, home `/var/lib/zstack`, not
/// created) unless the user exists; a group `zstack` that exists already becomes its group.
pub fn ensure_user(layout: &Layout) -> anyhow::Result<MadeUser> {
    if layout.is_sysroot() {
        bail!(
            "the user {SERVER_USER} is not made inside a sysroot ({}); it is made when the management node first starts",
            layout.sysroot().display()
        );
    }
    if let Some(user) = lookup()? {
        return Ok(MadeUser {
            user,
            created_user: false,
            created_group: false,
        });
    }
    let group_exists = nix::unistd::Group::from_name(SERVER_USER)
        .with_context(|| format!("cannot look up the group {SERVER_USER}"))?
        .is_some();
    let shell = ["/usr/sbin/nologin", "/sbin/nologin", "/bin/false"]
        .into_iter()
        .find(|s| Path::new(s).exists())
        .unwrap_or("/bin/false");
    let mut cmd = Command::new("useradd");
    cmd.args(["--system", "--no-create-home", "--home-dir", SERVER_HOME])
        .args(["--shell", shell, "--comment", "ZStack management node"]);
    if group_exists {
        cmd.args(["--gid", SERVER_USER]);
    } else {
        cmd.arg("--user-group");
    }
    let out = cmd.arg(SERVER_USER).output().context(
        "cannot run useradd (from the passwd/shadow-utils package) to make the user zstack",
    )?;
    if !out.status.success() {
        bail!(
            "useradd {SERVER_USER} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let user = lookup()?.with_context(|| format!("useradd made no user {SERVER_USER}"))?;
    Ok(MadeUser {
        user,
        created_user: true,
        created_group: !group_exists,
    })
}

/// Removes the user (and the group, if `group_too` and it is still there): the undo of
/// [`ensure_user`].
pub fn remove_user(group_too: bool) -> anyhow::Result<()> {
    if lookup()?.is_some() {
        let out = Command::new("userdel")
            .arg(SERVER_USER)
            .output()
            .context("cannot run userdel")?;
        if !out.status.success() {
            bail!(
                "userdel {SERVER_USER} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    if group_too && nix::unistd::Group::from_name(SERVER_USER)?.is_some() {
        let out = Command::new("groupdel")
            .arg(SERVER_USER)
            .output()
            .context("cannot run groupdel")?;
        if !out.status.success() {
            bail!(
                "groupdel {SERVER_USER} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(())
}

/// A path's owner and mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ownership {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

/// One change [`apply`] makes: `before` is `None` for a file it makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerChange {
    /// The host path.
    pub path: PathBuf,
    /// A directory (else a regular file).
    pub dir: bool,
    pub before: Option<Ownership>,
    pub after: Ownership,
}

/// Opens `path` for changing it through the descriptor: a file without following a symlink
/// (it may lie in a directory the management node owns); a directory through one (those of the
/// list lie in root's directories, and an operator may have moved one to another disk).
fn open_for_change(path: &Path, kind: PathKind) -> std::io::Result<File> {
    let flags = match kind {
        PathKind::Dir => nix::libc::O_DIRECTORY,
        PathKind::File | PathKind::CreatedFile => nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK,
    };
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
}

fn checked(path: &Path, file: &File, kind: PathKind) -> anyhow::Result<Ownership> {
    let meta = file.metadata()?;
    let ok = match kind {
        PathKind::Dir => meta.is_dir(),
        PathKind::File | PathKind::CreatedFile => meta.is_file(),
    };
    if !ok {
        bail!(
            "{} should be a {}, and is not: move it away and start again",
            path.display(),
            if kind == PathKind::Dir {
                "directory"
            } else {
                "regular file"
            }
        );
    }
    if meta.is_file() && meta.nlink() > 1 {
        bail!(
            "{} has {} hard links; the management node's files have one: remove the other links",
            path.display(),
            meta.nlink()
        );
    }
    Ok(Ownership {
        uid: meta.uid(),
        gid: meta.gid(),
        mode: meta.permissions().mode() & 0o7777,
    })
}

/// The changes that give `user` the management node's paths: nothing for what is right already.
pub fn pending_changes(layout: &Layout, user: ServerUser) -> anyhow::Result<Vec<OwnerChange>> {
    let mut changes = Vec::new();
    for p in server_paths(layout) {
        let path = layout.host(&p.path);
        let after = Ownership {
            uid: match p.owner {
                Owner::Server => user.uid,
                Owner::RootReadByServer => 0,
            },
            gid: user.gid,
            mode: p.mode,
        };
        let before = match open_for_change(&path, p.kind) {
            Ok(f) => Some(checked(&path, &f, p.kind)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if p.kind != PathKind::CreatedFile {
                    continue;
                }
                None
            }
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOTDIR) => bail!(
                "{} should be a directory, and is not: move it away and start again",
                path.display()
            ),
            Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => bail!(
                "{} is a symlink; the management node's files are not: replace it with the file itself",
                path.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
        };
        if before != Some(after) {
            changes.push(OwnerChange {
                path,
                dir: p.kind == PathKind::Dir,
                before,
                after,
            });
        }
    }
    Ok(changes)
}

/// Sets `path`'s owner and mode: a directory (`dir`, which may be reached through a symlink),
/// or a file, never through a symlink (made first when `make` is set).
pub fn set_ownership(path: &Path, to: Ownership, dir: bool, make: bool) -> anyhow::Result<()> {
    let kind = if dir { PathKind::Dir } else { PathKind::File };
    let file = if make {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(to.mode)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(path)
    } else {
        open_for_change(path, kind)
    }
    .with_context(|| format!("cannot open {}", path.display()))?;
    if file.metadata()?.is_file() && file.metadata()?.nlink() > 1 {
        bail!("{} has more than one hard link", path.display());
    }
    std::os::unix::fs::fchown(&file, Some(to.uid), Some(to.gid))
        .with_context(|| format!("cannot change the owner of {}", path.display()))?;
    file.set_permissions(std::fs::Permissions::from_mode(to.mode))
        .with_context(|| format!("cannot change the mode of {}", path.display()))?;
    Ok(())
}

/// Makes one change.
pub fn apply(change: &OwnerChange) -> anyhow::Result<()> {
    set_ownership(
        &change.path,
        change.after,
        change.dir,
        change.before.is_none(),
    )
}

/// Makes the user if missing and gives it the management node's files; returns what changed.
/// Nothing is done inside a sysroot.
pub fn give_server_its_files(layout: &Layout) -> anyhow::Result<Vec<OwnerChange>> {
    if layout.is_sysroot() {
        return Ok(Vec::new());
    }
    let made = ensure_user(layout)?;
    let changes = pending_changes(layout, made.user)?;
    for c in &changes {
        apply(c)?;
    }
    Ok(changes)
}

/// The directories of the local backup storage in the database (logical paths), which the
/// unit lets the management node write (`ReadWritePaths=-DIR`, rendered at install and
/// upgrade); none before there is a database or a backup storage table.
pub fn local_backup_storage_dirs(layout: &Layout) -> anyhow::Result<Vec<PathBuf>> {
    let db = layout.host(layout.db_file());
    if !db.exists() {
        return Ok(Vec::new());
    }
    let read = || -> Result<Vec<PathBuf>, rusqlite::Error> {
        let conn =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let has_table: i64 = conn.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'backup_storage'",
            [],
            |r| r.get(0),
        )?;
        if has_table == 0 {
            return Ok(Vec::new());
        }
        let mut st =
            conn.prepare("SELECT url FROM backup_storage WHERE type = 'Local' ORDER BY url")?;
        let urls = st.query_map([], |r| r.get::<_, String>(0))?;
        urls.map(|u| u.map(PathBuf::from)).collect()
    };
    read().with_context(|| format!("cannot read the backup storage of {}", db.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn me() -> ServerUser {
        ServerUser {
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
        }
    }

    fn sysroot() -> (tempfile::TempDir, Layout) {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::new(dir.path(), "/usr/local/zstack");
        for d in ["var/lib/zstack", "var/log/zstack", "etc/zstack"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        (dir, l)
    }

    #[test]
    fn changes_are_what_differs_and_a_second_pass_finds_none() {
        let (dir, l) = sysroot();
        let props = dir.path().join("etc/zstack/zstack.properties");
        std::fs::write(&props, "a = b\n").unwrap();
        std::fs::set_permissions(&props, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(dir.path().join("var/lib/zstack/zstack.db"), b"").unwrap();
        let user = me();
        let changes = pending_changes(&l, user).unwrap();
        let paths: Vec<_> = changes
            .iter()
            .map(|c| c.path.strip_prefix(dir.path()).unwrap().to_path_buf())
            .collect();
        // The db, the log (made), the properties (mode 0640); the data dir's mode if it differs.
        assert!(paths.contains(&PathBuf::from("var/lib/zstack/zstack.db")));
        assert!(paths.contains(&PathBuf::from("var/log/zstack/management-server.log")));
        assert!(paths.contains(&PathBuf::from("etc/zstack/zstack.properties")));
        assert!(!paths.iter().any(|p| p.ends_with("zstack.db-wal")));
        let log = changes
            .iter()
            .find(|c| c.path.ends_with("management-server.log"));
        assert_eq!(log.unwrap().before, None);
        if user.uid != 0 {
            // Only root can give root a file; the rest is checked as the user running this.
            return;
        }
        for c in &changes {
            apply(c).unwrap();
        }
        assert!(pending_changes(&l, user).unwrap().is_empty());
        let m = std::fs::metadata(&props).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o777), (0, 0o640));
    }

    #[test]
    fn symlinks_and_hard_links_are_refused() {
        let (dir, l) = sysroot();
        let db = dir.path().join("var/lib/zstack/zstack.db");
        let elsewhere = dir.path().join("shadow");
        std::fs::write(&elsewhere, b"secret").unwrap();
        std::os::unix::fs::symlink(&elsewhere, &db).unwrap();
        let e = pending_changes(&l, me()).unwrap_err();
        assert!(format!("{e:#}").contains("is a symlink"), "{e:#}");
        std::fs::remove_file(&db).unwrap();
        std::fs::hard_link(&elsewhere, &db).unwrap();
        let e = pending_changes(&l, me()).unwrap_err();
        assert!(format!("{e:#}").contains("hard links"), "{e:#}");
    }
}

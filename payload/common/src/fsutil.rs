//! File-system primitives. Every file the stack writes is written to a temporary name in the same
//! directory, synced, and renamed over the old one, so a crash leaves either the old or the new
//! content and never a half-written file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Writes `contents` to `path` atomically with permission bits `mode`.
pub fn atomic_write(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let dir = parent_dir(path);
    let tmp = temp_sibling(path);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(contents)?;
        // The umask may have cleared bits asked for: set them explicitly.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(&dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Points the symlink `link` at `target` atomically: a new link is made beside it and renamed
/// over the old one, so readers always see either the old or the new target.
pub fn atomic_symlink(target: &Path, link: &Path) -> io::Result<()> {
    let tmp = temp_sibling(link);
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    if let Err(e) = fs::rename(&tmp, link) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(&parent_dir(link))
}

/// Fsyncs a directory so a rename inside it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and its missing parents, returning the ones this call created, outermost first,
/// so that an undo can remove exactly those.
pub fn create_dir_all_tracked(dir: &Path, mode: u32) -> io::Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(p) = cur {
        if p.as_os_str().is_empty() || p.exists() {
            break;
        }
        missing.push(p.to_path_buf());
        cur = p.parent();
    }
    missing.reverse();
    for p in &missing {
        match fs::create_dir(p) {
            Ok(()) => fs::set_permissions(p, fs::Permissions::from_mode(mode))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(missing)
}

/// Reads a file that may not exist: `Ok(None)` when it is absent.
pub fn read_optional(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads the target of a symlink that may not exist.
pub fn read_link_optional(path: &Path) -> io::Result<Option<PathBuf>> {
    match fs::read_link(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => Ok(None),
        Err(e) => Err(e),
    }
}

/// Total size in bytes of the regular files below `dir` (symlinks are not followed).
pub fn tree_size(dir: &Path) -> io::Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            total += tree_size(&entry.path())?;
        } else if meta.is_file() {
            total += meta.len();
        }
    }
    Ok(total)
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    parent_dir(path).join(format!(".{name}.tmp-{}", std::process::id()))
}

/// (total, available to unprivileged users) bytes of the filesystem holding `dir`, as the
/// management node and the agents report storage capacity.
pub fn fs_capacity(dir: &Path) -> io::Result<(i64, i64)> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(io::Error::from)?;
    let frag = st.fragment_size() as i64;
    Ok((
        (st.blocks() as i64).saturating_mul(frag),
        (st.blocks_available() as i64).saturating_mul(frag),
    ))
}

/// Which side of [`copy_hashing`] failed: the source (a download, a file being read) or the
/// file written.
#[derive(Debug)]
pub enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

/// Copies `reader` into a new file `to`, computing the sha256 of what passes, and syncs it.
/// Returns the number of bytes and the hex sha256. Images are copied this way once, whatever
/// their size: the hash costs no second read.
pub fn copy_hashing(reader: &mut dyn std::io::Read, to: &Path) -> Result<(u64, String), CopyError> {
    use sha2::Digest;
    use std::io::Write;
    let mut out = fs::File::create(to).map_err(CopyError::Write)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf).map_err(CopyError::Read)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(CopyError::Write)?;
        total += n as u64;
    }
    out.sync_all().map_err(CopyError::Write)?;
    Ok((total, hex::encode(hasher.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_sets_mode_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        atomic_write(&p, b"one", 0o600).unwrap();
        atomic_write(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }

    #[test]
    fn atomic_symlink_switches_target() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("current");
        atomic_symlink(Path::new("versions/1.0.0"), &link).unwrap();
        atomic_symlink(Path::new("versions/1.2.0"), &link).unwrap();
        assert_eq!(
            fs::read_link(&link).unwrap(),
            PathBuf::from("versions/1.2.0")
        );
    }

    #[test]
    fn tracked_dirs_are_the_created_ones() {
        let dir = tempfile::tempdir().unwrap();
        let made = create_dir_all_tracked(&dir.path().join("a/b/c"), 0o755).unwrap();
        assert_eq!(
            made,
            vec![
                dir.path().join("a"),
                dir.path().join("a/b"),
                dir.path().join("a/b/c")
            ]
        );
        assert!(create_dir_all_tracked(&dir.path().join("a/b"), 0o755)
            .unwrap()
            .is_empty());
    }
}

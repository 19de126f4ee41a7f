//! Shared mount point primary storage on this host: the checks before a directory may hold VM
//! disks, the image cache, and the volume files (qcow2 through `qemu-img`).
//!
//! The classic failure of shared storage is writing VM disks into the empty directory under a
//! filesystem that is not mounted (yet). So a storage path must be a mount point, writable, and
//! carry the storage's id file: the first check writes it, every later check (on any host)
//! requires it, which also catches a different filesystem mounted at the same path.

use crate::file_error::file_error;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use zstack_common::agent_proto::{CheckStorage, StorageCapacity};

use crate::host::{HostError, HostTools};

/// Why a storage path, a shared mount point, the image cache or a volume file is refused.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{0} is not an absolute path")]
    NotAbsolute(String),
    #[error("{0} is not a normalised path")]
    NotNormalised(String),
    #[error("{0} is not a directory on this host; mount the shared storage there first")]
    NotADirectory(String),
    #[error("{0} is not a mount point on this host: the shared filesystem is not mounted there (VM disks written now would land in the empty directory). Mount it, and add it to /etc/fstab (zstack-ctl fstab_line prints the line)")]
    NotAMountPoint(String),
    #[error("{url} holds the id of primary storage {found} , not {want}: another filesystem (or another storage's) is mounted at this path on this host")]
    ForeignId {
        url: String,
        found: String,
        want: String,
    },
    #[error("{url} has no {ID_FILE}: the filesystem mounted there on this host is not the one the other hosts of primary storage {uuid} use")]
    NoIdFile { url: String, uuid: String },
    #[error(transparent)]
    File(#[from] crate::file_error::FileError),
    #[error("cannot lock the image cache {dir}: {source}")]
    Lock { dir: PathBuf, source: nix::Error },
    #[error("{0} has no parent")]
    NoParent(PathBuf),
    #[error("cannot download the image from {url}: {source}")]
    Download {
        url: String,
        source: Box<ureq::Error>,
    },
    #[error("downloading {url}: {source}")]
    DownloadRead { url: String, source: std::io::Error },
    #[error("the image from {url} has sha256 {got}, the management node recorded {want}")]
    Checksum {
        url: String,
        got: String,
        want: String,
    },
    #[error("{0} is in the image cache; refusing to delete it")]
    InImageCache(PathBuf),
    #[error(transparent)]
    Host(#[from] HostError),
}

pub const ID_FILE: &str = ".zstack-primary-storage-id";

/// An absolute, normalised path: no `.`/`..`, no `//`, no trailing `/`.
pub fn check_path(url: &str) -> Result<&Path, StorageError> {
    let p = Path::new(url);
    if !p.is_absolute() {
        return Err(StorageError::NotAbsolute(url.to_string()));
    }
    if url.len() > 1
        && (url.ends_with('/')
            || url.contains("//")
            || url.split('/').any(|c| c == "." || c == ".."))
    {
        return Err(StorageError::NotNormalised(url.to_string()));
    }
    Ok(p)
}

/// Undoes the octal escapes of /proc/self/mountinfo (`\040` for a space, ...).
fn unescape_mount(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let code = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok());
            if let Some(v) = code {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `path` is a mount point according to `mountinfo` (the 5th field of each line).
pub fn is_mount_point(mountinfo: &str, path: &str) -> bool {
    mountinfo.lines().any(|l| {
        l.split_whitespace()
            .nth(4)
            .is_some_and(|m| unescape_mount(m) == path)
    })
}

/// Every check of a shared mount point; answers its capacity.
pub fn check_shared_mount_point(req: &CheckStorage) -> Result<StorageCapacity, StorageError> {
    let dir = check_path(&req.url)?;
    if !dir.is_dir() {
        return Err(StorageError::NotADirectory(req.url.clone()));
    }
    let mountinfo_path = Path::new("/proc/self/mountinfo");
    let mountinfo =
        std::fs::read_to_string(mountinfo_path).map_err(file_error("read", mountinfo_path))?;
    if !is_mount_point(&mountinfo, &req.url) {
        return Err(StorageError::NotAMountPoint(req.url.clone()));
    }
    let probe = dir.join(format!(".zstack-write-check-{}", std::process::id()));
    std::fs::write(&probe, b"ok")
        .and_then(|_| std::fs::remove_file(&probe))
        .map_err(file_error("write to", dir))?;
    if !req.uuid.is_empty() {
        let id_file = dir.join(ID_FILE);
        match std::fs::read_to_string(&id_file) {
            Ok(id) if id.trim() == req.uuid => {}
            Ok(id) => {
                return Err(StorageError::ForeignId {
                    url: req.url.clone(),
                    found: id.trim().to_string(),
                    want: req.uuid.clone(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && req.write_id => {
                zstack_common::fsutil::atomic_write(
                    &id_file,
                    format!("{}\n", req.uuid).as_bytes(),
                    0o644,
                )
                .map_err(file_error("write", &id_file))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StorageError::NoIdFile {
                    url: req.url.clone(),
                    uuid: req.uuid.clone(),
                })
            }
            Err(e) => return Err(file_error("read", &id_file)(e).into()),
        }
    }
    capacity(dir)
}

pub fn capacity(dir: &Path) -> Result<StorageCapacity, StorageError> {
    let (total_capacity, available_capacity) =
        zstack_common::fsutil::fs_capacity(dir).map_err(file_error("statvfs", dir))?;
    Ok(StorageCapacity {
        total_capacity,
        available_capacity,
    })
}

/// Whether files in `dir` can be opened with O_DIRECT (cache mode `none`); tmpfs and some FUSE
/// filesystems cannot, and qemu would then fail to start the VM.
pub fn supports_o_direct(dir: &Path) -> Result<bool, StorageError> {
    std::fs::create_dir_all(dir).map_err(file_error("create", dir))?;
    let probe = dir.join(format!(".zstack-odirect-check-{}", std::process::id()));
    let opened = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(nix::libc::O_DIRECT)
        .open(&probe);
    let _ = std::fs::remove_file(&probe);
    match opened {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => Ok(false),
        Err(e) => Err(file_error("test O_DIRECT in", dir)(e).into()),
    }
}

/// `<ps>/imagecache/template/<image>/<image>.qcow2`, as the original laid it out.
pub fn image_cache_path(ps_url: &str, image: &str) -> PathBuf {
    Path::new(ps_url)
        .join("imagecache/template")
        .join(image)
        .join(format!("{image}.qcow2"))
}

/// Makes sure the image is in the cache: downloaded once from the management node, checked
/// against its sha256, renamed into place. A lock file serialises the first uses, also across
/// hosts sharing the storage; the others wait for the one copy.
pub fn ensure_cached_image(
    cache: &Path,
    url: &str,
    sha256: Option<&str>,
    client: &ureq::Agent,
) -> Result<(), StorageError> {
    let dir = cache
        .parent()
        .ok_or_else(|| StorageError::NoParent(cache.to_path_buf()))?;
    std::fs::create_dir_all(dir).map_err(file_error("create", dir))?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".lock"))
        .map_err(file_error("open the lock of", dir))?;
    let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).map_err(
        |(_, source)| StorageError::Lock {
            dir: dir.to_path_buf(),
            source,
        },
    )?;
    if cache.exists() {
        return Ok(());
    }
    let resp = client.get(url).call().map_err(|e| StorageError::Download {
        url: url.to_string(),
        source: Box::new(e),
    })?;
    let part = dir.join(".download.part");
    let mut reader = resp.into_reader();
    let (_, got) =
        zstack_common::fsutil::copy_hashing(&mut reader, &part).map_err(|e| match e {
            zstack_common::fsutil::CopyError::Read(source) => StorageError::DownloadRead {
                url: url.to_string(),
                source,
            },
            zstack_common::fsutil::CopyError::Write(e) => file_error("write", &part)(e).into(),
        })?;
    if let Some(want) = sha256 {
        if got != want {
            let _ = std::fs::remove_file(&part);
            return Err(StorageError::Checksum {
                url: url.to_string(),
                got,
                want: want.to_string(),
            });
        }
    }
    Ok(std::fs::rename(&part, cache).map_err(file_error("rename", &part))?)
}

fn parent_dir(path: &Path) -> Result<&Path, StorageError> {
    let dir = path
        .parent()
        .ok_or_else(|| StorageError::NoParent(path.to_path_buf()))?;
    std::fs::create_dir_all(dir).map_err(file_error("create", dir))?;
    Ok(dir)
}

/// `qemu-img create -q -f qcow2 <args>` for the volume file at `path`.
fn qemu_img_create(tools: &dyn HostTools, path: &Path, args: &[&str]) -> Result<(), StorageError> {
    parent_dir(path)?;
    let mut all = vec!["create", "-q", "-f", "qcow2"];
    all.extend_from_slice(args);
    tools.run("qemu-img", &all)?;
    Ok(())
}

/// A root volume: a qcow2 overlay on the cached image (the cache is never written to).
pub fn create_overlay(
    tools: &dyn HostTools,
    path: &Path,
    backing: &Path,
    backing_format: &str,
) -> Result<(), StorageError> {
    let backing = backing.display().to_string();
    let file = path.display().to_string();
    qemu_img_create(tools, path, &["-b", &backing, "-F", backing_format, &file])
}

/// A data volume: an empty qcow2 of `size` bytes.
pub fn create_blank(tools: &dyn HostTools, path: &Path, size: i64) -> Result<(), StorageError> {
    let file = path.display().to_string();
    qemu_img_create(tools, path, &[&file, &size.to_string()])
}

/// Deletes a volume's file and its `vol-<uuid>` directory; never the image cache.
pub fn delete_volume_file(path: &Path) -> Result<(), StorageError> {
    if path.components().any(|c| c.as_os_str() == "imagecache") {
        return Err(StorageError::InImageCache(path.to_path_buf()));
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(file_error("delete", path)(e).into()),
    }
    if let Some(dir) = path.parent() {
        if dir
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("vol-"))
        {
            let _ = std::fs::remove_dir(dir);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_be_absolute_and_normalised() {
        assert!(check_path("/zstack_ps").is_ok());
        assert!(check_path("zstack_ps").is_err());
        assert!(check_path("/a/../b").is_err());
        assert!(check_path("/a/").is_err());
        assert!(check_path("/a//b").is_err());
    }

    #[test]
    fn mount_points_from_mountinfo() {
        let mi = "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n\
                  40 22 7:0 / /zstack\\040ps rw - ext4 /dev/loop0 rw\n";
        assert!(is_mount_point(mi, "/"));
        assert!(is_mount_point(mi, "/zstack ps"));
        assert!(!is_mount_point(mi, "/zstack"));
    }

    #[test]
    fn a_plain_directory_is_not_a_mount_point() {
        let d = tempfile::tempdir().unwrap();
        let sub = d.path().join("ps");
        std::fs::create_dir(&sub).unwrap();
        let e = check_shared_mount_point(&CheckStorage {
            url: sub.display().to_string(),
            uuid: "x".into(),
            write_id: true,
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("not a mount point"), "{e}");
        let e = check_shared_mount_point(&CheckStorage {
            url: sub.join("missing").display().to_string(),
            uuid: "x".into(),
            write_id: true,
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("mount the shared storage"), "{e}");
    }

    #[test]
    fn the_image_cache_is_never_deleted_as_a_volume() {
        let e = delete_volume_file(Path::new("/ps/imagecache/template/i/i.qcow2"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("image cache"));
        let d = tempfile::tempdir().unwrap();
        let vol = d.path().join("vol-1/1.qcow2");
        std::fs::create_dir_all(vol.parent().unwrap()).unwrap();
        std::fs::write(&vol, b"x").unwrap();
        delete_volume_file(&vol).unwrap();
        assert!(!vol.parent().unwrap().exists());
    }
}

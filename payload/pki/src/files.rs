//! Writing key material: private files are created 0600 from the start (never briefly readable)
//! and replaced atomically, so a crash leaves the old file or the new one, never half of one.

use std::path::Path;

use crate::PkiError;

/// Writes `contents` to `path` with mode `mode` (the stack's one atomic writer), making the
/// directory first.
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let err = |source| PkiError::Write {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    zstack_common::fsutil::atomic_write(path, contents, mode).map_err(err)
}

/// Writes a private file (a key): mode 0600.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    write_atomic(path, contents, 0o600)
}

/// Writes a public file (a certificate, a CRL): mode 0644.
pub(crate) fn write_public(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    write_atomic(path, contents, 0o644)
}

pub(crate) fn read_text(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Read {
        path: path.display().to_string(),
        source,
    })
}

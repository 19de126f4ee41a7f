//! The error of a file operation on the host, shared by the modules' error enums.

use std::path::{Path, PathBuf};

/// `cannot <action> <path>: <why>`.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {path}: {source}")]
pub struct FileError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// A `map_err` argument: the I/O error of `action` on `path` as a [`FileError`].
pub fn file_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FileError {
    let path = path.to_path_buf();
    move |source| FileError {
        action,
        path,
        source,
    }
}

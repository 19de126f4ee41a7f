//! A release tree (`<install root>/versions/<version>/`) and what it says about itself.
//!
//! The same compiled programs can be labelled as any release (`make bin VERSION=x.y.z`), so the
//! version is never compiled in: every program reads `release.json` from its own tree.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Layout;

/// File name of the release description at the top of a release tree.
pub const RELEASE_FILE: &str = "release.json";
/// File name of the per-file checksum list at the top of a release tree.
pub const MANIFEST_FILE: &str = "MANIFEST";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Release {
    pub product: String,
    pub version: String,
    /// UTC build time, RFC 3339.
    pub build_date: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid release description: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: version {version:?} is not a semantic version (x.y.z)")]
    Version { path: PathBuf, version: String },
}

impl Release {
    /// Reads `release.json` of the release tree at `dir` (a host path).
    pub fn of_tree(dir: &Path) -> Result<Release, ReleaseError> {
        let path = dir.join(RELEASE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| ReleaseError::Read {
            path: path.clone(),
            source,
        })?;
        let release: Release =
            serde_json::from_str(&text).map_err(|source| ReleaseError::Parse {
                path: path.clone(),
                source,
            })?;
        release.semver().map_err(|_| ReleaseError::Version {
            path,
            version: release.version.clone(),
        })?;
        Ok(release)
    }

    /// The release that `current` points at, if any is installed.
    pub fn current(layout: &Layout) -> Option<Release> {
        let link = layout.host(layout.current_link());
        if !link.exists() {
            return None;
        }
        Release::of_tree(&link).ok()
    }

    /// The release of the running executable (`<tree>/bin/zstack` -> `<tree>/release.json`).
    pub fn of_running_program() -> Option<Release> {
        let exe = std::env::current_exe().ok()?.canonicalize().ok()?;
        Release::of_tree(exe.parent()?.parent()?).ok()
    }

    pub fn semver(&self) -> Result<semver::Version, semver::Error> {
        semver::Version::parse(&self.version)
    }
}

/// One entry of a release tree's MANIFEST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestEntry {
    File {
        path: String,
        mode: u32,
        size: u64,
        sha256: String,
    },
    Symlink {
        path: String,
        target: String,
    },
}

impl ManifestEntry {
    pub fn path(&self) -> &str {
        match self {
            ManifestEntry::File { path, .. } | ManifestEntry::Symlink { path, .. } => path,
        }
    }
}

/// The MANIFEST of a release tree: one line per file, `F <sha256> <mode> <size> <path>` or
/// `L <target> <path>`; paths are relative to the tree and contain no spaces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    pub entries: Vec<ManifestEntry>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("MANIFEST line {line} is malformed: {text:?}")]
    Malformed { line: usize, text: String },
    #[error("{path}: {problem}")]
    Mismatch { path: String, problem: String },
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl Manifest {
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let bad = || ManifestError::Malformed {
                line: i + 1,
                text: line.to_string(),
            };
            let parts: Vec<&str> = line.split(' ').collect();
            let entry = match parts.as_slice() {
                ["F", sha, mode, size, path] => ManifestEntry::File {
                    path: path.to_string(),
                    mode: u32::from_str_radix(mode, 8).map_err(|_| bad())?,
                    size: size.parse().map_err(|_| bad())?,
                    sha256: sha.to_string(),
                },
                ["L", target, path] => ManifestEntry::Symlink {
                    path: path.to_string(),
                    target: target.to_string(),
                },
                _ => return Err(bad()),
            };
            entries.push(entry);
        }
        Ok(Manifest { entries })
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for e in &self.entries {
            match e {
                ManifestEntry::File {
                    path,
                    mode,
                    size,
                    sha256,
                } => out.push_str(&format!("F {sha256} {mode:o} {size} {path}\n")),
                ManifestEntry::Symlink { path, target } => {
                    out.push_str(&format!("L {target} {path}\n"))
                }
            }
        }
        out
    }

    /// Total size of the files it lists.
    pub fn total_size(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| match e {
                ManifestEntry::File { size, .. } => *size,
                ManifestEntry::Symlink { .. } => 0,
            })
            .sum()
    }

    pub fn find(&self, path: &str) -> Option<&ManifestEntry> {
        self.entries.iter().find(|e| e.path() == path)
    }

    /// Checks an unpacked tree against this manifest: every file present with its checksum,
    /// size and mode, every symlink with its target.
    pub fn verify_tree(&self, dir: &Path) -> Result<(), ManifestError> {
        use sha2::{Digest, Sha256};
        use std::os::unix::fs::PermissionsExt;
        for e in &self.entries {
            let p = dir.join(e.path());
            let io = |source| ManifestError::Io {
                path: p.display().to_string(),
                source,
            };
            match e {
                ManifestEntry::File {
                    path,
                    mode,
                    size,
                    sha256,
                } => {
                    let meta = std::fs::symlink_metadata(&p).map_err(io)?;
                    let mismatch = |problem: String| ManifestError::Mismatch {
                        path: path.clone(),
                        problem,
                    };
                    if !meta.is_file() {
                        return Err(mismatch("is not a regular file".into()));
                    }
                    if meta.len() != *size {
                        return Err(mismatch(format!("size {} != {size}", meta.len())));
                    }
                    if meta.permissions().mode() & 0o7777 != *mode {
                        return Err(mismatch(format!(
                            "mode {:o} != {mode:o}",
                            meta.permissions().mode() & 0o7777
                        )));
                    }
                    let mut f = std::fs::File::open(&p).map_err(io)?;
                    let mut h = Sha256::new();
                    std::io::copy(&mut f, &mut h).map_err(io)?;
                    if hex::encode(h.finalize()) != *sha256 {
                        return Err(mismatch("content differs from the release (sha256)".into()));
                    }
                }
                ManifestEntry::Symlink { path, target } => {
                    let t = std::fs::read_link(&p).map_err(io)?;
                    if t != Path::new(target) {
                        return Err(ManifestError::Mismatch {
                            path: path.clone(),
                            problem: format!("links to {} instead of {target}", t.display()),
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_round_trip() {
        let text = "F 00ab 755 12 bin/zstack\nL zstack bin/zstack-ctl\n";
        let m = Manifest::parse(text).unwrap();
        assert_eq!(m.render(), text);
        assert_eq!(m.total_size(), 12);
        assert!(Manifest::parse("X y\n").is_err());
    }

    #[test]
    fn verify_tree_catches_a_changed_file() {
        use sha2::{Digest, Sha256};
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"hello").unwrap();
        std::fs::set_permissions(dir.path().join("a"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        let m = Manifest {
            entries: vec![ManifestEntry::File {
                path: "a".into(),
                mode: 0o644,
                size: 5,
                sha256: hex::encode(Sha256::digest(b"hello")),
            }],
        };
        m.verify_tree(dir.path()).unwrap();
        std::fs::write(dir.path().join("a"), b"hellx").unwrap();
        assert!(m.verify_tree(dir.path()).is_err());
    }
}

//! The `.bin` file format.
//!
//! ```text
//! +------------------+ 0
//! | sh header        |  scripts/header.sh with the offsets below filled in, padded to
//! |                  |  `header_size` with comment lines
//! +------------------+ header_size
//! | installer (zstd) |  the multi-call `zstack` program, which the header runs as
//! |                  |  `zstack-installer`; it is also the release tree's bin/zstack
//! +------------------+ header_size + installer_size
//! | payload (zstd)   |  tar of the rest of the release tree: MANIFEST first, then release.json,
//! |                  |  the links in bin/, templates/, migrations/
//! +------------------+ header_size + installer_size + payload_size
//! | unpacker (gzip)  |  `zstack-unpack`, the small program the header gunzips to check and
//! |                  |  decompress the installer part
//! +------------------+ total_size - TRAILER_SIZE
//! | trailer          |  `key=value` lines, padded to 1 KiB, ending in its own sha256
//! +------------------+ total_size
//! ```
//!
//! The program's code is in the file once: the MANIFEST lists `bin/zstack` with its sha256 and
//! [`VerifiedBin::extract`] writes it from the installer part, not from the tar.
//!
//! Every part is found by the offsets fixed at build time; nothing is found by scanning for
//! magic bytes. The trailer records the size and sha256 of every part and the total size, and
//! its own checksum covers all of its bytes, so a byte flipped anywhere, a truncated file
//! and one with bytes appended are all refused before anything on the host changes.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};
use zstack_common::release::{Manifest, ManifestEntry, MANIFEST_FILE};

/// Size of the trailer block at the end of the file.
pub const TRAILER_SIZE: u64 = 1024;
const TRAILER_MAGIC: &str = "ZSTACK-INSTALLER-TRAILER 2";
/// The multi-call program's place in the release tree; its bytes are the installer part.
pub const PROGRAM_FILE: &str = "bin/zstack";
const TRAILER_SUM_KEY: &str = "trailer_sha256=";

#[derive(Debug, thiserror::Error)]
pub enum BinError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is truncated: {actual} bytes instead of {expected}; copy the file again")]
    Truncated {
        path: PathBuf,
        actual: u64,
        expected: u64,
    },
    #[error(
        "{path} has {extra} bytes appended ({actual} instead of {expected}); copy the file again"
    )]
    Appended {
        path: PathBuf,
        actual: u64,
        expected: u64,
        extra: u64,
    },
    #[error(
        "{path} is damaged: its trailer is not valid ({why}); the file is truncated, has bytes \
         appended, or was changed; copy it again"
    )]
    BadTrailer { path: PathBuf, why: String },
    #[error("{path} is damaged: the {part} does not match its sha256 (expected {expected}, found {actual}); copy the file again")]
    Checksum {
        path: PathBuf,
        part: &'static str,
        expected: String,
        actual: String,
    },
    #[error("the payload of {path} is damaged: {why}; copy the file again")]
    Payload { path: PathBuf, why: String },
}

/// The trailer: where each part is and what it must hash to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Trailer {
    pub product: String,
    pub version: String,
    pub build_date: String,
    pub header_size: u64,
    pub header_sha256: String,
    pub installer_size: u64,
    pub installer_sha256: String,
    pub payload_size: u64,
    pub payload_sha256: String,
    pub unpacker_size: u64,
    pub unpacker_sha256: String,
    /// Sum of the sizes of the files in the payload, unpacked.
    pub unpacked_size: u64,
    pub file_count: u64,
    pub total_size: u64,
}

impl Trailer {
    pub fn installer_offset(&self) -> u64 {
        self.header_size
    }
    pub fn payload_offset(&self) -> u64 {
        self.header_size + self.installer_size
    }
    pub fn unpacker_offset(&self) -> u64 {
        self.payload_offset() + self.payload_size
    }

    /// The TRAILER_SIZE-byte block, with its own checksum in the last line.
    pub fn encode(&self) -> Vec<u8> {
        let body = format!(
            "{TRAILER_MAGIC}\nproduct={}\nversion={}\nbuild_date={}\nheader_size={}\nheader_sha256={}\n\
             installer_size={}\ninstaller_sha256={}\npayload_size={}\npayload_sha256={}\n\
             unpacker_size={}\nunpacker_sha256={}\nunpacked_size={}\nfile_count={}\ntotal_size={}\n",
            self.product,
            self.version,
            self.build_date,
            self.header_size,
            self.header_sha256,
            self.installer_size,
            self.installer_sha256,
            self.payload_size,
            self.payload_sha256,
            self.unpacker_size,
            self.unpacker_sha256,
            self.unpacked_size,
            self.file_count,
            self.total_size
        );
        let mut block = body.into_bytes();
        let sum_line_len = TRAILER_SUM_KEY.len() + 64 + 1;
        let pad = TRAILER_SIZE as usize - block.len() - sum_line_len;
        block.extend(std::iter::repeat_n(b'\n', pad));
        block.extend_from_slice(TRAILER_SUM_KEY.as_bytes());
        let sum_at = block.len();
        block.extend(std::iter::repeat_n(b'0', 64));
        block.push(b'\n');
        let sum = hex::encode(Sha256::digest(&block));
        block[sum_at..sum_at + 64].copy_from_slice(sum.as_bytes());
        block
    }

    /// Parses and checks a TRAILER_SIZE-byte block.
    pub fn decode(block: &[u8]) -> Result<Trailer, String> {
        if block.len() as u64 != TRAILER_SIZE {
            return Err("wrong size".into());
        }
        let sum_at = TRAILER_SIZE as usize - 65;
        if !block[..sum_at].ends_with(TRAILER_SUM_KEY.as_bytes()) {
            return Err("no checksum line at its end".into());
        }
        let recorded = std::str::from_utf8(&block[sum_at..sum_at + 64])
            .map_err(|_| "checksum is not text".to_string())?
            .to_string();
        let mut zeroed = block.to_vec();
        zeroed[sum_at..sum_at + 64].fill(b'0');
        let actual = hex::encode(Sha256::digest(&zeroed));
        if actual != recorded {
            return Err("its checksum does not match".into());
        }
        let text = std::str::from_utf8(block).map_err(|_| "not text".to_string())?;
        let mut lines = text.lines();
        if lines.next() != Some(TRAILER_MAGIC) {
            return Err("unknown format".into());
        }
        let mut get = std::collections::HashMap::new();
        for l in lines {
            if let Some((k, v)) = l.split_once('=') {
                get.insert(k, v);
            }
        }
        let s = |k: &str| get.get(k).map(|v| v.to_string()).ok_or(format!("no {k}"));
        let n = |k: &str| -> Result<u64, String> {
            get.get(k)
                .and_then(|v| v.parse().ok())
                .ok_or(format!("no valid {k}"))
        };
        Ok(Trailer {
            product: s("product")?,
            version: s("version")?,
            build_date: s("build_date")?,
            header_size: n("header_size")?,
            header_sha256: s("header_sha256")?,
            installer_size: n("installer_size")?,
            installer_sha256: s("installer_sha256")?,
            payload_size: n("payload_size")?,
            payload_sha256: s("payload_sha256")?,
            unpacker_size: n("unpacker_size")?,
            unpacker_sha256: s("unpacker_sha256")?,
            unpacked_size: n("unpacked_size")?,
            file_count: n("file_count")?,
            total_size: n("total_size")?,
        })
    }
}

/// A `.bin` whose every part was checked.
#[derive(Debug, Clone)]
pub struct VerifiedBin {
    pub path: PathBuf,
    pub trailer: Trailer,
}

/// Checks the whole file: sizes, the trailer's own checksum, and the sha256 of the header, the
/// installer, the payload and the unpacker.
pub fn verify(path: &Path) -> Result<VerifiedBin, BinError> {
    let io_err = |source| BinError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = File::open(path).map_err(io_err)?;
    let len = f.metadata().map_err(io_err)?.len();
    if len < TRAILER_SIZE {
        return Err(BinError::BadTrailer {
            path: path.into(),
            why: "the file is too short".into(),
        });
    }
    let mut block = vec![0u8; TRAILER_SIZE as usize];
    f.seek(SeekFrom::Start(len - TRAILER_SIZE))
        .map_err(io_err)?;
    f.read_exact(&mut block).map_err(io_err)?;
    let trailer = match Trailer::decode(&block) {
        Ok(t) => t,
        Err(why) => {
            // The header's size is the first thing it checks; say so the same way here when the
            // header's recorded size can still be read.
            if let Some(expected) = header_total_size(&mut f) {
                if len < expected {
                    return Err(BinError::Truncated {
                        path: path.into(),
                        actual: len,
                        expected,
                    });
                }
                if len > expected {
                    return Err(BinError::Appended {
                        path: path.into(),
                        actual: len,
                        expected,
                        extra: len - expected,
                    });
                }
            }
            return Err(BinError::BadTrailer {
                path: path.into(),
                why,
            });
        }
    };
    if trailer.total_size != len
        || trailer.header_size
            + trailer.installer_size
            + trailer.payload_size
            + trailer.unpacker_size
            + TRAILER_SIZE
            != len
    {
        return Err(BinError::BadTrailer {
            path: path.into(),
            why: "its part sizes do not add up to the file size".into(),
        });
    }
    let parts: [(&'static str, u64, u64, &str); 4] = [
        ("header", 0, trailer.header_size, &trailer.header_sha256),
        (
            "installer program",
            trailer.installer_offset(),
            trailer.installer_size,
            &trailer.installer_sha256,
        ),
        (
            "payload",
            trailer.payload_offset(),
            trailer.payload_size,
            &trailer.payload_sha256,
        ),
        (
            "unpacker",
            trailer.unpacker_offset(),
            trailer.unpacker_size,
            &trailer.unpacker_sha256,
        ),
    ];
    for (part, off, size, expected) in parts {
        f.seek(SeekFrom::Start(off)).map_err(io_err)?;
        let mut h = Sha256::new();
        let copied = io::copy(&mut (&mut f).take(size), &mut h).map_err(io_err)?;
        let actual = hex::encode(h.finalize());
        if copied != size || actual != expected {
            return Err(BinError::Checksum {
                path: path.into(),
                part,
                expected: expected.to_string(),
                actual,
            });
        }
    }
    Ok(VerifiedBin {
        path: path.to_path_buf(),
        trailer,
    })
}

/// `ZS_TOTAL_SIZE=<n>` from the header, if readable.
fn header_total_size(f: &mut File) -> Option<u64> {
    f.seek(SeekFrom::Start(0)).ok()?;
    let mut head = vec![0u8; 4096];
    let n = f.read(&mut head).ok()?;
    let text = String::from_utf8_lossy(&head[..n]);
    text.lines()
        .find_map(|l| l.strip_prefix("ZS_TOTAL_SIZE="))
        .and_then(|v| v.trim().parse().ok())
}

impl VerifiedBin {
    fn payload_reader(&self) -> Result<impl Read, BinError> {
        let io_err = |source| BinError::Io {
            path: self.path.clone(),
            source,
        };
        let mut f = File::open(&self.path).map_err(io_err)?;
        f.seek(SeekFrom::Start(self.trailer.payload_offset()))
            .map_err(io_err)?;
        let limited = BufReader::with_capacity(1 << 20, f.take(self.trailer.payload_size));
        zstd::stream::read::Decoder::with_buffer(limited).map_err(io_err)
    }

    fn payload_err(&self, why: impl std::fmt::Display) -> BinError {
        BinError::Payload {
            path: self.path.clone(),
            why: why.to_string(),
        }
    }

    /// The MANIFEST, read from the first entry of the payload without unpacking the rest.
    pub fn manifest(&self) -> Result<Manifest, BinError> {
        let mut archive = tar::Archive::new(self.payload_reader()?);
        let mut entries = archive.entries().map_err(|e| self.payload_err(e))?;
        let mut first = entries
            .next()
            .ok_or_else(|| self.payload_err("it is empty"))?
            .map_err(|e| self.payload_err(e))?;
        let name = first.path().map_err(|e| self.payload_err(e))?.to_path_buf();
        if name != Path::new(MANIFEST_FILE) {
            return Err(self.payload_err(format!(
                "its first entry is {}, not MANIFEST",
                name.display()
            )));
        }
        let mut text = String::new();
        first
            .read_to_string(&mut text)
            .map_err(|e| self.payload_err(e))?;
        Manifest::parse(&text).map_err(|e| self.payload_err(e))
    }

    /// Unpacks the payload into `dest` (which must exist and be empty), checking every file
    /// against the MANIFEST as it is written. Calls `progress` with the bytes written so far.
    pub fn extract(
        &self,
        dest: &Path,
        mut progress: impl FnMut(u64),
    ) -> Result<Manifest, BinError> {
        let mut archive = tar::Archive::new(self.payload_reader()?);
        let mut manifest: Option<Manifest> = None;
        let mut seen = std::collections::HashSet::new();
        let mut written = 0u64;
        let write_err = |p: &Path, e: io::Error| BinError::Io {
            path: p.to_path_buf(),
            source: e,
        };
        for entry in archive.entries().map_err(|e| self.payload_err(e))? {
            let mut entry = entry.map_err(|e| self.payload_err(e))?;
            let rel = entry.path().map_err(|e| self.payload_err(e))?.to_path_buf();
            if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
                return Err(self.payload_err(format!("unsafe path {}", rel.display())));
            }
            let rel_str = rel.to_string_lossy().into_owned();
            if manifest.is_none() {
                if rel != Path::new(MANIFEST_FILE) {
                    return Err(self.payload_err("its first entry is not MANIFEST"));
                }
                let mut text = String::new();
                entry
                    .read_to_string(&mut text)
                    .map_err(|e| self.payload_err(e))?;
                let out = dest.join(MANIFEST_FILE);
                std::fs::write(&out, &text).map_err(|e| write_err(&out, e))?;
                let m = Manifest::parse(&text).map_err(|e| self.payload_err(e))?;
                let Some(ManifestEntry::File {
                    mode, size, sha256, ..
                }) = m.find(PROGRAM_FILE)
                else {
                    return Err(self.payload_err(format!(
                        "its MANIFEST does not list {PROGRAM_FILE} as a file"
                    )));
                };
                let out = dest.join(PROGRAM_FILE);
                if let Some(parent) = out.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| write_err(parent, e))?;
                }
                self.write_program(&out, *mode, *size, sha256)?;
                written += size;
                progress(written);
                seen.insert(PROGRAM_FILE.to_string());
                manifest = Some(m);
                continue;
            }
            let Some(m) = manifest.as_ref() else { continue };
            if seen.contains(&rel_str) {
                return Err(self.payload_err(format!("{rel_str} appears twice")));
            }
            let out = dest.join(&rel);
            let kind = entry.header().entry_type();
            if kind.is_dir() {
                std::fs::create_dir_all(&out).map_err(|e| write_err(&out, e))?;
                continue;
            }
            let expected = m
                .find(&rel_str)
                .ok_or_else(|| self.payload_err(format!("{rel_str} is not in the MANIFEST")))?;
            if let Some(parent) = out.parent() {
                std::fs::create_dir_all(parent).map_err(|e| write_err(parent, e))?;
            }
            match expected {
                ManifestEntry::File {
                    mode, size, sha256, ..
                } if kind.is_file() => {
                    let file = File::create(&out).map_err(|e| write_err(&out, e))?;
                    let mut hashing = HashingWriter {
                        inner: io::BufWriter::with_capacity(1 << 20, file),
                        hash: Sha256::new(),
                        n: 0,
                    };
                    io::copy(&mut entry, &mut hashing)
                        .map_err(|e| self.payload_err(format!("{rel_str}: {e}")))?;
                    hashing.inner.flush().map_err(|e| write_err(&out, e))?;
                    let got = hex::encode(hashing.hash.finalize());
                    if hashing.n != *size || got != *sha256 {
                        return Err(
                            self.payload_err(format!("{rel_str} does not match the MANIFEST"))
                        );
                    }
                    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(*mode))
                        .map_err(|e| write_err(&out, e))?;
                    written += size;
                    progress(written);
                }
                ManifestEntry::Symlink { target, .. } if kind.is_symlink() => {
                    let link = entry
                        .link_name()
                        .map_err(|e| self.payload_err(e))?
                        .ok_or_else(|| {
                            self.payload_err(format!("{rel_str}: symlink without target"))
                        })?;
                    if link != Path::new(target) {
                        return Err(
                            self.payload_err(format!("{rel_str} does not match the MANIFEST"))
                        );
                    }
                    std::os::unix::fs::symlink(target, &out).map_err(|e| write_err(&out, e))?;
                }
                _ => return Err(self.payload_err(format!("{rel_str} has the wrong type"))),
            }
            seen.insert(rel_str);
        }
        let m = manifest.ok_or_else(|| self.payload_err("it has no MANIFEST"))?;
        if let Some(missing) = m.entries.iter().find(|e| !seen.contains(e.path())) {
            return Err(self.payload_err(format!(
                "{} is listed in the MANIFEST but missing",
                missing.path()
            )));
        }
        Ok(m)
    }
}

impl VerifiedBin {
    /// Writes the multi-call program to `out`: the installer part decompressed, checked against
    /// its MANIFEST entry. A program started by this file's header is those very bytes (the
    /// unpacker wrote them), so when the running program matches the entry its bytes are copied
    /// instead of decompressed again. Always a new file, never a hard link to the temporary
    /// one: a link would keep the temporary file's SELinux label, which systemd may refuse to run.
    fn write_program(
        &self,
        out: &Path,
        mode: u32,
        size: u64,
        sha256: &str,
    ) -> Result<(), BinError> {
        let matches = |bytes: &[u8]| {
            bytes.len() as u64 == size && hex::encode(Sha256::digest(bytes)) == sha256
        };
        let bytes = match running_program(size).and_then(|exe| std::fs::read(exe).ok()) {
            Some(bytes) if matches(&bytes) => bytes,
            _ => {
                let bytes = self.decompress_program(size)?;
                if !matches(&bytes) {
                    return Err(
                        self.payload_err(format!("{PROGRAM_FILE} does not match the MANIFEST"))
                    );
                }
                bytes
            }
        };
        let write_err = |source| BinError::Io {
            path: out.to_path_buf(),
            source,
        };
        std::fs::write(out, &bytes).map_err(write_err)?;
        std::fs::set_permissions(out, std::fs::Permissions::from_mode(mode)).map_err(write_err)
    }

    /// The installer part, decompressed.
    fn decompress_program(&self, size: u64) -> Result<Vec<u8>, BinError> {
        let io_err = |source| BinError::Io {
            path: self.path.clone(),
            source,
        };
        let mut f = File::open(&self.path).map_err(io_err)?;
        f.seek(SeekFrom::Start(self.trailer.installer_offset()))
            .map_err(io_err)?;
        let part = BufReader::with_capacity(1 << 20, f.take(self.trailer.installer_size));
        let mut decoder = zstd::stream::read::Decoder::with_buffer(part).map_err(io_err)?;
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        decoder
            .read_to_end(&mut bytes)
            .map_err(|e| self.payload_err(format!("the installer program: {e}")))?;
        Ok(bytes)
    }
}

/// The running program's file, when it has `size` bytes.
fn running_program(size: u64) -> Option<PathBuf> {
    let exe = std::fs::read_link("/proc/self/exe").ok()?;
    (std::fs::metadata(&exe).ok()?.len() == size).then_some(exe)
}

struct HashingWriter<W: Write> {
    inner: W,
    hash: Sha256,
    n: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trailer() -> Trailer {
        Trailer {
            product: "ZStack".into(),
            version: "1.2.0".into(),
            build_date: "2026-11-24T00:00:00Z".into(),
            header_size: 8192,
            header_sha256: "a".repeat(64),
            installer_size: 100,
            installer_sha256: "b".repeat(64),
            payload_size: 200,
            payload_sha256: "c".repeat(64),
            unpacker_size: 50,
            unpacker_sha256: "d".repeat(64),
            unpacked_size: 1000,
            file_count: 5,
            total_size: 8192 + 100 + 200 + 50 + TRAILER_SIZE,
        }
    }

    #[test]
    fn trailer_round_trip() {
        let block = trailer().encode();
        assert_eq!(block.len() as u64, TRAILER_SIZE);
        assert_eq!(Trailer::decode(&block).unwrap(), trailer());
    }

    #[test]
    fn a_built_bin_holds_the_program_once_and_extracts_it_from_the_installer_part() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let program: Vec<u8> = (0..300_000u32)
            .flat_map(|i| (i.wrapping_mul(2_654_435_761) >> 7).to_le_bytes())
            .collect();
        let (zstack, unpacker) = (dir.path().join("zstack"), dir.path().join("unpack"));
        std::fs::write(&zstack, &program).unwrap();
        std::fs::write(&unpacker, b"#!/bin/sh\n").unwrap();
        let out = dir.path().join("z.bin");
        let t = crate::assemble::build(&crate::assemble::BuildInputs {
            version: semver::Version::new(1, 2, 0),
            zstack_program: zstack,
            unpacker_program: unpacker,
            templates_dir: repo.join("templates"),
            migrations_dir: repo.join("payload/migrations"),
            header_template: repo.join("scripts/header.sh"),
            out: out.clone(),
            zstd_level: 3,
        })
        .unwrap();
        let v = verify(&out).unwrap();
        assert_eq!(v.trailer, t);
        let mut tar = tar::Archive::new(v.payload_reader().unwrap());
        let names: Vec<String> = tar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(names.contains(&"bin/zstack-ctl".to_string()), "{names:?}");
        assert!(!names.contains(&PROGRAM_FILE.to_string()), "{names:?}");
        let tree = dir.path().join("tree");
        std::fs::create_dir(&tree).unwrap();
        v.extract(&tree, |_| {}).unwrap();
        assert_eq!(std::fs::read(tree.join(PROGRAM_FILE)).unwrap(), program);
        let mode = std::fs::metadata(tree.join(PROGRAM_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(
            std::fs::read_link(tree.join("bin/zstack-ctl")).unwrap(),
            Path::new("zstack")
        );
        // A flipped byte in the installer part is caught before anything is unpacked.
        let mut bytes = std::fs::read(&out).unwrap();
        bytes[(t.installer_offset() + t.installer_size / 2) as usize] ^= 1;
        std::fs::write(&out, &bytes).unwrap();
        assert!(matches!(
            verify(&out),
            Err(BinError::Checksum {
                part: "installer program",
                ..
            })
        ));
    }

    #[test]
    fn any_flipped_byte_of_the_trailer_is_caught() {
        let block = trailer().encode();
        for i in 0..block.len() {
            let mut b = block.clone();
            b[i] ^= 0x01;
            assert!(Trailer::decode(&b).is_err(), "flip at {i} not caught");
        }
    }
}

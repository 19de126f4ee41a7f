//! The `.bin`'s unpacker (see `zstack_installer::binfmt`). The sh header cannot decompress zstd,
//! and gzip is too slow and too large for the 14 MB program, so the header gunzips this small
//! program and runs it:
//!
//! ```text
//! zstack-unpack <file> <offset> <size> <sha256> <out>
//! ```
//!
//! It reads `size` bytes at `offset` of `file`, checks their sha256 before anything else, and
//! decompresses them (zstd) into the new file `out` (mode 0700). Exit codes: 0 done; 3 the part
//! is damaged (said on stderr; the header stops); 4 `out` could not be written (the header tries
//! the next directory); 2 wrong arguments. `zstack-unpack --can-run` exits 0 at once: the header
//! uses it to find a directory where programs may run.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::ExitCode;

use sha2::{Digest, Sha256};

const DAMAGED: u8 = 3;
const CANNOT_WRITE: u8 = 4;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() == 1 && args[0] == "--can-run" {
        return ExitCode::SUCCESS;
    }
    let [file, offset, size, sha256, out] = args.as_slice() else {
        eprintln!("usage: zstack-unpack <file> <offset> <size> <sha256> <out> (the .bin's header runs this)");
        return ExitCode::from(2);
    };
    let (Ok(offset), Ok(size)) = (offset.parse::<u64>(), size.parse::<u64>()) else {
        eprintln!("zstack-unpack: offset and size must be numbers, not {offset:?} and {size:?}");
        return ExitCode::from(2);
    };
    let file = Path::new(file);
    let compressed = match read_part(file, offset, size) {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!(
                "zstack-installer: cannot read the installer program inside {}: {e}; copy the file again",
                file.display()
            );
            return ExitCode::from(DAMAGED);
        }
    };
    if hex::encode(Sha256::digest(&compressed)) != *sha256 {
        eprintln!(
            "zstack-installer: the installer program inside {} is damaged (sha256 mismatch); copy the file again",
            file.display()
        );
        return ExitCode::from(DAMAGED);
    }
    let out = Path::new(out);
    match write_program(&compressed, out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Damaged(e)) => {
            let _ = std::fs::remove_file(out);
            eprintln!(
                "zstack-installer: the installer program inside {} is damaged ({e}); copy the file again",
                file.display()
            );
            ExitCode::from(DAMAGED)
        }
        Err(Failure::CannotWrite(e)) => {
            // A full or read-only directory: the header tries the next one.
            let _ = std::fs::remove_file(out);
            eprintln!("zstack-installer: cannot write {}: {e}", out.display());
            ExitCode::from(CANNOT_WRITE)
        }
    }
}

/// `size` bytes at `offset`; a short read is an error (the file is truncated).
fn read_part(file: &Path, offset: u64, size: u64) -> io::Result<Vec<u8>> {
    let mut f = File::open(file)?;
    f.seek(SeekFrom::Start(offset))?;
    let len = usize::try_from(size).map_err(|_| io::Error::other("part too large"))?;
    let mut bytes = vec![0u8; len];
    f.read_exact(&mut bytes)?;
    Ok(bytes)
}

enum Failure {
    Damaged(io::Error),
    CannotWrite(io::Error),
}

fn write_program(compressed: &[u8], out: &Path) -> Result<(), Failure> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o700)
        .open(out)
        .map_err(Failure::CannotWrite)?;
    let mut sink = Sink {
        inner: BufWriter::with_capacity(1 << 20, file),
        error: None,
    };
    let decoded = zstd::stream::copy_decode(compressed, &mut sink);
    if let Some(e) = sink.error.take() {
        return Err(Failure::CannotWrite(e));
    }
    decoded.map_err(Failure::Damaged)?;
    sink.inner
        .into_inner()
        .map(drop)
        .map_err(|e| Failure::CannotWrite(e.into_error()))
}

/// Remembers a write error, so that it is told apart from a decoding error.
struct Sink<W: Write> {
    inner: W,
    error: Option<io::Error>,
}

impl<W: Write> Write for Sink<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf).inspect_err(|e| {
            self.error = Some(io::Error::new(e.kind(), e.to_string()));
        })
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().inspect_err(|e| {
            self.error = Some(io::Error::new(e.kind(), e.to_string()));
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_round_trips_and_gets_mode_0700() {
        let dir = tempfile::tempdir().unwrap();
        let program: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let compressed = zstd::stream::encode_all(&program[..], 3).unwrap();
        let out = dir.path().join("p");
        assert!(write_program(&compressed, &out).is_ok());
        assert_eq!(std::fs::read(&out).unwrap(), program);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn a_damaged_stream_and_an_existing_file_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let mut compressed = zstd::stream::encode_all(&b"not a program"[..], 3).unwrap();
        let out = dir.path().join("p");
        std::fs::write(&out, b"in the way").unwrap();
        assert!(matches!(
            write_program(&compressed, &out),
            Err(Failure::CannotWrite(_))
        ));
        std::fs::remove_file(&out).unwrap();
        compressed.truncate(compressed.len() / 2);
        assert!(matches!(
            write_program(&compressed, &out),
            Err(Failure::Damaged(_))
        ));
    }

    #[test]
    fn a_part_past_the_end_of_the_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"0123456789").unwrap();
        assert_eq!(read_part(&f, 2, 5).unwrap(), b"23456");
        assert!(read_part(&f, 8, 5).is_err());
    }
}

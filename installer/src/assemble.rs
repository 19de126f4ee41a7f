//! Assembles `zstack-installer-<version>.bin` (see [`crate::binfmt`] for the layout).
//!
//! 1. Stage the release tree: `bin/zstack` and its four names as symlinks, `templates/`, the
//!    migrations of releases up to the one being built (so `VERSION=1.0.0` carries only what
//!    1.0.0 had), and `release.json`.
//! 2. Write the MANIFEST (sha256, mode and size of every file, `bin/zstack` included) and pack
//!    the tree but `bin/zstack` as a tar whose first entry is the MANIFEST, compressed with zstd.
//! 3. Compress `bin/zstack` with zstd as the installer part (the header runs it as
//!    `zstack-installer`), and the unpacker with gzip (the one decompressor every target host has).
//! 4. Fill the offsets and checksums into the sh header, pad it to a fixed size, and write
//!    header, installer, payload, unpacker and trailer.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};
use zstack_common::release::{Manifest, ManifestEntry, Release, MANIFEST_FILE, RELEASE_FILE};
use zstack_common::PRODUCT;

use crate::binfmt::{Trailer, PROGRAM_FILE, TRAILER_SIZE};

/// The names the multi-call program is linked as.
pub const PROGRAM_NAMES: [&str; 4] = [
    "zstack-server",
    "zstack-kvmagent",
    "zstack-ctl",
    "zstack-cli",
];

pub struct BuildInputs {
    pub version: semver::Version,
    pub zstack_program: PathBuf,
    /// `zstack-unpack` (installer/unpack).
    pub unpacker_program: PathBuf,
    pub templates_dir: PathBuf,
    pub migrations_dir: PathBuf,
    pub header_template: PathBuf,
    pub out: PathBuf,
    pub zstd_level: i32,
}

/// Builds the .bin and returns its trailer.
pub fn build(inputs: &BuildInputs) -> anyhow::Result<Trailer> {
    let stage = tempfile_dir(&inputs.out)?;
    let result = build_in(inputs, &stage);
    let _ = fs::remove_dir_all(&stage);
    result
}

fn tempfile_dir(out: &Path) -> anyhow::Result<PathBuf> {
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent)?;
    let dir = parent.join(format!(".stage-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir(&dir)?;
    Ok(dir)
}

fn build_in(inputs: &BuildInputs, stage: &Path) -> anyhow::Result<Trailer> {
    let build_date = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let tree = stage.join("tree");
    let mut files: Vec<(String, PathBuf, u32)> = Vec::new(); // (relative path, source, mode)
    let mut links: Vec<(String, String)> = Vec::new();

    files.push((PROGRAM_FILE.into(), inputs.zstack_program.clone(), 0o755));
    for name in PROGRAM_NAMES {
        links.push((format!("bin/{name}"), "zstack".into()));
    }
    for (rel, src) in walk(&inputs.templates_dir)? {
        files.push((format!("templates/{rel}"), src, 0o644));
    }
    let mut migration_count = 0;
    for (rel, src) in walk(&inputs.migrations_dir)? {
        let (v, _) = zstack_db::Migration::parse_file_name(&rel)
            .with_context(|| format!("{}: not a V<x.y.z>__<what>.sql name", src.display()))?;
        if v <= inputs.version {
            files.push((format!("migrations/{rel}"), src, 0o644));
            migration_count += 1;
        }
    }
    if migration_count == 0 {
        bail!(
            "no migration exists for release {} or earlier",
            inputs.version
        );
    }
    let release = Release {
        product: PRODUCT.into(),
        version: inputs.version.to_string(),
        build_date: build_date.clone(),
    };
    fs::create_dir_all(&tree)?;
    let release_json = tree.join(RELEASE_FILE);
    fs::write(&release_json, serde_json::to_vec_pretty(&release)?)?;
    files.push((RELEASE_FILE.into(), release_json, 0o644));
    files.sort();

    // Manifest.
    let mut manifest = Manifest::default();
    for (rel, src, mode) in &files {
        if rel.contains(' ') {
            bail!("{rel}: payload paths may not contain spaces");
        }
        let bytes = fs::read(src).with_context(|| format!("cannot read {}", src.display()))?;
        manifest.entries.push(ManifestEntry::File {
            path: rel.clone(),
            mode: *mode,
            size: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(&bytes)),
        });
    }
    for (rel, target) in &links {
        manifest.entries.push(ManifestEntry::Symlink {
            path: rel.clone(),
            target: target.clone(),
        });
    }

    // Payload: tar (MANIFEST first) compressed with zstd; the program is the installer part.
    let payload_path = stage.join("payload.tar.zst");
    {
        let out = fs::File::create(&payload_path)?;
        let enc = zstd_encoder(out, inputs.zstd_level)?;
        let mtime = chrono::Utc::now().timestamp() as u64;
        let mut tar = tar::Builder::new(enc);
        let manifest_text = manifest.render();
        append_bytes(
            &mut tar,
            MANIFEST_FILE,
            manifest_text.as_bytes(),
            0o644,
            mtime,
        )?;
        for (rel, src, mode) in files.iter().filter(|(rel, ..)| rel != PROGRAM_FILE) {
            let bytes = fs::read(src)?;
            append_bytes(&mut tar, rel, &bytes, *mode, mtime)?;
        }
        for (rel, target) in &links {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_mode(0o777);
            h.set_mtime(mtime);
            tar.append_link(&mut h, rel, target)?;
        }
        tar.into_inner()?.finish()?.sync_all()?;
    }
    let payload = fs::read(&payload_path)?;

    // Installer part: the multi-call program, zstd-compressed; the unpacker, gzip-compressed.
    let program = fs::read(&inputs.zstack_program)
        .with_context(|| format!("cannot read {}", inputs.zstack_program.display()))?;
    let mut enc = zstd_encoder(Vec::new(), inputs.zstd_level)?;
    enc.write_all(&program)?;
    let installer = enc.finish()?;
    let installer_sha = hex::encode(Sha256::digest(&installer));
    let unpacker_raw = fs::read(&inputs.unpacker_program)
        .with_context(|| format!("cannot read {}", inputs.unpacker_program.display()))?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&unpacker_raw)?;
    let unpacker = gz.finish()?;
    let unpacker_sha = hex::encode(Sha256::digest(&unpacker));

    // Header: rendered twice; the size of the first rendering (rounded up) fixes the offsets.
    let template = fs::read_to_string(&inputs.header_template)
        .with_context(|| format!("cannot read {}", inputs.header_template.display()))?;
    let render = |header_size: u64, total: u64| {
        let unpacker_offset = header_size
            .saturating_add(installer.len() as u64)
            .saturating_add(payload.len() as u64);
        template
            .replace("@VERSION@", &inputs.version.to_string())
            .replace("@HEADER_SIZE@", &header_size.to_string())
            .replace("@INSTALLER_SIZE@", &installer.len().to_string())
            .replace("@INSTALLER_SHA256@", &installer_sha)
            .replace("@UNPACKER_OFFSET@", &unpacker_offset.to_string())
            .replace("@UNPACKER_SIZE@", &unpacker.len().to_string())
            .replace("@UNPACKER_SHA256@", &unpacker_sha)
            .replace("@TOTAL_SIZE@", &total.to_string())
    };
    let probe = render(u64::MAX, u64::MAX);
    let header_size = (probe.len() as u64 + 64).div_ceil(512) * 512;
    let total = header_size
        + installer.len() as u64
        + payload.len() as u64
        + unpacker.len() as u64
        + TRAILER_SIZE;
    let mut header = render(header_size, total).into_bytes();
    if header.len() as u64 > header_size {
        bail!("the rendered header outgrew its reserved size");
    }
    // Pad with comment lines; the script has exited before it reaches them.
    while (header.len() as u64) < header_size {
        let room = header_size as usize - header.len();
        let line = if room >= 2 {
            format!("#{}\n", "#".repeat((room - 2).min(78)))
        } else {
            "\n".into()
        };
        header.extend_from_slice(line.as_bytes());
    }

    let trailer = Trailer {
        product: PRODUCT.into(),
        version: inputs.version.to_string(),
        build_date,
        header_size,
        header_sha256: hex::encode(Sha256::digest(&header)),
        installer_size: installer.len() as u64,
        installer_sha256: installer_sha,
        payload_size: payload.len() as u64,
        payload_sha256: hex::encode(Sha256::digest(&payload)),
        unpacker_size: unpacker.len() as u64,
        unpacker_sha256: unpacker_sha,
        unpacked_size: manifest.total_size(),
        file_count: manifest.entries.len() as u64,
        total_size: total,
    };
    let tmp_out = inputs.out.with_extension("bin.tmp");
    {
        let mut out = fs::File::create(&tmp_out)?;
        out.write_all(&header)?;
        out.write_all(&installer)?;
        out.write_all(&payload)?;
        out.write_all(&unpacker)?;
        out.write_all(&trailer.encode())?;
        out.sync_all()?;
    }
    fs::set_permissions(&tmp_out, fs::Permissions::from_mode(0o755))?;
    fs::rename(&tmp_out, &inputs.out)?;
    Ok(trailer)
}

/// zstd at `level` with a 16 MiB window, so the whole program is one window.
fn zstd_encoder<W: Write>(
    out: W,
    level: i32,
) -> anyhow::Result<zstd::stream::write::Encoder<'static, W>> {
    let mut enc = zstd::stream::write::Encoder::new(out, level)?;
    enc.long_distance_matching(true)?;
    enc.window_log(24)?;
    Ok(enc)
}

fn append_bytes<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    bytes: &[u8],
    mode: u32,
    mtime: u64,
) -> anyhow::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(bytes.len() as u64);
    h.set_mode(mode);
    h.set_mtime(mtime);
    tar.append_data(&mut h, path, bytes)?;
    Ok(())
}

/// Regular files below `dir`, as (relative path, full path), sorted.
fn walk(dir: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).with_context(|| format!("cannot read {}", d.display()))? {
            let entry = entry?;
            let p = entry.path();
            if entry.file_type()?.is_dir() {
                stack.push(p);
            } else if entry.file_type()?.is_file() {
                let rel = p.strip_prefix(dir)?.to_string_lossy().into_owned();
                out.push((rel, p));
            }
        }
    }
    out.sort();
    Ok(out)
}

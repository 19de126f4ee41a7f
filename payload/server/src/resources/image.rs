//! Images, added from a file on the management node or a URL it can reach (clouds are often
//! air-gapped: there is no public image catalogue). The image is copied into the backup storage
//! while its sha256 is computed; a qcow2 image must look like one, and its virtual size becomes
//! the size of the root volumes made from it. Agents fetch images from the management node.

use std::io::Read;
use std::path::{Path, PathBuf};

use rusqlite::{params, OptionalExtension};
use serde_json::{json, Value};
use zstack_common::fsutil::CopyError;

use crate::api::{exists, inventory, one, opt, req, ApiSpec, Call, Handler, QUERY_PARAMS};
use crate::auth;
use crate::error::ApiError;
use crate::job::Job;
use crate::query::Table;
use crate::Node;

pub const FORMATS: &[&str] = &["qcow2", "raw", "iso"];
pub const MEDIA_TYPES: &[&str] = &["RootVolumeTemplate", "DataVolumeTemplate", "ISO"];
pub const PLATFORMS: &[&str] = &["Linux", "Windows", "Other"];

pub const APIS: &[ApiSpec] = &[
    ApiSpec {
        name: "AddImage",
        description: "Add an image from a file on the management node (`/path` or `file:///path`) \
                      or an `http://` URL it can reach; it is copied into the backup storage",
        needs_session: true,
        params: &[
            req("name", "image name"),
            req("url", "file:///path, /path or http://..."),
            req("backupStorageUuids", "the backup storage to hold it (one)"),
            opt("format", "qcow2 (default), raw or iso"),
            opt(
                "mediaType",
                "RootVolumeTemplate (default), DataVolumeTemplate or ISO",
            ),
            opt("platform", "Linux (default), Windows or Other"),
            opt("description", "free text"),
        ],
        handler: Handler::Async(add_image),
    },
    ApiSpec {
        name: "QueryImage",
        description: "Images",
        needs_session: true,
        params: QUERY_PARAMS,
        handler: Handler::Read(query_image),
    },
    ApiSpec {
        name: "DeleteImage",
        description: "Delete an image and its file from the backup storage (VMs made from it keep \
                      their volumes)",
        needs_session: true,
        params: &[req("uuid", "the image")],
        handler: Handler::Sync(delete_image),
    },
];

pub const IMAGE: Table = Table {
    resource: "Image",
    table: "image",
    fields: &[
        ("uuid", "uuid"),
        ("name", "name"),
        ("description", "description"),
        ("url", "url"),
        ("format", "format"),
        ("mediaType", "media_type"),
        ("platform", "platform"),
        ("size", "size"),
        ("actualSize", "actual_size"),
        ("sha256Sum", "sha256sum"),
        ("status", "status"),
        ("state", "state"),
        ("backupStorageUuid", "backup_storage_uuid"),
        ("installPath", "install_path"),
        ("createDate", "create_date"),
        ("lastOpDate", "last_op_date"),
    ],
    expand: None,
};

enum Source {
    File(PathBuf),
    Http(String),
}

fn source(url: &str) -> Result<Source, ApiError> {
    if let Some(p) = url.strip_prefix("file://") {
        return source(p);
    }
    if url.starts_with('/') {
        return Ok(Source::File(PathBuf::from(url)));
    }
    if url.starts_with("http://") {
        return Ok(Source::Http(url.to_string()));
    }
    if url.starts_with("https://") {
        return Err(ApiError::invalid(
            "url",
            "https:// is not supported; serve the image over http:// inside your network, or copy \
             it to the management node and give its path",
        ));
    }
    Err(ApiError::invalid(
        "url",
        format!("{url:?} is neither a path on the management node nor an http:// URL"),
    ))
}

/// `<backup storage>/images`, made 0700 (image files in it are 0600).
pub fn images_dir(bs: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let dir = bs.join("images");
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}

/// A local image file may come only from a directory the operator lists in
/// `image.sourceDirectories` (zstack.properties), or from the backup storage itself. Symlinks
/// are resolved first; the file opened is the resolved one.
fn allowed_file(node: &Node, path: &Path, bs_url: &str) -> Result<PathBuf, ApiError> {
    let real = std::fs::canonicalize(path).map_err(|e| {
        ApiError::invalid(
            "url",
            format!(
                "{} is not a file on the management node: {e}",
                path.display()
            ),
        )
    })?;
    if !real.is_file() {
        return Err(ApiError::invalid(
            "url",
            format!("{} is not a file on the management node", path.display()),
        ));
    }
    let bs = super::storage::resolve(Path::new(bs_url));
    let allowed = node
        .image_source_dirs
        .iter()
        .map(|d| super::storage::resolve(d))
        .chain(std::iter::once(bs))
        .any(|dir| real.starts_with(&dir));
    if !allowed {
        let listed = if node.image_source_dirs.is_empty() {
            "none is listed".to_string()
        } else {
            format!(
                "listed: {}",
                node.image_source_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        return Err(ApiError::invalid(
            "url",
            format!(
                "{} is not under a directory images may be added from ({listed}); add its \
                 directory to {} in zstack.properties and restart the management node, or give \
                 an http:// URL",
                real.display(),
                zstack_common::service::keys::IMAGE_SOURCE_DIRECTORIES
            ),
        ));
    }
    Ok(real)
}

fn add_image(c: &Call) -> Result<Job, ApiError> {
    let url = c.required("url")?.to_string();
    let bss = c.list("backupStorageUuids")?;
    let [bs] = bss.as_slice() else {
        return Err(ApiError::invalid(
            "backupStorageUuids",
            "give exactly one backup storage",
        ));
    };
    let bs_url: String = c
        .conn
        .query_row(
            "SELECT url FROM backup_storage WHERE uuid = ?1",
            [bs],
            |r| r.get(0),
        )
        .optional()?
        .ok_or_else(|| ApiError::not_found("BackupStorage", bs).field("backupStorageUuids"))?;
    let src = match source(&url)? {
        Source::File(p) => Source::File(allowed_file(c.node, &p, &bs_url)?),
        http => http,
    };
    let format = c.one_of("format", FORMATS, Some("qcow2"))?;
    let media = c.one_of("mediaType", MEDIA_TYPES, Some("RootVolumeTemplate"))?;
    let platform = c.one_of("platform", PLATFORMS, Some("Linux"))?;
    let uuid = crate::new_uuid();
    let ext = if format == "iso" { "iso" } else { format };
    let install_path = format!("{bs_url}/images/{uuid}.{ext}");
    c.conn.execute(
        "INSERT INTO image (uuid, name, description, url, format, media_type, platform, size, status,
                            backup_storage_uuid, install_path, create_date, last_op_date)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, 'Downloading', ?8, ?9, ?10, ?10)",
        params![uuid, c.required("name")?, c.str("description"), url, format, media, platform, bs, install_path, auth::now()],
    )?;
    let format = format.to_string();
    Ok(Job::new(Some(uuid.clone()), move |node: &Node| {
        let dest = PathBuf::from(&install_path);
        match fetch(&src, &dest, &format) {
            Ok(fetched) => {
                let conn = node.db()?;
                conn.execute(
                    "UPDATE image SET size = ?2, actual_size = ?3, sha256sum = ?4, status = 'Ready', last_op_date = ?5 WHERE uuid = ?1",
                    params![uuid, fetched.virtual_size, fetched.actual_size, fetched.sha256, auth::now()],
                )?;
                if let Ok((total, avail)) = super::storage::fs_capacity(Path::new(&bs_url)) {
                    conn.execute(
                        "UPDATE backup_storage SET total_capacity = ?2, available_capacity = ?3 WHERE url = ?1",
                        params![bs_url, total, avail],
                    )?;
                }
                Ok(inventory(one(&conn, &IMAGE, &uuid)?))
            }
            Err(e) => {
                let _ = std::fs::remove_file(part_path(&dest));
                let _ = std::fs::remove_file(&dest);
                node.db()?
                    .execute("DELETE FROM image WHERE uuid = ?1", [&uuid])?;
                Err(ApiError {
                    message: format!("the image was not added: {}", e.message),
                    ..e
                })
            }
        }
    }))
}

pub fn part_path(dest: &Path) -> PathBuf {
    let mut p = dest.as_os_str().to_owned();
    p.push(".part");
    PathBuf::from(p)
}

struct Fetched {
    virtual_size: i64,
    actual_size: i64,
    sha256: String,
}

/// Copies the image to `dest` (through `dest.part`, renamed at the end), hashing as it goes.
fn fetch(src: &Source, dest: &Path, format: &str) -> Result<Fetched, ApiError> {
    let mut reader: Box<dyn Read> = match src {
        Source::File(p) => {
            Box::new(std::fs::File::open(p).map_err(|e| {
                ApiError::invalid("url", format!("cannot read {}: {e}", p.display()))
            })?)
        }
        Source::Http(u) => {
            let resp = zstack_common::http_client::agent(zstack_common::http_client::Timeouts {
                connect: Some(std::time::Duration::from_secs(10)),
                read: Some(std::time::Duration::from_secs(120)),
                whole: None,
            })
            .get(u)
            .call()
            .map_err(|e| ApiError::invalid("url", format!("cannot download {u}: {e}")))?;
            resp.into_reader()
        }
    };
    if let Some(dir) = dest.parent().and_then(Path::parent) {
        images_dir(dir).map_err(|e| {
            ApiError::internal(format!("cannot make {}/images: {e}", dir.display()))
        })?;
    }
    let part = part_path(dest);
    let (total, sha256) =
        zstack_common::fsutil::copy_hashing(&mut *reader, &part).map_err(|e| match e {
            CopyError::Read(e) => {
                ApiError::invalid("url", format!("reading the image failed: {e}"))
            }
            CopyError::Write(e) => {
                ApiError::internal(format!("cannot write {}: {e}", part.display()))
            }
        })?;
    if total == 0 {
        return Err(ApiError::invalid("url", "the image is empty"));
    }
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&part, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| ApiError::internal(format!("cannot make {} 0600: {e}", part.display())))?;
    }
    check_format(&part, format)?;
    let total = total as i64;
    let mut head = Vec::with_capacity(512);
    std::fs::File::open(&part)
        .and_then(|f| f.take(512).read_to_end(&mut head))
        .map_err(|e| ApiError::internal(format!("cannot read {}: {e}", part.display())))?;
    let virtual_size = match format {
        "qcow2" => qcow2_virtual_size(&head).ok_or_else(|| {
            ApiError::invalid(
                "format",
                "the file is not a qcow2 image (no QFI header); give format=raw if it is raw",
            )
        })?,
        _ => total,
    };
    std::fs::rename(&part, dest)
        .map_err(|e| ApiError::internal(format!("cannot rename {}: {e}", part.display())))?;
    Ok(Fetched {
        virtual_size,
        actual_size: total,
        sha256,
    })
}

/// The file is what `format` says: `qemu-img info` finds that format in it (and a qcow2 has no
/// backing file, which would make the image read another file), or an ISO 9660 volume
/// descriptor (`CD001` at byte 0x8001) for iso.
fn check_format(file: &Path, format: &str) -> Result<(), ApiError> {
    if format == "iso" {
        let mut head = Vec::with_capacity(0x8006);
        std::fs::File::open(file)
            .and_then(|f| f.take(0x8006).read_to_end(&mut head))
            .map_err(|e| ApiError::internal(format!("cannot read {}: {e}", file.display())))?;
        if head.get(0x8001..0x8006) != Some(b"CD001".as_slice()) {
            return Err(ApiError::invalid(
                "format",
                "the file is not an ISO 9660 image (no CD001 descriptor at byte 0x8001)",
            ));
        }
        return Ok(());
    }
    let out = std::process::Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(file)
        .output()
        .map_err(|e| ApiError::internal(format!("cannot run qemu-img info: {e}")))?;
    let info: Value = serde_json::from_slice(&out.stdout).map_err(|_| {
        ApiError::invalid(
            "format",
            format!(
                "qemu-img cannot read the file as an image: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        )
    })?;
    let found = info["format"].as_str().unwrap_or("unknown");
    if found != format {
        return Err(ApiError::invalid(
            "format",
            format!("the file is a {found} image, not {format}; give format={found} if that is what it is"),
        ));
    }
    if info.get("backing-filename").is_some() {
        return Err(ApiError::invalid(
            "url",
            "the image has a backing file; flatten it first (qemu-img convert -O qcow2)",
        ));
    }
    Ok(())
}

/// A qcow2 header starts with `QFI\xfb`; bytes 24..32 are the virtual size, big-endian.
pub fn qcow2_virtual_size(head: &[u8]) -> Option<i64> {
    if head.len() < 32 || &head[..4] != b"QFI\xfb" {
        return None;
    }
    let mut size = [0u8; 8];
    size.copy_from_slice(&head[24..32]);
    i64::try_from(u64::from_be_bytes(size))
        .ok()
        .filter(|s| *s > 0)
}

fn query_image(c: &Call) -> Result<Value, ApiError> {
    c.query(&IMAGE)
}

fn delete_image(c: &Call) -> Result<Value, ApiError> {
    let uuid = c.required("uuid")?;
    exists(c.conn, "image", "Image", uuid, "uuid")?;
    let (status, path): (String, Option<String>) = c.conn.query_row(
        "SELECT status, install_path FROM image WHERE uuid = ?1",
        [uuid],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    if status == "Downloading" {
        return Err(ApiError::wrong_state(format!(
            "image {uuid} is still being added; wait for its job to end"
        ))
        .field("uuid"));
    }
    c.conn
        .execute("DELETE FROM image WHERE uuid = ?1", [uuid])?;
    if let Some(p) = path {
        if let Err(e) = std::fs::remove_file(&p) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Ok(
                    json!({"warning": format!("the image is deleted but its file {p} could not be removed: {e}")}),
                );
            }
        }
    }
    Ok(json!({}))
}

/// Images a restart cut off while they were copied: their partial files are removed and the
/// rows dropped (their jobs say why).
pub fn drop_interrupted(conn: &rusqlite::Connection) -> Result<usize, ApiError> {
    let paths: Vec<Option<String>> = {
        let mut st = conn.prepare("SELECT install_path FROM image WHERE status = 'Downloading'")?;
        let rows = st.query_map([], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    for p in paths.iter().flatten() {
        let _ = std::fs::remove_file(part_path(Path::new(p)));
    }
    Ok(conn.execute("DELETE FROM image WHERE status = 'Downloading'", [])?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn qcow2_header() {
        let mut h = b"QFI\xfb\0\0\0\x03".to_vec();
        h.resize(32, 0);
        h[24..32].copy_from_slice(&(1u64 << 30).to_be_bytes());
        assert_eq!(super::qcow2_virtual_size(&h), Some(1 << 30));
        assert_eq!(
            super::qcow2_virtual_size(b"not an image at all, no header.."),
            None
        );
    }
}

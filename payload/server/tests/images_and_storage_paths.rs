//! What a path may name: AddImage reads local files only from the directories the operator
//! lists (or the backup storage), the file must be what its format says, image files are 0600
//! in a 0700 directory; storage paths are normalised, resolved and kept out of the system's and
//! ZStack's own directories.
#![allow(clippy::unwrap_used)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::{json, Value};
use support::TestNode;

fn backup_storage(node: &TestNode, s: &str, dir: &Path) -> String {
    node.ok(
        "AddLocalBackupStorage",
        s,
        json!({"name": "bs", "url": dir.display().to_string()}),
    )["inventory"]["uuid"]
        .as_str()
        .unwrap()
        .to_string()
}

/// AddImage's answer: the refusal at once, or the job's outcome.
fn add_image(node: &TestNode, s: &str, bs: &str, url: &Path, format: &str) -> Value {
    let a = node.call(
        "AddImage",
        Some(s),
        json!({"name": "img", "url": url.display().to_string(), "backupStorageUuids": [bs],
               "format": format, "mediaType": if format == "iso" { "ISO" } else { "RootVolumeTemplate" }}),
    );
    if a.status == 202 {
        let job = node.job(s, a.body["jobUuid"].as_str().unwrap());
        return json!({"job": job});
    }
    json!({"status": a.status, "body": a.body})
}

fn qcow2(path: &Path) {
    let ok = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg("1M")
        .status()
        .unwrap()
        .success();
    assert!(ok, "qemu-img create failed");
}

fn images(node: &TestNode, s: &str) -> Value {
    node.ok("QueryImage", s, json!({}))["inventories"].clone()
}

#[test]
fn a_local_file_outside_the_listed_directories_is_refused() {
    let node = TestNode::start();
    let s = node.admin_session();
    let bs = backup_storage(&node, &s, &node.dir.path().join("bs"));
    let elsewhere = node.dir.path().join("secret");
    std::fs::write(&elsewhere, b"root:$6$hash:19000:0:99999:7:::\n").unwrap();
    for url in [elsewhere.clone(), Path::new("/etc/shadow").to_path_buf()] {
        let got = add_image(&node, &s, &bs, &url, "raw");
        assert_eq!(got["status"], 400, "{url:?} was taken: {got}");
        assert_eq!(got["body"]["error"]["field"], "url", "{got}");
        let msg = got["body"]["error"]["message"].as_str().unwrap();
        assert!(msg.contains("image.sourceDirectories"), "{msg}");
    }
    assert_eq!(images(&node, &s), json!([]));
}

#[test]
fn a_listed_directory_gives_images_that_only_the_node_reads() {
    let sources = tempfile::tempdir().unwrap();
    let node = TestNode::start_with(vec![sources.path().to_path_buf()], |_| {});
    let s = node.admin_session();
    let bs_dir = node.dir.path().join("bs");
    let bs = backup_storage(&node, &s, &bs_dir);
    let img = sources.path().join("disk.qcow2");
    qcow2(&img);
    let got = add_image(&node, &s, &bs, &img, "qcow2");
    assert_eq!(got["job"]["state"], "Succeeded", "{got}");
    let path = got["job"]["result"]["inventory"]["installPath"]
        .as_str()
        .unwrap()
        .to_string();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(Path::new(&path)), 0o600, "{path}");
    assert_eq!(mode(&bs_dir.join("images")), 0o700);

    // A symlink in the listed directory to a file outside it is followed, and refused.
    let outside = node.dir.path().join("outside.qcow2");
    qcow2(&outside);
    let link = sources.path().join("link.qcow2");
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    let got = add_image(&node, &s, &bs, &link, "qcow2");
    assert_eq!(got["status"], 400, "{got}");
}

#[test]
fn the_file_must_be_what_its_format_says() {
    let sources = tempfile::tempdir().unwrap();
    let node = TestNode::start_with(vec![sources.path().to_path_buf()], |_| {});
    let s = node.admin_session();
    let bs = backup_storage(&node, &s, &node.dir.path().join("bs"));
    let img = sources.path().join("disk.qcow2");
    qcow2(&img);
    let text = sources.path().join("notes.txt");
    std::fs::write(&text, vec![b'x'; 40_000]).unwrap();
    let mut iso = vec![0u8; 0x9000];
    iso[0x8001..0x8006].copy_from_slice(b"CD001");
    let iso_file = sources.path().join("cd.iso");
    std::fs::write(&iso_file, &iso).unwrap();
    for (file, format) in [
        (&img, "raw"),
        (&text, "qcow2"),
        (&text, "iso"),
        (&img, "iso"),
    ] {
        let got = add_image(&node, &s, &bs, file, format);
        assert_eq!(got["job"]["state"], "Failed", "{file:?} as {format}: {got}");
        assert_eq!(got["job"]["error"]["field"], "format", "{got}");
    }
    assert_eq!(images(&node, &s), json!([]));
    for (file, format) in [(&text, "raw"), (&iso_file, "iso")] {
        let got = add_image(&node, &s, &bs, file, format);
        assert_eq!(
            got["job"]["state"], "Succeeded",
            "{file:?} as {format}: {got}"
        );
    }
}

#[test]
fn storage_paths_are_normalised_resolved_and_kept_out_of_system_directories() {
    let node = TestNode::start();
    let s = node.admin_session();
    let zone = node.ok("CreateZone", &s, json!({"name": "z"}))["inventory"]["uuid"].clone();
    let link = node.dir.path().join("etc-link");
    std::os::unix::fs::symlink("/etc", &link).unwrap();
    let link = link.display().to_string();
    let bad = [
        "//etc",
        "/etc/",
        "///usr//local/zstack",
        "/etc/zstack/bs",
        "/var/lib/zstack/ps",
        "/",
        "//",
        link.as_str(),
    ];
    for url in bad {
        for (call, extra) in [
            ("AddLocalBackupStorage", json!({})),
            (
                "AddSharedMountPointPrimaryStorage",
                json!({"zoneUuid": zone}),
            ),
        ] {
            let mut body = json!({"name": "st", "url": url});
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            let a = node.call(call, Some(&s), body);
            assert_eq!(a.status, 400, "{call} url={url:?} was taken: {}", a.body);
            assert_eq!(a.error_field(), Some("url"), "{}", a.body);
        }
    }
    // A directory of its own, given with doubled slashes, is kept normalised.
    let own = node.dir.path().join("ps");
    let a = node.ok(
        "AddSharedMountPointPrimaryStorage",
        &s,
        json!({"name": "ps", "url": format!("/{}//", own.display()), "zoneUuid": zone}),
    );
    assert_eq!(a["inventory"]["url"], own.display().to_string());
}

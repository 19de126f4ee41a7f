//! The metadata server (`zstack_kvmagent::metadata`) in network namespaces, with no VM
//! (integration tier): one namespace stands for the L3 namespace (169.254.169.254/32 and the
//! L3's address on a veth into a test bridge), others for a VM and a stranger on the same bridge,
//! routed to 169.254.169.254 through the L3 address as a VM's traffic is. The server runs in this
//! test process, inside the L3 namespace. Besides curl, stock cloud-init (Debian's package) reads
//! the server through its own Ec2 datasource, both as a ZStack VM does (IMDSv1) and as on AWS
//! (IMDSv2 tokens). Everything the test makes is removed, even when it fails.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;

use serde_json::{json, Value};
use zstack_kvmagent::metadata::{self, MetadataStore, VmSpec};
use zstack_tests::*;

const L3: &str = "5eed000000000000000000000000000a";
const VM: &str = "5eed00000000000000000000000000f1";
const BRIDGE: &str = "zsmdbr0";
const NS_L3: &str = "zsmd-l3";
const NS_VM: &str = "zsmd-vm";
const NS_STRANGER: &str = "zsmd-stranger";
/// Bridge-side ends of the veths.
const PORTS: [&str; 3] = ["zsmdl3", "zsmdvm", "zsmdst"];
const USER_DATA: &str = "#cloud-config\nruncmd:\n  - echo hello from zstack\n";

/// Removes the namespaces (their veth ends go with them) and the bridge.
struct Cleanup;

impl Cleanup {
    fn sweep() {
        for ns in [NS_L3, NS_VM, NS_STRANGER] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        for l in PORTS.iter().chain([&BRIDGE]) {
            let _ = Command::new("ip").args(["link", "del", l]).output();
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        Cleanup::sweep();
    }
}

fn sh(args: &[&str]) -> String {
    ok(Command::new(args[0]).args(&args[1..]))
}

/// A namespace on the test bridge through a veth whose bridge side is `port`, with `addrs` on
/// its `eth0`.
fn attach(name: &str, port: &str, addrs: &[&str]) {
    sh(&["ip", "netns", "add", name]);
    sh(&[
        "ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", name,
    ]);
    sh(&["ip", "link", "set", port, "master", BRIDGE, "up"]);
    sh(&["ip", "-n", name, "link", "set", "lo", "up"]);
    sh(&["ip", "-n", name, "link", "set", "eth0", "up"]);
    for a in addrs {
        sh(&["ip", "-n", name, "addr", "add", a, "dev", "eth0"]);
    }
}

/// `curl` from namespace `ns`: (HTTP status, body); status 0 when nothing answered.
fn curl(ns: &str, args: &[&str]) -> (u16, String) {
    let o = run(Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-sS", "--max-time", "10"])
        .args(["-o", "-", "-w", "\n%{http_code}"])
        .args(args));
    let out = String::from_utf8_lossy(&o.stdout);
    let (body, code) = out
        .rsplit_once('\n')
        .unwrap_or_else(|| panic!("curl {args:?}: {}", text(&o)));
    (code.parse().unwrap(), body.to_string())
}

fn get(ns: &str, path: &str) -> (u16, String) {
    curl(ns, &[&format!("http://169.254.169.254{path}")])
}

fn spec(token_required: bool) -> VmSpec {
    serde_json::from_value(json!({
        "uuid": VM,
        "name": "md-test",
        "cpuNum": 1,
        "memorySize": 1_073_741_824i64,
        "rootVolume": {
            "volumeUuid": "root", "type": "Root", "installPath": "/nowhere", "size": 1,
            "format": "qcow2", "deviceId": 0, "cacheMode": "none"
        },
        "dataVolumes": [],
        "nics": [{
            "uuid": "5eed0000000000000000000000000n1c", "l3NetworkUuid": L3,
            "mac": "fa:16:3e:5e:ed:10", "ip": "10.88.0.10", "netmask": "255.255.255.0",
            "gateway": "10.88.0.1", "deviceId": 0, "physicalInterface": "zsmd0",
            "services": ["DHCP", "Userdata"], "dhcpServerIp": "10.88.0.2"
        }],
        "userData": USER_DATA,
        "metadata": {
            "hostname": "md-test", "availabilityZone": "zone-md",
            "sshKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMDTEST md@test",
            "tokenRequired": token_required
        }
    }))
    .unwrap()
}

/// Debian's cloud-init, its Ec2 datasource as cloud-init runs it (`get_data`: wait for the
/// service, pick the API version, crawl user-data and meta-data), with the platform cloud-init
/// would have identified from DMI: `zstack` on a ZStack VM (asset tag *.zstack.io: IMDSv1), or
/// `aws` (IMDSv2: a token first, then every request with it).
const CLOUD_INIT: &str = r#"
import json, sys, tempfile
from cloudinit import helpers, version
from cloudinit.sources import DataSourceEc2
tmp = tempfile.mkdtemp()
paths = helpers.Paths({"cloud_dir": tmp, "run_dir": tmp})
cfg = {"datasource": {"Ec2": {"metadata_urls": ["http://169.254.169.254"], "max_wait": 20, "timeout": 5}}}
ds = DataSourceEc2.DataSourceEc2(cfg, None, paths)
ds._cloud_name = sys.argv[1]
if not ds.get_data():
    sys.exit("cloud-init's Ec2 datasource found no metadata service")
print(json.dumps({
    "cloud_init": version.version_string(),
    "instance_id": ds.get_instance_id(),
    "local_hostname": ds.metadata.get("local-hostname"),
    "availability_zone": ds.availability_zone,
    "keys": ds.get_public_ssh_keys(),
    "user_data": ds.get_userdata_raw().decode(),
    "api_version": ds._crawled_metadata["_metadata_api_version"],
    "token": bool(ds._api_token),
}))
"#;

fn cloud_init(platform: &str) -> Value {
    let out = ok(Command::new("ip").args([
        "netns",
        "exec",
        NS_VM,
        "/usr/bin/python3",
        "-c",
        CLOUD_INIT,
        platform,
    ]));
    serde_json::from_str(out.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("cloud-init printed no JSON ({e}):\n{out}"))
}

#[test]
#[ignore = "needs root: run by make test"]
fn vms_read_their_metadata_from_the_l3_namespace() {
    require_root();
    let has_cloud_init = Command::new("/usr/bin/python3")
        .args(["-c", "import cloudinit.sources.DataSourceEc2"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        has_cloud_init,
        "Debian's cloud-init is missing: run scripts/install-test-packages.sh"
    );
    Cleanup::sweep();
    let _cleanup = Cleanup;
    sh(&["ip", "link", "add", BRIDGE, "type", "bridge"]);
    sh(&["ip", "link", "set", BRIDGE, "up"]);
    attach(NS_L3, PORTS[0], &["10.88.0.2/24", "169.254.169.254/32"]);
    attach(NS_VM, PORTS[1], &["10.88.0.10/24"]);
    attach(NS_STRANGER, PORTS[2], &["10.88.0.11/24"]);
    for ns in [NS_VM, NS_STRANGER] {
        sh(&[
            "ip",
            "-n",
            ns,
            "route",
            "add",
            "169.254.169.254/32",
            "via",
            "10.88.0.2",
        ]);
    }

    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MetadataStore::open(dir.path().join("metadata")).unwrap());
    store.upsert_vm(&spec(false)).unwrap();
    let addr: SocketAddr = "169.254.169.254:80".parse().unwrap();
    let server =
        metadata::serve_in_netns(NS_L3, addr, metadata::router(store.clone(), L3.to_string()))
            .unwrap();
    // The socket is in the L3 namespace, not in this one.
    let listening = sh(&["ip", "netns", "exec", NS_L3, "ss", "-Hltn"]);
    assert!(listening.contains("169.254.169.254:80"), "{listening}");
    assert!(!sh(&["ss", "-Hltn"]).contains("169.254.169.254:80"));

    // IMDSv1 with curl.
    assert_eq!(
        get(NS_VM, "/latest/meta-data/instance-id"),
        (200, VM.to_string())
    );
    assert_eq!(
        get(NS_VM, "/2009-04-04/meta-data/instance-id"),
        (200, VM.to_string())
    );
    assert_eq!(
        get(NS_VM, "/latest/user-data"),
        (200, USER_DATA.to_string())
    );
    let (code, listing) = get(NS_VM, "/latest/meta-data/");
    assert_eq!(code, 200);
    for entry in [
        "instance-id",
        "hostname",
        "local-hostname",
        "local-ipv4",
        "placement/",
        "public-keys/",
    ] {
        assert!(listing.lines().any(|l| l == entry), "{entry}: {listing}");
    }
    assert!(!listing.contains("public-ipv4"), "{listing}");
    assert_eq!(
        get(NS_VM, "/latest/meta-data/local-ipv4"),
        (200, "10.88.0.10".to_string())
    );
    assert_eq!(
        get(NS_VM, "/latest/meta-data/placement/availability-zone"),
        (200, "zone-md".to_string())
    );
    assert_eq!(get(NS_VM, "/latest/meta-data/no-such-thing").0, 404);
    assert_eq!(get(NS_VM, "/no-such-version/meta-data/").0, 404);
    let (code, versions) = get(NS_VM, "/");
    assert_eq!(code, 200);
    assert!(versions.lines().any(|l| l == "latest"), "{versions}");
    // The EIP shows once set.
    store
        .set_public_ip(L3, "10.88.0.10", Some("172.30.0.10".into()))
        .unwrap();
    assert_eq!(
        get(NS_VM, "/latest/meta-data/public-ipv4"),
        (200, "172.30.0.10".to_string())
    );

    // A stranger on the same bridge learns nothing, whatever it claims to be.
    assert_eq!(get(NS_STRANGER, "/latest/meta-data/").0, 404);
    assert_eq!(get(NS_STRANGER, "/latest/user-data").0, 404);
    assert_eq!(
        curl(
            NS_STRANGER,
            &[
                "-H",
                "X-Forwarded-For: 10.88.0.10",
                "http://169.254.169.254/latest/meta-data/instance-id"
            ]
        )
        .0,
        404
    );
    assert_eq!(get(NS_STRANGER, "/").0, 200);

    // IMDSv2 with curl.
    let token_url = "http://169.254.169.254/latest/api/token";
    let (code, token) = curl(
        NS_VM,
        &[
            "-X",
            "PUT",
            "-H",
            "X-aws-ec2-metadata-token-ttl-seconds: 60",
            token_url,
        ],
    );
    assert_eq!(code, 200, "{token}");
    assert!(!token.is_empty());
    assert_eq!(curl(NS_VM, &["-X", "PUT", token_url]).0, 400);
    assert_eq!(
        curl(
            NS_VM,
            &[
                "-X",
                "PUT",
                "-H",
                "X-aws-ec2-metadata-token-ttl-seconds: 21601",
                token_url
            ]
        )
        .0,
        400
    );
    let with = |ns: &str, t: &str| {
        curl(
            ns,
            &[
                "-H",
                &format!("X-aws-ec2-metadata-token: {t}"),
                "http://169.254.169.254/latest/meta-data/instance-id",
            ],
        )
    };
    assert_eq!(with(NS_VM, &token), (200, VM.to_string()));
    assert_eq!(with(NS_VM, "not-a-token").0, 401);
    assert_eq!(with(NS_STRANGER, &token).0, 404);
    // token_required: a request without a token is refused; with one it is served.
    store.upsert_vm(&spec(true)).unwrap();
    assert_eq!(get(NS_VM, "/latest/meta-data/instance-id").0, 401);
    assert_eq!(get(NS_VM, "/latest/user-data").0, 401);
    assert_eq!(with(NS_VM, &token), (200, VM.to_string()));

    // Stock cloud-init, on AWS (IMDSv2; this VM requires tokens).
    let aws = cloud_init("aws");
    assert_eq!(aws["instance_id"], VM, "{aws}");
    assert_eq!(aws["user_data"], USER_DATA, "{aws}");
    assert_eq!(aws["token"], true, "{aws}");
    assert_eq!(aws["availability_zone"], "zone-md", "{aws}");
    // ... and as on a ZStack VM (IMDSv1), once tokens are optional again.
    store.upsert_vm(&spec(false)).unwrap();
    let zstack = cloud_init("zstack");
    assert_eq!(zstack["instance_id"], VM, "{zstack}");
    assert_eq!(zstack["user_data"], USER_DATA, "{zstack}");
    assert_eq!(zstack["local_hostname"], "md-test", "{zstack}");
    assert_eq!(zstack["token"], false, "{zstack}");
    assert_eq!(
        zstack["keys"],
        json!(["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMDTEST md@test"]),
        "{zstack}"
    );
    assert_eq!(zstack["api_version"], "2021-03-23", "{zstack}");
    eprintln!("cloud-init {}: ok (aws and zstack)", zstack["cloud_init"]);

    // A restarted agent serves the same VM from the store's files.
    server.stop().unwrap();
    assert_eq!(get(NS_VM, "/latest/meta-data/instance-id").0, 0);
    let reopened = Arc::new(MetadataStore::open(dir.path().join("metadata")).unwrap());
    let server =
        metadata::serve_in_netns(NS_L3, addr, metadata::router(reopened, L3.to_string())).unwrap();
    assert_eq!(
        get(NS_VM, "/latest/meta-data/instance-id"),
        (200, VM.to_string())
    );
    assert_eq!(
        get(NS_VM, "/latest/meta-data/public-ipv4"),
        (200, "172.30.0.10".to_string())
    );
    server.stop().unwrap();
}

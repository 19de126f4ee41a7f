//! The metadata server under load (run by `make bench` through scripts/bench-metadata.sh): fills
//! a store with `--vms` VMs on one L3 (the benchmarked VM at `--vm-ip`, the others on addresses
//! no one uses), serves it on `--listen` inside network namespace `--netns` exactly as the agent
//! does (`zstack_kvmagent::metadata::serve_in_netns`), and writes the lighttpd configuration the
//! original would have had for the same VMs (`--lighttpd-dir`: one `$HTTP["remoteip"]` block per
//! VM, the benchmarked one in the middle of the chain). Prints `ready` once it listens, and runs
//! until SIGTERM or SIGINT.
#![allow(clippy::unwrap_used)] // a benchmark: a panic is a failed run

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use nix::sys::signal::{SigSet, Signal};
use serde_json::json;
use zstack_kvmagent::metadata::{self, MetadataStore, VmSpec};

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

fn spec(uuid: &str, ip: &str, l3: &str) -> VmSpec {
    serde_json::from_value(json!({
        "uuid": uuid,
        "name": "bench",
        "cpuNum": 1,
        "memorySize": 1_073_741_824i64,
        "rootVolume": {
            "volumeUuid": "root", "type": "Root", "installPath": "/nowhere", "size": 1,
            "format": "qcow2", "deviceId": 0, "cacheMode": "none"
        },
        "dataVolumes": [],
        "nics": [{
            "uuid": format!("nic-{uuid}"), "l3NetworkUuid": l3, "mac": "fa:16:3e:00:00:10",
            "ip": ip, "netmask": "255.255.0.0", "gateway": "10.89.0.1", "deviceId": 0,
            "physicalInterface": "bench0", "services": ["DHCP", "Userdata"]
        }],
        "userData": "#cloud-config\nruncmd:\n  - echo hello from the metadata bench\n",
        "metadata": {
            "hostname": format!("bench-{}", ip.replace('.', "-")),
            "availabilityZone": "zone-bench",
            "sshKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBENCHBENCHBENCH bench@zstack",
            "tokenRequired": false
        }
    }))
    .unwrap()
}

/// The original's lighttpd configuration (zstack-utility kvmagent/plugins/mevoco.py), less its
/// proxies, extra files and access log: one rewrite block per VM, chosen by source address.
fn lighttpd_conf(dir: &std::path::Path, listen: SocketAddr, ips: &[String]) -> String {
    let mut c = format!(
        "server.document-root = \"{root}\"\n\
         server.port = {port}\n\
         server.bind = \"{host}\"\n\
         server.pid-file = \"{dir}/lighttpd.pid\"\n\
         server.errorlog = \"{dir}/error.log\"\n\
         dir-listing.activate = \"enable\"\n\
         index-file.names = ( \"index.html\" )\n\
         server.modules += ( \"mod_rewrite\", \"mod_access\" )\n\
         mimetype.assign = ( \".html\" => \"text/html\", \"\" => \"text/plain\" )\n\n",
        root = dir.join("html").display(),
        port = listen.port(),
        host = listen.ip(),
        dir = dir.display(),
    );
    for (n, ip) in ips.iter().enumerate() {
        let _ = write!(
            c,
            "{else_}$HTTP[\"remoteip\"] == \"{ip}\" {{\n    url.rewrite-once = (\n        \
             \"^/.*/meta-data/(.+)$\" => \"/{ip}/meta-data/$1\",\n        \
             \"^/.*/meta-data$\" => \"/{ip}/meta-data\",\n        \
             \"^/.*/meta-data/$\" => \"/{ip}/meta-data/\",\n        \
             \"^/.*/user-data$\" => \"/{ip}/user-data\",\n        \
             \"^/.*/$\" => \"/{ip}/$1\"\n    )\n}}",
            else_ = if n == 0 { "" } else { " else " },
        );
    }
    c.push('\n');
    c
}

fn main() {
    let netns = arg("--netns", "");
    let listen: SocketAddr = arg("--listen", "169.254.169.254:80").parse().unwrap();
    let l3 = arg("--l3", "be0c0000000000000000000000000001");
    let vm_ip = arg("--vm-ip", "10.89.0.10");
    let vms: usize = arg("--vms", "1").parse().unwrap();
    let store_dir = PathBuf::from(arg("--store", "/tmp/zstack-metadata-bench/store"));
    let lighttpd_dir = arg("--lighttpd-dir", "");
    assert!(!netns.is_empty(), "--netns is required");
    assert!(vms >= 1, "--vms must be at least 1");

    // Signals go to the main thread's sigwait: block them before any thread starts.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.thread_block().unwrap();

    let _ = std::fs::remove_dir_all(&store_dir);
    let store = Arc::new(MetadataStore::open(&store_dir).unwrap());
    // The other VMs: 10.89.1.1, 10.89.1.2, ... with the benchmarked VM in the middle of the
    // order lighttpd's conditionals are tried in.
    let mut ips: Vec<String> = (1..vms)
        .map(|i| Ipv4Addr::new(10, 89, 1 + (i / 250) as u8, (i % 250) as u8 + 1).to_string())
        .collect();
    ips.insert(ips.len() / 2, vm_ip.clone());
    for (n, ip) in ips.iter().enumerate() {
        store
            .upsert_vm(&spec(&format!("be0c{n:028x}"), ip, &l3))
            .unwrap();
    }
    if !lighttpd_dir.is_empty() {
        let dir = PathBuf::from(&lighttpd_dir);
        std::fs::create_dir_all(dir.join("html")).unwrap();
        std::fs::write(dir.join("lighttpd.conf"), lighttpd_conf(&dir, listen, &ips)).unwrap();
    }

    let server =
        metadata::serve_in_netns(&netns, listen, metadata::router(store.clone(), l3.clone()))
            .unwrap();
    println!(
        "ready: {} VMs, serving {} in {netns}",
        ips.len(),
        server.local_addr()
    );
    let _ = signals.wait();
    server.stop().unwrap();
}

//! Specs and stores the metadata tests share.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

use std::net::IpAddr;
use std::sync::Arc;

use zstack_common::agent_proto::DiskSpec;

use super::{MetadataStore, NicSpec, VmMetadata, VmSpec};

pub const L3: &str = "l3aaaa";

pub fn nic(l3: &str, ip: &str, services: &[&str]) -> NicSpec {
    NicSpec {
        uuid: format!("nic-{ip}"),
        l3_network_uuid: l3.to_string(),
        mac: "fa:16:3e:00:00:01".to_string(),
        ip: ip.to_string(),
        netmask: "255.255.255.0".to_string(),
        gateway: "10.0.0.1".to_string(),
        device_id: 0,
        physical_interface: "eth0".to_string(),
        services: services.iter().map(|s| s.to_string()).collect(),
        dns_domain: None,
        dhcp_server_ip: None,
    }
}

pub fn vm(uuid: &str, nics: Vec<NicSpec>) -> VmSpec {
    VmSpec {
        uuid: uuid.to_string(),
        name: "vm".to_string(),
        cpu_num: 1,
        memory_size: 1 << 30,
        root_volume: DiskSpec {
            volume_uuid: "root".to_string(),
            r#type: "Root".to_string(),
            install_path: "/x".to_string(),
            size: 1,
            format: "qcow2".to_string(),
            device_id: 0,
            image_url: None,
            image_sha256: None,
            image_format: None,
            image_uuid: None,
            primary_storage_url: None,
            cache_mode: "none".to_string(),
        },
        data_volumes: vec![],
        nics,
        user_data: Some("#!/bin/sh\necho hi\n".to_string()),
        metadata: VmMetadata {
            hostname: "web-1".to_string(),
            availability_zone: "zone-a".to_string(),
            ssh_key: Some("ssh-ed25519 AAAAC3 me@host".to_string()),
            root_password_hash: None,
            token_required: false,
        },
    }
}

pub fn store() -> (tempfile::TempDir, Arc<MetadataStore>) {
    let dir = tempfile::tempdir().unwrap();
    let s = MetadataStore::open(dir.path().join("metadata")).unwrap();
    (dir, Arc::new(s))
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

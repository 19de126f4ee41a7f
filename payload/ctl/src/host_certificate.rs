//! The host's side of joining a cloud, run by the management node over SSH while it adds the
//! host (AddKVMHost with a user name and password):
//!
//! - `zstack-ctl host_certificate_request --ip <ip>` makes the host's key (`/etc/zstack/pki/
//!   host.key`, 0600) the first time, keeps it after, and prints a certificate request for the
//!   host at that address, with the certificate the host holds already (if any), so the management
//!   node can let a still valid one stand. The key never leaves the host.
//! - `zstack-ctl host_certificate_install` reads `{"certificate": pem, "ca": pem}` on its standard
//!   input and installs them after checking they are for this key, a host, and of that CA's cloud.

use std::io::Read;
use std::net::IpAddr;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use zstack_common::Layout;
use zstack_pki::{MachinePki, Role, Subject};

/// What `host_certificate_request --json` prints.
#[derive(Debug, Serialize, Deserialize)]
pub struct CertificateRequest {
    /// PEM certificate request for `host <ip>`, signed with the host's key.
    pub request: String,
    /// The host's current certificate (PEM), if it has one.
    pub certificate: Option<String>,
}

/// What `host_certificate_install` reads on its standard input.
#[derive(Debug, Serialize, Deserialize)]
pub struct CertificateDelivery {
    pub certificate: String,
    pub ca: String,
}

fn machine(layout: &Layout) -> MachinePki {
    MachinePki::new(layout.host(layout.pki_dir()))
}

pub fn request(layout: &Layout, ip: &str) -> anyhow::Result<CertificateRequest> {
    let ip: IpAddr = ip
        .parse()
        .with_context(|| format!("--ip {ip:?} is not an IP address (e.g. 10.0.0.5)"))?;
    let pki = machine(layout);
    std::fs::create_dir_all(pki.dir())
        .with_context(|| format!("cannot create {}", pki.dir().display()))?;
    let key = pki.key(Role::Host)?;
    let request = key.request(&Subject::host(ip))?;
    let certificate = if pki.has_identity(Role::Host) {
        Some(
            std::fs::read_to_string(pki.certificate_file(Role::Host)).with_context(|| {
                format!("cannot read {}", pki.certificate_file(Role::Host).display())
            })?,
        )
    } else {
        None
    };
    Ok(CertificateRequest {
        request,
        certificate,
    })
}

/// Installs the certificate read from `input`; returns its serial.
pub fn install(layout: &Layout, input: impl Read) -> anyhow::Result<String> {
    let delivery: CertificateDelivery = serde_json::from_reader(input).context(
        "the standard input must be JSON {\"certificate\": \"<PEM>\", \"ca\": \"<PEM>\"}",
    )?;
    let identity = machine(layout).install(Role::Host, &delivery.certificate, &delivery.ca)?;
    Ok(identity.serial)
}

#[cfg(test)]
mod tests {
    use super::*;
    use zstack_pki::CloudCa;

    #[test]
    fn a_request_keeps_the_key_and_the_signed_certificate_installs() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path(), "/usr/local/zstack");
        assert!(request(&layout, "not-an-ip").is_err());
        let first = request(&layout, "10.0.0.7").unwrap();
        assert!(first.certificate.is_none());
        let key_file = layout.host(layout.pki_dir()).join("host.key");
        let key = std::fs::read_to_string(&key_file).unwrap();

        let ca = CloudCa::create().unwrap();
        let subject = Subject::host("10.0.0.7".parse().unwrap());
        let cert = ca.sign(&first.request, &subject).unwrap();
        let body = serde_json::to_vec(&CertificateDelivery {
            certificate: cert.clone(),
            ca: ca.certificate_pem().to_string(),
        })
        .unwrap();
        let serial = install(&layout, &body[..]).unwrap();
        assert_eq!(zstack_pki::describe(&cert).unwrap().serial, serial);
        assert!(install(&layout, &b"{}"[..]).is_err());

        let again = request(&layout, "10.0.0.7").unwrap();
        assert_eq!(again.certificate.as_deref(), Some(cert.as_str()));
        assert_eq!(std::fs::read_to_string(&key_file).unwrap(), key);
    }
}

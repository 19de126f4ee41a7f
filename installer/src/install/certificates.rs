//! The `pki` step: the cloud's trust, made once on the management node (1.2.0 on).
//!
//! - `/etc/zstack/ca/` (0700): the cloud's certificate authority, `ca.pem` and `ca.key` (0600);
//! - `/etc/zstack/pki/`: `ca.pem`, the management node's certificate and key
//!   (`management-node.pem`, `.key` 0600) for its IP, and this host's (`host.pem`, `.key`), since
//!   the all-in-one host runs an agent too;
//! - `/etc/zstack/ssh/id_ed25519` (0600): the key the management node deploys hosts with.
//!
//! A re-run or an upgrade keeps what is there and valid; a certificate of another CA, or a
//! management node certificate that does not name the node's IP (after `-I`), is issued again.
//! Every file goes through the run's recorded writes, so a failed run removes what it made.
//! A compute host (`--host-only`) gets no CA: its key and certificate come when a management node
//! adds it.

use std::net::IpAddr;
use std::path::Path;

use anyhow::Context;
use zstack_common::service::Service;
use zstack_pki::{CloudCa, MachinePki, PrivateKey, Subject};

use super::run::Run;

impl Run<'_> {
    pub(super) fn make_certificates(&mut self) -> anyhow::Result<(bool, String)> {
        if self.version < semver::Version::new(1, 2, 0) {
            return Ok((
                false,
                format!("unchanged: release {} has no cloud CA", self.version),
            ));
        }
        if !self.services.contains(&Service::Server) {
            return Ok((
                false,
                "unchanged: a compute host gets its certificate when a management node adds it"
                    .into(),
            ));
        }
        let l = self.layout.clone();
        let ip: IpAddr = self.management_ip.parse().with_context(|| {
            format!(
                "the management IP {:?} is not an IP address; give one with -I",
                self.management_ip
            )
        })?;
        let mut made = Vec::new();
        let ca = self.cloud_ca(&l.host(l.ca_dir()), &mut made)?;
        let pki = MachinePki::new(l.host(l.pki_dir()));
        self.mkdirs(pki.dir(), 0o755)?;
        if self.put_file(&pki.ca_file(), ca.certificate_pem().as_bytes(), 0o644)? {
            made.push("the CA certificate in /etc/zstack/pki".to_string());
        }
        for subject in [Subject::management_node(ip), Subject::host(ip)] {
            if self.certificate(&ca, &pki, &subject)? {
                made.push(format!("the {} certificate for {ip}", subject.role));
            }
        }
        if self.node_ssh_key(&l.host(l.ssh_dir()))? {
            made.push("the SSH key hosts are added with".to_string());
        }
        Ok(if made.is_empty() {
            (
                false,
                format!("unchanged: cloud CA {} and its certificates", ca.cloud_id()),
            )
        } else {
            (
                true,
                format!("cloud CA {}: made {}", ca.cloud_id(), made.join(", ")),
            )
        })
    }

    /// The CA in `dir`, or a new one written there.
    fn cloud_ca(&mut self, dir: &Path, made: &mut Vec<String>) -> anyhow::Result<CloudCa> {
        if dir.join("ca.key").exists() {
            return CloudCa::load(dir)
                .with_context(|| format!("cannot read the cloud's CA in {}", dir.display()));
        }
        let ca = CloudCa::create().context("cannot make the cloud's CA")?;
        self.mkdirs(dir, 0o700)?;
        self.put_file(&dir.join("ca.pem"), ca.certificate_pem().as_bytes(), 0o644)?;
        self.put_file(&dir.join("ca.key"), ca.key_pem().as_bytes(), 0o600)?;
        made.push(format!("the CA {}", ca.cloud_id()));
        Ok(ca)
    }

    /// Issues `subject`'s certificate unless the one in `pki` is of this CA, for this key and
    /// names the subject's IP. Answers whether it issued one.
    fn certificate(
        &mut self,
        ca: &CloudCa,
        pki: &MachinePki,
        subject: &Subject,
    ) -> anyhow::Result<bool> {
        let role = subject.role;
        if pki.has_identity(role) && still_valid(ca, pki, subject) {
            return Ok(false);
        }
        let key_file = pki.key_file(role);
        let key = match PrivateKey::load(&key_file) {
            Ok(key) => key,
            Err(_) => {
                let key = PrivateKey::generate().context("cannot make a private key")?;
                self.put_file(&key_file, key.pem().as_bytes(), 0o600)?;
                key
            }
        };
        let request = key.request(subject)?;
        let cert = ca
            .sign(&request, subject)
            .with_context(|| format!("cannot sign the {role} certificate"))?;
        self.put_file(&pki.certificate_file(role), cert.as_bytes(), 0o644)?;
        Ok(true)
    }

    fn node_ssh_key(&mut self, dir: &Path) -> anyhow::Result<bool> {
        if dir.join("id_ed25519").exists() {
            return Ok(false);
        }
        let key = zstack_ssh::NodeKey::generate().context("cannot make the SSH key")?;
        self.mkdirs(dir, 0o700)?;
        for (name, contents, mode) in key.files()? {
            self.put_file(&dir.join(name), contents.as_bytes(), mode)?;
        }
        Ok(true)
    }
}

fn still_valid(ca: &CloudCa, pki: &MachinePki, subject: &Subject) -> bool {
    let Ok(id) = pki.certificate_identity(subject.role) else {
        return false;
    };
    let Ok(trust) = pki.trust() else {
        return false;
    };
    trust.ca_pem == ca.certificate_pem()
        && id.organisation == format!("ZStack cloud {}", ca.cloud_id())
        && id.addresses.contains(&subject.ip)
        && PrivateKey::load(&pki.key_file(subject.role)).is_ok()
}

//! The management node's side of the cloud's trust (see zstack-pki):
//!
//! - it drives agents over HTTPS with its own certificate (`/etc/zstack/pki/management-node.*`),
//!   and talks only to agents whose certificate the cloud's CA signed for a host;
//! - its host channel (`management.hostTls.port`, 8443) takes only hosts' certificates;
//! - it holds the CA (`/etc/zstack/ca`), signs the requests of the hosts it adds, and revokes a
//!   deleted host's certificate: the revocation list is rebuilt from the `revoked_certificate`
//!   table, written beside the node's certificates, and both TLS configurations are replaced at
//!   once, so the next connection of that host is refused.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::Context;
use rusqlite::{params, Connection};
use rustls::ClientConfig;
use zstack_common::Layout;
use zstack_http::TlsConfigCell;
use zstack_pki::tls::{self, ClientAuth};
use zstack_pki::{CloudCa, MachinePki, RevokedCertificate, Role};

use crate::error::ApiError;

pub struct CloudTrust {
    ca_dir: PathBuf,
    ssh_dir: PathBuf,
    pki: MachinePki,
    agent_tls: RwLock<Arc<ClientConfig>>,
    host_listener: TlsConfigCell,
}

fn pki_error(what: &str) -> impl FnOnce(zstack_pki::PkiError) -> ApiError + '_ {
    move |e| ApiError::internal(format!("{what}: {e}"))
}

impl CloudTrust {
    /// The node's trust, or None where the install made no certificate for it (a release that
    /// predates the cloud CA).
    pub fn load(layout: &Layout) -> anyhow::Result<Option<CloudTrust>> {
        let pki = MachinePki::new(layout.host(layout.pki_dir()));
        if !pki.has_identity(Role::ManagementNode) {
            return Ok(None);
        }
        let (agent_tls, host_listener) = configs(&pki)
            .with_context(|| format!("the certificates in {}", pki.dir().display()))?;
        Ok(Some(CloudTrust {
            ca_dir: layout.host(layout.ca_dir()),
            ssh_dir: layout.host(layout.ssh_dir()),
            pki,
            agent_tls: RwLock::new(agent_tls),
            host_listener: TlsConfigCell::new(host_listener),
        }))
    }

    /// How to reach agents: the node's certificate, agents' certificates checked.
    pub fn agent_tls(&self) -> Arc<ClientConfig> {
        match self.agent_tls.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The host channel's TLS configuration (replaced when a certificate is revoked).
    pub fn host_listener(&self) -> TlsConfigCell {
        self.host_listener.clone()
    }

    /// The cloud's CA, to sign a host's request with.
    pub fn ca(&self) -> Result<CloudCa, ApiError> {
        CloudCa::load(&self.ca_dir).map_err(pki_error("cannot read the cloud's CA"))
    }

    /// The CA certificate (PEM) hosts are given.
    pub fn ca_pem(&self) -> Result<String, ApiError> {
        Ok(self
            .pki
            .trust()
            .map_err(pki_error("cannot read the cloud's CA certificate"))?
            .ca_pem)
    }

    /// Where the node's SSH key is.
    pub fn ssh_dir(&self) -> &Path {
        &self.ssh_dir
    }

    /// Signs a revocation list of every certificate in `revoked_certificate`, writes it, and
    /// makes both TLS configurations check it from the next connection on.
    pub fn publish_revocations(&self, conn: &Connection) -> Result<(), ApiError> {
        let mut stmt = conn.prepare(
            "SELECT serial, revoked_date FROM revoked_certificate ORDER BY revoked_date, serial",
        )?;
        let revoked = stmt
            .query_map([], |r| {
                let date: String = r.get(1)?;
                Ok(RevokedCertificate {
                    serial: r.get(0)?,
                    revoked_at_unix: chrono::DateTime::parse_from_rfc3339(&date)
                        .map(|d| d.timestamp())
                        .unwrap_or(0),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let number = u64::try_from(revoked.len()).unwrap_or(u64::MAX);
        let crl = self
            .ca()?
            .crl(&revoked, number)
            .map_err(pki_error("cannot sign the revocation list"))?;
        self.pki
            .write_crl(&crl)
            .map_err(pki_error("cannot write the revocation list"))?;
        let (agent_tls, host_listener) = configs(&self.pki).map_err(|e| {
            ApiError::internal(format!("cannot rebuild the TLS configuration: {e}"))
        })?;
        match self.agent_tls.write() {
            Ok(mut c) => *c = agent_tls,
            Err(poisoned) => *poisoned.into_inner() = agent_tls,
        }
        self.host_listener.replace(host_listener);
        Ok(())
    }
}

/// Records that `serial`, the certificate of host `host_uuid` at `ip`, is revoked (in the
/// caller's transaction; [`CloudTrust::publish_revocations`] makes it take effect).
pub fn record_revocation(
    conn: &Connection,
    serial: &str,
    host_uuid: &str,
    ip: &str,
) -> Result<(), ApiError> {
    conn.execute(
        "INSERT OR IGNORE INTO revoked_certificate (serial, host_uuid, management_ip, revoked_date)
         VALUES (?1, ?2, ?3, ?4)",
        params![serial, host_uuid, ip, crate::auth::now()],
    )?;
    Ok(())
}

fn configs(pki: &MachinePki) -> anyhow::Result<(Arc<ClientConfig>, Arc<rustls::ServerConfig>)> {
    let identity = pki.identity(Role::ManagementNode)?;
    let trust = pki.trust()?;
    let client = tls::client_config(Some(&identity), &trust, Role::Host)?;
    let server = tls::server_config(&identity, &trust, ClientAuth::Required(vec![Role::Host]))?;
    Ok((client, server))
}

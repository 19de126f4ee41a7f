//! TLS configurations of the cloud's parts, built from their certificates.
//!
//! Both ends check the other's certificate against the cloud CA and its revocation list, and
//! then its [`Role`]: an agent takes API calls only from the management node, and the management
//! node drives only hosts. A certificate of another cloud fails the chain check; a host's
//! certificate presented to another host as "the management node" fails the role check.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};

use crate::{identity_of, PkiError, Role};

/// A part's own certificate and key (PEM).
#[derive(Clone)]
pub struct Identity {
    pub certificate_pem: String,
    pub key_pem: String,
}

/// What a part trusts: the cloud CA and the certificates it revoked.
#[derive(Clone)]
pub struct Trust {
    pub ca_pem: String,
    /// The CA's latest revocation list (PEM), if it published one.
    pub crl_pem: Option<String>,
}

/// Which client certificates a server takes.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// A certificate of the cloud with one of these roles; a client without one is refused in
    /// the handshake.
    Required(Vec<Role>),
    /// A certificate of the cloud with one of these roles, or none (the peer certificate then
    /// decides what the client may do).
    Optional(Vec<Role>),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn invalid(what: &str, reason: impl fmt::Display) -> PkiError {
    PkiError::Invalid {
        what: what.to_string(),
        reason: reason.to_string(),
    }
}

impl Identity {
    fn chain(&self) -> Result<Vec<CertificateDer<'static>>, PkiError> {
        let chain: Result<Vec<_>, _> =
            CertificateDer::pem_slice_iter(self.certificate_pem.as_bytes()).collect();
        let chain = chain.map_err(|e| invalid("the certificate", e))?;
        if chain.is_empty() {
            return Err(invalid("the certificate", "it holds no certificate"));
        }
        Ok(chain)
    }

    fn key(&self) -> Result<PrivateKeyDer<'static>, PkiError> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| invalid("the private key", e))
    }
}

impl Trust {
    fn roots(&self) -> Result<Arc<RootCertStore>, PkiError> {
        let mut roots = RootCertStore::empty();
        for der in crate::certificates_from_pem(&self.ca_pem)? {
            roots
                .add(CertificateDer::from(der))
                .map_err(|e| invalid("the CA certificate", e))?;
        }
        Ok(Arc::new(roots))
    }

    fn crls(&self) -> Result<Vec<CertificateRevocationListDer<'static>>, PkiError> {
        match &self.crl_pem {
            None => Ok(Vec::new()),
            Some(pem) => {
                let crls: Result<Vec<_>, _> =
                    CertificateRevocationListDer::pem_slice_iter(pem.as_bytes()).collect();
                crls.map_err(|e| invalid("the revocation list", e))
            }
        }
    }
}

/// Refuses a verified certificate whose role is not one of `allowed`.
fn check_role(end_entity: &CertificateDer<'_>, allowed: &[Role]) -> Result<(), rustls::Error> {
    let refuse = |reason: String| {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
            Arc::new(RoleRefused(reason)),
        )))
    };
    let identity = identity_of(end_entity).map_err(|e| refuse(e.to_string()))?;
    if allowed.contains(&identity.role) {
        Ok(())
    } else {
        let allowed: Vec<&str> = allowed.iter().map(|r| r.name()).collect();
        Err(refuse(format!(
            "the peer's certificate is for a {} ({}), and only {} may connect here",
            identity.role,
            identity.common_name,
            allowed.join(" or ")
        )))
    }
}

#[derive(Debug)]
struct RoleRefused(String);

impl fmt::Display for RoleRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RoleRefused {}

/// The CA's chain check, then the role check.
#[derive(Debug)]
struct RoleClientVerifier {
    chain: Arc<dyn ClientCertVerifier>,
    allowed: Vec<Role>,
}

impl ClientCertVerifier for RoleClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.chain.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.chain.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .chain
            .verify_client_cert(end_entity, intermediates, now)?;
        check_role(end_entity, &self.allowed)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

#[derive(Debug)]
struct RoleServerVerifier {
    chain: Arc<WebPkiServerVerifier>,
    expected: Role,
}

impl ServerCertVerifier for RoleServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.chain.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        check_role(end_entity, &[self.expected])?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// The configuration of a server holding `identity` that takes clients as `auth` says.
pub fn server_config(
    identity: &Identity,
    trust: &Trust,
    auth: ClientAuth,
) -> Result<Arc<ServerConfig>, PkiError> {
    let (roles, optional) = match auth {
        ClientAuth::Required(r) => (r, false),
        ClientAuth::Optional(r) => (r, true),
    };
    let mut builder = WebPkiClientVerifier::builder_with_provider(trust.roots()?, provider())
        .with_crls(trust.crls()?);
    if optional {
        builder = builder.allow_unauthenticated();
    }
    let chain = builder
        .build()
        .map_err(|e| invalid("the client verifier", e))?;
    let verifier = Arc::new(RoleClientVerifier {
        chain,
        allowed: roles,
    });
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain()?, identity.key()?)?;
    Ok(Arc::new(config))
}

/// The configuration of a client that talks only to servers of role `server_role` of this
/// cloud, presenting `identity` if it has one.
pub fn client_config(
    identity: Option<&Identity>,
    trust: &Trust,
    server_role: Role,
) -> Result<Arc<ClientConfig>, PkiError> {
    let chain = WebPkiServerVerifier::builder_with_provider(trust.roots()?, provider())
        .with_crls(trust.crls()?)
        .build()
        .map_err(|e| invalid("the server verifier", e))?;
    let verifier = Arc::new(RoleServerVerifier {
        chain,
        expected: server_role,
    });
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match identity {
        Some(id) => builder.with_client_auth_cert(id.chain()?, id.key()?)?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::IpAddr;
    use std::os::unix::net::UnixStream;

    use super::*;
    use crate::{CloudCa, RevokedCertificate, Subject};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn identity(ca: &CloudCa, subject: &Subject) -> Identity {
        let (key, cert) = ca.issue_local(subject).unwrap();
        Identity {
            certificate_pem: cert,
            key_pem: key.pem(),
        }
    }

    fn trust(ca: &CloudCa) -> Trust {
        Trust {
            ca_pem: ca.certificate_pem().to_string(),
            crl_pem: None,
        }
    }

    /// Runs one exchange over a socket pair: Ok if both ends completed the handshake and the
    /// server read the client's bytes.
    fn handshake(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
        name: &str,
    ) -> Result<(), String> {
        let (a, b) = UnixStream::pair().unwrap();
        let server_side = std::thread::spawn(move || {
            let conn = rustls::ServerConnection::new(server).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, a);
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).map_err(|e| e.to_string())?;
            tls.write_all(b"pong").map_err(|e| e.to_string())?;
            Ok::<_, String>(())
        });
        let name = ServerName::try_from(name.to_string()).unwrap();
        let conn = rustls::ClientConnection::new(client, name).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, b);
        let client_result = tls
            .write_all(b"ping")
            .and_then(|_| tls.flush())
            .and_then(|_| {
                let mut buf = [0u8; 4];
                tls.read_exact(&mut buf)
            })
            .map_err(|e| e.to_string());
        drop(tls);
        let server_result = server_side.join().unwrap();
        server_result.and(client_result)
    }

    struct Cloud {
        ca: CloudCa,
        agent: Arc<ServerConfig>,
        management: Arc<ClientConfig>,
    }

    fn cloud() -> Cloud {
        let ca = CloudCa::create().unwrap();
        let host = identity(&ca, &Subject::host(ip("10.0.0.2")));
        let mn = identity(&ca, &Subject::management_node(ip("10.0.0.1")));
        let agent = server_config(
            &host,
            &trust(&ca),
            ClientAuth::Required(vec![Role::ManagementNode]),
        )
        .unwrap();
        let management = client_config(Some(&mn), &trust(&ca), Role::Host).unwrap();
        Cloud {
            ca,
            agent,
            management,
        }
    }

    #[test]
    fn the_management_node_talks_to_its_agent() {
        let c = cloud();
        handshake(c.agent.clone(), c.management.clone(), "10.0.0.2").unwrap();
        // Loopback is in every certificate, for local health checks.
        handshake(c.agent, c.management, "127.0.0.1").unwrap();
    }

    #[test]
    fn an_agent_refuses_another_clouds_management_node() {
        let c = cloud();
        let other = cloud();
        assert!(handshake(c.agent, other.management, "10.0.0.2").is_err());
    }

    #[test]
    fn an_agent_refuses_a_host_posing_as_the_management_node() {
        let c = cloud();
        let other_host = identity(&c.ca, &Subject::host(ip("10.0.0.3")));
        let client = client_config(Some(&other_host), &trust(&c.ca), Role::Host).unwrap();
        assert!(handshake(c.agent, client, "10.0.0.2").is_err());
    }

    #[test]
    fn an_agent_refuses_a_client_without_certificate() {
        let c = cloud();
        let client = client_config(None, &trust(&c.ca), Role::Host).unwrap();
        assert!(handshake(c.agent, client, "10.0.0.2").is_err());
    }

    #[test]
    fn the_management_node_refuses_an_agent_at_another_address() {
        let c = cloud();
        assert!(handshake(c.agent, c.management, "10.0.0.9").is_err());
    }

    #[test]
    fn a_revoked_certificate_is_refused() {
        let ca = CloudCa::create().unwrap();
        let host = identity(&ca, &Subject::host(ip("10.0.0.2")));
        let mn = identity(&ca, &Subject::management_node(ip("10.0.0.1")));
        let host_serial = crate::describe(&host.certificate_pem).unwrap().serial;
        let crl = ca
            .crl(
                &[RevokedCertificate {
                    serial: host_serial,
                    revoked_at_unix: 1_700_000_000,
                }],
                1,
            )
            .unwrap();
        let revoking = Trust {
            ca_pem: ca.certificate_pem().to_string(),
            crl_pem: Some(crl),
        };
        let agent = server_config(
            &host,
            &trust(&ca),
            ClientAuth::Required(vec![Role::ManagementNode]),
        )
        .unwrap();
        let management = client_config(Some(&mn), &revoking, Role::Host).unwrap();
        assert!(handshake(agent.clone(), management, "10.0.0.2").is_err());
        let management = client_config(Some(&mn), &trust(&ca), Role::Host).unwrap();
        handshake(agent, management, "10.0.0.2").unwrap();
    }

    #[test]
    fn optional_client_auth_takes_a_client_without_certificate() {
        let ca = CloudCa::create().unwrap();
        let mn = identity(&ca, &Subject::management_node(ip("10.0.0.1")));
        let server =
            server_config(&mn, &trust(&ca), ClientAuth::Optional(vec![Role::Host])).unwrap();
        let client = client_config(None, &trust(&ca), Role::ManagementNode).unwrap();
        handshake(server, client, "10.0.0.1").unwrap();
    }
}

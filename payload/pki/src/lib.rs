//! The cloud's trust: one certificate authority per cloud, and the certificates it gives the
//! management node and every host.
//!
//! - [`CloudCa`] is made once, at the all-in-one install, under `/etc/zstack/ca/` (key 0600). It
//!   signs certificate requests and publishes the list of revoked certificates ([`CloudCa::crl`]).
//! - [`PrivateKey`] is made where it is used: a host's key is generated on the host and only its
//!   request ([`PrivateKey::request`]) travels to the management node.
//! - Every certificate names its [`Role`] (in the subject's organisational unit) and the address
//!   it is for (a subject-alternative IP name), so the TLS configurations of [`tls`] can accept
//!   only the management node on an agent, and only hosts on the management node's host channel.
//!
//! Keys are ECDSA P-256 (rustls, GnuTLS for libvirt and OpenSSL all speak it); certificates are
//! X.509 v3 from rcgen, read back with x509-parser.

mod ca;
mod files;
pub mod join_token;
mod key;
mod machine;
pub mod tls;

use std::fmt;
use std::net::IpAddr;

pub use ca::{CloudCa, RevokedCertificate};
pub use files::write_private;
pub use key::PrivateKey;
pub use machine::MachinePki;

/// What went wrong with a key, a certificate or a request.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("{what} is not valid: {reason}")]
    Invalid { what: String, reason: String },
    #[error("cannot make {what}: {source}")]
    Generate {
        what: &'static str,
        source: rcgen::Error,
    },
    #[error("the certificate request is for {requested:?}, but this signing is for {expected:?}")]
    RequestMismatch { requested: String, expected: String },
    #[error("no random numbers from the kernel: {0}")]
    Random(#[from] getrandom::Error),
    #[error("cannot build the TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// Which part of the cloud a certificate belongs to. Written as the subject's OU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    ManagementNode,
    Host,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::ManagementNode => "management-node",
            Role::Host => "host",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "management-node" => Some(Role::ManagementNode),
            "host" => Some(Role::Host),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whom a certificate is for: a role at an address. Its common name is `<role> <ip>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub role: Role,
    pub ip: IpAddr,
}

impl Subject {
    pub fn host(ip: IpAddr) -> Subject {
        Subject {
            role: Role::Host,
            ip,
        }
    }

    pub fn management_node(ip: IpAddr) -> Subject {
        Subject {
            role: Role::ManagementNode,
            ip,
        }
    }

    pub fn common_name(&self) -> String {
        format!("{} {}", self.role, self.ip)
    }

    /// The subject's common name and role (OU): what a request asks for and a certificate names.
    pub(crate) fn distinguished_name(&self) -> rcgen::DistinguishedName {
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, self.common_name());
        dn.push(rcgen::DnType::OrganizationalUnitName, self.role.name());
        dn
    }

    /// The addresses the certificate is valid for: its own, and loopback, so that a part can
    /// check its own health over TLS on 127.0.0.1.
    pub(crate) fn addresses(&self) -> Vec<IpAddr> {
        let loopback = IpAddr::from([127, 0, 0, 1]);
        if self.ip == loopback {
            vec![self.ip]
        } else {
            vec![self.ip, loopback]
        }
    }
}

/// What a certificate says about its holder, read back from its DER bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateIdentity {
    pub role: Role,
    pub common_name: String,
    /// The subject's organisation: `ZStack cloud <cloud id>`.
    pub organisation: String,
    pub addresses: Vec<IpAddr>,
    /// Hex of the serial number, as the CA records it.
    pub serial: String,
    /// SHA-256 of the DER bytes, hex.
    pub fingerprint: String,
    pub not_after_unix: i64,
}

/// Reads who a certificate (DER) is for.
pub fn identity_of(der: &[u8]) -> Result<CertificateIdentity, PkiError> {
    let invalid = |reason: String| PkiError::Invalid {
        what: "the certificate".into(),
        reason,
    };
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| invalid(e.to_string()))?;
    let subject = cert.subject();
    let first = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>>| {
        it.next().and_then(|a| a.as_str().ok()).map(str::to_string)
    };
    let unit = first(&mut subject.iter_organizational_unit())
        .ok_or_else(|| invalid("it names no organisational unit (role)".into()))?;
    let role = Role::parse(&unit)
        .ok_or_else(|| invalid(format!("its organisational unit {unit:?} is not a role")))?;
    let common_name = first(&mut subject.iter_common_name()).unwrap_or_default();
    let organisation = first(&mut subject.iter_organization()).unwrap_or_default();
    let mut addresses = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::IPAddress(bytes) = name {
                match bytes.len() {
                    4 => addresses.push(IpAddr::from(
                        <[u8; 4]>::try_from(*bytes).unwrap_or_default(),
                    )),
                    16 => addresses.push(IpAddr::from(
                        <[u8; 16]>::try_from(*bytes).unwrap_or_default(),
                    )),
                    _ => {}
                }
            }
        }
    }
    Ok(CertificateIdentity {
        role,
        common_name,
        organisation,
        addresses,
        serial: hex::encode(cert.raw_serial()),
        fingerprint: fingerprint(der),
        not_after_unix: cert.validity().not_after.timestamp(),
    })
}

/// SHA-256 of DER bytes, lower-case hex: how certificates are named in the DB and in tokens.
pub fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(der))
}

/// The DER bytes of every certificate in a PEM text.
pub fn certificates_from_pem(pem: &str) -> Result<Vec<Vec<u8>>, PkiError> {
    use rustls_pki_types::pem::PemObject;
    let certs: Result<Vec<_>, _> =
        rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    let certs = certs.map_err(|e| PkiError::Invalid {
        what: "the certificate PEM".into(),
        reason: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(PkiError::Invalid {
            what: "the certificate PEM".into(),
            reason: "it holds no certificate".into(),
        });
    }
    Ok(certs.into_iter().map(|c| c.to_vec()).collect())
}

/// The identity of the first certificate of a PEM text.
pub fn describe(pem: &str) -> Result<CertificateIdentity, PkiError> {
    let certs = certificates_from_pem(pem)?;
    identity_of(&certs[0])
}

/// The subject's organisation of a certificate (DER).
pub(crate) fn organisation_of(der: &[u8]) -> Result<String, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::Invalid {
        what: "the certificate".into(),
        reason: e.to_string(),
    })?;
    let organisation = cert
        .subject()
        .iter_organization()
        .next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or_default()
        .to_string();
    Ok(organisation)
}

//! The cloud's certificate authority: made once per cloud, signs every part's certificate and the
//! list of revoked ones.
//!
//! Files (under `/etc/zstack/ca/` on the management node): `ca.pem` (public, 0644) and `ca.key`
//! (0600). Nothing but the management node ever reads the key.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams,
    CertificateSigningRequestParams, DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use crate::files::{read_text, write_private, write_public};
use crate::{PkiError, PrivateKey, Subject};

/// How long the CA is valid: longer than any cloud is expected to live.
const CA_VALIDITY: Duration = Duration::days(365 * 30);
/// How long a part's certificate is valid. Removal is by revocation, not by expiry.
const LEAF_VALIDITY: Duration = Duration::days(365 * 10);
/// Clocks of new hosts are often a little behind the management node's.
const CLOCK_SKEW: Duration = Duration::hours(1);

/// A certificate the CA revoked: its serial (hex) and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedCertificate {
    pub serial: String,
    pub revoked_at_unix: i64,
}

pub struct CloudCa {
    cloud_id: String,
    cert_pem: String,
    cert_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

fn generate_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |source| PkiError::Generate { what, source }
}

fn organisation(cloud_id: &str) -> String {
    format!("ZStack cloud {cloud_id}")
}

fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes)?;
    // A positive number of full length: no leading zero byte for DER to strip.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

impl CloudCa {
    /// Makes the authority of a new cloud.
    pub fn create() -> Result<CloudCa, PkiError> {
        let mut id = [0u8; 4];
        getrandom::getrandom(&mut id)?;
        let cloud_id = hex::encode(id);
        let key = KeyPair::generate().map_err(generate_err("the CA key"))?;
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(generate_err("the CA"))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("ZStack cloud CA {cloud_id}"));
        params
            .distinguished_name
            .push(DnType::OrganizationName, organisation(&cloud_id));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.key_identifier_method = KeyIdMethod::Sha256;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + CA_VALIDITY;
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key).map_err(generate_err("the CA"))?;
        Ok(CloudCa {
            cloud_id,
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Reads the authority from `dir/ca.pem` and `dir/ca.key`.
    pub fn load(dir: &Path) -> Result<CloudCa, PkiError> {
        let cert_pem = read_text(&dir.join("ca.pem"))?;
        let key_pem = read_text(&dir.join("ca.key"))?;
        let invalid = |what: &Path, reason: String| PkiError::Invalid {
            what: what.display().to_string(),
            reason,
        };
        let key =
            KeyPair::from_pem(&key_pem).map_err(|e| invalid(&dir.join("ca.key"), e.to_string()))?;
        let cert_der = crate::certificates_from_pem(&cert_pem)?.remove(0);
        let org = crate::organisation_of(&cert_der)?;
        let cloud_id = org
            .strip_prefix("ZStack cloud ")
            .ok_or_else(|| {
                invalid(
                    &dir.join("ca.pem"),
                    format!("{org:?} is not a ZStack cloud"),
                )
            })?
            .to_string();
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
            .map_err(|e| invalid(&dir.join("ca.pem"), e.to_string()))?;
        Ok(CloudCa {
            cloud_id,
            cert_pem,
            cert_der,
            issuer,
        })
    }

    /// Writes `dir/ca.pem` (0644) and `dir/ca.key` (0600); `dir` itself is made 0700.
    pub fn write(&self, dir: &Path) -> Result<(), PkiError> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir).map_err(|source| PkiError::Write {
            path: dir.display().to_string(),
            source,
        })?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(
            |source| PkiError::Write {
                path: dir.display().to_string(),
                source,
            },
        )?;
        write_private(&dir.join("ca.key"), self.key_pem().as_bytes())?;
        write_public(&dir.join("ca.pem"), self.cert_pem.as_bytes())
    }

    /// The CA's private key (PEM), as `ca.key` holds it.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    pub fn cloud_id(&self) -> &str {
        &self.cloud_id
    }

    /// The organisation every certificate of this cloud names (`ZStack cloud <cloud id>`).
    pub fn organisation(&self) -> String {
        organisation(&self.cloud_id)
    }

    pub fn certificate_pem(&self) -> &str {
        &self.cert_pem
    }

    /// SHA-256 of the CA certificate: what a join token pins.
    pub fn fingerprint(&self) -> String {
        crate::fingerprint(&self.cert_der)
    }

    /// Signs a certificate request (PEM) for `subject`. The request must ask for exactly that
    /// subject's common name and role: what the certificate says comes from the CA, never from
    /// the request, which only contributes its public key (its signature proves the key's holder
    /// made it).
    pub fn sign(&self, request_pem: &str, subject: &Subject) -> Result<String, PkiError> {
        let request = CertificateSigningRequestParams::from_pem(request_pem).map_err(|e| {
            PkiError::Invalid {
                what: "the certificate request".into(),
                reason: e.to_string(),
            }
        })?;
        let dn_text = |ty: DnType| match request.params.distinguished_name.get(&ty) {
            Some(DnValue::Utf8String(s)) => s.clone(),
            Some(DnValue::PrintableString(s)) => s.as_str().to_string(),
            Some(DnValue::Ia5String(s)) => s.as_str().to_string(),
            _ => String::new(),
        };
        let requested = format!(
            "{} ({})",
            dn_text(DnType::CommonName),
            dn_text(DnType::OrganizationalUnitName)
        );
        let expected = format!("{} ({})", subject.common_name(), subject.role);
        if requested != expected {
            return Err(PkiError::RequestMismatch {
                requested,
                expected,
            });
        }
        let params = self.leaf_params(subject)?;
        let cert = params
            .signed_by(&request.public_key, &self.issuer)
            .map_err(generate_err("the certificate"))?;
        Ok(cert.pem())
    }

    /// Makes a key and its signed certificate for a part that runs beside the CA (the management
    /// node itself; the agent of an all-in-one install).
    pub fn issue_local(&self, subject: &Subject) -> Result<(PrivateKey, String), PkiError> {
        let key = PrivateKey::generate()?;
        let request = key.request(subject)?;
        let cert = self.sign(&request, subject)?;
        Ok((key, cert))
    }

    fn leaf_params(&self, subject: &Subject) -> Result<CertificateParams, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())
            .map_err(generate_err("the certificate"))?;
        params.distinguished_name = subject.distinguished_name();
        params
            .distinguished_name
            .push(DnType::OrganizationName, organisation(&self.cloud_id));
        params.subject_alt_names = subject
            .addresses()
            .into_iter()
            .map(SanType::IpAddress)
            .collect();
        // libvirt (GnuTLS) wants both usages on its server and client certificates; every
        // certificate here serves both ends (a host is a server to the management node and a
        // client of the other hosts' libvirt).
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + LEAF_VALIDITY;
        params.serial_number = Some(random_serial()?);
        Ok(params)
    }

    /// The list of revoked certificates (PEM), numbered `number` (which must grow with each
    /// list published).
    pub fn crl(&self, revoked: &[RevokedCertificate], number: u64) -> Result<String, PkiError> {
        let mut revoked_certs = Vec::with_capacity(revoked.len());
        for r in revoked {
            let serial = hex::decode(&r.serial).map_err(|e| PkiError::Invalid {
                what: format!("the serial {:?}", r.serial),
                reason: e.to_string(),
            })?;
            revoked_certs.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial),
                revocation_time: OffsetDateTime::from_unix_timestamp(r.revoked_at_unix)
                    .unwrap_or_else(|_| OffsetDateTime::now_utc()),
                reason_code: None,
                invalidity_date: None,
            });
        }
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - CLOCK_SKEW,
            next_update: now + LEAF_VALIDITY,
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.issuer)
            .map_err(generate_err("the revocation list"))?
            .pem()
            .map_err(generate_err("the revocation list"))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::Role;

    #[test]
    fn the_ca_is_written_private_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CloudCa::create().unwrap();
        ca.write(&dir.path().join("ca")).unwrap();
        let mode = |p: &str| {
            std::fs::metadata(dir.path().join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("ca"), 0o700);
        assert_eq!(mode("ca/ca.key"), 0o600);
        assert_eq!(mode("ca/ca.pem"), 0o644);
        let loaded = CloudCa::load(&dir.path().join("ca")).unwrap();
        assert_eq!(loaded.cloud_id(), ca.cloud_id());
        assert_eq!(loaded.fingerprint(), ca.fingerprint());
        // A certificate the loaded CA signs names the same cloud.
        let (_, cert) = loaded
            .issue_local(&Subject::host("10.1.2.3".parse().unwrap()))
            .unwrap();
        let id = crate::describe(&cert).unwrap();
        assert_eq!(id.role, Role::Host);
        assert_eq!(id.common_name, "host 10.1.2.3");
        assert_eq!(id.organisation, format!("ZStack cloud {}", ca.cloud_id()));
        assert_eq!(
            id.addresses,
            vec![
                "10.1.2.3".parse::<std::net::IpAddr>().unwrap(),
                "127.0.0.1".parse().unwrap()
            ]
        );
    }

    #[test]
    fn a_request_for_another_subject_is_refused() {
        let ca = CloudCa::create().unwrap();
        let key = PrivateKey::generate().unwrap();
        let request = key
            .request(&Subject::host("10.0.0.5".parse().unwrap()))
            .unwrap();
        let err = ca
            .sign(&request, &Subject::host("10.0.0.6".parse().unwrap()))
            .unwrap_err();
        assert!(matches!(err, PkiError::RequestMismatch { .. }), "{err}");
        let err = ca
            .sign(
                &request,
                &Subject::management_node("10.0.0.5".parse().unwrap()),
            )
            .unwrap_err();
        assert!(matches!(err, PkiError::RequestMismatch { .. }), "{err}");
        assert!(ca
            .sign("not a request", &Subject::host("10.0.0.5".parse().unwrap()))
            .is_err());
    }
}

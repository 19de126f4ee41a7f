//! The certificates one machine holds, in one directory (`/etc/zstack/pki`):
//!
//! - `ca.pem`: the cloud's CA certificate, what the machine trusts;
//! - `crl.pem`: the CA's latest revocation list, where the machine checks peers against it;
//! - `<role>.pem` and `<role>.key` (0600): the machine's own certificate and key for a role
//!   (`management-node`, `host`). A management node that is also a host holds both.
//!
//! The key is made here ([`MachinePki::key`]) and only its request leaves the machine; the signed
//! certificate comes back through [`MachinePki::install`], which refuses a certificate that is
//! not for this key, this role or this cloud.

use std::path::{Path, PathBuf};

use rcgen::PublicKeyData;

use crate::files::{read_text, write_public};
use crate::tls::{Identity, Trust};
use crate::{certificates_from_pem, identity_of, CertificateIdentity, PkiError, PrivateKey, Role};

/// One machine's certificate directory.
#[derive(Debug, Clone)]
pub struct MachinePki {
    dir: PathBuf,
}

fn invalid(what: &str, reason: impl Into<String>) -> PkiError {
    PkiError::Invalid {
        what: what.to_string(),
        reason: reason.into(),
    }
}

impl MachinePki {
    pub fn new(dir: impl Into<PathBuf>) -> MachinePki {
        MachinePki { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn crl_file(&self) -> PathBuf {
        self.dir.join("crl.pem")
    }

    pub fn certificate_file(&self, role: Role) -> PathBuf {
        self.dir.join(format!("{}.pem", role.name()))
    }

    pub fn key_file(&self, role: Role) -> PathBuf {
        self.dir.join(format!("{}.key", role.name()))
    }

    /// Whether the machine holds a certificate for `role` (and the CA's).
    pub fn has_identity(&self, role: Role) -> bool {
        self.certificate_file(role).is_file()
            && self.key_file(role).is_file()
            && self.ca_file().is_file()
    }

    /// The machine's certificate and key for `role`.
    pub fn identity(&self, role: Role) -> Result<Identity, PkiError> {
        Ok(Identity {
            certificate_pem: read_text(&self.certificate_file(role))?,
            key_pem: read_text(&self.key_file(role))?,
        })
    }

    /// Who the machine's certificate for `role` says it is.
    pub fn certificate_identity(&self, role: Role) -> Result<CertificateIdentity, PkiError> {
        crate::describe(&read_text(&self.certificate_file(role))?)
    }

    /// What the machine trusts: the CA, and its revocation list if one was published here.
    pub fn trust(&self) -> Result<Trust, PkiError> {
        let crl_file = self.crl_file();
        let crl_pem = if crl_file.is_file() {
            Some(read_text(&crl_file)?)
        } else {
            None
        };
        Ok(Trust {
            ca_pem: read_text(&self.ca_file())?,
            crl_pem,
        })
    }

    /// The machine's key for `role`, made (0600) the first time it is asked for.
    pub fn key(&self, role: Role) -> Result<PrivateKey, PkiError> {
        PrivateKey::load_or_create(&self.key_file(role))
    }

    /// Installs a signed certificate for `role` and the CA that signed it, after checking that
    /// it is for this machine's key, for `role`, and of the cloud of `ca_pem`.
    pub fn install(
        &self,
        role: Role,
        certificate_pem: &str,
        ca_pem: &str,
    ) -> Result<CertificateIdentity, PkiError> {
        let cert_der = certificates_from_pem(certificate_pem)?.remove(0);
        let ca_der = certificates_from_pem(ca_pem)?.remove(0);
        let identity = identity_of(&cert_der)?;
        if identity.role != role {
            return Err(invalid(
                "the certificate",
                format!("it is for a {}, not a {role}", identity.role),
            ));
        }
        let cloud = crate::organisation_of(&ca_der)?;
        if identity.organisation != cloud {
            return Err(invalid(
                "the certificate",
                format!(
                    "it is of {:?}, and the CA given is of {cloud:?}",
                    identity.organisation
                ),
            ));
        }
        let key = PrivateKey::load(&self.key_file(role))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| invalid("the certificate", e.to_string()))?;
        if parsed.public_key().raw != key.pair().subject_public_key_info().as_slice() {
            return Err(invalid(
                "the certificate",
                format!(
                    "it is not for this machine's key {}",
                    self.key_file(role).display()
                ),
            ));
        }
        write_public(&self.ca_file(), ca_pem.as_bytes())?;
        write_public(&self.certificate_file(role), certificate_pem.as_bytes())?;
        Ok(identity)
    }

    /// Writes the CA's revocation list the machine checks peers against.
    pub fn write_crl(&self, crl_pem: &str) -> Result<(), PkiError> {
        write_public(&self.crl_file(), crl_pem.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CloudCa, Subject};

    #[test]
    fn installs_only_a_certificate_for_its_own_key_role_and_cloud() {
        let dir = tempfile::tempdir().unwrap();
        let pki = MachinePki::new(dir.path());
        let ca = CloudCa::create().unwrap();
        let other_ca = CloudCa::create().unwrap();
        let subject = Subject::host("10.0.0.5".parse().unwrap());
        assert!(!pki.has_identity(Role::Host));

        let key = pki.key(Role::Host).unwrap();
        let request = key.request(&subject).unwrap();
        let cert = ca.sign(&request, &subject).unwrap();

        // Another key's certificate.
        let (_, foreign) = ca.issue_local(&subject).unwrap();
        assert!(pki
            .install(Role::Host, &foreign, ca.certificate_pem())
            .is_err());
        // The right certificate, with the CA of another cloud.
        assert!(pki
            .install(Role::Host, &cert, other_ca.certificate_pem())
            .is_err());
        // As another role.
        assert!(pki
            .install(Role::ManagementNode, &cert, ca.certificate_pem())
            .is_err());
        assert!(!pki.has_identity(Role::Host));

        let installed = pki
            .install(Role::Host, &cert, ca.certificate_pem())
            .unwrap();
        assert_eq!(installed.role, Role::Host);
        assert!(pki.has_identity(Role::Host));
        assert_eq!(
            pki.certificate_identity(Role::Host).unwrap().serial,
            installed.serial
        );
        assert!(pki.trust().unwrap().crl_pem.is_none());
        pki.write_crl(&ca.crl(&[], 1).unwrap()).unwrap();
        assert!(pki.trust().unwrap().crl_pem.is_some());
        // The key made at the first call is the one kept.
        assert_eq!(pki.key(Role::Host).unwrap().pem(), key.pem());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(pki.key_file(Role::Host))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

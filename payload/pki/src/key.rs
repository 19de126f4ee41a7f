//! A part's own private key, made where it is used, and its certificate request.

use std::path::Path;

use rcgen::{CertificateParams, KeyPair};

use crate::files::{read_text, write_private};
use crate::{PkiError, Subject};

/// An ECDSA P-256 private key.
pub struct PrivateKey {
    pair: KeyPair,
}

impl PrivateKey {
    pub fn generate() -> Result<PrivateKey, PkiError> {
        let pair = KeyPair::generate().map_err(|source| PkiError::Generate {
            what: "a private key",
            source,
        })?;
        Ok(PrivateKey { pair })
    }

    pub fn from_pem(pem: &str) -> Result<PrivateKey, PkiError> {
        let pair = KeyPair::from_pem(pem).map_err(|e| PkiError::Invalid {
            what: "the private key".into(),
            reason: e.to_string(),
        })?;
        Ok(PrivateKey { pair })
    }

    pub fn load(path: &Path) -> Result<PrivateKey, PkiError> {
        PrivateKey::from_pem(&read_text(path)?).map_err(|e| match e {
            PkiError::Invalid { reason, .. } => PkiError::Invalid {
                what: path.display().to_string(),
                reason,
            },
            other => other,
        })
    }

    /// Loads the key at `path`, or makes one there (0600) if there is none.
    pub fn load_or_create(path: &Path) -> Result<PrivateKey, PkiError> {
        if path.exists() {
            return PrivateKey::load(path);
        }
        let key = PrivateKey::generate()?;
        write_private(path, key.pem().as_bytes())?;
        Ok(key)
    }

    pub(crate) fn pair(&self) -> &KeyPair {
        &self.pair
    }

    /// The key in PKCS#8 PEM.
    pub fn pem(&self) -> String {
        self.pair.serialize_pem()
    }

    /// A certificate request (PEM) for `subject`, signed with this key.
    pub fn request(&self, subject: &Subject) -> Result<String, PkiError> {
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(|source| PkiError::Generate {
                what: "a certificate request",
                source,
            })?;
        params.distinguished_name = subject.distinguished_name();
        let csr = params
            .serialize_request(&self.pair)
            .map_err(|source| PkiError::Generate {
                what: "a certificate request",
                source,
            })?;
        csr.pem().map_err(|source| PkiError::Generate {
            what: "a certificate request",
            source,
        })
    }
}

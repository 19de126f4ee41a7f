//! Join tokens: how a host joins a cloud whose management node may not log in to it over SSH.
//!
//! A token is `<id>.<secret>.<CA fingerprint>`: the id (8 hex) names the token's row, the secret
//! (32 hex) proves the holder got it from the operator (the management node keeps only its
//! SHA-256), and the fingerprint (64 hex) lets the host check the management node's CA before it
//! sends anything, so a token also protects the host from a man in the middle.

use sha2::Digest;

use crate::PkiError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub id: String,
    pub secret: String,
    pub ca_fingerprint: String,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl JoinToken {
    pub fn generate(ca_fingerprint: &str) -> Result<JoinToken, PkiError> {
        let mut id = [0u8; 4];
        let mut secret = [0u8; 16];
        getrandom::getrandom(&mut id)?;
        getrandom::getrandom(&mut secret)?;
        Ok(JoinToken {
            id: hex::encode(id),
            secret: hex::encode(secret),
            ca_fingerprint: ca_fingerprint.to_string(),
        })
    }

    pub fn parse(text: &str) -> Result<JoinToken, PkiError> {
        let invalid = |reason: &str| {
            PkiError::Invalid {
            what: "the join token".into(),
            reason: format!("{reason}; a token looks like <8 hex>.<32 hex>.<64 hex>, as `zstack-ctl host_join_token` prints it"),
        }
        };
        let parts: Vec<&str> = text.trim().split('.').collect();
        let [id, secret, fp] = parts.as_slice() else {
            return Err(invalid("it does not have three parts"));
        };
        if !is_hex(id, 8) || !is_hex(secret, 32) || !is_hex(fp, 64) {
            return Err(invalid(
                "a part has the wrong length or is not lower-case hex",
            ));
        }
        Ok(JoinToken {
            id: id.to_string(),
            secret: secret.to_string(),
            ca_fingerprint: fp.to_string(),
        })
    }

    /// What the management node stores: the secret's SHA-256.
    pub fn secret_hash(&self) -> String {
        hex::encode(sha2::Sha256::digest(self.secret.as_bytes()))
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.id, self.secret, self.ca_fingerprint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_reads_back() {
        let t = JoinToken::generate(&"ab".repeat(32)).unwrap();
        assert_eq!(JoinToken::parse(&t.to_string()).unwrap(), t);
        assert_eq!(t.secret_hash().len(), 64);
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for bad in [
            "",
            "a.b.c",
            "zzzzzzzz.00000000000000000000000000000000.",
            "1.2.3.4",
        ] {
            assert!(JoinToken::parse(bad).is_err(), "{bad:?}");
        }
    }
}

//! The browser's session: the API session uuid in a cookie the page's scripts cannot read
//! (HttpOnly) and other sites cannot make the browser send (SameSite=Strict), and a CSRF token
//! every form carries: an HMAC of the session under a key made at start.

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const COOKIE: &str = "zstack_session";
/// The form field that carries the CSRF token.
pub const CSRF_FIELD: &str = "csrf";

/// The session uuid in the request's cookie, if it has the form of one (32 hex digits).
pub fn from_headers(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| is_session_uuid(v))
}

fn is_session_uuid(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The `Set-Cookie` value that keeps `session` until the browser closes; the API decides when
/// the session itself ends (`identity/session.timeout`), and the next page then asks to log in.
pub fn set_cookie(session: &str) -> String {
    format!("{COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict")
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

pub struct CsrfKey([u8; 32]);

impl CsrfKey {
    pub fn random() -> anyhow::Result<CsrfKey> {
        let mut k = [0u8; 32];
        getrandom::getrandom(&mut k)
            .map_err(|e| anyhow::anyhow!("cannot read random bytes for the CSRF key: {e}"))?;
        Ok(CsrfKey(k))
    }

    #[cfg(test)]
    pub fn fixed(k: [u8; 32]) -> CsrfKey {
        CsrfKey(k)
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length.
        <Hmac<Sha256> as Mac>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!())
    }

    /// The token the forms of `session` carry.
    pub fn token(&self, session: &str) -> String {
        let mut m = self.mac();
        m.update(session.as_bytes());
        hex::encode(m.finalize().into_bytes())
    }

    /// True if `given` is the token of `session` (compared in constant time).
    pub fn verify(&self, session: &str, given: &str) -> bool {
        let Ok(bytes) = hex::decode(given) else {
            return false;
        };
        let mut m = self.mac();
        m.update(session.as_bytes());
        m.verify_slice(&bytes).is_ok()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_token_belongs_to_its_session_and_key() {
        let k = CsrfKey::fixed([7; 32]);
        let s = "0123456789abcdef0123456789abcdef";
        let t = k.token(s);
        assert!(k.verify(s, &t));
        assert!(!k.verify("fedcba9876543210fedcba9876543210", &t));
        assert!(!k.verify(s, ""));
        assert!(!k.verify(s, "zz"));
        assert!(!CsrfKey::fixed([8; 32]).verify(s, &t));
    }

    #[test]
    fn the_cookie_is_read_among_others_and_must_look_like_a_session() {
        let mut h = HeaderMap::new();
        h.insert(
            "cookie",
            "a=b; zstack_session=0123456789abcdef0123456789abcdef; c=d"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            from_headers(&h).as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        h.insert("cookie", "zstack_session=<script>".parse().unwrap());
        assert_eq!(from_headers(&h), None);
        let c = set_cookie("x");
        assert!(
            c.contains("HttpOnly") && c.contains("SameSite=Strict"),
            "{c}"
        );
    }
}

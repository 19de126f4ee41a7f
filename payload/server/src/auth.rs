//! Accounts and sessions, as in the original: `LogInByAccount` gives a session uuid that every
//! other call carries (`Authorization: OAuth <uuid>`); sessions expire; passwords are stored as
//! PBKDF2-HMAC-SHA256 hashes, never in plain text. An unknown account name costs a login what a
//! wrong password costs (the same rounds against a dummy hash), so timing does not tell which
//! names exist.

use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::{params, Connection, OptionalExtension};
use sha2::Sha256;

use crate::error::ApiError;
use crate::login_limit::{FailedLogins, Limits};
use crate::Node;

const ROUNDS: u32 = 100_000;

/// `pbkdf2-sha256$<rounds>$<salt hex>$<hash hex>`.
pub fn hash_password(password: &str) -> Result<String, ApiError> {
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).map_err(|e| ApiError::internal(e.to_string()))?;
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &salt, ROUNDS, &mut out);
    Ok(format!(
        "pbkdf2-sha256${ROUNDS}${}${}",
        hex::encode(salt),
        hex::encode(out)
    ))
}

pub fn verify_password(password: &str, stored: &str) -> bool {
    StoredHash::parse(stored).is_some_and(|h| h.matches(password))
}

/// A stored `pbkdf2-sha256$<rounds>$<salt hex>$<hash hex>`, taken apart.
struct StoredHash {
    rounds: u32,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

impl StoredHash {
    fn parse(stored: &str) -> Option<StoredHash> {
        let parts: Vec<&str> = stored.split('$').collect();
        let [alg, rounds, salt, hash] = parts.as_slice() else {
            return None;
        };
        if *alg != "pbkdf2-sha256" {
            return None;
        }
        Some(StoredHash {
            rounds: rounds.parse().ok()?,
            salt: hex::decode(salt).ok()?,
            hash: hex::decode(hash).ok()?,
        })
    }

    /// What an unknown account is checked against: this release's rounds and sizes, a hash no
    /// password gives (all zeros), so it costs what a wrong password costs.
    fn dummy() -> StoredHash {
        StoredHash {
            rounds: ROUNDS,
            salt: vec![0; 16],
            hash: vec![0; 32],
        }
    }

    fn matches(&self, password: &str) -> bool {
        let mut out = vec![0u8; self.hash.len()];
        pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &self.salt, self.rounds, &mut out);
        zstack_common::secret::constant_time_eq(&out, &self.hash)
    }
}

/// What the logins of a node share: the failed attempts, and how many PBKDF2 rounds they ran
/// (which shows that an unknown account costs what a wrong password costs).
#[derive(Default)]
pub struct Logins {
    rounds_run: AtomicU64,
    pub failed: FailedLogins,
}

impl Logins {
    /// PBKDF2 rounds run by logins since the node started.
    pub fn rounds_run(&self) -> u64 {
        self.rounds_run.load(Ordering::Relaxed)
    }

    /// Checks `password` against `stored`, the hash of the account; an unknown account (None)
    /// or an unreadable hash is checked against a dummy of the same cost, and fails.
    fn check(&self, password: &str, stored: Option<&str>) -> bool {
        let (hash, known) = match stored.and_then(StoredHash::parse) {
            Some(h) => (h, true),
            None => (StoredHash::dummy(), false),
        };
        self.rounds_run
            .fetch_add(u64::from(hash.rounds), Ordering::Relaxed);
        hash.matches(password) && known
    }
}

pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Creates the admin account from the install-time password if there is none.
pub fn ensure_admin(conn: &Connection, password: &str) -> Result<bool, ApiError> {
    let exists: Option<String> = conn
        .query_row("SELECT uuid FROM account WHERE name = 'admin'", [], |r| {
            r.get(0)
        })
        .optional()?;
    if exists.is_some() {
        return Ok(false);
    }
    let ts = now();
    conn.execute(
        "INSERT INTO account (uuid, name, type, password_hash, create_date, last_op_date)
         VALUES (?1, 'admin', 'SystemAdmin', ?2, ?3, ?3)",
        params![crate::new_uuid(), hash_password(password)?, ts],
    )?;
    Ok(true)
}

/// Logs in; returns (session uuid, account uuid, expiry). The account's hash is read and the
/// password checked on `reader`, without the writer lock (the hashing is the slow part); the
/// lock is taken only to record the session. Failed attempts are limited per account name and
/// per source address ([`crate::login_limit`]).
pub fn login(
    node: &Node,
    reader: &Connection,
    peer: Option<std::net::IpAddr>,
    name: &str,
    password: &str,
    ttl_secs: i64,
) -> Result<(String, String, String), ApiError> {
    let limits = Limits::read(reader, &node.release)?;
    let attempt = node
        .logins
        .failed
        .begin(name, peer, limits, std::time::Instant::now())?;
    let row: Option<(String, String)> = reader
        .query_row(
            "SELECT uuid, password_hash FROM account WHERE name = ?1",
            [name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let wrong = || {
        ApiError::new(
            axum::http::StatusCode::UNAUTHORIZED,
            "WRONG_CREDENTIALS",
            "wrong account name or password",
        )
    };
    let verified = node
        .logins
        .check(password, row.as_ref().map(|(_, hash)| hash.as_str()));
    let (account, _) = row.filter(|_| verified).ok_or_else(wrong)?;
    node.logins.failed.succeeded(attempt);
    let (session, expiry) = start_session(&*node.db()?, &account, ttl_secs)?;
    Ok((session, account, expiry))
}

/// Records a new session of `account`; returns (session uuid, expiry).
fn start_session(
    conn: &Connection,
    account: &str,
    ttl_secs: i64,
) -> Result<(String, String), ApiError> {
    let session = crate::new_uuid();
    let expiry = (chrono::Utc::now() + chrono::Duration::seconds(ttl_secs))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    conn.execute(
        "INSERT INTO session (uuid, account_uuid, expired_date, create_date) VALUES (?1, ?2, ?3, ?4)",
        params![session, account, expiry, now()],
    )?;
    Ok((session, expiry))
}

/// The account of a valid, unexpired session.
pub fn check_session(conn: &Connection, session: &str) -> Result<String, ApiError> {
    let row: Option<(String, String)> = conn
        .query_row(
            "SELECT account_uuid, expired_date FROM session WHERE uuid = ?1",
            [session],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let (account, expiry) = row.ok_or_else(|| {
        ApiError::unauthorized("the session is not valid; log in with LogInByAccount")
    })?;
    if expiry < now() {
        conn.execute("DELETE FROM session WHERE uuid = ?1", [session])?;
        return Err(ApiError::unauthorized(
            "the session has expired; log in again with LogInByAccount",
        ));
    }
    Ok(account)
}

/// The type of account `uuid` (SystemAdmin or Normal), None when there is no such account.
pub fn account_type(conn: &Connection, uuid: &str) -> Result<Option<String>, ApiError> {
    Ok(conn
        .query_row("SELECT type FROM account WHERE uuid = ?1", [uuid], |r| {
            r.get(0)
        })
        .optional()?)
}

/// Stores `hash` as the password of `account` and ends the account's sessions other than
/// `keep` (the caller's), in one transaction.
pub fn set_password(
    conn: &Connection,
    account: &str,
    hash: &str,
    keep: &str,
) -> Result<(), ApiError> {
    let tx = conn.unchecked_transaction()?;
    let changed = tx.execute(
        "UPDATE account SET password_hash = ?2, last_op_date = ?3 WHERE uuid = ?1",
        params![account, hash, now()],
    )?;
    if changed == 0 {
        return Err(ApiError::not_found("Account", account));
    }
    tx.execute(
        "DELETE FROM session WHERE account_uuid = ?1 AND uuid != ?2",
        params![account, keep],
    )?;
    tx.commit()?;
    Ok(())
}

pub fn logout(conn: &Connection, session: &str) -> Result<(), ApiError> {
    conn.execute("DELETE FROM session WHERE uuid = ?1", [session])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_hash_and_verify() {
        let h = super::hash_password("s3cret-pass").unwrap();
        assert!(h.starts_with("pbkdf2-sha256$"));
        assert!(!h.contains("s3cret"));
        assert!(super::verify_password("s3cret-pass", &h));
        assert!(!super::verify_password("s3cret-pasS", &h));
    }
}

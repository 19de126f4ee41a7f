//! Accounts and sessions, as in the original: `LogInByAccount` gives a session uuid that every
//! other call carries (`Authorization: OAuth <uuid>`); sessions expire; passwords are stored as
//! PBKDF2-HMAC-SHA256 hashes, never in plain text.

use rusqlite::{params, Connection, OptionalExtension};
use sha2::Sha256;

use crate::error::ApiError;
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
    let parts: Vec<&str> = stored.split('$').collect();
    let [alg, rounds, salt, hash] = parts.as_slice() else {
        return false;
    };
    if *alg != "pbkdf2-sha256" {
        return false;
    }
    let (Ok(rounds), Ok(salt), Ok(hash)) =
        (rounds.parse::<u32>(), hex::decode(salt), hex::decode(hash))
    else {
        return false;
    };
    let mut out = vec![0u8; hash.len()];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &salt, rounds, &mut out);
    zstack_common::secret::constant_time_eq(&out, &hash)
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
/// lock is taken only to record the session.
pub fn login(
    node: &Node,
    reader: &Connection,
    name: &str,
    password: &str,
    ttl_secs: i64,
) -> Result<(String, String, String), ApiError> {
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
    let (account, hash) = row.ok_or_else(wrong)?;
    if !verify_password(password, &hash) {
        return Err(wrong());
    }
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

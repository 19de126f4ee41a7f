//! Failed logins are limited per account name and per source address: within
//! `identity/session.failedLoginWindowSeconds`, at most `identity/session.failedLoginLimitPerAccount`
//! failures for one name (from anywhere) and `identity/session.failedLoginLimitPerAddress` from one
//! address (for any name); past either, LogInByAccount answers 429 saying when to try again,
//! without checking the password. The attempts are kept in memory (a restart forgets them).
//!
//! An attempt counts as failed from the moment it is let through, so concurrent guesses cannot
//! overrun a limit; when the password was right it no longer counts, nor do the earlier failures
//! of that account from that address. Failures from other addresses keep counting: a right
//! password from one place does not give another place new guesses.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::error::ApiError;
use crate::globalconfig;

/// The limits in force, as the global configs set them.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub per_account: usize,
    pub per_address: usize,
    pub window: Duration,
}

impl Limits {
    pub fn read(conn: &Connection, release: &semver::Version) -> Result<Limits, ApiError> {
        let read = |name: &str, default: u64| -> Result<u64, ApiError> {
            Ok(globalconfig::value(conn, release, "identity", name)?
                .parse()
                .unwrap_or(default))
        };
        Ok(Limits {
            per_account: usize::try_from(read("session.failedLoginLimitPerAccount", 10)?)
                .unwrap_or(usize::MAX),
            per_address: usize::try_from(read("session.failedLoginLimitPerAddress", 30)?)
                .unwrap_or(usize::MAX),
            window: Duration::from_secs(read("session.failedLoginWindowSeconds", 300)?),
        })
    }
}

/// At most this many attempts are remembered; past it the oldest are forgotten first.
const REMEMBERED: usize = 100_000;

struct Attempt {
    id: u64,
    at: Instant,
    account: String,
    address: Option<IpAddr>,
}

/// An attempt let through: it counts as failed until [`FailedLogins::succeeded`] is told.
#[derive(Debug)]
pub struct AttemptId(u64);

#[derive(Default)]
pub struct FailedLogins {
    attempts: Mutex<VecDeque<Attempt>>,
    next_id: AtomicU64,
}

impl FailedLogins {
    /// Lets an attempt of `account` from `address` through (counting it as failed), or refuses
    /// it with 429 when either limit is reached.
    pub fn begin(
        &self,
        account: &str,
        address: Option<IpAddr>,
        limits: Limits,
        now: Instant,
    ) -> Result<AttemptId, ApiError> {
        let mut attempts = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
        while attempts
            .front()
            .is_some_and(|a| now.saturating_duration_since(a.at) >= limits.window)
        {
            attempts.pop_front();
        }
        let of_account: Vec<Instant> = attempts
            .iter()
            .filter(|a| a.account == account)
            .map(|a| a.at)
            .collect();
        if let Some(wait) = wait_for(&of_account, limits.per_account, limits.window, now) {
            return Err(refusal(
                format!("for account {account}"),
                of_account.len(),
                limits,
                "session.failedLoginLimitPerAccount",
                limits.per_account,
                wait,
            )
            .field("accountName"));
        }
        if let Some(addr) = address {
            let of_address: Vec<Instant> = attempts
                .iter()
                .filter(|a| a.address == Some(addr))
                .map(|a| a.at)
                .collect();
            if let Some(wait) = wait_for(&of_address, limits.per_address, limits.window, now) {
                return Err(refusal(
                    format!("from {addr}"),
                    of_address.len(),
                    limits,
                    "session.failedLoginLimitPerAddress",
                    limits.per_address,
                    wait,
                ));
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if attempts.len() >= REMEMBERED {
            attempts.pop_front();
        }
        attempts.push_back(Attempt {
            id,
            at: now,
            account: account.to_string(),
            address,
        });
        Ok(AttemptId(id))
    }

    /// The attempt's password was right: it and the earlier failures of the same account from
    /// the same address stop counting.
    pub fn succeeded(&self, attempt: AttemptId) {
        let mut attempts = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
        let Some(who) = attempts
            .iter()
            .find(|a| a.id == attempt.0)
            .map(|a| (a.account.clone(), a.address))
        else {
            return;
        };
        attempts.retain(|a| (a.account.as_str(), a.address) != (who.0.as_str(), who.1));
    }
}

/// How long until fewer than `limit` of `times` (oldest first, all within the window) remain in
/// the window; None when fewer already are.
fn wait_for(times: &[Instant], limit: usize, window: Duration, now: Instant) -> Option<Duration> {
    if times.len() < limit {
        return None;
    }
    let frees_one = times[times.len() - limit] + window;
    Some(frees_one.saturating_duration_since(now))
}

fn refusal(
    whom: String,
    failures: usize,
    limits: Limits,
    config: &str,
    limit: usize,
    wait: Duration,
) -> ApiError {
    // Whole seconds, rounded up: trying again after them is never too early.
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    ApiError::new(
        axum::http::StatusCode::TOO_MANY_REQUESTS,
        "TOO_MANY_FAILED_LOGINS",
        format!(
            "too many failed logins {whom}: {failures} in the last {} s (identity/{config} is \
             {limit}); try again in {} s",
            limits.window.as_secs(),
            secs.max(1)
        ),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const LIMITS: Limits = Limits {
        per_account: 3,
        per_address: 5,
        window: Duration::from_secs(60),
    };

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn an_account_is_limited_from_every_address_until_the_oldest_failure_leaves_the_window() {
        let f = FailedLogins::default();
        let t0 = Instant::now();
        for (i, from) in ["10.0.0.1", "10.0.0.2", "10.0.0.3"].iter().enumerate() {
            f.begin(
                "admin",
                ip(from),
                LIMITS,
                t0 + Duration::from_secs(i as u64 * 10),
            )
            .unwrap();
        }
        let e = f
            .begin(
                "admin",
                ip("10.0.0.4"),
                LIMITS,
                t0 + Duration::from_secs(25),
            )
            .unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (429, "TOO_MANY_FAILED_LOGINS"));
        // The first failure (at 0 s) leaves the 60 s window at 60 s: 35 s from 25 s.
        assert!(e.message.contains("try again in 35 s"), "{}", e.message);
        assert!(
            e.message.contains("failedLoginLimitPerAccount"),
            "{}",
            e.message
        );
        // Other accounts are not limited by it.
        f.begin(
            "operator",
            ip("10.0.0.4"),
            LIMITS,
            t0 + Duration::from_secs(25),
        )
        .unwrap();
        f.begin(
            "admin",
            ip("10.0.0.4"),
            LIMITS,
            t0 + Duration::from_secs(60),
        )
        .unwrap();
    }

    #[test]
    fn an_address_is_limited_whatever_the_account() {
        let f = FailedLogins::default();
        let t0 = Instant::now();
        for i in 0..5 {
            f.begin(&format!("guess{i}"), ip("10.0.0.9"), LIMITS, t0)
                .unwrap();
        }
        let e = f.begin("admin", ip("10.0.0.9"), LIMITS, t0).unwrap_err();
        assert!(e.message.contains("from 10.0.0.9"), "{}", e.message);
        assert!(e.message.contains("try again in 60 s"), "{}", e.message);
        f.begin("admin", ip("10.0.0.8"), LIMITS, t0).unwrap();
    }

    #[test]
    fn a_success_clears_only_its_own_address_failures_of_that_account() {
        let f = FailedLogins::default();
        let t0 = Instant::now();
        let (attacker, operator) = (ip("10.0.0.66"), ip("10.0.0.1"));
        f.begin("admin", attacker, LIMITS, t0).unwrap();
        f.begin("admin", operator, LIMITS, t0).unwrap(); // a typo
        let right = f.begin("admin", operator, LIMITS, t0).unwrap();
        f.succeeded(right);
        // The operator's typo no longer counts, the attacker's failure still does: two more
        // guesses, not three.
        f.begin("admin", attacker, LIMITS, t0).unwrap();
        f.begin("admin", attacker, LIMITS, t0).unwrap();
        let e = f.begin("admin", attacker, LIMITS, t0).unwrap_err();
        assert!(e.message.contains("for account admin: 3"), "{}", e.message);
    }
}

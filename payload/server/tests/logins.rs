//! LogInByAccount: the password is checked without the writer lock; an unknown account costs
//! what a wrong password costs; failed logins are limited per account and per source address.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use serde_json::json;
use support::{TestNode, ADMIN_PASSWORD};

#[test]
fn a_login_checks_the_password_without_the_writer_lock() {
    let node = TestNode::start();
    let writer = node.node.db.lock().unwrap();
    // A wrong password is told while another call holds the writer lock: checking it never
    // waits for the writers.
    let a = node
        .call_within(
            "LogInByAccount",
            None,
            &json!({"accountName": "admin", "password": "not-the-password"}),
            Duration::from_secs(20),
        )
        .expect("a wrong password waited for the writer lock");
    assert_eq!(a.status, 401, "{}", a.body);
    assert_eq!(a.body["error"]["code"], "WRONG_CREDENTIALS");
    // A right one is checked meanwhile too, and gets its session once the lock is free.
    let login = std::thread::scope(|scope| {
        let login = scope.spawn(|| node.login("admin", ADMIN_PASSWORD));
        std::thread::sleep(Duration::from_millis(200));
        drop(writer);
        login.join().unwrap()
    });
    assert_eq!(login.status, 200, "{}", login.body);
    let s = login.body["inventory"]["uuid"].as_str().unwrap();
    node.ok("QueryZone", s, json!({}));
}

#[test]
fn an_unknown_account_costs_what_a_wrong_password_costs() {
    let node = TestNode::start();
    let rounds = || node.node.logins.rounds_run();
    let before = rounds();
    let a = node.login("admin", "not-the-password");
    assert_eq!(a.status, 401, "{}", a.body);
    let wrong_password = rounds() - before;
    let before = rounds();
    let b = node.login("nobody-by-this-name", "not-the-password");
    let unknown_account = rounds() - before;
    // The same answer, after the same work.
    assert_eq!((b.status, &b.body), (a.status, &a.body));
    assert!(wrong_password > 0);
    assert_eq!(unknown_account, wrong_password);
}

fn set_config(node: &TestNode, s: &str, name: &str, value: &str) {
    node.ok(
        "UpdateGlobalConfig",
        s,
        json!({"category": "identity", "name": name, "value": value}),
    );
}

#[test]
fn failed_logins_are_limited_per_account() {
    let node = TestNode::start();
    let s = node.admin_session();
    set_config(&node, &s, "session.failedLoginLimitPerAccount", "2");
    for _ in 0..2 {
        assert_eq!(node.login("admin", "not-the-password").status, 401);
    }
    // Past the limit even the right password is refused, saying when to try again.
    let a = node.login("admin", ADMIN_PASSWORD);
    assert_eq!(a.status, 429, "{}", a.body);
    assert_eq!(a.body["error"]["code"], "TOO_MANY_FAILED_LOGINS");
    assert_eq!(a.error_field(), Some("accountName"));
    assert!(a.message().contains("try again in "), "{}", a.message());
    assert!(a.message().contains("for account admin"), "{}", a.message());
    // The sessions already given still work; the window is a global config.
    node.ok("QueryZone", &s, json!({}));
    set_config(&node, &s, "session.failedLoginWindowSeconds", "1");
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(node.login("admin", ADMIN_PASSWORD).status, 200);
}

#[test]
fn failed_logins_are_limited_per_source_address() {
    let node = TestNode::start();
    let s = node.admin_session();
    set_config(&node, &s, "session.failedLoginLimitPerAddress", "3");
    for name in ["guess1", "guess2", "guess3"] {
        assert_eq!(node.login(name, "x").status, 401);
    }
    let a = node.login("admin", ADMIN_PASSWORD);
    assert_eq!(a.status, 429, "{}", a.body);
    assert!(a.message().contains("from 127.0.0.1"), "{}", a.message());
    // A value out of range is refused with the range.
    let a = node.call(
        "UpdateGlobalConfig",
        Some(&s),
        json!({"category": "identity", "name": "session.failedLoginLimitPerAddress", "value": "0"}),
    );
    assert_eq!(a.status, 400, "{}", a.body);
}

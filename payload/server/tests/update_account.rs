//! UpdateAccount changes a password: the admin any account's, an account only its own; the
//! account's other sessions end, the caller's stays.
#![allow(clippy::unwrap_used)]

mod support;

use serde_json::json;
use support::{TestNode, ADMIN_PASSWORD};

const ALICE_PASSWORD: &str = "alice-password-1";

/// A node with a second, normal account `alice`.
fn node_with_alice() -> (TestNode, String) {
    let alice = "a11ce000000000000000000000000000".to_string();
    let uuid = alice.clone();
    let node = TestNode::start_with(Vec::new(), move |conn| {
        conn.execute(
            "INSERT INTO account (uuid, name, type, password_hash, create_date, last_op_date)
             VALUES (?1, 'alice', 'Normal', ?2, 'now', 'now')",
            rusqlite::params![
                uuid,
                zstack_server::auth::hash_password(ALICE_PASSWORD).unwrap()
            ],
        )
        .unwrap();
    });
    (node, alice)
}

fn session_of(node: &TestNode, name: &str, password: &str) -> (String, String) {
    let a = node.login(name, password);
    assert_eq!(a.status, 200, "{name}: {}", a.body);
    (
        a.body["inventory"]["uuid"].as_str().unwrap().to_string(),
        a.body["inventory"]["accountUuid"]
            .as_str()
            .unwrap()
            .to_string(),
    )
}

fn works(node: &TestNode, session: &str) -> bool {
    node.call("QueryZone", Some(session), json!({})).status == 200
}

#[test]
fn the_admin_changes_its_own_password_and_its_other_sessions_end() {
    let node = TestNode::start();
    let (mine, admin) = session_of(&node, "admin", ADMIN_PASSWORD);
    let (other, _) = session_of(&node, "admin", ADMIN_PASSWORD);
    let inv = node.ok(
        "UpdateAccount",
        &mine,
        json!({"uuid": admin, "password": "a-new-password"}),
    )["inventory"]
        .clone();
    assert_eq!(
        (inv["uuid"].as_str(), inv["name"].as_str()),
        (Some(admin.as_str()), Some("admin"))
    );
    assert!(inv.get("passwordHash").is_none(), "{inv}");
    assert!(works(&node, &mine), "the caller's session ended");
    assert!(
        !works(&node, &other),
        "another session of the account still works"
    );
    assert_eq!(node.login("admin", ADMIN_PASSWORD).status, 401);
    session_of(&node, "admin", "a-new-password");
}

#[test]
fn an_account_changes_only_its_own_password_and_the_admin_any() {
    let (node, alice) = node_with_alice();
    let (admin_session, admin) = session_of(&node, "admin", ADMIN_PASSWORD);
    let (alice_session, _) = session_of(&node, "alice", ALICE_PASSWORD);

    let a = node.call(
        "UpdateAccount",
        Some(&alice_session),
        json!({"uuid": admin, "password": "taken-over-admin"}),
    );
    assert_eq!(a.status, 403, "{}", a.body);
    assert_eq!(a.error_field(), Some("uuid"));
    assert!(works(&node, &admin_session));
    session_of(&node, "admin", ADMIN_PASSWORD);

    node.ok(
        "UpdateAccount",
        &alice_session,
        json!({"uuid": alice, "password": "alice-password-2"}),
    );
    let (alice_session, _) = session_of(&node, "alice", "alice-password-2");

    // The admin changes alice's: every session of alice ends, the admin's stay.
    node.ok(
        "UpdateAccount",
        &admin_session,
        json!({"uuid": alice, "password": "alice-password-3"}),
    );
    assert!(!works(&node, &alice_session));
    assert!(works(&node, &admin_session));
    session_of(&node, "alice", "alice-password-3");
}

#[test]
fn bad_updates_are_refused_and_change_nothing() {
    let node = TestNode::start();
    let (s, admin) = session_of(&node, "admin", ADMIN_PASSWORD);
    let a = node.call(
        "UpdateAccount",
        Some(&s),
        json!({"uuid": admin, "password": "short"}),
    );
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(a.error_field(), Some("password"));
    let a = node.call(
        "UpdateAccount",
        Some(&s),
        json!({"uuid": "0123456789abcdef0123456789abcdef", "password": "long-enough-1"}),
    );
    assert_eq!(a.status, 404, "{}", a.body);
    let a = node.call(
        "UpdateAccount",
        None,
        json!({"uuid": admin, "password": "long-enough-1"}),
    );
    assert_eq!(a.status, 401, "{}", a.body);
    session_of(&node, "admin", ADMIN_PASSWORD);
    // zstack-cli finds the call and its parameters in the reference.
    let apis = node.apis();
    let update = apis.iter().find(|a| a["name"] == "UpdateAccount").unwrap();
    let params: Vec<&str> = update["params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(params, ["uuid", "password"]);
}

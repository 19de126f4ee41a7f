//! LogOut ends only the caller's session; malformed queries answer 4xx; `start=` works without
//! `limit=`; a text value that looks like a number stays text.
#![allow(clippy::unwrap_used)]

mod support;

use serde_json::json;
use support::TestNode;

#[test]
fn log_out_needs_the_session_it_ends_and_ends_no_other() {
    let node = TestNode::start();
    let mine = node.admin_session();
    let other = node.admin_session();
    let a = node.call("LogOut", None, json!({"sessionUuid": other}));
    assert_eq!(a.status, 401, "LogOut without a session: {}", a.body);
    let a = node.call("LogOut", Some(&mine), json!({"sessionUuid": other}));
    assert_eq!(a.status, 403, "one session ended another: {}", a.body);
    assert_eq!(a.error_field(), Some("sessionUuid"));
    // Both sessions still work.
    node.ok("QueryZone", &other, json!({}));
    node.ok("QueryZone", &mine, json!({}));
    node.ok("LogOut", &mine, json!({}));
    assert_eq!(node.call("QueryZone", Some(&mine), json!({})).status, 401);
    node.ok("QueryZone", &other, json!({}));
}

#[test]
fn an_empty_field_list_answers_400() {
    let node = TestNode::start();
    let s = node.admin_session();
    let a = node.call("QueryCluster", Some(&s), json!({"fields": []}));
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(a.error_field(), Some("fields"));
}

#[test]
fn start_without_limit_skips_and_numbers_in_text_stay_text() {
    let node = TestNode::start();
    let s = node.admin_session();
    for name in ["007", "a", "b"] {
        node.ok("CreateZone", &s, json!({"name": name}));
    }
    let names = |q: serde_json::Value| -> Vec<String> {
        node.ok("QueryZone", &s, q)["inventories"]
            .as_array()
            .unwrap()
            .iter()
            .map(|z| z["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(json!({"start": 1})), ["a", "b"]);
    assert_eq!(names(json!({"start": 1, "limit": 1})), ["a"]);
    assert_eq!(
        names(json!({"conditions": [{"name": "name", "op": "=", "value": "007"}]})),
        ["007"]
    );
    assert_eq!(
        names(json!({"conditions": [{"name": "name", "op": "?=", "value": "007,b"}]})),
        ["007", "b"]
    );
}

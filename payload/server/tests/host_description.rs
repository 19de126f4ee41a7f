//! A host keeps the description it is added with (AddKVMHost and AddSimulatorHost share the
//! adding) and the one UpdateHost gives it.
#![allow(clippy::unwrap_used)]

mod support;

use serde_json::json;
use support::TestNode;

#[test]
fn hosts_keep_their_description() {
    let node = TestNode::start();
    let s = node.admin_session();
    let zone = node.ok("CreateZone", &s, json!({"name": "z"}))["inventory"]["uuid"].clone();
    let cluster = node.ok(
        "CreateCluster",
        &s,
        json!({"name": "c", "zoneUuid": zone, "hypervisorType": "Simulator"}),
    )["inventory"]["uuid"]
        .clone();
    let host = node.ok(
        "AddSimulatorHost",
        &s,
        json!({"name": "h", "managementIp": "10.0.0.5", "clusterUuid": cluster,
               "description": "rack 3, slot 7"}),
    )["inventory"]
        .clone();
    assert_eq!(host["description"], "rack 3, slot 7", "{host}");
    let uuid = host["uuid"].clone();
    let queried = |uuid: &serde_json::Value| {
        node.ok(
            "QueryHost",
            &s,
            json!({"conditions": [{"name": "uuid", "op": "=", "value": uuid}]}),
        )["inventories"][0]
            .clone()
    };
    assert_eq!(queried(&uuid)["description"], "rack 3, slot 7");

    let updated = node.ok(
        "UpdateHost",
        &s,
        json!({"uuid": uuid, "description": "rack 4"}),
    )["inventory"]
        .clone();
    assert_eq!(updated["description"], "rack 4", "{updated}");
    assert_eq!(updated["name"], "h");
    // A rename alone keeps the description.
    node.ok("UpdateHost", &s, json!({"uuid": uuid, "name": "h2"}));
    let h = queried(&uuid);
    assert_eq!(
        (h["name"].as_str(), h["description"].as_str()),
        (Some("h2"), Some("rack 4"))
    );
}

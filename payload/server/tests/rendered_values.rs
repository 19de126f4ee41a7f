//! Every API parameter whose value reaches a rendered file (dnsmasq configuration, libvirt XML,
//! nftables, cloud-config, fstab, systemd units) is checked against its grammar at the API: a
//! newline, a quote and a NUL are tried in each, as `GET /v1/apis` declares them.
#![allow(clippy::unwrap_used)]

mod support;

use serde_json::{json, Map, Value};
use support::TestNode;

/// A value that fits each grammar, for the parameters a call requires besides the one tried.
fn fitting(grammar: &str) -> &'static str {
    match grammar {
        "dns-domain" => "zstack.local",
        "hostname" => "web-1",
        "interface-name" => "eth0",
        "absolute-path" => "/zstack_ps",
        "text-line" => "a name",
        "ipv4" => "192.168.1.10",
        "ssh-public-key" => "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG1 user@host",
        other => panic!("a grammar this test does not know: {other}"),
    }
}

/// The parameters with a grammar, as the reference declares them: (call, parameter, grammar).
fn checked_params(apis: &[Value]) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for api in apis {
        for p in api["params"].as_array().unwrap() {
            if let Some(g) = p["grammar"]["name"].as_str() {
                out.push((
                    api["name"].as_str().unwrap().to_string(),
                    p["name"].as_str().unwrap().to_string(),
                    g.to_string(),
                ));
            }
        }
    }
    out
}

#[test]
fn the_parameters_that_reach_rendered_files_declare_their_grammar() {
    let node = TestNode::start();
    let declared = checked_params(&node.apis());
    for (call, param) in [
        ("CreateL3Network", "dnsDomain"),
        ("CreateL2NoVlanNetwork", "physicalInterface"),
        ("AddIpRange", "startIp"),
        ("AddIpRange", "endIp"),
        ("AddIpRange", "netmask"),
        ("AddIpRange", "gateway"),
        ("CreateVip", "requiredIp"),
        ("CreateVmInstance", "name"),
        ("UpdateVmInstance", "name"),
        ("CreateVmInstance", "sshKey"),
        ("AddSharedMountPointPrimaryStorage", "url"),
        ("AddLocalBackupStorage", "url"),
    ] {
        assert!(
            declared.iter().any(|(c, p, _)| c == call && p == param),
            "{call}.{param} reaches a rendered file but declares no grammar"
        );
    }
}

#[test]
fn a_newline_a_quote_and_a_nul_are_refused_in_each_checked_parameter() {
    let node = TestNode::start();
    let session = node.admin_session();
    let apis = node.apis();
    let checked = checked_params(&apis);
    assert!(!checked.is_empty());
    for (call, param, grammar) in &checked {
        let api = apis.iter().find(|a| a["name"] == call.as_str()).unwrap();
        // Free text (a VM's name) may hold a quote: the templates escape it for their format.
        let bad: &[&str] = if grammar == "text-line" {
            &["\n", "\0"]
        } else {
            &["\n", "\"", "\0"]
        };
        for b in bad {
            let mut body = Map::new();
            for p in api["params"].as_array().unwrap() {
                if p["required"] == true {
                    let g = p["grammar"]["name"].as_str().unwrap_or("text-line");
                    body.insert(p["name"].as_str().unwrap().into(), fitting(g).into());
                }
            }
            let value = format!("{}{b}x=y", fitting(grammar));
            body.insert(param.clone(), Value::String(value.clone()));
            let a = node.call(call, Some(&session), Value::Object(body));
            assert_eq!(
                a.status, 400,
                "{call} {param}={value:?}: {} {}",
                a.status, a.body
            );
            assert_eq!(a.body["error"]["code"], "INVALID_ARGUMENT", "{}", a.body);
            assert_eq!(a.error_field(), Some(param.as_str()), "{}", a.body);
            assert!(
                a.message().contains(param.as_str()) && a.message().contains("allowed:"),
                "the message names neither the parameter nor what is allowed: {}",
                a.message()
            );
        }
    }
}

#[test]
fn a_dns_domain_with_a_dnsmasq_line_in_it_is_refused_and_nothing_is_made() {
    let node = TestNode::start();
    let s = node.admin_session();
    let zone = node.ok("CreateZone", &s, json!({"name": "z"}))["inventory"]["uuid"].clone();
    let l2 = node.ok(
        "CreateL2NoVlanNetwork",
        &s,
        json!({"name": "l2", "zoneUuid": zone, "physicalInterface": "eth0"}),
    )["inventory"]["uuid"]
        .clone();
    let a = node.call(
        "CreateL3Network",
        Some(&s),
        json!({"name": "l3", "l2NetworkUuid": l2, "dnsDomain": "x\ndhcp-script=/path"}),
    );
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(a.error_field(), Some("dnsDomain"));
    assert!(a.message().contains("a newline"), "{}", a.message());
    let l3s = node.ok("QueryL3Network", &s, json!({}));
    assert_eq!(l3s["inventories"], json!([]), "an L3 was made: {l3s}");
    // The same call with a domain is made.
    node.ok(
        "CreateL3Network",
        &s,
        json!({"name": "l3", "l2NetworkUuid": l2, "dnsDomain": "zstack.local"}),
    );
}

#[test]
fn a_vm_name_keeps_its_quotes_as_text() {
    let node = TestNode::start();
    let s = node.admin_session();
    // UpdateVmInstance checks the name before it looks for the VM.
    let a = node.call(
        "UpdateVmInstance",
        Some(&s),
        json!({"uuid": "0123456789abcdef0123456789abcdef", "name": "web \"one\""}),
    );
    assert_eq!(a.status, 404, "{}", a.body);
}

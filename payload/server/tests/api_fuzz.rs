//! Every call that `GET /v1/apis` lists gets generated bodies: random text, wrong types, huge
//! values, NUL, newlines and quotes, missing and unknown parameters, bodies that are not JSON or
//! not an object. No answer may be a 5xx (nor a job that fails with INTERNAL_ERROR), every
//! answer must come within a timeout, and the node still serves a good call afterwards.
//!
//! `ZSTACK_API_FUZZ_CASES` sets the cases per call (default 10).
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Mutex;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Map, Value};
use support::cloud::Cloud;

/// Longer than any call takes on a slow machine; a call that does not answer by then hangs.
const TIMEOUT: Duration = Duration::from_secs(20);

fn cases() -> u32 {
    std::env::var("ZSTACK_API_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
}

const TRICKY: &[&str] = &[
    "",
    " ",
    "\0",
    "a\0b",
    "a\nb",
    "x\r\ny: z",
    "\"",
    "'",
    "\\",
    "%",
    "_",
    "..",
    "-1",
    "0",
    "007",
    "99999999999999999999999",
    "1e309",
    "NaN",
    "true",
    "null",
    "a,b,,c",
    ",",
    "Running",
    "KVM",
    "Simulator",
    "none",
    "enable",
    "disable",
    "asc",
    "uuid",
    "name",
    "; DROP TABLE zone; --",
    "' OR '1'='1",
    "\u{202e}",
    "\u{1F600}",
    "512M",
    "9999999T",
    "10.0.0.1",
    "255.255.255.255",
    "ssh-ed25519 AAAA",
    "http://",
    "{{ x }}",
];

const OPS: &[&str] = &[
    "=", "!=", ">", ">=", "<", "<=", "~=", "!~=", "?=", "!?=", "is null", "not null", "like", "",
];

const FIELDS: &[&str] = &[
    "uuid",
    "name",
    "state",
    "status",
    "description",
    "createDate",
    "totalCpuCapacity",
    "zoneUuid",
    "nope",
];

/// Random text, tricky text, and the uuids of the resources the cloud has (`known`), so calls
/// get past "not found" into their handlers.
fn text(known: &[String]) -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<String>(),
        3 => prop::sample::select(TRICKY).prop_map(String::from),
        3 => prop::sample::select(known.to_vec()),
        1 => any::<u128>().prop_map(|n| format!("{n:032x}")),
        1 => (1usize..100_000).prop_map(|n| "x".repeat(n)),
    ]
}

fn value(known: &[String]) -> impl Strategy<Value = Value> {
    let known = known.to_vec();
    let leaf = prop_oneof![
        6 => text(&known).prop_map(Value::String),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
        1 => any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null)),
        1 => any::<bool>().prop_map(Value::Bool),
        1 => Just(Value::Null),
    ];
    leaf.prop_recursive(3, 24, 6, move |inner| {
        prop_oneof![
            // A list of known uuids, as the calls that take several resources want.
            prop::collection::vec(prop::sample::select(known.clone()), 1..3)
                .prop_map(|v| Value::Array(v.into_iter().map(Value::String).collect())),
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((text(&known), inner.clone()), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            // Query conditions, with real field names and operators among them.
            prop::collection::vec(
                (
                    prop_oneof![
                        prop::sample::select(FIELDS).prop_map(String::from),
                        text(&known)
                    ],
                    prop::sample::select(OPS),
                    inner,
                ),
                0..4
            )
            .prop_map(|cs| Value::Array(
                cs.into_iter()
                    .map(|(n, o, v)| json!({"name": n, "op": o, "value": v}))
                    .collect()
            )),
        ]
    })
}

/// What is sent: bytes that may not be a JSON object, or parameters.
#[derive(Debug, Clone)]
enum Body {
    Raw(Vec<u8>),
    Params(Map<String, Value>),
}

impl Body {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Body::Raw(b) => b.clone(),
            Body::Params(m) => Value::Object(m.clone()).to_string().into_bytes(),
        }
    }
}

fn body(params: Vec<(String, bool)>, known: &Known) -> BoxedStrategy<Body> {
    let all = &known.all[..];
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let raw = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        prop::sample::select(vec![
            "{".to_string(),
            "[1,2]".into(),
            "null".into(),
            "\"x\"".into(),
            "123".into(),
            "{\"a\":}".into(),
            "{\"a\":1,\"a\":2}".into(),
            deep,
        ])
        .prop_map(String::into_bytes),
    ]
    .prop_map(Body::Raw);
    // Wild: every declared parameter perhaps, each any value, perhaps one unknown more.
    let declared: Vec<_> = params
        .iter()
        .map(|(p, _)| {
            let p = p.clone();
            prop::option::weighted(0.7, value(all)).prop_map(move |v| v.map(|v| (p.clone(), v)))
        })
        .collect();
    let wild = (
        declared,
        prop::option::weighted(0.2, (text(all), value(all))),
    )
        .prop_map(|(declared, extra)| {
            Body::Params(declared.into_iter().flatten().chain(extra).collect())
        });
    // Plausible: the required parameters and some optional ones, as strings, known uuids or
    // small numbers, with at most one of them any value: these reach the handlers.
    let declared: Vec<_> = params
        .iter()
        .map(|(p, required)| {
            let p = p.clone();
            prop::option::weighted(if *required { 0.97 } else { 0.4 }, plausible(&p, known))
                .prop_map(move |v| v.map(|v| (p.clone(), v)))
        })
        .collect();
    let n = params.len().max(1);
    let plausible =
        (declared, prop::option::weighted(0.3, (0..n, value(all)))).prop_map(|(declared, odd)| {
            let mut m: Map<String, Value> = declared.into_iter().flatten().collect();
            if let Some((i, v)) = odd {
                if let Some(k) = m.keys().nth(i).cloned() {
                    m.insert(k, v);
                }
            }
            Body::Params(m)
        });
    prop_oneof![1 => raw, 3 => wild, 6 => plausible].boxed()
}

/// A value of the type the parameter `name` takes: for `<kind>Uuid(s)` the uuid(s) of the
/// cloud's resources of that kind (of any kind for `uuid`), else text or a small number.
fn plausible(name: &str, known: &Known) -> BoxedStrategy<Value> {
    let uuids = known.for_param(name);
    if name.ends_with("Uuids") {
        return prop::collection::vec(prop::sample::select(uuids), 1..3)
            .prop_map(|v| Value::Array(v.into_iter().map(Value::String).collect()))
            .boxed();
    }
    if name.ends_with("Uuid") || name == "uuid" {
        return prop_oneof![
            9 => prop::sample::select(uuids).prop_map(Value::String),
            1 => prop::sample::select(known.all.clone()).prop_map(Value::String),
        ]
        .boxed();
    }
    prop_oneof![
        3 => prop::sample::select(TRICKY).prop_map(|s| Value::String(s.into())),
        3 => prop::collection::vec(0x20u8..0x7f, 1..12)
            .prop_map(|b| Value::String(b.into_iter().map(char::from).collect())),
        1 => (-3i64..5000).prop_map(Value::from),
        1 => any::<bool>().prop_map(Value::Bool),
    ]
    .boxed()
}

/// The uuids of the cloud's resources, by kind (`zone`, `l3Network`, ...: as parameters name
/// them before `Uuid`).
struct Known {
    all: Vec<String>,
    by_kind: Vec<(&'static str, String)>,
}

impl Known {
    fn new(by_kind: Vec<(&'static str, String)>) -> Known {
        Known {
            all: by_kind.iter().map(|(_, u)| u.clone()).collect(),
            by_kind,
        }
    }

    fn for_param(&self, name: &str) -> Vec<String> {
        let kind = name.trim_end_matches('s').trim_end_matches("Uuid");
        let of_kind: Vec<String> = self
            .by_kind
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, u)| u.clone())
            .collect();
        if of_kind.is_empty() {
            self.all.clone()
        } else {
            of_kind
        }
    }
}

/// Which session the call carries.
#[derive(Debug, Clone)]
enum Sent {
    Good,
    None,
    Stranger(String),
}

fn sent() -> impl Strategy<Value = Sent> {
    prop_oneof![
        8 => Just(Sent::Good),
        1 => Just(Sent::None),
        1 => any::<u128>().prop_map(|n| Sent::Stranger(format!("{n:032x}"))),
    ]
}

fn shown(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let s: String = s.chars().take(300).collect();
    format!("{s:?}{}", if bytes.len() > 300 { " (cut)" } else { "" })
}

#[test]
fn every_call_answers_malformed_input_with_a_4xx_and_the_node_keeps_serving() {
    // A cloud with one of everything, whose uuids the generated values use.
    let cloud = Cloud::new();
    let cluster = cloud.cluster("c1");
    let host = cloud.host(&cluster, "192.0.2.1", 8, "16G");
    let ps = cloud.storage("ps", &[&cluster]);
    let l2 = cloud.l2("l2", &[&cluster]);
    let l3 = cloud.l3("l3", &l2);
    let range = cloud.ip_range(&l3, "10.0.0.10", "10.0.0.200", "10.0.0.1");
    let vm = cloud.vm("vm1", &[&l3], json!({}));
    let uuid_of = |v: &Value| v["uuid"].as_str().unwrap().to_string();
    // And some that are not attached to anything, for the calls that attach.
    let spare_cluster = cloud.cluster("c2");
    let spare_l2 = cloud.l2("l2-spare", &[]);
    let bs = uuid_of(&cloud.ok("QueryBackupStorage", json!({}))["inventories"][0]);
    let mut by_kind = vec![
        ("zone", cloud.zone.clone()),
        ("image", cloud.image.clone()),
        ("instanceOffering", cloud.offering.clone()),
        ("cluster", cluster),
        ("cluster", spare_cluster),
        ("host", host),
        ("primaryStorage", ps),
        ("backupStorage", bs),
        ("l2Network", l2),
        ("l2Network", spare_l2),
        ("l3Network", l3),
        ("ipRange", range),
        ("vmInstance", uuid_of(&vm)),
        ("vmNic", uuid_of(&vm["vmNics"][0])),
    ];
    for v in vm["allVolumes"].as_array().unwrap() {
        by_kind.push(("volume", uuid_of(v)));
    }
    let known = Known::new(by_kind);
    let node = &cloud.node;
    // Kept out of the generated calls: the good call at the end uses it.
    let check_session = node.admin_session();
    for name in [
        "session.failedLoginLimitPerAccount",
        "session.failedLoginLimitPerAddress",
    ] {
        node.ok(
            "UpdateGlobalConfig",
            &check_session,
            json!({"category": "identity", "name": name, "value": "1000000"}),
        );
    }
    // Paths the calls are given land under the node's directory: AddLocalBackupStorage, for
    // one, makes the directory it is given.
    let sandbox = node.dir.path().join("paths");
    let session = Mutex::new(node.admin_session());
    let apis = node.apis();
    assert!(apis.len() > 50, "the reference lists {} calls", apis.len());
    let mut failures = Vec::new();
    for api in &apis {
        let name = api["name"].as_str().unwrap().to_string();
        let params: Vec<(String, bool)> = api["params"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap().to_string(),
                    p["required"].as_bool().unwrap(),
                )
            })
            .collect();
        let mut runner = TestRunner::new(Config {
            cases: cases(),
            max_shrink_iters: 64,
            failure_persistence: None,
            ..Config::default()
        });
        let outcome = runner.run(&(body(params, &known), sent()), |(body, sent)| {
            let body = match body {
                Body::Params(m) => Body::Params(
                    m.into_iter()
                        .map(|(k, v)| match v {
                            Value::String(s) if s.starts_with('/') => {
                                (k, Value::String(format!("{}{s}", sandbox.display())))
                            }
                            v => (k, v),
                        })
                        .collect(),
                ),
                raw => raw,
            };
            let bytes = body.bytes();
            let good = session.lock().unwrap().clone();
            let s = match &sent {
                Sent::Good => Some(good.as_str()),
                Sent::None => None,
                Sent::Stranger(s) => Some(s.as_str()),
            };
            let a = node.raw_within(&name, s, &bytes, TIMEOUT).ok_or_else(|| {
                TestCaseError::fail(format!("no answer within {TIMEOUT:?} to {}", shown(&bytes)))
            })?;
            if a.status >= 500 {
                return Err(TestCaseError::fail(format!(
                    "{} to {}: {}",
                    a.status,
                    shown(&bytes),
                    a.body
                )));
            }
            if a.status == 202 {
                let job = node.job(&good, a.body["jobUuid"].as_str().unwrap_or(""));
                if job["error"]["code"] == "INTERNAL_ERROR" || job["state"] == "Running" {
                    return Err(TestCaseError::fail(format!(
                        "the job of {} ended {job}",
                        shown(&bytes)
                    )));
                }
            }
            if name == "LogOut" && a.status == 200 {
                *session.lock().unwrap() = node.admin_session();
            }
            Ok(())
        });
        if let Err(e) = outcome {
            failures.push(format!("{name}: {e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The node still serves, and takes new work.
    node.ok("QueryZone", &check_session, json!({}));
    node.ok(
        "CreateZone",
        &check_session,
        json!({"name": "after the storm"}),
    );
    node.admin_session();
}

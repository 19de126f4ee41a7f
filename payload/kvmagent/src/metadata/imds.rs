//! The HTTP answers of one L3's metadata server: EC2's paths and versions, IMDSv2 tokens.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;

use super::{MetadataStore, VmRecord, MAX_TOKEN_TTL_SECS, TOKEN_HEADER, TOKEN_TTL_HEADER};

/// Tokens kept per listener (per L3 namespace), and per VM. Expired tokens are pruned at every
/// `PUT`; beyond the limits the token nearest its end is dropped (a VM asking for tokens in a
/// loop only ever drops its own).
const MAX_TOKENS: usize = 4096;
const MAX_TOKENS_PER_VM: usize = 32;

/// The API versions `/` lists (EC2's), besides `latest`. Each answers as `latest` does.
pub const VERSIONS: &[&str] = &[
    "1.0",
    "2007-01-19",
    "2007-03-01",
    "2007-08-29",
    "2007-10-10",
    "2007-12-15",
    "2008-02-01",
    "2008-09-01",
    "2009-04-04",
    "2011-01-01",
    "2011-05-01",
    "2012-01-12",
    "2014-02-25",
    "2014-11-05",
    "2015-10-20",
    "2016-04-19",
    "2016-06-30",
    "2016-09-02",
    "2018-03-28",
    "2018-08-17",
    "2018-09-24",
    "2019-10-01",
    "2020-10-27",
    "2021-01-03",
    "2021-03-23",
    "2021-07-15",
    "2022-09-24",
    "2024-04-11",
];

// ---------------------------------------------------------------------------------------------
// IMDSv2 tokens

struct TokenEntry {
    src: IpAddr,
    instance_id: String,
    expires: Instant,
}

#[derive(Default)]
struct Tokens {
    map: HashMap<String, TokenEntry>,
}

impl Tokens {
    fn issue(
        &mut self,
        token: String,
        src: IpAddr,
        instance_id: &str,
        ttl: Duration,
        now: Instant,
    ) {
        self.map.retain(|_, t| t.expires > now);
        let mine = self.map.values().filter(|t| t.src == src).count();
        if mine >= MAX_TOKENS_PER_VM {
            self.drop_nearest_end(|t| t.src == src);
        }
        if self.map.len() >= MAX_TOKENS {
            self.drop_nearest_end(|_| true);
        }
        self.map.insert(
            token,
            TokenEntry {
                src,
                instance_id: instance_id.to_string(),
                expires: now + ttl,
            },
        );
    }

    fn drop_nearest_end(&mut self, which: impl Fn(&TokenEntry) -> bool) {
        let victim = self
            .map
            .iter()
            .filter(|(_, t)| which(t))
            .min_by_key(|(_, t)| t.expires)
            .map(|(k, _)| k.clone());
        if let Some(k) = victim {
            self.map.remove(&k);
        }
    }

    /// A token is valid for the VM it was given to (same source address, same instance), until
    /// its TTL ends.
    fn valid(&self, token: &str, src: IpAddr, instance_id: &str, now: Instant) -> bool {
        self.map
            .get(token)
            .is_some_and(|t| t.src == src && t.instance_id == instance_id && now < t.expires)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }
}

// ---------------------------------------------------------------------------------------------
// Paths

/// What a request path names.
#[derive(Debug, PartialEq, Eq)]
enum Target<'a> {
    /// `/`
    Versions,
    /// `/latest`, `/latest/`
    Categories,
    /// `/latest/user-data`
    UserData,
    /// `/latest/meta-data/...`: the segments, and whether the path ended with `/`.
    MetaData(Vec<&'a str>, bool),
    /// `/latest/dynamic/...`
    Dynamic(Vec<&'a str>, bool),
    /// `/latest/api/token`
    Token,
}

fn parse_path(path: &str) -> Option<Target<'_>> {
    let p = path.strip_prefix('/')?;
    if p.is_empty() {
        return Some(Target::Versions);
    }
    let (version, rest) = p.split_once('/').unwrap_or((p, ""));
    if version != "latest" && !VERSIONS.contains(&version) {
        return None;
    }
    if rest.is_empty() {
        return Some(Target::Categories);
    }
    if rest == "user-data" {
        return Some(Target::UserData);
    }
    if rest == "api/token" && version == "latest" {
        return Some(Target::Token);
    }
    let tree = |name: &str| -> Option<(Vec<&str>, bool)> {
        let after = rest.strip_prefix(name)?;
        if !after.is_empty() && !after.starts_with('/') {
            return None;
        }
        Some((
            after.split('/').filter(|s| !s.is_empty()).collect(),
            after.ends_with('/'),
        ))
    };
    if let Some((segs, slash)) = tree("meta-data") {
        return Some(Target::MetaData(segs, slash));
    }
    if let Some((segs, slash)) = tree("dynamic") {
        return Some(Target::Dynamic(segs, slash));
    }
    None
}

/// A node of the meta-data tree: a value, or a directory's listing.
enum Node {
    Leaf(String),
    Dir(String),
}

fn meta_data(rec: &VmRecord, segs: &[&str]) -> Option<Node> {
    let keys: Vec<&str> = rec.ssh_keys().collect();
    let key_index = |s: &str| -> Option<usize> {
        let i: usize = s.parse().ok()?;
        (i < keys.len() && s == i.to_string()).then_some(i)
    };
    Some(match segs {
        [] => {
            let mut l = vec!["hostname", "instance-id", "local-hostname", "local-ipv4"];
            if !rec.mac.is_empty() {
                l.push("mac");
            }
            if !rec.availability_zone.is_empty() {
                l.push("placement/");
            }
            if rec.public_ipv4.is_some() {
                l.push("public-ipv4");
            }
            if !keys.is_empty() {
                l.push("public-keys/");
            }
            Node::Dir(l.join("\n"))
        }
        ["instance-id"] => Node::Leaf(rec.instance_id.clone()),
        ["hostname"] | ["local-hostname"] => Node::Leaf(rec.hostname.clone()),
        ["local-ipv4"] => Node::Leaf(rec.local_ipv4.clone()),
        ["mac"] if !rec.mac.is_empty() => Node::Leaf(rec.mac.clone()),
        ["public-ipv4"] => Node::Leaf(rec.public_ipv4.clone()?),
        ["placement"] if !rec.availability_zone.is_empty() => {
            Node::Dir("availability-zone".to_string())
        }
        ["placement", "availability-zone"] if !rec.availability_zone.is_empty() => {
            Node::Leaf(rec.availability_zone.clone())
        }
        ["public-keys"] if !keys.is_empty() => Node::Dir(
            (0..keys.len())
                .map(|i| format!("{i}={}", key_name(i)))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        ["public-keys", i] => {
            key_index(i)?;
            Node::Dir("openssh-key".to_string())
        }
        ["public-keys", i, "openssh-key"] => Node::Leaf(keys[key_index(i)?].to_string()),
        _ => return None,
    })
}

/// The names `public-keys/` lists: `0=zstack`, `1=zstack-1`, ...
fn key_name(i: usize) -> String {
    if i == 0 {
        "zstack".to_string()
    } else {
        format!("zstack-{i}")
    }
}

fn dynamic(rec: &VmRecord, segs: &[&str]) -> Option<Node> {
    Some(match segs {
        [] => Node::Dir("instance-identity/".to_string()),
        ["instance-identity"] => Node::Dir("document".to_string()),
        ["instance-identity", "document"] => {
            let mut doc = serde_json::Map::new();
            if !rec.availability_zone.is_empty() {
                doc.insert(
                    "availabilityZone".into(),
                    rec.availability_zone.clone().into(),
                );
            }
            doc.insert("instanceId".into(), rec.instance_id.clone().into());
            doc.insert("privateIp".into(), rec.local_ipv4.clone().into());
            doc.insert("version".into(), "2017-09-30".into());
            Node::Leaf(serde_json::to_string_pretty(&doc).ok()?)
        }
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// Answers

/// An answer, before it becomes an HTTP response (the logic is tested without sockets).
#[derive(Debug, PartialEq, Eq)]
struct Reply {
    status: StatusCode,
    content_type: &'static str,
    body: String,
    ttl: Option<u64>,
    allow: Option<&'static str>,
}

impl Reply {
    fn text(body: String) -> Self {
        Reply {
            status: StatusCode::OK,
            content_type: "text/plain",
            body,
            ttl: None,
            allow: None,
        }
    }

    fn error(status: StatusCode) -> Self {
        Reply {
            status,
            content_type: "text/plain",
            body: format!(
                "{} {}\n",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            ),
            ttl: None,
            allow: None,
        }
    }

    fn not_allowed(allow: &'static str) -> Self {
        Reply {
            allow: Some(allow),
            ..Reply::error(StatusCode::METHOD_NOT_ALLOWED)
        }
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut resp = Response::new(Body::from(self.body));
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        if let Some(ttl) = self.ttl {
            h.insert(TOKEN_TTL_HEADER, HeaderValue::from(ttl));
        }
        if let Some(allow) = self.allow {
            h.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        resp
    }
}

/// The metadata server of one L3 network.
struct Imds {
    store: Arc<MetadataStore>,
    l3: String,
    tokens: Mutex<Tokens>,
}

impl Imds {
    fn tokens(&self) -> std::sync::MutexGuard<'_, Tokens> {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn answer(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        src: IpAddr,
        now: Instant,
    ) -> Reply {
        let src = src.to_canonical();
        let Some(target) = parse_path(path) else {
            return Reply::error(StatusCode::NOT_FOUND);
        };
        let record = self.store.lookup_addr(&self.l3, src);
        if target == Target::Token {
            if method != Method::PUT {
                return Reply::not_allowed("PUT");
            }
            // EC2 refuses token requests that went through a proxy.
            if headers.contains_key("x-forwarded-for") {
                return Reply::error(StatusCode::FORBIDDEN);
            }
            let Some(rec) = record else {
                return Reply::error(StatusCode::NOT_FOUND);
            };
            let ttl = headers
                .get(TOKEN_TTL_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|t| (1..=MAX_TOKEN_TTL_SECS).contains(t));
            let Some(ttl) = ttl else {
                return Reply::error(StatusCode::BAD_REQUEST);
            };
            let Ok(token) = zstack_common::secret::random_hex(32) else {
                return Reply::error(StatusCode::INTERNAL_SERVER_ERROR);
            };
            self.tokens().issue(
                token.clone(),
                src,
                &rec.instance_id,
                Duration::from_secs(ttl),
                now,
            );
            return Reply {
                ttl: Some(ttl),
                ..Reply::text(token)
            };
        }
        if method != Method::GET && method != Method::HEAD {
            return Reply::not_allowed("GET, HEAD");
        }
        let Some(rec) = record else {
            // A stranger learns the versions, nothing else.
            return if target == Target::Versions {
                versions()
            } else {
                Reply::error(StatusCode::NOT_FOUND)
            };
        };
        match headers.get(TOKEN_HEADER) {
            Some(t) => {
                let ok = t
                    .to_str()
                    .is_ok_and(|t| self.tokens().valid(t.trim(), src, &rec.instance_id, now));
                if !ok {
                    return Reply::error(StatusCode::UNAUTHORIZED);
                }
            }
            None if rec.token_required => return Reply::error(StatusCode::UNAUTHORIZED),
            None => {}
        }
        let node = match target {
            Target::Versions => return versions(),
            Target::Categories => {
                let mut l = vec!["dynamic", "meta-data"];
                if rec.user_data.is_some() {
                    l.push("user-data");
                }
                return Reply::text(l.join("\n"));
            }
            Target::UserData => {
                return match &rec.user_data {
                    Some(u) => Reply {
                        content_type: "application/octet-stream",
                        ..Reply::text(u.clone())
                    },
                    None => Reply::error(StatusCode::NOT_FOUND),
                }
            }
            Target::MetaData(segs, slash) => meta_data(&rec, &segs).map(|n| (n, slash)),
            Target::Dynamic(segs, slash) => dynamic(&rec, &segs).map(|n| (n, slash)),
            Target::Token => None,
        };
        match node {
            Some((Node::Dir(listing), _)) => Reply::text(listing),
            Some((Node::Leaf(value), false)) => Reply::text(value),
            // A value is not a directory.
            Some((Node::Leaf(_), true)) | None => Reply::error(StatusCode::NOT_FOUND),
        }
    }
}

fn versions() -> Reply {
    let mut l: Vec<&str> = VERSIONS.to_vec();
    l.push("latest");
    Reply::text(l.join("\n"))
}

async fn handle(
    State(imds): State<Arc<Imds>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    imds.answer(
        req.method(),
        req.uri().path(),
        req.headers(),
        peer.ip(),
        Instant::now(),
    )
    .into_response()
}

/// The metadata server of L3 `l3_uuid`, answering from `store`. It identifies VMs by the
/// connection's source address, so it must be served with
/// `into_make_service_with_connect_info::<SocketAddr>()` ([`serve_listener`] and
/// [`serve_in_netns`] do). IMDSv2 tokens live in the router (in memory, per L3).
pub fn router(store: Arc<MetadataStore>, l3_uuid: String) -> Router {
    let imds = Arc::new(Imds {
        store,
        l3: l3_uuid,
        tokens: Mutex::new(Tokens::default()),
    });
    Router::new().fallback(handle).with_state(imds)
}

/// What the answers' tests share (the user data tests use them too).
#[cfg(test)]
mod test_support {
    #![allow(clippy::unwrap_used)] // test code: a panic is a failed test

    use super::super::test_support::*;
    pub(super) use super::*;

    pub(super) fn imds(store: &Arc<MetadataStore>) -> Imds {
        Imds {
            store: store.clone(),
            l3: L3.to_string(),
            tokens: Mutex::new(Tokens::default()),
        }
    }

    pub(super) fn get(i: &Imds, path: &str, src: &str) -> Reply {
        i.answer(
            &Method::GET,
            path,
            &HeaderMap::new(),
            ip(src),
            Instant::now(),
        )
    }

    pub(super) fn with_token(i: &Imds, path: &str, src: &str, token: &str, now: Instant) -> Reply {
        let mut h = HeaderMap::new();
        h.insert(TOKEN_HEADER, HeaderValue::from_str(token).unwrap());
        i.answer(&Method::GET, path, &h, ip(src), now)
    }

    pub(super) fn put_token(i: &Imds, src: &str, ttl: Option<&str>, now: Instant) -> Reply {
        let mut h = HeaderMap::new();
        if let Some(t) = ttl {
            h.insert(TOKEN_TTL_HEADER, HeaderValue::from_str(t).unwrap());
        }
        i.answer(&Method::PUT, "/latest/api/token", &h, ip(src), now)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a panic is a failed test

    use super::super::test_support::*;
    use super::test_support::*;

    #[test]
    fn paths() {
        assert_eq!(parse_path("/"), Some(Target::Versions));
        assert_eq!(parse_path("/latest"), Some(Target::Categories));
        assert_eq!(parse_path("/latest/"), Some(Target::Categories));
        assert_eq!(parse_path("/2009-04-04/"), Some(Target::Categories));
        assert_eq!(parse_path("/latest/user-data"), Some(Target::UserData));
        assert_eq!(parse_path("/2021-03-23/user-data"), Some(Target::UserData));
        assert_eq!(parse_path("/latest/api/token"), Some(Target::Token));
        assert_eq!(parse_path("/2009-04-04/api/token"), None);
        assert_eq!(
            parse_path("/latest/meta-data"),
            Some(Target::MetaData(vec![], false))
        );
        assert_eq!(
            parse_path("/latest/meta-data/"),
            Some(Target::MetaData(vec![], true))
        );
        assert_eq!(
            parse_path("/2009-04-04/meta-data/public-keys/0/openssh-key"),
            Some(Target::MetaData(
                vec!["public-keys", "0", "openssh-key"],
                false
            ))
        );
        assert_eq!(
            parse_path("/latest/meta-data//instance-id"),
            Some(Target::MetaData(vec!["instance-id"], false))
        );
        assert_eq!(parse_path("/latest/meta-datax"), None);
        assert_eq!(parse_path("/1999-01-01/meta-data/"), None);
        assert_eq!(parse_path("/foo"), None);
        assert_eq!(parse_path("/latest/user-data/x"), None);
        assert_eq!(
            parse_path("/latest/dynamic/instance-identity/document"),
            Some(Target::Dynamic(
                vec!["instance-identity", "document"],
                false
            ))
        );
    }

    #[test]
    fn answers_like_ec2() {
        let (_d, s) = store();
        s.upsert_vm(&vm(
            "vm1",
            vec![
                nic(L3, "10.0.0.5", &["DHCP", "Userdata"]),
                nic("other", "10.1.0.5", &["DHCP"]),
            ],
        ))
        .unwrap();
        let i = imds(&s);
        let src = "10.0.0.5";
        let body = |p: &str| {
            let r = get(&i, p, src);
            assert_eq!(r.status, StatusCode::OK, "{p}: {r:?}");
            r.body
        };
        let versions = body("/");
        assert!(versions.lines().any(|l| l == "2009-04-04"), "{versions}");
        assert!(versions.lines().any(|l| l == "2021-01-03"), "{versions}");
        assert_eq!(versions.lines().last(), Some("latest"));
        assert_eq!(body("/latest/"), "dynamic\nmeta-data\nuser-data");
        assert_eq!(
            body("/latest/meta-data/"),
            "hostname\ninstance-id\nlocal-hostname\nlocal-ipv4\nmac\nplacement/\npublic-keys/"
        );
        assert_eq!(body("/latest/meta-data"), body("/latest/meta-data/"));
        assert_eq!(body("/latest/meta-data/instance-id"), "vm1");
        assert_eq!(body("/2009-04-04/meta-data/instance-id"), "vm1");
        assert_eq!(body("/latest/meta-data/hostname"), "web-1");
        assert_eq!(body("/latest/meta-data/local-hostname"), "web-1");
        assert_eq!(body("/latest/meta-data/local-ipv4"), "10.0.0.5");
        assert_eq!(body("/latest/meta-data/placement/"), "availability-zone");
        assert_eq!(
            body("/latest/meta-data/placement/availability-zone"),
            "zone-a"
        );
        assert_eq!(body("/latest/meta-data/public-keys/"), "0=zstack");
        assert_eq!(body("/latest/meta-data/public-keys/0/"), "openssh-key");
        assert_eq!(
            body("/latest/meta-data/public-keys/0/openssh-key"),
            "ssh-ed25519 AAAAC3 me@host"
        );
        assert_eq!(body("/latest/user-data"), "#!/bin/sh\necho hi\n");
        assert_eq!(
            get(&i, "/latest/user-data", src).content_type,
            "application/octet-stream"
        );
        let doc: serde_json::Value =
            serde_json::from_str(&body("/latest/dynamic/instance-identity/document")).unwrap();
        assert_eq!(doc["instanceId"], "vm1");
        assert_eq!(doc["privateIp"], "10.0.0.5");
        for missing in [
            "/latest/meta-data/public-ipv4",
            "/latest/meta-data/public-keys/1/openssh-key",
            "/latest/meta-data/public-keys/00/openssh-key",
            "/latest/meta-data/instance-id/",
            "/latest/meta-data/nothing",
            "/latest/nothing",
            "/nothing",
            "/1999-01-01/meta-data/instance-id",
        ] {
            assert_eq!(
                get(&i, missing, src).status,
                StatusCode::NOT_FOUND,
                "{missing}"
            );
        }
        // Another L3's NIC is not served here; an unknown VM sees only the versions.
        assert_eq!(
            get(&i, "/latest/meta-data/instance-id", "10.1.0.5").status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(get(&i, "/", "10.0.0.99").status, StatusCode::OK);
        for p in ["/latest/", "/latest/meta-data/", "/latest/user-data"] {
            assert_eq!(get(&i, p, "10.0.0.99").status, StatusCode::NOT_FOUND, "{p}");
        }
        // Methods.
        let r = i.answer(
            &Method::POST,
            "/latest/meta-data/",
            &HeaderMap::new(),
            ip(src),
            Instant::now(),
        );
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(
            get(&i, "/latest/api/token", src).status,
            StatusCode::METHOD_NOT_ALLOWED
        );
        // An EIP shows as public-ipv4, and goes again.
        assert!(s
            .set_public_ip(L3, "10.0.0.5", Some("172.20.0.9".into()))
            .unwrap());
        assert_eq!(body("/latest/meta-data/public-ipv4"), "172.20.0.9");
        assert!(body("/latest/meta-data/").contains("\npublic-ipv4\n"));
        assert!(s.set_public_ip(L3, "10.0.0.5", None).unwrap());
        assert_eq!(
            get(&i, "/latest/meta-data/public-ipv4", src).status,
            StatusCode::NOT_FOUND
        );
        assert!(!s.set_public_ip(L3, "10.0.0.6", None).unwrap());
    }

    #[test]
    fn imdsv2_tokens() {
        let (_d, s) = store();
        s.upsert_vm(&vm("vm1", vec![nic(L3, "10.0.0.5", &["Userdata"])]))
            .unwrap();
        s.upsert_vm(&vm("vm2", vec![nic(L3, "10.0.0.6", &["Userdata"])]))
            .unwrap();
        let i = imds(&s);
        let now = Instant::now();
        let path = "/latest/meta-data/instance-id";

        // TTL: required, 1..=21600.
        for bad in [
            None,
            Some("0"),
            Some("21601"),
            Some("-1"),
            Some("abc"),
            Some(""),
        ] {
            assert_eq!(
                put_token(&i, "10.0.0.5", bad, now).status,
                StatusCode::BAD_REQUEST,
                "{bad:?}"
            );
        }
        let r = put_token(&i, "10.0.0.5", Some("60"), now);
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.ttl, Some(60));
        assert_eq!(r.content_type, "text/plain");
        let token = r.body;
        assert_eq!(token.len(), 64);
        assert_ne!(put_token(&i, "10.0.0.5", Some("21600"), now).body, token);

        let ok = with_token(&i, path, "10.0.0.5", &token, now);
        assert_eq!((ok.status, ok.body.as_str()), (StatusCode::OK, "vm1"));
        // A wrong token, another VM's use of it, an expired one: 401.
        assert_eq!(
            with_token(&i, path, "10.0.0.5", "nope", now).status,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            with_token(&i, path, "10.0.0.6", &token, now).status,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            with_token(&i, path, "10.0.0.5", &token, now + Duration::from_secs(59)).status,
            StatusCode::OK
        );
        assert_eq!(
            with_token(&i, path, "10.0.0.5", &token, now + Duration::from_secs(60)).status,
            StatusCode::UNAUTHORIZED
        );
        // A token of a VM that went, on an address given to another VM: 401.
        let t2 = put_token(&i, "10.0.0.6", Some("600"), now).body;
        s.remove_vm("vm2").unwrap();
        s.upsert_vm(&vm("vm3", vec![nic(L3, "10.0.0.6", &["Userdata"])]))
            .unwrap();
        assert_eq!(
            with_token(&i, path, "10.0.0.6", &t2, now).status,
            StatusCode::UNAUTHORIZED
        );

        // Unknown VMs get no token; proxied token requests are refused.
        assert_eq!(
            put_token(&i, "10.0.0.99", Some("60"), now).status,
            StatusCode::NOT_FOUND
        );
        let mut h = HeaderMap::new();
        h.insert(TOKEN_TTL_HEADER, HeaderValue::from_static("60"));
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.5"));
        assert_eq!(
            i.answer(&Method::PUT, "/latest/api/token", &h, ip("10.0.0.99"), now)
                .status,
            StatusCode::FORBIDDEN
        );

        // token_required: no token, 401; a token, served.
        let mut spec = vm("vm1", vec![nic(L3, "10.0.0.5", &["Userdata"])]);
        spec.metadata.token_required = true;
        s.upsert_vm(&spec).unwrap();
        assert_eq!(get(&i, path, "10.0.0.5").status, StatusCode::UNAUTHORIZED);
        assert_eq!(get(&i, "/", "10.0.0.5").status, StatusCode::UNAUTHORIZED);
        let t = put_token(&i, "10.0.0.5", Some("60"), now).body;
        assert_eq!(
            with_token(&i, path, "10.0.0.5", &t, now).status,
            StatusCode::OK
        );
    }

    #[test]
    fn tokens_are_bounded() {
        let mut t = Tokens::default();
        let now = Instant::now();
        let a = ip("10.0.0.5");
        for n in 0..(MAX_TOKENS_PER_VM * 3) {
            t.issue(
                format!("a{n}"),
                a,
                "vm1",
                Duration::from_secs(100 + n as u64),
                now,
            );
        }
        assert_eq!(t.len(), MAX_TOKENS_PER_VM);
        // The newest are kept.
        assert!(t.valid(&format!("a{}", MAX_TOKENS_PER_VM * 3 - 1), a, "vm1", now));
        assert!(!t.valid("a0", a, "vm1", now));
        // Expired tokens go at the next issue.
        let later = now + Duration::from_secs(10_000);
        t.issue(
            "b".into(),
            ip("10.0.0.6"),
            "vm2",
            Duration::from_secs(1),
            later,
        );
        assert_eq!(t.len(), 1);
        // The whole table is bounded too.
        for n in 0..(MAX_TOKENS + 10) {
            let src = IpAddr::from([10, 1, (n / 250) as u8, (n % 250) as u8]);
            t.issue(format!("c{n}"), src, "vm", Duration::from_secs(60), later);
        }
        assert_eq!(t.len(), MAX_TOKENS);
    }

    #[test]
    fn user_data_defaults() {
        let (_d, s) = store();
        let mut spec = vm("vm2", vec![nic(L3, "10.0.0.6", &["Userdata"])]);
        spec.user_data = None;
        spec.metadata.ssh_key = Some("ssh-rsa AAAA x # y: z\n\nssh-ed25519 BBBB".into());
        spec.metadata.hostname = String::new();
        spec.metadata.availability_zone = String::new();
        s.upsert_vm(&spec).unwrap();
        let i = imds(&s);
        let ud = get(&i, "/latest/user-data", "10.0.0.6").body;
        assert_eq!(
            ud,
            "#cloud-config\nssh_authorized_keys:\n  - \"ssh-rsa AAAA x # y: z\"\n  - \"ssh-ed25519 BBBB\"\ndisable_root: false\n"
        );
        assert_eq!(
            get(&i, "/latest/meta-data/public-keys/", "10.0.0.6").body,
            "0=zstack\n1=zstack-1"
        );
        assert_eq!(
            get(
                &i,
                "/latest/meta-data/public-keys/1/openssh-key",
                "10.0.0.6"
            )
            .body,
            "ssh-ed25519 BBBB"
        );
        assert_eq!(
            get(&i, "/latest/meta-data/hostname", "10.0.0.6").body,
            "10-0-0-6"
        );
        // No zone: no placement.
        assert!(!get(&i, "/latest/meta-data/", "10.0.0.6")
            .body
            .contains("placement"));

        spec.metadata.ssh_key = None;
        s.upsert_vm(&spec).unwrap();
        assert_eq!(
            get(&i, "/latest/user-data", "10.0.0.6").status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(get(&i, "/latest/", "10.0.0.6").body, "dynamic\nmeta-data");
        assert!(!get(&i, "/latest/meta-data/", "10.0.0.6")
            .body
            .contains("public-keys"));
    }
}

//! The API: every call is `POST /v1/api/<Name>` with a JSON object of parameters. Each call is
//! declared once (name, parameters, whether a session is needed, synchronous or a job, what it
//! does) in the `APIS` table of its resource module; [`all`] joins them. The dispatcher refuses
//! unknown calls and parameters with the closest valid name, and `GET /v1/apis` serves the same
//! tables as the API reference (docs/API.md is rendered from them and a test keeps it equal), so
//! the documentation cannot drift from the code.

use std::sync::Arc;

use rusqlite::Connection;
use serde_json::{json, Map, Value};

use zstack_common::grammar::Grammar;
use zstack_common::suggest::closest;

use crate::error::ApiError;
use crate::job::Job;
use crate::query::{Query, Sort, Table};
use crate::resources;
use crate::Node;

pub struct Param {
    pub name: &'static str,
    pub required: bool,
    pub description: &'static str,
    /// What the value must be, for values that reach a rendered file on a host or the node.
    pub grammar: Option<Grammar>,
}

impl Param {
    /// The value must fit `grammar`; checked before the handler runs.
    pub const fn is(self, grammar: Grammar) -> Param {
        Param {
            grammar: Some(grammar),
            ..self
        }
    }
}

pub const fn req(name: &'static str, description: &'static str) -> Param {
    Param {
        name,
        required: true,
        description,
        grammar: None,
    }
}
pub const fn opt(name: &'static str, description: &'static str) -> Param {
    Param {
        name,
        required: false,
        description,
        grammar: None,
    }
}

/// What a handler gets: the DB (locked for the call), the node, the parameters.
pub struct Call<'a> {
    pub conn: &'a Connection,
    pub node: &'a Arc<Node>,
    pub params: &'a Map<String, Value>,
    pub session: Option<String>,
    /// The address the call came from, where the listener tells it.
    pub peer: Option<std::net::IpAddr>,
}

pub enum Handler {
    /// Only reads: runs on a reader connection, so it does not wait for the writers.
    Read(fn(&Call) -> Result<Value, ApiError>),
    /// Answers at once.
    Sync(fn(&Call) -> Result<Value, ApiError>),
    /// Does slow work that must not hold up the writers (password hashing): runs on a reader
    /// connection, like `Read`, and takes the writer lock ([`Node::db`]) itself, only for its
    /// writes.
    Unlocked(fn(&Call) -> Result<Value, ApiError>),
    /// Checks and reserves at once, then runs the returned job; the caller polls it.
    Async(fn(&Call) -> Result<Job, ApiError>),
}

pub struct ApiSpec {
    pub name: &'static str,
    pub description: &'static str,
    pub needs_session: bool,
    pub params: &'static [Param],
    pub handler: Handler,
}

impl ApiSpec {
    pub fn is_async(&self) -> bool {
        matches!(self.handler, Handler::Async(_))
    }
}

pub const QUERY_PARAMS: &[Param] = &[
    opt(
        "conditions",
        "list of {name, op, value}; ops: = != > >= < <= ~= !~= ?= !?= is null, not null",
    ),
    opt("fields", "the fields to return"),
    opt("limit", "at most this many results"),
    opt("start", "skip this many results"),
    opt("count", "true: return only {total: N}"),
    opt(
        "sortBy",
        "the field to order the results by (then creation order)",
    ),
    opt("sortDirection", "asc (default) or desc"),
];

/// The calls of each release: a release serves the calls whose tables its schema has. (Before
/// 1.2.0 the API had accounts, global configs and zones.)
type Since = (u64, u64, u64);

const RELEASES: &[(Since, &[ApiSpec])] = &[
    ((1, 0, 0), resources::account::APIS),
    ((1, 0, 0), resources::zone::APIS),
    ((1, 2, 0), resources::account::JOB_APIS),
    ((1, 2, 0), resources::account::PASSWORD_APIS),
    ((1, 2, 0), resources::cluster::APIS),
    ((1, 2, 0), resources::host::APIS),
    ((1, 2, 0), resources::storage::APIS),
    ((1, 2, 0), resources::image::APIS),
    ((1, 2, 0), resources::network::APIS),
    ((1, 2, 0), resources::vm::APIS),
    ((1, 2, 0), resources::eip::APIS),
];

/// Every call of every release, in the order of the reference.
pub fn all() -> impl Iterator<Item = &'static ApiSpec> {
    RELEASES.iter().flat_map(|(_, apis)| apis.iter())
}

/// The calls `release` serves.
pub fn of_release(release: &semver::Version) -> impl Iterator<Item = &'static ApiSpec> + '_ {
    let r = (release.major, release.minor, release.patch);
    RELEASES
        .iter()
        .filter(move |(since, _)| *since <= r)
        .flat_map(|(_, apis)| apis.iter())
}

/// The call `name` of `release`, or UNKNOWN_API with the closest name.
pub fn find(release: &semver::Version, name: &str) -> Result<&'static ApiSpec, ApiError> {
    of_release(release).find(|a| a.name == name).ok_or_else(|| {
        let closest = closest(name, of_release(release).map(|a| a.name));
        ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "UNKNOWN_API",
            format!("no API call named {name}; did you mean {closest}?"),
        )
    })
}

/// Checks the parameters against the declaration: none unknown, every required one present.
pub fn check_params(spec: &ApiSpec, params: &Map<String, Value>) -> Result<(), ApiError> {
    for k in params.keys() {
        if !spec.params.iter().any(|p| p.name == k) {
            let hint = if spec.params.is_empty() {
                "it takes no parameters".to_string()
            } else {
                format!(
                    "did you mean {}?",
                    closest(k, spec.params.iter().map(|p| p.name))
                )
            };
            return Err(ApiError::invalid(
                k,
                format!("{} has no parameter {k}; {hint}", spec.name),
            ));
        }
    }
    for p in spec.params.iter().filter(|p| p.required) {
        match params.get(p.name) {
            None | Some(Value::Null) => return Err(ApiError::missing(p.name)),
            Some(Value::String(s)) if s.is_empty() => return Err(ApiError::missing(p.name)),
            _ => {}
        }
    }
    for p in spec.params {
        let (Some(grammar), Some(value)) = (p.grammar, params.get(p.name)) else {
            continue;
        };
        let fits = match value {
            Value::Null => Ok(()),
            Value::String(s) => grammar.check(s).map_err(|e| e.0),
            other => Err(format!("it is {other}, not a string")),
        };
        if let Err(fault) = fits {
            return Err(ApiError::invalid(
                p.name,
                format!(
                    "{} cannot be {value}: {fault}; allowed: {}",
                    p.name,
                    grammar.allowed()
                ),
            ));
        }
    }
    Ok(())
}

/// The reference of the calls of `release`, as `GET /v1/apis` serves it.
pub fn reference(release: &semver::Version) -> Value {
    Value::Array(
        of_release(release)
            .map(|a| {
                json!({
                    "name": a.name,
                    "description": a.description,
                    "needsSession": a.needs_session,
                    "async": a.is_async(),
                    "params": a.params.iter().map(|p| {
                        let mut param = json!({"name": p.name, "required": p.required, "description": p.description});
                        if let Some(g) = p.grammar {
                            param["grammar"] = json!({"name": g.name(), "allowed": g.allowed()});
                        }
                        param
                    }).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

/// The reference as Markdown: docs/API.md.
pub fn reference_markdown() -> String {
    let mut out = String::from(
        "# ZStack 1.2 API reference\n\n\
         Generated from the API's declarations (`payload/server/src/resources/`); a test keeps this \
         file equal to them. `GET /v1/apis` serves the same as JSON.\n\n\
         Every call is `POST /v1/api/<Name>` with a JSON object of parameters and, except where \
         noted, `Authorization: OAuth <session uuid>` from `LogInByAccount`. Synchronous calls \
         answer `200` with the result. Calls marked *job* answer `202 {\"jobUuid\", \"location\"}`; \
         `GET /v1/api-jobs/<uuid>?wait=<seconds>` returns `{\"job\": {\"state\": \
         \"Running|Succeeded|Failed\", \"result\", \"error\", \"steps\"}}` as soon as the job ends \
         or records a step (`steps`: `{name, state, changed, message, time}` of a job that reports \
         them, such as AddKVMHost over SSH). Errors are \
         `{\"error\": {\"code\", \"message\", \"field\"}}`.\n\n\
         Queries take conditions `{name, op, value}` with `= != > >= < <= ~= !~= ?= !?= is null \
         not null`, and `fields`, `limit`, `start`, `count`, `sortBy`, `sortDirection`.\n",
    );
    for a in all() {
        out.push_str(&format!("\n## {}\n\n{}", a.name, a.description));
        let mut tags = Vec::new();
        if a.is_async() {
            tags.push("job");
        }
        if !a.needs_session {
            tags.push("no session");
        }
        if !tags.is_empty() {
            out.push_str(&format!(" *({})*", tags.join(", ")));
        }
        out.push('\n');
        if !a.params.is_empty() {
            out.push_str("\n| parameter | required | description |\n|---|---|---|\n");
            for p in a.params {
                out.push_str(&format!(
                    "| `{}` | {} | {} |\n",
                    p.name,
                    if p.required { "yes" } else { "no" },
                    match p.grammar {
                        Some(g) => format!("{}; {}", p.description, g.allowed()),
                        None => p.description.to_string(),
                    }
                    .replace('|', "\\|")
                ));
            }
        }
    }
    out
}

// ---- parameter readers --------------------------------------------------------------------

impl Call<'_> {
    pub fn str(&self, k: &str) -> Option<&str> {
        self.params.get(k).and_then(Value::as_str)
    }

    /// A required string (presence was checked against the declaration).
    pub fn required(&self, k: &str) -> Result<&str, ApiError> {
        match self.params.get(k) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s),
            None | Some(Value::Null) => Err(ApiError::missing(k)),
            Some(_) => Err(ApiError::invalid(k, format!("{k} must be a string"))),
        }
    }

    /// A list: a JSON array of strings, or one comma-separated string.
    pub fn list(&self, k: &str) -> Result<Vec<String>, ApiError> {
        match self.params.get(k) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::String(s)) => Ok(s
                .split(',')
                .map(|x| x.trim().to_string())
                .filter(|x| !x.is_empty())
                .collect()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str().map(str::to_string).ok_or_else(|| {
                        ApiError::invalid(k, format!("{k} must be a list of strings"))
                    })
                })
                .collect(),
            Some(_) => Err(ApiError::invalid(
                k,
                format!("{k} must be a list or a comma-separated string"),
            )),
        }
    }

    /// An integer given as a JSON number or a decimal string, within `min..=max`.
    pub fn int(&self, k: &str, min: i64, max: i64) -> Result<Option<i64>, ApiError> {
        let Some(v) = self.params.get(k).filter(|v| !v.is_null()) else {
            return Ok(None);
        };
        let n = v
            .as_i64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
            .ok_or_else(|| ApiError::invalid(k, format!("{k} must be an integer, not {v}")))?;
        if n < min || n > max {
            return Err(ApiError::invalid(
                k,
                format!("{k} must be between {min} and {max}, not {n}"),
            ));
        }
        Ok(Some(n))
    }

    /// A size in bytes: a number, or a string with a unit (`512M`, `1G`, `2T`; powers of 1024).
    pub fn size(&self, k: &str) -> Result<Option<i64>, ApiError> {
        let Some(v) = self.params.get(k).filter(|v| !v.is_null()) else {
            return Ok(None);
        };
        let parsed = match v {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => parse_size(s),
            _ => None,
        };
        match parsed {
            Some(n) if n > 0 => Ok(Some(n)),
            _ => Err(ApiError::invalid(
                k,
                format!("{k} must be a positive size in bytes or with a unit (512M, 1G), not {v}"),
            )),
        }
    }

    pub fn bool(&self, k: &str) -> Result<Option<bool>, ApiError> {
        match self.params.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::String(s)) if s == "true" => Ok(Some(true)),
            Some(Value::String(s)) if s == "false" => Ok(Some(false)),
            Some(v) => Err(ApiError::invalid(
                k,
                format!("{k} must be true or false, not {v}"),
            )),
        }
    }

    /// A value from a fixed set, refused with the list.
    pub fn one_of<'v>(
        &self,
        k: &str,
        allowed: &[&'v str],
        default: Option<&'v str>,
    ) -> Result<&'v str, ApiError> {
        match self.str(k) {
            None => default.ok_or_else(|| ApiError::missing(k)),
            Some(v) => allowed.iter().find(|a| **a == v).copied().ok_or_else(|| {
                ApiError::invalid(
                    k,
                    format!("{k} cannot be {v:?}; allowed: {}", allowed.join(", ")),
                )
            }),
        }
    }

    /// Runs a query call against `t`.
    pub fn query(&self, t: &Table) -> Result<Value, ApiError> {
        let q = Query::from_params(self.params)?;
        if self.bool("count")? == Some(true) {
            return Ok(json!({"total": q.count(self.conn, t)?}));
        }
        let sort = Sort::from_params(self.params)?;
        Ok(json!({"inventories": q.run_sorted(self.conn, t, sort.as_ref())?}))
    }
}

pub fn parse_size(s: &str) -> Option<i64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 'K' | 'k') => (&s[..i], 1i64 << 10),
        (i, 'M' | 'm') => (&s[..i], 1 << 20),
        (i, 'G' | 'g') => (&s[..i], 1 << 30),
        (i, 'T' | 't') => (&s[..i], 1 << 40),
        _ => (s, 1),
    };
    num.trim().parse::<i64>().ok()?.checked_mul(mult)
}

/// The inventory of one resource by uuid, or RESOURCE_NOT_FOUND naming `field`.
pub fn one(conn: &Connection, t: &Table, uuid: &str) -> Result<Value, ApiError> {
    one_as(conn, t, uuid, "uuid")
}

pub fn one_as(conn: &Connection, t: &Table, uuid: &str, field: &str) -> Result<Value, ApiError> {
    Query::by_uuid(uuid)
        .run(conn, t)?
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::not_found(t.resource, uuid).field(field))
}

/// The number a `SELECT count(...)` answers.
pub fn count(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<i64, ApiError> {
    Ok(conn.query_row(sql, params, |r| r.get(0))?)
}

/// Fails with RESOURCE_NOT_FOUND on `field` unless `uuid` is a row of `table`.
pub fn exists(
    conn: &Connection,
    table: &str,
    what: &str,
    uuid: &str,
    field: &str,
) -> Result<(), ApiError> {
    let n: i64 = conn.query_row(
        &format!("SELECT count(*) FROM {table} WHERE uuid = ?1"),
        [uuid],
        |r| r.get(0),
    )?;
    if n == 0 {
        return Err(ApiError::not_found(what, uuid).field(field));
    }
    Ok(())
}

pub fn inventory(v: Value) -> Value {
    json!({ "inventory": v })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_calls_and_params_get_a_suggestion() {
        let r = semver::Version::new(1, 2, 0);
        let e = find(&r, "CreateZon").err().unwrap();
        assert!(e.message.contains("CreateZone"), "{}", e.message);
        let spec = find(&r, "CreateZone").unwrap();
        let mut p = Map::new();
        p.insert("nmae".into(), Value::String("z".into()));
        let e = check_params(spec, &p).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("nmae"));
        assert!(e.message.contains("did you mean name"), "{}", e.message);
        let e = check_params(spec, &Map::new()).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("MISSING_FIELD", Some("name"))
        );
    }

    #[test]
    fn older_releases_serve_only_their_calls() {
        let old = semver::Version::new(1, 1, 0);
        assert!(find(&old, "CreateZone").is_ok());
        assert!(find(&old, "CreateVmInstance").is_err());
        assert!(find(&semver::Version::new(1, 2, 0), "CreateVmInstance").is_ok());
    }

    #[test]
    fn names_are_unique_and_every_param_is_described() {
        let mut names: Vec<&str> = all().map(|a| a.name).collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n, "two calls share a name");
        for a in all() {
            assert!(!a.description.is_empty(), "{} has no description", a.name);
            for p in a.params {
                assert!(
                    !p.description.is_empty(),
                    "{}.{} has no description",
                    a.name,
                    p.name
                );
            }
        }
    }

    #[test]
    fn sizes_with_units() {
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("9999999999T"), None);
    }

    /// docs/API.md is the reference rendered from the declarations. Regenerate it with
    /// `ZSTACK_WRITE_API_DOC=1 cargo test -p zstack-server api_doc`.
    #[test]
    fn api_doc_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/API.md");
        let rendered = reference_markdown();
        if std::env::var_os("ZSTACK_WRITE_API_DOC").is_some() {
            std::fs::write(&path, &rendered).unwrap();
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == rendered,
            "docs/API.md differs from the API's declarations; regenerate it with \
             ZSTACK_WRITE_API_DOC=1 cargo test -p zstack-server api_doc"
        );
    }
}

//! The API: every call is `POST /v1/api/<Name>` with a JSON object of parameters. Each call is
//! declared once in [`APIS`] (name, parameters, whether a session is needed, what it does); the
//! dispatcher refuses unknown calls and parameters with the closest valid name, and
//! `GET /v1/apis` serves the same table as the API reference, so the documentation cannot drift
//! from the code.

use rusqlite::{params, Connection};
use serde_json::{json, Map, Value};

use zstack_common::suggest::closest;

use crate::auth;
use crate::error::ApiError;
use crate::globalconfig;
use crate::query::{Query, Table};

pub struct Param {
    pub name: &'static str,
    pub required: bool,
    pub description: &'static str,
}

const fn req(name: &'static str, description: &'static str) -> Param {
    Param {
        name,
        required: true,
        description,
    }
}
const fn opt(name: &'static str, description: &'static str) -> Param {
    Param {
        name,
        required: false,
        description,
    }
}

/// What a handler gets.
pub struct Call<'a> {
    pub conn: &'a Connection,
    /// The release this server is, which decides e.g. which global configs exist.
    pub release: &'a semver::Version,
    pub params: &'a Map<String, Value>,
    pub session: Option<String>,
}

pub struct ApiSpec {
    pub name: &'static str,
    pub description: &'static str,
    pub needs_session: bool,
    pub params: &'static [Param],
    pub handler: fn(&Call) -> Result<Value, ApiError>,
}

const QUERY_PARAMS: &[Param] = &[
    opt(
        "conditions",
        "list of {name, op, value}; ops: = != > >= < <= ~= !~= ?= !?= is null, not null",
    ),
    opt("fields", "the fields to return"),
    opt("limit", "at most this many results"),
    opt("start", "skip this many results (with limit)"),
];

pub const APIS: &[ApiSpec] = &[
    ApiSpec {
        name: "LogInByAccount",
        description: "Log in; returns a session uuid to send as `Authorization: OAuth <uuid>`",
        needs_session: false,
        params: &[
            req("accountName", "account name, e.g. admin"),
            req("password", "the account's password"),
        ],
        handler: log_in,
    },
    ApiSpec {
        name: "LogOut",
        description: "End a session",
        needs_session: false,
        params: &[opt(
            "sessionUuid",
            "the session to end (default: the caller's)",
        )],
        handler: log_out,
    },
    ApiSpec {
        name: "QueryGlobalConfig",
        description: "Global configs with their values",
        needs_session: true,
        params: QUERY_PARAMS,
        handler: query_global_config,
    },
    ApiSpec {
        name: "UpdateGlobalConfig",
        description: "Change a global config; the value is validated against its declaration",
        needs_session: true,
        params: &[
            req("category", "e.g. kvm"),
            req("name", "e.g. vm.cacheMode"),
            req("value", "the new value"),
        ],
        handler: update_global_config,
    },
    ApiSpec {
        name: "CreateZone",
        description: "Create a zone",
        needs_session: true,
        params: &[req("name", "zone name"), opt("description", "free text")],
        handler: create_zone,
    },
    ApiSpec {
        name: "QueryZone",
        description: "Zones",
        needs_session: true,
        params: QUERY_PARAMS,
        handler: query_zone,
    },
    ApiSpec {
        name: "UpdateZone",
        description: "Rename a zone or change its description",
        needs_session: true,
        params: &[
            req("uuid", "the zone"),
            opt("name", "new name"),
            opt("description", "new description"),
        ],
        handler: update_zone,
    },
    ApiSpec {
        name: "DeleteZone",
        description: "Delete a zone",
        needs_session: true,
        params: &[req("uuid", "the zone")],
        handler: delete_zone,
    },
];

pub fn find(name: &str) -> Result<&'static ApiSpec, ApiError> {
    APIS.iter().find(|a| a.name == name).ok_or_else(|| {
        let closest = closest(name, APIS.iter().map(|a| a.name));
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
    Ok(())
}

/// The reference of every call, as `GET /v1/apis` serves it.
pub fn reference() -> Value {
    Value::Array(
        APIS.iter()
            .map(|a| {
                json!({
                    "name": a.name,
                    "description": a.description,
                    "needsSession": a.needs_session,
                    "params": a.params.iter().map(|p| json!({"name": p.name, "required": p.required, "description": p.description})).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

fn s<'a>(c: &'a Call, k: &str) -> Option<&'a str> {
    c.params.get(k).and_then(Value::as_str)
}

fn required<'a>(c: &'a Call, k: &str) -> Result<&'a str, ApiError> {
    s(c, k).ok_or_else(|| ApiError::invalid(k, format!("{k} must be a string")))
}

fn log_in(c: &Call) -> Result<Value, ApiError> {
    let ttl: i64 = globalconfig::value(c.conn, c.release, "identity", "session.timeout")?
        .parse()
        .unwrap_or(7200);
    let (session, account, expiry) = auth::login(
        c.conn,
        required(c, "accountName")?,
        required(c, "password")?,
        ttl,
    )?;
    Ok(json!({"inventory": {"uuid": session, "accountUuid": account, "expiredDate": expiry}}))
}

fn log_out(c: &Call) -> Result<Value, ApiError> {
    let session = s(c, "sessionUuid")
        .map(str::to_string)
        .or_else(|| c.session.clone());
    if let Some(session) = session {
        auth::logout(c.conn, &session)?;
    }
    Ok(json!({}))
}

pub const GLOBAL_CONFIG: Table = Table {
    resource: "GlobalConfig",
    table: "global_config",
    fields: &[
        ("category", "category"),
        ("name", "name"),
        ("value", "value"),
        ("defaultValue", "default_value"),
        ("description", "description"),
    ],
};

fn query_global_config(c: &Call) -> Result<Value, ApiError> {
    Ok(json!({"inventories": Query::from_params(c.params)?.run(c.conn, &GLOBAL_CONFIG)?}))
}

fn update_global_config(c: &Call) -> Result<Value, ApiError> {
    let (cat, name, value) = (
        required(c, "category")?,
        required(c, "name")?,
        required(c, "value")?,
    );
    globalconfig::update(c.conn, c.release, cat, name, value)?;
    let inv = Query {
        conditions: vec![
            ("category".into(), "=".into(), cat.into()),
            ("name".into(), "=".into(), name.into()),
        ],
        fields: None,
        limit: None,
        start: None,
    }
    .run(c.conn, &GLOBAL_CONFIG)?;
    Ok(json!({"inventory": inv.into_iter().next()}))
}

pub const ZONE: Table = Table {
    resource: "Zone",
    table: "zone",
    fields: &[
        ("uuid", "uuid"),
        ("name", "name"),
        ("description", "description"),
        ("state", "state"),
        ("createDate", "create_date"),
        ("lastOpDate", "last_op_date"),
    ],
};

fn one(c: &Call, t: &Table, uuid: &str) -> Result<Value, ApiError> {
    Query {
        conditions: vec![("uuid".into(), "=".into(), uuid.into())],
        fields: None,
        limit: None,
        start: None,
    }
    .run(c.conn, t)?
    .into_iter()
    .next()
    .ok_or_else(|| ApiError::not_found(t.resource, uuid))
}

fn create_zone(c: &Call) -> Result<Value, ApiError> {
    let uuid = crate::new_uuid();
    let ts = auth::now();
    c.conn.execute(
        "INSERT INTO zone (uuid, name, description, state, create_date, last_op_date) VALUES (?1, ?2, ?3, 'Enabled', ?4, ?4)",
        params![uuid, required(c, "name")?, s(c, "description"), ts],
    )?;
    Ok(json!({"inventory": one(c, &ZONE, &uuid)?}))
}

fn query_zone(c: &Call) -> Result<Value, ApiError> {
    Ok(json!({"inventories": Query::from_params(c.params)?.run(c.conn, &ZONE)?}))
}

fn update_zone(c: &Call) -> Result<Value, ApiError> {
    let uuid = required(c, "uuid")?;
    one(c, &ZONE, uuid)?;
    c.conn.execute(
        "UPDATE zone SET name = coalesce(?2, name), description = coalesce(?3, description), last_op_date = ?4 WHERE uuid = ?1",
        params![uuid, s(c, "name"), s(c, "description"), auth::now()],
    )?;
    Ok(json!({"inventory": one(c, &ZONE, uuid)?}))
}

fn delete_zone(c: &Call) -> Result<Value, ApiError> {
    let uuid = required(c, "uuid")?;
    one(c, &ZONE, uuid)?;
    let in_use: i64 = c.conn.query_row(
        "SELECT count(*) FROM cluster WHERE zone_uuid = ?1",
        [uuid],
        |r| r.get(0),
    )?;
    if in_use > 0 {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "RESOURCE_IN_USE",
            format!("zone {uuid} still has {in_use} cluster(s); delete them first"),
        )
        .field("uuid"));
    }
    c.conn.execute("DELETE FROM zone WHERE uuid = ?1", [uuid])?;
    Ok(json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_calls_and_params_get_a_suggestion() {
        let e = find("CreateZon").err().unwrap();
        assert!(e.message.contains("CreateZone"), "{}", e.message);
        let spec = find("CreateZone").unwrap();
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
}

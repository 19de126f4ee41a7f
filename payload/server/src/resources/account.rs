//! Sessions, global configs and jobs.

use serde_json::{json, Value};

use crate::api::{inventory, opt, req, ApiSpec, Call, Handler, QUERY_PARAMS};
use crate::error::ApiError;
use crate::query::{Query, Table};
use crate::{auth, globalconfig, job};

pub const APIS: &[ApiSpec] = &[
    ApiSpec {
        name: "LogInByAccount",
        description: "Log in; returns a session uuid to send as `Authorization: OAuth <uuid>`",
        needs_session: false,
        params: &[
            req("accountName", "account name, e.g. admin"),
            req("password", "the account's password"),
        ],
        handler: Handler::Unlocked(log_in),
    },
    ApiSpec {
        name: "LogOut",
        description: "End the caller's session",
        needs_session: true,
        params: &[opt(
            "sessionUuid",
            "the session to end: the caller's own (the default)",
        )],
        handler: Handler::Sync(log_out),
    },
    ApiSpec {
        name: "QueryGlobalConfig",
        description: "Global configs with their values",
        needs_session: true,
        params: QUERY_PARAMS,
        handler: Handler::Read(query_global_config),
    },
    ApiSpec {
        name: "UpdateGlobalConfig",
        description: "Change a global config; the value is validated against its declaration. \
                      The next operation that uses it sees the change",
        needs_session: true,
        params: &[
            req("category", "e.g. kvm"),
            req("name", "e.g. vm.cacheMode"),
            req("value", "the new value"),
        ],
        handler: Handler::Sync(update_global_config),
    },
];

/// Changing a password came with 1.2.0.
pub const PASSWORD_APIS: &[ApiSpec] = &[ApiSpec {
    name: "UpdateAccount",
    description: "Change an account's password: the admin may change any account's, an account \
                  only its own. Every other session of the account ends (the caller's stays)",
    needs_session: true,
    params: &[
        req(
            "uuid",
            "the account (LogInByAccount answers the caller's as accountUuid)",
        ),
        req("password", "the new password, 8 to 256 characters"),
    ],
    handler: Handler::Unlocked(update_account),
}];

/// Jobs came with 1.2.0.
pub const JOB_APIS: &[ApiSpec] = &[ApiSpec {
    name: "QueryJob",
    description: "Asynchronous calls and their outcome (also `GET /v1/api-jobs/<uuid>`)",
    needs_session: true,
    params: QUERY_PARAMS,
    handler: Handler::Read(query_job),
}];

fn log_in(c: &Call) -> Result<Value, ApiError> {
    let ttl: i64 = globalconfig::value(c.conn, &c.node.release, "identity", "session.timeout")?
        .parse()
        .unwrap_or(7200);
    let (session, account, expiry) = auth::login(
        c.node,
        c.conn,
        c.peer,
        c.required("accountName")?,
        c.required("password")?,
        ttl,
    )?;
    Ok(inventory(
        json!({"uuid": session, "accountUuid": account, "expiredDate": expiry}),
    ))
}

/// A session ends only itself: the caller's session (checked by the dispatcher) is the one
/// ended, and `sessionUuid`, when given, must be that session.
fn log_out(c: &Call) -> Result<Value, ApiError> {
    let own = c
        .session
        .clone()
        .ok_or_else(|| ApiError::unauthorized("LogOut needs the session it ends"))?;
    if let Some(other) = c.str("sessionUuid").filter(|s| *s != own) {
        return Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "FORBIDDEN",
            format!("a session can end only itself; {other} is not the caller's session"),
        )
        .field("sessionUuid"));
    }
    auth::logout(c.conn, &own)?;
    Ok(json!({}))
}

pub const ACCOUNT: Table = Table {
    resource: "Account",
    table: "account",
    fields: &[
        ("uuid", "uuid"),
        ("name", "name"),
        ("type", "type"),
        ("createDate", "create_date"),
        ("lastOpDate", "last_op_date"),
    ],
    expand: None,
};

const PASSWORD_CHARS: std::ops::RangeInclusive<usize> = 8..=256;

/// Runs on a reader connection: who may is checked and the new hash made without the writer
/// lock, which is taken only to store it and end the account's other sessions.
fn update_account(c: &Call) -> Result<Value, ApiError> {
    let target = c.required("uuid")?;
    let password = c.required("password")?;
    let chars = password.chars().count();
    if !PASSWORD_CHARS.contains(&chars) {
        return Err(ApiError::invalid(
            "password",
            format!(
                "the password must have {} to {} characters, not {chars}",
                PASSWORD_CHARS.start(),
                PASSWORD_CHARS.end()
            ),
        ));
    }
    let session = c
        .session
        .as_deref()
        .ok_or_else(|| ApiError::unauthorized("UpdateAccount needs a session"))?;
    let caller = auth::check_session(c.conn, session)?;
    let caller_is_admin = auth::account_type(c.conn, &caller)?.as_deref() == Some("SystemAdmin");
    if auth::account_type(c.conn, target)?.is_none() {
        return Err(ApiError::not_found("Account", target));
    }
    if target != caller && !caller_is_admin {
        return Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "FORBIDDEN",
            format!(
                "account {caller} may change only its own password, not that of {target}; \
                 the admin may change any"
            ),
        )
        .field("uuid"));
    }
    let hash = auth::hash_password(password)?;
    let conn = c.node.db()?;
    auth::set_password(&conn, target, &hash, session)?;
    Ok(inventory(crate::api::one(&conn, &ACCOUNT, target)?))
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
    expand: None,
};

fn query_global_config(c: &Call) -> Result<Value, ApiError> {
    c.query(&GLOBAL_CONFIG)
}

fn update_global_config(c: &Call) -> Result<Value, ApiError> {
    let (cat, name, value) = (
        c.required("category")?,
        c.required("name")?,
        c.required("value")?,
    );
    globalconfig::update(c.conn, &c.node.release, cat, name, value)?;
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

pub const JOB: Table = Table {
    resource: "Job",
    table: "job",
    fields: &[
        ("uuid", "uuid"),
        ("apiName", "api_name"),
        ("state", "state"),
        ("resourceUuid", "resource_uuid"),
        ("createDate", "create_date"),
        ("lastOpDate", "last_op_date"),
    ],
    expand: Some(expand_job),
};

fn expand_job(
    conn: &rusqlite::Connection,
    m: &mut serde_json::Map<String, Value>,
) -> Result<(), ApiError> {
    if let Some(uuid) = m.get("uuid").and_then(Value::as_str).map(str::to_string) {
        let full = job::read(conn, &uuid)?;
        m.insert("result".into(), full["result"].clone());
        m.insert("error".into(), full["error"].clone());
        m.insert("steps".into(), full["steps"].clone());
    }
    Ok(())
}

fn query_job(c: &Call) -> Result<Value, ApiError> {
    c.query(&JOB)
}

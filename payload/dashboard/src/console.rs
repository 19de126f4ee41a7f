//! A VM's serial console log on its page, following live: the page is rendered with the log's
//! last piece (escaped like every text), and the script asks `GET /console-log/<vm>?offset=N`
//! again and again, appending what is new as text. Both read it with the API's
//! `GetVmConsoleLog`.

use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::{ApiClient, ApiFailure};
use crate::render::Authed;

/// The most the page shows when it is loaded (the API's bound for one answer): a longer log
/// is shown from its last 64 KiB, with a note of what was left out.
const SHOWN_AT_LOAD: u64 = 64 * 1024;

/// The console section of VM `vm`'s page: its log's end, where to follow it from, or why
/// there is none (a VM on no host) or the API's refusal.
pub fn section(api: &ApiClient, session: &str, vm: &str) -> Value {
    let read = |offset: u64| {
        api.sync(
            session,
            "GetVmConsoleLog",
            &json!({"uuid": vm, "offset": offset}),
        )
        .map(|v| v["inventory"].clone())
    };
    let last_piece = read(0).and_then(|first| {
        let size = first["size"].as_u64().unwrap_or(0);
        if size > SHOWN_AT_LOAD {
            read(size - SHOWN_AT_LOAD)
        } else {
            Ok(first)
        }
    });
    match last_piece {
        Ok(log) => json!({
            "text": log["text"],
            "nextOffset": log["nextOffset"],
            "left_out": log["offset"],
            "source": log["source"],
            "hostUuid": log["hostUuid"],
            "live": format!("/console-log/{vm}"),
        }),
        // A VM on no host has no console log: a note, not an error.
        Err(e) if e.code == "INVALID_STATE" => json!({"noHost": e.message}),
        Err(e) => json!({"error": e}),
    }
}

#[derive(Deserialize)]
pub struct FollowQuery {
    offset: Option<u64>,
}

/// `GET /console-log/<vm>?offset=N`: the log from N as JSON, for the page's script (which
/// appends `text` as a text node).
pub async fn follow(
    authed: Authed,
    Path(vm): Path<String>,
    Query(q): Query<FollowQuery>,
) -> Response {
    let offset = q.offset.unwrap_or(0);
    let fetched = authed
        .api(move |api, s| api.sync(s, "GetVmConsoleLog", &json!({"uuid": vm, "offset": offset})))
        .await;
    match fetched {
        Ok(v) => Json(v["inventory"].clone()).into_response(),
        Err(e) if e.needs_login() => authed.failure(&e),
        Err(e) => failure_json(&e),
    }
}

fn failure_json(e: &ApiFailure) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_GATEWAY);
    (status, Json(json!({"error": e}))).into_response()
}

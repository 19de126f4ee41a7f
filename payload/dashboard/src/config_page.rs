//! Global configuration as a table grouped by category, each value editable in place; a value
//! the API refuses shows the API's message next to its field.

use axum::body::Bytes;
use axum::extract::Query;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::ApiFailure;
use crate::forms::{csrf_refusal, form_pairs, pair};
use crate::render::Authed;

/// Configs whose value is one of a few words, offered as a choice.
fn choices(category: &str, name: &str) -> Option<&'static [&'static str]> {
    match (category, name) {
        ("kvm", "vm.cacheMode") => Some(&["none", "writethrough", "writeback"]),
        _ => None,
    }
}

#[derive(Deserialize, Default)]
pub struct ConfigQuery {
    saved: Option<String>,
}

struct Refused<'a> {
    category: &'a str,
    name: &'a str,
    value: &'a str,
    error: ApiFailure,
}

async fn render(authed: &Authed, saved: Option<String>, refused: Option<Refused<'_>>) -> Response {
    let fetched = authed
        .api(|api, s| api.sync(s, "QueryGlobalConfig", &json!({"sortBy": "category"})))
        .await;
    let rows = match fetched {
        Ok(v) => v["inventories"].as_array().cloned().unwrap_or_default(),
        Err(e) => return authed.failure(&e),
    };
    let mut groups: Vec<Value> = Vec::new();
    for r in rows {
        let category = r["category"].as_str().unwrap_or_default().to_string();
        let name = r["name"].as_str().unwrap_or_default().to_string();
        let key = format!("{category}/{name}");
        let id = format!("cfg-{}", key.replace(['/', '.'], "-"));
        let mut row = json!({
            "category": category, "name": name, "key": key, "id": id,
            "value": r["value"], "defaultValue": r["defaultValue"], "description": r["description"],
            "saved": saved.as_deref() == Some(key.as_str()),
        });
        if let Some(list) = choices(&category, &name) {
            row["options"] = json!(list);
        }
        if let Some(f) = refused
            .as_ref()
            .filter(|f| f.category == category && f.name == name)
        {
            row["error"] = json!(f.error);
            row["value"] = json!(f.value);
        }
        match groups.last_mut() {
            Some(g) if g["category"] == category.as_str() => {
                if let Some(list) = g["configs"].as_array_mut() {
                    list.push(row);
                }
            }
            _ => groups.push(json!({"category": category, "configs": [row]})),
        }
    }
    let mut ctx = authed.ctx("Global configuration");
    ctx["groups"] = json!(groups);
    let status = refused
        .as_ref()
        .and_then(|f| StatusCode::from_u16(f.error.status).ok())
        .unwrap_or(StatusCode::OK);
    authed.dashboard.pages.render(status, "config.html", &ctx)
}

/// `GET /config`.
pub async fn table(authed: Authed, Query(q): Query<ConfigQuery>) -> Response {
    render(&authed, q.saved, None).await
}

/// `POST /config`: UpdateGlobalConfig of one row.
pub async fn update(authed: Authed, body: Bytes) -> Response {
    let pairs = form_pairs(&body);
    if let Some(r) = csrf_refusal(&authed, &pairs) {
        return r;
    }
    let category = pair(&pairs, "category").unwrap_or_default().to_string();
    let name = pair(&pairs, "name").unwrap_or_default().to_string();
    let value = pair(&pairs, "value").unwrap_or_default().to_string();
    let params = json!({"category": category, "name": name, "value": value});
    let answer = authed
        .api(move |api, s| api.sync(s, "UpdateGlobalConfig", &params))
        .await;
    match answer {
        Ok(_) => {
            let key = format!("{category}/{name}");
            let q = serde_urlencoded::to_string([("saved", key.as_str())]).unwrap_or_default();
            let anchor = format!("cfg-{}", key.replace(['/', '.'], "-"));
            Redirect::to(&format!("/config?{q}#{anchor}")).into_response()
        }
        Err(e) if e.needs_login() => authed.failure(&e),
        Err(error) => {
            let refused = Refused {
                category: &category,
                name: &name,
                value: &value,
                error,
            };
            render(&authed, None, Some(refused)).await
        }
    }
}

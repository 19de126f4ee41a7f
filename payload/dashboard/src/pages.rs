//! Login and logout, the overview, and every resource as a list and a detail view.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::api::{Answer, ApiFailure};
use crate::forms::{csrf_refusal, form_pairs, pair};
use crate::render::{blocking, local_path, Authed};
use crate::resources::{self, Kind};
use crate::{session, Shared};

#[derive(Deserialize, Default)]
pub struct LoginQuery {
    next: Option<String>,
    expired: Option<String>,
    #[serde(rename = "loggedOut")]
    logged_out: Option<String>,
}

pub async fn login_page(State(d): State<Shared>, Query(q): Query<LoginQuery>) -> Response {
    let notice = if q.expired.is_some() {
        Some("Your session has ended; log in again.")
    } else if q.logged_out.is_some() {
        Some("You are logged out.")
    } else {
        None
    };
    d.pages.render(
        StatusCode::OK,
        "login.html",
        &json!({"title": "Log in", "next": local_path(q.next.as_deref()), "notice": notice}),
    )
}

/// `POST /login`: `LogInByAccount`; the session goes into the cookie.
pub async fn login(State(d): State<Shared>, body: Bytes) -> Response {
    let pairs = form_pairs(&body);
    let account = pair(&pairs, "accountName").unwrap_or_default().to_string();
    let password = pair(&pairs, "password").unwrap_or_default().to_string();
    let next = local_path(pair(&pairs, "next"));
    let api = d.clone();
    let account_for_call = account.clone();
    let answer = blocking(move || {
        api.api.call(
            None,
            "LogInByAccount",
            &json!({"accountName": account_for_call, "password": password}),
        )
    })
    .await;
    let session = match answer {
        Ok(Answer::Done(v)) => v["inventory"]["uuid"].as_str().map(str::to_string),
        Ok(Answer::Job(_)) => None,
        Err(e) => {
            return d.pages.render(
                StatusCode::from_u16(e.status).unwrap_or(StatusCode::UNAUTHORIZED),
                "login.html",
                &json!({"title": "Log in", "next": next, "error": e, "accountName": account}),
            )
        }
    };
    let Some(session) = session else {
        let e = ApiFailure::new(
            502,
            "BAD_ANSWER",
            "LogInByAccount answered without a session",
        );
        return d.pages.render(
            StatusCode::BAD_GATEWAY,
            "login.html",
            &json!({"title": "Log in", "next": next, "error": e}),
        );
    };
    let mut r = Redirect::to(&next).into_response();
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(&session)) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// `POST /logout`: ends the API session and removes the cookie.
pub async fn logout(authed: Authed, body: Bytes) -> Response {
    let pairs = form_pairs(&body);
    if let Some(r) = csrf_refusal(&authed, &pairs) {
        return r;
    }
    // A session that already ended is as good as ended now.
    let _ = authed
        .api(|api, s| api.call(Some(s), "LogOut", &json!({})))
        .await;
    let mut r = Redirect::to("/login?loggedOut=1").into_response();
    if let Ok(v) = HeaderValue::from_str(&session::clear_cookie()) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

pub async fn not_found(authed: Authed) -> Response {
    authed.failure(&ApiFailure::new(
        404,
        "NOT_FOUND",
        format!("there is no page at {}", authed.here),
    ))
}

/// The `total` of a count query.
fn count(
    api: &crate::api::ApiClient,
    s: &str,
    query: &str,
    conditions: Value,
) -> Result<i64, ApiFailure> {
    let v = api.sync(s, query, &json!({"conditions": conditions, "count": true}))?;
    Ok(v["total"].as_i64().unwrap_or(0))
}

fn inventories(v: &Value) -> Vec<Value> {
    v["inventories"].as_array().cloned().unwrap_or_default()
}

fn sum(rows: &[Value], field: &str) -> i64 {
    rows.iter().filter_map(|r| r[field].as_i64()).sum()
}

/// `GET /`: counts, capacity, running and recent jobs.
pub async fn overview(authed: Authed) -> Response {
    let data = authed
        .api(|api, s| {
            let mut counts = Vec::new();
            for (slug, query) in [
                ("zones", "QueryZone"),
                ("clusters", "QueryCluster"),
                ("hosts", "QueryHost"),
                ("primary-storage", "QueryPrimaryStorage"),
                ("backup-storage", "QueryBackupStorage"),
                ("images", "QueryImage"),
                ("l3-networks", "QueryL3Network"),
                ("vms", "QueryVmInstance"),
                ("volumes", "QueryVolume"),
            ] {
                let title = resources::kind(slug).map(|k| k.title).unwrap_or(slug);
                counts.push(json!({"slug": slug, "title": title, "count": count(api, s, query, json!([]))?}));
            }
            let running_vms = count(
                api,
                s,
                "QueryVmInstance",
                json!([{"name": "state", "op": "=", "value": "Running"}]),
            )?;
            let hosts = inventories(&api.sync(
                s,
                "QueryHost",
                &json!({"fields": ["totalCpuCapacity", "availableCpuCapacity", "totalMemoryCapacity", "availableMemoryCapacity"]}),
            )?);
            let ps = inventories(&api.sync(
                s,
                "QueryPrimaryStorage",
                &json!({"fields": ["totalCapacity", "availableCapacity"]}),
            )?);
            let capacity = json!([
                {"what": "Host CPUs", "total": sum(&hosts, "totalCpuCapacity"), "available": sum(&hosts, "availableCpuCapacity"), "unit": "count"},
                {"what": "Host memory", "total": sum(&hosts, "totalMemoryCapacity"), "available": sum(&hosts, "availableMemoryCapacity"), "unit": "bytes"},
                {"what": "Primary storage", "total": sum(&ps, "totalCapacity"), "available": sum(&ps, "availableCapacity"), "unit": "bytes"},
            ]);
            Ok(json!({"counts": counts, "runningVms": running_vms, "capacity": capacity}))
        })
        .await;
    match data {
        Ok(mut data) => {
            if let Some(rows) = data["capacity"].as_array_mut() {
                for r in rows {
                    let bytes = r["unit"] == "bytes";
                    for k in ["total", "available"] {
                        let n = r[k].as_i64().unwrap_or(0);
                        r[format!("{k}Text")] =
                            json!(if bytes { human_bytes(n) } else { n.to_string() });
                    }
                }
            }
            let mut ctx = authed.ctx("Overview");
            ctx["data"] = data;
            authed.page("overview.html", &ctx)
        }
        Err(e) => authed.failure(&e),
    }
}

/// `1073741824` -> `1 GiB`.
pub fn human_bytes(n: i64) -> String {
    const UNITS: &[&str] = &["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v.abs() >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 || v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn is_bytes_field(field: &str) -> bool {
    field == "size"
        || field == "actualSize"
        || field.ends_with("MemoryCapacity")
        || field == "memorySize"
        || field == "totalCapacity"
        || field == "availableCapacity"
        || field == "diskSize"
}

/// A value as the pages show it: its text, and a link when it names another resource.
pub fn cell(field: &str, v: &Value) -> Value {
    match v {
        Value::Null => json!({"text": ""}),
        Value::String(s) => match resources::kind_of_field(field) {
            Some(k) if !s.is_empty() => {
                json!({"text": s, "href": format!("/r/{}/{s}", k.slug), "uuid": true})
            }
            _ => json!({"text": s}),
        },
        Value::Number(n) if is_bytes_field(field) => {
            let bytes = n.as_i64().unwrap_or(0);
            json!({"text": format!("{} ({bytes})", human_bytes(bytes))})
        }
        Value::Array(items) if items.iter().all(Value::is_string) => {
            let one = field.strip_suffix('s').unwrap_or(field);
            let text: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
            json!({"text": text.join(", "), "list": items.iter().map(|i| cell(one, i)).collect::<Vec<_>>()})
        }
        other => json!({"text": other.to_string()}),
    }
}

/// Parses the filter box: `name~=web% state=Running cpuNum>=2`, the conditions zstack-cli takes.
pub fn parse_conditions(q: &str) -> Result<Vec<Value>, String> {
    const OPS: &[&str] = &["!?=", "!~=", "?=", "~=", "!=", ">=", "<=", "=", ">", "<"];
    let mut out = Vec::new();
    for word in q.split_whitespace() {
        let found = word.char_indices().find_map(|(i, _)| {
            OPS.iter()
                .find(|op| word[i..].starts_with(**op))
                .map(|op| (i, *op))
        });
        let Some((i, op)) = found else {
            return Err(format!(
                "{word:?} is not a condition; write field<op>value, e.g. name~=web% or state=Running (ops: {})",
                OPS.join(" ")
            ));
        };
        let (name, value) = (&word[..i], &word[i + op.len()..]);
        if name.is_empty() {
            return Err(format!("{word:?} has no field name before {op}"));
        }
        let (op, value) = match (op, value) {
            ("=", "null") => ("is null", ""),
            ("!=", "null") => ("not null", ""),
            _ => (op, value),
        };
        out.push(json!({"name": name, "op": op, "value": value}));
    }
    Ok(out)
}

#[derive(Deserialize, Default)]
pub struct ListQuery {
    start: Option<i64>,
    limit: Option<i64>,
    sort: Option<String>,
    dir: Option<String>,
    q: Option<String>,
}

const PAGE_SIZE: i64 = 20;

fn list_url(kind: &Kind, start: i64, limit: i64, sort: Option<&str>, dir: &str, q: &str) -> String {
    let mut pairs = vec![("start", start.to_string()), ("limit", limit.to_string())];
    if let Some(s) = sort {
        pairs.push(("sort", s.to_string()));
        pairs.push(("dir", dir.to_string()));
    }
    if !q.is_empty() {
        pairs.push(("q", q.to_string()));
    }
    format!(
        "/r/{}?{}",
        kind.slug,
        serde_urlencoded::to_string(&pairs).unwrap_or_default()
    )
}

/// `GET /r/<kind>`: one page of the kind, filtered and sorted by the API.
pub async fn list(
    authed: Authed,
    Path(slug): Path<String>,
    Query(lq): Query<ListQuery>,
) -> Response {
    let Some(kind) = resources::kind(&slug) else {
        return not_found(authed).await;
    };
    let limit = lq.limit.unwrap_or(PAGE_SIZE).clamp(1, 500);
    let start = lq.start.unwrap_or(0).max(0);
    let q = lq.q.clone().unwrap_or_default();
    let sort = lq.sort.clone().filter(|s| !s.is_empty());
    let dir = if lq.dir.as_deref() == Some("desc") {
        "desc"
    } else {
        "asc"
    };
    let mut ctx = authed.ctx(kind.title);
    ctx["kind"] = json!({"slug": kind.slug, "title": kind.title, "creates": kind.creates});
    ctx["q"] = json!(q);
    let conditions = match parse_conditions(&q) {
        Ok(c) => c,
        Err(message) => {
            ctx["error"] = json!({"code": "INVALID_ARGUMENT", "message": message});
            ctx["columns"] = json!([]);
            ctx["rows"] = json!([]);
            return authed
                .dashboard
                .pages
                .render(StatusCode::BAD_REQUEST, "list.html", &ctx);
        }
    };
    let mut fields = vec!["uuid"];
    fields.extend(kind.columns.iter().copied());
    let mut params =
        json!({"conditions": conditions.clone(), "fields": fields, "limit": limit, "start": start});
    if let Some(s) = &sort {
        params["sortBy"] = json!(s);
        params["sortDirection"] = json!(dir);
    }
    let query = kind.query;
    let fetched = authed
        .api(move |api, s| {
            let total = count(api, s, query, json!(conditions))?;
            let rows = inventories(&api.sync(s, query, &params)?);
            Ok((total, rows))
        })
        .await;
    let (total, rows) = match fetched {
        Ok(x) => x,
        Err(e) if e.needs_login() => return authed.failure(&e),
        Err(e) => {
            ctx["error"] = json!(e);
            ctx["columns"] = json!([]);
            ctx["rows"] = json!([]);
            let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_GATEWAY);
            return authed.dashboard.pages.render(status, "list.html", &ctx);
        }
    };
    ctx["columns"] = Value::Array(
        kind.columns
            .iter()
            .map(|c| {
                let (next_dir, current) = match sort.as_deref() {
                    Some(s) if s == *c => (if dir == "asc" { "desc" } else { "asc" }, Some(dir)),
                    _ => ("asc", None),
                };
                json!({
                    "name": c,
                    "href": list_url(kind, 0, limit, Some(c), next_dir, &q),
                    "sorted": current.map(|d| if d == "asc" { "ascending" } else { "descending" }),
                })
            })
            .collect(),
    );
    ctx["rows"] = Value::Array(
        rows.iter()
            .map(|r| {
                let uuid = r["uuid"].as_str().unwrap_or_default();
                json!({
                    "uuid": uuid,
                    "href": format!("/r/{}/{uuid}", kind.slug),
                    "cells": kind.columns.iter().map(|c| cell(c, &r[*c])).collect::<Vec<_>>(),
                })
            })
            .collect(),
    );
    let shown_to = (start + rows.len() as i64).min(total);
    ctx["paging"] = json!({
        "total": total,
        "from": if rows.is_empty() { 0 } else { start + 1 },
        "to": shown_to,
        "prev": (start > 0).then(|| list_url(kind, (start - limit).max(0), limit, sort.as_deref(), dir, &q)),
        "next": (start + limit < total).then(|| list_url(kind, start + limit, limit, sort.as_deref(), dir, &q)),
        "sort": sort, "dir": dir, "limit": limit,
    });
    authed.page("list.html", &ctx)
}

/// The query of `kind` for the one with `uuid`, in full.
fn one(api: &crate::api::ApiClient, s: &str, kind: &Kind, uuid: &str) -> Result<Value, ApiFailure> {
    let v = api.sync(
        s,
        kind.query,
        &json!({"conditions": [{"name": "uuid", "op": "=", "value": uuid}]}),
    )?;
    inventories(&v)
        .into_iter()
        .next()
        .ok_or_else(|| ApiFailure {
            status: 404,
            code: "RESOURCE_NOT_FOUND".into(),
            message: format!("there is no {} with uuid {uuid}", kind.title),
            field: None,
        })
}

/// Nested lists of objects (a VM's NICs and volumes, an L3's ranges) as tables.
fn nested_tables(inv: &Map<String, Value>) -> Vec<Value> {
    inv.iter()
        .filter_map(|(field, v)| {
            let items = v.as_array()?;
            if items.is_empty() || !items.iter().all(Value::is_object) {
                return None;
            }
            let mut columns: Vec<String> = Vec::new();
            for item in items {
                for k in item.as_object().into_iter().flat_map(|o| o.keys()) {
                    if !columns.contains(k) && !k.ends_with("Date") {
                        columns.push(k.clone());
                    }
                }
            }
            let rows: Vec<Value> = items
                .iter()
                .map(|item| {
                    json!({
                        "uuid": item["uuid"],
                        "cells": columns.iter().map(|c| cell(c, &item[c.as_str()])).collect::<Vec<_>>(),
                    })
                })
                .collect();
            Some(json!({"field": field, "columns": columns, "rows": rows}))
        })
        .collect()
}

/// The EIPs on a VM's NICs, as a related list.
fn vm_eips(api: &crate::api::ApiClient, s: &str, vm: &Value) -> Result<Value, ApiFailure> {
    let nics: Vec<&str> = vm["vmNics"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["uuid"].as_str())
        .collect();
    let eips = resources::kind("eips")
        .ok_or_else(|| ApiFailure::new(500, "INTERNAL_ERROR", "no eips kind"))?;
    let rows = if nics.is_empty() {
        Vec::new()
    } else {
        let mut fields = vec!["uuid"];
        fields.extend(eips.columns.iter().copied());
        inventories(&api.sync(
            s,
            eips.query,
            &json!({"conditions": [{"name": "vmNicUuid", "op": "?=", "value": nics.join(",")}], "fields": fields}),
        )?)
    };
    Ok(json!({
        "title": eips.title,
        "slug": eips.slug,
        "field": "vmNicUuid",
        "filter": "/r/eips",
        "columns": eips.columns,
        "rows": rows.iter().map(|r| {
            let u = r["uuid"].as_str().unwrap_or_default();
            json!({"href": format!("/r/eips/{u}"), "cells": eips.columns.iter().map(|c| cell(c, &r[*c])).collect::<Vec<_>>()})
        }).collect::<Vec<_>>(),
    }))
}

/// `GET /r/<kind>/<uuid>`: its fields, nested lists, related resources and actions.
pub async fn detail(authed: Authed, Path((slug, uuid)): Path<(String, String)>) -> Response {
    let Some(kind) = resources::kind(&slug) else {
        return not_found(authed).await;
    };
    let id = uuid.clone();
    let fetched = authed
        .api(move |api, s| {
            let inv = one(api, s, kind, &id)?;
            let mut related = Vec::new();
            for (child_slug, field) in kind.children {
                let Some(child) = resources::kind(child_slug) else { continue };
                let mut fields = vec!["uuid"];
                fields.extend(child.columns.iter().copied());
                let rows = inventories(&api.sync(
                    s,
                    child.query,
                    &json!({"conditions": [{"name": field, "op": "=", "value": id}], "fields": fields, "limit": 50}),
                )?);
                related.push(json!({
                    "title": child.title,
                    "slug": child.slug,
                    "field": field,
                    "filter": format!("/r/{}?{}", child.slug, serde_urlencoded::to_string([("q", format!("{field}={id}"))]).unwrap_or_default()),
                    "columns": child.columns,
                    "rows": rows.iter().map(|r| {
                        let u = r["uuid"].as_str().unwrap_or_default();
                        json!({"href": format!("/r/{}/{u}", child.slug), "cells": child.columns.iter().map(|c| cell(c, &r[*c])).collect::<Vec<_>>()})
                    }).collect::<Vec<_>>(),
                }));
            }
            let console = if kind.slug == "vms" {
                related.push(vm_eips(api, s, &inv)?);
                Some(crate::console::section(api, s, &id))
            } else {
                None
            };
            Ok((inv, related, console))
        })
        .await;
    let (inv, related, console) = match fetched {
        Ok(x) => x,
        Err(e) => return authed.failure(&e),
    };
    let obj = inv.as_object().cloned().unwrap_or_default();
    let fields: Vec<Value> = obj
        .iter()
        .filter(|(_, v)| {
            !(v.is_array() && v.as_array().is_some_and(|a| a.iter().any(Value::is_object)))
        })
        .filter(|(_, v)| !v.is_object())
        .map(|(k, v)| json!({"name": k, "value": cell(k, v)}))
        .collect();
    let back = format!("/r/{}/{uuid}", kind.slug);
    let actions: Vec<Value> = kind
        .actions
        .iter()
        .map(|(api, param)| {
            let after = if api.starts_with("Delete") || api.starts_with("Destroy") {
                format!("/r/{}", kind.slug)
            } else {
                back.clone()
            };
            let q = serde_urlencoded::to_string([(*param, uuid.as_str()), ("back", after.as_str())])
                .unwrap_or_default();
            json!({"api": api, "href": format!("/call/{api}?{q}"), "danger": api.starts_with("Delete") || api.starts_with("Destroy")})
        })
        .collect();
    let name = obj
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or(&uuid)
        .to_string();
    let mut ctx = authed.ctx(&format!("{} {name}", kind.title));
    ctx["kind"] = json!({"slug": kind.slug, "title": kind.title});
    ctx["name"] = json!(name);
    ctx["uuid"] = json!(uuid);
    ctx["fields"] = json!(fields);
    ctx["nested"] = json!(nested_tables(&obj));
    ctx["related"] = json!(related);
    ctx["actions"] = json!(actions);
    ctx["back"] = json!(back);
    ctx["isVm"] = json!(kind.slug == "vms");
    ctx["console"] = json!(console);
    authed.page("detail.html", &ctx)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_filter_box_reads_the_cli_conditions() {
        let c =
            parse_conditions("name~=web% state=Running cpuNum>=2 hostUuid=null uuid?=a,b").unwrap();
        assert_eq!(c[0], json!({"name": "name", "op": "~=", "value": "web%"}));
        assert_eq!(
            c[1],
            json!({"name": "state", "op": "=", "value": "Running"})
        );
        assert_eq!(c[2], json!({"name": "cpuNum", "op": ">=", "value": "2"}));
        assert_eq!(
            c[3],
            json!({"name": "hostUuid", "op": "is null", "value": ""})
        );
        assert_eq!(c[4], json!({"name": "uuid", "op": "?=", "value": "a,b"}));
        assert!(parse_conditions("running")
            .unwrap_err()
            .contains("not a condition"));
        assert!(parse_conditions("=x").is_err());
        assert!(parse_conditions("").unwrap().is_empty());
    }

    #[test]
    fn values_link_to_what_they_name() {
        assert_eq!(cell("zoneUuid", &json!("abc"))["href"], "/r/zones/abc");
        assert_eq!(cell("name", &json!("abc"))["href"], Value::Null);
        assert_eq!(
            cell("memorySize", &json!(1073741824))["text"],
            "1 GiB (1073741824)"
        );
        assert_eq!(
            cell("attachedClusterUuids", &json!(["c1"]))["list"][0]["href"],
            "/r/clusters/c1"
        );
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }
}

//! A form for every call of the API, built from the API's own reference (`GET /v1/apis`): each
//! parameter a labelled field, a choice of the resources a `<x>Uuid` parameter names; posting
//! it runs the call and shows the API's refusal (code, message, next to the field it names).

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::{json, Map, Value};

use crate::api::{Answer, ApiClient, ApiFailure};
use crate::render::{local_path, Authed};
use crate::resources;
use crate::session::CSRF_FIELD;

/// The pairs of a urlencoded form body, repeated names kept.
pub fn form_pairs(body: &[u8]) -> Vec<(String, String)> {
    serde_urlencoded::from_bytes(body).unwrap_or_default()
}

/// The first value of `name`.
pub fn pair<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The refusal of a change whose form does not carry this session's CSRF token, if it does not.
pub fn csrf_refusal(authed: &Authed, pairs: &[(String, String)]) -> Option<Response> {
    let given = pair(pairs, CSRF_FIELD).unwrap_or_default();
    if authed.dashboard.csrf.verify(&authed.session, given) {
        return None;
    }
    let e = ApiFailure::new(
        403,
        "CSRF_TOKEN_INVALID",
        "this change was refused: the form did not carry this session's CSRF token; reload the page and submit it again",
    );
    Some(authed.failure(&e))
}

/// Fixed choices of parameters the API documents as one of a few words.
fn choices(api: &str, param: &str) -> Option<&'static [&'static str]> {
    Some(match (api, param) {
        (_, "stateEvent") => &["enable", "disable"],
        ("StopVmInstance", "type") => &["grace", "cold"],
        (_, "format") => &["qcow2", "raw", "iso"],
        (_, "mediaType") => &["RootVolumeTemplate", "DataVolumeTemplate", "ISO"],
        (_, "platform") => &["Linux", "Windows", "Other"],
        (_, "hypervisorType") => &["KVM", "Simulator"],
        _ => return None,
    })
}

fn is_secret(param: &str) -> bool {
    param == "password" || param.ends_with("Password")
}

fn is_long_text(param: &str) -> bool {
    matches!(param, "userData" | "sshKey" | "networkServices")
}

/// Choices of resources a uuid parameter can name: (uuid, label), at most 500.
fn resource_options(
    api: &ApiClient,
    s: &str,
    param: &str,
) -> Result<Option<Vec<Value>>, ApiFailure> {
    if param == "vmNicUuid" {
        // NICs are listed inside their VMs.
        let vms = api.sync(s, "QueryVmInstance", &json!({"limit": 500}))?;
        let mut out = Vec::new();
        for vm in vms["inventories"].as_array().into_iter().flatten() {
            for nic in vm["vmNics"].as_array().into_iter().flatten() {
                out.push(json!({
                    "value": nic["uuid"],
                    "label": format!("{} / {} ({})", vm["name"].as_str().unwrap_or(""), nic["ip"].as_str().unwrap_or(""), nic["uuid"].as_str().unwrap_or("")),
                }));
            }
        }
        return Ok(Some(out));
    }
    let Some(kind) = resources::kind_of_field(param) else {
        return Ok(None);
    };
    let mut params = json!({"fields": ["uuid", "name"], "limit": 500});
    if kind.slug == "images" {
        params["conditions"] = json!([{"name": "status", "op": "=", "value": "Ready"}]);
    }
    let rows = api.sync(s, kind.query, &params)?;
    Ok(Some(
        rows["inventories"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                json!({
                    "value": r["uuid"],
                    "label": format!("{} ({})", r["name"].as_str().unwrap_or(""), r["uuid"].as_str().unwrap_or("")),
                })
            })
            .collect(),
    ))
}

/// The fields of a form for `spec`'s parameters, filled with `values`.
pub fn fields(
    api: &ApiClient,
    s: &str,
    spec: &Value,
    values: &BTreeMap<String, Vec<String>>,
    error: Option<&ApiFailure>,
) -> Result<Vec<Value>, ApiFailure> {
    let call = spec["name"].as_str().unwrap_or_default();
    let mut out = Vec::new();
    for p in spec["params"].as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or_default();
        let given = values.get(name).cloned().unwrap_or_default();
        let many = name.ends_with("Uuids");
        let mut f = json!({
            "name": name,
            "id": format!("f-{name}"),
            "required": p["required"],
            "description": p["description"],
            "value": given.first().cloned().unwrap_or_default(),
            "error": error.filter(|e| e.field.as_deref() == Some(name)).map(|e| json!(e)),
        });
        if let Some(list) = choices(call, name) {
            f["input"] = json!("select");
            f["options"] = json!(list
                .iter()
                .map(|c| json!({"value": c, "label": c}))
                .collect::<Vec<_>>());
        } else if let Some(opts) = resource_options(api, s, name)? {
            f["input"] = json!(if many { "multiselect" } else { "select" });
            f["options"] = Value::Array(
                opts.into_iter()
                    .map(|mut o| {
                        let v = o["value"].as_str().unwrap_or_default().to_string();
                        o["selected"] = json!(given.iter().any(|g| g.split(',').any(|x| x == v)));
                        o
                    })
                    .collect(),
            );
        } else if is_secret(name) {
            f["input"] = json!("password");
        } else if is_long_text(name) {
            f["input"] = json!("textarea");
        } else {
            f["input"] = json!("text");
        }
        out.push(f);
    }
    Ok(out)
}

/// The declaration of `name` in the API reference.
pub fn spec(api: &ApiClient, name: &str) -> Result<Value, ApiFailure> {
    let reference = api.reference()?;
    reference
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["name"] == name)
        .cloned()
        .ok_or_else(|| {
            ApiFailure::new(
                404,
                "UNKNOWN_API",
                format!("the API has no call named {name}"),
            )
        })
}

/// The form's values by name (repeated names, as a multi-select sends them, kept together).
pub fn grouped(pairs: &[(String, String)]) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in pairs {
        m.entry(k.clone()).or_default().push(v.clone());
    }
    m
}

/// The call's parameters from the form: only the call's own parameters, empty ones left out, a
/// value that is JSON (an object or a list) sent as JSON, several values as a list.
pub fn params_of(spec: &Value, values: &BTreeMap<String, Vec<String>>) -> Map<String, Value> {
    let mut out = Map::new();
    for p in spec["params"].as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or_default();
        let given: Vec<&String> = values
            .get(name)
            .into_iter()
            .flatten()
            .filter(|v| !v.trim().is_empty())
            .collect();
        match given.as_slice() {
            [] => {}
            [one] if !name.ends_with("Uuids") => {
                let t = one.trim();
                let v = if t.starts_with('{') || t.starts_with('[') {
                    serde_json::from_str(t).unwrap_or_else(|_| json!(one))
                } else if name == "userData" || name == "sshKey" || is_secret(name) {
                    json!(one)
                } else {
                    json!(t)
                };
                out.insert(name.to_string(), v);
            }
            many => {
                out.insert(name.to_string(), json!(many));
            }
        }
    }
    out
}

async fn render_form(
    authed: &Authed,
    api_name: &str,
    values: BTreeMap<String, Vec<String>>,
    error: Option<ApiFailure>,
) -> Response {
    let name = api_name.to_string();
    let err = error.clone();
    let built = authed
        .api(move |api, s| {
            let spec = spec(api, &name)?;
            let fields = fields(api, s, &spec, &values, err.as_ref())?;
            let back = values.get("back").and_then(|v| v.first()).cloned();
            Ok((spec, fields, back))
        })
        .await;
    let (spec, fields, back) = match built {
        Ok(x) => x,
        Err(e) => return authed.failure(&e),
    };
    let mut ctx = authed.ctx(api_name);
    ctx["api"] = spec;
    ctx["fields"] = json!(fields);
    ctx["back"] = json!(back.map(|b| local_path(Some(&b))));
    ctx["error"] = json!(error);
    let status = error
        .as_ref()
        .and_then(|e| StatusCode::from_u16(e.status).ok())
        .unwrap_or(StatusCode::OK);
    authed.dashboard.pages.render(status, "form.html", &ctx)
}

/// `GET /call/<Name>?<param>=<value>&back=<path>`: the form of a call, prefilled.
pub async fn form(
    authed: Authed,
    Path(api_name): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    render_form(&authed, &api_name, grouped(&q), None).await
}

/// Where to go once a call is done: the resource it made, else `back`.
fn after(api_name: &str, result: &Value, back: Option<&str>) -> String {
    if let (Some(kind), Some(uuid)) = (
        resources::kind_created_by(api_name),
        result["inventory"]["uuid"].as_str(),
    ) {
        if back.is_none() || api_name.starts_with("Create") || api_name.starts_with("Add") {
            return format!("/r/{}/{uuid}", kind.slug);
        }
    }
    local_path(back)
}

/// `POST /call/<Name>`: runs the call; a job goes to its live page.
pub async fn submit(authed: Authed, Path(api_name): Path<String>, body: Bytes) -> Response {
    let pairs = form_pairs(&body);
    if let Some(r) = csrf_refusal(&authed, &pairs) {
        return r;
    }
    let values = grouped(&pairs);
    let back = pair(&pairs, "back").map(str::to_string);
    let name = api_name.clone();
    let v = values.clone();
    let answer = authed
        .api(move |api, s| {
            let spec = spec(api, &name)?;
            let params = params_of(&spec, &v);
            api.call(Some(s), &name, &Value::Object(params))
        })
        .await;
    match answer {
        Ok(Answer::Done(result)) => {
            Redirect::to(&after(&api_name, &result, back.as_deref())).into_response()
        }
        Ok(Answer::Job(job)) => {
            let q = serde_urlencoded::to_string([("back", local_path(back.as_deref()))])
                .unwrap_or_default();
            Redirect::to(&format!("/jobs/{job}?{q}")).into_response()
        }
        Err(e) if e.needs_login() => authed.failure(&e),
        Err(e) => render_form(&authed, &api_name, values, Some(e)).await,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn form_values_become_the_calls_parameters() {
        let spec = json!({"name": "CreateVmInstance", "params": [
            {"name": "name"}, {"name": "l3NetworkUuids"}, {"name": "description"},
            {"name": "userData"}, {"name": "networkServices"}
        ]});
        let pairs = vec![
            ("name".to_string(), " vm1 ".to_string()),
            ("l3NetworkUuids".to_string(), "a".to_string()),
            ("l3NetworkUuids".to_string(), "b".to_string()),
            ("description".to_string(), "".to_string()),
            ("userData".to_string(), "#cloud-config\n".to_string()),
            (
                "networkServices".to_string(),
                "{\"p\": [\"DHCP\"]}".to_string(),
            ),
            ("csrf".to_string(), "t".to_string()),
        ];
        let p = params_of(&spec, &grouped(&pairs));
        assert_eq!(p["name"], "vm1");
        assert_eq!(p["l3NetworkUuids"], json!(["a", "b"]));
        assert!(!p.contains_key("description"));
        assert!(!p.contains_key("csrf"));
        assert_eq!(p["userData"], "#cloud-config\n");
        assert_eq!(p["networkServices"], json!({"p": ["DHCP"]}));
    }

    #[test]
    fn after_a_call_the_page_is_what_it_made_or_where_it_came_from() {
        let made = json!({"inventory": {"uuid": "z1"}});
        assert_eq!(after("CreateZone", &made, None), "/r/zones/z1");
        assert_eq!(
            after("UpdateZone", &made, Some("/r/zones/z1")),
            "/r/zones/z1"
        );
        assert_eq!(after("DeleteZone", &json!({}), Some("//evil")), "/");
    }
}

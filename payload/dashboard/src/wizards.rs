//! The two wizards. The L3 network wizard, as the original had it: network info -> IP range (a
//! range, or a CIDR) -> DNS -> network services (the Flat provider's DHCP, Userdata, EIP); its
//! calls are CreateL3Network, AddIpRange, AttachNetworkServiceToL3Network, and a refusal on the
//! way deletes the L3 it made, so a refused wizard changes nothing. The VM wizard: offering,
//! image, L3 networks, optional cluster or host, root password or SSH key, user data.

use std::net::Ipv4Addr;

use axum::body::Bytes;
use axum::extract::Query;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::{json, Map, Value};

use crate::api::{Answer, ApiClient, ApiFailure};
use crate::forms::{csrf_refusal, fields, form_pairs, grouped, pair, params_of, spec};
use crate::render::Authed;

/// The addresses of a CIDR as an IP range: (first, last, netmask, gateway). The gateway is the
/// first address unless given; the API never hands out the gateway.
pub fn range_of_cidr(
    cidr: &str,
    gateway: Option<&str>,
) -> Result<(String, String, String, String), String> {
    let (addr, bits) = cidr
        .trim()
        .split_once('/')
        .ok_or_else(|| format!("{cidr:?} is not a CIDR; write it as 10.0.0.0/24"))?;
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("{addr:?} in {cidr:?} is not an IPv4 address"))?;
    let bits: u32 = bits
        .parse()
        .ok()
        .filter(|b| (8..=30).contains(b))
        .ok_or_else(|| format!("the prefix length of {cidr:?} must be 8 to 30"))?;
    let mask = u32::MAX << (32 - bits);
    let network = u32::from(addr) & mask;
    if network != u32::from(addr) {
        return Err(format!(
            "{cidr:?} has host bits set; the network is {}/{bits}",
            Ipv4Addr::from(network)
        ));
    }
    let broadcast = network | !mask;
    let first = Ipv4Addr::from(network + 1);
    let last = Ipv4Addr::from(broadcast - 1);
    let gw = match gateway.map(str::trim).filter(|g| !g.is_empty()) {
        None => first,
        Some(g) => {
            let g: Ipv4Addr = g
                .parse()
                .map_err(|_| format!("the gateway {g:?} is not an IPv4 address"))?;
            if u32::from(g) & mask != network {
                return Err(format!("the gateway {g} is not in {cidr}"));
            }
            g
        }
    };
    Ok((
        first.to_string(),
        last.to_string(),
        Ipv4Addr::from(mask).to_string(),
        gw.to_string(),
    ))
}

fn rows(v: &Value) -> Vec<Value> {
    v["inventories"].as_array().cloned().unwrap_or_default()
}

fn options(
    api: &ApiClient,
    s: &str,
    query: &str,
    conditions: Value,
) -> Result<Vec<Value>, ApiFailure> {
    let v = api.sync(
        s,
        query,
        &json!({"conditions": conditions, "fields": ["uuid", "name"], "limit": 500}),
    )?;
    Ok(rows(&v)
        .into_iter()
        .map(|r| json!({"value": r["uuid"], "label": format!("{} ({})", r["name"].as_str().unwrap_or(""), r["uuid"].as_str().unwrap_or(""))}))
        .collect())
}

/// The L3 wizard's fields, each given to the page (empty when not filled in yet).
pub(crate) const L3_FIELDS: &[&str] = &[
    "name",
    "description",
    "l2NetworkUuid",
    "ipMode",
    "rangeName",
    "startIp",
    "endIp",
    "netmask",
    "gateway",
    "networkCidr",
    "cidrGateway",
    "dnsDomain",
];

async fn l3_page(
    authed: &Authed,
    mut values: Map<String, Value>,
    services: Vec<String>,
    error: Option<ApiFailure>,
) -> Response {
    for k in L3_FIELDS {
        values.entry(k.to_string()).or_insert_with(|| json!(""));
    }
    let built = authed
        .api(|api, s| {
            let l2 = options(api, s, "QueryL2Network", json!([]))?;
            let providers = rows(&api.sync(s, "QueryNetworkServiceProvider", &json!({}))?);
            Ok((l2, providers))
        })
        .await;
    let (l2, providers) = match built {
        Ok(x) => x,
        Err(e) => return authed.failure(&e),
    };
    let providers: Vec<Value> = providers
        .iter()
        .map(|p| {
            let uuid = p["uuid"].as_str().unwrap_or_default();
            json!({
                "name": p["name"], "type": p["type"], "uuid": uuid,
                "services": p["networkServiceTypes"].as_array().into_iter().flatten().map(|t| {
                    let t = t.as_str().unwrap_or_default();
                    let value = format!("{uuid}:{t}");
                    json!({"type": t, "value": value, "id": format!("svc-{}-{t}", p["type"].as_str().unwrap_or("")), "checked": services.contains(&value)})
                }).collect::<Vec<_>>(),
            })
        })
        .collect();
    let mut ctx = authed.ctx("New L3 network");
    ctx["l2"] = json!(l2);
    ctx["providers"] = json!(providers);
    ctx["v"] = Value::Object(values);
    ctx["error"] = json!(error);
    let status = error
        .as_ref()
        .and_then(|e| StatusCode::from_u16(e.status).ok())
        .unwrap_or(StatusCode::OK);
    authed
        .dashboard
        .pages
        .render(status, "l3_wizard.html", &ctx)
}

/// `GET /wizard/l3`.
pub async fn l3_form(authed: Authed, Query(q): Query<Vec<(String, String)>>) -> Response {
    let values: Map<String, Value> = q.into_iter().map(|(k, v)| (k, json!(v))).collect();
    l3_page(&authed, values, Vec::new(), None).await
}

/// What the L3 wizard will call, checked before anything is made.
struct L3Plan {
    create: Value,
    range: Value,
    services: Map<String, Value>,
}

fn plan_l3(pairs: &[(String, String)]) -> Result<L3Plan, ApiFailure> {
    let get = |k: &str| {
        pair(pairs, k)
            .map(str::trim)
            .unwrap_or_default()
            .to_string()
    };
    let refuse = |field: &str, message: String| ApiFailure {
        status: 400,
        code: "INVALID_ARGUMENT".into(),
        message,
        field: Some(field.into()),
    };
    let name = get("name");
    if name.is_empty() {
        return Err(refuse("name", "the L3 network needs a name".into()));
    }
    let mut create = json!({"name": name, "l2NetworkUuid": get("l2NetworkUuid")});
    for k in ["description", "dnsDomain"] {
        let v = get(k);
        if !v.is_empty() {
            create[k] = json!(v);
        }
    }
    let range_name = match get("rangeName") {
        n if n.is_empty() => format!("{name}-range"),
        n => n,
    };
    let range = if get("ipMode") == "cidr" {
        let gw = get("cidrGateway");
        let (start, end, netmask, gateway) =
            range_of_cidr(&get("networkCidr"), Some(&gw)).map_err(|m| refuse("networkCidr", m))?;
        json!({"name": range_name, "startIp": start, "endIp": end, "netmask": netmask, "gateway": gateway})
    } else {
        json!({"name": range_name, "startIp": get("startIp"), "endIp": get("endIp"), "netmask": get("netmask"), "gateway": get("gateway")})
    };
    let mut services: Map<String, Value> = Map::new();
    for (_, v) in pairs.iter().filter(|(k, _)| k == "service") {
        let (provider, kind) = v
            .split_once(':')
            .ok_or_else(|| refuse("service", format!("{v:?} is not provider:service")))?;
        if let Some(list) = services
            .entry(provider.to_string())
            .or_insert_with(|| json!([]))
            .as_array_mut()
        {
            list.push(json!(kind));
        }
    }
    Ok(L3Plan {
        create,
        range,
        services,
    })
}

/// `POST /wizard/l3`: the L3, its range and its services, or nothing.
pub async fn l3_submit(authed: Authed, body: Bytes) -> Response {
    let pairs = form_pairs(&body);
    if let Some(r) = csrf_refusal(&authed, &pairs) {
        return r;
    }
    let values: Map<String, Value> = pairs
        .iter()
        .filter(|(k, _)| k != "service" && k != "csrf")
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let chosen: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "service")
        .map(|(_, v)| v.clone())
        .collect();
    let plan = match plan_l3(&pairs) {
        Ok(p) => p,
        Err(e) => return l3_page(&authed, values, chosen, Some(e)).await,
    };
    let made = authed
        .api(move |api, s| {
            let l3 = api.sync(s, "CreateL3Network", &plan.create)?;
            let uuid = l3["inventory"]["uuid"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let rest = (|| {
                let mut range = plan.range.clone();
                range["l3NetworkUuid"] = json!(uuid);
                api.sync(s, "AddIpRange", &range)?;
                if !plan.services.is_empty() {
                    api.sync(
                        s,
                        "AttachNetworkServiceToL3Network",
                        &json!({"l3NetworkUuid": uuid, "networkServices": plan.services}),
                    )?;
                }
                Ok(())
            })();
            if let Err(e) = rest {
                // Nothing is left half made.
                let _ = api.sync(s, "DeleteL3Network", &json!({"uuid": uuid}));
                return Err(e);
            }
            Ok(uuid)
        })
        .await;
    match made {
        Ok(uuid) => Redirect::to(&format!("/r/l3-networks/{uuid}")).into_response(),
        Err(e) if e.needs_login() => authed.failure(&e),
        Err(e) => l3_page(&authed, values, chosen, Some(e)).await,
    }
}

async fn vm_page(
    authed: &Authed,
    values: std::collections::BTreeMap<String, Vec<String>>,
    error: Option<ApiFailure>,
) -> Response {
    let err = error.clone();
    let built = authed
        .api(move |api, s| {
            let spec = spec(api, "CreateVmInstance")?;
            fields(api, s, &spec, &values, err.as_ref())
        })
        .await;
    let fields = match built {
        Ok(f) => f,
        Err(e) => return authed.failure(&e),
    };
    let mut ctx = authed.ctx("New VM");
    // The steps of the wizard, each with its fields.
    let step = |names: &[&str]| -> Vec<Value> {
        names
            .iter()
            .filter_map(|n| fields.iter().find(|f| f["name"] == *n).cloned())
            .collect()
    };
    ctx["steps"] = json!([
        {"title": "Name and size", "fields": step(&["name", "description", "instanceOfferingUuid"])},
        {"title": "Image", "fields": step(&["imageUuid"])},
        {"title": "Networks", "fields": step(&["l3NetworkUuids", "defaultL3NetworkUuid"])},
        {"title": "Placement (optional)", "fields": step(&["clusterUuid", "hostUuid"])},
        {"title": "Login and user data", "fields": step(&["rootPassword", "sshKey", "userData"])},
    ]);
    ctx["error"] = json!(error);
    let status = error
        .as_ref()
        .and_then(|e| StatusCode::from_u16(e.status).ok())
        .unwrap_or(StatusCode::OK);
    authed
        .dashboard
        .pages
        .render(status, "vm_wizard.html", &ctx)
}

/// `GET /wizard/vm`.
pub async fn vm_form(authed: Authed, Query(q): Query<Vec<(String, String)>>) -> Response {
    vm_page(&authed, grouped(&q), None).await
}

/// `POST /wizard/vm`: CreateVmInstance; its job's page then leads to the VM.
pub async fn vm_submit(authed: Authed, body: Bytes) -> Response {
    let pairs = form_pairs(&body);
    if let Some(r) = csrf_refusal(&authed, &pairs) {
        return r;
    }
    let values = grouped(&pairs);
    let v = values.clone();
    let answer = authed
        .api(move |api, s| {
            let spec = spec(api, "CreateVmInstance")?;
            api.call(
                Some(s),
                "CreateVmInstance",
                &Value::Object(params_of(&spec, &v)),
            )
        })
        .await;
    match answer {
        Ok(Answer::Job(job)) => Redirect::to(&format!("/jobs/{job}?back=/r/vms")).into_response(),
        Ok(Answer::Done(v)) => {
            let uuid = v["inventory"]["uuid"].as_str().unwrap_or_default();
            Redirect::to(&format!("/r/vms/{uuid}")).into_response()
        }
        Err(e) if e.needs_login() => authed.failure(&e),
        Err(e) => vm_page(&authed, values, Some(e)).await,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_cidr_becomes_a_range() {
        assert_eq!(
            range_of_cidr("10.20.0.0/24", None).unwrap(),
            (
                "10.20.0.1".into(),
                "10.20.0.254".into(),
                "255.255.255.0".into(),
                "10.20.0.1".into()
            )
        );
        assert_eq!(
            range_of_cidr("10.20.0.0/16", Some("10.20.255.254"))
                .unwrap()
                .3,
            "10.20.255.254"
        );
        assert!(range_of_cidr("10.20.0.1/24", None)
            .unwrap_err()
            .contains("host bits"));
        assert!(range_of_cidr("10.20.0.0/31", None).is_err());
        assert!(range_of_cidr("10.20.0.0", None).is_err());
        assert!(range_of_cidr("10.20.0.0/24", Some("10.21.0.1"))
            .unwrap_err()
            .contains("not in"));
    }

    #[test]
    fn the_wizard_checks_its_inputs_before_calling() {
        let p = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<Vec<_>>()
        };
        let plan = plan_l3(&p(&[
            ("name", "pub"),
            ("l2NetworkUuid", "l2"),
            ("ipMode", "cidr"),
            ("networkCidr", "192.168.5.0/24"),
            ("dnsDomain", "example.org"),
            ("service", "flat:DHCP"),
            ("service", "flat:Eip"),
        ]))
        .unwrap();
        assert_eq!(plan.create["dnsDomain"], "example.org");
        assert_eq!(plan.range["startIp"], "192.168.5.1");
        assert_eq!(plan.services["flat"], json!(["DHCP", "Eip"]));
        let e = plan_l3(&p(&[
            ("name", "x"),
            ("ipMode", "cidr"),
            ("networkCidr", "nonsense"),
        ]))
        .err()
        .unwrap();
        assert_eq!(e.field.as_deref(), Some("networkCidr"));
        assert!(plan_l3(&p(&[("name", "")])).is_err());
    }
}

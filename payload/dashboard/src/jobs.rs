//! Jobs, followed live: the page holds a fragment the script fetches again (the job's fragment
//! answers as soon as the job ends, through the API's job wait) until the job has ended.

use axum::extract::{Path, Query};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::render::{local_path, Authed};
use crate::resources;

#[derive(Deserialize, Default)]
pub struct JobsQuery {
    fragment: Option<String>,
    start: Option<i64>,
    back: Option<String>,
}

/// The kind of resource a call acts on or makes.
fn kind_of_api(api: &str) -> Option<&'static resources::Kind> {
    resources::kind_created_by(api).or_else(|| {
        resources::KINDS
            .iter()
            .find(|k| k.actions.iter().any(|(a, _)| *a == api))
    })
}

/// A job as the pages show it.
pub fn job_view(job: &Value) -> Value {
    let api = job["apiName"].as_str().unwrap_or_default();
    let resource = job["resourceUuid"]
        .as_str()
        .or_else(|| job["result"]["inventory"]["uuid"].as_str());
    let href = match (kind_of_api(api), resource) {
        (Some(k), Some(u)) => Some(format!("/r/{}/{u}", k.slug)),
        _ => None,
    };
    json!({
        "uuid": job["uuid"],
        "apiName": api,
        "state": job["state"],
        "running": job["state"] == "Running",
        "createDate": job["createDate"],
        "lastOpDate": job["lastOpDate"],
        "resourceUuid": resource,
        "href": href,
        "error": job["error"],
    })
}

const PAGE: i64 = 20;

/// `GET /jobs`: the newest jobs, refreshed while the page is open.
pub async fn list(authed: Authed, Query(q): Query<JobsQuery>) -> Response {
    let start = q.start.unwrap_or(0).max(0);
    let fetched = authed
        .api(move |api, s| {
            api.sync(
                s,
                "QueryJob",
                &json!({"limit": PAGE, "start": start, "sortBy": "createDate", "sortDirection": "desc"}),
            )
        })
        .await;
    let jobs = match fetched {
        Ok(v) => v["inventories"]
            .as_array()
            .into_iter()
            .flatten()
            .map(job_view)
            .collect::<Vec<_>>(),
        Err(e) => return authed.failure(&e),
    };
    let mut ctx = authed.ctx("Jobs");
    ctx["jobs"] = json!(jobs);
    ctx["live"] = json!(format!("/jobs?fragment=1&start={start}"));
    ctx["next"] =
        json!((jobs.len() as i64 == PAGE).then(|| format!("/jobs?start={}", start + PAGE)));
    ctx["prev"] = json!((start > 0).then(|| format!("/jobs?start={}", (start - PAGE).max(0))));
    if q.fragment.is_some() {
        return authed.page("jobs_fragment.html", &ctx);
    }
    authed.page("jobs.html", &ctx)
}

/// `GET /jobs/<uuid>`: one job; its fragment waits (up to 20 s) for the job to end.
pub async fn detail(
    authed: Authed,
    Path(uuid): Path<String>,
    Query(q): Query<JobsQuery>,
) -> Response {
    let fragment = q.fragment.is_some();
    let wait = if fragment { 20 } else { 0 };
    let id = uuid.clone();
    let fetched = authed.api(move |api, s| api.job(s, &id, wait)).await;
    let job = match fetched {
        Ok(j) => job_view(&j),
        Err(e) => return authed.failure(&e),
    };
    let back = q.back.as_deref().map(|b| local_path(Some(b)));
    let mut ctx = authed.ctx(&format!("Job {}", job["apiName"].as_str().unwrap_or("")));
    ctx["job"] = job;
    ctx["back"] = json!(back);
    let back_q = back
        .as_deref()
        .map(|b| {
            format!(
                "&{}",
                serde_urlencoded::to_string([("back", b)]).unwrap_or_default()
            )
        })
        .unwrap_or_default();
    ctx["live"] = json!(format!("/jobs/{uuid}?fragment=1{back_q}"));
    if fragment {
        return authed.page("job_fragment.html", &ctx);
    }
    authed.page("job.html", &ctx)
}

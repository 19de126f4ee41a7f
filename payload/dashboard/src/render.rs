//! Rendering: the templates and static files built into the binary, the headers every page
//! carries (a Content-Security-Policy that allows only this origin's script and stylesheet),
//! the signed-in request, and the error page.

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::{json, Value};

use crate::api::ApiFailure;
use crate::{session, Shared};

/// No inline script or style, nothing from another origin, no framing, forms post here only.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("../templates/base.html")),
    ("macros.html", include_str!("../templates/macros.html")),
    ("login.html", include_str!("../templates/login.html")),
    ("overview.html", include_str!("../templates/overview.html")),
    ("list.html", include_str!("../templates/list.html")),
    ("detail.html", include_str!("../templates/detail.html")),
    ("form.html", include_str!("../templates/form.html")),
    ("jobs.html", include_str!("../templates/jobs.html")),
    ("job.html", include_str!("../templates/job.html")),
    (
        "job_fragment.html",
        include_str!("../templates/job_fragment.html"),
    ),
    (
        "jobs_fragment.html",
        include_str!("../templates/jobs_fragment.html"),
    ),
    (
        "l3_wizard.html",
        include_str!("../templates/l3_wizard.html"),
    ),
    (
        "vm_wizard.html",
        include_str!("../templates/vm_wizard.html"),
    ),
    ("config.html", include_str!("../templates/config.html")),
    ("error.html", include_str!("../templates/error.html")),
];

const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../static/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../static/app.css"),
    ),
];

pub struct Pages {
    tera: tera::Tera,
}

impl Pages {
    pub fn new() -> anyhow::Result<Pages> {
        let mut tera = tera::Tera::default();
        // Every `.html` template escapes what it prints unless told `| safe` (never done with
        // anything a user typed).
        tera.add_raw_templates(TEMPLATES.iter().copied())
            .map_err(|e| anyhow::anyhow!("the dashboard's templates do not load: {e:?}"))?;
        Ok(Pages { tera })
    }

    /// `template` rendered with `ctx`, as an HTML response with the page headers.
    pub fn render(&self, status: StatusCode, template: &str, ctx: &Value) -> Response {
        let rendered =
            tera::Context::from_value(ctx.clone()).and_then(|c| self.tera.render(template, &c));
        match rendered {
            Ok(html) => html_response(status, html),
            Err(e) => {
                let mut why = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    why.push_str(&format!(": {s}"));
                    source = s.source();
                }
                let html = format!(
                    "<!doctype html><title>Error</title><p>the page {} cannot be rendered: {}</p>",
                    escape(template),
                    escape(&why)
                );
                html_response(StatusCode::INTERNAL_SERVER_ERROR, html)
            }
        }
    }
}

/// Text escaped for HTML (for the few strings not printed through a template).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            c => out.push(c),
        }
    }
    out
}

fn html_response(status: StatusCode, html: String) -> Response {
    let mut r = (status, html).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure_headers(h);
    r
}

pub fn secure_headers(h: &mut axum::http::HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// `GET /static/<file>`: the script and the stylesheet.
pub async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, mime, body)) => {
            let mut r = (StatusCode::OK, *body).into_response();
            let h = r.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
            h.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            h.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=3600"),
            );
            r
        }
        None => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}

/// A signed-in request: the API session and its CSRF token. Without a session cookie the
/// browser is sent to the login page, which brings it back here afterwards.
pub struct Authed {
    pub session: String,
    pub csrf: String,
    /// The path and query of this request.
    pub here: String,
    pub dashboard: Shared,
}

impl Authed {
    /// The context every signed-in page starts from.
    pub fn ctx(&self, title: &str) -> Value {
        json!({
            "title": title,
            "csrf": self.csrf,
            "csrf_field": session::CSRF_FIELD,
            "here": self.here,
            "nav": crate::resources::nav(),
        })
    }

    /// Renders `template`.
    pub fn page(&self, template: &str, ctx: &Value) -> Response {
        self.dashboard.pages.render(StatusCode::OK, template, ctx)
    }

    /// The page for a failed call: to the login page if the session is gone, else the API's
    /// code and message.
    pub fn failure(&self, e: &ApiFailure) -> Response {
        if e.needs_login() {
            return to_login(&self.here, true);
        }
        let mut ctx = self.ctx("Error");
        ctx["error"] = json!(e);
        let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_GATEWAY);
        self.dashboard.pages.render(status, "error.html", &ctx)
    }

    /// Runs a blocking API call on the blocking pool.
    pub async fn api<T: Send + 'static>(
        &self,
        f: impl FnOnce(&crate::api::ApiClient, &str) -> Result<T, ApiFailure> + Send + 'static,
    ) -> Result<T, ApiFailure> {
        let d = self.dashboard.clone();
        let s = self.session.clone();
        blocking(move || f(&d.api, &s)).await
    }
}

/// Runs `f` on the blocking pool.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiFailure> + Send + 'static,
) -> Result<T, ApiFailure> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(ApiFailure::new(500, "INTERNAL_ERROR", e.to_string())))
}

/// A redirect to the login page that comes back to `next`.
pub fn to_login(next: &str, expired: bool) -> Response {
    let q = serde_urlencoded::to_string([("next", next)]).unwrap_or_default();
    let mut r = Redirect::to(&format!(
        "/login?{q}{}",
        if expired { "&expired=1" } else { "" }
    ))
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&session::clear_cookie()) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// A path on this site (for `next` and `back`), or `/`: never another origin.
pub fn local_path(p: Option<&str>) -> String {
    match p {
        Some(p) if p.starts_with('/') && !p.starts_with("//") && !p.contains('\\') => p.to_string(),
        _ => "/".to_string(),
    }
}

#[axum::async_trait]
impl FromRequestParts<Shared> for Authed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, Response> {
        let here = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let Some(session) = session::from_headers(&parts.headers) else {
            return Err(to_login(&here, false));
        };
        let State(dashboard) = State::<Shared>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(Authed {
            csrf: dashboard.csrf.token(&session),
            session,
            here,
            dashboard,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_template_loads_and_user_text_is_escaped() {
        let pages = Pages::new().unwrap();
        let ctx = json!({
            "title": "t", "csrf": "c", "csrf_field": "csrf", "here": "/", "nav": crate::resources::nav(),
            "error": {"code": "X", "message": "<img src=x onerror=alert(1)>", "status": 400},
        });
        let r = pages.render(StatusCode::BAD_REQUEST, "error.html", &ctx);
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(r.headers()[header::CONTENT_SECURITY_POLICY], CSP);
        let html = pages
            .tera
            .render("error.html", &tera::Context::from_value(ctx).unwrap())
            .unwrap();
        assert!(
            html.contains("&lt;img src=x onerror=alert(1)&gt;"),
            "{html}"
        );
        assert!(!html.contains("<img"), "{html}");
    }

    #[test]
    fn only_local_paths_are_followed() {
        assert_eq!(local_path(Some("/r/vms?x=1")), "/r/vms?x=1");
        assert_eq!(local_path(Some("//evil.example/")), "/");
        assert_eq!(local_path(Some("https://evil.example/")), "/");
        assert_eq!(local_path(None), "/");
        assert_eq!(escape("<a href='x'>&"), "&lt;a href=&#x27;x&#x27;&gt;&amp;");
    }
}

#[cfg(test)]
mod page_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn base() -> Value {
        json!({"title": "t", "csrf": "c", "csrf_field": "csrf", "here": "/", "nav": crate::resources::nav(), "error": null})
    }

    #[test]
    fn the_l3_wizard_renders_empty_and_refilled() {
        let pages = Pages::new().unwrap();
        let mut ctx = base();
        let v: serde_json::Map<String, Value> = crate::wizards::L3_FIELDS
            .iter()
            .map(|k| (k.to_string(), json!("")))
            .collect();
        ctx["v"] = Value::Object(v);
        ctx["l2"] = json!([{"value": "a", "label": "A"}]);
        ctx["providers"] = json!([{"name": "Flat", "type": "Flat", "uuid": "p", "services": [{"type": "DHCP", "value": "p:DHCP", "id": "svc-Flat-DHCP", "checked": true}]}]);
        let html = pages
            .tera
            .render("l3_wizard.html", &tera::Context::from_value(ctx).unwrap())
            .unwrap();
        assert!(html.contains("svc-Flat-DHCP"));
    }
}

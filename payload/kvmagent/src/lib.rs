//! The KVM host agent (`zstack-kvmagent`): answers the management node on `kvmagent.port`
//! (7070). Every request but `GET /health` must carry the secret made at install
//! (`kvmagent.secret` in zstack.properties) in the `X-ZStack-Agent-Secret` header.

use std::sync::Arc;

use anyhow::Context;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use zstack_common::health::{Health, AGENT_SECRET_HEADER};
use zstack_common::logfile::LogFile;
use zstack_common::service::{keys, Service};
use zstack_common::{Layout, Properties, Release, PRODUCT};

struct AgentState {
    version: String,
    secret: String,
}

/// Runs the agent until SIGTERM or SIGINT.
pub fn run() -> anyhow::Result<()> {
    zstack_http::run_service(Service::KvmAgent, serve)
}

fn serve(layout: &Layout, log: &LogFile) -> anyhow::Result<()> {
    let release = Release::of_running_program()
        .context("cannot find release.json beside this program; is the release tree intact?")?;
    let props = Properties::load(&layout.host(layout.properties_file()))?;
    let port = Service::KvmAgent.port(&props).map_err(anyhow::Error::msg)?;
    let secret = props
        .get(keys::AGENT_SECRET)
        .filter(|s| !s.is_empty())
        .with_context(|| format!("{} is not set in zstack.properties", keys::AGENT_SECRET))?
        .to_string();
    let state = Arc::new(AgentState {
        version: release.version.clone(),
        secret,
    });

    let authenticated = Router::new()
        .route("/host/ping", get(ping))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_secret,
        ))
        .with_state(state);
    zstack_http::serve(
        Service::KvmAgent,
        &release.version,
        port,
        authenticated,
        log,
    )
}

async fn require_secret(
    State(state): State<Arc<AgentState>>,
    req: Request,
    next: Next,
) -> Response {
    let given = req
        .headers()
        .get(AGENT_SECRET_HEADER)
        .and_then(|v| v.to_str().ok());
    if given.map(|g| zstack_common::secret::constant_time_eq(g.as_bytes(), state.secret.as_bytes()))
        != Some(true)
    {
        return (
            StatusCode::UNAUTHORIZED,
            Json(serde_json::json!({"error": {
                "code": "AGENT_AUTH_FAILED",
                "message": format!("missing or wrong {AGENT_SECRET_HEADER} header")
            }})),
        )
            .into_response();
    }
    next.run(req).await
}

/// An authenticated ping: proves the caller holds the install-time secret.
async fn ping(State(state): State<Arc<AgentState>>) -> Json<Health> {
    Json(Health {
        product: PRODUCT.to_string(),
        service: Service::KvmAgent.name().to_string(),
        version: state.version.clone(),
        status: "ok".to_string(),
        pid: std::process::id(),
    })
}

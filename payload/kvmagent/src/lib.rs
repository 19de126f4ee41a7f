//! The KVM host agent (`zstack-kvmagent`): answers the management node on `kvmagent.port`
//! (7070). Every request but `GET /health` must carry the secret made at install
//! (`kvmagent.secret` in zstack.properties) in the `X-ZStack-Agent-Secret` header.

use std::net::SocketAddr;
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
    let layout = Layout::from_env();
    let log = Arc::new(
        LogFile::open(&layout.host(Service::KvmAgent.log_file(&layout)), false)
            .context("cannot open the agent's log file")?,
    );
    let result = serve(&layout, &log);
    if let Err(e) = &result {
        log.error(&format!("agent stopped: {e:#}"));
    }
    result
}

fn serve(layout: &Layout, log: &Arc<LogFile>) -> anyhow::Result<()> {
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

    let authenticated =
        Router::new()
            .route("/host/ping", get(health))
            .route_layer(middleware::from_fn_with_state(
                state.clone(),
                require_secret,
            ));
    let app = Router::new()
        .route("/health", get(health))
        .merge(authenticated)
        .fallback(unknown_path)
        .with_state(state);

    let addr = SocketAddr::from(([0, 0, 0, 0], port));
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        log.info(&format!(
            "{PRODUCT} KVM host agent {} listening on {addr}, pid {}",
            release.version,
            std::process::id()
        ));
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("HTTP server failed")?;
        log.info("agent stopped");
        Ok(())
    })
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
    if given.map(|g| constant_time_eq(g.as_bytes(), state.secret.as_bytes())) != Some(true) {
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

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn health(State(state): State<Arc<AgentState>>) -> Json<Health> {
    Json(Health {
        product: PRODUCT.to_string(),
        service: Service::KvmAgent.name().to_string(),
        version: state.version.clone(),
        status: "ok".to_string(),
        pid: std::process::id(),
    })
}

async fn unknown_path(uri: axum::http::Uri) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({
            "error": { "code": "NOT_FOUND", "message": format!("no such agent path: {}", uri.path()) }
        })),
    )
        .into_response()
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn secret_comparison() {
        assert!(super::constant_time_eq(b"abc", b"abc"));
        assert!(!super::constant_time_eq(b"abc", b"abd"));
        assert!(!super::constant_time_eq(b"abc", b"ab"));
    }
}

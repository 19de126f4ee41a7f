//! The HTTP serving that the management node and the host agent share: the `/health` route, the
//! JSON answer to an unknown path, and [`serve`], which listens on all addresses, logs the start
//! and the stop, and drains in-flight requests on SIGTERM or SIGINT.

use std::net::SocketAddr;

use anyhow::Context;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use zstack_common::health::Health;
use zstack_common::logfile::LogFile;
use zstack_common::service::Service;
use zstack_common::{Layout, PRODUCT};

/// Runs `service`: opens its log file, runs `body`, and logs why it stopped if it failed.
pub fn run_service(
    service: Service,
    body: impl FnOnce(&Layout, &LogFile) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let layout = Layout::from_env();
    let log = LogFile::open(&layout.host(service.log_file(&layout)), false)
        .with_context(|| format!("cannot open the log file of the {}", service.description()))?;
    let result = body(&layout, &log);
    if let Err(e) = &result {
        log.error(&format!("{} stopped: {e:#}", service.description()));
    }
    result
}

/// `GET /health` of `service` at `version`.
pub fn health_router(service: Service, version: &str) -> Router {
    let version = version.to_string();
    Router::new().route(
        "/health",
        get(move || {
            let version = version.clone();
            async move {
                Json(Health {
                    product: PRODUCT.to_string(),
                    service: service.name().to_string(),
                    version,
                    status: "ok".to_string(),
                    pid: std::process::id(),
                })
            }
        }),
    )
}

/// The JSON answer to a path no route serves.
pub async fn not_found(uri: axum::http::Uri) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({
            "error": { "code": "NOT_FOUND", "message": format!("no such path: {}", uri.path()) }
        })),
    )
        .into_response()
}

/// Serves `app` (plus `/health` and the JSON 404) on port `port` of every address until SIGTERM
/// or SIGINT, then finishes the requests in flight.
pub fn serve(
    service: Service,
    version: &str,
    port: u16,
    app: Router,
    log: &LogFile,
) -> anyhow::Result<()> {
    serve_until_signal(service, version, port, app, log, || {})
}

/// How long work still running after the last request (a job waiting on an agent) may delay
/// the exit; what it did not finish is picked up at the next start.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// [`serve`], calling `on_signal` as soon as SIGTERM or SIGINT arrives, so the service can end
/// its long-held requests (job waits) instead of letting them hold up the exit.
pub fn serve_until_signal(
    service: Service,
    version: &str,
    port: u16,
    app: Router,
    log: &LogFile,
    on_signal: impl FnOnce() + Send + 'static,
) -> anyhow::Result<()> {
    let app = app
        .merge(health_router(service, version))
        .fallback(not_found);
    let addr = SocketAddr::from(([0, 0, 0, 0], port));
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let served = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        log.info(&format!(
            "{PRODUCT} {} {version} listening on {addr}, pid {}",
            service.description(),
            std::process::id()
        ));
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                shutdown_signal().await;
                on_signal();
            })
            .await
            .context("HTTP server failed")?;
        log.info(&format!("{} stopped", service.description()));
        Ok(())
    });
    rt.shutdown_timeout(SHUTDOWN_GRACE);
    served
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

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

mod tls;
pub use tls::{PeerAddress, PeerCertificate, TlsConfigCell};

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
    let endpoint = Endpoint {
        port,
        listen: Listen::Plain,
        app,
    };
    serve_endpoints_until_signal(service, version, vec![endpoint], log, on_signal)
}

/// How a port is served.
#[derive(Clone)]
pub enum Listen {
    /// Plain HTTP; the peer's address reaches the handlers as `ConnectInfo<SocketAddr>`.
    Plain,
    /// TLS with this (replaceable) configuration; the peer's certificate reaches the handlers
    /// as a [`PeerCertificate`] extension.
    Tls(TlsConfigCell),
}

/// One listening port of a service and the routes it serves there.
pub struct Endpoint {
    pub port: u16,
    pub listen: Listen,
    pub app: Router,
}

/// Serves every endpoint (each with `/health` and the JSON 404) on all addresses until SIGTERM
/// or SIGINT, calling `on_signal` then, and finishes the requests in flight.
pub fn serve_endpoints_until_signal(
    service: Service,
    version: &str,
    endpoints: Vec<Endpoint>,
    log: &LogFile,
    on_signal: impl FnOnce() + Send + 'static,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let served = rt.block_on(async {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        for endpoint in endpoints {
            let addr = SocketAddr::from(([0, 0, 0, 0], endpoint.port));
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            let scheme = match endpoint.listen {
                Listen::Plain => "http",
                Listen::Tls(_) => "https",
            };
            log.info(&format!(
                "{PRODUCT} {} {version} listening on {scheme}://{addr}, pid {}",
                service.description(),
                std::process::id()
            ));
            let app = endpoint
                .app
                .merge(health_router(service, version))
                .fallback(not_found);
            let mut stop = stop_rx.clone();
            tasks.push(tokio::spawn(async move {
                let stopped = async move {
                    let _ = stop.wait_for(|s| *s).await;
                };
                match endpoint.listen {
                    Listen::Plain => axum::serve(
                        listener,
                        app.into_make_service_with_connect_info::<SocketAddr>(),
                    )
                    .with_graceful_shutdown(stopped)
                    .await
                    .context("HTTP server failed"),
                    Listen::Tls(config) => {
                        serve_tls(listener, config, app, stopped).await;
                        Ok(())
                    }
                }
            }));
        }
        shutdown_signal().await;
        on_signal();
        let _ = stop_tx.send(true);
        for task in tasks {
            task.await.context("a listener task failed")??;
        }
        log.info(&format!("{} stopped", service.description()));
        Ok(())
    });
    rt.shutdown_timeout(SHUTDOWN_GRACE);
    served
}

/// Accepts TLS connections until `stopped`; connections in flight finish within the runtime's
/// shutdown grace.
async fn serve_tls(
    listener: tokio::net::TcpListener,
    config: TlsConfigCell,
    app: Router,
    stopped: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, peer)) = accepted else { continue };
                let config = config.clone();
                let app = app.clone();
                tokio::spawn(async move { tls::serve_connection(tcp, peer, &config, app).await });
            }
            _ = &mut stopped => return,
        }
    }
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

//! The management node (`zstack-server`): serves the HTTP API on `management.api.port` (8080)
//! over the SQLite database.
//!
//! Start-up refuses to serve a database whose schema does not match this release: a DB with
//! pending migrations is left to the installer or `zstack-ctl upgrade_db`, and a DB changed
//! behind the ledger's back is never served.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use zstack_common::health::Health;
use zstack_common::logfile::LogFile;
use zstack_common::service::Service;
use zstack_common::{Layout, Properties, Release, PRODUCT};

struct ServerState {
    version: String,
}

/// Runs the management node until SIGTERM or SIGINT.
pub fn run() -> anyhow::Result<()> {
    let layout = Layout::from_env();
    let log = Arc::new(
        LogFile::open(&layout.host(Service::Server.log_file(&layout)), false)
            .context("cannot open the management node's log file")?,
    );
    let result = serve(&layout, &log);
    if let Err(e) = &result {
        log.error(&format!("management node stopped: {e:#}"));
    }
    result
}

fn serve(layout: &Layout, log: &Arc<LogFile>) -> anyhow::Result<()> {
    let release = Release::of_running_program()
        .context("cannot find release.json beside this program; is the release tree intact?")?;
    let props = Properties::load(&layout.host(layout.properties_file()))?;
    let port = Service::Server.port(&props).map_err(anyhow::Error::msg)?;
    check_schema(layout, &release)?;

    let state = Arc::new(ServerState {
        version: release.version.clone(),
    });
    let app = Router::new()
        .route("/health", get(health))
        .fallback(unknown_path)
        .with_state(state);
    let addr = SocketAddr::from(([0, 0, 0, 0], port));
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        log.info(&format!(
            "{PRODUCT} management node {} listening on {addr}, pid {}",
            release.version,
            std::process::id()
        ));
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("HTTP server failed")?;
        log.info("management node stopped");
        Ok(())
    })
}

/// Refuses a DB that is not exactly at this release's schema.
fn check_schema(layout: &Layout, release: &Release) -> anyhow::Result<()> {
    let db_path = layout.host(layout.db_file());
    if !db_path.exists() {
        bail!(
            "the database {} does not exist; run the installer (or `zstack-ctl upgrade_db`) first",
            db_path.display()
        );
    }
    let exe = std::env::current_exe()?.canonicalize()?;
    let tree = exe
        .parent()
        .and_then(Path::parent)
        .context("cannot locate the release tree of this program")?;
    let shipped = zstack_db::load_migrations(&tree.join("migrations"))?;
    let conn = zstack_db::open_existing(&db_path)?;
    let ledger = zstack_db::MigrationLedger::new(&conn, &db_path)?;
    ledger.verify(&shipped)?;
    let target = release.semver()?;
    let pending = ledger.pending(&shipped, &target)?;
    if !pending.is_empty() {
        bail!(
            "the database is at schema {} but this release is {}: {} migration(s) pending; \
             run `zstack-ctl upgrade_db`",
            ledger
                .schema_version()?
                .map(|v| v.to_string())
                .unwrap_or_else(|| "none".into()),
            release.version,
            pending.len()
        );
    }
    Ok(())
}

async fn health(State(state): State<Arc<ServerState>>) -> Json<Health> {
    Json(Health {
        product: PRODUCT.to_string(),
        service: Service::Server.name().to_string(),
        version: state.version.clone(),
        status: "ok".to_string(),
        pid: std::process::id(),
    })
}

async fn unknown_path(uri: axum::http::Uri) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({
            "error": { "code": "NOT_FOUND", "message": format!("no such API path: {}", uri.path()) }
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

//! The management node (`zstack-server`): serves the HTTP API on `management.api.port` (8080)
//! over the SQLite database.
//!
//! Start-up refuses to serve a database whose schema does not match this release: a DB with
//! pending migrations is left to the installer or `zstack-ctl upgrade_db`, and a DB changed
//! behind the ledger's back is never served.

pub mod api;
pub mod auth;
pub mod error;
pub mod globalconfig;
pub mod query;

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use axum::extract::Path as UrlPath;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use zstack_common::logfile::LogFile;
use zstack_common::service::{keys, Service};
use zstack_common::{Layout, Properties, Release};

struct ServerState {
    release: semver::Version,
    db: Mutex<rusqlite::Connection>,
}

/// A new resource uuid, in the original's form: 32 hex digits.
pub fn new_uuid() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Runs the management node until SIGTERM or SIGINT.
pub fn run() -> anyhow::Result<()> {
    zstack_http::run_service(Service::Server, serve)
}

fn serve(layout: &Layout, log: &LogFile) -> anyhow::Result<()> {
    let release = Release::of_running_program()
        .context("cannot find release.json beside this program; is the release tree intact?")?;
    let props = Properties::load(&layout.host(layout.properties_file()))?;
    let port = Service::Server.port(&props).map_err(anyhow::Error::msg)?;
    check_schema(layout, &release)?;
    let db_path = layout.host(layout.db_file());
    let conn = zstack_db::open_existing(&db_path)?;
    globalconfig::seed(&conn, &release.semver()?).map_err(|e| anyhow::anyhow!(e.message))?;
    if let Some(pw) = props.get(keys::ADMIN_PASSWORD).filter(|p| !p.is_empty()) {
        if auth::ensure_admin(&conn, pw).map_err(|e| anyhow::anyhow!(e.message))? {
            log.info("created the admin account from zstack.properties");
        }
    }

    let state = Arc::new(ServerState {
        release: release.semver()?,
        db: Mutex::new(conn),
    });
    let app = Router::new()
        .route("/v1/apis", get(api_reference))
        .route("/v1/api/:name", post(call_api))
        .with_state(state);
    zstack_http::serve(Service::Server, &release.version, port, app, log)
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

async fn api_reference() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "apis": api::reference() }))
}

/// `POST /v1/api/<Name>`: checks the call and its parameters, the session where one is needed,
/// then runs the handler on the blocking pool against the DB.
async fn call_api(
    State(state): State<Arc<ServerState>>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let result = (|| {
        let spec = api::find(&name)?;
        let params: serde_json::Map<String, serde_json::Value> = if body.is_empty() {
            serde_json::Map::new()
        } else {
            serde_json::from_slice(&body).map_err(|e| {
                error::ApiError::invalid("body", format!("the body must be a JSON object: {e}"))
            })?
        };
        api::check_params(spec, &params)?;
        let session = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("OAuth "))
            .map(|v| v.trim().to_string());
        Ok::<_, error::ApiError>((spec, params, session))
    })();
    let (spec, params, session) = match result {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let outcome = tokio::task::spawn_blocking(move || {
        let conn = state.db.lock().map_err(|_| error::ApiError::internal("the database lock is poisoned"))?;
        if spec.needs_session {
            let s = session.as_deref().ok_or_else(|| {
                error::ApiError::unauthorized("this call needs a session: log in with LogInByAccount and send Authorization: OAuth <session uuid>")
            })?;
            auth::check_session(&conn, s)?;
        }
        (spec.handler)(&api::Call { conn: &conn, release: &state.release, params: &params, session })
    })
    .await;
    match outcome {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(e) => error::ApiError::internal(format!("the call failed: {e}")).into_response(),
    }
}

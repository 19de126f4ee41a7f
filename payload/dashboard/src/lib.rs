//! The web dashboard that `zstack-server` serves on `dashboard.port` (5000).
//!
//! Pages are rendered on the server from the templates in `templates/` (tera, HTML-escaped)
//! with one small script and one stylesheet from `static/`, all built into the binary: the
//! dashboard fetches nothing from anywhere but itself. It is a client of the management node's
//! HTTP API (the one zstack-cli speaks, on loopback): it logs in with `LogInByAccount`, keeps
//! the API session in an HttpOnly, SameSite=Strict cookie, and checks a CSRF token derived from
//! that session on every POST. It never opens the database.

pub mod api;
mod config_page;
mod console;
mod forms;
mod jobs;
mod pages;
mod render;
pub mod resources;
pub mod session;
mod wizards;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::routing::{get, post};
use axum::Router;
use zstack_common::logfile::LogFile;

pub use zstack_common::service::keys::DASHBOARD_PORT;

pub use zstack_common::service::dashboard_port as port;

/// Where the dashboard listens and which API it speaks to.
pub struct Config {
    pub port: u16,
    /// The management node's API, e.g. `http://127.0.0.1:8080`.
    pub api_url: String,
}

/// What every handler shares.
pub struct Dashboard {
    pub api: api::ApiClient,
    pub csrf: session::CsrfKey,
    pub pages: render::Pages,
    pub log: LogFile,
}

pub type Shared = Arc<Dashboard>;

/// The dashboard's routes.
pub fn router(dashboard: Shared) -> Router {
    Router::new()
        .route("/", get(pages::overview))
        .route("/login", get(pages::login_page).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/static/:file", get(render::asset))
        .route("/r/:kind", get(pages::list))
        .route("/r/:kind/:uuid", get(pages::detail))
        .route("/console-log/:uuid", get(console::follow))
        .route("/call/:api", get(forms::form).post(forms::submit))
        .route("/jobs", get(jobs::list))
        .route("/jobs/:uuid", get(jobs::detail))
        .route("/wizard/l3", get(wizards::l3_form).post(wizards::l3_submit))
        .route("/wizard/vm", get(wizards::vm_form).post(wizards::vm_submit))
        .route("/config", get(config_page::table).post(config_page::update))
        .fallback(pages::not_found)
        .with_state(dashboard)
}

/// Binds the dashboard's port now (so a taken port is reported at start) and serves it on a
/// thread of its own until the process ends.
pub fn start(config: Config, log: LogFile) -> anyhow::Result<()> {
    let addr = SocketAddr::from(([0, 0, 0, 0], config.port));
    let listener = std::net::TcpListener::bind(addr).with_context(|| {
        format!(
            "cannot listen on {addr} for the dashboard; free the port or set {DASHBOARD_PORT} in zstack.properties"
        )
    })?;
    listener
        .set_nonblocking(true)
        .context("cannot make the dashboard's socket non-blocking")?;
    let dashboard = Arc::new(Dashboard {
        api: api::ApiClient::new(&config.api_url),
        csrf: session::CsrfKey::random()?,
        pages: render::Pages::new()?,
        log: log.clone(),
    });
    let app = router(dashboard);
    std::thread::Builder::new()
        .name("dashboard".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("dashboard-worker")
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    log.error(&format!("the dashboard cannot start its runtime: {e}"));
                    return;
                }
            };
            let started = log.clone();
            let served = rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                started.info(&format!("dashboard listening on {addr}"));
                axum::serve(listener, app).await
            });
            if let Err(e) = served {
                log.error(&format!("the dashboard stopped: {e}"));
            }
        })
        .context("cannot start the dashboard's thread")?;
    Ok(())
}

//! The management node (`zstack-server`): serves the HTTP API on `management.api.port` (8080)
//! over the SQLite database.
//!
//! Start-up refuses to serve a database whose schema does not match this release: a DB with
//! pending migrations is left to the installer or `zstack-ctl upgrade_db`, and a DB changed
//! behind the ledger's back is never served.

pub mod agent;
pub mod api;
pub mod auth;
pub mod error;
pub mod globalconfig;
pub mod host_channel;
pub mod job;
pub mod login_limit;
pub mod query;
pub mod resources;
pub mod trust;

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{bail, Context};
use axum::extract::Path as UrlPath;
use axum::extract::{Query as UrlQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use zstack_common::logfile::LogFile;
use zstack_common::service::{keys, Service};
use zstack_common::{Layout, Properties, Release};

use crate::agent::{HostAgent, KvmAgentClient, SimulatorHost};
use crate::error::ApiError;
use crate::resources::host::HostRow;

/// The management node's state, shared by the HTTP handlers, the jobs and the host tracker.
pub struct Node {
    pub release: semver::Version,
    /// One connection behind one lock: every check-and-reserve (allocation of hosts, storage,
    /// IPs) runs as one transaction under it, so two calls can never take the same thing.
    pub db: Mutex<rusqlite::Connection>,
    /// Connections for calls that only read. In WAL mode a reader sees the last commit without
    /// waiting for the writer, so queries keep answering during a storm of creations.
    pub readers: ReaderPool,
    /// Calls that write wait here (without holding a thread) rather than on the DB lock, and
    /// jobs wait for a slot: the blocking pool keeps threads free for reads under any load.
    pub write_slots: tokio::sync::Semaphore,
    pub job_slots: Arc<tokio::sync::Semaphore>,
    pub jobs: job::JobBoard,
    /// What logins share (rounds run; failed attempts).
    pub logins: auth::Logins,
    /// Set when the node is stopping: job waits answer at once.
    pub stopping: tokio::sync::watch::Sender<bool>,
    /// When the host tracker last refreshed primary storage capacities.
    pub capacity_refreshed: Mutex<Option<std::time::Instant>>,
    /// The cloud's CA and this node's certificates (None for a release before the CA).
    pub trust: Option<trust::CloudTrust>,
    /// The port KVM agents listen on unless a host says otherwise.
    pub agent_port: u16,
    /// `https://<management.server.ip>:<host channel port>`, where agents fetch images.
    pub base_url: String,
    /// Where AddImage may read local files from (`image.sourceDirectories`).
    pub image_source_dirs: Vec<std::path::PathBuf>,
    pub log: LogFile,
}

impl Node {
    pub fn db(&self) -> Result<MutexGuard<'_, rusqlite::Connection>, ApiError> {
        self.db
            .lock()
            .map_err(|_| ApiError::internal("the database lock is poisoned"))
    }

    /// The agent of a host, by its type.
    pub fn agent<'a>(&'a self, host: &HostRow) -> Result<Box<dyn HostAgent + 'a>, ApiError> {
        match host.hypervisor_type.as_str() {
            "Simulator" => Ok(Box::new(SimulatorHost {
                db: &self.db,
                host_uuid: host.uuid.clone(),
            })),
            "KVM" => {
                let tls = self.trust()?.agent_tls();
                let port = host
                    .agent_port
                    .and_then(|p| u16::try_from(p).ok())
                    .unwrap_or(self.agent_port);
                Ok(Box::new(KvmAgentClient::new(
                    &host.management_ip,
                    port,
                    tls,
                )))
            }
            other => Err(ApiError::internal(format!(
                "host {} has an unknown hypervisor type {other}",
                host.uuid
            ))),
        }
    }

    /// The cloud's trust, or why KVM hosts cannot be driven without it.
    pub fn trust(&self) -> Result<&trust::CloudTrust, ApiError> {
        self.trust.as_ref().ok_or_else(|| {
            ApiError::wrong_state(
                "this management node has no certificate (/etc/zstack/pki/management-node.pem), \
                 so it cannot drive KVM hosts; run the installer of this release again to make \
                 the cloud's certificates",
            )
        })
    }

    /// A connection for reading.
    pub fn reader(&self) -> Result<PooledReader<'_>, ApiError> {
        self.readers.get()
    }

    pub fn image_url(&self, image: &str) -> String {
        format!("{}/v1/images/{image}/download", self.base_url)
    }
}

/// What a node is made from, besides its DB connection and log.
pub struct NodeConfig {
    pub release: semver::Version,
    pub db_path: std::path::PathBuf,
    pub trust: Option<trust::CloudTrust>,
    pub agent_port: u16,
    pub base_url: String,
    pub image_source_dirs: Vec<std::path::PathBuf>,
}

impl Node {
    /// A node over `conn` (the writer connection of the DB at `config.db_path`, already at this
    /// release's schema and seeded).
    pub fn new(config: NodeConfig, conn: rusqlite::Connection, log: LogFile) -> Node {
        Node {
            release: config.release,
            db: Mutex::new(conn),
            readers: ReaderPool::new(&config.db_path),
            write_slots: tokio::sync::Semaphore::new(WRITERS),
            job_slots: Arc::new(tokio::sync::Semaphore::new(JOB_RUNNERS)),
            jobs: job::JobBoard::default(),
            logins: auth::Logins::default(),
            stopping: tokio::sync::watch::channel(false).0,
            capacity_refreshed: Mutex::new(None),
            trust: config.trust,
            agent_port: config.agent_port,
            base_url: config.base_url,
            image_source_dirs: config.image_source_dirs,
            log,
        }
    }
}

/// The management node's HTTP routes (the service's /health is added by `zstack_http`).
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/v1/apis", get(api_reference))
        .route("/v1/api/:name", post(call_api))
        .route("/v1/api-jobs/:uuid", get(get_job))
        .with_state(node)
}

/// Reader connections, opened on demand and kept for the next read.
pub struct ReaderPool {
    path: std::path::PathBuf,
    idle: Mutex<Vec<rusqlite::Connection>>,
}

/// Write calls prepared at once (they take the DB lock in turn anyway).
const WRITERS: usize = 16;
/// Jobs run at once; each may wait on an agent. The rest wait, recorded as Running.
const JOB_RUNNERS: usize = 256;

/// Idle reader connections kept open; more are opened under load and closed after.
const IDLE_READERS: usize = 8;

impl ReaderPool {
    pub fn new(path: &Path) -> ReaderPool {
        ReaderPool {
            path: path.to_path_buf(),
            idle: Mutex::new(Vec::new()),
        }
    }

    pub fn get(&self) -> Result<PooledReader<'_>, ApiError> {
        let idle = self.idle.lock().ok().and_then(|mut v| v.pop());
        let conn = match idle {
            Some(c) => c,
            None => zstack_db::open_existing(&self.path)
                .map_err(|e| ApiError::internal(format!("cannot open the database: {e}")))?,
        };
        Ok(PooledReader {
            pool: self,
            conn: Some(conn),
        })
    }
}

pub struct PooledReader<'a> {
    pool: &'a ReaderPool,
    conn: Option<rusqlite::Connection>,
}

impl std::ops::Deref for PooledReader<'_> {
    type Target = rusqlite::Connection;
    fn deref(&self) -> &rusqlite::Connection {
        // Always Some until drop.
        self.conn.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for PooledReader<'_> {
    fn drop(&mut self) {
        if let (Some(c), Ok(mut idle)) = (self.conn.take(), self.pool.idle.lock()) {
            if idle.len() < IDLE_READERS {
                idle.push(c);
            }
        }
    }
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
    let agent_port = Service::KvmAgent.port(&props).map_err(anyhow::Error::msg)?;
    check_schema(layout, &release)?;
    let db_path = layout.host(layout.db_file());
    let conn = zstack_db::open_existing(&db_path)?;
    let version = release.semver()?;
    globalconfig::seed(&conn, &version).map_err(|e| anyhow::anyhow!(e.message))?;
    if let Some(pw) = props.get(keys::ADMIN_PASSWORD).filter(|p| !p.is_empty()) {
        if auth::ensure_admin(&conn, pw).map_err(|e| anyhow::anyhow!(e.message))? {
            log.info("created the admin account from zstack.properties");
        }
    }
    // Jobs, hosts and their tracking came with 1.2.0's schema.
    let tracks_hosts = version >= semver::Version::new(1, 2, 0);
    if tracks_hosts {
        recover(&conn, &version, log).map_err(|e| anyhow::anyhow!(e.message))?;
    }

    let trust = trust::CloudTrust::load(layout)?;
    if trust.is_none() && tracks_hosts {
        log.warn(
            "no management node certificate in /etc/zstack/pki: KVM hosts cannot be driven \
             until the installer makes the cloud's certificates",
        );
    }
    let host_tls_port =
        zstack_common::service::host_tls_port(&props).map_err(anyhow::Error::msg)?;
    let ip = props
        .get(keys::MANAGEMENT_IP)
        .filter(|s| !s.is_empty())
        .unwrap_or("127.0.0.1");
    let node = Arc::new(Node::new(
        NodeConfig {
            release: version,
            db_path: db_path.clone(),
            trust,
            agent_port,
            base_url: format!("https://{ip}:{host_tls_port}"),
            image_source_dirs: props
                .get(keys::IMAGE_SOURCE_DIRECTORIES)
                .unwrap_or("")
                .split(',')
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .map(std::path::PathBuf::from)
                .collect(),
        },
        conn,
        log.clone(),
    ));
    if tracks_hosts {
        start_host_tracker(node.clone());
        // The dashboard (1.2.0 on) speaks to this API on loopback, as zstack-cli does.
        let dashboard_port =
            zstack_common::service::dashboard_port(&props).map_err(anyhow::Error::msg)?;
        zstack_dashboard::start(
            zstack_dashboard::Config {
                port: dashboard_port,
                api_url: format!("http://127.0.0.1:{port}"),
            },
            log.clone(),
        )?;
    }
    let mut endpoints = vec![zstack_http::Endpoint {
        port,
        listen: zstack_http::Listen::Plain,
        app: router(node.clone()),
    }];
    if let Some(trust) = &node.trust {
        endpoints.push(zstack_http::Endpoint {
            port: host_tls_port,
            listen: zstack_http::Listen::Tls(trust.host_listener()),
            app: host_channel::router(node.clone()),
        });
    }
    zstack_http::serve_endpoints_until_signal(
        Service::Server,
        &release.version,
        endpoints,
        log,
        move || {
            node.stopping.send_replace(true);
        },
    )
}

/// What a previous run left half done: running jobs are failed with the reason, VMs in a
/// transitional state wait for their host's word, half-copied images are dropped.
fn recover(
    conn: &rusqlite::Connection,
    release: &semver::Version,
    log: &LogFile,
) -> Result<(), ApiError> {
    let jobs = job::fail_interrupted(conn)?;
    let vms = resources::vm::reset_interrupted(conn)?;
    let images = resources::image::drop_interrupted(conn)?;
    if jobs + vms + images > 0 {
        log.warn(&format!(
            "a previous run was cut off: {jobs} job(s) marked failed, {vms} VM(s) in a transitional \
             state left to their hosts' report, {images} half-added image(s) dropped"
        ));
    }
    let days: i64 = globalconfig::value(conn, release, "job", "retention.days")?
        .parse()
        .unwrap_or(7);
    job::prune(conn, days)?;
    Ok(())
}

/// Pings every host every `host/ping.interval` seconds, on its own thread; the first round, at
/// start, reconnects every host so VM states are re-read after a restart.
fn start_host_tracker(node: Arc<Node>) {
    let spawned = std::thread::Builder::new()
        .name("host-tracker".into())
        .spawn(move || loop {
            if let Err(e) = resources::host::track_once(&node) {
                node.log.warn(&format!("host tracker: {}", e.message));
            }
            let secs = node
                .db()
                .and_then(|c| globalconfig::value(&c, &node.release, "host", "ping.interval"))
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(15);
            std::thread::sleep(Duration::from_secs(secs));
        });
    if let Err(e) = spawned {
        // Without the tracker hosts are still connected by AddKVMHost and ReconnectHost.
        eprintln!("cannot start the host tracker: {e}");
    }
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

async fn api_reference(State(node): State<Arc<Node>>) -> Json<serde_json::Value> {
    Json(json!({ "apis": api::reference(&node.release) }))
}

fn session_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("OAuth "))
        .map(|v| v.trim().to_string())
}

fn require_session(conn: &rusqlite::Connection, session: Option<&str>) -> Result<(), ApiError> {
    let s = session.ok_or_else(|| {
        ApiError::unauthorized(
            "this call needs a session: log in with LogInByAccount and send Authorization: OAuth <session uuid>",
        )
    })?;
    auth::check_session(conn, s).map(|_| ())
}

enum Answer {
    Now(serde_json::Value),
    Job(String, job::Job),
}

/// `POST /v1/api/<Name>`: checks the call and its parameters, the session where one is needed,
/// then runs the handler on the blocking pool against the DB. A job handler's slow part runs
/// after the DB lock is released; the caller gets 202 and the job's uuid.
async fn call_api(
    State(node): State<Arc<Node>>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    plain_peer: Option<axum::extract::ConnectInfo<std::net::SocketAddr>>,
    tls_peer: Option<axum::Extension<zstack_http::PeerAddress>>,
    body: axum::body::Bytes,
) -> Response {
    let peer = tls_peer
        .map(|p| p.0 .0.ip())
        .or(plain_peer.map(|p| p.0.ip()));
    let result = (|| {
        let spec = api::find(&node.release, &name)?;
        let params: serde_json::Map<String, serde_json::Value> = if body.is_empty() {
            serde_json::Map::new()
        } else {
            serde_json::from_slice(&body).map_err(|e| {
                ApiError::invalid("body", format!("the body must be a JSON object: {e}"))
            })?
        };
        api::check_params(spec, &params)?;
        Ok::<_, ApiError>((spec, params))
    })();
    let (spec, params) = match result {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let session = session_of(&headers);
    let worker = node.clone();
    let _slot = match &spec.handler {
        api::Handler::Read(_) | api::Handler::Unlocked(_) => None,
        _ => node.write_slots.acquire().await.ok(),
    };
    let outcome = tokio::task::spawn_blocking(move || {
        let node = worker;
        if let api::Handler::Read(f) | api::Handler::Unlocked(f) = &spec.handler {
            let conn = node.reader()?;
            if spec.needs_session {
                require_session(&conn, session.as_deref())?;
            }
            let call = api::Call {
                conn: &conn,
                node: &node,
                params: &params,
                session,
                peer,
            };
            return f(&call).map(Answer::Now);
        }
        let conn = node.db()?;
        if spec.needs_session {
            require_session(&conn, session.as_deref())?;
        }
        let call = api::Call {
            conn: &conn,
            node: &node,
            params: &params,
            session,
            peer,
        };
        match &spec.handler {
            api::Handler::Sync(f) | api::Handler::Read(f) | api::Handler::Unlocked(f) => {
                f(&call).map(Answer::Now)
            }
            api::Handler::Async(f) => {
                let job = f(&call)?;
                let uuid = node
                    .jobs
                    .create(&conn, spec.name, job.resource_uuid.as_deref())?;
                Ok(Answer::Job(uuid, job))
            }
        }
    })
    .await;
    match outcome {
        Ok(Ok(Answer::Now(v))) => Json(v).into_response(),
        Ok(Ok(Answer::Job(uuid, job))) => {
            run_job(node.clone(), uuid.clone(), job);
            (
                StatusCode::ACCEPTED,
                Json(json!({"jobUuid": uuid, "location": format!("/v1/api-jobs/{uuid}")})),
            )
                .into_response()
        }
        Ok(Err(e)) => e.into_response(),
        Err(e) => ApiError::internal(format!("the call failed: {e}")).into_response(),
    }
}

/// Runs a job when a slot is free, on the blocking pool (agent calls and copies block), and
/// records its outcome.
fn run_job(node: Arc<Node>, uuid: String, job: job::Job) {
    tokio::spawn(async move {
        let slot = node.job_slots.clone().acquire_owned().await;
        let runner = node.clone();
        let job_uuid = uuid.clone();
        let ran = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let steps = job::Steps::new(Some(job_uuid.clone()));
            let outcome = (job.run)(&runner, &steps);
            runner
                .db()
                .and_then(|c| runner.jobs.finish(&c, &job_uuid, &outcome))
        })
        .await;
        let failure = match ran {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.message,
            Err(e) => format!("the job panicked: {e}"),
        };
        node.log.error(&format!("job {uuid}: {failure}"));
        // A job that died without recording its end is recorded as failed.
        let err = ApiError::internal(failure);
        if let Ok(c) = node.db() {
            let _ = node.jobs.finish(&c, &uuid, &Err(err));
        }
    });
}

#[derive(serde::Deserialize)]
struct JobWait {
    wait: Option<u64>,
}

/// `GET /v1/api-jobs/<uuid>?wait=<seconds>`: the job; with `wait`, answers as soon as it ends
/// or records a step (at most 60 s later).
async fn get_job(
    State(node): State<Arc<Node>>,
    UrlPath(uuid): UrlPath<String>,
    UrlQuery(q): UrlQuery<JobWait>,
    headers: HeaderMap,
) -> Response {
    let session = session_of(&headers);
    let read = |node: Arc<Node>, uuid: String, session: Option<String>| async move {
        tokio::task::spawn_blocking(move || {
            let conn = node.reader()?;
            require_session(&conn, session.as_deref())?;
            job::read(&conn, &uuid)
        })
        .await
        .map_err(|e| ApiError::internal(format!("reading the job failed: {e}")))?
    };
    // Subscribe before reading, so an end between the two is not missed.
    let mut rx = node.jobs.subscribe(&uuid);
    let mut job = match read(node.clone(), uuid.clone(), session.clone()).await {
        Ok(j) => j,
        Err(e) => return e.into_response(),
    };
    let wait = q.wait.unwrap_or(0).min(60);
    if job["state"] == "Running" && wait > 0 {
        if let Some(rx) = rx.as_mut() {
            // The job ends (its sender is dropped) or records a step, the wait runs out, or the
            // node stops.
            let mut stopping = node.stopping.subscribe();
            tokio::select! {
                _ = tokio::time::timeout(Duration::from_secs(wait), rx.changed()) => {}
                _ = stopping.wait_for(|s| *s) => {}
            }
            job = match read(node.clone(), uuid.clone(), session).await {
                Ok(j) => j,
                Err(e) => return e.into_response(),
            };
        }
    }
    Json(json!({ "job": job })).into_response()
}

//! The KVM host agent (`zstack-kvmagent`): answers the management node on `kvmagent.port`
//! (7070). Every request but `GET /health` must carry the secret made at install
//! (`kvmagent.secret` in zstack.properties) in the `X-ZStack-Agent-Secret` header.

use std::sync::Arc;

use anyhow::Context;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use zstack_common::agent_proto::{path, CheckStorage, HostFacts, StorageCapacity};
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
        .route(path::PING, get(ping).post(ping))
        .route(path::CONNECT, post(connect))
        .route(path::CHECK_SMP, post(check_smp))
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

/// Refuses a call with the agent's error body.
fn refuse(status: StatusCode, code: &str, message: String) -> Response {
    (
        status,
        Json(serde_json::json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

/// What the host has: CPUs and memory from /proc, its hostname. The VM list is not reported
/// (`vms` absent) until this agent runs VMs, so the management node leaves VM states alone.
async fn connect(State(state): State<Arc<AgentState>>) -> Response {
    match host_facts(&state.version) {
        Ok(f) => Json(f).into_response(),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, "HOST_FACTS", e),
    }
}

fn host_facts(version: &str) -> Result<HostFacts, String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo")
        .map_err(|e| format!("cannot read /proc/cpuinfo: {e}"))?;
    let meminfo = std::fs::read_to_string("/proc/meminfo")
        .map_err(|e| format!("cannot read /proc/meminfo: {e}"))?;
    Ok(HostFacts {
        cpu_num: count_cpus(&cpuinfo),
        memory_size: mem_total(&meminfo).ok_or("/proc/meminfo has no MemTotal line")?,
        hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default(),
        agent_version: version.to_string(),
        vms: None,
    })
}

fn count_cpus(cpuinfo: &str) -> i64 {
    cpuinfo
        .lines()
        .filter(|l| l.split(':').next().map(str::trim) == Some("processor"))
        .count() as i64
}

/// MemTotal in bytes.
fn mem_total(meminfo: &str) -> Option<i64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

/// A shared mount point must be a directory this host can write; answers its capacity.
async fn check_smp(Json(req): Json<CheckStorage>) -> Response {
    match tokio::task::spawn_blocking(move || check_mount_point(&req.url)).await {
        Ok(Ok(cap)) => Json(cap).into_response(),
        Ok(Err(e)) => refuse(StatusCode::BAD_REQUEST, "STORAGE_UNUSABLE", e),
        Err(e) => refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            e.to_string(),
        ),
    }
}

fn check_mount_point(url: &str) -> Result<StorageCapacity, String> {
    let dir = std::path::Path::new(url);
    if !dir.is_absolute() {
        return Err(format!("{url} is not an absolute path"));
    }
    if !dir.is_dir() {
        return Err(format!(
            "{url} is not a directory on this host; mount the shared storage there first"
        ));
    }
    let probe = dir.join(format!(".zstack-write-check-{}", std::process::id()));
    std::fs::write(&probe, b"ok")
        .and_then(|_| std::fs::remove_file(&probe))
        .map_err(|e| format!("cannot write to {url}: {e}"))?;
    let st = nix::sys::statvfs::statvfs(dir).map_err(|e| format!("statvfs {url}: {e}"))?;
    let frag = st.fragment_size() as i64;
    Ok(StorageCapacity {
        total_capacity: (st.blocks() as i64).saturating_mul(frag),
        available_capacity: (st.blocks_available() as i64).saturating_mul(frag),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpus_and_memory() {
        let cpu = "processor\t: 0\nmodel name\t: x\n\nprocessor\t: 1\nmodel name\t: x\n";
        assert_eq!(count_cpus(cpu), 2);
        assert_eq!(
            mem_total("MemTotal:       2048 kB\nMemFree: 1 kB\n"),
            Some(2048 * 1024)
        );
        assert_eq!(mem_total("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn a_mount_point_must_be_a_writable_directory() {
        let d = tempfile::tempdir().unwrap();
        let cap = check_mount_point(d.path().to_str().unwrap()).unwrap();
        assert!(cap.total_capacity > 0 && cap.available_capacity <= cap.total_capacity);
        assert!(check_mount_point("relative/path")
            .unwrap_err()
            .contains("absolute"));
        let missing = d.path().join("missing");
        assert!(check_mount_point(missing.to_str().unwrap())
            .unwrap_err()
            .contains("mount the shared storage"));
    }
}

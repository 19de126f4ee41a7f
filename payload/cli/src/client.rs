//! HTTP to the management node: API calls, job polls and the API reference, with the session
//! kept in `~/.zstack/cli/session`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

use crate::args::Call;

/// What the management node answered, once it is known to be JSON.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// 200: the result.
    Done(Value),
    /// 202: `{"jobUuid", "location"}` of the job that carries the call on.
    Accepted(Value),
    /// An HTTP error status: `{"error": {"code", "message", "field"}}`.
    Refused(Value),
}

/// An API call as `GET /v1/apis` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiInfo {
    pub name: String,
    pub description: String,
    /// (name, required, description)
    pub params: Vec<(String, bool, String)>,
}

#[derive(Clone)]
pub struct Client {
    base: String,
    dir: PathBuf,
    agent: ureq::Agent,
}

impl Client {
    /// A client of `host:port` keeping its session and history in `dir` (`~/.zstack/cli`).
    pub fn new(host: &str, port: u16, dir: &Path) -> Client {
        // An IPv6 literal needs its brackets in a URL.
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        Client {
            base: format!("http://{host}:{port}"),
            dir: dir.to_path_buf(),
            agent: zstack_common::http_client::agent(zstack_common::http_client::Timeouts {
                connect: Some(Duration::from_secs(10)),
                read: None,
                whole: None,
            }),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn session_file(&self) -> PathBuf {
        self.dir.join("session")
    }

    /// Read for every call, so a `LogInByAccount` in another shell is picked up.
    pub fn session(&self) -> Option<String> {
        std::fs::read_to_string(self.session_file())
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }

    pub fn save_session(&self, uuid: &str) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        let f = self.session_file();
        zstack_common::fsutil::atomic_write(&f, uuid.as_bytes(), 0o600)
            .with_context(|| format!("cannot write {}", f.display()))
    }

    pub fn clear_session(&self) {
        // Already gone is what we want.
        let _ = std::fs::remove_file(self.session_file());
    }

    fn authorized(&self, req: ureq::Request) -> ureq::Request {
        match self.session() {
            Some(s) => req.set("Authorization", &format!("OAuth {s}")),
            None => req,
        }
    }

    /// `POST /v1/api/<Command>` with the parameters as a JSON object.
    pub fn call(&self, call: &Call) -> anyhow::Result<Reply> {
        let url = format!("{}/v1/api/{}", self.base, call.command);
        let req = self.authorized(self.agent.post(&url));
        reply(&url, req.send_json(Value::Object(call.params.clone())))
    }

    /// `GET <location>?wait=<seconds>`: the server holds the request until the job ends or the
    /// wait is over.
    pub fn job(&self, location: &str, wait: u64) -> anyhow::Result<Reply> {
        let sep = if location.contains('?') { '&' } else { '?' };
        let url = format!("{}{location}{sep}wait={wait}", self.base);
        // The server answers within `wait`; the margin covers a slow network, and the limit
        // keeps a server that never answers from hanging the cli forever.
        let req = self
            .authorized(self.agent.get(&url))
            .timeout(Duration::from_secs(wait + 30));
        reply(&url, req.call())
    }

    /// `GET /v1/apis`.
    pub fn apis(&self) -> anyhow::Result<Vec<ApiInfo>> {
        let url = format!("{}/v1/apis", self.base);
        let v = match reply(&url, self.agent.get(&url).call())? {
            Reply::Done(v) => v,
            Reply::Accepted(v) | Reply::Refused(v) => bail!("{url} answered {v}"),
        };
        let text = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_string();
        Ok(v["apis"]
            .as_array()
            .with_context(|| format!("{url}: no list of apis in {v}"))?
            .iter()
            .map(|a| ApiInfo {
                name: text(a, "name"),
                description: text(a, "description"),
                params: a["params"]
                    .as_array()
                    .map(|ps| {
                        ps.iter()
                            .map(|p| {
                                (
                                    text(p, "name"),
                                    p["required"].as_bool().unwrap_or(false),
                                    text(p, "description"),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            })
            .filter(|a| !a.name.is_empty())
            .collect())
    }
}

/// Reads an answer: its status says which kind, its body must be JSON.
fn reply(url: &str, r: Result<ureq::Response, ureq::Error>) -> anyhow::Result<Reply> {
    let (status, resp) = match r {
        Ok(resp) => (resp.status(), resp),
        Err(ureq::Error::Status(status, resp)) => (status, resp),
        Err(e) => bail!("cannot reach the management node at {url}: {e}"),
    };
    let body = resp
        .into_string()
        .with_context(|| format!("{url}: cannot read the answer (HTTP {status})"))?;
    let value: Value = serde_json::from_str(&body).with_context(|| {
        format!(
            "the management node answered HTTP {status} with something that is not JSON: {}",
            body.trim()
        )
    })?;
    Ok(match status {
        202 => Reply::Accepted(value),
        s if s >= 400 => Reply::Refused(value),
        _ => Reply::Done(value),
    })
}

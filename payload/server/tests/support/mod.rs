//! A management node served in-process for the API tests: a fresh DB at the release's schema in
//! a temporary directory, the admin account, and the node's routes on 127.0.0.1 (a free port).
#![allow(clippy::unwrap_used, dead_code)] // test code: a panic is a failed test

pub mod cloud;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use zstack_server::{Node, NodeConfig};

pub const ADMIN_PASSWORD: &str = "password-for-tests";

pub struct TestNode {
    pub url: String,
    pub node: Arc<Node>,
    pub dir: tempfile::TempDir,
    agent: ureq::Agent,
}

pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    pub fn error_field(&self) -> Option<&str> {
        self.body["error"]["field"].as_str()
    }
    pub fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or("")
    }
}

impl TestNode {
    pub fn start() -> TestNode {
        Self::start_with(Vec::new(), |_| {})
    }

    /// `image_source_dirs` as `image.sourceDirectories` lists them; `prepare` may change the
    /// fresh DB (global configs, rows) before the node serves it.
    pub fn start_with(
        image_source_dirs: Vec<std::path::PathBuf>,
        prepare: impl FnOnce(&rusqlite::Connection),
    ) -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        let db_path = dir.path().join("zstack.db");
        let conn = zstack_db::open(&db_path).unwrap();
        let migrations = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
        let shipped = zstack_db::load_migrations(&migrations).unwrap();
        let release = semver::Version::parse(env!("CARGO_PKG_VERSION")).unwrap();
        zstack_db::MigrationLedger::new(&conn, &db_path)
            .unwrap()
            .migrate(&shipped, &release)
            .unwrap();
        zstack_server::globalconfig::seed(&conn, &release).unwrap();
        zstack_server::auth::ensure_admin(&conn, ADMIN_PASSWORD).unwrap();
        prepare(&conn);
        let log =
            zstack_common::logfile::LogFile::open(&dir.path().join("server.log"), false).unwrap();
        let node = Arc::new(Node::new(
            NodeConfig {
                release,
                db_path,
                trust: None,
                agent_port: 7070,
                base_url: "http://127.0.0.1:1".into(),
                image_source_dirs,
            },
            conn,
            log,
        ));
        let (tx, rx) = std::sync::mpsc::channel();
        let served = node.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap().port()).unwrap();
                axum::serve(
                    listener,
                    zstack_server::router(served)
                        .into_make_service_with_connect_info::<std::net::SocketAddr>(),
                )
                .await
                .unwrap();
            });
        });
        let port = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        TestNode {
            url: format!("http://127.0.0.1:{port}"),
            node,
            dir,
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(30))
                .build(),
        }
    }

    /// `POST /v1/api/<name>` with `body` as it is (any bytes).
    pub fn raw(&self, name: &str, session: Option<&str>, body: &[u8]) -> Answer {
        let mut req = self
            .agent
            .post(&format!("{}/v1/api/{name}", self.url))
            .set("Content-Type", "application/json");
        if let Some(s) = session {
            req = req.set("Authorization", &format!("OAuth {s}"));
        }
        let r = match req.send_bytes(body) {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{name}: no answer: {e}"),
        };
        let status = r.status();
        let text = r.into_string().unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer { status, body }
    }

    pub fn call(&self, name: &str, session: Option<&str>, params: Value) -> Answer {
        self.raw(name, session, params.to_string().as_bytes())
    }

    /// A successful call's answer (a job's result when the call is a job).
    pub fn ok(&self, name: &str, session: &str, params: Value) -> Value {
        let a = self.call(name, Some(session), params);
        assert!(a.status < 300, "{name}: {} {}", a.status, a.body);
        if a.status == 202 {
            let job = self.job(session, a.body["jobUuid"].as_str().unwrap());
            assert_eq!(job["state"], "Succeeded", "{name}: {job}");
            return job["result"].clone();
        }
        a.body
    }

    pub fn job(&self, session: &str, uuid: &str) -> Value {
        let r = self
            .agent
            .get(&format!("{}/v1/api-jobs/{uuid}?wait=30", self.url))
            .set("Authorization", &format!("OAuth {session}"))
            .call()
            .unwrap();
        let v: Value = r.into_json().unwrap();
        v["job"].clone()
    }

    pub fn login(&self, name: &str, password: &str) -> Answer {
        self.call(
            "LogInByAccount",
            None,
            json!({"accountName": name, "password": password}),
        )
    }

    pub fn admin_session(&self) -> String {
        let a = self.login("admin", ADMIN_PASSWORD);
        assert_eq!(a.status, 200, "{}", a.body);
        a.body["inventory"]["uuid"].as_str().unwrap().to_string()
    }

    pub fn apis(&self) -> Vec<Value> {
        let v: Value = self
            .agent
            .get(&format!("{}/v1/apis", self.url))
            .call()
            .unwrap()
            .into_json()
            .unwrap();
        v["apis"].as_array().unwrap().clone()
    }
}

impl TestNode {
    /// `POST /v1/api/<name>` that gives up after `timeout`: None when no answer came in time.
    pub fn call_within(
        &self,
        name: &str,
        session: Option<&str>,
        params: &Value,
        timeout: Duration,
    ) -> Option<Answer> {
        self.raw_within(name, session, params.to_string().as_bytes(), timeout)
    }

    /// [`TestNode::raw`] that gives up after `timeout`: None when no answer came in time.
    pub fn raw_within(
        &self,
        name: &str,
        session: Option<&str>,
        body: &[u8],
        timeout: Duration,
    ) -> Option<Answer> {
        let agent = ureq::AgentBuilder::new().timeout(timeout).build();
        let mut req = agent
            .post(&format!("{}/v1/api/{name}", self.url))
            .set("Content-Type", "application/json");
        if let Some(s) = session {
            req = req.set("Authorization", &format!("OAuth {s}"));
        }
        let r = match req.send_bytes(body) {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(_) => return None,
        };
        let status = r.status();
        let text = r.into_string().ok()?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Some(Answer { status, body })
    }
}

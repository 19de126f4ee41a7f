//! The health check every service answers at `GET /health`, and the client side of it that the
//! installer and `zstack-ctl status` use.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Header carrying the agent secret on management-node-to-agent requests.
pub const AGENT_SECRET_HEADER: &str = "X-ZStack-Agent-Secret";

/// What `GET /health` answers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Health {
    pub product: String,
    pub service: String,
    pub version: String,
    pub status: String,
    pub pid: u32,
}

/// Asks `url` for a [`Health`] document. `secret`, when given, is sent as the agent secret.
pub fn fetch(url: &str, secret: Option<&str>, timeout: Duration) -> Result<Health, String> {
    let agent = crate::http_client::agent(crate::http_client::Timeouts {
        connect: Some(timeout),
        read: None,
        whole: Some(timeout),
    });
    let mut req = agent.get(url);
    if let Some(s) = secret {
        req = req.set(AGENT_SECRET_HEADER, s);
    }
    match req.call() {
        Ok(resp) => resp
            .into_json::<Health>()
            .map_err(|e| format!("{url} answered something that is not a health document: {e}")),
        Err(ureq::Error::Status(code, resp)) => {
            let body = resp.into_string().unwrap_or_default();
            Err(format!("{url} answered HTTP {code}: {}", body.trim()))
        }
        Err(e) => Err(format!("{url}: {e}")),
    }
}

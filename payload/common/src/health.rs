//! The health check every service answers at `GET /health`, and the client side of it that the
//! installer and `zstack-ctl status` use.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What `GET /health` answers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Health {
    pub product: String,
    pub service: String,
    pub version: String,
    pub status: String,
    pub pid: u32,
}

/// Asks `url` for a [`Health`] document; an `https` URL with `tls` (the agent's port takes only
/// clients with a certificate of the cloud).
pub fn fetch(
    url: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> Result<Health, String> {
    let timeouts = crate::http_client::Timeouts {
        connect: Some(timeout),
        read: None,
        whole: Some(timeout),
    };
    let agent = match tls {
        Some(config) => crate::http_client::tls_agent(timeouts, config),
        None => crate::http_client::agent(timeouts),
    };
    match agent.get(url).call() {
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

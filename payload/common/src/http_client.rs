//! The one way the stack's programs make an HTTP client: the timeouts are the caller's.

use std::sync::Arc;
use std::time::Duration;

/// How long a client waits.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timeouts {
    /// For the connection to be made.
    pub connect: Option<Duration>,
    /// For each read of the answer (a long download keeps going while bytes come).
    pub read: Option<Duration>,
    /// For the whole call, connection and answer.
    pub whole: Option<Duration>,
}

/// An HTTP client with `timeouts` (none given: it waits as long as the peer does).
pub fn agent(timeouts: Timeouts) -> ureq::Agent {
    builder(timeouts).build()
}

/// An HTTPS client with `timeouts` that speaks TLS as `config` says (the cloud's CA and the
/// caller's certificate: see zstack-pki).
pub fn tls_agent(timeouts: Timeouts, config: Arc<rustls::ClientConfig>) -> ureq::Agent {
    builder(timeouts).tls_config(config).build()
}

fn builder(timeouts: Timeouts) -> ureq::AgentBuilder {
    let mut builder = ureq::AgentBuilder::new();
    if let Some(t) = timeouts.connect {
        builder = builder.timeout_connect(t);
    }
    if let Some(t) = timeouts.read {
        builder = builder.timeout_read(t);
    }
    if let Some(t) = timeouts.whole {
        builder = builder.timeout(t);
    }
    builder
}

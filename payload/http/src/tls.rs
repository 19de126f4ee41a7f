//! Serving over TLS: rustls in front of the same axum routers, with the peer's certificate
//! handed to the handlers as a request extension ([`PeerCertificate`]), so a route can decide by
//! the role and the fingerprint of who is calling.
//!
//! The configuration is held in a [`TlsConfigCell`]: a new revocation list replaces it, and the
//! next connection is checked against the new one without a restart.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::Router;
use hyper_util::rt::TokioIo;
use rustls::ServerConfig;
use tower_service::Service;

/// The DER bytes of the certificate the peer presented in the handshake.
#[derive(Clone, Debug)]
pub struct PeerCertificate(pub Vec<u8>);

/// The address the peer connected from.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddress(pub SocketAddr);

/// The current TLS configuration of a listener; replaceable while it serves.
#[derive(Clone)]
pub struct TlsConfigCell(Arc<RwLock<Arc<ServerConfig>>>);

impl TlsConfigCell {
    pub fn new(config: Arc<ServerConfig>) -> TlsConfigCell {
        TlsConfigCell(Arc::new(RwLock::new(config)))
    }

    /// Takes effect for the connections accepted from now on.
    pub fn replace(&self, config: Arc<ServerConfig>) {
        match self.0.write() {
            Ok(mut current) => *current = config,
            Err(poisoned) => *poisoned.into_inner() = config,
        }
    }

    fn current(&self) -> Arc<ServerConfig> {
        match self.0.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// Serves one accepted TCP connection: the TLS handshake (a peer the configuration refuses is
/// dropped here, before any request is read), then HTTP/1.1 on the router.
pub(crate) async fn serve_connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    config: &TlsConfigCell,
    app: Router,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config.current());
    let Ok(tls) = acceptor.accept(tcp).await else {
        return;
    };
    let certificate = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|c| PeerCertificate(c.to_vec()));
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            if let Some(c) = &certificate {
                req.extensions_mut().insert(c.clone());
            }
            req.extensions_mut().insert(PeerAddress(peer));
            let mut app = app.clone();
            app.call(req.map(axum::body::Body::new))
        });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tls), service)
        .await;
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use axum::routing::get;
    use axum::Extension;
    use zstack_pki::tls::{client_config, server_config, ClientAuth, Identity, Trust};
    use zstack_pki::{CloudCa, Role, Subject};

    use super::*;

    fn identity(ca: &CloudCa, subject: Subject) -> Identity {
        let (key, cert) = ca.issue_local(&subject).unwrap();
        Identity {
            certificate_pem: cert,
            key_pem: key.pem(),
        }
    }

    /// An agent-like server on a loopback port that answers with the caller's common name.
    fn serve_once(config: Arc<ServerConfig>) -> u16 {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = std_listener.local_addr().unwrap().port();
        std_listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                let app = Router::new().route(
                    "/whoami",
                    get(|Extension(c): Extension<PeerCertificate>| async move {
                        zstack_pki::identity_of(&c.0).unwrap().common_name
                    }),
                );
                let cell = TlsConfigCell::new(config);
                loop {
                    let (tcp, peer) = listener.accept().await.unwrap();
                    let (cell, app) = (cell.clone(), app.clone());
                    tokio::spawn(async move { serve_connection(tcp, peer, &cell, app).await });
                }
            });
        });
        port
    }

    #[test]
    fn handlers_see_who_called_and_strangers_are_dropped() {
        let ca = CloudCa::create().unwrap();
        let loopback = IpAddr::from([127, 0, 0, 1]);
        let trust = Trust {
            ca_pem: ca.certificate_pem().into(),
            crl_pem: None,
        };
        let host = identity(&ca, Subject::host(loopback));
        let mn = identity(&ca, Subject::management_node("10.9.9.9".parse().unwrap()));
        let config = server_config(
            &host,
            &trust,
            ClientAuth::Required(vec![Role::ManagementNode]),
        )
        .unwrap();
        let port = serve_once(config);
        let url = format!("https://127.0.0.1:{port}/whoami");
        let agent = ureq::AgentBuilder::new()
            .tls_config(client_config(Some(&mn), &trust, Role::Host).unwrap())
            .build();
        let answer = agent.get(&url).call().unwrap().into_string().unwrap();
        assert_eq!(answer, "management-node 10.9.9.9");

        // A management node of another cloud does not get an answer.
        let other = CloudCa::create().unwrap();
        let other_trust = Trust {
            ca_pem: other.certificate_pem().into(),
            crl_pem: None,
        };
        let other_mn = identity(
            &other,
            Subject::management_node("10.9.9.9".parse().unwrap()),
        );
        let stranger = ureq::AgentBuilder::new()
            .tls_config(client_config(Some(&other_mn), &trust, Role::Host).unwrap())
            .build();
        assert!(stranger.get(&url).call().is_err());
        // Nor does it trust this cloud's agent.
        let stranger = ureq::AgentBuilder::new()
            .tls_config(client_config(Some(&other_mn), &other_trust, Role::Host).unwrap())
            .build();
        assert!(stranger.get(&url).call().is_err());
    }
}

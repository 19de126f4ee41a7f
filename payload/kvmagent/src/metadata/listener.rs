//! Serving a metadata router inside an L3's network namespace, on a thread of its own.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

use axum::Router;

/// Why a metadata listener cannot be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("cannot {action}: {source}")]
    Socket {
        action: &'static str,
        source: std::io::Error,
    },
    #[error("the metadata server's thread panicked")]
    Panicked,
    #[error("{0:?} is not a network namespace name")]
    NamespaceName(String),
    #[error("cannot open network namespace {path}: {source}")]
    OpenNamespace {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot enter network namespace {ns}: {source}")]
    EnterNamespace { ns: String, source: nix::Error },
    #[error("cannot listen on {addr} in network namespace {ns}: {source}")]
    Bind {
        addr: SocketAddr,
        ns: String,
        source: std::io::Error,
    },
    #[error("the thread binding {addr} in {ns} panicked")]
    BindPanicked { addr: SocketAddr, ns: String },
}

fn socket_error(action: &'static str) -> impl FnOnce(std::io::Error) -> ListenerError {
    move |source| ListenerError::Socket { action, source }
}

/// How long a stopped listener lets requests in flight finish before its runtime is dropped.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// A running metadata server: its thread and runtime. [`MetadataListener::stop`] (or dropping
/// it) closes the socket; stop it before deleting the L3's namespace (a namespace lives on, out
/// of sight, as long as a socket in it is open).
pub struct MetadataListener {
    addr: SocketAddr,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<JoinHandle<()>>,
}

impl MetadataListener {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether the server still runs.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops the server and waits until its socket is closed: requests in flight get
    /// a second (`STOP_GRACE`) to finish.
    pub fn stop(mut self) -> Result<(), ListenerError> {
        self.signal();
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| ListenerError::Panicked),
            None => Ok(()),
        }
    }

    fn signal(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(true);
        }
    }
}

impl Drop for MetadataListener {
    /// Stops the server without waiting for its thread.
    fn drop(&mut self) {
        self.signal();
    }
}

/// Serves `app` on `listener` (any namespace) on a new thread with its own single-threaded
/// tokio runtime; callable from anywhere, inside a runtime or not.
pub fn serve_listener(
    listener: TcpListener,
    app: Router,
) -> Result<MetadataListener, ListenerError> {
    listener
        .set_nonblocking(true)
        .map_err(socket_error("make the listening socket non-blocking"))?;
    let addr = listener
        .local_addr()
        .map_err(socket_error("read the listening socket's address"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(socket_error("make a runtime for the metadata server"))?;
    let listener = {
        let _in_rt = rt.enter();
        tokio::net::TcpListener::from_std(listener)
            .map_err(socket_error("register the listening socket"))?
    };
    let (tx, rx) = tokio::sync::watch::channel(false);
    let thread = std::thread::Builder::new()
        .name("zstack-imds".to_string())
        .spawn(move || {
            rt.block_on(async move {
                let mut graceful = rx.clone();
                let mut deadline = rx;
                let serve = axum::serve(
                    listener,
                    app.into_make_service_with_connect_info::<SocketAddr>(),
                )
                .with_graceful_shutdown(async move {
                    // A dropped sender stops the server too.
                    let _ = graceful.wait_for(|stop| *stop).await;
                });
                tokio::select! {
                    _ = async move { serve.await } => {}
                    _ = async move {
                        let _ = deadline.wait_for(|stop| *stop).await;
                        tokio::time::sleep(STOP_GRACE).await;
                    } => {}
                }
            });
            // Dropping the runtime here closes every connection left.
        })
        .map_err(socket_error("start the metadata server's thread"))?;
    Ok(MetadataListener {
        addr,
        stop: Some(tx),
        thread: Some(thread),
    })
}

/// `/var/run/netns/<ns>` (what `ip netns add` makes), or `ns` itself when it is an absolute path
/// (`/proc/<pid>/ns/net`).
fn netns_path(ns: &str) -> Result<PathBuf, ListenerError> {
    if ns.starts_with('/') {
        return Ok(PathBuf::from(ns));
    }
    if ns.is_empty() || ns == "." || ns == ".." || ns.contains('/') {
        return Err(ListenerError::NamespaceName(ns.to_string()));
    }
    Ok(Path::new("/var/run/netns").join(ns))
}

/// A TCP socket listening on `addr` inside network namespace `ns`: a short-lived thread enters
/// the namespace (`setns` moves only the calling thread), binds, and ends; the socket stays in
/// that namespace. The address must exist there (`169.254.169.254/32` on the L3's inner device).
pub fn bind_in_netns(ns: &str, addr: SocketAddr) -> Result<TcpListener, ListenerError> {
    let path = netns_path(ns)?;
    let file = File::open(&path).map_err(|source| ListenerError::OpenNamespace {
        path: path.clone(),
        source,
    })?;
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|source| {
                ListenerError::EnterNamespace {
                    ns: ns.to_string(),
                    source,
                }
            })?;
            TcpListener::bind(addr).map_err(|source| ListenerError::Bind {
                addr,
                ns: ns.to_string(),
                source,
            })
        })
        .join()
        .map_err(|_| ListenerError::BindPanicked {
            addr,
            ns: ns.to_string(),
        })?
    })
}

/// Serves `app` on `addr` inside network namespace `ns` (see [`bind_in_netns`] and
/// [`serve_listener`]). Returns once the socket listens.
pub fn serve_in_netns(
    ns: &str,
    addr: SocketAddr,
    app: Router,
) -> Result<MetadataListener, ListenerError> {
    serve_listener(bind_in_netns(ns, addr)?, app)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a panic is a failed test

    use super::super::test_support::*;
    use super::super::*;
    use super::*;
    use std::io::{Read, Write};
    use std::net::{IpAddr, TcpStream};
    use std::time::Instant;

    /// A raw HTTP/1.1 exchange from source address `src` (bound before connecting, so several
    /// "VMs" can talk to one listener over loopback).
    fn http(server: SocketAddr, src: IpAddr, request: &str) -> (u16, String, String) {
        use nix::sys::socket::{
            bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn,
        };
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        let IpAddr::V4(src) = src else { panic!() };
        let SocketAddr::V4(server) = server else {
            panic!()
        };
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &SockaddrIn::from(std::net::SocketAddrV4::new(src, 0)),
        )
        .unwrap();
        connect(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &SockaddrIn::from(server),
        )
        .unwrap();
        let mut stream = TcpStream::from(fd);
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        let code = head.split(' ').nth(1).unwrap().parse().unwrap();
        (code, head.to_string(), body.to_string())
    }

    fn req(method: &str, path: &str, headers: &str) -> String {
        format!("{method} {path} HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n{headers}\r\n")
    }

    #[test]
    fn serves_by_source_address_over_tcp() {
        let (_d, s) = store();
        s.upsert_vm(&vm("vm1", vec![nic(L3, "127.0.0.1", &["Userdata"])]))
            .unwrap();
        s.upsert_vm(&vm("vm2", vec![nic(L3, "127.0.0.2", &["Userdata"])]))
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = serve_listener(listener, router(s.clone(), L3.to_string())).unwrap();
        let addr = server.local_addr();
        assert!(server.is_running());
        let one = ip("127.0.0.1");
        let two = ip("127.0.0.2");

        let path = "/latest/meta-data/instance-id";
        assert_eq!(http(addr, one, &req("GET", path, "")).2, "vm1");
        assert_eq!(http(addr, two, &req("GET", path, "")).2, "vm2");
        // X-Forwarded-For changes nothing.
        let (code, _, body) = http(
            addr,
            two,
            &req("GET", path, "X-Forwarded-For: 127.0.0.1\r\n"),
        );
        assert_eq!((code, body.as_str()), (200, "vm2"));
        // Strangers.
        assert_eq!(http(addr, ip("127.0.0.3"), &req("GET", path, "")).0, 404);
        assert_eq!(http(addr, ip("127.0.0.3"), &req("GET", "/", "")).0, 200);
        // The token flow over HTTP, with its headers.
        let (code, head, token) = http(
            addr,
            one,
            &req(
                "PUT",
                "/latest/api/token",
                "X-aws-ec2-metadata-token-ttl-seconds: 30\r\nContent-Length: 0\r\n",
            ),
        );
        assert_eq!(code, 200, "{head}");
        assert!(head
            .to_ascii_lowercase()
            .contains("x-aws-ec2-metadata-token-ttl-seconds: 30"));
        let (code, _, body) = http(
            addr,
            one,
            &req(
                "GET",
                path,
                &format!("X-aws-ec2-metadata-token: {token}\r\n"),
            ),
        );
        assert_eq!((code, body.as_str()), (200, "vm1"));
        let (code, _, _) = http(
            addr,
            two,
            &req(
                "GET",
                path,
                &format!("X-aws-ec2-metadata-token: {token}\r\n"),
            ),
        );
        assert_eq!(code, 401);
        let (code, head, body) = http(addr, one, &req("HEAD", path, ""));
        assert_eq!((code, body.as_str()), (200, ""), "{head}");

        server.stop().unwrap();
        assert!(TcpStream::connect(addr).is_err());
    }

    #[test]
    fn dropping_the_listener_stops_it() {
        let (_d, s) = store();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(serve_listener(listener, router(s, L3.to_string())).unwrap());
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(addr).is_ok() {
            assert!(Instant::now() < deadline, "still listening");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn namespace_names() {
        assert_eq!(
            netns_path("zs-l3").unwrap(),
            Path::new("/var/run/netns/zs-l3")
        );
        assert_eq!(
            netns_path("/proc/1/ns/net").unwrap(),
            Path::new("/proc/1/ns/net")
        );
        for bad in ["", ".", "..", "a/b"] {
            assert!(netns_path(bad).is_err(), "{bad}");
        }
        let e = bind_in_netns("zs-no-such-namespace", "127.0.0.1:0".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("zs-no-such-namespace"), "{e}");
    }
}

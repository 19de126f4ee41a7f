//! The cloud's trust on one host, end to end: the stack installed all-in-one, this host added as
//! a KVM host. The agent serves only HTTPS with client certificates of this cloud, and its calls
//! only to the management node's; a certificate of another CA (a second cloud's management node)
//! is refused in the handshake; the host channel takes only hosts the management node has; and
//! DeleteHost revokes the host's certificate. Installs on this host and removes it afterwards.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use zstack_common::http_client::{tls_agent, Timeouts};
use zstack_pki::tls::{client_config, Identity, Trust};
use zstack_pki::{CloudCa, MachinePki, Role, Subject};
use zstack_tests::cli::*;
use zstack_tests::kvm::*;
use zstack_tests::*;

const AGENT: &str = "https://127.0.0.1:7070";
const HOST_CHANNEL: &str = "https://127.0.0.1:8443";

fn client(identity: Option<&Identity>, trust: &Trust, server: Role) -> ureq::Agent {
    let timeouts = Timeouts {
        connect: Some(Duration::from_secs(5)),
        read: None,
        whole: Some(Duration::from_secs(20)),
    };
    tls_agent(timeouts, client_config(identity, trust, server).unwrap())
}

/// The status of a call, or the transport error's text (a refused handshake).
fn status(agent: &ureq::Agent, method: &str, url: &str) -> Result<u16, String> {
    let req = agent.request(method, url);
    let resp = if method == "POST" {
        req.send_json(serde_json::json!({}))
    } else {
        req.call()
    };
    match resp {
        Ok(r) => Ok(r.status()),
        Err(ureq::Error::Status(code, _)) => Ok(code),
        Err(e) => Err(e.to_string()),
    }
}

const LOOPBACK: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// A certificate and key `ca` issues for `subject`, as a client presents them.
fn issued(ca: &CloudCa, subject: Subject) -> Identity {
    let (key, cert) = ca.issue_local(&subject).unwrap();
    Identity {
        certificate_pem: cert,
        key_pem: key.pem(),
    }
}

fn listening_ports() -> String {
    ok(Command::new("ss").args(["-ltnH"]))
}

#[test]
#[ignore = "needs root and build/*.bin: run by make test; installs on this host and removes it"]
fn agents_and_the_management_node_trust_only_their_own_cloud() {
    ensure_libvirtd();
    let stack = install();
    let cli = &stack.cli;
    let pki = MachinePki::new("/etc/zstack/pki");
    let trust = pki.trust().unwrap();
    let node = pki.identity(Role::ManagementNode).unwrap();
    let host = pki.identity(Role::Host).unwrap();

    // The agent's port speaks TLS only: plain HTTP gets no answer.
    assert!(listening_ports().contains(":7070"), "{}", listening_ports());
    let plain = zstack_common::http_client::agent(Timeouts {
        connect: Some(Duration::from_secs(5)),
        read: None,
        whole: Some(Duration::from_secs(10)),
    });
    assert!(plain.get("http://127.0.0.1:7070/health").call().is_err());
    // TLS without a client certificate: refused in the handshake.
    let anonymous = client(None, &trust, Role::Host);
    assert!(status(&anonymous, "GET", &format!("{AGENT}/health")).is_err());

    // A second cloud: its management node's certificate is refused by this cloud's agent, and
    // this cloud's agent is not a host of that cloud either.
    let other = CloudCa::create().unwrap();
    let foreign = issued(&other, Subject::management_node(LOOPBACK));
    let other_trust = Trust {
        ca_pem: other.certificate_pem().to_string(),
        crl_pem: None,
    };
    let mixed = client(Some(&foreign), &trust, Role::Host);
    let refused = status(&mixed, "POST", &format!("{AGENT}/host/connect")).unwrap_err();
    assert!(!refused.is_empty());
    let theirs = client(Some(&foreign), &other_trust, Role::Host);
    assert!(status(&theirs, "POST", &format!("{AGENT}/host/ping")).is_err());

    // A host's certificate of this cloud: /health answers, the agent's calls do not.
    let as_host = client(Some(&host), &trust, Role::Host);
    assert_eq!(status(&as_host, "GET", &format!("{AGENT}/health")), Ok(200));
    assert_eq!(
        status(&as_host, "POST", &format!("{AGENT}/host/ping")),
        Ok(403)
    );
    // The management node's: the calls answer.
    let as_node = client(Some(&node), &trust, Role::Host);
    assert_eq!(
        status(&as_node, "POST", &format!("{AGENT}/host/ping")),
        Ok(200)
    );

    // zstack-ctl asks the agent with the host's own certificate.
    let st = ok(Command::new("zstack-ctl").args(["status", "--json"]));
    let st: serde_json::Value = serde_json::from_str(&st).unwrap();
    let agent = st["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == "zstack-kvmagent")
        .unwrap_or_else(|| panic!("{st}"));
    assert_eq!(agent["health"]["status"], "ok", "{st}");

    // The host added through the API: its certificate's serial recorded.
    let zone = cli.uuid(&["CreateZone", "name=z"]);
    let cluster = cli.uuid(&[
        "CreateCluster",
        "name=kvm",
        &format!("zoneUuid={zone}"),
        "hypervisorType=KVM",
    ]);
    let added = cli.inv(&[
        "AddKVMHost",
        "name=this",
        "managementIp=127.0.0.1",
        &format!("clusterUuid={cluster}"),
    ]);
    assert_eq!(added["status"], "Connected", "{added}");
    let serial = pki.certificate_identity(Role::Host).unwrap().serial;
    assert_eq!(added["certificateSerial"], serial.as_str(), "{added}");

    // The host channel: hosts of this cloud only. Without a certificate, with the management
    // node's, or with another cloud's: refused in the handshake. With this host's: past the
    // handshake and the host check (an image that does not exist is a 404).
    assert!(listening_ports().contains(":8443"), "{}", listening_ports());
    let image = format!("{HOST_CHANNEL}/v1/images/{}/download", "0".repeat(32));
    let channel = |id: Option<&Identity>, t: &Trust| client(id, t, Role::ManagementNode);
    assert!(status(&channel(None, &trust), "GET", &image).is_err());
    assert!(status(&channel(Some(&node), &trust), "GET", &image).is_err());
    assert!(status(&channel(Some(&foreign), &trust), "GET", &image).is_err());
    assert_eq!(
        status(&channel(Some(&host), &trust), "GET", &image),
        Ok(404)
    );
    // A host certificate of this CA that no host row holds: refused by the host check.
    let ca = CloudCa::load(std::path::Path::new("/etc/zstack/ca")).unwrap();
    let stray = issued(&ca, Subject::host(LOOPBACK));
    assert_eq!(
        status(&channel(Some(&stray), &trust), "GET", &image),
        Ok(403)
    );
    // The old image-download path of the plain API is gone.
    assert!(plain
        .get(&format!(
            "http://127.0.0.1:8080/v1/images/{}/download",
            "0".repeat(32)
        ))
        .call()
        .is_err());

    // DeleteHost revokes the certificate: the host channel refuses it from the next
    // connection on, and the revocation list names it.
    let host_uuid = added["uuid"].as_str().unwrap();
    cli.ok(&["DeleteHost", &format!("uuid={host_uuid}")]);
    let crl = std::fs::read_to_string("/etc/zstack/pki/crl.pem").unwrap();
    assert!(crl.contains("BEGIN X509 CRL"), "{crl}");
    assert!(status(&channel(Some(&host), &trust), "GET", &image).is_err());
    // And the management node no longer drives an agent serving with a revoked certificate.
    let again = cli.err(&[
        "AddKVMHost",
        "name=this",
        "managementIp=127.0.0.1",
        &format!("clusterUuid={cluster}"),
    ]);
    assert!(again.to_string().contains("was not added"), "{again}");

    // Nothing on this host listens on the agent's port without TLS: a raw TCP connection that
    // sends HTTP gets the connection closed, not an answer.
    let mut raw = TcpStream::connect("127.0.0.1:7070").unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    use std::io::{Read, Write};
    let _ = raw.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut buf = Vec::new();
    let _ = raw.read_to_end(&mut buf);
    assert!(!String::from_utf8_lossy(&buf).contains("zstack-kvmagent"));
}

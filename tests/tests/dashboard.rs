//! The dashboard in a real headless Chromium (over WebDriver), against zstack-server installed on
//! this host with simulator hosts: a cloud built through the pages and wizards, jobs followed
//! live, global configuration, the session rules (HttpOnly/SameSite cookie, CSRF, logout,
//! a session ended elsewhere), escaping, the CSP header, and a phone-width layout. What the
//! pages did is checked through zstack-cli (the API is the record); a VM's page shows its console
//! log and follows it. Each test leaves a
//! screenshot of its last page under `target/tmp/<test>/`.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::{json, Value};
use zstack_tests::cli::*;
use zstack_tests::webdriver::{output_dir, Browser};
use zstack_tests::{give_to_server_user, ok};

const BASE: &str = "http://127.0.0.1:5000";
const ENTER: &str = "\u{E007}";

fn log_in(b: &Browser, password: &str) {
    b.goto(&format!("{BASE}/"));
    b.find("#login-form");
    assert!(b.url().contains("/login"), "{}", b.url());
    b.fill("#accountName", "admin");
    // The keyboard alone: Enter in the password field submits the form.
    b.fill("#password", &format!("{password}{ENTER}"));
    b.find("#counts");
}

/// The uuid at the end of the current URL (a detail page).
fn uuid_in_url(b: &Browser) -> String {
    let url = b.url();
    let path = url.split('?').next().unwrap();
    path.rsplit('/').next().unwrap().to_string()
}

/// Sets the field of parameter `name` on a call form.
fn set(b: &Browser, name: &str, value: &str) {
    let css = format!("#f-{name}");
    b.find(&css);
    let tag = b.js(
        "return document.querySelector(arguments[0]).tagName",
        json!([css]),
    );
    if tag == "SELECT" {
        b.choose(&css, value);
    } else {
        b.fill(&css, value);
    }
}

/// Opens the form of `api` (with `query`), fills it, submits it.
fn call(b: &Browser, api: &str, query: &str, fields: &[(&str, &str)]) {
    b.goto(&format!("{BASE}/call/{api}?{query}"));
    b.find("#call-form");
    for (k, v) in fields {
        set(b, k, v);
    }
    b.click("#submit");
}

/// Waits on a job's page for its end; it must succeed.
fn job_succeeds(b: &Browser) {
    b.wait_for("a job page", 30, |b| b.url().contains("/jobs/"));
    b.wait_for("the job's end", 120, |b| {
        let s = b.text("#job-state");
        s.starts_with("Succeeded") || s.starts_with("Failed")
    });
    assert!(
        b.text("#job-state").starts_with("Succeeded"),
        "{}",
        b.source()
    );
}

/// Creates with a synchronous call; the browser lands on what was made.
fn create(b: &Browser, api: &str, kind: &str, query: &str, fields: &[(&str, &str)]) -> String {
    call(b, api, query, fields);
    b.wait_for(&format!("{api}'s result page"), 30, |b| {
        b.url().contains(&format!("/r/{kind}/"))
    });
    uuid_in_url(b)
}

/// Serves `file` once per connection on 127.0.0.1, in small pieces over about `secs` seconds.
fn slow_http(file: std::path::PathBuf, secs: u64) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let body = std::fs::read(&file).unwrap();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes());
            let pieces = 20;
            let chunk = body.len().div_ceil(pieces);
            for part in body.chunks(chunk.max(1)) {
                if conn.write_all(part).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(secs * 1000 / pieces as u64));
            }
        }
    });
    port
}

fn l3_wizard(
    b: &Browser,
    name: &str,
    l2: &str,
    range: Option<[&str; 4]>,
    cidr: Option<&str>,
    dns: &str,
    services: &[&str],
) -> String {
    b.goto(&format!("{BASE}/r/l3-networks"));
    b.click("#l3-wizard");
    b.find("#l3-form");
    // Step 1: network info.
    b.fill("#l3-name", name);
    b.choose("#l3-l2", l2);
    assert_eq!(
        b.find("#step-2").prop("hidden"),
        json!(true),
        "one step at a time"
    );
    b.click("#wizard-next");
    // Step 2: IP range, as a range or a CIDR.
    b.wait_for("the IP range step", 10, |b| {
        b.find("#step-2").prop("hidden") == json!(false)
    });
    if let Some([start, end, mask, gw]) = range {
        b.click("#mode-range");
        b.fill("#startIp", start);
        b.fill("#endIp", end);
        b.fill("#netmask", mask);
        b.fill("#gateway", gw);
    }
    if let Some(c) = cidr {
        b.click("#mode-cidr");
        b.fill("#networkCidr", c);
    }
    b.click("#wizard-next");
    // Step 3: DNS.
    b.wait_for("the DNS step", 10, |b| {
        b.find("#step-3").prop("hidden") == json!(false)
    });
    b.fill("#dnsDomain", dns);
    b.click("#wizard-next");
    // Step 4: network services of the Flat provider.
    b.wait_for("the services step", 10, |b| {
        b.find("#step-4").prop("hidden") == json!(false)
    });
    for s in services {
        b.click(&format!("#svc-Flat-{s}"));
    }
    b.click("#wizard-submit");
    b.wait_for("the new L3's page", 30, |b| {
        b.url().contains("/r/l3-networks/")
    });
    uuid_in_url(b)
}

fn vm_wizard(b: &Browser, name: &str, offering: &str, image: &str, l3: &str) -> String {
    b.goto(&format!("{BASE}/wizard/vm"));
    b.find("#vm-form");
    b.fill("#f-name", name);
    b.choose("#f-instanceOfferingUuid", offering);
    b.click("#wizard-next");
    b.choose("#f-imageUuid", image);
    b.click("#wizard-next");
    b.choose("#f-l3NetworkUuids", l3);
    b.click("#wizard-next");
    b.click("#wizard-next");
    b.fill("#f-rootPassword", "p4ssw0rd!");
    b.fill("#f-userData", "#cloud-config\nhostname: web\n");
    b.click("#wizard-submit");
    job_succeeds(b);
    b.click("#job-resource");
    b.wait_for("the VM's page", 30, |b| b.url().contains("/r/vms/"));
    uuid_in_url(b)
}

#[test]
#[ignore = "needs root, build/*.bin, chromium and chromium-driver: run by make test; installs on this host and removes it"]
fn a_cloud_built_in_the_browser() {
    let stack = install();
    let cli = &stack.cli;
    let out = output_dir(env!("CARGO_TARGET_TMPDIR"), "dashboard_cloud");
    let b = Browser::start(out.join("last-page.png"));
    log_in(&b, &stack.password);

    let zone = create(
        &b,
        "CreateZone",
        "zones",
        "",
        &[("name", "zone1"), ("description", "first zone")],
    );
    let cluster = create(
        &b,
        "CreateCluster",
        "clusters",
        "",
        &[
            ("name", "cluster1"),
            ("zoneUuid", &zone),
            ("hypervisorType", "Simulator"),
        ],
    );
    // Hosts from the cluster's page: its action form comes with the cluster chosen.
    for i in 1..=2 {
        b.goto(&format!("{BASE}/r/clusters/{cluster}"));
        b.click("#action-AddSimulatorHost");
        b.find("#call-form");
        assert_eq!(b.find("#f-clusterUuid").prop("value"), json!(cluster));
        set(&b, "name", &format!("sim{i}"));
        set(&b, "managementIp", &format!("192.0.2.{i}"));
        set(&b, "cpuCapacity", "8");
        set(&b, "memoryCapacity", "16G");
        b.click("#submit");
        job_succeeds(&b);
    }
    let hosts = cli.list(&["QueryHost", &format!("clusterUuid={cluster}")]);
    assert_eq!(hosts.len(), 2);
    assert!(
        hosts.iter().all(|h| h["status"] == "Connected"),
        "{hosts:?}"
    );

    let ps = create(
        &b,
        "AddSharedMountPointPrimaryStorage",
        "primary-storage",
        "",
        &[("name", "smp1"), ("url", "/zstack_ps"), ("zoneUuid", &zone)],
    );
    b.click("#action-AttachPrimaryStorageToCluster");
    set(&b, "clusterUuid", &cluster);
    b.click("#submit");
    job_succeeds(&b);
    assert_eq!(
        cli.list(&["QueryPrimaryStorage", &format!("uuid={ps}")])[0]["attachedClusterUuids"],
        json!([cluster])
    );

    let bs_dir = tempfile::tempdir().unwrap();
    // The management node runs as the user zstack: its backup storage directory is its own.
    give_to_server_user(&bs_dir.path().join("bs"));
    let bs = create(
        &b,
        "AddLocalBackupStorage",
        "backup-storage",
        "",
        &[
            ("name", "bs1"),
            ("url", &bs_dir.path().join("bs").display().to_string()),
        ],
    );
    b.click("#action-AttachBackupStorageToZone");
    set(&b, "zoneUuid", &zone);
    b.click("#submit");
    b.wait_for("back on the backup storage", 30, |b| {
        b.url().ends_with(&format!("/r/backup-storage/{bs}"))
    });

    // A slow AddImage: its page follows the job live, without a reload.
    let src = tempfile::tempdir().unwrap();
    let file = qcow2(src.path(), "1G");
    let port = slow_http(file.clone(), 6);
    b.click("#action-AddImage");
    b.find("#call-form");
    set(&b, "name", "debian");
    set(&b, "url", &format!("http://127.0.0.1:{port}/guest.qcow2"));
    set(&b, "format", "qcow2");
    b.click("#submit");
    b.wait_for("the AddImage job page", 30, |b| b.url().contains("/jobs/"));
    assert!(
        b.text("#job-state").starts_with("Running"),
        "{}",
        b.source()
    );
    b.js("window.notReloaded = true", json!([]));
    job_succeeds(&b);
    assert_eq!(
        b.js("return window.notReloaded === true", json!([])),
        json!(true),
        "the job page must follow the job without reloading"
    );
    b.click("#job-resource");
    b.wait_for("the image page", 30, |b| b.url().contains("/r/images/"));
    let image = uuid_in_url(&b);
    assert_eq!(b.text("#field-status"), "Ready");
    assert_eq!(
        cli.list(&["QueryImage", &format!("uuid={image}")])[0]["sha256Sum"],
        sha256_hex(&file)
    );

    let offering = create(
        &b,
        "CreateInstanceOffering",
        "instance-offerings",
        "",
        &[("name", "small"), ("cpuNum", "1"), ("memorySize", "1G")],
    );

    let mut l2s = Vec::new();
    for (name, iface) in [("private-l2", "eth0"), ("public-l2", "eth1")] {
        let l2 = create(
            &b,
            "CreateL2NoVlanNetwork",
            "l2-networks",
            "",
            &[
                ("name", name),
                ("zoneUuid", &zone),
                ("physicalInterface", iface),
            ],
        );
        b.click("#action-AttachL2NetworkToCluster");
        set(&b, "clusterUuid", &cluster);
        b.click("#submit");
        b.wait_for("back on the L2", 30, |b| {
            b.url().ends_with(&format!("/r/l2-networks/{l2}"))
        });
        l2s.push(l2);
    }

    // The L3 wizard: info -> range -> DNS -> the Flat provider's DHCP, Userdata, EIP.
    let private = l3_wizard(
        &b,
        "private",
        &l2s[0],
        Some(["10.10.0.10", "10.10.0.100", "255.255.0.0", "10.10.0.1"]),
        None,
        "cloud.example",
        &["DHCP", "Userdata", "Eip"],
    );
    let l3 = &cli.list(&["QueryL3Network", &format!("uuid={private}")])[0];
    assert_eq!(l3["dnsDomain"], "cloud.example");
    assert_eq!(l3["ipRanges"][0]["startIp"], "10.10.0.10");
    let services: Vec<&str> = l3["networkServices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["networkServiceType"].as_str().unwrap())
        .collect();
    for s in ["DHCP", "Userdata", "Eip"] {
        assert!(services.contains(&s), "{l3}");
    }
    // The public one from a CIDR.
    let public = l3_wizard(
        &b,
        "public",
        &l2s[1],
        None,
        Some("172.20.0.0/24"),
        "public.example",
        &[],
    );
    let l3 = &cli.list(&["QueryL3Network", &format!("uuid={public}")])[0];
    assert_eq!(
        (
            &l3["ipRanges"][0]["startIp"],
            &l3["ipRanges"][0]["endIp"],
            &l3["ipRanges"][0]["gateway"]
        ),
        (
            &json!("172.20.0.1"),
            &json!("172.20.0.254"),
            &json!("172.20.0.1")
        ),
        "{l3}"
    );
    // A refused CIDR: the wizard says why and makes nothing.
    b.goto(&format!("{BASE}/wizard/l3"));
    b.fill("#l3-name", "bad");
    b.click("#wizard-next");
    b.click("#mode-cidr");
    b.fill("#networkCidr", "172.30.0.1/24");
    b.click("#wizard-next");
    b.click("#wizard-next");
    b.click("#wizard-submit");
    assert!(b.text("#api-error").contains("host bits"), "{}", b.source());
    assert!(cli.list(&["QueryL3Network", "name=bad"]).is_empty());

    let vm1 = vm_wizard(&b, "vm1", &offering, &image, &private);
    let vm2 = vm_wizard(&b, "vm2", &offering, &image, &private);
    assert_eq!(b.text("#field-state"), "Running");
    let nic_ip = b.text("#table-vmNics");
    let vm = &cli.list(&["QueryVmInstance", &format!("uuid={vm2}")])[0];
    assert!(
        nic_ip.contains(vm["vmNics"][0]["ip"].as_str().unwrap()),
        "{nic_ip}"
    );

    // An EIP: a VIP on the public L3, an EIP on it, attached to vm1's NIC from the VM's page.
    b.goto(&format!("{BASE}/r/l3-networks/{public}"));
    b.click("#action-CreateVip");
    set(&b, "name", "vip1");
    b.click("#submit");
    b.wait_for("the VIP's page", 30, |b| b.url().contains("/r/vips/"));
    let vip = uuid_in_url(&b);
    b.click("#action-CreateEip");
    set(&b, "name", "eip1");
    b.click("#submit");
    job_succeeds(&b);
    let eip = cli.list(&["QueryEip", "name=eip1"])[0]["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    b.goto(&format!("{BASE}/r/vms/{vm1}"));
    b.click("#nic-attach-eip-1");
    set(&b, "eipUuid", &eip);
    b.click("#submit");
    job_succeeds(&b);
    let nic1 =
        cli.list(&["QueryVmInstance", &format!("uuid={vm1}")])[0]["vmNics"][0]["uuid"].clone();
    let e = &cli.list(&["QueryEip", &format!("uuid={eip}")])[0];
    assert_eq!(e["vmNicUuid"], nic1, "{e}");
    assert_eq!(e["vipUuid"], json!(vip));
    b.goto(&format!("{BASE}/r/vms/{vm1}"));
    assert!(
        b.text("#related-eips").contains("eip1"),
        "the VM's page shows its EIP"
    );

    // Global configuration: cacheMode is a choice; a refused value shows the API's message.
    b.goto(&format!("{BASE}/config"));
    let options: Vec<String> = b
        .all("#cfg-kvm-vm-cacheMode-value option")
        .iter()
        .map(|o| o.text())
        .collect();
    assert_eq!(options, ["none", "writethrough", "writeback"]);
    b.choose("#cfg-kvm-vm-cacheMode-value", "writethrough");
    b.click("#cfg-kvm-vm-cacheMode-save");
    b.find("#cfg-kvm-vm-cacheMode-saved");
    let cache = |cli: &Cli| {
        cli.list(&["QueryGlobalConfig", "category=kvm", "name=vm.cacheMode"])[0]["value"].clone()
    };
    assert_eq!(cache(cli), "writethrough");
    // A value the choice does not offer, posted anyway, is refused by the API, next to the field.
    b.js(
        "document.querySelector('#cfg-kvm-vm-cacheMode-value option').value = 'bogus';\
         document.querySelector('#cfg-kvm-vm-cacheMode-value').selectedIndex = 0;",
        json!([]),
    );
    b.click("#cfg-kvm-vm-cacheMode-save");
    let refused = b.text("#cfg-kvm-vm-cacheMode-error");
    let api_says = cli.err(&[
        "UpdateGlobalConfig",
        "category=kvm",
        "name=vm.cacheMode",
        "value=bogus",
    ]);
    assert!(
        refused.contains(api_says["code"].as_str().unwrap()),
        "{refused}"
    );
    assert!(
        refused.contains(api_says["message"].as_str().unwrap()),
        "{refused} / {api_says}"
    );
    assert_eq!(cache(cli), "writethrough", "nothing changed");
    b.fill("#cfg-identity-session-timeout-value", "soon");
    b.click("#cfg-identity-session-timeout-save");
    assert!(
        b.text("#cfg-identity-session-timeout-error")
            .contains("INVALID_ARGUMENT"),
        "{}",
        b.source()
    );

    // Lists: server-side sorting, filtering and paging.
    b.goto(&format!("{BASE}/r/vms?sort=name&dir=desc"));
    assert_eq!(b.all("#list tbody tr a.name")[0].text(), "vm2");
    b.click("#sort-name");
    b.wait_for("sorted ascending", 10, |b| {
        b.url().contains("dir=desc")
            || b.all("#list tbody tr a.name").first().map(|e| e.text()) == Some("vm1".into())
    });
    b.fill("#q", &format!("name=vm1{ENTER}"));
    b.wait_for("the filtered list", 10, |b| b.text("#total") == "1");
    b.goto(&format!("{BASE}/r/vms?limit=1"));
    assert_eq!(b.text("#total"), "2");
    assert_eq!(b.all("#list tbody tr").len(), 1);
    b.click("#next");
    b.wait_for("the second page", 10, |b| b.url().contains("start=1"));
    assert_eq!(b.all("#list tbody tr a.name")[0].text(), "vm2");
    b.fill("#q", &format!("nonsense{ENTER}"));
    assert!(b.text("#api-error").contains("not a condition"));

    // An API refusal shows its code and message: a zone that still has a cluster.
    let api_says = cli.err(&["DeleteZone", &format!("uuid={zone}")]);
    b.goto(&format!("{BASE}/r/zones/{zone}"));
    b.click("#action-DeleteZone");
    b.click("#submit");
    assert_eq!(
        b.text("#api-error .code"),
        api_says["code"].as_str().unwrap()
    );
    assert_eq!(
        b.text("#api-error .message"),
        api_says["message"].as_str().unwrap()
    );

    // The overview counts what was made, and lists the jobs.
    b.goto(&format!("{BASE}/"));
    assert_eq!(b.text("#count-vms"), "2");
    assert_eq!(b.text("#count-hosts"), "2");
    assert_eq!(b.text("#count-running-vms"), "2");
    b.wait_for("the jobs on the overview", 20, |b| {
        b.text("#overview-jobs").contains("CreateVmInstance")
    });

    // The VM's page shows its console log as text (a simulator host's own lines, labelled as
    // such), the same the API answers, and the script follows it: emptied and set back to
    // offset 0, the page fetches the log again and appends it.
    let booted = format!("VM {vm1} booted (simulated)");
    b.goto(&format!("{BASE}/r/vms/{vm1}"));
    assert!(b.text("#console-log-text").contains(&booted));
    assert!(b
        .text("#console-log-source")
        .contains("a simulator host runs no guest"));
    let api_log = cli.inv(&["GetVmConsoleLog", &format!("uuid={vm1}")]);
    assert_eq!(
        b.text("#console-log-text").trim(),
        api_log["text"].as_str().unwrap().trim()
    );
    b.js(
        "const el = document.querySelector('[data-console-log]');\
         el.querySelector('pre').textContent = ''; el.dataset.offset = '0';",
        json!([]),
    );
    assert!(!b.text("#console-log-text").contains(&booted));
    b.wait_for("the console log fetched again by the page", 10, |b| {
        b.text("#console-log-text").contains(&booted)
    });
    std::fs::write(out.join("vm-console-log.png"), b.screenshot_png()).unwrap();

    // A VM on no host (stopped, then its host deleted) has no console log: its page says so.
    let sim3 = cli.uuid(&[
        "AddSimulatorHost",
        "name=sim3",
        "managementIp=192.0.2.3",
        &format!("clusterUuid={cluster}"),
        "cpuCapacity=8",
        "memoryCapacity=16G",
    ]);
    let vm3 = cli.uuid(&[
        "CreateVmInstance",
        "name=vm3",
        &format!("instanceOfferingUuid={offering}"),
        &format!("imageUuid={image}"),
        &format!("l3NetworkUuids={private}"),
        &format!("hostUuid={sim3}"),
    ]);
    cli.ok(&["StopVmInstance", &format!("uuid={vm3}"), "type=cold"]);
    cli.ok(&["DeleteHost", &format!("uuid={sim3}")]);
    b.goto(&format!("{BASE}/r/vms/{vm3}"));
    assert!(
        b.text("#console-log-note").contains("is on no host"),
        "{}",
        b.text("#console-log")
    );
    assert!(b.all("#console-log-text").is_empty());
}

fn session_cookie(b: &Browser) -> Value {
    b.js_async(
        "const done = arguments[arguments.length - 1]; done(document.cookie)",
        json!([]),
    )
}

#[test]
#[ignore = "needs root, build/*.bin, chromium and chromium-driver: run by make test; installs on this host and removes it"]
fn sessions_csrf_escaping_and_a_phone_screen() {
    let stack = install();
    let cli = &stack.cli;
    let out = output_dir(env!("CARGO_TARGET_TMPDIR"), "dashboard_sessions");
    let b = Browser::start(out.join("last-page.png"));

    // zstack-ctl status says where the dashboard is.
    let status = ok(std::process::Command::new("zstack-ctl").arg("status"));
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("dashboard:") && l.ends_with(BASE)),
        "{status}"
    );

    // Every page but the login page needs a session.
    b.goto(&format!("{BASE}/r/zones"));
    b.find("#login-form");
    assert!(b.url().contains("/login?next=%2Fr%2Fzones"), "{}", b.url());
    // A wrong password: the API's refusal, with its code.
    b.fill("#password", &format!("wrong{ENTER}"));
    assert!(!b.text("#api-error .code").is_empty());
    log_in(&b, &stack.password);

    // The pages' headers: a CSP allowing only this origin, the cookie out of scripts' reach.
    let r = ureq::get(&format!("{BASE}/login")).call().unwrap();
    let csp = r.header("content-security-policy").unwrap().to_string();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    let cookie = session_cookie(&b);
    assert!(
        !cookie.as_str().unwrap().contains("zstack_session"),
        "HttpOnly: {cookie}"
    );

    // A name that is markup is shown as those characters.
    let xss = "<img src=x onerror=alert(1)>";
    call(&b, "CreateZone", "", &[("name", xss), ("description", xss)]);
    b.wait_for("the zone's page", 30, |b| b.url().contains("/r/zones/"));
    assert_eq!(b.text("#resource-name"), xss);
    assert_eq!(b.text("#field-description"), xss);
    for page in ["/r/zones", "/", "/r/zones?q=name~=%25img%25"] {
        b.goto(&format!("{BASE}{page}"));
        b.find("main");
        assert_eq!(
            b.js("return document.images.length", json!([])),
            json!(0),
            "{page}"
        );
    }
    assert!(b.text("#list").contains(xss));

    // A change without the CSRF token (or with another's) is refused, and changes nothing.
    for body in ["name=no-token", "name=no-token&csrf=00ff"] {
        let answer = b.js_async(
            "const done = arguments[arguments.length - 1];\
             fetch('/call/CreateZone', {method: 'POST', credentials: 'same-origin',\
               headers: {'Content-Type': 'application/x-www-form-urlencoded'}, body: arguments[0]})\
             .then(r => r.text().then(t => done([r.status, t])))",
            json!([body]),
        );
        assert_eq!(answer[0], 403, "{answer}");
        assert!(answer[1].as_str().unwrap().contains("CSRF_TOKEN_INVALID"));
    }
    assert!(cli.list(&["QueryZone", "name=no-token"]).is_empty());

    // A phone's width: nothing wider than the screen, every input labelled.
    b.set_window(390, 844);
    for page in ["/", "/r/zones", "/wizard/l3", "/config"] {
        b.goto(&format!("{BASE}{page}"));
        b.find("main");
        let overflow = b.js(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth",
            json!([]),
        );
        assert!(
            overflow.as_i64().unwrap() <= 0,
            "{page} is wider than a phone: {overflow}"
        );
        let unlabelled = b.js(
            "return Array.from(document.querySelectorAll('input:not([type=hidden]), select, textarea'))\
               .filter(e => !(e.labels && e.labels.length) && !e.closest('label')).map(e => e.name)",
            json!([]),
        );
        assert_eq!(unlabelled, json!([]), "{page}");
    }
    std::fs::write(out.join("phone-config.png"), b.screenshot_png()).unwrap();
    b.set_window(1366, 900);

    // Logout ends the API session too; then every page needs a login again.
    b.goto(&format!("{BASE}/r/zones"));
    b.click("#logout");
    b.find("#login-form");
    assert!(b.text(".notice").contains("logged out"));
    b.goto(&format!("{BASE}/r/zones"));
    b.find("#login-form");
    assert!(b.url().contains("/login"));

    // A session that ends elsewhere (expired, or logged out from zstack-cli) sends the browser
    // to the login page, which says so.
    log_in(&b, &stack.password);
    // WebDriver can read the HttpOnly cookie the page's scripts cannot.
    let session = b.cookie("zstack_session");
    // A session ends only itself: LogOut is sent with that session.
    ureq::post("http://127.0.0.1:8080/v1/api/LogOut")
        .set("Authorization", &format!("OAuth {session}"))
        .send_json(serde_json::json!({}))
        .expect("LogOut with its own session");
    b.goto(&format!("{BASE}/r/vms"));
    b.find("#login-form");
    assert!(b.url().contains("expired=1"), "{}", b.url());
    assert!(b.text(".notice").contains("session has ended"));
}

//! EIPs on one host at scale (run by `make bench` through scripts/bench-eip.sh, as root): applies
//! `--count` EIPs with `zstack_kvmagent::eip::apply` and the real tools, one after the other, then
//! removes them. No VM is needed: an EIP's namespace, veths and rules do not depend on the VM
//! running.
//!
//! The duplicate-address probe (`arping -D`) waits a fixed second whenever nobody answers, which
//! would hide what the rest costs and make the run last 17 minutes: it runs for real on the 1st,
//! 100th and last EIP (and is reported apart), and answers "free" at once for the others.
//!
//! Prints `<figure> <milliseconds>` lines: `apply.<n>`, `dad.<n>`, `apply.first10` and
//! `apply.last10` (medians: one apply is a noisy sample), `apply.total` (without the probes'
//! waits), `remove.<n>`, `remove.total`.
#![allow(clippy::unwrap_used)] // a benchmark: a panic is a failed run

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use zstack_common::agent_proto::{EipSpec, NicSpec};
use zstack_common::templates::Templates;
use zstack_kvmagent::eip;
use zstack_kvmagent::host::{HostError, HostTools, SystemTools};

/// The real tools; `arping` runs only when `real_arping` is set, and its time is kept apart.
struct BenchTools {
    real_arping: bool,
    arping: Mutex<Duration>,
}

impl HostTools for BenchTools {
    fn run(&self, program: &str, args: &[&str]) -> Result<String, HostError> {
        if !args.contains(&"arping") {
            return SystemTools.run(program, args);
        }
        if !self.real_arping {
            return Ok(String::new());
        }
        let t = Instant::now();
        let r = SystemTools.run(program, args);
        *self.arping.lock().unwrap() += t.elapsed();
        r
    }
}

fn spec(i: usize, public: &str, private: &str) -> EipSpec {
    let (hi, lo) = (1 + i / 250, 1 + i % 250);
    EipSpec {
        eip_uuid: format!("e1b{i:08x}{}", "0".repeat(21)),
        vip_uuid: format!("5eb{i:08x}{}", "0".repeat(21)),
        vip_ip: format!("172.30.{hi}.{lo}"),
        vip_netmask: "255.255.0.0".into(),
        vip_gateway: "172.30.0.1".into(),
        public_interface: public.into(),
        vm_uuid: format!("a0b{i:08x}{}", "0".repeat(21)),
        nic: NicSpec {
            uuid: format!("b{i:07x}{}", "0".repeat(24)),
            l3_network_uuid: "e3b00000000000000000000000000001".into(),
            mac: format!("02:5b:00:00:{:02x}:{:02x}", i / 256, i % 256),
            ip: format!("10.30.{hi}.{lo}"),
            netmask: "255.255.0.0".into(),
            gateway: "10.30.0.1".into(),
            device_id: 0,
            physical_interface: private.into(),
            services: vec!["Eip".into()],
            dns_domain: None,
            dhcp_server_ip: None,
        },
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn median(of: &[Duration]) -> Duration {
    let mut v = of.to_vec();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn main() {
    let mut count = 1000usize;
    let mut templates = PathBuf::from("templates");
    let mut public = "zsbpub".to_string();
    let mut private = "zsbprv".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().expect("a value after each option");
        match a.as_str() {
            "--count" => count = value().parse().expect("--count N"),
            "--templates" => templates = value().into(),
            "--public" => public = value(),
            "--private" => private = value(),
            other => panic!("unknown option {other}"),
        }
    }
    let templates = Templates::load(&templates).unwrap();
    let watched = |i: usize| i == 0 || i == 99 || i + 1 == count;
    let specs: Vec<EipSpec> = (0..count).map(|i| spec(i, &public, &private)).collect();

    let mut applied = 0;
    let mut times = Vec::with_capacity(count);
    let mut failure = None;
    for (i, s) in specs.iter().enumerate() {
        let tools = BenchTools {
            real_arping: watched(i),
            arping: Mutex::new(Duration::ZERO),
        };
        let t = Instant::now();
        let r = eip::apply(&tools, &templates, s);
        let spent = t.elapsed();
        if let Err(e) = r {
            failure = Some(format!("apply #{}: {e}", i + 1));
            break;
        }
        applied += 1;
        let dad = *tools.arping.lock().unwrap();
        times.push(spent - dad);
        if watched(i) {
            println!("apply.{} {}", i + 1, ms(spent - dad));
            println!("dad.{} {}", i + 1, ms(dad));
        }
    }
    if failure.is_none() {
        println!("apply.first10 {}", ms(median(&times[..count.min(10)])));
        println!(
            "apply.last10 {}",
            ms(median(&times[count.saturating_sub(10)..]))
        );
        println!("apply.total {}", ms(times.iter().sum()));
    }

    let mut total = Duration::ZERO;
    for (i, s) in specs.iter().take(applied).enumerate() {
        let t = Instant::now();
        let r = eip::remove(&SystemTools, &templates, s);
        let spent = t.elapsed();
        total += spent;
        if let Err(e) = r {
            failure.get_or_insert(format!("remove #{}: {e}", i + 1));
        }
        if watched(i) {
            println!("remove.{} {}", i + 1, ms(spent));
        }
    }
    if let Some(f) = failure {
        eprintln!("{f}");
        std::process::exit(1);
    }
    println!("remove.total {}", ms(total));
}

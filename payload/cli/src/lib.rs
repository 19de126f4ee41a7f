//! `zstack-cli [-H host] [-p port] Cmd key=value ...`: sends one API call to the management node
//! and prints the JSON result.

use anyhow::{bail, Context};
use serde_json::{Map, Value};

struct Invocation {
    host: String,
    port: u16,
    command: String,
    params: Map<String, Value>,
}

fn parse(args: &[String]) -> anyhow::Result<Option<Invocation>> {
    let mut host = "127.0.0.1".to_string();
    let mut port = 8080u16;
    let mut it = args.iter().peekable();
    let mut command = None;
    let mut params = Map::new();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-h" | "--help" => return Ok(None),
            "-H" | "--host" => host = it.next().context("-H needs a host")?.clone(),
            "-p" | "--port" => {
                let p = it.next().context("-p needs a port")?;
                port = p
                    .parse()
                    .with_context(|| format!("-p {p}: not a port number"))?;
            }
            s if s.starts_with('-') && command.is_none() => {
                bail!("unknown option {s}; see zstack-cli -h")
            }
            s if command.is_none() => command = Some(s.to_string()),
            s => {
                let (k, v) = s
                    .split_once('=')
                    .with_context(|| format!("{s:?}: parameters are key=value"))?;
                params.insert(k.to_string(), Value::String(v.to_string()));
            }
        }
    }
    let command = command.context("no command given; see zstack-cli -h")?;
    Ok(Some(Invocation {
        host,
        port,
        command,
        params,
    }))
}

const USAGE: &str = "usage: zstack-cli [-H host] [-p port] Command key=value ...\n\
    Sends Command to the ZStack management node's API and prints the JSON result.";

/// Entry point of `zstack-cli`; returns the exit code.
pub fn main_with_args(args: Vec<String>) -> i32 {
    let inv = match parse(&args) {
        Ok(Some(i)) => i,
        Ok(None) => {
            println!("{USAGE}");
            return 0;
        }
        Err(e) => {
            eprintln!("zstack-cli: {e:#}\n{USAGE}");
            return 2;
        }
    };
    let url = format!("http://{}:{}/v1/api/{}", inv.host, inv.port, inv.command);
    match ureq::post(&url).send_json(Value::Object(inv.params)) {
        Ok(resp) => match resp.into_json::<Value>() {
            Ok(v) => {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                0
            }
            Err(e) => {
                eprintln!(
                    "zstack-cli: the management node answered something that is not JSON: {e}"
                );
                1
            }
        },
        Err(ureq::Error::Status(_, resp)) => {
            let body = resp.into_string().unwrap_or_default();
            println!("{}", body.trim());
            1
        }
        Err(e) => {
            eprintln!("zstack-cli: cannot reach the management node at {url}: {e}");
            1
        }
    }
}

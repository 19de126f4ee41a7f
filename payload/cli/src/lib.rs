//! `zstack-cli [-H host] [-p port] Cmd key=value ...`: the original's syntax. Sends one API call
//! to the management node and prints the JSON result.
//!
//! - `LogInByAccount accountName=admin password=...` keeps the session in
//!   `~/.zstack/cli/session` (0600); later calls send it; `LogOut` removes it.
//! - `Query*` calls take conditions with the original's operators: `name=vm1`, `state!=Running`,
//!   `cpuNum>=2`, `name~=web%`, `uuid?=a,b`, and `fields=a,b`, `limit=N`, `start=N`.

use std::path::PathBuf;

use anyhow::{bail, Context};
use serde_json::{json, Map, Value};

struct Invocation {
    host: String,
    port: u16,
    command: String,
    params: Map<String, Value>,
}

/// The operators, longest first so `!?=` is not read as `?=`.
const OPS: &[&str] = &["!?=", "!~=", "?=", "~=", ">=", "<=", "!=", ">", "<", "="];

/// Splits `key<op>value` at its operator.
fn split_condition(arg: &str) -> Option<(&str, &str, &str)> {
    let at = arg.find(|c: char| "!?~<>=".contains(c))?;
    let (key, rest) = arg.split_at(at);
    let op = OPS.iter().find(|op| rest.starts_with(**op))?;
    Some((key, op, &rest[op.len()..]))
}

fn parse(args: &[String]) -> anyhow::Result<Option<Invocation>> {
    let mut host = std::env::var("ZSTACK_CLI_HOST").unwrap_or_else(|_| "127.0.0.1".to_string());
    let mut port = 8080u16;
    let mut it = args.iter();
    let mut command = None;
    let mut params = Map::new();
    let mut conditions = Vec::new();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-h" | "--help" if command.is_none() => return Ok(None),
            "-H" | "--host" if command.is_none() => {
                host = it.next().context("-H needs a host")?.clone()
            }
            "-p" | "--port" if command.is_none() => {
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
                let is_query = command.as_deref().is_some_and(|c| c.starts_with("Query"));
                let (k, op, v) = split_condition(s)
                    .with_context(|| format!("{s:?}: parameters are key=value"))?;
                if k.is_empty() {
                    bail!("{s:?}: a parameter needs a name before {op}");
                }
                if is_query && !matches!(k, "fields" | "limit" | "start") {
                    conditions.push(json!({"name": k, "op": op, "value": v}));
                } else if op != "=" {
                    bail!("{s:?}: only queries take operators other than =");
                } else if k == "fields" {
                    params.insert(
                        k.into(),
                        Value::Array(v.split(',').map(|f| Value::String(f.into())).collect()),
                    );
                } else {
                    params.insert(k.into(), Value::String(v.into()));
                }
            }
        }
    }
    let command = command.context("no command given; see zstack-cli -h")?;
    if command.starts_with("Query") {
        params.insert("conditions".into(), Value::Array(conditions));
    }
    Ok(Some(Invocation {
        host,
        port,
        command,
        params,
    }))
}

const USAGE: &str = "usage: zstack-cli [-H host] [-p port] Command key=value ...\n\
    Sends Command to the ZStack management node's API and prints the JSON result.\n\
    Log in first: zstack-cli LogInByAccount accountName=admin password=...\n\
    Queries: QueryZone name=zone1 | state!=Enabled | name~=web% | uuid?=a,b | fields=uuid,name limit=10";

fn session_file() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".zstack/cli/session")
}

fn save_session(uuid: &str) -> anyhow::Result<()> {
    let f = session_file();
    if let Some(dir) = f.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    zstack_common::fsutil::atomic_write(&f, uuid.as_bytes(), 0o600)
        .with_context(|| format!("cannot write {}", f.display()))
}

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
    let mut req = ureq::post(&url);
    if let Ok(s) = std::fs::read_to_string(session_file()) {
        req = req.set("Authorization", &format!("OAuth {}", s.trim()));
    }
    let (code, body) = match req.send_json(Value::Object(inv.params)) {
        Ok(resp) => (0, resp.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(_, resp)) => (1, resp.into_string().unwrap_or_default()),
        Err(e) => {
            eprintln!("zstack-cli: cannot reach the management node at {url}: {e}");
            return 1;
        }
    };
    let value: Value = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(_) => {
            eprintln!(
                "zstack-cli: the management node answered something that is not JSON: {}",
                body.trim()
            );
            return 1;
        }
    };
    if code == 0 {
        match inv.command.as_str() {
            "LogInByAccount" => {
                if let Some(uuid) = value["inventory"]["uuid"].as_str() {
                    if let Err(e) = save_session(uuid) {
                        eprintln!("zstack-cli: {e:#}");
                        return 1;
                    }
                }
            }
            "LogOut" => {
                let _ = std::fs::remove_file(session_file());
            }
            _ => {}
        }
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&value).unwrap_or_default()
    );
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_with_every_operator() {
        assert_eq!(split_condition("name=vm1"), Some(("name", "=", "vm1")));
        assert_eq!(
            split_condition("state!=Running"),
            Some(("state", "!=", "Running"))
        );
        assert_eq!(split_condition("cpuNum>=2"), Some(("cpuNum", ">=", "2")));
        assert_eq!(split_condition("name~=web%"), Some(("name", "~=", "web%")));
        assert_eq!(split_condition("uuid?=a,b"), Some(("uuid", "?=", "a,b")));
        assert_eq!(split_condition("uuid!?=a"), Some(("uuid", "!?=", "a")));
        assert_eq!(split_condition("x=a=b"), Some(("x", "=", "a=b")));
        assert_eq!(split_condition("novalue"), None);
    }

    #[test]
    fn a_query_becomes_conditions() {
        let args: Vec<String> = [
            "QueryZone",
            "name~=z%",
            "state!=Disabled",
            "fields=uuid,name",
            "limit=2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let inv = parse(&args).unwrap().unwrap();
        assert_eq!(inv.params["conditions"].as_array().unwrap().len(), 2);
        assert_eq!(inv.params["fields"], json!(["uuid", "name"]));
        assert_eq!(inv.params["limit"], "2");
        let bad: Vec<String> = ["CreateZone", "name!=x"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(parse(&bad).is_err());
    }
}

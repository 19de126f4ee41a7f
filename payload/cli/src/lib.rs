//! `zstack-cli [-H host] [-p port] [--table|--json] [--no-wait] Cmd key=value ...`: the original's
//! syntax. Sends one API call to the management node and prints its result; with no command, a
//! shell runs the same commands line by line.
//!
//! - `LogInByAccount accountName=admin password=...` keeps the session in
//!   `~/.zstack/cli/session` (0600); later calls send it as `Authorization: OAuth <uuid>`;
//!   `LogOut` removes it.
//! - Values that are JSON objects or lists (`networkServices='{"<uuid>":["DHCP"]}'`) are sent as
//!   JSON, everything else as a string (lists as `l3NetworkUuids=a,b`).
//! - `Query*` calls take conditions with the original's operators: `name=vm1`, `state!=Running`,
//!   `cpuNum>=2`, `name~=web%`, `uuid?=a,b`, `hostUuid is null`, `hostUuid not null`, and
//!   `fields=a,b`, `limit=N`, `start=N`, `count=true` (`args.rs`).
//! - A long call answers HTTP 202 with a job; the cli long-polls `GET /v1/api-jobs/<uuid>?wait=30`
//!   until it ends and prints its result as a synchronous call would (`--no-wait`: the 202 body).
//! - `--table` prints inventories as a table (`table.rs`); errors are always JSON.
//! - Exit codes: 0 done, 1 refused by the server or not reachable, 2 a wrong command line.

mod args;
mod client;
mod shell;
mod table;

#[cfg(test)]
mod testserver;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Map, Value};

use crate::args::{Call, Flags};
use crate::client::{Client, Reply};

/// Seconds each job poll asks the server to hold the request (the server's limit is 60).
const JOB_WAIT: u64 = 30;

/// A poll that comes back sooner than this while the job still runs is followed by a pause, so
/// a server that does not hold the request is not asked in a tight loop.
const MIN_POLL_INTERVAL: Duration = Duration::from_secs(1);

const USAGE: &str = "\
usage: zstack-cli [-H host] [-p port] [--table|--json] [--no-wait] Command key=value ...
       zstack-cli [-H host] [-p port] [--table|--json] [--no-wait]     (interactive shell)

Sends Command to the ZStack management node's API (POST /v1/api/Command) and prints the result.

options (before the command):
  -H, --host HOST   management node (default 127.0.0.1, or $ZSTACK_CLI_HOST)
  -p, --port PORT   its API port (default 8080)
  --table           print inventories as a table: one row per inventory, a column per field
                    (lists and objects as JSON cut to 40 characters); other answers and errors
                    stay JSON
  --json            print the answer as JSON (the default)
  --no-wait         a call that runs as a job answers at once with {\"jobUuid\", \"location\"};
                    print that instead of waiting for the job to end
  -h, --help        this help

parameters:
  key=value         a value that is a JSON object or list ('{\"a\":[1]}', '[\"x\"]') is sent as
                    JSON; anything else as a string (lists as a,b,c)
  Query* calls take conditions: name=vm1  state!=Running  cpuNum>=2  cpuNum<8  name~=web%
                    name!~=web%  uuid?=a,b  uuid!?=a,b  hostUuid is null  hostUuid not null
                    and fields=uuid,name  limit=N  start=N  count=true

session:            LogInByAccount accountName=admin password=... keeps the session in
                    ~/.zstack/cli/session for the next calls; LogOut ends it

jobs:               a long call runs as a job; the cli waits for it (GET /v1/api-jobs/<uuid>)
                    and prints its result, or its error with exit code 1

shell:              without a command, zstack-cli reads commands line by line, with the same
                    options and output: quotes as in sh (name='my vm'), Tab completes command
                    and parameter names, history in ~/.zstack/cli/history; `help` lists the
                    API calls, `help Command` its parameters; `exit`, `quit` or Ctrl-D leave.
                    Lines can also be piped in: printf 'QueryZone\\n' | zstack-cli

exit codes:         0 done, 1 the call failed (the error is printed as JSON on stdout) or the
                    management node cannot be reached, 2 a wrong command line

examples:
  zstack-cli LogInByAccount accountName=admin password=password
  zstack-cli --table QueryZone name~=zone% fields=uuid,name,state limit=10
  zstack-cli QueryGlobalConfig category=kvm name=vm.cacheMode
  zstack-cli UpdateGlobalConfig category=kvm name=vm.cacheMode value=writethrough";

/// `~/.zstack/cli`: the session and the shell's history.
fn cli_dir() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".zstack/cli")
}

/// Entry point of `zstack-cli`; returns the exit code.
pub fn main_with_args(args: Vec<String>) -> i32 {
    let inv = match args::parse(&args, Flags::default()) {
        Ok(inv) => inv,
        Err(e) => {
            eprintln!("zstack-cli: {e:#}\nsee zstack-cli -h");
            return 2;
        }
    };
    if inv.help {
        println!("{USAGE}");
        return 0;
    }
    let host = inv
        .host
        .or_else(|| std::env::var("ZSTACK_CLI_HOST").ok())
        .unwrap_or_else(|| "127.0.0.1".to_string());
    let client = Client::new(&host, inv.port.unwrap_or(8080), &cli_dir());
    match inv.call {
        Some(call) => execute(&client, inv.flags, &call, &mut std::io::stdout()),
        None => shell::run(&client, inv.flags),
    }
}

/// How a call ended: what to print, and whether it succeeded.
enum Outcome {
    Success(Value),
    Failure(Value),
}

/// Runs one call, prints its answer to `out` and returns the exit code. The one-shot command
/// and every shell line come through here.
pub(crate) fn execute(client: &Client, flags: Flags, call: &Call, out: &mut dyn Write) -> i32 {
    let outcome = match run_call(client, flags, call) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("zstack-cli: {e:#}");
            return 1;
        }
    };
    match outcome {
        Outcome::Success(v) => {
            if let Err(e) = keep_session(client, call, &v) {
                eprintln!("zstack-cli: {e:#}");
                return 1;
            }
            print(out, &v, flags.table)
        }
        Outcome::Failure(v) => {
            // Scripts read errors as JSON whatever the output format.
            print(out, &v, false);
            1
        }
    }
}

fn run_call(client: &Client, flags: Flags, call: &Call) -> anyhow::Result<Outcome> {
    Ok(match client.call(call)? {
        Reply::Done(v) => Outcome::Success(v),
        Reply::Refused(v) => Outcome::Failure(v),
        Reply::Accepted(v) if flags.no_wait => Outcome::Success(v),
        Reply::Accepted(v) => wait_for_job(client, &v)?,
    })
}

/// Polls the job a 202 answer named until it ends.
fn wait_for_job(client: &Client, accepted: &Value) -> anyhow::Result<Outcome> {
    let uuid = accepted
        .get("jobUuid")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty() && u.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        .with_context(|| format!("the management node answered 202 without a job: {accepted}"))?;
    let location = accepted
        .get("location")
        .and_then(Value::as_str)
        .filter(|l| l.starts_with('/'))
        .map(str::to_string)
        .unwrap_or_else(|| format!("/v1/api-jobs/{uuid}"));
    if std::io::stderr().is_terminal() {
        eprintln!("waiting for job {uuid}...");
    }
    let mut shown: Vec<(String, String)> = Vec::new();
    loop {
        let asked = Instant::now();
        let answer = client
            .job(&location, JOB_WAIT)
            .with_context(|| format!("while waiting for job {uuid}"))?;
        let body = match answer {
            Reply::Refused(v) => return Ok(Outcome::Failure(v)),
            Reply::Done(v) | Reply::Accepted(v) => v,
        };
        let Some(job) = body.get("job") else {
            bail!("job {uuid}: the answer has no job: {body}");
        };
        show_new_steps(job, &mut shown);
        match job.get("state").and_then(Value::as_str) {
            Some("Succeeded") => {
                return Ok(Outcome::Success(match job.get("result") {
                    None | Some(Value::Null) => Value::Object(Map::new()),
                    Some(r) => r.clone(),
                }))
            }
            Some("Failed") => {
                let error = match job.get("error") {
                    None | Some(Value::Null) => json!({
                        "code": "JOB_FAILED",
                        "message": format!("job {uuid} failed"),
                    }),
                    Some(e) => e.clone(),
                };
                return Ok(Outcome::Failure(json!({ "error": error })));
            }
            Some(_) => {
                let took = asked.elapsed();
                if took < MIN_POLL_INTERVAL {
                    std::thread::sleep(MIN_POLL_INTERVAL - took);
                }
            }
            None => bail!("job {uuid}: the answer has no state: {body}"),
        }
    }
}

/// Prints (on stderr) each step of a job not printed yet, or that moved on since.
fn show_new_steps(job: &Value, shown: &mut Vec<(String, String)>) {
    let Some(steps) = job.get("steps").and_then(Value::as_array) else {
        return;
    };
    for step in steps {
        let text = |k: &str| {
            step.get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let (name, state) = (text("name"), text("state"));
        if shown.iter().any(|(n, s)| *n == name && *s == state) {
            continue;
        }
        let mark = match (state.as_str(), step.get("changed").and_then(Value::as_bool)) {
            ("Running", _) => "...",
            ("Failed", _) => "FAILED",
            (_, Some(true)) => "changed",
            _ => "ok",
        };
        eprintln!("  {name:<12} {mark:<8} {}", text("message"));
        shown.retain(|(n, _)| *n != name);
        shown.push((name, state));
    }
}

/// A login keeps its session for the next calls; a logout of this session forgets it.
fn keep_session(client: &Client, call: &Call, result: &Value) -> anyhow::Result<()> {
    match call.command.as_str() {
        "LogInByAccount" => {
            if let Some(uuid) = result.pointer("/inventory/uuid").and_then(Value::as_str) {
                client.save_session(uuid)?;
            }
        }
        "LogOut" => {
            let ended = call.params.get("sessionUuid").and_then(|v| v.as_str());
            if ended.is_none() || ended == client.session().as_deref() {
                client.clear_session();
            }
        }
        _ => {}
    }
    Ok(())
}

/// Prints an answer; returns the exit code (1 when stdout is gone).
fn print(out: &mut dyn Write, v: &Value, table: bool) -> i32 {
    let text = match table.then(|| table::render(v)).flatten() {
        Some(t) => t,
        // `{:#}` is serde_json's pretty form, in the server's key order.
        None => format!("{v:#}\n"),
    };
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("zstack-cli: cannot write the answer: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testserver::{Answer, TestServer};

    const JOB: &str = "0123456789abcdef0123456789abcdef";

    fn call(words: &[&str]) -> Call {
        let words: Vec<String> = words.iter().map(|s| s.to_string()).collect();
        args::parse(&words, Flags::default())
            .expect("parses")
            .call
            .expect("a command")
    }

    fn run(server: &TestServer, dir: &std::path::Path, flags: Flags, c: &Call) -> (i32, String) {
        let client = Client::new("127.0.0.1", server.port(), dir);
        let mut out = Vec::new();
        let code = execute(&client, flags, c, &mut out);
        (code, String::from_utf8_lossy(&out).into_owned())
    }

    fn job(state: &str, result: serde_json::Value, error: serde_json::Value) -> Answer {
        Answer::json(
            200,
            json!({"job": {
                "uuid": JOB, "apiName": "CreateVmInstance", "state": state,
                "result": result, "error": error,
                "createDate": "2024-01-01T00:00:00Z", "lastOpDate": "2024-01-01T00:00:01Z",
            }}),
        )
    }

    fn accepted() -> Answer {
        Answer::json(
            202,
            json!({"jobUuid": JOB, "location": format!("/v1/api-jobs/{JOB}")}),
        )
    }

    /// Answers are printed in the server's key order: this relies on the workspace enabling
    /// serde_json's `preserve_order` feature.
    #[test]
    fn answers_keep_the_servers_key_order() {
        let text = r#"{"uuid":"u","name":"n","a":[1,-2,3.5,true,null,{"z":1,"b":"x\"y"}]}"#;
        let v: Value = serde_json::from_str(text).expect("JSON");
        assert_eq!(v.to_string(), text);
        let mut out = Vec::new();
        assert_eq!(print(&mut out, &v, false), 0);
        let out = String::from_utf8(out).expect("UTF-8");
        assert!(
            out.starts_with("{\n  \"uuid\": \"u\",\n  \"name\": \"n\",\n  \"a\": [\n    1,\n"),
            "{out}"
        );
        assert!(
            out.ends_with("\n      \"b\": \"x\\\"y\"\n    }\n  ]\n}\n"),
            "{out}"
        );
        // A repeated key keeps its first place and its last value.
        let v: Value = serde_json::from_str(r#"{"b":1,"a":2,"b":3}"#).expect("JSON");
        assert_eq!(v.to_string(), r#"{"b":3,"a":2}"#);
    }

    #[test]
    fn a_job_is_waited_for_and_its_result_printed_as_a_synchronous_answer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let client = Client::new("127.0.0.1", 1, dir.path());
        client.save_session("s3ss10n").expect("session");
        let server = TestServer::start(vec![
            accepted(),
            job("Running", json!(null), json!(null)),
            Answer::raw(
                200,
                // Raw text: the result's key order must survive into the output.
                &format!(
                    r#"{{"job": {{"uuid": "{JOB}", "state": "Succeeded", "error": null,
                        "result": {{"inventory": {{"uuid": "vm1", "name": "web", "cpuNum": 2}}}}}}}}"#
                ),
            ),
        ]);
        let c = call(&["CreateVmInstance", "name=web", "l3NetworkUuids=a,b"]);
        let (code, out) = run(&server, dir.path(), Flags::default(), &c);
        let requests = server.finish();
        assert_eq!(code, 0, "{out}");
        assert_eq!(
            out,
            "{\n  \"inventory\": {\n    \"uuid\": \"vm1\",\n    \"name\": \"web\",\n    \"cpuNum\": 2\n  }\n}\n"
        );
        let lines: Vec<String> = requests.iter().map(|r| r.line.clone()).collect();
        assert_eq!(
            lines,
            [
                "POST /v1/api/CreateVmInstance HTTP/1.1".to_string(),
                format!("GET /v1/api-jobs/{JOB}?wait=30 HTTP/1.1"),
                format!("GET /v1/api-jobs/{JOB}?wait=30 HTTP/1.1"),
            ]
        );
        for r in &requests {
            assert_eq!(r.authorization.as_deref(), Some("OAuth s3ss10n"), "{r:?}");
        }
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&requests[0].body).expect("JSON body"),
            json!({"name": "web", "l3NetworkUuids": "a,b"})
        );
    }

    #[test]
    fn a_failed_job_prints_its_error_and_exits_1() {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = TestServer::start(vec![
            accepted(),
            job(
                "Failed",
                json!(null),
                json!({"code": "HOST_UNREACHABLE", "message": "host h1 is down"}),
            ),
        ]);
        let (code, out) = run(
            &server,
            dir.path(),
            Flags {
                no_wait: false,
                table: true,
            },
            &call(&["StartVmInstance", "uuid=vm1"]),
        );
        assert_eq!(server.finish().len(), 2);
        assert_eq!(code, 1);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&out).expect("JSON even with --table"),
            json!({"error": {"code": "HOST_UNREACHABLE", "message": "host h1 is down"}})
        );
    }

    #[test]
    fn no_wait_prints_the_job_and_does_not_poll() {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = TestServer::start(vec![accepted()]);
        let (code, out) = run(
            &server,
            dir.path(),
            Flags {
                no_wait: true,
                table: false,
            },
            &call(&["StartVmInstance", "uuid=vm1"]),
        );
        assert_eq!(server.finish().len(), 1);
        assert_eq!(code, 0);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&out).expect("JSON"),
            json!({"jobUuid": JOB, "location": format!("/v1/api-jobs/{JOB}")})
        );
    }

    #[test]
    fn http_errors_print_and_exit_1() {
        let dir = tempfile::tempdir().expect("tempdir");
        let refused = json!({"error": {
            "code": "UNKNOWN_API",
            "message": "no API call named QueryZon; did you mean QueryZone?",
            "field": null,
        }});
        let server = TestServer::start(vec![Answer::json(404, refused.clone())]);
        let (code, out) = run(&server, dir.path(), Flags::default(), &call(&["QueryZon"]));
        server.finish();
        assert_eq!(code, 1);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&out).expect("JSON"),
            refused
        );

        // A server that hangs up: exit 1, nothing on stdout.
        let server = TestServer::start(vec![Answer::hang_up()]);
        let (code, out) = run(&server, dir.path(), Flags::default(), &call(&["QueryZone"]));
        assert_eq!(server.finish().len(), 1);
        assert_eq!(code, 1);
        assert_eq!(out, "");
    }

    #[test]
    fn login_keeps_the_session_and_logout_forgets_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = TestServer::start(vec![
            Answer::json(
                200,
                json!({"inventory": {"uuid": "abc", "accountUuid": "acc", "expiredDate": "x"}}),
            ),
            Answer::json(200, json!({})),
        ]);
        let client = Client::new("127.0.0.1", server.port(), dir.path());
        let mut out = Vec::new();
        let login = call(&["LogInByAccount", "accountName=admin", "password=pw"]);
        assert_eq!(execute(&client, Flags::default(), &login, &mut out), 0);
        assert_eq!(client.session().as_deref(), Some("abc"));
        let f = dir.path().join("session");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&f)
                .expect("session file")
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        assert_eq!(
            execute(&client, Flags::default(), &call(&["LogOut"]), &mut out),
            0
        );
        let requests = server.finish();
        assert_eq!(requests[1].authorization.as_deref(), Some("OAuth abc"));
        assert_eq!(client.session(), None);
    }

    #[test]
    fn table_output_for_inventories() {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = TestServer::start(vec![
            Answer::raw(
                200,
                r#"{"inventories": [{"uuid": "z1", "name": "zone1"}, {"uuid": "z2", "name": "zone 2"}]}"#,
            ),
            Answer::json(200, json!({"total": 2})),
        ]);
        let table = Flags {
            no_wait: false,
            table: true,
        };
        let (code, out) = run(&server, dir.path(), table, &call(&["QueryZone"]));
        assert_eq!(code, 0);
        assert_eq!(out, "uuid  name\n----  ------\nz1    zone1\nz2    zone 2\n");
        let (code, out) = run(
            &server,
            dir.path(),
            table,
            &call(&["QueryZone", "count=true"]),
        );
        server.finish();
        assert_eq!(code, 0);
        assert_eq!(out, "{\n  \"total\": 2\n}\n");
    }
}

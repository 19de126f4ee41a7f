//! The command line: options before the command, then `key=value` parameters (conditions in
//! queries). The same parser reads the one-shot argv and every line of the shell, so a line
//! behaves exactly as the command would.

use anyhow::{bail, Context};
use serde_json::{json, Map, Value};

/// How the answer is handled; set by the options before the command.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags {
    /// Print the 202 body of an asynchronous call instead of waiting for the job.
    pub no_wait: bool,
    /// Print inventories as a table instead of JSON.
    pub table: bool,
}

/// One API call: its name and the JSON object sent as its body.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub command: String,
    pub params: Map<String, Value>,
}

/// A parsed command line. `call` is `None` when no command was given (the shell starts).
#[derive(Debug, Default)]
pub struct Invocation {
    pub help: bool,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub flags: Flags,
    pub call: Option<Call>,
}

/// Every option, for `--tabel`-style suggestions.
const OPTIONS: &[&str] = &[
    "-h",
    "--help",
    "-H",
    "--host",
    "-p",
    "--port",
    "--no-wait",
    "--table",
    "--json",
];

/// The options a shell line may start with (the connection is fixed when the shell starts).
pub const LINE_OPTIONS: &[&str] = &["--no-wait", "--table", "--json"];

/// Query parameters that are not conditions.
const QUERY_PARAMS: &[&str] = &["fields", "limit", "start", "count"];

/// The operators, longest first so `!?=` is not read as `?=`.
const OPS: &[&str] = &["!?=", "!~=", "?=", "~=", ">=", "<=", "!=", ">", "<", "="];

/// Splits `key<op>value` at its operator.
pub fn split_condition(arg: &str) -> Option<(&str, &str, &str)> {
    let at = arg.find(|c: char| "!?~<>=".contains(c))?;
    let (key, rest) = arg.split_at(at);
    let op = OPS.iter().find(|op| rest.starts_with(**op))?;
    Some((key, op, &rest[op.len()..]))
}

pub fn is_query(command: &str) -> bool {
    command.starts_with("Query")
}

/// A value that looks like a JSON object or list and parses as one is sent as that JSON (e.g.
/// `networkServices='{"<uuid>":["DHCP"]}'`); anything else is a string, which the server reads
/// for lists as comma-separated.
pub fn param_value(v: &str) -> Value {
    if v.starts_with('{') || v.starts_with('[') {
        if let Ok(json) = serde_json::from_str(v) {
            return json;
        }
    }
    Value::String(v.to_string())
}

/// Parses `[options] [Command key=value ...]`. `defaults` are the flags before any option (the
/// shell passes the ones it was started with).
pub fn parse(args: &[String], defaults: Flags) -> anyhow::Result<Invocation> {
    let mut inv = Invocation {
        flags: defaults,
        ..Invocation::default()
    };
    let mut it = args.iter().peekable();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-h" | "--help" => inv.help = true,
            "-H" | "--host" => inv.host = Some(it.next().context("-H needs a host")?.clone()),
            "-p" | "--port" => {
                let p = it.next().context("-p needs a port")?;
                inv.port = Some(
                    p.parse()
                        .with_context(|| format!("-p {p}: not a port number"))?,
                );
            }
            "--no-wait" => inv.flags.no_wait = true,
            "--table" => inv.flags.table = true,
            "--json" => inv.flags.table = false,
            s if s.starts_with('-') => bail!(
                "unknown option {s}; did you mean {}?",
                zstack_common::suggest::closest(s, OPTIONS.iter().copied())
            ),
            command => {
                let rest: Vec<&String> = it.collect();
                inv.call = Some(parse_call(command, &rest)?);
                break;
            }
        }
    }
    Ok(inv)
}

/// The parameters after the command name.
fn parse_call(command: &str, args: &[&String]) -> anyhow::Result<Call> {
    let query = is_query(command);
    let mut params = Map::new();
    let mut conditions = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let s = args[i].as_str();
        i += 1;
        if query {
            // `hostUuid is null` as three words, or as one quoted word.
            let next = (
                args.get(i).map(|a| a.as_str()),
                args.get(i + 1).map(|a| a.as_str()),
            );
            let null_op = match next {
                (Some(w @ ("is" | "not")), Some("null")) if split_condition(s).is_none() => {
                    i += 2;
                    Some((s, if w == "is" { "is null" } else { "not null" }))
                }
                _ => s
                    .strip_suffix(" is null")
                    .map(|k| (k, "is null"))
                    .or_else(|| s.strip_suffix(" not null").map(|k| (k, "not null")))
                    .map(|(k, op)| (k.trim(), op)),
            };
            if let Some((name, op)) = null_op {
                check_name(name, s)?;
                conditions.push(json!({"name": name, "op": op}));
                continue;
            }
        }
        if s.starts_with('-') && split_condition(s).is_none() {
            bail!("{s}: options go before the command (zstack-cli [options] {command} ...)");
        }
        let (k, op, v) = split_condition(s).with_context(|| {
            if query {
                format!("{s:?}: conditions are key<op>value (ops: = != > >= < <= ~= !~= ?= !?=) or `key is null` / `key not null`")
            } else {
                format!("{s:?}: parameters are key=value")
            }
        })?;
        check_name(k, s)?;
        if query && !QUERY_PARAMS.contains(&k) {
            // Condition values stay text: the server compares them as the query's operators
            // say (`?=` splits the list at commas), so JSON here would only garble them.
            conditions.push(json!({"name": k, "op": op, "value": v}));
            continue;
        }
        if op != "=" {
            bail!("{s:?}: only conditions of queries take operators other than =");
        }
        let value = match k {
            "fields" if query => match param_value(v) {
                list @ Value::Array(_) => list,
                _ => Value::Array(
                    v.split(',')
                        .filter(|f| !f.is_empty())
                        .map(|f| Value::String(f.into()))
                        .collect(),
                ),
            },
            "count" if query => match v {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => bail!("{s:?}: count is true or false"),
            },
            _ => param_value(v),
        };
        if params.insert(k.to_string(), value).is_some() {
            bail!("{k} is given twice");
        }
    }
    if query {
        params.insert("conditions".into(), Value::Array(conditions));
    }
    Ok(Call {
        command: command.to_string(),
        params,
    })
}

fn check_name(name: &str, arg: &str) -> anyhow::Result<()> {
    if name.is_empty() || name.contains(char::is_whitespace) {
        bail!("{arg:?}: a parameter needs a name (no spaces) before its operator");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    fn call(s: &[&str]) -> Call {
        parse(&words(s), Flags::default())
            .expect("parses")
            .call
            .expect("has a command")
    }

    fn fails(s: &[&str]) -> String {
        match parse(&words(s), Flags::default()) {
            Ok(inv) => panic!("{s:?} parsed: {inv:?}"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn conditions_with_every_operator() {
        assert_eq!(split_condition("name=vm1"), Some(("name", "=", "vm1")));
        assert_eq!(
            split_condition("state!=Running"),
            Some(("state", "!=", "Running"))
        );
        assert_eq!(split_condition("cpuNum>=2"), Some(("cpuNum", ">=", "2")));
        assert_eq!(split_condition("cpuNum<2"), Some(("cpuNum", "<", "2")));
        assert_eq!(split_condition("name~=web%"), Some(("name", "~=", "web%")));
        assert_eq!(
            split_condition("name!~=web%"),
            Some(("name", "!~=", "web%"))
        );
        assert_eq!(split_condition("uuid?=a,b"), Some(("uuid", "?=", "a,b")));
        assert_eq!(split_condition("uuid!?=a"), Some(("uuid", "!?=", "a")));
        assert_eq!(split_condition("x=a=b"), Some(("x", "=", "a=b")));
        assert_eq!(split_condition("novalue"), None);
    }

    #[test]
    fn a_query_becomes_conditions() {
        let c = call(&[
            "QueryZone",
            "name~=z%",
            "state!=Disabled",
            "fields=uuid,name",
            "limit=2",
            "start=4",
        ]);
        assert_eq!(c.command, "QueryZone");
        assert_eq!(
            Value::Object(c.params),
            json!({
                "conditions": [
                    {"name": "name", "op": "~=", "value": "z%"},
                    {"name": "state", "op": "!=", "value": "Disabled"},
                ],
                "fields": ["uuid", "name"],
                "limit": "2",
                "start": "4",
            })
        );
        // A query without conditions still sends an empty list.
        assert_eq!(
            Value::Object(call(&["QueryZone"]).params),
            json!({"conditions": []})
        );
    }

    #[test]
    fn null_operators_as_words_or_one_quoted_word() {
        let c = call(&[
            "QueryVmInstance",
            "hostUuid",
            "is",
            "null",
            "name=vm1",
            "zoneUuid",
            "not",
            "null",
            "description is null",
        ]);
        assert_eq!(
            c.params["conditions"],
            json!([
                {"name": "hostUuid", "op": "is null"},
                {"name": "name", "op": "=", "value": "vm1"},
                {"name": "zoneUuid", "op": "not null"},
                {"name": "description", "op": "is null"},
            ])
        );
        // `is null` only means something in queries, and needs its null.
        assert!(fails(&["QueryZone", "hostUuid", "is"]).contains("conditions are"));
        assert!(fails(&["CreateZone", "hostUuid", "is", "null"]).contains("key=value"));
        // A value that happens to be "is" is still a plain condition.
        assert_eq!(
            call(&["QueryZone", "name=is", "null=x"]).params["conditions"],
            json!([
                {"name": "name", "op": "=", "value": "is"},
                {"name": "null", "op": "=", "value": "x"},
            ])
        );
    }

    #[test]
    fn count_passes_through_for_queries() {
        let c = call(&["QueryZone", "count=true", "name=z"]);
        assert_eq!(c.params["count"], json!(true));
        assert_eq!(c.params["conditions"].as_array().map(Vec::len), Some(1));
        assert!(fails(&["QueryZone", "count=maybe"]).contains("true or false"));
        // Outside queries count is an ordinary parameter, for the server to judge.
        assert_eq!(call(&["CreateZone", "count=3"]).params["count"], json!("3"));
    }

    #[test]
    fn values_that_are_json_objects_or_lists_are_sent_as_json() {
        let c = call(&[
            "AttachNetworkServiceToL3Network",
            "l3NetworkUuid=abc",
            r#"networkServices={"p1":["DHCP","Eip"]}"#,
            "l3NetworkUuids=a,b",
            "tags=[1,2]",
            "name={not json",
            "description=[",
            "cpuNum=2",
        ]);
        assert_eq!(
            Value::Object(c.params),
            json!({
                "l3NetworkUuid": "abc",
                "networkServices": {"p1": ["DHCP", "Eip"]},
                "l3NetworkUuids": "a,b",
                "tags": [1, 2],
                "name": "{not json",
                "description": "[",
                "cpuNum": "2",
            })
        );
        // fields may be given as a JSON list too; condition values are never JSON.
        let q = call(&["QueryZone", r#"fields=["uuid"]"#, "uuid?=[a,b]"]);
        assert_eq!(q.params["fields"], json!(["uuid"]));
        assert_eq!(q.params["conditions"][0]["value"], json!("[a,b]"));
    }

    #[test]
    fn operators_outside_queries_and_repeated_parameters_are_refused() {
        assert!(fails(&["CreateZone", "name!=x"]).contains("only conditions of queries"));
        assert!(fails(&["CreateZone", "name=a", "name=b"]).contains("given twice"));
        assert!(fails(&["CreateZone", "=x"]).contains("needs a name"));
        assert!(fails(&["QueryZone", "limit>2"]).contains("only conditions"));
    }

    #[test]
    fn options_go_before_the_command() {
        let inv = parse(
            &words(&[
                "-H",
                "mn",
                "-p",
                "8081",
                "--table",
                "--no-wait",
                "QueryZone",
            ]),
            Flags::default(),
        )
        .expect("parses");
        assert_eq!(inv.host.as_deref(), Some("mn"));
        assert_eq!(inv.port, Some(8081));
        assert_eq!(
            inv.flags,
            Flags {
                no_wait: true,
                table: true
            }
        );
        assert_eq!(inv.call.map(|c| c.command).as_deref(), Some("QueryZone"));

        // --json is the default, and undoes an earlier --table (or the shell's default).
        let inv = parse(
            &words(&["--json", "QueryZone"]),
            Flags {
                no_wait: false,
                table: true,
            },
        )
        .expect("parses");
        assert!(!inv.flags.table);

        // After the command an option is a mistake, not a parameter.
        assert!(fails(&["QueryZone", "--table"]).contains("options go before the command"));
        assert!(fails(&["CreateZone", "--no-wait"]).contains("options go before"));

        // No command: the shell, with the flags as its defaults.
        let inv = parse(&words(&["--table"]), Flags::default()).expect("parses");
        assert!(inv.call.is_none() && inv.flags.table && !inv.help);
        assert!(
            parse(&words(&["-h"]), Flags::default())
                .expect("parses")
                .help
        );
    }

    #[test]
    fn unknown_options_are_refused_with_the_closest_one() {
        assert!(fails(&["--tabel", "QueryZone"]).contains("did you mean --table?"));
        assert!(fails(&["--nowait", "QueryZone"]).contains("did you mean --no-wait?"));
        assert!(fails(&["-p", "http", "QueryZone"]).contains("not a port number"));
        assert!(fails(&["-H"]).contains("-H needs a host"));
    }
}

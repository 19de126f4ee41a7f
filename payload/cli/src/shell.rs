//! The shell: `zstack-cli` without a command reads commands line by line and runs each exactly
//! as the one-shot command would. On a terminal it edits lines with rustyline (history, Tab
//! completion of command and parameter names from `GET /v1/apis`); from a pipe or a file it
//! reads plain lines without prompts, so scripts can feed it.

use std::cell::OnceCell;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::DefaultHistory;
use rustyline::validate::Validator;
use rustyline::{CompletionType, Config, Editor, Helper};

use crate::args::{self, Flags, Invocation};
use crate::client::{ApiInfo, Client};

/// Words the shell itself answers.
const BUILTINS: &[&str] = &["help", "exit", "quit"];

/// Runs the shell on stdin until `exit`, `quit` or end of input; returns the exit code.
pub fn run(client: &Client, defaults: Flags) -> i32 {
    let mut out = std::io::stdout();
    if std::io::stdin().is_terminal() {
        match Interactive::new(client) {
            Ok(mut lines) => run_loop(&mut lines, client, defaults, &mut out),
            Err(e) => {
                eprintln!("zstack-cli: {e:#}");
                1
            }
        }
    } else {
        let mut lines = Piped(std::io::stdin().lock());
        run_loop(&mut lines, client, defaults, &mut out)
    }
}

pub enum Line {
    Text(String),
    /// Ctrl-C: the line is dropped, the shell goes on.
    Interrupted,
    /// Ctrl-D or the end of the input.
    Eof,
}

/// Where lines come from: the terminal, or a pipe (and the tests).
pub trait LineSource {
    fn read(&mut self, prompt: &str) -> anyhow::Result<Line>;
    /// A line worth keeping in the history.
    fn remember(&mut self, _line: &str) {}
}

/// Lines from a pipe or a file: no prompt, no history (a script's lines are not what a person
/// typed and wants to recall).
pub struct Piped<R: BufRead>(pub R);

impl<R: BufRead> LineSource for Piped<R> {
    fn read(&mut self, _prompt: &str) -> anyhow::Result<Line> {
        let mut line = String::new();
        if self.0.read_line(&mut line).context("cannot read stdin")? == 0 {
            return Ok(Line::Eof);
        }
        let end = line.trim_end_matches(['\n', '\r']).len();
        line.truncate(end);
        Ok(Line::Text(line))
    }
}

/// The loop of the shell: read a line, run it, print, until `exit`/`quit` or the end.
pub fn run_loop(
    lines: &mut dyn LineSource,
    client: &Client,
    defaults: Flags,
    out: &mut dyn Write,
) -> i32 {
    loop {
        // Read every time: LogInByAccount and LogOut change it.
        let prompt = if client.session().is_some() {
            "admin >>> "
        } else {
            ">>> "
        };
        let line = match lines.read(prompt) {
            Ok(Line::Text(l)) => l,
            Ok(Line::Interrupted) => continue,
            Ok(Line::Eof) => return 0,
            Err(e) => {
                eprintln!("zstack-cli: {e:#}");
                return 1;
            }
        };
        let words = match split_line(&line) {
            Ok(w) => w,
            Err(e) => {
                eprintln!("zstack-cli: {e:#}");
                continue;
            }
        };
        if words.is_empty() {
            continue;
        }
        // The history file outlives the session: a password stays out of it.
        if !words.iter().any(|w| w.to_lowercase().contains("password")) {
            lines.remember(&line);
        }
        match words[0].as_str() {
            "exit" | "quit" => return 0,
            "help" => {
                help(client, words.get(1).map(String::as_str), out);
                continue;
            }
            _ => {}
        }
        match args::parse(&words, defaults) {
            Err(e) => eprintln!("zstack-cli: {e:#}"),
            Ok(Invocation { help: true, .. }) => help(client, None, out),
            Ok(inv) if inv.host.is_some() || inv.port.is_some() => eprintln!(
                "zstack-cli: -H and -p are given when the shell starts: zstack-cli -H host -p port"
            ),
            Ok(Invocation {
                call: Some(call),
                flags,
                ..
            }) => {
                // The exit code of one line does not end the shell; the error is printed.
                crate::execute(client, flags, &call, out);
            }
            Ok(_) => eprintln!("zstack-cli: no command given; type help"),
        }
    }
}

/// `help`: the usage and the API calls; `help Command`: that call's parameters.
fn help(client: &Client, topic: Option<&str>, out: &mut dyn Write) {
    let apis = match client.apis() {
        Ok(a) => a,
        Err(e) => {
            let _ = writeln!(out, "{}", crate::USAGE);
            eprintln!("zstack-cli: cannot fetch the list of API calls: {e:#}");
            return;
        }
    };
    let _ = out.write_all(help_text(&apis, topic).as_bytes());
}

fn help_text(apis: &[ApiInfo], topic: Option<&str>) -> String {
    let mut text = String::new();
    let Some(topic) = topic else {
        text.push_str(crate::USAGE);
        text.push_str("\n\nAPI calls (help Command for its parameters):\n");
        let width = apis.iter().map(|a| a.name.len()).max().unwrap_or(0);
        for a in apis {
            text.push_str(&format!("  {:width$}  {}\n", a.name, a.description));
        }
        return text;
    };
    let Some(api) = apis.iter().find(|a| a.name == topic) else {
        let closest = zstack_common::suggest::closest(topic, apis.iter().map(|a| a.name.as_str()));
        return format!("no API call named {topic}; did you mean {closest}?\n");
    };
    text.push_str(&format!("{}: {}\n", api.name, api.description));
    let query = args::is_query(&api.name);
    let width = api.params.iter().map(|p| p.0.len()).max().unwrap_or(0);
    for (name, required, description) in &api.params {
        if query && name == "conditions" {
            continue;
        }
        let required = if *required { "(required) " } else { "" };
        let line = format!("  {name:width$}  {required}{description}");
        text.push_str(line.trim_end());
        text.push('\n');
    }
    if query {
        text.push_str(
            "  conditions: field=value field!=value field>N field~=pat% field?=a,b \
             field is null field not null ...\n",
        );
    }
    text
}

/// Splits a line into words as sh does: blanks separate words, 'single quotes' keep
/// everything, "double quotes" keep everything but \" \\ \$ \`, a backslash outside quotes
/// keeps the next character, and # at the start of a word begins a comment.
pub fn split_line(line: &str) -> anyhow::Result<Vec<String>> {
    let mut words = Vec::new();
    let mut word = String::new();
    // A word can be empty ('') and still a word, so "is there a word" is tracked apart.
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '#' if !in_word => break,
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => bail!("unterminated ' quote in: {line}"),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.peek() {
                            Some(&n @ ('"' | '\\' | '$' | '`')) => {
                                word.push(n);
                                chars.next();
                            }
                            _ => word.push('\\'),
                        },
                        Some(c) => word.push(c),
                        None => bail!("unterminated \" quote in: {line}"),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(n) => word.push(n),
                    None => bail!("nothing after the \\ at the end of: {line}"),
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// The terminal: rustyline with history and completion.
struct Interactive {
    editor: Editor<CliHelper, DefaultHistory>,
    history: PathBuf,
    /// Warn once when the history cannot be written, not after every line.
    history_warned: bool,
}

impl Interactive {
    fn new(client: &Client) -> anyhow::Result<Interactive> {
        let config = Config::builder()
            .completion_type(CompletionType::List)
            .auto_add_history(false)
            .build();
        let mut editor: Editor<CliHelper, DefaultHistory> =
            Editor::with_config(config).context("cannot set up the terminal")?;
        editor.set_helper(Some(CliHelper {
            client: client.clone(),
            apis: OnceCell::new(),
        }));
        let history = client.dir().join("history");
        match editor.load_history(&history) {
            Ok(()) => {}
            Err(ReadlineError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => eprintln!(
                "zstack-cli: cannot read the history {}: {e}",
                history.display()
            ),
        }
        Ok(Interactive {
            editor,
            history,
            history_warned: false,
        })
    }
}

impl LineSource for Interactive {
    fn read(&mut self, prompt: &str) -> anyhow::Result<Line> {
        match self.editor.readline(prompt) {
            Ok(l) => Ok(Line::Text(l)),
            Err(ReadlineError::Interrupted) => Ok(Line::Interrupted),
            Err(ReadlineError::Eof) => Ok(Line::Eof),
            Err(e) => Err(e).context("cannot read the line"),
        }
    }

    fn remember(&mut self, line: &str) {
        let mut save = || -> anyhow::Result<()> {
            self.editor.add_history_entry(line)?;
            // rustyline creates the file 0600 on first use; the directory is ours to make.
            if let Some(dir) = self.history.parent() {
                std::fs::create_dir_all(dir)?;
            }
            self.editor.append_history(&self.history)?;
            Ok(())
        };
        if let Err(e) = save() {
            if !self.history_warned {
                self.history_warned = true;
                eprintln!(
                    "zstack-cli: cannot write the history {}: {e:#}",
                    self.history.display()
                );
            }
        }
    }
}

/// Tab completion of command names and, after a command, of its parameter names.
struct CliHelper {
    client: Client,
    /// Fetched at the first Tab; a failure leaves it empty (completion is a convenience).
    apis: OnceCell<Vec<ApiInfo>>,
}

impl CliHelper {
    fn apis(&self) -> &[ApiInfo] {
        self.apis
            .get_or_init(|| self.client.apis().unwrap_or_default())
    }
}

impl Completer for CliHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        Ok(complete(self.apis(), line, pos))
    }
}

impl Hinter for CliHelper {
    type Hint = String;
}
impl Highlighter for CliHelper {}
impl Validator for CliHelper {}
impl Helper for CliHelper {}

/// The completions of the word that ends at `pos`: where it starts, and the candidates.
pub fn complete(apis: &[ApiInfo], line: &str, pos: usize) -> (usize, Vec<Pair>) {
    let before = &line[..pos];
    let start = before
        .rfind(char::is_whitespace)
        .map(|i| i + before[i..].chars().next().map_or(1, char::len_utf8))
        .unwrap_or(0);
    let word = &before[start..];
    let mut previous = before[..start]
        .split_whitespace()
        .skip_while(|w| w.starts_with('-'));
    let starts = |candidate: &str| candidate.to_lowercase().starts_with(&word.to_lowercase());
    let pair = |display: &str, replacement: String| Pair {
        display: display.to_string(),
        replacement,
    };
    let commands = || {
        BUILTINS
            .iter()
            .copied()
            .chain(apis.iter().map(|a| a.name.as_str()))
            .filter(|c| starts(c))
            .map(|c| pair(c, format!("{c} ")))
            .collect::<Vec<_>>()
    };
    let candidates = match previous.next() {
        None if word.starts_with('-') => args::LINE_OPTIONS
            .iter()
            .filter(|o| starts(o))
            .map(|o| pair(o, format!("{o} ")))
            .collect(),
        None => commands(),
        Some("help") => commands(),
        Some(command) => {
            let given: Vec<&str> = previous
                .filter_map(|w| args::split_condition(w).map(|(k, _, _)| k))
                .collect();
            // Once the word has an operator, its name is complete and its value is free text.
            if args::split_condition(word).is_some() {
                Vec::new()
            } else {
                apis.iter()
                    .find(|a| a.name == command)
                    .map(|a| {
                        a.params
                            .iter()
                            .map(|p| p.0.as_str())
                            // Queries take conditions as words, not as a parameter.
                            .filter(|p| !(args::is_query(command) && *p == "conditions"))
                            .filter(|p| !given.contains(p) && starts(p))
                            .map(|p| pair(p, format!("{p}=")))
                            .collect()
                    })
                    .unwrap_or_default()
            }
        }
    };
    (start, candidates)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testserver::{Answer, TestServer};
    use serde_json::json;

    #[test]
    fn lines_split_as_sh_does() {
        let split = |l: &str| split_line(l).expect("splits");
        assert_eq!(
            split("  CreateVmInstance name='my vm'  description=\"a \\\"b\\\" \\\\ c\"\t"),
            ["CreateVmInstance", "name=my vm", "description=a \"b\" \\ c"]
        );
        assert_eq!(
            split(r#"AttachNetworkServiceToL3Network networkServices='{"u1":["DHCP","Eip"]}'"#),
            [
                "AttachNetworkServiceToL3Network",
                r#"networkServices={"u1":["DHCP","Eip"]}"#
            ]
        );
        assert_eq!(
            split(r#"a\ b 'it'"'"'s' "\n" '' x#y # comment"#),
            ["a b", "it's", "\\n", "", "x#y"]
        );
        assert_eq!(
            split("QueryZone description is null"),
            ["QueryZone", "description", "is", "null"]
        );
        assert!(split("").is_empty());
        assert!(split("   # only a comment").is_empty());
        assert!(split_line("CreateZone name='unterminated").is_err());
        assert!(split_line("CreateZone name=\"unterminated").is_err());
        assert!(split_line("CreateZone name=x\\").is_err());
    }

    fn apis() -> Vec<ApiInfo> {
        let p = |n: &str, r: bool| (n.to_string(), r, String::new());
        vec![
            ApiInfo {
                name: "CreateZone".into(),
                description: "Create a zone".into(),
                params: vec![p("name", true), p("description", false)],
            },
            ApiInfo {
                name: "QueryZone".into(),
                description: "Zones".into(),
                params: vec![
                    p("conditions", false),
                    p("fields", false),
                    p("limit", false),
                    p("start", false),
                ],
            },
        ]
    }

    fn completions(line: &str) -> (usize, Vec<String>) {
        let (start, c) = complete(&apis(), line, line.len());
        (start, c.into_iter().map(|p| p.replacement).collect())
    }

    #[test]
    fn completion_of_commands_then_parameters() {
        assert_eq!(
            completions(""),
            (
                0,
                vec![
                    "help ".into(),
                    "exit ".into(),
                    "quit ".into(),
                    "CreateZone ".into(),
                    "QueryZone ".into()
                ]
            )
        );
        assert_eq!(completions("cre"), (0, vec!["CreateZone ".into()]));
        assert_eq!(completions("--table Que"), (8, vec!["QueryZone ".into()]));
        assert_eq!(completions("--t"), (0, vec!["--table ".into()]));
        assert_eq!(completions("help Cr"), (5, vec!["CreateZone ".into()]));
        assert_eq!(
            completions("CreateZone "),
            (11, vec!["name=".into(), "description=".into()])
        );
        assert_eq!(
            completions("CreateZone name='a' d"),
            (20, vec!["description=".into()])
        );
        // A name already given is not offered again; a value is not completed.
        assert_eq!(
            completions("CreateZone name=x "),
            (18, vec!["description=".into()])
        );
        assert_eq!(completions("CreateZone name=x"), (11, vec![]));
        // Queries: no `conditions=`, it is written as conditions.
        assert_eq!(
            completions("QueryZone "),
            (10, vec!["fields=".into(), "limit=".into(), "start=".into()])
        );
        assert_eq!(completions("Unknown "), (8, vec![]));
        // In the middle of a line: the word up to the cursor.
        let (start, c) = complete(&apis(), "CreateZone na xyz", 13);
        assert_eq!(start, 11);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn help_lists_the_calls_and_a_calls_parameters() {
        let all = help_text(&apis(), None);
        assert!(all.starts_with(crate::USAGE));
        assert!(
            all.ends_with("  CreateZone  Create a zone\n  QueryZone   Zones\n"),
            "{all}"
        );
        assert_eq!(
            help_text(&apis(), Some("CreateZone")),
            "CreateZone: Create a zone\n  name         (required)\n  description\n"
        );
        assert_eq!(
            help_text(&apis(), Some("CreateZon")),
            "no API call named CreateZon; did you mean CreateZone?\n"
        );
        assert!(help_text(&apis(), Some("QueryZone")).contains("is null"));
    }

    /// The loop as it runs on a pipe: every line as the one-shot command, errors go on, `exit`
    /// ends it before the lines after it.
    #[test]
    fn the_loop_runs_piped_lines_until_exit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = TestServer::start(vec![
            Answer::raw(
                200,
                r#"{"apis": [{"name": "QueryZone", "description": "Zones", "needsSession": true,
                    "params": [{"name": "conditions", "required": false, "description": "c"}]}]}"#,
            ),
            Answer::raw(
                200,
                r#"{"inventories": [{"uuid": "z1", "name": "my zone"}]}"#,
            ),
            Answer::raw(
                200,
                r#"{"inventories": [{"uuid": "z1", "name": "my zone"}]}"#,
            ),
            Answer::json(
                202,
                json!({"jobUuid": "abc", "location": "/v1/api-jobs/abc"}),
            ),
            Answer::raw(
                200,
                r#"{"job": {"uuid": "abc", "state": "Succeeded", "result": {"inventory": {"uuid": "z2", "name": "z 2"}}}}"#,
            ),
            Answer::raw(
                400,
                r#"{"error": {"code": "INVALID_ARGUMENT", "message": "m", "field": "nmae"}}"#,
            ),
        ]);
        let client = Client::new("127.0.0.1", server.port(), dir.path());
        let script = "\
help
# a comment, then a blank line

QueryZone name='my zone'
--table QueryZone hostUuid is null
--table CreateZone name=\"z 2\"
CreateZone name='unterminated
--tabel QueryZone
-H other QueryZone
CreateZone nmae=x
exit
QueryZone
";
        let mut out = Vec::new();
        let code = run_loop(
            &mut Piped(script.as_bytes()),
            &client,
            Flags::default(),
            &mut out,
        );
        let requests = server.finish();
        assert_eq!(code, 0);
        let lines: Vec<&str> = requests.iter().map(|r| r.line.as_str()).collect();
        assert_eq!(
            lines,
            [
                "GET /v1/apis HTTP/1.1",
                "POST /v1/api/QueryZone HTTP/1.1",
                "POST /v1/api/QueryZone HTTP/1.1",
                "POST /v1/api/CreateZone HTTP/1.1",
                "GET /v1/api-jobs/abc?wait=30 HTTP/1.1",
                "POST /v1/api/CreateZone HTTP/1.1",
            ]
        );
        let body = |i: usize| -> serde_json::Value {
            serde_json::from_str(&requests[i].body).expect("JSON body")
        };
        assert_eq!(
            body(1),
            json!({"conditions": [{"name": "name", "op": "=", "value": "my zone"}]})
        );
        assert_eq!(
            body(2),
            json!({"conditions": [{"name": "hostUuid", "op": "is null"}]})
        );
        assert_eq!(body(3), json!({"name": "z 2"}));
        let out = String::from_utf8(out).expect("UTF-8");
        let expected_tail = "\
{
  \"inventories\": [
    {
      \"uuid\": \"z1\",
      \"name\": \"my zone\"
    }
  ]
}
uuid  name
----  -------
z1    my zone
uuid  name
----  ----
z2    z 2
{
  \"error\": {
    \"code\": \"INVALID_ARGUMENT\",
    \"message\": \"m\",
    \"field\": \"nmae\"
  }
}
";
        assert!(out.starts_with(crate::USAGE), "{out}");
        assert!(out.contains("  QueryZone  Zones\n"), "{out}");
        assert!(out.ends_with(expected_tail), "{out}");
    }

    #[test]
    fn the_loop_ends_at_the_end_of_input_with_0() {
        let dir = tempfile::tempdir().expect("tempdir");
        let client = Client::new("127.0.0.1", 1, dir.path());
        let mut out = Vec::new();
        assert_eq!(
            run_loop(
                &mut Piped(&b"\n   \n"[..]),
                &client,
                Flags::default(),
                &mut out
            ),
            0
        );
        assert!(out.is_empty());
    }
}

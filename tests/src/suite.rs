//! The runner of a test binary whose tests share one expensive setup (an install on this host):
//! the binary sets `harness = false` and its `main` calls [`run`]. The setup is made once, before
//! the first selected test, and dropped after the last one, so whatever it installed is removed
//! even when tests fail. Each test is reported by its name, as libtest does.
//!
//! It reads the libtest arguments `cargo test` passes on: name filters, `--exact`, `--skip NAME`,
//! `--list`, `--ignored` / `--include-ignored`. Without one of the last two every test is
//! reported ignored (they need root and the .bin, like the `#[ignore]`d tests). `--test-threads`,
//! `--nocapture`, `--quiet`, `--color` and `--format` are taken and have no effect: the tests run
//! one after the other, in the order given, on the one setup.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::ExitCode;

/// One test: its name (what it checks) and its body, given the shared setup.
pub struct Test<S> {
    pub name: &'static str,
    pub run: fn(&S),
}

struct Args {
    filters: Vec<String>,
    skips: Vec<String>,
    exact: bool,
    list: bool,
    run_ignored: bool,
}

impl Args {
    fn parse(args: impl Iterator<Item = String>) -> Args {
        let mut parsed = Args {
            filters: Vec::new(),
            skips: Vec::new(),
            exact: false,
            list: false,
            run_ignored: false,
        };
        let mut args = args.peekable();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--exact" => parsed.exact = true,
                "--list" => parsed.list = true,
                "--ignored" | "--include-ignored" => parsed.run_ignored = true,
                "--skip" => parsed.skips.extend(args.next()),
                "--test-threads" | "--color" | "--format" | "-Z" => {
                    args.next();
                }
                flag if flag.starts_with('-') => {}
                filter => parsed.filters.push(filter.to_string()),
            }
        }
        parsed
    }

    fn selects(&self, name: &str) -> bool {
        let matches = |pattern: &String| {
            if self.exact {
                name == pattern
            } else {
                name.contains(pattern.as_str())
            }
        };
        (self.filters.is_empty() || self.filters.iter().any(matches))
            && !self.skips.iter().any(matches)
    }
}

/// Runs the selected `tests` on one `setup`; the exit code says whether all passed.
pub fn run<S>(setup: impl FnOnce() -> S, tests: &[Test<S>]) -> ExitCode {
    let args = Args::parse(std::env::args().skip(1));
    let selected: Vec<&Test<S>> = tests.iter().filter(|t| args.selects(t.name)).collect();
    let filtered_out = tests.len() - selected.len();
    if args.list {
        for t in &selected {
            println!("{}: test", t.name);
        }
        return ExitCode::SUCCESS;
    }
    println!("\nrunning {} tests", selected.len());
    if !args.run_ignored {
        for t in &selected {
            println!(
                "test {} ... ignored, needs root and build/*.bin: run by make test",
                t.name
            );
        }
        summary(0, &[], selected.len(), filtered_out);
        return ExitCode::SUCCESS;
    }
    let mut failed = Vec::new();
    let mut passed = 0;
    if !selected.is_empty() {
        match catch_unwind(AssertUnwindSafe(setup)) {
            Err(_) => {
                for t in &selected {
                    println!("test {} ... FAILED (the shared setup failed)", t.name);
                    failed.push(t.name);
                }
            }
            Ok(shared) => {
                for t in &selected {
                    match catch_unwind(AssertUnwindSafe(|| (t.run)(&shared))) {
                        Ok(()) => {
                            println!("test {} ... ok", t.name);
                            passed += 1;
                        }
                        Err(_) => {
                            println!("test {} ... FAILED", t.name);
                            failed.push(t.name);
                        }
                    }
                }
                drop(shared);
            }
        }
    }
    summary(passed, &failed, 0, filtered_out);
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(101)
    }
}

fn summary(passed: usize, failed: &[&str], ignored: usize, filtered_out: usize) {
    if !failed.is_empty() {
        println!("\nfailures:");
        for name in failed {
            println!("    {name}");
        }
    }
    println!(
        "\ntest result: {}. {passed} passed; {} failed; {ignored} ignored; 0 measured; \
         {filtered_out} filtered out\n",
        if failed.is_empty() { "ok" } else { "FAILED" },
        failed.len()
    );
}

#[cfg(test)]
mod tests {
    use super::Args;

    fn args(list: &[&str]) -> Args {
        Args::parse(list.iter().map(|s| s.to_string()))
    }

    #[test]
    fn filters_exact_names_and_skips_select_as_libtest_does() {
        let a = args(&["--include-ignored", "--test-threads=1", "eip"]);
        assert!(a.run_ignored);
        assert!(a.selects("an_eip_attaches"));
        assert!(!a.selects("queries"));
        let a = args(&["--test-threads", "1", "--exact", "queries"]);
        assert!(!a.run_ignored);
        assert!(a.selects("queries") && !a.selects("queries_with_limits"));
        let a = args(&["--skip", "shell"]);
        assert!(a.selects("queries") && !a.selects("the_interactive_shell"));
        assert!(args(&[]).selects("anything"));
    }
}

//! Progress of a run: a spinner per step on a terminal, plain lines otherwise, and every line
//! in the installer log.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use zstack_common::logfile::LogFile;

pub struct Reporter {
    quiet: bool,
    debug: bool,
    tty: bool,
    log: Option<LogFile>,
    bar: Option<ProgressBar>,
    current: Option<(usize, usize, String)>,
}

impl Reporter {
    pub fn new(quiet: bool, debug: bool) -> Self {
        Reporter {
            quiet,
            debug,
            tty: std::io::stderr().is_terminal(),
            log: None,
            bar: None,
            current: None,
        }
    }

    pub fn set_log(&mut self, log: LogFile) {
        self.log = Some(log);
    }

    fn log(&self, level: &str, msg: &str) {
        if let Some(l) = &self.log {
            l.line(level, msg);
        }
    }

    pub fn step_start(&mut self, n: usize, total: usize, title: &str) {
        self.log("INFO", &format!("[{n}/{total}] {title} ..."));
        self.current = Some((n, total, title.to_string()));
        if self.quiet {
            return;
        }
        if self.tty {
            let bar = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} [{prefix}] {msg} {elapsed}")
            {
                bar.set_style(style);
            }
            bar.set_prefix(format!("{n}/{total}"));
            bar.set_message(title.to_string());
            bar.enable_steady_tick(Duration::from_millis(100));
            self.bar = Some(bar);
        }
        // Without a terminal only the finished line is printed: one plain line per step.
    }

    /// Sub-progress inside a step (shown on a terminal, logged only with -d).
    pub fn detail(&self, msg: &str) {
        if self.debug {
            self.log("DEBUG", msg);
        }
        if let Some(bar) = &self.bar {
            if let Some((_, _, title)) = &self.current {
                bar.set_message(format!("{title}: {msg}"));
            }
        } else if self.debug && !self.quiet {
            eprintln!("      {msg}");
        }
    }

    pub fn step_done(&mut self, outcome: &str) {
        let Some((n, total, title)) = self.current.take() else {
            return;
        };
        self.log("INFO", &format!("[{n}/{total}] {title}: {outcome}"));
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if !self.quiet {
            eprintln!("[{n}/{total}] {title}: {outcome}");
        }
    }

    pub fn step_failed(&mut self, error: &str) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if let Some((n, total, title)) = self.current.take() {
            self.log("ERROR", &format!("[{n}/{total}] {title} FAILED: {error}"));
            eprintln!("[{n}/{total}] {title}: FAILED");
        }
    }

    pub fn info(&self, msg: &str) {
        self.log("INFO", msg);
        if !self.quiet {
            eprintln!("{msg}");
        }
    }

    pub fn warn(&self, msg: &str) {
        self.log("WARN", msg);
        eprintln!("warning: {msg}");
    }

    pub fn error(&self, msg: &str) {
        self.log("ERROR", msg);
        eprintln!("error: {msg}");
    }

    pub fn debug(&self, msg: &str) {
        if self.debug {
            self.log("DEBUG", msg);
            if !self.quiet {
                eprintln!("debug: {msg}");
            }
        }
    }
}

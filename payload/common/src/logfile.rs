//! Plain, timestamped log lines appended to a file: what a service or the installer did, in a
//! form `zstack-ctl taillog` and an operator's `less` can read.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Cheap to clone: clones append to the same file, one line at a time.
#[derive(Clone)]
pub struct LogFile {
    file: Arc<Mutex<File>>,
    echo_stderr: bool,
}

impl LogFile {
    /// Opens `path` for appending (creating it 0640); `echo_stderr` also copies lines to stderr.
    pub fn open(path: &Path, echo_stderr: bool) -> std::io::Result<LogFile> {
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(path)?;
        Ok(LogFile {
            file: Arc::new(Mutex::new(file)),
            echo_stderr,
        })
    }

    pub fn line(&self, level: &str, message: &str) {
        let ts = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ");
        let text = format!("{ts} {level:<5} {message}\n");
        if let Ok(mut f) = self.file.lock() {
            let _ = f.write_all(text.as_bytes());
        }
        if self.echo_stderr {
            eprint!("{text}");
        }
    }

    pub fn info(&self, message: &str) {
        self.line("INFO", message)
    }
    pub fn warn(&self, message: &str) {
        self.line("WARN", message)
    }
    pub fn error(&self, message: &str) {
        self.line("ERROR", message)
    }
}

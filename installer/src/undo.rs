//! The undo journal of one installer run. Every step records, before it changes the host, how
//! to put back what was there; a failure (or Ctrl-C) at any step replays the journal backwards,
//! so the host is left as it was before the run.

use std::path::PathBuf;

use zstack_common::service::Service;
use zstack_common::Layout;

#[derive(Debug)]
pub enum Undo {
    /// Remove a file, symlink or directory tree this run created.
    Remove(PathBuf),
    /// Put back a file's previous content and mode.
    RestoreFile {
        path: PathBuf,
        content: Vec<u8>,
        mode: u32,
    },
    /// Point a symlink back at its previous target.
    RestoreSymlink { path: PathBuf, target: PathBuf },
    /// Put back root's previous crontab (`None`: root had none).
    RestoreCrontab(Option<String>),
    /// Stop services this run started.
    Stop(Vec<Service>),
    /// Move a file back to where it was (a dropped DB moved aside).
    MoveBack { from: PathBuf, to: PathBuf },
    /// Run `systemctl daemon-reload` after unit files were put back.
    DaemonReload,
}

#[derive(Default)]
pub struct UndoLog {
    entries: Vec<Undo>,
}

impl UndoLog {
    pub fn push(&mut self, u: Undo) {
        self.entries.push(u);
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Replays the journal backwards. Every entry is tried; the failures are returned.
    pub fn rollback(&mut self, layout: &Layout) -> Vec<String> {
        let mut failures = Vec::new();
        while let Some(u) = self.entries.pop() {
            if let Err(e) = apply(layout, &u) {
                failures.push(format!("{u:?}: {e:#}"));
            }
        }
        failures
    }
}

fn apply(layout: &Layout, u: &Undo) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match u {
        Undo::Remove(p) => {
            let meta = match std::fs::symlink_metadata(p) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            if meta.is_dir() {
                std::fs::remove_dir_all(p)?;
            } else {
                std::fs::remove_file(p)?;
            }
        }
        Undo::RestoreFile {
            path,
            content,
            mode,
        } => {
            zstack_common::fsutil::atomic_write(path, content, *mode)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(*mode))?;
        }
        Undo::RestoreSymlink { path, target } => {
            zstack_common::fsutil::atomic_symlink(target, path)?
        }
        Undo::RestoreCrontab(content) => zstack_ctl::cron::write(layout, content.as_deref())?,
        Undo::Stop(services) => {
            zstack_ctl::lifecycle::stop(layout, services, zstack_ctl::lifecycle::STOP_TIMEOUT)?;
        }
        Undo::MoveBack { from, to } => std::fs::rename(from, to)?,
        Undo::DaemonReload => {
            let _ = std::process::Command::new("systemctl")
                .arg("daemon-reload")
                .status();
        }
    }
    Ok(())
}

//! The undo journal of one installer run. Every step records, before it changes the host, how
//! to put back what was there; a failure (or Ctrl-C) at any step replays it backwards, so the
//! host is left as it was before the run.
//!
//! The journal is also written to disk (`/var/lib/zstack-installer.journal`) after every record
//! and removed when the run ends, so a run cut off by a crash or `kill -9` is found by the next
//! run, which replays it before anything else: an install or upgrade is never left half-done.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zstack_common::service::Service;
use zstack_common::{Layout, Properties};

#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// Start services this run stopped (they run the release `current` points at by then).
    Start(Vec<Service>),
    /// Move a file back to where it was (a dropped DB moved aside).
    MoveBack { from: PathBuf, to: PathBuf },
    /// Put the database back from a verified dump_mysql backup.
    RestoreDb { backup: PathBuf },
    /// Run `systemctl daemon-reload` after unit files were put back.
    DaemonReload,
    /// Remove the user `zstack` this run made (and its group, if this run made that too).
    RemoveServerUser { group_too: bool },
    /// Put back a path's owner and mode (given to the management node's user).
    RestoreOwner {
        path: PathBuf,
        dir: bool,
        ownership: zstack_ctl::server_files::Ownership,
    },
}

#[derive(Default, Serialize, Deserialize)]
pub struct UndoLog {
    entries: Vec<Undo>,
    /// What the run was, for the message of a later recovery.
    pub what: String,
    #[serde(skip)]
    journal: Option<PathBuf>,
}

impl UndoLog {
    /// A journal also kept on disk at `path` (host path).
    pub fn on_disk(path: PathBuf, what: String) -> anyhow::Result<UndoLog> {
        let log = UndoLog {
            entries: Vec::new(),
            what,
            journal: Some(path),
        };
        log.persist()?;
        Ok(log)
    }

    /// Reads a journal left on disk by a run that did not finish.
    pub fn load(path: &Path) -> anyhow::Result<Option<UndoLog>> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let mut log: UndoLog = serde_json::from_slice(&bytes).map_err(|e| {
                    anyhow::anyhow!("the journal {} is unreadable: {e}", path.display())
                })?;
                log.journal = Some(path.to_path_buf());
                Ok(Some(log))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn persist(&self) -> anyhow::Result<()> {
        if let Some(p) = &self.journal {
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir)?;
            }
            zstack_common::fsutil::atomic_write(p, &serde_json::to_vec(self)?, 0o600)?;
        }
        Ok(())
    }

    pub fn push(&mut self, u: Undo) {
        self.entries.push(u);
        if let Err(e) = self.persist() {
            eprintln!("warning: cannot write the installer journal: {e:#}");
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The run succeeded: nothing is to be undone any more.
    pub fn commit(&mut self) {
        self.entries.clear();
        if let Some(p) = &self.journal {
            let _ = std::fs::remove_file(p);
        }
    }

    /// Replays the journal backwards. Every entry is tried; the failures are returned. The
    /// on-disk journal is removed once everything was put back.
    ///
    /// Services are started last, whatever their place in the journal: by then `current` and
    /// every file is back, so they start as the release that was there before.
    pub fn rollback(&mut self, layout: &Layout) -> Vec<String> {
        let mut failures = Vec::new();
        let mut starts = Vec::new();
        while let Some(u) = self.entries.pop() {
            if let Undo::Start(s) = &u {
                starts.push(s.clone());
                continue;
            }
            if let Err(e) = apply(layout, &u) {
                failures.push(format!("{u:?}: {e:#}"));
            }
            let _ = self.persist();
        }
        for s in starts.into_iter().rev() {
            let u = Undo::Start(s);
            if let Err(e) = apply(layout, &u) {
                failures.push(format!("{u:?}: {e:#}"));
            }
        }
        if failures.is_empty() {
            if let Some(p) = &self.journal {
                let _ = std::fs::remove_file(p);
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
        Undo::Start(services) => {
            if !layout.is_sysroot() {
                let props = Properties::load(&layout.host(layout.properties_file()))?;
                zstack_ctl::lifecycle::start(
                    layout,
                    &props,
                    services,
                    zstack_ctl::lifecycle::START_TIMEOUT,
                )?;
            }
        }
        Undo::MoveBack { from, to } => {
            if from.exists() {
                std::fs::rename(from, to)?
            }
        }
        Undo::RestoreDb { backup } => {
            // The management node is stopped by then (its Start entry comes later in the replay).
            let db = layout.host(layout.db_file());
            let dir = db.parent().unwrap_or(Path::new("/"));
            let scratch = zstack_ctl::backup::Scratch::dir_in(
                dir,
                &format!(".restore-{}", std::process::id()),
            )?;
            let verified = zstack_ctl::backup::verify_file(backup, scratch.path())?;
            zstack_ctl::backup::install_db(&verified.db, &db)?;
        }
        Undo::RemoveServerUser { group_too } => zstack_ctl::server_files::remove_user(*group_too)?,
        Undo::RestoreOwner {
            path,
            dir,
            ownership,
        } => {
            if path.exists() {
                zstack_ctl::server_files::set_ownership(path, *ownership, *dir, false)?
            }
        }
        Undo::DaemonReload => {
            let _ = std::process::Command::new("systemctl")
                .arg("daemon-reload")
                .status();
        }
    }
    Ok(())
}

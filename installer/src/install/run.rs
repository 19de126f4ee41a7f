//! One run's state and the recorded changes every step makes through it: each directory, file
//! and symlink it creates or replaces is recorded in the undo journal first.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use zstack_common::fsutil::{
    atomic_symlink, atomic_write, create_dir_all_tracked, read_link_optional, read_optional,
};
use zstack_common::service::Service;
use zstack_common::templates::Templates;
use zstack_common::{Layout, Properties};

use crate::binfmt::VerifiedBin;
use crate::options::Options;
use crate::report::Reporter;
use crate::undo::{Undo, UndoLog};

/// One install or upgrade run: what it works on and what it has found and made so far.
pub(super) struct Run<'a> {
    pub(super) opts: &'a Options,
    pub(super) layout: Layout,
    pub(super) bin: &'a VerifiedBin,
    pub(super) version: semver::Version,
    pub(super) services: Vec<Service>,
    pub(super) undo: UndoLog,
    pub(super) management_ip: String,
    pub(super) admin_password: Option<String>,
    pub(super) props: Option<Properties>,
    pub(super) templates: Option<Templates>,
    /// Safety copies that are removed once the whole run has succeeded.
    pub(super) discard_on_success: Vec<PathBuf>,
    /// With `-u`: the release being upgraded from.
    pub(super) upgrade_from: Option<semver::Version>,
    /// With `-u`: the verified backup taken before the database changes.
    pub(super) backup: Option<PathBuf>,
}

impl Run<'_> {
    pub(super) fn step(&mut self, id: &str, rep: &Reporter) -> anyhow::Result<(bool, String)> {
        match id {
            "unpack" => self.unpack(rep),
            "current" => self.switch_current(),
            "links" => self.link_commands(),
            "config" => self.write_config(),
            "pki" => self.make_certificates(),
            "database" => self.create_database(),
            "backup" => self.backup_db(),
            "stop" => self.stop_server(),
            "migrate" => self.migrate_db(),
            "user" => self.server_user(),
            "units" => self.install_units(),
            "cron" => self.install_cron(),
            "start" => self.start(rep),
            other => bail!("unknown step {other}"),
        }
    }

    pub(super) fn version_str(&self) -> String {
        self.version.to_string()
    }

    /// Creates `dir` (host path) and records the directories it made.
    pub(super) fn mkdirs(&mut self, dir: &Path, mode: u32) -> anyhow::Result<()> {
        let made = create_dir_all_tracked(dir, mode)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        if let Some(first) = made.into_iter().next() {
            self.undo.push(Undo::Remove(first));
        }
        Ok(())
    }

    /// Writes a file if its content differs, recording how to put back the old one.
    pub(super) fn put_file(
        &mut self,
        path: &Path,
        content: &[u8],
        mode: u32,
    ) -> anyhow::Result<bool> {
        use std::os::unix::fs::PermissionsExt;
        let old = read_optional(path).with_context(|| format!("cannot read {}", path.display()))?;
        let old_mode = std::fs::metadata(path)
            .map(|m| m.permissions().mode() & 0o7777)
            .ok();
        if old.as_deref() == Some(content) && old_mode == Some(mode) {
            return Ok(false);
        }
        if let Some(dir) = path.parent() {
            self.mkdirs(dir, 0o755)?;
        }
        self.undo.push(match old {
            Some(content) => Undo::RestoreFile {
                path: path.to_path_buf(),
                content,
                mode: old_mode.unwrap_or(0o644),
            },
            None => Undo::Remove(path.to_path_buf()),
        });
        atomic_write(path, content, mode)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(true)
    }

    /// Points a symlink at `target` if it does not already, recording the old state.
    pub(super) fn put_symlink(&mut self, link: &Path, target: &Path) -> anyhow::Result<bool> {
        let old = read_link_optional(link)?;
        if old.as_deref() == Some(target) {
            return Ok(false);
        }
        if let Some(dir) = link.parent() {
            self.mkdirs(dir, 0o755)?;
        }
        match (old, std::fs::symlink_metadata(link)) {
            (Some(old), _) => self.undo.push(Undo::RestoreSymlink {
                path: link.to_path_buf(),
                target: old,
            }),
            (None, Ok(meta)) => {
                // A regular file in the way (preflight allowed it only with -F): keep its content.
                use std::os::unix::fs::PermissionsExt;
                let content = std::fs::read(link)?;
                self.undo.push(Undo::RestoreFile {
                    path: link.to_path_buf(),
                    content,
                    mode: meta.permissions().mode() & 0o7777,
                });
            }
            (None, Err(_)) => self.undo.push(Undo::Remove(link.to_path_buf())),
        }
        atomic_symlink(target, link).with_context(|| format!("cannot link {}", link.display()))?;
        Ok(true)
    }

    pub(super) fn templates(&mut self) -> anyhow::Result<&Templates> {
        if self.templates.is_none() {
            let dir = self.layout.host(
                self.layout
                    .version_dir(&self.version_str())
                    .join("templates"),
            );
            self.templates = Some(Templates::load(&dir)?);
        }
        self.templates.as_ref().context("templates")
    }
}

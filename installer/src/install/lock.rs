//! The installer lock: one installer run at a time on a host (or sysroot).

use anyhow::{bail, Context};
use zstack_common::Layout;

/// Holds the installer lock for the life of the run.
pub struct InstallerLock {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

pub(super) fn take_lock(layout: &Layout) -> anyhow::Result<InstallerLock> {
    use std::io::{Seek, Write};
    let path = layout.host(layout.installer_lock());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            lock.set_len(0)?;
            lock.rewind()?;
            writeln!(lock, "{}", std::process::id())?;
            Ok(InstallerLock { _lock: lock })
        }
        Err((_, _)) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            let pid = holder.trim();
            let cmd = pid
                .parse()
                .ok()
                .and_then(zstack_common::process::cmdline)
                .unwrap_or_default();
            bail!(
                "another ZStack installer is running (pid {pid}{}); wait for it to finish (lock: {})",
                if cmd.is_empty() { String::new() } else { format!(": {cmd}") },
                path.display()
            )
        }
    }
}

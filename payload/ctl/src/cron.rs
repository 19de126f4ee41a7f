//! Root's crontab and the periodic `dump_mysql` line the release notes promise:
//! `30 0,12 * * * zstack-ctl dump_mysql --keep-amount 14`.
//!
//! The crontab is the operator's: the line is added only when no line already runs
//! `zstack-ctl dump_mysql` (so an operator's edit of its schedule or keep-amount is kept), and
//! every other line is kept byte for byte. On a real host it is read and written with
//! `crontab -l` / `crontab -` (the tool is the interface, and cron notices the change); under a
//! sysroot the spool file is written directly.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use zstack_common::os::{Family, OsRelease};
use zstack_common::templates::Templates;
use zstack_common::Layout;

/// The template of the line.
pub const CRON_TEMPLATE: &str = "cron/dump_mysql.cron.tera";

/// What `install_cron` did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CronChange {
    Added { line: String },
    AlreadyPresent { line: String },
}

/// Renders the dump_mysql line of this release.
pub fn render_line(templates: &Templates) -> anyhow::Result<String> {
    let text = templates.render(
        CRON_TEMPLATE,
        &serde_json::json!({ "zstack_ctl": "zstack-ctl" }),
    )?;
    Ok(text.trim().to_string())
}

/// The existing line that runs `zstack-ctl dump_mysql`, if any.
pub fn find_dump_line(crontab: &str) -> Option<&str> {
    crontab.lines().find(|l| {
        let t = l.trim_start();
        !t.starts_with('#') && t.contains("zstack-ctl") && t.contains("dump_mysql")
    })
}

/// Adds the line to `crontab` text unless a dump_mysql line is there; returns the new text.
pub fn with_dump_line(crontab: &str, line: &str) -> (String, CronChange) {
    if let Some(existing) = find_dump_line(crontab) {
        return (
            crontab.to_string(),
            CronChange::AlreadyPresent {
                line: existing.trim().to_string(),
            },
        );
    }
    let mut out = crontab.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(line);
    out.push('\n');
    (
        out,
        CronChange::Added {
            line: line.to_string(),
        },
    )
}

/// Installs the line idempotently in root's crontab.
pub fn install(layout: &Layout, templates: &Templates) -> anyhow::Result<CronChange> {
    let line = render_line(templates)?;
    let current = read(layout)?;
    let (new, change) = with_dump_line(current.as_deref().unwrap_or(""), &line);
    if matches!(change, CronChange::Added { .. }) {
        write(layout, Some(&new))?;
    }
    Ok(change)
}

/// Root's crontab, or `None` when root has none.
pub fn read(layout: &Layout) -> anyhow::Result<Option<String>> {
    if layout.is_sysroot() {
        let path = spool_file(layout);
        return zstack_common::fsutil::read_optional(&path)
            .with_context(|| format!("cannot read {}", path.display()))
            .map(|o| o.map(|b| String::from_utf8_lossy(&b).into_owned()));
    }
    let out = Command::new("crontab")
        .args(["-u", "root", "-l"])
        .stdin(Stdio::null())
        .output()
        .context("cannot run `crontab -l` (is cron installed?)")?;
    if out.status.success() {
        return Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()));
    }
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("no crontab") {
        return Ok(None);
    }
    bail!("`crontab -l` failed: {}", err.trim())
}

/// Replaces root's crontab with `content`, or removes it when `None` (used to undo).
pub fn write(layout: &Layout, content: Option<&str>) -> anyhow::Result<()> {
    if layout.is_sysroot() {
        let path = spool_file(layout);
        return match content {
            Some(c) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("cannot create {}", dir.display()))?;
                }
                zstack_common::fsutil::atomic_write(&path, c.as_bytes(), 0o600)
                    .with_context(|| format!("cannot write {}", path.display()))
            }
            None => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(e).with_context(|| format!("cannot remove {}", path.display()))
                }
                _ => Ok(()),
            },
        };
    }
    let status = match content {
        Some(c) => {
            use std::io::Write;
            let mut child = Command::new("crontab")
                .args(["-u", "root", "-"])
                .stdin(Stdio::piped())
                .spawn()
                .context("cannot run `crontab -`")?;
            child
                .stdin
                .take()
                .context("no stdin for crontab")?
                .write_all(c.as_bytes())
                .context("cannot write to `crontab -`")?;
            child.wait()?
        }
        None => Command::new("crontab")
            .args(["-u", "root", "-r"])
            .status()?,
    };
    if !status.success() {
        bail!("crontab refused the new table ({status})");
    }
    Ok(())
}

/// Root's cron spool file inside a sysroot, where that system's cron will read it.
fn spool_file(layout: &Layout) -> PathBuf {
    let family = OsRelease::read(layout.sysroot())
        .ok()
        .and_then(|o| o.supported_family().ok())
        .unwrap_or(Family::Debian);
    match family {
        Family::Debian => layout.host("/var/spool/cron/crontabs/root"),
        Family::Rhel => layout.host("/var/spool/cron/root"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = "30 0,12 * * * zstack-ctl dump_mysql --keep-amount 14";

    #[test]
    fn adds_once_and_keeps_other_lines() {
        let before = "MAILTO=ops@example.com\n0 1 * * * /usr/local/bin/rotate\n";
        let (after, change) = with_dump_line(before, LINE);
        assert_eq!(change, CronChange::Added { line: LINE.into() });
        assert!(after.starts_with(before));
        assert!(after.ends_with(&format!("{LINE}\n")));
        let (again, change) = with_dump_line(&after, LINE);
        assert_eq!(again, after);
        assert!(matches!(change, CronChange::AlreadyPresent { .. }));
    }

    #[test]
    fn an_operators_edit_of_the_line_is_kept() {
        let edited = "15 3 * * * zstack-ctl dump_mysql --keep-amount 30\n";
        let (after, change) = with_dump_line(edited, LINE);
        assert_eq!(after, edited);
        assert_eq!(
            change,
            CronChange::AlreadyPresent {
                line: edited.trim().into()
            }
        );
    }

    #[test]
    fn a_commented_out_line_does_not_count() {
        let (after, _) = with_dump_line("# 30 0,12 * * * zstack-ctl dump_mysql\n", LINE);
        assert!(after.ends_with(&format!("{LINE}\n")));
    }

    #[test]
    fn missing_trailing_newline_is_handled() {
        let (after, _) = with_dump_line("0 1 * * * x", LINE);
        assert_eq!(after, format!("0 1 * * * x\n{LINE}\n"));
    }
}

//! The SSH session of a deployment and what it puts back on failure.

use zstack_ssh::{Output, Session};

use super::{failed, ssh_error};
use crate::error::ApiError;

/// A logged-in session and the commands the deployment runs through it.
pub(super) struct Remote {
    pub(super) session: Session,
    pub(super) ip: String,
}

impl Remote {
    pub(super) fn run(&self, argv: &[&str]) -> Result<Output, ApiError> {
        self.session.run(argv).map_err(ssh_error)
    }

    /// Runs `argv`, which must succeed; its standard output.
    pub(super) fn ok(&self, what: &str, argv: &[&str]) -> Result<String, ApiError> {
        self.ok_with_input(what, argv, std::io::empty())
    }

    pub(super) fn ok_with_input(
        &self,
        what: &str,
        argv: &[&str],
        input: impl std::io::Read,
    ) -> Result<String, ApiError> {
        let out = self
            .session
            .run_with_input(argv, input)
            .map_err(ssh_error)?;
        if !out.success() {
            return Err(failed(format!(
                "{what} failed on {} (exit {}): {}",
                self.ip,
                out.status,
                out.stderr_text().trim()
            )));
        }
        Ok(out.stdout_text())
    }

    /// The contents of a file on the host, None if it has none.
    pub(super) fn read(&self, path: &str) -> Result<Option<String>, ApiError> {
        let out = self.run(&[
            "sh",
            "-c",
            "if [ -e \"$1\" ]; then cat -- \"$1\"; else exit 3; fi",
            "sh",
            path,
        ])?;
        match out.status {
            0 => Ok(Some(out.stdout_text())),
            3 => Ok(None),
            _ => Err(failed(format!(
                "cannot read {path} on {}: {}",
                self.ip,
                out.stderr_text().trim()
            ))),
        }
    }

    /// Writes a file on the host (through a temporary beside it, renamed).
    pub(super) fn write(&self, path: &str, mode: &str, contents: &[u8]) -> Result<(), ApiError> {
        self.ok_with_input(
            &format!("writing {path}"),
            &[
                "sh",
                "-c",
                "umask 077 && mkdir -p -- \"$(dirname -- \"$1\")\" && cat > \"$1.zstack-new\" && \
                 chmod \"$2\" \"$1.zstack-new\" && mv -f -- \"$1.zstack-new\" \"$1\"",
                "sh",
                path,
                mode,
            ],
            contents,
        )
        .map(|_| ())
    }

    pub(super) fn readlink(&self, path: &str) -> Result<Option<String>, ApiError> {
        let out = self.run(&["readlink", "--", path])?;
        Ok(out.success().then(|| out.stdout_text().trim().to_string()))
    }

    /// Points `link` at `target` (atomically: a new link renamed over the old one).
    pub(super) fn symlink(&self, target: &str, link: &str) -> Result<(), ApiError> {
        self.ok(
            &format!("linking {link}"),
            &[
                "sh",
                "-c",
                "ln -sfn -- \"$1\" \"$2.zstack-new\" && mv -fT -- \"$2.zstack-new\" \"$2\"",
                "sh",
                target,
                link,
            ],
        )
        .map(|_| ())
    }
}

/// What to put back if the deployment fails.
#[derive(Default)]
pub(super) struct Undo {
    /// The authorized_keys line added, and whether the file was made for it.
    pub(super) key_line: Option<(String, bool)>,
    /// Paths this deployment made (they did not exist before it).
    pub(super) made: Vec<String>,
    /// Links it re-pointed, with their previous targets.
    pub(super) relinked: Vec<(String, String)>,
    /// The agent was started by this deployment (stop it), or restarted (restart it).
    pub(super) agent: Option<AgentUndo>,
    pub(super) systemd: bool,
}

#[derive(Clone, Copy)]
pub(super) enum AgentUndo {
    Stop,
    Restart,
}

impl Undo {
    pub(super) fn run(&self, remote: &Remote) {
        let agent_cmd = |verb: &str| -> Vec<String> {
            if self.systemd {
                vec!["systemctl".into(), verb.into(), "zstack-kvmagent".into()]
            } else {
                vec![
                    "/usr/bin/zstack-ctl".into(),
                    verb.into(),
                    "--service".into(),
                    "zstack-kvmagent".into(),
                ]
            }
        };
        if let Some(AgentUndo::Stop) = self.agent {
            let argv = agent_cmd("stop");
            let _ = remote.run(&argv.iter().map(String::as_str).collect::<Vec<_>>());
            if self.systemd {
                let _ = remote.run(&["systemctl", "disable", "zstack-kvmagent"]);
            }
        }
        for (link, target) in self.relinked.iter().rev() {
            let _ = remote.symlink(target, link);
        }
        if !self.made.is_empty() {
            let mut argv = vec!["rm", "-rf", "--"];
            argv.extend(self.made.iter().map(String::as_str));
            let _ = remote.run(&argv);
        }
        if self.systemd && (!self.made.is_empty() || self.agent.is_some()) {
            let _ = remote.run(&["systemctl", "daemon-reload"]);
        }
        if let Some(AgentUndo::Restart) = self.agent {
            let argv = agent_cmd("restart");
            let _ = remote.run(&argv.iter().map(String::as_str).collect::<Vec<_>>());
        }
        if let Some((line, made_file)) = &self.key_line {
            let _ = remote.ok_with_input(
                "removing the management node's key",
                &[
                    "sh",
                    "-c",
                    "line=$(cat) && f=/root/.ssh/authorized_keys && \
                     { grep -vxF -e \"$line\" \"$f\" > \"$f.zstack-new\" || true; } && \
                     chmod 600 \"$f.zstack-new\" && mv -f \"$f.zstack-new\" \"$f\" && \
                     if [ \"$1\" = made ] && [ ! -s \"$f\" ]; then rm -f \"$f\"; fi",
                    "sh",
                    if *made_file { "made" } else { "kept" },
                ],
                line.as_bytes(),
            );
        }
    }
}

//! The steps of an install and of an upgrade, one method each; every one returns whether it
//! changed the host and a line saying what it did.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use zstack_common::fsutil::{self, read_optional};
use zstack_common::release::{Manifest, MANIFEST_FILE};
use zstack_common::server_files::SERVER_USER;
use zstack_common::service::{keys, InitSystem, Service};
use zstack_common::Properties;

use super::run::Run;
use crate::report::Reporter;
use crate::undo::Undo;

impl Run<'_> {
    pub(super) fn backup_db(&mut self) -> anyhow::Result<(bool, String)> {
        let from = self.upgrade_from.clone().context("not an upgrade")?;
        let name = format!("zstack-upgrade-{from}-to-{}", self.version);
        let r = zstack_ctl::backup::dump(&self.layout, &name, 10)
            .context("the backup before the upgrade failed; the upgrade is aborted")?;
        self.backup = Some(r.file.clone());
        Ok((
            true,
            format!("{} (restored, integrity_check passed)", r.file.display()),
        ))
    }

    pub(super) fn stop_server(&mut self) -> anyhow::Result<(bool, String)> {
        let l = self.layout.clone();
        if l.is_sysroot() {
            return Ok((false, "nothing runs in a sysroot".into()));
        }
        let init = InitSystem::detect(&l);
        if zstack_ctl::lifecycle::service_pid(&l, init, Service::Server).is_none() {
            return Ok((false, "the management node was not running".into()));
        }
        self.undo.push(Undo::Start(vec![Service::Server]));
        zstack_ctl::lifecycle::stop(&l, &[Service::Server], zstack_ctl::lifecycle::STOP_TIMEOUT)?;
        Ok((
            true,
            "stopped; the host agent and the VMs keep running".into(),
        ))
    }

    pub(super) fn migrate_db(&mut self) -> anyhow::Result<(bool, String)> {
        let l = self.layout.clone();
        let backup = self.backup.clone().context("no backup was taken")?;
        let db = l.host(l.db_file());
        let shipped = zstack_db::load_migrations(
            &l.host(l.version_dir(&self.version_str()).join("migrations")),
        )?;
        self.undo.push(Undo::RestoreDb { backup });
        let conn = zstack_db::open_existing(&db)?;
        let ledger = zstack_db::MigrationLedger::new(&conn, &db)?;
        let before = ledger.schema_version()?;
        let applied = ledger.migrate(&shipped, &self.version)?;
        let names: Vec<&str> = applied.iter().map(|m| m.file.as_str()).collect();
        Ok((
            !applied.is_empty(),
            format!(
                "schema {} -> {}: {}",
                before
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "none".into()),
                self.version,
                if names.is_empty() {
                    "nothing to apply".to_string()
                } else {
                    names.join(", ")
                }
            ),
        ))
    }

    pub(super) fn unpack(&mut self, rep: &Reporter) -> anyhow::Result<(bool, String)> {
        let ver = self.version_str();
        let dest = self.layout.host(self.layout.version_dir(&ver));
        let mut replaced: Option<PathBuf> = None;
        if dest.exists() {
            let check = std::fs::read_to_string(dest.join(MANIFEST_FILE))
                .map_err(anyhow::Error::from)
                .and_then(|t| Ok(Manifest::parse(&t)?))
                .and_then(|m| Ok(m.verify_tree(&dest)?));
            match check {
                Ok(()) => {
                    return Ok((
                        false,
                        format!("unchanged: {} is in place and verified", dest.display()),
                    ))
                }
                Err(e) if self.opts.force => {
                    rep.detail(&format!(
                        "{} differs from the release ({e:#}); replacing it (-F)",
                        dest.display()
                    ));
                    let aside =
                        dest.with_file_name(format!(".{ver}.replaced-{}", std::process::id()));
                    std::fs::rename(&dest, &aside)?;
                    self.undo.push(Undo::MoveBack {
                        from: aside.clone(),
                        to: dest.clone(),
                    });
                    replaced = Some(aside);
                }
                Err(e) => bail!(
                    "{} exists but differs from this release ({e:#}); run with -F to replace it",
                    dest.display()
                ),
            }
        }
        let versions = self.layout.host(self.layout.versions_dir());
        self.mkdirs(&versions, 0o755)?;
        let staging = versions.join(format!(".{ver}.partial-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir(&staging)
            .with_context(|| format!("cannot create {}", staging.display()))?;
        self.undo.push(Undo::Remove(staging.clone()));
        let total = self.bin.trailer.unpacked_size.max(1);
        let manifest = self.bin.extract(&staging, |done| {
            rep.detail(&format!("{}%", done * 100 / total))
        })?;
        fsutil::sync_dir(&staging)?;
        std::fs::rename(&staging, &dest)
            .with_context(|| format!("cannot move the release into {}", dest.display()))?;
        self.undo.push(Undo::Remove(dest.clone()));
        if let Some(old) = replaced {
            // The replaced tree stays until the run has succeeded, so a rollback can put it back.
            self.discard_on_success.push(old);
        }
        Ok((
            true,
            format!(
                "{} files ({} MiB) into {}",
                manifest.entries.len(),
                manifest.total_size() >> 20,
                dest.display()
            ),
        ))
    }

    pub(super) fn switch_current(&mut self) -> anyhow::Result<(bool, String)> {
        let link = self.layout.host(self.layout.current_link());
        let target = PathBuf::from("versions").join(self.version_str());
        if self.put_symlink(&link, &target)? {
            Ok((true, format!("current -> {}", target.display())))
        } else {
            Ok((false, format!("unchanged: current -> {}", target.display())))
        }
    }

    pub(super) fn link_commands(&mut self) -> anyhow::Result<(bool, String)> {
        let mut changed = Vec::new();
        for name in ["zstack-ctl", "zstack-cli"] {
            let link = self.layout.host(self.layout.usr_bin(name));
            let target = self.layout.current_bin(name);
            if self.put_symlink(&link, &target)? {
                changed.push(name);
            }
        }
        Ok(if changed.is_empty() {
            (
                false,
                "unchanged: zstack-ctl and zstack-cli are linked".into(),
            )
        } else {
            (true, format!("linked {}", changed.join(", ")))
        })
    }

    pub(super) fn write_config(&mut self) -> anyhow::Result<(bool, String)> {
        let path = self.layout.host(self.layout.properties_file());
        self.mkdirs(&self.layout.host(self.layout.etc_dir()), 0o755)?;
        // A compute host (--host-only) has no accounts: no admin password is written there.
        let management_node = self.services.contains(&Service::Server);
        let password = zstack_common::secret::random_password()?;
        let ctx = serde_json::json!({
            "management_node": management_node,
            "version": self.version_str(),
            "management_ip": self.management_ip,
            "api_port": Service::Server.default_port(),
            "agent_port": Service::KvmAgent.default_port(),
            "host_tls_port": zstack_common::service::DEFAULT_HOST_TLS_PORT,
            "agent_secret": zstack_common::secret::random_hex(32)?,
            "admin_password": password,
            "release": {"major": self.version.major, "minor": self.version.minor, "patch": self.version.patch},
        });
        let rendered = self
            .templates()?
            .render("config/zstack.properties.tera", &ctx)?;
        let defaults = Properties::parse(&rendered, "config/zstack.properties.tera")?;
        let (props, what) = match read_optional(&path)? {
            None => {
                if management_node {
                    self.admin_password = Some(password);
                }
                (defaults, "written with new secrets".to_string())
            }
            Some(bytes) => {
                let mut props = Properties::parse(
                    &String::from_utf8_lossy(&bytes),
                    &path.display().to_string(),
                )?;
                let mut renamed = Vec::new();
                if let Some(from) = &self.upgrade_from {
                    for step in crate::upgrade_steps::config_steps_between(from, &self.version) {
                        if (step.apply)(&mut props) {
                            renamed.push(step.what);
                        }
                    }
                }
                let added = props.add_missing(&defaults);
                if added.iter().any(|k| k == keys::ADMIN_PASSWORD) {
                    self.admin_password = Some(password);
                }
                let mut what = if added.is_empty() {
                    "your settings kept".to_string()
                } else {
                    format!("your settings kept; added {}", added.join(", "))
                };
                for r in renamed {
                    what.push_str(&format!("; {r}"));
                }
                if let Some(ip) = &self.opts.management_ip {
                    if props.set(keys::MANAGEMENT_IP, ip) {
                        what.push_str(&format!("; {} set to {ip} (-I)", keys::MANAGEMENT_IP));
                    }
                }
                (props, what)
            }
        };
        // 0640 root:zstack from 1.2.0 (the `user` step gives it the group), 0600 before.
        let mode = zstack_common::server_files::properties_mode(&self.version);
        let changed = self.put_file(&path, props.render().as_bytes(), mode)?;
        self.props = Some(props);
        Ok(if changed {
            (true, format!("{}: {what}", path.display()))
        } else {
            (false, format!("unchanged: {}", path.display()))
        })
    }

    pub(super) fn create_database(&mut self) -> anyhow::Result<(bool, String)> {
        let l = self.layout.clone();
        self.mkdirs(&l.host(l.data_dir()), 0o755)?;
        self.mkdirs(&l.host(l.backup_dir()), 0o700)?;
        self.mkdirs(&l.host(l.log_dir()), 0o755)?;
        let db = l.host(l.db_file());
        let mut note = String::new();
        if db.exists() && self.opts.drop_db {
            let stamp = chrono::Local::now().format("%Y-%m-%d_%H-%M-%S");
            for suffix in ["", "-wal", "-shm"] {
                let from = PathBuf::from(format!("{}{suffix}", db.display()));
                if from.exists() {
                    let to = l
                        .host(l.backup_dir())
                        .join(format!("zstack-dropped-{stamp}.db{suffix}"));
                    std::fs::rename(&from, &to)
                        .with_context(|| format!("cannot move {} aside", from.display()))?;
                    self.undo.push(Undo::MoveBack {
                        from: to.clone(),
                        to: from,
                    });
                    if suffix.is_empty() {
                        note = format!("; the old database was moved to {}", to.display());
                    }
                }
            }
        }
        let shipped = zstack_db::load_migrations(
            &l.host(l.version_dir(&self.version_str()).join("migrations")),
        )?;
        let existed = db.exists();
        if existed {
            // Migrating an existing DB: keep a copy to put back if anything later fails.
            let conn = zstack_db::open_existing(&db)?;
            let ledger = zstack_db::MigrationLedger::new(&conn, &db)?;
            ledger.verify(&shipped)?;
            let before = ledger.schema_version()?;
            let pending = ledger.pending(&shipped, &self.version)?;
            if pending.is_empty() {
                return Ok((
                    false,
                    format!("unchanged: {} is at schema {}", db.display(), self.version),
                ));
            }
            let copy = l
                .host(l.backup_dir())
                .join(format!(".zstack-pre-install-{}.db", std::process::id()));
            conn.backup(rusqlite::DatabaseName::Main, &copy, None)
                .with_context(|| format!("cannot copy the database to {}", copy.display()))?;
            drop(ledger);
            drop(conn);
            self.undo
                .push(Undo::Remove(PathBuf::from(format!("{}-wal", db.display()))));
            self.undo
                .push(Undo::Remove(PathBuf::from(format!("{}-shm", db.display()))));
            self.undo.push(Undo::MoveBack {
                from: copy.clone(),
                to: db.clone(),
            });
            let conn = zstack_db::open_existing(&db)?;
            let ledger = zstack_db::MigrationLedger::new(&conn, &db)?;
            let applied = ledger.migrate(&shipped, &self.version)?;
            drop(ledger);
            drop(conn);
            self.discard_on_success.push(copy);
            return Ok((
                true,
                format!(
                    "{} migrated from schema {} to {} ({} migration(s)){note}",
                    db.display(),
                    before
                        .map(|v| v.to_string())
                        .unwrap_or_else(|| "none".into()),
                    self.version,
                    applied.len()
                ),
            ));
        }
        for suffix in ["", "-wal", "-shm"] {
            self.undo.push(Undo::Remove(PathBuf::from(format!(
                "{}{suffix}",
                db.display()
            ))));
        }
        let conn = zstack_db::open(&db)?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600))?;
        }
        let ledger = zstack_db::MigrationLedger::new(&conn, &db)?;
        let applied = ledger.migrate(&shipped, &self.version)?;
        Ok((
            true,
            format!(
                "{} created at schema {} ({} migrations){note}",
                db.display(),
                self.version,
                applied.len()
            ),
        ))
    }

    /// Makes the system user `zstack` (unless it exists) and gives it the management node's
    /// files, each change journalled first.
    pub(super) fn server_user(&mut self) -> anyhow::Result<(bool, String)> {
        use zstack_ctl::server_files as files;
        let l = self.layout.clone();
        if l.is_sysroot() {
            return Ok((
                false,
                "unchanged: in a sysroot no user is made; the user zstack is made, and given its files, when the management node first starts".into(),
            ));
        }
        let mut what = Vec::new();
        if files::lookup()?.is_none() {
            let group_exists = nix::unistd::Group::from_name(SERVER_USER)?.is_some();
            self.undo.push(Undo::RemoveServerUser {
                group_too: !group_exists,
            });
        }
        let made = files::ensure_user(&l)?;
        if made.created_user {
            what.push(format!(
                "made the system user {} (uid {}, no login shell)",
                SERVER_USER, made.user.uid
            ));
        }
        let changes = files::pending_changes(&l, made.user)?;
        for c in &changes {
            self.undo.push(match c.before {
                Some(ownership) => Undo::RestoreOwner {
                    path: c.path.clone(),
                    dir: c.dir,
                    ownership,
                },
                None => Undo::Remove(c.path.clone()),
            });
            files::apply(c)?;
        }
        if !changes.is_empty() {
            let names: Vec<String> = changes
                .iter()
                .map(|c| c.path.display().to_string())
                .collect();
            what.push(format!("gave it {}", names.join(", ")));
        }
        Ok(if what.is_empty() {
            (
                false,
                format!(
                    "unchanged: the management node runs as {} and owns its files",
                    SERVER_USER
                ),
            )
        } else {
            (true, what.join("; "))
        })
    }

    pub(super) fn install_units(&mut self) -> anyhow::Result<(bool, String)> {
        let l = self.layout.clone();
        let init = InitSystem::detect(&l);
        if init == InitSystem::Systemd {
            self.undo.push(Undo::DaemonReload);
        }
        let props = self.props.clone().unwrap_or_default();
        let backup_storage_dirs = if self.services.contains(&Service::Server) {
            zstack_ctl::server_files::local_backup_storage_dirs(&l)?
        } else {
            Vec::new()
        };
        let mut changed = Vec::new();
        for s in self.services.clone() {
            let ctx = serde_json::json!({
                "version": self.version_str(),
                "install_root": l.install_root(),
                "api_port": Service::Server.port(&props).map_err(anyhow::Error::msg)?,
                "agent_port": Service::KvmAgent.port(&props).map_err(anyhow::Error::msg)?,
                "storage_mounts": Vec::<String>::new(),
                "server_user": zstack_common::server_files::runs_as_server_user(&self.version)
                    .then_some(SERVER_USER),
                "writable_paths": zstack_common::server_files::writable_paths(&l),
                "backup_storage_dirs": backup_storage_dirs,
            });
            let text = self.templates()?.render(&s.unit_template(), &ctx)?;
            let unit_path = l.host(l.systemd_dir().join(s.unit()));
            let wrote = self.put_file(&unit_path, text.as_bytes(), 0o644)?;
            // Enabled as `systemctl enable` would: a link in multi-user.target.wants.
            let wants = l.host(
                l.systemd_dir()
                    .join("multi-user.target.wants")
                    .join(s.unit()),
            );
            let linked = self.put_symlink(&wants, &l.systemd_dir().join(s.unit()))?;
            if wrote || linked {
                changed.push(s.unit());
            }
        }
        if init == InitSystem::Systemd && !changed.is_empty() {
            let st = std::process::Command::new("systemctl")
                .arg("daemon-reload")
                .status()?;
            if !st.success() {
                bail!("systemctl daemon-reload failed ({st})");
            }
        }
        Ok(if changed.is_empty() {
            (false, "unchanged: units installed and enabled".into())
        } else {
            (
                true,
                format!("installed and enabled {}", changed.join(", ")),
            )
        })
    }

    pub(super) fn install_cron(&mut self) -> anyhow::Result<(bool, String)> {
        let line = zstack_ctl::cron::render_line(self.templates()?)?;
        let before = zstack_ctl::cron::read(&self.layout)?;
        let (after, change) =
            zstack_ctl::cron::with_dump_line(before.as_deref().unwrap_or(""), &line);
        match change {
            zstack_ctl::cron::CronChange::AlreadyPresent { line } => Ok((
                false,
                format!("unchanged: root's crontab already runs `{line}`"),
            )),
            zstack_ctl::cron::CronChange::Added { line } => {
                self.undo.push(Undo::RestoreCrontab(before));
                zstack_ctl::cron::write(&self.layout, Some(&after))?;
                Ok((true, format!("added `{line}`")))
            }
        }
    }

    pub(super) fn start(&mut self, rep: &Reporter) -> anyhow::Result<(bool, String)> {
        let l = self.layout.clone();
        let props = self.props.clone().context("configuration not loaded")?;
        let init = InitSystem::detect(&l);
        let mut to_start = Vec::new();
        let mut restarted = Vec::new();
        for &s in &self.services {
            match zstack_ctl::lifecycle::service_pid(&l, init, s) {
                None => to_start.push(s),
                Some(_) => match zstack_ctl::lifecycle::check_health(&l, &props, s) {
                    Ok(h) if h.version == self.version.to_string() => {}
                    _ => restarted.push(s),
                },
            }
        }
        if !restarted.is_empty() {
            // A failure later starts them again, as the release that is current by then.
            self.undo.push(Undo::Start(restarted.clone()));
            zstack_ctl::lifecycle::stop(&l, &restarted, zstack_ctl::lifecycle::STOP_TIMEOUT)?;
            to_start.extend(restarted.iter().copied());
        }
        if to_start.is_empty() {
            return Ok((
                false,
                "unchanged: all services are running and answering".into(),
            ));
        }
        // /run/zstack (pid and lock files) goes too if this run made it.
        self.mkdirs(&l.host(l.run_dir()), 0o755)?;
        self.undo.push(Undo::Stop(to_start.clone()));
        if init == InitSystem::Supervisor {
            rep.detail("systemd is not PID 1: zstack-ctl supervises the services");
        }
        zstack_ctl::lifecycle::start(&l, &props, &to_start, Duration::from_secs(90))?;
        for &s in &to_start {
            let h =
                zstack_ctl::lifecycle::check_health(&l, &props, s).map_err(anyhow::Error::msg)?;
            if h.version != self.version.to_string() {
                bail!(
                    "{} answers as release {}, not {}",
                    s.name(),
                    h.version,
                    self.version
                );
            }
        }
        let names: Vec<_> = to_start.iter().map(|s| s.name()).collect();
        Ok((
            true,
            format!(
                "{} running and answering ({})",
                names.join(" and "),
                match init {
                    InitSystem::Systemd => "systemd",
                    InitSystem::Supervisor => "supervised by zstack-ctl; systemd is not PID 1 here",
                }
            ),
        ))
    }
}

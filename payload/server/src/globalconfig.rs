//! Global configuration: every config is declared once here, with its type, default,
//! description and validator. Values live in the `global_config` table; a change is read by the
//! next operation that uses it (the next VM start or volume attach for `kvm/vm.cacheMode`).

use rusqlite::{params, Connection, OptionalExtension};

use crate::error::ApiError;

pub struct GlobalConfigDef {
    /// The releases that have this declaration: `since <= release < until`.
    pub since: (u64, u64, u64),
    pub until: Option<(u64, u64, u64)>,
    pub category: &'static str,
    pub name: &'static str,
    pub kind: &'static str,
    pub default: &'static str,
    pub description: &'static str,
    /// The allowed values, for enumerations.
    pub allowed: &'static [&'static str],
    /// Inclusive range, for integers.
    pub range: Option<(i64, i64)>,
}

pub const DEFS: &[GlobalConfigDef] = &[
    // 1.1 stored the cache mode as an integer; 1.2.0's migration maps it to libvirt's names.
    GlobalConfigDef {
        since: (1, 1, 0),
        until: Some((1, 2, 0)),
        category: "kvm",
        name: "vm.cacheMode",
        kind: "integer",
        default: "0",
        description: "libvirt disk cache mode of VMs: 0 = none, 1 = writethrough, 2 = writeback",
        allowed: &[],
        range: Some((0, 2)),
    },
    GlobalConfigDef {
        since: (1, 2, 0),
        until: None,
        category: "kvm",
        name: "vm.cacheMode",
        kind: "enum",
        default: "none",
        description: "libvirt disk cache mode of VMs started or volumes attached after a change: none, writethrough or writeback",
        allowed: &["none", "writethrough", "writeback"],
        range: None,
    },
    GlobalConfigDef {
        since: (1, 0, 0),
        until: None,
        category: "identity",
        name: "session.timeout",
        kind: "integer",
        default: "7200",
        description: "seconds a session stays valid after LogInByAccount",
        allowed: &[],
        range: Some((60, 31_536_000)),
    },
    GlobalConfigDef {
        since: (1, 2, 0),
        until: None,
        category: "kvm",
        name: "vm.gracefulStopTimeout",
        kind: "integer",
        default: "60",
        description: "seconds StopVmInstance type=grace waits for the guest to power off (ACPI) before stopping it by force",
        allowed: &[],
        range: Some((1, 3600)),
    },
    GlobalConfigDef {
        since: (1, 2, 0),
        until: None,
        category: "vm",
        name: "metadata.tokenRequired",
        kind: "enum",
        default: "false",
        description: "true: VMs must get a token (IMDSv2, PUT /latest/api/token) before reading their metadata and user data; used by VMs started after a change",
        allowed: &["true", "false"],
        range: None,
    },
    GlobalConfigDef {
        since: (1, 2, 0),
        until: None,
        category: "host",
        name: "ping.interval",
        kind: "integer",
        default: "15",
        description: "seconds between two pings of every host's agent; a host that does not answer is Disconnected, and reconnected when it answers again",
        allowed: &[],
        range: Some((1, 3600)),
    },
    GlobalConfigDef {
        since: (1, 2, 0),
        until: None,
        category: "job",
        name: "retention.days",
        kind: "integer",
        default: "7",
        description: "days a finished asynchronous job stays readable; older ones are forgotten when the management node starts",
        allowed: &[],
        range: Some((1, 3650)),
    },
    GlobalConfigDef {
        since: (1, 2, 0),
        until: None,
        category: "identity",
        name: "session.failedLoginLimitPerAccount",
        kind: "integer",
        default: "10",
        description: "failed LogInByAccount attempts for one account name within identity/session.failedLoginWindowSeconds; past it the account's logins are refused (429) until the oldest leaves the window",
        allowed: &[],
        range: Some((1, 1_000_000)),
    },
    GlobalConfigDef {
        since: (1, 2, 0),
        until: None,
        category: "identity",
        name: "session.failedLoginLimitPerAddress",
        kind: "integer",
        default: "30",
        description: "failed LogInByAccount attempts from one source address, whatever the account, within identity/session.failedLoginWindowSeconds; past it logins from that address are refused (429) until the oldest leaves the window",
        allowed: &[],
        range: Some((1, 1_000_000)),
    },
    GlobalConfigDef {
        since: (1, 2, 0),
        until: None,
        category: "identity",
        name: "session.failedLoginWindowSeconds",
        kind: "integer",
        default: "300",
        description: "seconds a failed LogInByAccount attempt counts against its account and its source address",
        allowed: &[],
        range: Some((1, 86_400)),
    },
];

/// The declarations of `release`.
pub fn defs_for(release: &semver::Version) -> impl Iterator<Item = &'static GlobalConfigDef> + '_ {
    let r = (release.major, release.minor, release.patch);
    DEFS.iter()
        .filter(move |d| d.since <= r && d.until.is_none_or(|u| r < u))
}

pub fn find(
    release: &semver::Version,
    category: &str,
    name: &str,
) -> Option<&'static GlobalConfigDef> {
    defs_for(release).find(|d| d.category == category && d.name == name)
}

impl GlobalConfigDef {
    pub fn validate(&self, value: &str) -> Result<(), ApiError> {
        if !self.allowed.is_empty() && !self.allowed.contains(&value) {
            return Err(ApiError::invalid(
                "value",
                format!(
                    "{}/{} does not accept {value:?}; allowed values: {}",
                    self.category,
                    self.name,
                    self.allowed.join(", ")
                ),
            ));
        }
        if let Some((lo, hi)) = self.range {
            match value.parse::<i64>() {
                Ok(v) if (lo..=hi).contains(&v) => {}
                _ => {
                    return Err(ApiError::invalid(
                        "value",
                        format!(
                            "{}/{} must be an integer from {lo} to {hi}, not {value:?}",
                            self.category, self.name
                        ),
                    ))
                }
            }
        }
        Ok(())
    }
}

/// Inserts every declared config that the table lacks, with its default.
pub fn seed(conn: &Connection, release: &semver::Version) -> Result<(), ApiError> {
    for d in defs_for(release) {
        conn.execute(
            "INSERT OR IGNORE INTO global_config (category, name, value, default_value, description)
             VALUES (?1, ?2, ?3, ?3, ?4)",
            params![d.category, d.name, d.default, d.description],
        )?;
    }
    Ok(())
}

/// The current value of a declared config.
pub fn value(
    conn: &Connection,
    release: &semver::Version,
    category: &str,
    name: &str,
) -> Result<String, ApiError> {
    let v: Option<String> = conn
        .query_row(
            "SELECT value FROM global_config WHERE category = ?1 AND name = ?2",
            [category, name],
            |r| r.get(0),
        )
        .optional()?;
    Ok(
        v.or_else(|| find(release, category, name).map(|d| d.default.to_string()))
            .unwrap_or_default(),
    )
}

pub fn update(
    conn: &Connection,
    release: &semver::Version,
    category: &str,
    name: &str,
    value: &str,
) -> Result<(), ApiError> {
    let def = find(release, category, name).ok_or_else(|| {
        let known: Vec<String> = defs_for(release)
            .map(|d| format!("{}/{}", d.category, d.name))
            .collect();
        ApiError::invalid(
            "name",
            format!(
                "no global config {category}/{name}; known: {}",
                known.join(", ")
            ),
        )
    })?;
    def.validate(value)?;
    conn.execute(
        "UPDATE global_config SET value = ?3 WHERE category = ?1 AND name = ?2",
        params![category, name, value],
    )?;
    Ok(())
}

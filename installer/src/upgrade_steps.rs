//! Upgrade steps in code, each tagged with the release that introduced it. An upgrade from A to
//! B runs, in ascending order, every step with A < version <= B (the SQL migrations, tagged the
//! same way by their file names, run through the ledger).

use zstack_common::service::keys;
use zstack_common::Properties;

/// A change to zstack.properties that a release made.
pub struct ConfigStep {
    pub version: semver::Version,
    pub what: &'static str,
    /// Applies the change; true if the file changed.
    pub apply: fn(&mut Properties) -> bool,
}

/// Every configuration step, in release order.
pub fn config_steps() -> Vec<ConfigStep> {
    vec![
        ConfigStep {
            version: semver::Version::new(1, 2, 0),
            what: "api.port renamed to management.api.port",
            apply: |p| p.rename(keys::LEGACY_API_PORT, keys::API_PORT),
        },
        ConfigStep {
            version: semver::Version::new(1, 2, 0),
            what: "kvmagent.secret removed (agents and the management node trust each other \
                   through the cloud's certificates now)",
            apply: |p| p.remove(keys::LEGACY_AGENT_SECRET),
        },
    ]
}

/// The steps with `from < version <= to`, in order.
pub fn config_steps_between(from: &semver::Version, to: &semver::Version) -> Vec<ConfigStep> {
    let mut steps: Vec<ConfigStep> = config_steps()
        .into_iter()
        .filter(|s| &s.version > from && &s.version <= to)
        .collect();
    steps.sort_by(|a, b| a.version.cmp(&b.version));
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_chosen_by_release() {
        let v = |s: &str| semver::Version::parse(s).unwrap();
        assert_eq!(config_steps_between(&v("1.0.0"), &v("1.2.0")).len(), 2);
        assert_eq!(config_steps_between(&v("1.1.0"), &v("1.2.0")).len(), 2);
        assert!(config_steps_between(&v("1.0.0"), &v("1.1.0")).is_empty());
        assert!(config_steps_between(&v("1.2.0"), &v("1.2.1")).is_empty());
        let mut p = Properties::parse(
            "api.port = 9090\n\n# Shared secret.\nkvmagent.secret = abc\nkvmagent.port = 7070\n",
            "t",
        )
        .unwrap();
        for s in config_steps_between(&v("1.1.0"), &v("1.2.0")) {
            assert!((s.apply)(&mut p));
        }
        assert_eq!(p.get("management.api.port"), Some("9090"));
        assert_eq!(p.get("kvmagent.secret"), None);
        assert!(!p.render().contains("Shared secret"), "{}", p.render());
        assert_eq!(p.get("kvmagent.port"), Some("7070"));
    }
}

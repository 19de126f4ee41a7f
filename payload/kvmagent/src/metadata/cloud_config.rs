//! The `#cloud-config` a VM is served when it has no user data of its own.

use serde::Serialize;
use zstack_common::templates::{TemplateError, Templates};

/// `templates/cloud-init/cloud-config.tera`, carried inside the agent: the metadata store renders
/// it without the release tree at hand.
const TEMPLATE_NAME: &str = "cloud-init/cloud-config.tera";
const TEMPLATE: &str = include_str!("../../../../templates/cloud-init/cloud-config.tera");

/// Why a VM's `#cloud-config` cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum CloudConfigError {
    #[error("ssh key {0:?} is not an OpenSSH public key line (a key type, its base64 key and an optional comment, no control characters): give the key as ssh-keygen writes it in its .pub file")]
    SshKey(String),
    #[error("the root password hash is not a crypt(3) hash ($<id>$<salt>$<hash> of letters, digits and ./=,): set the password again through the API")]
    PasswordHash,
    #[error("cannot render the VM's #cloud-config: {0}")]
    Render(#[from] TemplateError),
}

#[derive(Serialize)]
struct CloudConfig<'a> {
    ssh_keys: Vec<&'a str>,
    password_hash: Option<&'a str>,
}

/// One line of an `authorized_keys` file as `ssh-keygen` writes a `.pub`: `type key [comment]`.
fn check_ssh_key(line: &str) -> Result<(), CloudConfigError> {
    let bad = || CloudConfigError::SshKey(line.to_string());
    let mut words = line.split_whitespace();
    let kind = words.next().ok_or_else(bad)?;
    let key = words.next().ok_or_else(bad)?;
    let kind_ok = kind
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "@.-_".contains(c));
    let key_ok = key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c));
    if !kind_ok || !key_ok || line.chars().any(char::is_control) {
        return Err(bad());
    }
    Ok(())
}

/// A crypt(3) hash: `$id$[rounds=N$]salt$hash`.
fn check_password_hash(hash: &str) -> Result<(), CloudConfigError> {
    let ok = hash.len() <= 512
        && hash.starts_with('$')
        && hash
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "./$=,".contains(c));
    if ok {
        Ok(())
    } else {
        Err(CloudConfigError::PasswordHash)
    }
}

/// The user data a VM is served: its own; else, when it has an ssh key or a root password, a
/// `#cloud-config` that authorizes the key (for root too, as the original did) and sets the
/// password from its hash; else none. The key lines and the hash are checked before they reach
/// the template, which quotes them as YAML scalars besides.
pub fn user_data_for(
    user_data: Option<&str>,
    ssh_key: Option<&str>,
    root_password_hash: Option<&str>,
) -> Result<Option<String>, CloudConfigError> {
    if let Some(u) = user_data.filter(|u| !u.is_empty()) {
        return Ok(Some(u.to_string()));
    }
    let keys: Vec<&str> = ssh_key
        .unwrap_or("")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let hash = root_password_hash.filter(|h| !h.is_empty());
    if keys.is_empty() && hash.is_none() {
        return Ok(None);
    }
    for k in &keys {
        check_ssh_key(k)?;
    }
    if let Some(h) = hash {
        check_password_hash(h)?;
    }
    let templates = Templates::from_texts(&[(TEMPLATE_NAME, TEMPLATE)])?;
    let text = templates.render(
        TEMPLATE_NAME,
        &CloudConfig {
            ssh_keys: keys,
            password_hash: hash,
        },
    )?;
    Ok(Some(text))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a panic is a failed test

    use super::*;

    #[test]
    fn a_root_password_becomes_a_cloud_config_with_its_hash() {
        let hash = "$6$rounds=5000$salt$abc/def";
        let ud = user_data_for(None, None, Some(hash)).unwrap().unwrap();
        assert_eq!(
            ud,
            "#cloud-config\ndisable_root: false\nssh_pwauth: true\nchpasswd:\n  expire: false\n  users:\n    - name: root\n      type: hash\n      password: \"$6$rounds=5000$salt$abc/def\"\n"
        );
        let both = user_data_for(None, Some("ssh-ed25519 K"), Some(hash))
            .unwrap()
            .unwrap();
        assert!(
            both.contains("ssh_authorized_keys:\n  - \"ssh-ed25519 K\"")
                && both.contains("type: hash")
        );
        // The VM's own user data always wins.
        assert_eq!(
            user_data_for(Some("#!/bin/sh"), Some("k"), Some(hash))
                .unwrap()
                .as_deref(),
            Some("#!/bin/sh")
        );
        assert_eq!(user_data_for(None, None, None).unwrap(), None);
    }

    #[test]
    fn values_that_would_break_the_yaml_are_refused() {
        for key in [
            "ssh-ed25519 K\0x",
            "ssh-ed25519 K\rdisable_root: true",
            "ssh-ed25519 \"K\"",
            "x",
            "ssh-ed25519 K\u{1b}",
        ] {
            let e = user_data_for(None, Some(key), None).unwrap_err();
            assert!(matches!(e, CloudConfigError::SshKey(_)), "{key:?}: {e}");
        }
        // A newline splits keys: each line is one key and each is checked.
        let e = user_data_for(None, Some("ssh-ed25519 K\nruncmd: [reboot]"), None).unwrap_err();
        assert!(matches!(e, CloudConfigError::SshKey(_)), "{e}");
        for hash in ["$6$s$h\"\nruncmd: [reboot]", "$6$s$h\0", "$6$s$h'", "plain"] {
            let e = user_data_for(None, None, Some(hash)).unwrap_err();
            assert!(matches!(e, CloudConfigError::PasswordHash), "{hash:?}: {e}");
        }
        // A comment with YAML's own characters stays inside its quoted scalar.
        let ud = user_data_for(None, Some("ssh-ed25519 K me: #1 'x'"), None)
            .unwrap()
            .unwrap();
        assert!(ud.contains("  - \"ssh-ed25519 K me: #1 'x'\"\n"), "{ud}");
    }
}

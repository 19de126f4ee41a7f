//! The `#cloud-config` a VM is served when it has no user data of its own.

pub fn user_data_for(
    user_data: Option<&str>,
    ssh_key: Option<&str>,
    root_password_hash: Option<&str>,
) -> Option<String> {
    if let Some(u) = user_data.filter(|u| !u.is_empty()) {
        return Some(u.to_string());
    }
    let keys: Vec<&str> = ssh_key
        .unwrap_or("")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let hash = root_password_hash.filter(|h| !h.is_empty());
    if keys.is_empty() && hash.is_none() {
        return None;
    }
    // A JSON string is a YAML double-quoted scalar: a key comment with `#` or `: ` in it stays
    // part of the key, and a hash's `$` needs no escaping.
    let quoted = |v: &str| serde_json::Value::from(v).to_string();
    let mut text = String::from("#cloud-config\n");
    if !keys.is_empty() {
        text.push_str("ssh_authorized_keys:\n");
        for k in keys {
            text.push_str("  - ");
            text.push_str(&quoted(k));
            text.push('\n');
        }
    }
    text.push_str("disable_root: false\n");
    if let Some(h) = hash {
        text.push_str("ssh_pwauth: true\nchpasswd:\n  expire: false\n  users:\n");
        text.push_str(&format!(
            "    - name: root\n      type: hash\n      password: {}\n",
            quoted(h)
        ));
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a panic is a failed test

    use super::*;

    #[test]
    fn a_root_password_becomes_a_cloud_config_with_its_hash() {
        let hash = "$6$rounds=5000$salt$abc/def";
        let ud = user_data_for(None, None, Some(hash)).unwrap();
        assert_eq!(
            ud,
            "#cloud-config\ndisable_root: false\nssh_pwauth: true\nchpasswd:\n  expire: false\n  users:\n    - name: root\n      type: hash\n      password: \"$6$rounds=5000$salt$abc/def\"\n"
        );
        let both = user_data_for(None, Some("ssh-ed25519 K"), Some(hash)).unwrap();
        assert!(
            both.contains("ssh_authorized_keys:\n  - \"ssh-ed25519 K\"")
                && both.contains("type: hash")
        );
        // The VM's own user data always wins.
        assert_eq!(
            user_data_for(Some("#!/bin/sh"), Some("k"), Some(hash)).as_deref(),
            Some("#!/bin/sh")
        );
        assert_eq!(user_data_for(None, None, None), None);
    }
}

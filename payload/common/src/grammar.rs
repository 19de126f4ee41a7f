//! The grammar of values that end up in rendered files (dnsmasq configuration, libvirt XML,
//! nftables rules, cloud-config, systemd units, fstab): each is checked against what it is
//! before it is stored, so a value can never carry a line, a quote or a NUL into such a file.
//! The templates escape for their format as a second line of defence.

use std::net::Ipv4Addr;

/// What a value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grammar {
    /// A DNS domain: dot-separated labels of letters, digits and inner hyphens, each 1-63
    /// characters, at most 253 in all (`zstack.local`).
    DnsDomain,
    /// A host name: one DNS label, or a DNS domain.
    Hostname,
    /// A Linux network interface name short enough that the bridge `br_<name>` fits in 15
    /// characters: letters, digits, `.`, `-`, `_`.
    InterfaceName,
    /// An absolute path: starts with `/`, no whitespace, quotes, backslashes, control characters,
    /// `.` or `..` components.
    AbsolutePath,
    /// Free text on one line: no control characters (newline, NUL, ...).
    Line,
    /// A dotted-quad IPv4 address.
    Ipv4,
    /// An OpenSSH public key line: `<type> <base64> [comment]`, printable ASCII, no quotes or
    /// backslashes.
    SshPublicKey,
}

/// Why a value does not fit its grammar (the message names the value's fault, not the
/// parameter; the caller adds that).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct GrammarError(pub String);

fn fault(message: impl Into<String>) -> Result<(), GrammarError> {
    Err(GrammarError(message.into()))
}

/// Names a character for an error message: `a newline`, `a NUL`, `'"'`.
fn describe(c: char) -> String {
    match c {
        '\n' => "a newline".into(),
        '\r' => "a carriage return".into(),
        '\t' => "a tab".into(),
        '\0' => "a NUL".into(),
        ' ' => "a space".into(),
        c if c.is_control() => format!("the control character U+{:04X}", c as u32),
        c => format!("{c:?}"),
    }
}

fn no_control(value: &str) -> Result<(), GrammarError> {
    match value.chars().find(|c| c.is_control()) {
        Some(c) => fault(format!("it contains {}", describe(c))),
        None => Ok(()),
    }
}

fn dns_label(label: &str) -> Result<(), GrammarError> {
    if label.is_empty() {
        return fault("it has an empty label (two dots in a row, or a dot at an end)");
    }
    if label.len() > 63 {
        return fault(format!("its label {label:?} is longer than 63 characters"));
    }
    if let Some(c) = label
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return fault(format!("it contains {}", describe(c)));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return fault(format!("its label {label:?} starts or ends with a hyphen"));
    }
    Ok(())
}

impl Grammar {
    /// The grammar's name, as the API reference shows it.
    pub fn name(self) -> &'static str {
        match self {
            Grammar::DnsDomain => "dns-domain",
            Grammar::Hostname => "hostname",
            Grammar::InterfaceName => "interface-name",
            Grammar::AbsolutePath => "absolute-path",
            Grammar::Line => "text-line",
            Grammar::Ipv4 => "ipv4",
            Grammar::SshPublicKey => "ssh-public-key",
        }
    }

    /// What is allowed, for error messages.
    pub fn allowed(self) -> &'static str {
        match self {
            Grammar::DnsDomain => {
                "a DNS domain: labels of letters, digits and inner hyphens separated by dots, \
                 at most 253 characters (e.g. zstack.local)"
            }
            Grammar::Hostname => {
                "a host name: labels of letters, digits and inner hyphens separated by dots \
                 (e.g. web-1 or web-1.zstack.local)"
            }
            Grammar::InterfaceName => {
                "an interface name of 1 to 12 letters, digits, '.', '-' or '_' (e.g. eth0; the \
                 bridge br_<name> must fit in 15 characters)"
            }
            Grammar::AbsolutePath => {
                "an absolute path (starting with /) without spaces, quotes, backslashes, \
                 control characters, or . and .. components"
            }
            Grammar::Line => "text on one line, without control characters",
            Grammar::Ipv4 => "an IPv4 address such as 192.168.1.10",
            Grammar::SshPublicKey => {
                "one OpenSSH public key line: <type> <base64 key> [comment], e.g. ssh-ed25519 \
                 AAAA... user@host, without quotes or backslashes"
            }
        }
    }

    /// Checks `value`; the error says what is wrong with it.
    pub fn check(self, value: &str) -> Result<(), GrammarError> {
        match self {
            Grammar::Line => no_control(value),
            Grammar::DnsDomain | Grammar::Hostname => {
                no_control(value)?;
                if value.len() > 253 {
                    return fault("it is longer than 253 characters");
                }
                value.split('.').try_for_each(dns_label)
            }
            Grammar::InterfaceName => {
                no_control(value)?;
                if value.is_empty() || value.len() > 12 {
                    return fault(format!("it has {} characters", value.len()));
                }
                if let Some(c) = value
                    .chars()
                    .find(|c| !(c.is_ascii_alphanumeric() || ".-_".contains(*c)))
                {
                    return fault(format!("it contains {}", describe(c)));
                }
                if value == "." || value == ".." {
                    return fault("it is . or ..");
                }
                Ok(())
            }
            Grammar::AbsolutePath => {
                no_control(value)?;
                if !value.starts_with('/') {
                    return fault("it does not start with /");
                }
                if let Some(c) = value
                    .chars()
                    .find(|c| c.is_whitespace() || "\"'\\`$".contains(*c))
                {
                    return fault(format!("it contains {}", describe(c)));
                }
                if value.split('/').any(|part| part == "." || part == "..") {
                    return fault("it has a . or .. component");
                }
                if value.len() > 4000 {
                    return fault("it is longer than 4000 characters");
                }
                Ok(())
            }
            Grammar::Ipv4 => {
                no_control(value)?;
                value
                    .parse::<Ipv4Addr>()
                    .map(|_| ())
                    .map_err(|_| GrammarError("it is not a dotted-quad IPv4 address".into()))
            }
            Grammar::SshPublicKey => {
                no_control(value)?;
                if let Some(c) = value
                    .chars()
                    .find(|c| !c.is_ascii() || "\"'\\".contains(*c))
                {
                    return fault(format!("it contains {}", describe(c)));
                }
                let mut words = value.split(' ').filter(|w| !w.is_empty());
                let kind = words.next().unwrap_or("");
                let known = kind.starts_with("ssh-")
                    || kind.starts_with("ecdsa-sha2-")
                    || kind.starts_with("sk-");
                if !known {
                    return fault(format!("{kind:?} is not an OpenSSH key type"));
                }
                let key = words.next().unwrap_or("");
                let base64 = !key.is_empty()
                    && key
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c));
                if !base64 {
                    return fault("the key after its type is not base64");
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Grammar::*;
    use super::*;

    const ALL: [Grammar; 7] = [
        DnsDomain,
        Hostname,
        InterfaceName,
        AbsolutePath,
        Line,
        Ipv4,
        SshPublicKey,
    ];

    fn good(g: Grammar) -> &'static str {
        match g {
            DnsDomain => "zstack.local",
            Hostname => "web-1",
            InterfaceName => "eth0.100",
            AbsolutePath => "/zstack_ps",
            Line => "a name with \"quotes\" & <angles>",
            Ipv4 => "192.168.1.10",
            SshPublicKey => "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG1+/= user@host",
        }
    }

    #[test]
    fn every_grammar_takes_its_example_and_refuses_a_newline_and_a_nul() {
        for g in ALL {
            assert_eq!(g.check(good(g)), Ok(()), "{g:?}");
            for bad in ["\n", "\0"] {
                let v = format!("{}{bad}x", good(g));
                let e = g.check(&v).expect_err(&v);
                assert!(
                    e.0.contains("a newline") || e.0.contains("a NUL"),
                    "{g:?}: {e}"
                );
            }
        }
    }

    #[test]
    fn quotes_are_refused_where_a_file_would_take_them_as_syntax() {
        for g in [
            DnsDomain,
            Hostname,
            InterfaceName,
            AbsolutePath,
            Ipv4,
            SshPublicKey,
        ] {
            for q in ["\"", "'"] {
                let v = format!("{}{q}", good(g));
                assert!(g.check(&v).is_err(), "{g:?} took {v:?}");
            }
        }
    }

    #[test]
    fn dns_domains() {
        assert!(DnsDomain.check("x\ndhcp-script=/path").is_err());
        assert!(DnsDomain.check("a..b").is_err());
        assert!(DnsDomain.check("-a.b").is_err());
        assert!(DnsDomain.check("a b").is_err());
        assert!(DnsDomain.check(&"a".repeat(64)).is_err());
        assert!(DnsDomain.check("eu-1.cloud.example").is_ok());
    }

    #[test]
    fn paths_and_interfaces() {
        assert!(AbsolutePath.check("relative/path").is_err());
        assert!(AbsolutePath.check("/a/../etc").is_err());
        assert!(AbsolutePath.check("/a b").is_err());
        assert!(AbsolutePath.check("/mnt/gluster-fs_1").is_ok());
        assert!(InterfaceName.check("eth0/1").is_err());
        assert!(InterfaceName.check("averylongname0").is_err());
        assert!(InterfaceName.check("").is_err());
        assert!(Ipv4.check("1.2.3").is_err());
        assert!(SshPublicKey.check("not-a-key AAAA").is_err());
        assert!(SshPublicKey.check("ssh-rsa not*base64").is_err());
    }
}

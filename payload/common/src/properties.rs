//! `zstack.properties`: `key = value` lines, `#` comments. The file is the operator's as much as
//! ours, so it is edited in place: every comment, blank line and the order of keys survive a
//! rewrite, and only the lines whose value changed are touched.

use std::fmt::Write as _;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Line {
    /// A comment or a blank line, kept verbatim.
    Other(String),
    Entry {
        key: String,
        value: String,
    },
}

/// An ordered, comment-preserving properties file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    lines: Vec<Line>,
}

#[derive(Debug, thiserror::Error)]
pub enum PropertiesError {
    #[error("{path}: line {line}: expected `key = value`, found {text:?}")]
    Syntax {
        path: String,
        line: usize,
        text: String,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

impl Properties {
    /// Parses properties text; `origin` names the source in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, PropertiesError> {
        let mut lines = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let t = raw.trim();
            if t.is_empty() || t.starts_with('#') || t.starts_with('!') {
                lines.push(Line::Other(raw.to_string()));
                continue;
            }
            let Some((k, v)) = t.split_once('=') else {
                return Err(PropertiesError::Syntax {
                    path: origin.to_string(),
                    line: i + 1,
                    text: raw.to_string(),
                });
            };
            let key = k.trim();
            if key.is_empty() {
                return Err(PropertiesError::Syntax {
                    path: origin.to_string(),
                    line: i + 1,
                    text: raw.to_string(),
                });
            }
            lines.push(Line::Entry {
                key: key.to_string(),
                value: v.trim().to_string(),
            });
        }
        Ok(Properties { lines })
    }

    /// Reads a properties file.
    pub fn load(path: &Path) -> Result<Self, PropertiesError> {
        let text = std::fs::read_to_string(path).map_err(|source| PropertiesError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Writes the file atomically with mode 0600 (it holds secrets).
    pub fn save(&self, path: &Path) -> Result<(), PropertiesError> {
        crate::fsutil::atomic_write(path, self.render().as_bytes(), 0o600).map_err(|source| {
            PropertiesError::Write {
                path: path.display().to_string(),
                source,
            }
        })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.lines.iter().rev().find_map(|l| match l {
            Line::Entry { key: k, value } if k == key => Some(value.as_str()),
            _ => None,
        })
    }

    /// The value of `key` parsed as `T`, or `default` when the key is absent.
    pub fn get_or<T: std::str::FromStr>(&self, key: &str, default: T) -> Result<T, String> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("zstack.properties: {key} = {v:?} is not a valid value")),
        }
    }

    pub fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Sets `key`: its line is rewritten in place, or appended when new. Returns true if the
    /// file changed.
    pub fn set(&mut self, key: &str, value: &str) -> bool {
        for line in self.lines.iter_mut().rev() {
            if let Line::Entry { key: k, value: v } = line {
                if k == key {
                    if v == value {
                        return false;
                    }
                    *v = value.to_string();
                    return true;
                }
            }
        }
        self.lines.push(Line::Entry {
            key: key.to_string(),
            value: value.to_string(),
        });
        true
    }

    /// Removes `key` and the comment lines right above it. Returns true if the file changed.
    pub fn remove(&mut self, key: &str) -> bool {
        let Some(at) = self
            .lines
            .iter()
            .position(|l| matches!(l, Line::Entry { key: k, .. } if k == key))
        else {
            return false;
        };
        let mut from = at;
        while from > 0
            && matches!(&self.lines[from - 1], Line::Other(t) if t.trim_start().starts_with('#'))
        {
            from -= 1;
        }
        self.lines.drain(from..=at);
        // A key given twice: the later lines go as well.
        self.remove(key);
        true
    }

    /// Renames `old` to `new`, keeping its value and position, unless `new` is already set.
    /// Returns true if the file changed.
    pub fn rename(&mut self, old: &str, new: &str) -> bool {
        if self.contains(new) {
            return false;
        }
        let mut changed = false;
        for line in &mut self.lines {
            if let Line::Entry { key, .. } = line {
                if key == old {
                    *key = new.to_string();
                    changed = true;
                }
            }
        }
        changed
    }

    /// Adds every key of `defaults` that this file lacks, with the comment lines that stand
    /// right above it in `defaults`. Existing values are never changed. Returns the added keys.
    pub fn add_missing(&mut self, defaults: &Properties) -> Vec<String> {
        let mut added = Vec::new();
        let mut pending_comments: Vec<String> = Vec::new();
        for line in &defaults.lines {
            match line {
                Line::Other(text) => {
                    if text.trim().is_empty() {
                        pending_comments.clear();
                    } else {
                        pending_comments.push(text.clone());
                    }
                }
                Line::Entry { key, value } => {
                    if !self.contains(key) {
                        if !matches!(self.lines.last(), None | Some(Line::Other(_))) {
                            self.lines.push(Line::Other(String::new()));
                        }
                        for c in pending_comments.drain(..) {
                            self.lines.push(Line::Other(c));
                        }
                        self.lines.push(Line::Entry {
                            key: key.clone(),
                            value: value.clone(),
                        });
                        added.push(key.clone());
                    }
                    pending_comments.clear();
                }
            }
        }
        added
    }

    /// Every `(key, value)` in file order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.lines.iter().filter_map(|l| match l {
            Line::Entry { key, value } => Some((key.as_str(), value.as_str())),
            Line::Other(_) => None,
        })
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for line in &self.lines {
            match line {
                Line::Other(t) => out.push_str(t),
                Line::Entry { key, value } => {
                    let _ = write!(out, "{key} = {value}");
                }
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str =
        "# ZStack\n\n# the IP\nmanagement.server.ip = 10.0.0.1\nkvmagent.port=7070\n";

    #[test]
    fn round_trip_keeps_comments_and_order() {
        let p = Properties::parse(TEXT, "t").unwrap();
        assert_eq!(p.get("kvmagent.port"), Some("7070"));
        assert_eq!(
            p.render(),
            "# ZStack\n\n# the IP\nmanagement.server.ip = 10.0.0.1\nkvmagent.port = 7070\n"
        );
    }

    #[test]
    fn set_rewrites_in_place() {
        let mut p = Properties::parse(TEXT, "t").unwrap();
        assert!(p.set("management.server.ip", "10.0.0.2"));
        assert!(!p.set("management.server.ip", "10.0.0.2"));
        assert!(p
            .render()
            .contains("# the IP\nmanagement.server.ip = 10.0.0.2\nkvmagent.port"));
    }

    #[test]
    fn add_missing_keeps_user_values() {
        let mut user = Properties::parse("management.server.ip = 192.168.1.5\n", "u").unwrap();
        let defaults = Properties::parse(
            "# ip\nmanagement.server.ip = 10.0.0.1\n\n# the agent port\nkvmagent.port = 7070\n",
            "d",
        )
        .unwrap();
        assert_eq!(
            user.add_missing(&defaults),
            vec!["kvmagent.port".to_string()]
        );
        assert_eq!(user.get("management.server.ip"), Some("192.168.1.5"));
        assert!(user
            .render()
            .contains("# the agent port\nkvmagent.port = 7070"));
        assert!(user.add_missing(&defaults).is_empty());
    }

    #[test]
    fn rename_keeps_value() {
        let mut p = Properties::parse("Api.port = 9090\n", "t").unwrap();
        assert!(p.rename("Api.port", "management.api.port"));
        assert_eq!(p.get("management.api.port"), Some("9090"));
        assert!(!p.contains("Api.port"));
    }

    #[test]
    fn syntax_error_names_the_line() {
        let e =
            Properties::parse("a = 1\nnonsense\n", "/etc/zstack/zstack.properties").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
    }
}

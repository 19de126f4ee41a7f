//! Rendering of the files under `templates/` (systemd units, the crontab line, zstack.properties,
//! and later dnsmasq and libvirt files). The templates ship inside each release tree, so a
//! release renders its own files; nothing of this kind is a string in Rust code.

use std::path::{Path, PathBuf};

use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot load templates from {dir}: {message}")]
    Load { dir: PathBuf, message: String },
    #[error("cannot render template {name}: {message}")]
    Render { name: String, message: String },
}

/// The templates of one release.
pub struct Templates {
    tera: tera::Tera,
}

impl Templates {
    /// Loads every `*.tera` file below `dir`; a template is named by its path relative to `dir`.
    pub fn load(dir: &Path) -> Result<Self, TemplateError> {
        let glob = format!("{}/**/*.tera", dir.display());
        let mut tera = tera::Tera::new(&glob).map_err(|e| TemplateError::Load {
            dir: dir.to_path_buf(),
            message: error_chain(&e),
        })?;
        tera.autoescape_on(vec![]);
        register_filters(&mut tera);
        if tera.get_template_names().next().is_none() {
            return Err(TemplateError::Load {
                dir: dir.to_path_buf(),
                message: "no *.tera file found".into(),
            });
        }
        Ok(Templates { tera })
    }

    /// Templates given as `(name, text)` pairs: the few a program carries inside itself
    /// (`include_str!` of a file under `templates/`), for code that renders without a release
    /// tree at hand.
    pub fn from_texts(texts: &[(&str, &str)]) -> Result<Self, TemplateError> {
        let mut tera = tera::Tera::default();
        tera.autoescape_on(vec![]);
        register_filters(&mut tera);
        tera.add_raw_templates(texts.iter().copied())
            .map_err(|e| TemplateError::Load {
                dir: PathBuf::from("(built in)"),
                message: error_chain(&e),
            })?;
        Ok(Templates { tera })
    }

    /// Renders template `name` (e.g. `systemd/zstack-server.service.tera`) with `context`.
    pub fn render(&self, name: &str, context: &impl Serialize) -> Result<String, TemplateError> {
        let ctx = tera::Context::from_serialize(context).map_err(|e| TemplateError::Render {
            name: name.to_string(),
            message: error_chain(&e),
        })?;
        self.tera
            .render(name, &ctx)
            .map_err(|e| TemplateError::Render {
                name: name.to_string(),
                message: error_chain(&e),
            })
    }
}

/// The filters that make a value safe for the format it lands in, the second line of defence
/// after the grammar checks at the API: each escapes what its format can escape and refuses what
/// it cannot carry, so a render fails with the value named rather than writing a file that says
/// more than was meant.
/// - `xml`: XML text or attribute (`&<>"'` escaped); control characters refused (XML 1.0 cannot
///   carry NUL at all).
/// - `line`: a value of a line-based configuration (dnsmasq): no control character, no newline.
/// - `nft`: a token of an nftables rule, quoted or not (interface names, addresses, MACs): letters,
///   digits and `.:/_@-` only, so no quote can end a string and no `;` start a command.
/// - `unit_path`: a path in a systemd unit's space-separated list: no control character or
///   whitespace, `%` doubled (systemd's specifier escape), `\` refused.
pub fn register_filters(tera: &mut tera::Tera) {
    tera.register_filter("xml", filter_xml);
    tera.register_filter("line", filter_line);
    tera.register_filter("nft", filter_nft);
    tera.register_filter("unit_path", filter_unit_path);
}

type FilterArgs = std::collections::HashMap<String, tera::Value>;

fn filter_text(value: &tera::Value) -> String {
    match value {
        tera::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn refuse(filter: &str, text: &str, why: &str) -> tera::Error {
    tera::Error::msg(format!("{filter}: {text:?} {why}"))
}

/// Escapes `text` for XML; refuses control characters but tab.
pub fn escape_xml(text: &str) -> Result<String, String> {
    if text.chars().any(|c| c.is_control() && c != '\t') {
        return Err(format!(
            "{text:?} holds a control character, which XML cannot carry"
        ));
    }
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    Ok(out)
}

fn filter_xml(value: &tera::Value, _: &FilterArgs) -> tera::Result<tera::Value> {
    escape_xml(&filter_text(value))
        .map(tera::Value::String)
        .map_err(tera::Error::msg)
}

fn filter_line(value: &tera::Value, _: &FilterArgs) -> tera::Result<tera::Value> {
    let text = filter_text(value);
    if text.chars().any(char::is_control) {
        return Err(refuse(
            "line",
            &text,
            "holds a control character (a newline would start another directive)",
        ));
    }
    Ok(tera::Value::String(text))
}

fn filter_nft(value: &tera::Value, _: &FilterArgs) -> tera::Result<tera::Value> {
    let text = filter_text(value);
    let ok = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".:/_@-".contains(c));
    if !ok {
        return Err(refuse(
            "nft",
            &text,
            "is not an nftables token (letters, digits and .:/_@- only)",
        ));
    }
    Ok(tera::Value::String(text))
}

fn filter_unit_path(value: &tera::Value, _: &FilterArgs) -> tera::Result<tera::Value> {
    let text = filter_text(value);
    if text
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '\\')
    {
        return Err(refuse(
            "unit_path",
            &text,
            "holds whitespace, a backslash or a control character, which a unit's path list cannot carry",
        ));
    }
    Ok(tera::Value::String(text.replace('%', "%%")))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_with_context_and_reports_missing_values() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("cron")).unwrap();
        std::fs::write(dir.path().join("cron/line.tera"), "{{ a }} and {{ b }}\n").unwrap();
        let t = Templates::load(dir.path()).unwrap();
        let out = t
            .render("cron/line.tera", &serde_json::json!({"a": 1, "b": "x"}))
            .unwrap();
        assert_eq!(out, "1 and x\n");
        let err = t
            .render("cron/line.tera", &serde_json::json!({"a": 1}))
            .unwrap_err();
        assert!(err.to_string().contains("cron/line.tera"), "{err}");
    }

    #[test]
    fn filters_escape_or_refuse_newline_quote_and_nul() {
        let t = Templates::from_texts(&[
            ("x", "<a b='{{ v | xml }}'>{{ v | xml }}</a>"),
            ("l", "domain={{ v | line }}"),
            ("n", "iifname \"{{ v | nft }}\""),
            ("u", "RequiresMountsFor={{ v | unit_path }}"),
        ])
        .unwrap();
        let render = |name: &str, v: &str| t.render(name, &serde_json::json!({ "v": v }));
        assert_eq!(
            render("x", "a'b\"<&>").unwrap(),
            "<a b='a&#39;b&quot;&lt;&amp;&gt;'>a&#39;b&quot;&lt;&amp;&gt;</a>"
        );
        assert_eq!(render("l", "zstack.org").unwrap(), "domain=zstack.org");
        assert_eq!(render("n", "vnic1.0").unwrap(), "iifname \"vnic1.0\"");
        assert_eq!(
            render("u", "/mnt/ps%1").unwrap(),
            "RequiresMountsFor=/mnt/ps%%1"
        );
        for bad in ["x\ny", "x\0y", "x\ry"] {
            for name in ["x", "l", "n", "u"] {
                let e = render(name, bad).unwrap_err();
                // The error names the value refused.
                assert!(
                    e.to_string().contains(&format!("{bad:?}")),
                    "{name} {bad:?}: {e}"
                );
            }
        }
        // A quote cannot end an nftables string; a space cannot split a unit's list.
        assert!(render("n", "a\" accept").is_err());
        assert!(render("n", "a;b").is_err());
        assert!(render("u", "/a b").is_err());
        // A quote stays inside a dnsmasq value (it has no quoting), as text.
        assert_eq!(render("l", "a\"b").unwrap(), "domain=a\"b");
    }
}

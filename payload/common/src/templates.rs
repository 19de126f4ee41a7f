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
}

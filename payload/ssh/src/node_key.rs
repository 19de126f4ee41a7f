//! The management node's own SSH key: ed25519, `id_ed25519` (0600) and `id_ed25519.pub`, made
//! at install. Hosts get its public line in root's authorized_keys when they join.

use std::path::Path;

use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::LineEnding;
use russh::keys::PrivateKey;

use crate::SshError;

pub struct NodeKey {
    key: PrivateKey,
}

fn key_err(path: &Path, reason: impl ToString) -> SshError {
    SshError::Key {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

impl NodeKey {
    /// Loads `dir/id_ed25519`, or makes it (and its `.pub`) if there is none.
    pub fn load_or_create(dir: &Path) -> Result<NodeKey, SshError> {
        let path = dir.join("id_ed25519");
        if path.exists() {
            let text = std::fs::read_to_string(&path).map_err(|e| key_err(&path, e))?;
            let key = PrivateKey::from_openssh(text).map_err(|e| key_err(&path, e))?;
            return Ok(NodeKey { key });
        }
        let node = NodeKey::generate()?;
        std::fs::create_dir_all(dir).map_err(|e| key_err(dir, e))?;
        for (name, contents, mode) in node.files()? {
            write_new(&dir.join(name), contents.as_bytes(), mode)?;
        }
        Ok(node)
    }

    /// A new key (not written anywhere).
    pub fn generate() -> Result<NodeKey, SshError> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| key_err(Path::new("id_ed25519"), e))?;
        let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
        key.set_comment("zstack-management-node");
        Ok(NodeKey { key })
    }

    /// The files the key is kept in, with their modes: `id_ed25519` (0600) and
    /// `id_ed25519.pub` (0644).
    pub fn files(&self) -> Result<[(&'static str, String, u32); 2], SshError> {
        let private = self
            .key
            .to_openssh(LineEnding::LF)
            .map_err(|e| key_err(Path::new("id_ed25519"), e))?;
        Ok([
            ("id_ed25519", private.to_string(), 0o600),
            (
                "id_ed25519.pub",
                format!("{}\n", self.public_line()?),
                0o644,
            ),
        ])
    }

    /// `ssh-ed25519 AAAA... zstack-management-node`, as authorized_keys takes it.
    pub fn public_line(&self) -> Result<String, SshError> {
        self.key
            .public_key()
            .to_openssh()
            .map_err(|e| key_err(Path::new("id_ed25519.pub"), e))
    }

    pub(crate) fn private(&self) -> &PrivateKey {
        &self.key
    }
}

fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), SshError> {
    zstack_common::fsutil::atomic_write(path, contents, mode).map_err(|e| key_err(path, e))
}

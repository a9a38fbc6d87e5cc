//! Secrets kiln must keep at rest for a while — a client's own provider key, held only
//! while its task runs so that polling survives a restart — are sealed with
//! XChaCha20-Poly1305 under the server's sealing key, never stored in the clear.
//!
//! The key comes from `server.sealing_key` (base64 of 32 bytes: give every replica the
//! same one), or else from `{data_dir}/sealing.key`, made on first use with mode 0600.

use std::path::Path;

use base64::{Engine, engine::general_purpose::STANDARD};
use chacha20poly1305::{
    XChaCha20Poly1305, XNonce,
    aead::{Aead, KeyInit},
};

use crate::config::{Config, Secret};

/// Seals and opens small secrets.
#[derive(Clone)]
pub struct Sealer {
    cipher: XChaCha20Poly1305,
    key: [u8; 32],
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

/// Sealed text starts with this, so a future scheme can be told apart.
const PREFIX: &str = "v1:";

impl Sealer {
    pub fn from_key(key: &[u8; 32]) -> Self {
        Self { cipher: XChaCha20Poly1305::new(key.into()), key: *key }
    }

    /// A key for another purpose (signing file URLs, say), derived from the sealing key
    /// so that every replica given the same sealing key derives the same one, and
    /// knowing the derived key reveals nothing of the sealing key.
    pub fn subkey(&self, purpose: &str) -> [u8; 32] {
        use hmac::{Hmac, Mac};
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(purpose.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The configured key, or the one kept under the data directory (made if missing).
    pub fn load(config: &Config) -> anyhow::Result<Self> {
        if let Some(key) = &config.server.sealing_key {
            let bytes = STANDARD.decode(key.expose().trim())?;
            let key: [u8; 32] = bytes
                .try_into()
                .map_err(|_| anyhow::anyhow!("`server.sealing_key` must be base64 of exactly 32 bytes"))?;
            return Ok(Self::from_key(&key));
        }
        Self::from_file(&config.server.data_dir.join("sealing.key"))
    }

    fn from_file(path: &Path) -> anyhow::Result<Self> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let key: [u8; 32] =
                    bytes.try_into().map_err(|_| anyhow::anyhow!("{} must hold exactly 32 bytes", path.display()))?;
                Ok(Self::from_key(&key))
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                getrandom::fill(&mut key).map_err(|e| anyhow::anyhow!("no randomness for a sealing key: {e}"))?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                write_private(path, &key)?;
                Ok(Self::from_key(&key))
            }
            Err(err) => Err(err.into()),
        }
    }

    pub fn seal(&self, secret: &Secret) -> anyhow::Result<String> {
        let mut nonce = [0u8; 24];
        getrandom::fill(&mut nonce).map_err(|e| anyhow::anyhow!("no randomness for a nonce: {e}"))?;
        let sealed = self
            .cipher
            .encrypt(&XNonce::from(nonce), secret.expose().as_bytes())
            .map_err(|_| anyhow::anyhow!("cannot seal a secret"))?;
        let mut out = nonce.to_vec();
        out.extend(sealed);
        Ok(format!("{PREFIX}{}", STANDARD.encode(out)))
    }

    pub fn open(&self, sealed: &str) -> anyhow::Result<Secret> {
        let raw = sealed.strip_prefix(PREFIX).ok_or_else(|| anyhow::anyhow!("unknown sealing scheme"))?;
        let bytes = STANDARD.decode(raw)?;
        if bytes.len() < 24 {
            anyhow::bail!("sealed secret too short");
        }
        let (nonce, body) = bytes.split_at(24);
        let nonce: [u8; 24] = nonce.try_into()?;
        let plain = self
            .cipher
            .decrypt(&XNonce::from(nonce), body)
            .map_err(|_| anyhow::anyhow!("the sealed secret does not open with this key"))?;
        Ok(Secret::new(String::from_utf8(plain)?))
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

/// The sealing key, loaded (or made) the first time something needs it and shared by
/// everything that does, so the key file is read once.
pub struct LazySealer {
    config: std::sync::Arc<Config>,
    cell: std::sync::OnceLock<Result<Sealer, String>>,
}

impl LazySealer {
    pub fn new(config: std::sync::Arc<Config>) -> Self {
        Self { config, cell: std::sync::OnceLock::new() }
    }

    /// The key; the error says why it could not be loaded (logged once, when it failed).
    pub fn get(&self) -> Result<&Sealer, &str> {
        self.cell
            .get_or_init(|| {
                Sealer::load(&self.config).map_err(|err| {
                    tracing::error!(error = format!("{err:#}"), "cannot load the sealing key");
                    format!("{err:#}")
                })
            })
            .as_ref()
            .map_err(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_secret_opens_only_with_its_key_and_never_shows_in_the_clear() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("sealing.key");
        let sealer = Sealer::from_file(&path).expect("made");
        let again = Sealer::from_file(&path).expect("read back");
        let sealed = sealer.seal(&Secret::new("tsk_client_key_123")).expect("sealed");
        assert!(!sealed.contains("tsk_"), "{sealed}");
        assert_eq!(again.open(&sealed).expect("opens").expose(), "tsk_client_key_123");
        assert_ne!(sealer.seal(&Secret::new("tsk_client_key_123")).expect("sealed"), sealed, "a fresh nonce each time");
        let other = Sealer::from_key(&[7; 32]);
        assert!(other.open(&sealed).is_err());
        assert!(sealer.open("v1:AAAA").is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
    }
}

//! Signed file URLs (`files.access = "signed"`): a file URL carries `expires` (Unix
//! seconds) and `sig`, the HMAC-SHA256 of the file's key and the expiry under a key
//! derived from the sealing key, so a model URL can still be handed to a three.js
//! viewer or a CDN and stops working when it expires.
//!
//! Expiries are rounded up to a step (a quarter of the lifetime, at most 15 minutes), so
//! the URLs handed out for one file within a step are the same URL and a cache or CDN
//! in front of kiln keeps one copy; a URL lives between `ttl` and `ttl + step`.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::sealing::Sealer;

/// Why a file URL is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Expired,
    BadSignature,
}

#[derive(Clone)]
pub struct UrlSigner {
    key: [u8; 32],
    ttl: Duration,
}

impl std::fmt::Debug for UrlSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UrlSigner(ttl = {:?})", self.ttl)
    }
}

impl UrlSigner {
    pub fn new(sealer: &Sealer, ttl: Duration) -> Self {
        Self { key: sealer.subkey("kiln file URLs v1"), ttl }
    }

    fn mac(&self, key: &str, expires: i64) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(key.as_bytes());
        mac.update(b"\n");
        mac.update(expires.to_string().as_bytes());
        mac
    }

    /// The query string (`expires=…&sig=…`) for a file's key, made at `now` (Unix s).
    pub fn query(&self, key: &str, now: i64) -> String {
        let ttl = self.ttl.as_secs().max(1) as i64;
        let step = (ttl / 4).clamp(1, 15 * 60);
        let expires = (now + ttl + step - 1) / step * step;
        let sig = hex::encode(self.mac(key, expires).finalize().into_bytes());
        format!("expires={expires}&sig={sig}")
    }

    /// Checks a URL's `expires` and `sig` for the file's key at `now`.
    pub fn verify(&self, key: &str, expires: Option<&str>, sig: Option<&str>, now: i64) -> Result<(), Refusal> {
        let (Some(expires), Some(sig)) = (expires, sig) else { return Err(Refusal::Missing) };
        let expires: i64 = expires.parse().map_err(|_| Refusal::BadSignature)?;
        let given = hex::decode(sig).map_err(|_| Refusal::BadSignature)?;
        let expected = self.mac(key, expires).finalize().into_bytes();
        if !bool::from(expected[..].ct_eq(&given)) {
            return Err(Refusal::BadSignature);
        }
        if now > expires {
            return Err(Refusal::Expired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(ttl: u64) -> UrlSigner {
        UrlSigner::new(&Sealer::from_key(&[7; 32]), Duration::from_secs(ttl))
    }

    fn parts(query: &str) -> (String, String) {
        let mut expires = String::new();
        let mut sig = String::new();
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("expires", v)) => expires = v.to_owned(),
                Some(("sig", v)) => sig = v.to_owned(),
                _ => {}
            }
        }
        (expires, sig)
    }

    #[test]
    fn a_signed_url_works_until_it_expires_and_only_for_its_file() {
        let s = signer(3600);
        let now = 1_800_000_000;
        let (expires, sig) = parts(&s.query("tasks/a/model.glb", now));
        let e: i64 = expires.parse().unwrap();
        assert!(e >= now + 3600 && e < now + 3600 + 900, "{e}");
        assert_eq!(s.verify("tasks/a/model.glb", Some(&expires), Some(&sig), now), Ok(()));
        assert_eq!(s.verify("tasks/a/model.glb", Some(&expires), Some(&sig), e + 1), Err(Refusal::Expired));
        assert_eq!(s.verify("tasks/b/model.glb", Some(&expires), Some(&sig), now), Err(Refusal::BadSignature));
        let later = (e + 3600).to_string();
        assert_eq!(
            s.verify("tasks/a/model.glb", Some(&later), Some(&sig), now),
            Err(Refusal::BadSignature),
            "a moved expiry"
        );
        assert_eq!(s.verify("tasks/a/model.glb", None, Some(&sig), now), Err(Refusal::Missing));
        assert_eq!(s.verify("tasks/a/model.glb", Some(&expires), Some("zz"), now), Err(Refusal::BadSignature));
        let other = UrlSigner::new(&Sealer::from_key(&[8; 32]), Duration::from_secs(3600));
        assert_eq!(
            other.verify("tasks/a/model.glb", Some(&expires), Some(&sig), now),
            Err(Refusal::BadSignature),
            "another key"
        );
    }

    #[test]
    fn urls_made_within_one_step_are_the_same_url() {
        let s = signer(3600);
        let start = 1_800_000_000 / 900 * 900 + 1;
        assert_eq!(s.query("k", start), s.query("k", start + 800));
        assert_ne!(s.query("k", start), s.query("k", start + 900));
    }
}

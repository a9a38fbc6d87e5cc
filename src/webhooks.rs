//! Signed messages between kiln and its workers, in the symmetric scheme of Standard
//! Webhooks: `webhook-id`, `webhook-timestamp` and `webhook-signature: v1,<base64 of
//! HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`, with a `whsec_` secret.
//!
//! The official `standardwebhooks` crate only signs UTF-8 bodies, and a dispatch is a
//! multipart body with a picture in it, so this module signs bytes with `hmac` itself.
//! The MAC can be fed in pieces ([`Verifier`]), so a large signed upload is checked
//! while it streams to disk instead of being held in memory first.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const ID: &str = "webhook-id";
pub const TIMESTAMP: &str = "webhook-timestamp";
pub const SIGNATURE: &str = "webhook-signature";

/// How far a message's timestamp may be from the receiver's clock, either way.
pub const TOLERANCE_SECS: i64 = 5 * 60;

const PREFIX: &str = "whsec_";
/// Standard Webhooks asks for at least 24 random bytes.
const MIN_KEY_BYTES: usize = 24;
const MAX_ID_LEN: usize = 256;

type HmacSha256 = Hmac<Sha256>;

/// Why a message was refused. Every variant is a 401 to the sender.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("the `{0}` header is missing or not readable")]
    MissingHeader(&'static str),
    #[error("the signature does not match")]
    BadSignature,
    #[error("the timestamp is more than 5 minutes from this server's clock")]
    Stale,
    #[error("this message was already received")]
    Replayed,
}

/// A channel's shared secret, as the key bytes. Never printed.
#[derive(Clone)]
pub struct SigningKey {
    key: Vec<u8>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(****)")
    }
}

/// The three headers of one signed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub id: String,
    pub timestamp: i64,
    pub signature: String,
}

impl Signed {
    pub fn headers(&self) -> [(&'static str, String); 3] {
        [(ID, self.id.clone()), (TIMESTAMP, self.timestamp.to_string()), (SIGNATURE, self.signature.clone())]
    }
}

pub fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

impl SigningKey {
    /// Reads a `whsec_…` secret. The message says what is wrong without repeating it.
    pub fn parse(secret: &str) -> Result<Self, String> {
        let encoded = secret
            .trim()
            .strip_prefix(PREFIX)
            .ok_or_else(|| format!("must start with `{PREFIX}` followed by base64 (Standard Webhooks)"))?;
        let key = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| format!("the part after `{PREFIX}` is not valid base64"))?;
        if key.len() < MIN_KEY_BYTES {
            return Err(format!("must hold at least {MIN_KEY_BYTES} random bytes, it holds {}", key.len()));
        }
        Ok(Self { key })
    }

    fn mac(&self, id: &str, timestamp: i64) -> HmacSha256 {
        // HMAC takes keys of any length.
        let mut mac = HmacSha256::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!("HMAC accepts any key"));
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac
    }

    /// Signs `body` as a new message with a fresh id, at the current time.
    pub fn sign(&self, body: &[u8]) -> Signed {
        self.sign_with(&format!("msg_{}", uuid::Uuid::new_v4().simple()), now_secs(), body)
    }

    pub fn sign_with(&self, id: &str, timestamp: i64, body: &[u8]) -> Signed {
        let mut mac = self.mac(id, timestamp);
        mac.update(body);
        let signature = format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()));
        Signed { id: id.to_owned(), timestamp, signature }
    }

    /// Starts checking a message whose body will be fed in pieces.
    pub fn verifier(&self, headers: &HeaderMap, now: i64) -> Result<Verifier, WebhookError> {
        let message = Message::read(headers)?;
        if (now - message.timestamp).abs() > TOLERANCE_SECS {
            return Err(WebhookError::Stale);
        }
        let mac = self.mac(&message.id, message.timestamp);
        Ok(Verifier { mac, message })
    }

    /// Checks a whole message; returns its id for the replay check.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8], now: i64) -> Result<String, WebhookError> {
        let mut verifier = self.verifier(headers, now)?;
        verifier.update(body);
        verifier.finish()
    }
}

/// Checks what can be checked without a key: the headers are there and the timestamp
/// is fresh.
pub fn check_fresh(headers: &HeaderMap, now: i64) -> Result<(), WebhookError> {
    let message = Message::read(headers)?;
    if (now - message.timestamp).abs() > TOLERANCE_SECS {
        return Err(WebhookError::Stale);
    }
    Ok(())
}

/// The id, timestamp and signatures a message claims, before any check.
#[derive(Debug, Clone)]
struct Message {
    id: String,
    timestamp: i64,
    signatures: Vec<Vec<u8>>,
}

impl Message {
    fn read(headers: &HeaderMap) -> Result<Self, WebhookError> {
        let text = |name: &'static str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .ok_or(WebhookError::MissingHeader(name))
        };
        let id = text(ID)?;
        if id.len() > MAX_ID_LEN {
            return Err(WebhookError::MissingHeader(ID));
        }
        let timestamp = text(TIMESTAMP)?.parse::<i64>().map_err(|_| WebhookError::MissingHeader(TIMESTAMP))?;
        let signatures: Vec<Vec<u8>> = text(SIGNATURE)?
            .split(' ')
            .filter_map(|entry| entry.strip_prefix("v1,"))
            .filter_map(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
            .collect();
        if signatures.is_empty() {
            return Err(WebhookError::BadSignature);
        }
        Ok(Self { id: id.to_owned(), timestamp, signatures })
    }
}

/// A message being checked while its body arrives.
pub struct Verifier {
    mac: HmacSha256,
    message: Message,
}

impl Verifier {
    pub fn update(&mut self, piece: &[u8]) {
        self.mac.update(piece);
    }

    /// Whether any of the message's `v1` signatures matches (compared in constant
    /// time); the message id when one does.
    pub fn finish(self) -> Result<String, WebhookError> {
        let Self { mac, message } = self;
        let ok = message.signatures.iter().any(|candidate| mac.clone().verify_slice(candidate).is_ok());
        if ok { Ok(message.id) } else { Err(WebhookError::BadSignature) }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use proptest::prelude::*;

    use super::*;

    /// The Standard Webhooks test vector, from the specification's reference libraries.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn headers(signed: &Signed) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in signed.headers() {
            map.insert(name, HeaderValue::from_str(&value).expect("header"));
        }
        map
    }

    #[test]
    fn matches_the_standard_webhooks_test_vector() {
        let key = SigningKey::parse(SECRET).expect("secret");
        let body = br#"{"test": 2432232314}"#;
        let signed = key.sign_with("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(signed.signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn refuses_wrong_missing_stale_and_tampered_messages() {
        let key = SigningKey::parse(SECRET).expect("secret");
        let other = SigningKey::parse("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").expect("secret");
        let now = now_secs();
        let signed = key.sign(b"body");
        assert_eq!(key.verify(&headers(&signed), b"body", now).as_deref(), Ok(signed.id.as_str()));
        assert_eq!(key.verify(&headers(&signed), b"bodY", now), Err(WebhookError::BadSignature));
        assert_eq!(other.verify(&headers(&signed), b"body", now), Err(WebhookError::BadSignature));
        assert_eq!(key.verify(&headers(&signed), b"body", now + TOLERANCE_SECS + 5), Err(WebhookError::Stale));
        assert_eq!(key.verify(&headers(&signed), b"body", now - TOLERANCE_SECS - 5), Err(WebhookError::Stale));
        assert_eq!(key.verify(&HeaderMap::new(), b"body", now), Err(WebhookError::MissingHeader(ID)));
        // A rotated list: one good signature among others is enough.
        let mut rotated = signed.clone();
        rotated.signature = format!("v1,AAAA {} v2,zzz", signed.signature);
        assert!(key.verify(&headers(&rotated), b"body", now).is_ok());
    }

    #[test]
    fn secrets_must_be_standard_webhooks_secrets() {
        assert!(SigningKey::parse("plain-password").is_err());
        assert!(SigningKey::parse("whsec_not base64!").is_err());
        assert!(SigningKey::parse("whsec_c2hvcnQ=").is_err(), "too short");
        assert_eq!(format!("{:?}", SigningKey::parse(SECRET).expect("secret")), "SigningKey(****)");
    }

    proptest! {
        #[test]
        fn a_body_fed_in_pieces_verifies_like_the_whole(body in proptest::collection::vec(any::<u8>(), 0..2048), cut in any::<prop::sample::Index>()) {
            let key = SigningKey::parse(SECRET).expect("secret");
            let signed = key.sign(&body);
            let at = cut.index(body.len() + 1);
            let mut verifier = key.verifier(&headers(&signed), now_secs()).expect("fresh");
            verifier.update(&body[..at]);
            verifier.update(&body[at..]);
            prop_assert_eq!(verifier.finish(), Ok(signed.id.clone()));
        }
    }
}

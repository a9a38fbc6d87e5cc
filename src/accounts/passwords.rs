//! Passwords: the length policy, and argon2id hashing and verification (the argon2
//! crate's default parameters, stored as PHC strings).
//!
//! An argon2 hash takes tens of milliseconds of CPU and about 19 MiB, so it runs on the
//! blocking pool, and at most one per CPU at a time: a burst of sign-ins queues instead
//! of taking all the memory and every blocking thread.

use std::sync::{Arc, LazyLock};

use argon2::{
    Argon2, PasswordHash, PasswordHasher, PasswordVerifier,
    password_hash::{self, SaltString},
};
use tokio::sync::Semaphore;

use crate::config::Secret;

/// Shortest accepted password, in characters.
pub const MIN_CHARS: usize = 8;
/// Longest accepted password, in characters: enough for any passphrase, and a bound on
/// what a sign-in request makes the server hash.
pub const MAX_CHARS: usize = 256;

/// A password the policy refuses; the message says why, in a sentence for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WeakPassword(pub String);

/// Checks the policy: 8 to 256 characters. Length is what makes a password strong;
/// composition rules only make people write them down.
pub fn check_policy(password: &str) -> Result<(), WeakPassword> {
    let chars = password.chars().count();
    if chars < MIN_CHARS {
        return Err(WeakPassword(format!("The password is too short: use at least {MIN_CHARS} characters.")));
    }
    if chars > MAX_CHARS {
        return Err(WeakPassword(format!("The password is too long: use at most {MAX_CHARS} characters.")));
    }
    Ok(())
}

/// Verified against when the username is unknown, so that a sign-in for a user who
/// does not exist costs the same argon2 verification as one for a user who does, and
/// the answer's timing does not tell which usernames exist. Made with the default
/// parameters (a test checks they still are the defaults); its output is random bytes,
/// not the hash of any known password.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$4ngTBx89Tz9pIlAbMTWCfA$sKHJs97HLTt3anC6iHhL4F6ePlV4rZJxp8Trj7pwo4E";

static HASHING: LazyLock<Arc<Semaphore>> = LazyLock::new(|| {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    Arc::new(Semaphore::new(cpus))
});

/// Runs `work` on the blocking pool under the hashing permit. The permit moves into the
/// blocking task, so it is held until the hash finishes even if the caller goes away.
async fn hashing<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
    let permit = Arc::clone(&HASHING).acquire_owned().await?;
    Ok(tokio::task::spawn_blocking(move || {
        let _permit = permit;
        work()
    })
    .await?)
}

/// Hashes a password into an argon2id PHC string with a fresh random salt. Does not
/// check the policy.
pub async fn hash(password: &Secret) -> anyhow::Result<String> {
    let password = password.clone();
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| anyhow::anyhow!("no randomness for a salt: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("cannot encode a salt: {e}"))?;
    hashing(move || {
        Argon2::default()
            .hash_password(password.expose().as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|e| anyhow::anyhow!("cannot hash a password: {e}"))
    })
    .await?
}

/// Whether `password` matches `stored` (a PHC string). With no stored hash (an unknown
/// user) it still spends one verification, against [`DUMMY_HASH`], and answers false.
/// An error means the stored hash is unreadable, not that the password is wrong.
pub async fn verify(password: &Secret, stored: Option<&str>) -> anyhow::Result<bool> {
    let password = password.clone();
    let known = stored.is_some();
    let stored = stored.unwrap_or(DUMMY_HASH).to_owned();
    let matched = hashing(move || -> anyhow::Result<bool> {
        let parsed =
            PasswordHash::new(&stored).map_err(|e| anyhow::anyhow!("a stored password hash is unreadable: {e}"))?;
        match Argon2::default().verify_password(password.expose().as_bytes(), &parsed) {
            Ok(()) => Ok(true),
            Err(password_hash::Error::Password) => Ok(false),
            Err(e) => Err(anyhow::anyhow!("cannot verify a password: {e}")),
        }
    })
    .await??;
    Ok(known && matched)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use argon2::Params;

    use super::*;

    #[test]
    fn the_policy_takes_8_to_256_characters_counted_as_characters() {
        assert!(check_policy("1234567").unwrap_err().0.contains("at least 8"));
        assert!(check_policy("12345678").is_ok());
        // Eight characters, sixteen bytes: characters are what count.
        assert!(check_policy("ééééééé").is_err());
        assert!(check_policy("éééééééé").is_ok());
        assert!(check_policy(&"x".repeat(256)).is_ok());
        assert!(check_policy(&"x".repeat(257)).unwrap_err().0.contains("at most 256"));
    }

    #[tokio::test]
    async fn a_hash_verifies_its_password_only_and_is_salted() {
        let password = Secret::new("correct horse battery staple");
        let stored = hash(&password).await.unwrap();
        assert!(stored.starts_with("$argon2id$v=19$"), "{stored}");
        assert!(!stored.contains("correct horse"));
        assert!(verify(&password, Some(&stored)).await.unwrap());
        assert!(!verify(&Secret::new("correct horse battery stapler"), Some(&stored)).await.unwrap());
        assert_ne!(hash(&password).await.unwrap(), stored, "a fresh salt each time");
        assert!(verify(&password, Some("not a hash")).await.is_err(), "an unreadable hash is an error, not a no");
    }

    #[test]
    fn the_dummy_hash_costs_what_a_real_one_does() {
        let dummy = PasswordHash::new(DUMMY_HASH).unwrap();
        let params = Params::try_from(&dummy).unwrap();
        let defaults = Params::default();
        assert_eq!(dummy.algorithm.as_str(), "argon2id");
        assert_eq!(
            (params.m_cost(), params.t_cost(), params.p_cost()),
            (defaults.m_cost(), defaults.t_cost(), defaults.p_cost())
        );
    }

    #[tokio::test]
    async fn an_unknown_user_is_refused_after_a_full_verification() {
        let password = Secret::new("whatever-password");
        let stored = hash(&password).await.unwrap();
        // Warm up the blocking pool so the first measurement is not a thread spawn.
        verify(&password, Some(&stored)).await.unwrap();
        let started = Instant::now();
        assert!(verify(&password, Some(&stored)).await.unwrap());
        let known = started.elapsed();
        let started = Instant::now();
        assert!(!verify(&password, None).await.unwrap(), "no user: never a match, whatever the password");
        let unknown = started.elapsed();
        // The same work either way; a skipped verification would be ~1000x faster, so
        // a wide margin keeps this steady on a loaded machine.
        assert!(unknown * 10 > known, "unknown user took {unknown:?}, a known one {known:?}");
    }
}

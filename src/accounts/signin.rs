//! Signing in with a username and a password, rate limited per client address and
//! username, so that guessing one user's password from one address is slow while other
//! users, and the same user elsewhere, are not locked out by it.
//!
//! The limit is checked before the password is: a refused attempt costs no argon2 work.
//! Whatever went wrong — no such user, a wrong password, a disabled user — the answer
//! is the same, and takes the same argon2 verification.

use std::{
    net::IpAddr,
    num::NonZeroU32,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use governor::{
    Quota, RateLimiter,
    clock::{Clock, DefaultClock},
    middleware::NoOpMiddleware,
    state::keyed::HashMapStateStore,
};

use super::{AccountError, passwords};
use crate::{
    config::Secret,
    db::{Database, User},
};

/// A username is cut to this many characters in the limiter's key, so that long
/// made-up names cannot grow its memory much.
const MAX_KEY_USERNAME_CHARS: usize = 64;
/// Every this many checks, keys whose limit has fully recovered are dropped.
const PRUNE_EVERY: u64 = 1024;

type Key = (IpAddr, String);

/// Sign-in attempts allowed per minute for each (client address, username) pair.
pub struct SigninLimiter<C: Clock = DefaultClock> {
    limiter: RateLimiter<Key, HashMapStateStore<Key>, C, NoOpMiddleware<C::Instant>>,
    checks: AtomicU64,
}

impl SigninLimiter {
    /// `attempts` per minute per address and username (`auth.signin_attempts`); 0 is
    /// taken as 1, not as no limit.
    pub fn new(attempts: u32) -> Self {
        Self::with_clock(attempts, DefaultClock::default())
    }
}

impl<C: Clock> SigninLimiter<C> {
    fn with_clock(attempts: u32, clock: C) -> Self {
        let quota = Quota::per_minute(NonZeroU32::new(attempts).unwrap_or(NonZeroU32::MIN));
        Self { limiter: RateLimiter::hashmap_with_clock(quota, clock), checks: AtomicU64::new(0) }
    }

    /// Takes one attempt for `username` from `ip`; when none is left, how long until
    /// the next one is.
    pub fn check(&self, ip: IpAddr, username: &str) -> Result<(), Duration> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.limiter.retain_recent();
        }
        let name: String = username.chars().take(MAX_KEY_USERNAME_CHARS).collect::<String>().to_lowercase();
        self.limiter.check_key(&(ip, name)).map_err(|not_until| {
            // Rounded up, so that a client waiting exactly this long is let in.
            let wait = not_until.wait_time_from(self.limiter.clock().now());
            Duration::from_secs(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
        })
    }

    /// Keys held, for tests.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.limiter.len()
    }
}

/// Why a sign-in failed.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    /// Too many attempts: retry after this long (answer 429 with `Retry-After`).
    #[error("Too many sign-in attempts; retry in {} s.", .0.as_secs())]
    Limited(Duration),
    /// A wrong username or password, or a disabled user: never said which.
    #[error("Wrong username or password.")]
    Invalid,
    #[error(transparent)]
    Failed(#[from] AccountError),
}

/// Checks a username and password from `ip`. Returns the user; the caller then starts
/// a session ([`super::sessions::start`]).
pub async fn sign_in<C: Clock>(
    db: &dyn Database,
    limiter: &SigninLimiter<C>,
    ip: IpAddr,
    username: &str,
    password: &Secret,
) -> Result<User, SignInError> {
    limiter.check(ip, username).map_err(SignInError::Limited)?;
    if password.expose().chars().count() > passwords::MAX_CHARS {
        // No account has such a password; refuse without hashing a huge input.
        return Err(SignInError::Invalid);
    }
    let found = db.find_user_by_name(username).await.map_err(AccountError::from)?;
    let verified = passwords::verify(password, found.as_ref().map(|f| f.password_hash.as_str()))
        .await
        .map_err(AccountError::from)?;
    match found {
        Some(found) if verified && !found.user.disabled => Ok(found.user),
        _ => Err(SignInError::Invalid),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use governor::clock::FakeRelativeClock;
    use serde_json::json;

    use super::*;
    use crate::{
        access::Role,
        accounts::{Actor, create_user, testing},
        db::UserChanges,
    };

    const HOME: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    const AWAY: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));

    #[test]
    fn attempts_are_counted_per_address_and_lowercase_username() {
        let clock = FakeRelativeClock::default();
        let limiter = SigninLimiter::with_clock(3, clock.clone());
        for _ in 0..3 {
            limiter.check(HOME, "Kate").unwrap();
        }
        let wait = limiter.check(HOME, "kate").unwrap_err();
        assert_eq!(wait, Duration::from_secs(20), "3 a minute: one back every 20 s");
        assert!(limiter.check(HOME, "KATE").is_err(), "case does not make a new key");
        limiter.check(AWAY, "kate").expect("another address has its own attempts");
        limiter.check(HOME, "liam").expect("another user has their own attempts");

        clock.advance(Duration::from_secs(19));
        assert_eq!(limiter.check(HOME, "kate").unwrap_err(), Duration::from_secs(1));
        clock.advance(Duration::from_secs(1));
        limiter.check(HOME, "kate").expect("one attempt back after 20 s");
        assert!(limiter.check(HOME, "kate").is_err());
    }

    #[test]
    fn zero_attempts_still_limits_and_recovered_keys_are_dropped() {
        let clock = FakeRelativeClock::default();
        let limiter = SigninLimiter::with_clock(0, clock.clone());
        limiter.check(HOME, "mia").unwrap();
        assert_eq!(limiter.check(HOME, "mia").unwrap_err(), Duration::from_secs(60));
        // Two checks so far; the next prune comes with check number PRUNE_EVERY.
        for n in 0..PRUNE_EVERY - 3 {
            let _ = limiter.check(HOME, &format!("user{n}"));
        }
        assert_eq!(limiter.len(), PRUNE_EVERY as usize - 2);
        // governor keeps a key for one period more than it needs to recover.
        clock.advance(Duration::from_secs(121));
        limiter.check(HOME, "mia").expect("minutes later, an attempt again");
        assert_eq!(limiter.len(), 1, "fully recovered keys dropped; only mia's fresh one is held");
    }

    #[tokio::test]
    async fn sign_in_answers_the_same_for_every_failure_and_stops_at_the_limit() {
        let (_dir, db) = testing::database().await;
        let cli = Actor::system("cli");
        let user = create_user(&*db, "nora", &Secret::new("nora's password"), Role::User, &cli).await.unwrap();
        let limiter = SigninLimiter::new(4);

        let ok = sign_in(&*db, &limiter, HOME, "NORA", &Secret::new("nora's password")).await.unwrap();
        assert_eq!(ok.id, user.id);
        let wrong = sign_in(&*db, &limiter, HOME, "nora", &Secret::new("not nora's password")).await;
        assert!(matches!(wrong, Err(SignInError::Invalid)), "{wrong:?}");
        let nobody = sign_in(&*db, &limiter, HOME, "nobody", &Secret::new("nora's password")).await;
        assert!(matches!(nobody, Err(SignInError::Invalid)), "{nobody:?}");

        let disable = UserChanges { disabled: Some(true), ..Default::default() };
        db.update_user(user.id, &disable, &cli.audit("user.disable", None, json!({}))).await.unwrap();
        let disabled = sign_in(&*db, &limiter, HOME, "nora", &Secret::new("nora's password")).await;
        assert!(matches!(disabled, Err(SignInError::Invalid)), "{disabled:?}");

        // Three attempts for nora from HOME so far, and one for `nobody`: the fourth
        // for nora is the last of the minute.
        let _ = sign_in(&*db, &limiter, HOME, "nora", &Secret::new("guess")).await;
        let limited = sign_in(&*db, &limiter, HOME, "nora", &Secret::new("nora's password")).await;
        assert!(matches!(limited, Err(SignInError::Limited(wait)) if wait <= Duration::from_secs(15)), "{limited:?}");
    }
}

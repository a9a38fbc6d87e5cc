//! Request rates per API token (`rate_per_minute`): a GCRA limiter per token, from
//! `governor`, and the `RateLimit` headers that tell a client where it stands
//! (draft-ietf-httpapi-ratelimit-headers: `RateLimit-Policy: N;w=60` and
//! `RateLimit: limit=N, remaining=R, reset=S`).

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::{Arc, Mutex},
    time::Duration,
};

use governor::{
    Quota, RateLimiter,
    clock::{Clock, DefaultClock},
    middleware::StateInformationMiddleware,
    state::{InMemoryState, NotKeyed},
};
use uuid::Uuid;

type Limiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// Where a token stands after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until a request is allowed again (when refused) or the window refills.
    pub reset: u64,
    pub allowed: bool,
}

impl Standing {
    /// The `RateLimit-Policy` and `RateLimit` header values.
    pub fn headers(&self) -> [(&'static str, String); 2] {
        [
            ("ratelimit-policy", format!("{};w=60", self.limit)),
            ("ratelimit", format!("limit={}, remaining={}, reset={}", self.limit, self.remaining, self.reset)),
        ]
    }
}

/// One limiter per token, made the first time the token is used and remade when its
/// rate changes.
#[derive(Default)]
pub struct TokenRates {
    limiters: Mutex<HashMap<Uuid, (u32, Arc<Limiter>)>>,
}

impl TokenRates {
    /// Counts one request of `token`, allowed `per_minute` a minute, in bursts of at
    /// most that many.
    pub fn check(&self, token: Uuid, per_minute: u32) -> Standing {
        let Some(rate) = NonZeroU32::new(per_minute) else {
            return Standing { limit: 0, remaining: 0, reset: 60, allowed: false };
        };
        let limiter = {
            let mut limiters = self.limiters.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let entry = limiters.entry(token).or_insert_with(|| (per_minute, Arc::new(limiter(rate))));
            if entry.0 != per_minute {
                *entry = (per_minute, Arc::new(limiter(rate)));
            }
            Arc::clone(&entry.1)
        };
        let clock = DefaultClock::default();
        let per_cell = Duration::from_secs(60) / per_minute;
        match limiter.check() {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let reset = (per_cell * (per_minute - remaining.min(per_minute))).as_secs_f64().ceil() as u64;
                Standing { limit: per_minute, remaining, reset, allowed: true }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(clock.now());
                Standing {
                    limit: per_minute,
                    remaining: 0,
                    reset: wait.as_secs_f64().ceil().max(1.0) as u64,
                    allowed: false,
                }
            }
        }
    }
}

fn limiter(rate: NonZeroU32) -> Limiter {
    RateLimiter::direct(Quota::per_minute(rate)).with_middleware::<StateInformationMiddleware>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_gets_its_rate_and_is_then_refused_with_the_wait() {
        let rates = TokenRates::default();
        let token = Uuid::now_v7();
        for n in 0..3 {
            let standing = rates.check(token, 3);
            assert!(standing.allowed, "request {n}");
            assert_eq!(standing.remaining, 2 - n);
        }
        let refused = rates.check(token, 3);
        assert!(!refused.allowed);
        assert_eq!(refused.remaining, 0);
        assert!((1..=20).contains(&refused.reset), "one request frees up within 20 s: {}", refused.reset);
        assert!(rates.check(Uuid::now_v7(), 3).allowed, "another token has its own budget");
        assert!(rates.check(token, 100).allowed, "a changed rate starts afresh");
        let [policy, state] = refused.headers();
        assert_eq!(policy, ("ratelimit-policy", "3;w=60".to_owned()));
        assert!(state.1.starts_with("limit=3, remaining=0, reset="), "{}", state.1);
    }
}

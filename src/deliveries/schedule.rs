//! When a delivery that did not get through is tried again: after growing pauses (5 s,
//! 30 s, 2 min, 10 min, 30 min, 1 h, 2 h, then every 4 h), each varied by up to a fifth
//! either way so that deliveries failing together do not come back together, and never
//! after `webhooks.max_age` from when the task ended — the last attempt falls on that
//! limit, and the delivery fails after it.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// The pauses after the 1st, 2nd, … failed attempt; the last repeats.
const STANDARD: [Duration; 8] = [
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(2 * 60),
    Duration::from_secs(10 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(3600),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(4 * 3600),
];

/// How far a pause may stray from its step, as a fraction of it, either way.
const STANDARD_JITTER: f64 = 0.2;

/// A retry schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    steps: Vec<Duration>,
    jitter: f64,
    max_age: Duration,
}

impl Schedule {
    /// kiln's schedule, giving up `max_age` after a delivery was made.
    pub fn standard(max_age: Duration) -> Self {
        Self { steps: STANDARD.to_vec(), jitter: STANDARD_JITTER, max_age }
    }

    /// Any schedule (tests use pauses of milliseconds). `jitter` is clamped to 0..=1;
    /// no steps means no retries.
    pub fn new(steps: Vec<Duration>, jitter: f64, max_age: Duration) -> Self {
        Self { steps, jitter: if jitter.is_finite() { jitter.clamp(0.0, 1.0) } else { 0.0 }, max_age }
    }

    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    /// When to try again after `attempts` failed attempts (the one just made included)
    /// of a delivery made at `created`; `None` when it is time to give up.
    pub fn next(&self, created: DateTime<Utc>, attempts: u32, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let deadline = created + chrono::Duration::from_std(self.max_age).unwrap_or(chrono::Duration::MAX);
        if now >= deadline {
            return None;
        }
        let index = (attempts.max(1) - 1) as usize;
        let step = self.steps.get(index).or(self.steps.last())?;
        let factor = 1.0 + self.jitter * (2.0 * fastrand::f64() - 1.0);
        let pause = step.mul_f64(factor.max(0.0));
        let at = now + chrono::Duration::from_std(pause).unwrap_or(chrono::Duration::MAX);
        Some(at.min(deadline))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + seconds, 0).expect("time")
    }

    #[test]
    fn pauses_grow_step_by_step_within_the_jitter() {
        let schedule = Schedule::standard(Duration::from_secs(24 * 3600));
        for _ in 0..50 {
            for (attempts, step) in (1..).zip(STANDARD.iter().chain([&STANDARD[7], &STANDARD[7]])) {
                let next = schedule.next(at(0), attempts, at(0)).expect("within max_age");
                let pause = (next - at(0)).to_std().expect("forward").as_secs_f64();
                let step = step.as_secs_f64();
                assert!(pause >= step * 0.8 - 0.001 && pause <= step * 1.2 + 0.001, "attempt {attempts}: {pause}");
            }
        }
    }

    #[test]
    fn never_past_max_age_and_gives_up_after_it() {
        let schedule = Schedule::standard(Duration::from_secs(24 * 3600));
        let created = at(0);
        let late = at(24 * 3600 - 60);
        assert_eq!(schedule.next(created, 9, late), Some(at(24 * 3600)), "the last attempt falls on the limit");
        assert_eq!(schedule.next(created, 10, at(24 * 3600)), None);
        assert_eq!(schedule.next(created, 1, at(30 * 3600)), None);
    }

    #[test]
    fn a_day_of_the_standard_schedule_is_fourteen_attempts() {
        let schedule = Schedule::new(STANDARD.to_vec(), 0.0, Duration::from_secs(24 * 3600));
        let (created, mut now, mut attempts) = (at(0), at(0), 1);
        while let Some(next) = schedule.next(created, attempts, now) {
            now = next;
            attempts += 1;
        }
        // The first attempt, 7 more over 3 h 42 min 35 s, then one every 4 h (5), and a
        // last one cut to the limit.
        assert_eq!(attempts, 14);
        assert_eq!(now, at(24 * 3600));
    }

    #[test]
    fn a_test_schedule_is_exact() {
        let schedule = Schedule::new(vec![Duration::from_millis(20)], 5.0, Duration::from_secs(1));
        assert_eq!(schedule.jitter, 1.0);
        let exact =
            Schedule::new(vec![Duration::from_millis(20), Duration::from_millis(40)], 0.0, Duration::from_secs(1));
        assert_eq!(exact.next(at(0), 2, at(0)), Some(at(0) + chrono::Duration::milliseconds(40)));
        assert_eq!(exact.next(at(0), 7, at(0)), Some(at(0) + chrono::Duration::milliseconds(40)));
        assert_eq!(Schedule::new(Vec::new(), 0.0, Duration::from_secs(1)).next(at(0), 1, at(0)), None);
    }
}

//! Retry policy: how many attempts, and how long to wait between them.
//!
//! The delay is a pure function of the attempt number rather than the state
//! of an iterator (as in the `backoff`/`backon` crates), because brokers
//! report the attempt themselves (JetStream's delivery count, our `attempt`
//! after a restart) and the delay must follow from it alone.

use std::time::Duration;

use crate::config::BackoffConfig;

/// When a retryable failure is tried again, and after how long
/// (`policy.max_attempts`, `policy.backoff`).
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; after the last the event is
    /// dead-lettered (`retries-exhausted`).
    pub max_attempts: u32,
    /// The wait between attempts: exponential, capped, with jitter.
    pub backoff: BackoffConfig,
}

impl RetryPolicy {
    /// Whether an event whose attempt `attempt` just failed gets another.
    pub fn should_retry(&self, attempt: u32) -> bool {
        attempt < self.max_attempts
    }

    /// The wait after attempt `attempt` (1-based) failed, with random jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, rand::random_range(-1.0..=1.0))
    }

    /// The wait after attempt `attempt` failed, with the jitter drawn as
    /// `unit` in [-1, 1]: `initial × multiplier^(attempt-1)`, capped at
    /// `max`, then scaled by `1 + jitter × unit` and capped at `max` again.
    pub fn delay_with(&self, attempt: u32, unit: f64) -> Duration {
        let b = &self.backoff;
        let exponent = attempt.saturating_sub(1).min(1_000) as i32;
        let base = b.initial.as_secs_f64() * b.multiplier.powi(exponent);
        let capped = base.min(b.max.as_secs_f64());
        let jittered = capped * (1.0 + b.jitter * unit.clamp(-1.0, 1.0));
        Duration::from_secs_f64(jittered.clamp(0.0, b.max.as_secs_f64()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(jitter: f64) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            backoff: BackoffConfig { initial: Duration::from_millis(100), max: Duration::from_secs(1), multiplier: 3.0, jitter },
        }
    }

    #[test]
    fn grows_geometrically_then_caps() {
        let p = policy(0.0);
        let ms: Vec<u128> = (1..=5).map(|a| p.delay_with(a, 0.7).as_millis()).collect();
        assert_eq!(ms, vec![100, 300, 900, 1000, 1000]);
    }

    #[test]
    fn jitter_spreads_within_bounds_and_never_passes_max() {
        let p = policy(0.5);
        assert_eq!(p.delay_with(1, -1.0).as_millis(), 50);
        assert_eq!(p.delay_with(1, 1.0).as_millis(), 150);
        assert_eq!(p.delay_with(4, 1.0).as_millis(), 1000, "jitter is capped at max");
        for _ in 0..1000 {
            let d = p.delay(2).as_millis();
            assert!((150..=450).contains(&d), "{d}");
        }
    }

    #[test]
    fn attempts_are_counted_from_one() {
        let p = policy(0.0);
        assert!(p.should_retry(1) && p.should_retry(3));
        assert!(!p.should_retry(4));
    }
}

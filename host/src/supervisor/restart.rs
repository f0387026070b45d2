//! The restart policy's verdicts (`[pipelines.<name>.restart]`): whether a
//! pipeline that failed starts again, and after how long. Pure: the time is
//! passed in, so each rule is tested without waiting; the supervisor does
//! the waiting.
//!
//! The wait is the retry policy's delay function
//! ([`crate::dispatch::RetryPolicy::delay_with`]) with a multiplier of 2
//! and ±10% jitter: `initial_backoff × 2^(n-1)` for the n-th failure in a
//! row, capped at `max_backoff`. The limit is Erlang/OTP's: at most
//! `max_restarts` restarts within a sliding `window`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::{BackoffConfig, RestartConfig};
use crate::dispatch::RetryPolicy;

/// Spread of each wait, a fraction (±10%, Flink's default), so pipelines
/// that failed together do not all reconnect at the same instant.
const JITTER: f64 = 0.1;

/// What to do after a failure.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Start again after `delay`; `attempt` counts the failures in a row.
    Restart { attempt: u32, delay: Duration },
    /// `restart.enabled = false`.
    Disabled,
    /// `restarts` restarts happened within `window` already: stay failed.
    GiveUp { restarts: usize, window: Duration },
}

/// One pipeline's restart history.
#[derive(Debug)]
pub struct Restarts {
    config: RestartConfig,
    backoff: RetryPolicy,
    /// When each restart within the window was decided, oldest first.
    recent: VecDeque<Instant>,
    /// Failures in a row: the backoff's exponent.
    in_a_row: u32,
}

impl Restarts {
    pub fn new(config: &RestartConfig) -> Self {
        let backoff = RetryPolicy {
            max_attempts: u32::MAX,
            backoff: BackoffConfig { initial: config.initial_backoff, max: config.max_backoff, multiplier: 2.0, jitter: JITTER },
        };
        Self { config: config.clone(), backoff, recent: VecDeque::new(), in_a_row: 0 }
    }

    /// A run failed at `now` after it had been up for `up` (zero when it
    /// did not start). `unit`, in [-1, 1], draws the jitter.
    pub fn after_failure(&mut self, now: Instant, up: Duration, unit: f64) -> Verdict {
        if !self.config.enabled {
            return Verdict::Disabled;
        }
        // A run that stayed up longer than the longest wait had recovered.
        if up > self.config.max_backoff {
            self.in_a_row = 0;
        }
        while self.recent.front().is_some_and(|at| now.saturating_duration_since(*at) >= self.config.window) {
            self.recent.pop_front();
        }
        if let Some(max) = self.config.max_restarts {
            if self.recent.len() >= max as usize {
                return Verdict::GiveUp { restarts: self.recent.len(), window: self.config.window };
            }
        }
        self.recent.push_back(now);
        self.in_a_row = self.in_a_row.saturating_add(1);
        Verdict::Restart { attempt: self.in_a_row, delay: self.backoff.delay_with(self.in_a_row, unit) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max_restarts: Option<u32>) -> RestartConfig {
        RestartConfig {
            enabled: true,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            max_restarts,
            window: Duration::from_secs(600),
        }
    }

    fn delays(restarts: &mut Restarts, start: Instant, count: u32) -> Vec<u64> {
        (0..count)
            .map(|i| match restarts.after_failure(start + Duration::from_secs(u64::from(i)), Duration::ZERO, 0.0) {
                Verdict::Restart { delay, .. } => delay.as_secs(),
                other => u64::MAX - u64::from(matches!(other, Verdict::Disabled)),
            })
            .collect()
    }

    #[test]
    fn the_wait_doubles_from_initial_to_max() {
        let mut restarts = Restarts::new(&config(None));
        assert_eq!(delays(&mut restarts, Instant::now(), 9), [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn jitter_spreads_the_wait_by_a_tenth_and_never_past_max() {
        let mut restarts = Restarts::new(&config(None));
        let now = Instant::now();
        let millis = |verdict: Verdict| match verdict {
            Verdict::Restart { attempt, delay } => (attempt, delay.as_secs_f64() * 1000.0),
            _ => (0, 0.0),
        };
        let close = |(attempt, ms): (u32, f64), want: (u32, f64)| attempt == want.0 && (ms - want.1).abs() < 0.001;
        assert!(close(millis(restarts.after_failure(now, Duration::ZERO, -1.0)), (1, 900.0)));
        assert!(close(millis(restarts.after_failure(now, Duration::ZERO, 1.0)), (2, 2200.0)));
        for _ in 0..10 {
            restarts.after_failure(now, Duration::ZERO, 1.0);
        }
        assert!(close(millis(restarts.after_failure(now, Duration::ZERO, 1.0)), (13, 60_000.0)), "capped at max_backoff");
    }

    #[test]
    fn a_run_that_stayed_up_longer_than_max_backoff_starts_the_wait_over() {
        let mut restarts = Restarts::new(&config(None));
        let now = Instant::now();
        delays(&mut restarts, now, 5);
        let short = restarts.after_failure(now, Duration::from_secs(60), 0.0);
        assert_eq!(short, Verdict::Restart { attempt: 6, delay: Duration::from_secs(32) }, "60 s up is not longer than max_backoff");
        let long = restarts.after_failure(now, Duration::from_secs(61), 0.0);
        assert_eq!(long, Verdict::Restart { attempt: 1, delay: Duration::from_secs(1) });
    }

    #[test]
    fn the_limit_counts_restarts_within_the_window() {
        let mut restarts = Restarts::new(&config(Some(3)));
        let start = Instant::now();
        assert_eq!(delays(&mut restarts, start, 3), [1, 2, 4]);
        let fourth = restarts.after_failure(start + Duration::from_secs(599), Duration::ZERO, 0.0);
        assert_eq!(fourth, Verdict::GiveUp { restarts: 3, window: Duration::from_secs(600) });
        // Once the first restart is older than the window, there is room again.
        let later = restarts.after_failure(start + Duration::from_secs(600), Duration::ZERO, 0.0);
        assert_eq!(later, Verdict::Restart { attempt: 4, delay: Duration::from_secs(8) });
    }

    #[test]
    fn without_a_limit_restarts_go_on_and_disabled_never_restarts() {
        let mut restarts = Restarts::new(&config(None));
        let start = Instant::now();
        assert!(delays(&mut restarts, start, 1000).iter().all(|d| *d <= 60));
        let mut off = Restarts::new(&RestartConfig { enabled: false, ..config(None) });
        assert_eq!(off.after_failure(start, Duration::ZERO, 0.0), Verdict::Disabled);
    }
}

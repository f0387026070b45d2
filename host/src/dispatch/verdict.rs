//! What becomes of an event after an attempt at it: a pure function of the
//! attempt's outcome, its number, the retry policy and the lane's mode, so
//! every case is tested in one table. The lane (`lane.rs`) is the driver
//! that acts on the verdict: it sends, dead-letters, sleeps and calls again.
//! (Vector's `sinks/util/retries.rs` splits `RetryLogic` from its driver
//! the same way.)

use std::time::Duration;

use super::dead_letter::Reason;
use super::policy::RetryPolicy;

/// What a lane does with the events it takes. It only moves forward:
/// `Running` → `Draining` → `HandingBack`, or `Running` → `HandingBack`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Calls the plugin and retries failures in place.
    Running,
    /// The pipeline is stopping: events still go to the plugin, but one
    /// that would wait for a retry is handed back instead (a stop does not
    /// wait out backoffs).
    Draining,
    /// An event was handed back: every later event of the lane is handed
    /// back too, so none overtakes it in the source's order.
    HandingBack,
}

/// What an attempt came to, as far as the verdict needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempted {
    /// It returned outputs that can all be sent (and its state, if any,
    /// was concluded).
    Sendable,
    /// Its state was computed from a value another event has since changed.
    StateConflict,
    /// The handler rejected the event, or its outputs cannot be sent.
    Rejected,
    /// The handler failed retryably, or the call failed; `timeout`: the
    /// call ran past its deadline.
    Failed { timeout: bool },
}

/// The event's fate after an attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Send its outputs.
    Deliver,
    /// Run it again at once: not a new attempt, nothing of this one is kept.
    RunAgain,
    /// Dead-letter it.
    DeadLetter(Reason),
    /// Hand it back to the broker, which redelivers it `after` the backoff
    /// (and the lane moves on).
    Redeliver { after: Duration },
    /// Wait `after`, then make attempt `attempt + 1`.
    Retry { after: Duration },
    /// Hand it back unfinished, and every later event of the lane with it.
    HandBack,
}

/// The lane's settings the verdict depends on.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    pub retry: &'a RetryPolicy,
    /// Failures go back to the broker for redelivery (see
    /// [`super::Dispatcher::redeliver`]).
    pub redeliver: bool,
}

/// The verdict on attempt number `attempt` (1-based) at an event. `jitter`
/// in [-1, 1] spreads the backoff (see [`RetryPolicy::delay_with`]).
pub fn verdict(attempted: Attempted, attempt: u32, mode: Mode, rules: Rules<'_>, jitter: f64) -> Verdict {
    let failed_timeout = match (mode, attempted) {
        (Mode::HandingBack, _) => return Verdict::HandBack,
        (_, Attempted::Sendable) => return Verdict::Deliver,
        (_, Attempted::StateConflict) => return Verdict::RunAgain,
        (_, Attempted::Rejected) => return Verdict::DeadLetter(Reason::Rejected),
        (_, Attempted::Failed { timeout }) => timeout,
    };
    if !rules.retry.should_retry(attempt) {
        return Verdict::DeadLetter(if failed_timeout { Reason::Timeout } else { Reason::RetriesExhausted });
    }
    let after = rules.retry.delay_with(attempt, jitter);
    match (rules.redeliver, mode) {
        // The broker waits out the backoff, even through a stop.
        (true, _) => Verdict::Redeliver { after },
        (false, Mode::Draining) => Verdict::HandBack,
        (false, _) => Verdict::Retry { after },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackoffConfig;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            backoff: BackoffConfig { initial: Duration::from_millis(100), max: Duration::from_secs(1), multiplier: 2.0, jitter: 0.5 },
        }
    }

    /// Every outcome × attempt (first, last retryable, exhausted) × mode ×
    /// redeliver, against the rules written out case by case.
    #[test]
    fn every_case() {
        use Attempted::*;
        use Mode::*;
        let retry = policy();
        let ms = Duration::from_millis;
        let outcomes = [Sendable, StateConflict, Rejected, Failed { timeout: false }, Failed { timeout: true }];
        let mut cases = 0;
        for attempted in outcomes {
            for attempt in [1, 2, 3] {
                for mode in [Running, Draining, HandingBack] {
                    for redeliver in [false, true] {
                        // Jitter -1 halves the delay: 100 ms × 2^(attempt-1) × 0.5.
                        let after = ms(50 << (attempt - 1));
                        let exhausted = attempt >= 3;
                        let expected = match (attempted, mode) {
                            (_, HandingBack) => Verdict::HandBack,
                            (Sendable, _) => Verdict::Deliver,
                            (StateConflict, _) => Verdict::RunAgain,
                            (Rejected, _) => Verdict::DeadLetter(Reason::Rejected),
                            (Failed { timeout: true }, _) if exhausted => Verdict::DeadLetter(Reason::Timeout),
                            (Failed { timeout: false }, _) if exhausted => Verdict::DeadLetter(Reason::RetriesExhausted),
                            (Failed { .. }, _) if redeliver => Verdict::Redeliver { after },
                            (Failed { .. }, Draining) => Verdict::HandBack,
                            (Failed { .. }, _) => Verdict::Retry { after },
                        };
                        let got = verdict(attempted, attempt, mode, Rules { retry: &retry, redeliver }, -1.0);
                        assert_eq!(got, expected, "{attempted:?}, attempt {attempt}, {mode:?}, redeliver {redeliver}");
                        cases += 1;
                    }
                }
            }
        }
        assert_eq!(cases, 5 * 3 * 3 * 2);
    }

    #[test]
    fn a_retry_waits_the_policy_backoff() {
        let retry = policy();
        let rules = Rules { retry: &retry, redeliver: false };
        let failed = Attempted::Failed { timeout: false };
        for (attempt, jitter) in [(1, 0.0), (2, 1.0), (2, -0.3)] {
            let after = retry.delay_with(attempt, jitter);
            assert_eq!(verdict(failed, attempt, Mode::Running, rules, jitter), Verdict::Retry { after });
        }
    }

    #[test]
    fn a_single_attempt_policy_never_retries() {
        let retry = RetryPolicy { max_attempts: 1, ..policy() };
        let rules = Rules { retry: &retry, redeliver: true };
        assert_eq!(
            verdict(Attempted::Failed { timeout: false }, 1, Mode::Running, rules, 0.0),
            Verdict::DeadLetter(Reason::RetriesExhausted)
        );
        // An attempt number past the limit (a broker's redelivery count
        // after the policy was lowered) is exhausted too.
        assert_eq!(verdict(Attempted::Failed { timeout: true }, 7, Mode::Draining, rules, 0.0), Verdict::DeadLetter(Reason::Timeout));
    }
}

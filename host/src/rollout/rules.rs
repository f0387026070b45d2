//! When a candidate has shown enough: the promotion and rollback rules of
//! `[pipelines.<name>.rollout]`, as a pure verdict on its counts.

use super::Counts;
use crate::config::RolloutConfig;

/// What the counts say.
#[derive(Debug, Clone, PartialEq)]
pub enum Judgement {
    /// Not enough events yet, or nothing decided.
    Wait,
    /// Promote, and why.
    Promote(String),
    /// Roll back, and why.
    RollBack(String),
}

/// Rollback first: a candidate that fails more than the current version by
/// the margin goes, once it has handled `judge_after` events. Promotion
/// needs `promote_after` events, a difference rate of at most
/// `max_difference` and a failure rate no higher than the current's.
pub fn judge(config: &RolloutConfig, counts: &Counts) -> Judgement {
    let handled = counts.handled;
    if handled == 0 {
        return Judgement::Wait;
    }
    let candidate = counts.candidate_failures as f64 / handled as f64;
    let current = match counts.current_events {
        0 => 0.0,
        n => counts.current_failures as f64 / n as f64,
    };
    if handled >= config.judge_after && candidate > current + config.rollback_margin {
        return Judgement::RollBack(format!(
            "the candidate failed {:.1}% of {handled} events, the current version {:.1}% of {} (rollback_margin {})",
            candidate * 100.0,
            current * 100.0,
            counts.current_events,
            config.rollback_margin
        ));
    }
    let Some(after) = config.promote_after else { return Judgement::Wait };
    if handled < after {
        return Judgement::Wait;
    }
    let differences = counts.different as f64 / handled as f64;
    if differences <= config.max_difference && candidate <= current {
        return Judgement::Promote(format!(
            "{handled} events: {} differing ({:.1}%, max_difference {}), failure rate {:.1}% against the current version's {:.1}%",
            counts.different,
            differences * 100.0,
            config.max_difference,
            candidate * 100.0,
            current * 100.0
        ));
    }
    Judgement::Wait
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RolloutConfig {
        RolloutConfig { promote_after: Some(100), judge_after: 20, rollback_margin: 0.1, ..RolloutConfig::default() }
    }

    fn counts(handled: u64, different: u64, failures: u64, current_events: u64, current_failures: u64) -> Counts {
        Counts { handled, different, candidate_failures: failures, current_events, current_failures, ..Counts::default() }
    }

    #[test]
    fn an_identical_candidate_is_promoted_after_enough_events() {
        assert_eq!(judge(&config(), &counts(99, 0, 0, 99, 0)), Judgement::Wait);
        assert!(matches!(judge(&config(), &counts(100, 0, 0, 100, 0)), Judgement::Promote(_)));
    }

    #[test]
    fn differences_over_the_limit_hold_promotion() {
        assert_eq!(judge(&config(), &counts(1000, 100, 0, 1000, 0)), Judgement::Wait);
        let loose = RolloutConfig { max_difference: 0.2, ..config() };
        assert!(matches!(judge(&loose, &counts(1000, 100, 0, 1000, 0)), Judgement::Promote(_)));
    }

    #[test]
    fn more_failures_than_the_current_hold_promotion_and_past_the_margin_roll_back() {
        // 5% against 4%: within the margin, not promoted.
        assert_eq!(judge(&config(), &counts(100, 0, 5, 100, 4)), Judgement::Wait);
        // 50% against 0%: rolled back, but only once judge_after is reached.
        assert_eq!(judge(&config(), &counts(19, 0, 10, 19, 0)), Judgement::Wait);
        assert!(matches!(judge(&config(), &counts(20, 0, 10, 20, 0)), Judgement::RollBack(_)));
    }

    #[test]
    fn without_promote_after_only_rollback_is_automatic() {
        let manual = RolloutConfig { promote_after: None, ..config() };
        assert_eq!(judge(&manual, &counts(10_000, 0, 0, 10_000, 0)), Judgement::Wait);
        assert!(matches!(judge(&manual, &counts(100, 0, 50, 100, 0)), Judgement::RollBack(_)));
    }
}

//! `[pipelines.<name>.rollout]`: how a candidate plugin version is tried
//! beside the current one before it takes over (see [`crate::rollout`]).
//!
//! A candidate is given through the admin API (`POST
//! /pipelines/<name>/candidate`, or `sluice plugin candidate`); this table
//! says how it is tried and when it is promoted or rolled back. Without the
//! table a candidate is shadowed on every event and promoted only by hand.

use std::time::Duration;

use serde::Deserialize;

/// How a candidate is tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutMode {
    /// The candidate also handles (a `sample` of) the events the current
    /// version handles; its outputs are compared and dropped, its state
    /// writes discarded, its HTTP and service calls refused.
    #[default]
    Shadow,
    /// The candidate handles the events of a `canary` fraction of keys for
    /// real; an event it fails goes to the current version.
    Canary,
}

/// The `rollout` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutConfig {
    /// `shadow` (default) or `canary`. A candidate's upload may ask for the
    /// other mode (`?mode=`).
    #[serde(default)]
    pub mode: RolloutMode,
    /// Shadow: the fraction of events the candidate also handles, 0 < sample
    /// ≤ 1. Default 1 (every event).
    #[serde(default = "default_sample")]
    pub sample: f64,
    /// Canary: the fraction of keys the candidate handles, by a hash of the
    /// key (a key stays on one version), 0 < canary ≤ 1. Keyless events
    /// stay on the current version. Default 0.1.
    #[serde(default = "default_canary")]
    pub canary: f64,
    /// Promote the candidate once it has handled this many events (compared
    /// in shadow, served in canary) with a difference rate of at most
    /// `max_difference` and a failure rate no higher than the current
    /// version's. Unset (default): promotion is by hand only.
    #[serde(default)]
    pub promote_after: Option<u64>,
    /// Shadow: the share of compared events that may differ for an
    /// automatic promotion, 0 ≤ max_difference < 1. Default 0: none.
    #[serde(default)]
    pub max_difference: f64,
    /// Roll the candidate back when its failure rate exceeds the current
    /// version's by more than this (0.1: ten points), judged once it has
    /// handled `judge_after` events. Default 0.1.
    #[serde(default = "default_rollback_margin")]
    pub rollback_margin: f64,
    /// Events the candidate must have handled before its failure rate is
    /// compared at all: a few early failures are no rate. Default 20.
    #[serde(default = "default_judge_after")]
    pub judge_after: u64,
    /// Differing events kept, side by side, for the report. Default 20.
    #[serde(default = "default_examples")]
    pub examples: usize,
    /// Shadow: how long one call of the candidate may take (the sampled
    /// events of a batch, or one event); past it the call is dropped and
    /// counted as a failure of the candidate, and the rest of the batch is
    /// not shadowed. Default: the pipeline's `policy.timeout`.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
}

fn default_sample() -> f64 {
    1.0
}

fn default_canary() -> f64 {
    0.1
}

fn default_rollback_margin() -> f64 {
    0.1
}

fn default_judge_after() -> u64 {
    20
}

fn default_examples() -> usize {
    20
}

impl Default for RolloutConfig {
    fn default() -> Self {
        Self {
            mode: RolloutMode::default(),
            sample: default_sample(),
            canary: default_canary(),
            promote_after: None,
            max_difference: 0.0,
            rollback_margin: default_rollback_margin(),
            judge_after: default_judge_after(),
            examples: default_examples(),
            timeout: None,
        }
    }
}

impl RolloutConfig {
    /// The cross-field rules serde cannot express, as (key, problem).
    pub(super) fn validate(&self, out: &mut Vec<(&'static str, String)>) {
        if !(self.sample > 0.0 && self.sample <= 1.0) {
            out.push(("rollout.sample", format!("must be greater than 0 and at most 1, got {}", self.sample)));
        }
        if !(self.canary > 0.0 && self.canary <= 1.0) {
            out.push(("rollout.canary", format!("must be greater than 0 and at most 1, got {}", self.canary)));
        }
        if !(0.0..1.0).contains(&self.max_difference) {
            out.push(("rollout.max_difference", format!("must be at least 0 and less than 1, got {}", self.max_difference)));
        }
        if !(0.0..=1.0).contains(&self.rollback_margin) {
            out.push(("rollout.rollback_margin", format!("must be between 0 and 1, got {}", self.rollback_margin)));
        }
        if self.promote_after == Some(0) {
            out.push(("rollout.promote_after", "must be at least 1 (leave it out to promote by hand only)".into()));
        }
        if self.timeout.is_some_and(|t| t.is_zero()) {
            out.push(("rollout.timeout", "must be greater than zero, e.g. \"1s\"".into()));
        }
    }
}

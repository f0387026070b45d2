//! `rollout_flaky`: a test plugin of the rollout tests (see `rollout_base/src/rollout.rs`).

const MODE: &str = "flaky";
include!("../../rollout_base/src/rollout.rs");

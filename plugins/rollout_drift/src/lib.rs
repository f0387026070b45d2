//! `rollout_drift`: a test plugin of the rollout tests (see `rollout_base/src/rollout.rs`).

const MODE: &str = "drift";
include!("../../rollout_base/src/rollout.rs");

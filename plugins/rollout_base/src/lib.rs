//! `rollout_base`: a test plugin of the rollout tests (see `rollout_base/src/rollout.rs`).

const MODE: &str = "base";
include!("../../rollout_base/src/rollout.rs");

//! `rollout_same`: a test plugin of the rollout tests (see `rollout_base/src/rollout.rs`).

const MODE: &str = "same";
include!("../../rollout_base/src/rollout.rs");

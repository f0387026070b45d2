//! Cross-field rules that serde cannot check while parsing.

use super::model::{Config, PipelineConfig, SourceConfig};

/// A rule broken, with where.
pub struct Violation {
    pub pipeline: String,
    pub key: String,
    pub message: String,
}

pub fn validate(config: &Config) -> Result<(), Violation> {
    let stdin_users: Vec<&String> = config
        .pipelines
        .iter()
        .filter(|(_, p)| matches!(p.source, SourceConfig::Stdin { .. }))
        .map(|(name, _)| name)
        .collect();
    if let [_, second, ..] = stdin_users.as_slice() {
        return Err(Violation {
            pipeline: (*second).clone(),
            key: "source.kind".into(),
            message: format!(
                "stdin is already the source of pipeline `{}`; only one pipeline can read it",
                stdin_users[0]
            ),
        });
    }
    for (name, pipeline) in &config.pipelines {
        validate_pipeline(pipeline).map_err(|(key, message)| Violation {
            pipeline: name.clone(),
            key: key.into(),
            message,
        })?;
    }
    Ok(())
}

fn validate_pipeline(p: &PipelineConfig) -> Result<(), (&'static str, String)> {
    let policy = &p.policy;
    if p.dead_letter.is_none() {
        return Err((
            "dead_letter",
            "missing: rejected events and events out of attempts need somewhere to go; add a [pipelines.<name>.dead_letter] sink".into(),
        ));
    }
    if policy.max_attempts == 0 {
        return Err(("policy.max_attempts", "must be at least 1 (the first attempt counts)".into()));
    }
    if policy.concurrency == 0 || policy.concurrency > 1024 {
        return Err(("policy.concurrency", format!("must be between 1 and 1024, got {}", policy.concurrency)));
    }
    if policy.batch_size == 0 || policy.batch_size > 4096 {
        return Err(("policy.batch_size", format!("must be between 1 and 4096, got {}", policy.batch_size)));
    }
    if policy.timeout.is_zero() {
        return Err(("policy.timeout", "must be greater than zero".into()));
    }
    if policy.memory.as_u64() < 1024 * 1024 {
        return Err(("policy.memory", format!("must be at least 1 MiB, got {}", policy.memory)));
    }
    let backoff = &policy.backoff;
    if !(backoff.multiplier >= 1.0 && backoff.multiplier.is_finite()) {
        return Err(("policy.backoff.multiplier", format!("must be a number ≥ 1, got {}", backoff.multiplier)));
    }
    if !(0.0..=1.0).contains(&backoff.jitter) {
        return Err(("policy.backoff.jitter", format!("must be between 0 and 1, got {}", backoff.jitter)));
    }
    if backoff.initial > backoff.max {
        return Err((
            "policy.backoff.initial",
            format!("{:?} is longer than policy.backoff.max ({:?})", backoff.initial, backoff.max),
        ));
    }
    if let Some(pin) = &p.plugin.sha256 {
        if pin.len() != 64 || !pin.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(("plugin.sha256", "must be 64 hexadecimal characters".into()));
        }
    }
    p.plugin.init_config().map_err(|m| ("plugin.config", m))?;
    Ok(())
}

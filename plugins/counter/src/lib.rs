//! `counter`: counts events per key in the pipeline's state (the `state`
//! capability) and outputs the new count. The example of a stateful
//! plugin, and what the state tests drive.
//!
//! For each event, the key is the event's key (or, without one, its payload
//! up to the first `:`): `count:<key>` is incremented by one, and one output
//! is returned with the same key and the payload `<key>=<count>`.
//!
//! Payload rules, to test that failed attempts leave no trace (each
//! increments first, then fails):
//! - `...:retry-once`: a retryable error on the first attempt;
//! - `...:reject`: rejected (dead-lettered).
//!
//! Metrics (the example of `sluice_plugin::metrics`), recorded on every
//! attempt before it can fail, so a retried event counts twice:
//! - counter `counted` labelled `key`: events counted per key
//!   (`sluice_plugin_counted_total{pipeline,plugin,key}` on `/metrics`);
//! - histogram `payload_bytes`: the size of each event's payload.
//!
//! - `...:bad-metric` also records into a counter with an invalid name,
//!   which the host drops (and reports) without failing the event.
//!
//! Config: `prefix` (optional, default `count:`): the state key prefix.

use sluice_plugin::{metrics, state, Config, Event, HandlerError, Output, Plugin};

struct Counter {
    prefix: String,
}

impl Plugin for Counter {
    fn init(config: Config) -> Result<Self, String> {
        config.deny_unknown(&["prefix"])?;
        Ok(Counter { prefix: config.get("prefix").unwrap_or("count:").to_owned() })
    }

    fn handle(&mut self, event: Event) -> Result<Vec<Output>, HandlerError> {
        let text = event.payload_str()?.trim_end().to_owned();
        let key = match &event.key {
            Some(key) => String::from_utf8_lossy(key).into_owned(),
            None => text.split(':').next().unwrap_or_default().to_owned(),
        };
        metrics::counter("counted", &[("key", &key)]).inc();
        metrics::histogram("payload_bytes", &[]).observe(event.payload.len() as f64);
        if text.ends_with(":bad-metric") {
            metrics::counter("bad-metric!", &[]).inc();
        }
        let count = state::increment(&format!("{}{key}", self.prefix), 1)?;
        if text.ends_with(":retry-once") && event.attempt == 1 {
            return Err(HandlerError::retryable(format!("first attempt fails after counting {key} to {count}")));
        }
        if text.ends_with(":reject") {
            return Err(HandlerError::reject(format!("rejected after counting {key} to {count}")));
        }
        Ok(vec![Output::new(format!("{key}={count}")).with_key(key.into_bytes())])
    }
}

sluice_plugin::export!(Counter);

#[cfg(test)]
mod tests {
    use super::*;

    fn event(payload: &str, attempt: u32) -> Event {
        Event {
            id: "e".into(),
            source: "test".into(),
            key: None,
            payload: payload.as_bytes().to_vec(),
            headers: vec![],
            timestamp_ms: 0,
            attempt,
            reply_to: None,
        }
    }

    #[test]
    fn counts_per_key() -> Result<(), HandlerError> {
        state::clear();
        let mut counter = Counter::init(Config::from(vec![])).map_err(HandlerError::reject)?;
        counter.handle(event("a", 1))?;
        counter.handle(event("b", 1))?;
        let out = counter.handle(event("a:x", 1))?;
        assert_eq!(out[0].payload, b"a=2");
        Ok(())
    }

    #[test]
    fn a_failed_attempt_is_still_measured() -> Result<(), HandlerError> {
        state::clear();
        metrics::clear();
        let mut counter = Counter::init(Config::from(vec![])).map_err(HandlerError::reject)?;
        assert!(counter.handle(event("a:retry-once", 1)).is_err());
        counter.handle(event("a:retry-once", 2))?;
        assert_eq!(metrics::counter_value("counted", &[("key", "a")]), 2);
        assert_eq!(metrics::histogram_count("payload_bytes", &[]), 2);
        Ok(())
    }
}

//! Rollouts in the lane, with scripted versions: a shadowed candidate's
//! results are compared and dropped whatever it does; a canary serves its
//! keys for real, and the events it fails go to the current version, in
//! order, never to the dead letter.

use super::*;
use crate::config::{RolloutConfig, RolloutMode};
use crate::rollout::{Rollout, Trial};

/// A scripted version with its own digest.
struct Version {
    inner: Scripted,
    digest: &'static str,
}

#[async_trait::async_trait]
impl HandlerFactory for Version {
    async fn create(&self) -> Result<Box<dyn Handler>, crate::runtime::plugin::LoadError> {
        self.inner.create().await
    }
    fn name(&self) -> &str {
        "scripted"
    }
    fn digest(&self) -> &str {
        self.digest
    }
}

fn candidate(script: impl Fn(&Event, usize) -> Result<HandleResult, CallError> + Send + Sync + 'static) -> (Arc<Version>, Calls) {
    let calls = Calls::default();
    (Arc::new(Version { inner: Scripted { script: Arc::new(script), calls: calls.clone() }, digest: "c0ffee" }), calls)
}

fn keyed(id: &str, payload: &str) -> Event {
    let mut e = event(id, payload);
    e.key = Some(id.as_bytes().to_vec());
    e
}

fn rollout(config: RolloutConfig) -> Arc<Rollout> {
    Arc::new(Rollout::new("p", Some(&config), Duration::from_secs(1)))
}

#[tokio::test(start_paused = true)]
async fn a_shadow_is_compared_and_dropped_whatever_it_does() -> anyhow::Result<()> {
    let mut h = harness(|e, _| Ok(echo(e)), SinkMode::Ok);
    let (version, calls) = candidate(|e, _| match e.payload.as_slice() {
        b"trap" => Err(CallError::Trap("boom".into())),
        b"b" => Ok(Ok(vec![Output { destination: None, key: None, payload: b"B".to_vec(), headers: vec![], reply: false }])),
        _ => Ok(echo(e)),
    });
    let rollout = rollout(RolloutConfig::default());
    rollout.begin_with(version, None, Trial { mode: RolloutMode::Shadow, sample: 1.0, canary: 0.1 });
    h.dispatcher.rollout = rollout.clone();
    let stats = h.dispatcher.stats.clone();
    let log = Settlements::default();
    let events = ["a", "b", "trap", "c"].iter().map(|p| (event(p, p), 0)).collect();
    h.dispatcher.run(source(events, &log, false), CancellationToken::new()).await?;

    assert_eq!(h.out.payloads(), ["a", "b", "trap", "c"], "only the current version's outputs");
    assert!(h.out.records.lock().map(|r| r.iter().all(|r| header(r, "sluice-plugin-digest") == Some("feedface"))).unwrap_or(false));
    assert!(h.dlq.payloads().is_empty());
    // One call for the batch; it trapped as a whole, so each event again
    // alone, to tell which one failed.
    let shadowed: Vec<(String, usize)> = calls.lock().map(|c| c.iter().map(|c| (c.0.clone(), c.2)).collect()).unwrap_or_default();
    let expected = [("a", 4), ("b", 4), ("trap", 4), ("a", 1), ("b", 1), ("trap", 1), ("c", 1)];
    assert_eq!(shadowed, expected.map(|(id, n)| (id.to_owned(), n)));
    let report = rollout.status().candidate.map(|c| (c.counts, c.examples)).unwrap_or_default();
    let (counts, examples) = report;
    assert_eq!((counts.handled, counts.same, counts.different, counts.candidate_failures), (4, 2, 2, 1));
    assert_eq!(
        examples.iter().map(|e| (e.event_id.as_str(), e.difference.as_str())).collect::<Vec<_>>(),
        [("b", "output 1: payload"), ("trap", "the candidate failed (with a trap)")]
    );
    let s = stats.snapshot();
    assert_eq!((s.failures, s.dead_lettered, s.acked), (0, 0, 4), "the pipeline saw no failure");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_sample_of_a_batch_is_shadowed_in_one_call() -> anyhow::Result<()> {
    let mut h = harness(|e, _| Ok(echo(e)), SinkMode::Ok);
    let (version, calls) = candidate(|e, _| Ok(echo(e)));
    let rollout = rollout(RolloutConfig::default());
    rollout.begin_with(version, None, Trial { mode: RolloutMode::Shadow, sample: 0.5, canary: 0.1 });
    h.dispatcher.rollout = rollout.clone();
    let log = Settlements::default();
    let events = (0..200).map(|i| (event(&format!("e{i}"), "x"), 0)).collect();
    h.dispatcher.run(source(events, &log, false), CancellationToken::new()).await?;

    assert_eq!(h.out.payloads().len(), 200);
    let calls = calls.lock().map(|c| c.clone()).unwrap_or_default();
    let counts = rollout.status().candidate.map(|c| c.counts).unwrap_or_default();
    assert_eq!(counts.handled as usize, calls.len(), "each sampled event shadowed once");
    assert!((60..140).contains(&calls.len()), "about half of 200 sampled: {}", calls.len());
    assert!(calls.iter().any(|c| c.2 > 1), "sampled events of a batch go in one call");
    assert_eq!((counts.same, counts.different), (counts.handled, 0));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_canary_serves_its_keys_and_the_current_version_takes_what_it_fails_in_order() -> anyhow::Result<()> {
    let mut h = harness(|e, _| Ok(echo(e)), SinkMode::Ok);
    h.dispatcher.retry.max_attempts = 1;
    let (version, calls) = candidate(|e, _| {
        let n: u32 = std::str::from_utf8(&e.payload).ok().and_then(|p| p.parse().ok()).unwrap_or(0);
        Ok(if n % 2 == 1 { retryable("odd") } else { echo(e) })
    });
    // Judged late, so it serves every event here.
    let rollout = rollout(RolloutConfig { judge_after: 1000, ..RolloutConfig::default() });
    rollout.begin_with(version, None, Trial { mode: RolloutMode::Canary, sample: 1.0, canary: 1.0 });
    h.dispatcher.rollout = rollout.clone();
    let log = Settlements::default();
    let mut events: Vec<(Event, u32)> = (0..10).map(|i| (keyed(&format!("e{i}"), &i.to_string()), 0)).collect();
    // A keyless event stays on the current version.
    events.insert(3, (event("nokey", "x"), 0));
    h.dispatcher.run(source(events, &log, false), CancellationToken::new()).await?;

    let records = h.out.records.lock().map(|r| r.clone()).unwrap_or_default();
    let served: Vec<(String, &str)> = records
        .iter()
        .map(|r| (String::from_utf8_lossy(&r.payload).into_owned(), header(r, "sluice-plugin-digest").unwrap_or("-")))
        .collect();
    let expected: Vec<(String, &str)> = ["0", "1", "2", "x", "3", "4", "5", "6", "7", "8", "9"]
        .iter()
        .map(|p| (p.to_string(), if p.parse::<u32>().is_ok_and(|n| n % 2 == 0) { "c0ffee" } else { "feedface" }))
        .collect();
    assert_eq!(served, expected, "each once, in order; the canary's own outputs carry its digest");
    assert!(h.dlq.payloads().is_empty(), "nothing dead-lettered because of the canary");
    assert!(settlements(&log).iter().all(|(_, s)| *s == Settlement::Done));
    assert_eq!(calls.lock().map(|c| c.len()).unwrap_or(0), 10, "the keyless event never reached the canary");
    let counts = rollout.status().candidate.map(|c| c.counts).unwrap_or_default();
    assert_eq!((counts.handled, counts.candidate_failures, counts.fallbacks, counts.current_events), (10, 5, 5, 1));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_shadow_whose_outputs_fail_their_schema_is_reported_not_counted_by_the_pipeline() -> anyhow::Result<()> {
    use crate::config::{SchemaEntry, SchemasConfig};
    use crate::event::text_header;

    let mut h = harness(|e, _| Ok(echo(e)), SinkMode::Ok);
    let order = SchemaEntry {
        event_type: "order".into(),
        version: Some("1".into()),
        path: std::path::PathBuf::from("order.json"),
        document: Arc::new(serde_json::json!({"type": "object", "properties": {"total": {"type": "number"}}})),
    };
    let config = SchemasConfig { output: vec![order], ..SchemasConfig::default() };
    h.dispatcher.schemas = Arc::new(crate::schema::Gate::new(Some(&config)).map_err(anyhow::Error::msg)?);
    let (version, _) = candidate(|_, _| {
        Ok(Ok(vec![Output { destination: None, key: None, payload: br#"{"total":"3"}"#.to_vec(), headers: vec![], reply: false }]))
    });
    let rollout = rollout(RolloutConfig::default());
    rollout.begin_with(version, None, Trial { mode: RolloutMode::Shadow, sample: 1.0, canary: 0.1 });
    h.dispatcher.rollout = rollout.clone();
    let stats = h.dispatcher.stats.clone();
    let mut e = event("o1", r#"{"total":3}"#);
    e.headers = vec![text_header("event-type", "order"), text_header("event-version", "1")];
    let log = Settlements::default();
    h.dispatcher.run(source(vec![(e, 0)], &log, false), CancellationToken::new()).await?;

    assert_eq!(h.out.payloads(), [r#"{"total":3}"#]);
    let (counts, examples) = rollout.status().candidate.map(|c| (c.counts, c.examples)).unwrap_or_default();
    assert_eq!((counts.handled, counts.different, counts.invalid_outputs), (1, 1, 1));
    let difference = examples.first().map(|e| e.difference.clone()).unwrap_or_default();
    assert!(difference.starts_with("output 1: payload; the candidate's outputs fail their schema: output 1: "), "{difference}");
    assert_eq!(stats.snapshot().invalid_outputs, 0, "the pipeline's own counters are the current version's");
    Ok(())
}

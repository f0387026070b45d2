//! Schemas and accepted versions in the lane: an invalid input is
//! dead-lettered without a plugin call, an invalid output rejects its event,
//! and a version the plugin does not accept is dead-lettered as unsupported.

use std::path::PathBuf;

use serde_json::json;

use super::*;
use crate::config::{SchemaEntry, SchemasConfig};
use crate::event::text_header;
use crate::schema::{Accepts, Gate};

fn typed(id: &str, payload: &str, version: &str) -> Event {
    let mut e = event(id, payload);
    e.headers = vec![text_header("event-type", "order"), text_header("event-version", version)];
    e
}

fn entry(version: &str, document: serde_json::Value) -> SchemaEntry {
    SchemaEntry {
        event_type: "order".into(),
        version: Some(version.into()),
        path: PathBuf::from("order.json"),
        document: Arc::new(document),
    }
}

fn order_schema() -> serde_json::Value {
    json!({"type": "object", "required": ["id", "total"], "properties": {"total": {"type": "number"}}})
}

fn dlq_records(dlq: &MemorySink) -> Vec<Record> {
    dlq.records.lock().map(|r| r.clone()).unwrap_or_default()
}

fn called(calls: &Calls) -> Vec<String> {
    calls.lock().map(|c| c.iter().map(|c| c.0.clone()).collect()).unwrap_or_default()
}

#[tokio::test]
async fn an_invalid_input_is_dead_lettered_as_invalid_without_calling_the_plugin() -> anyhow::Result<()> {
    let mut h = harness(|e, _| Ok(echo(e)), SinkMode::Ok);
    let config = SchemasConfig { input: vec![entry("1", order_schema())], ..SchemasConfig::default() };
    h.dispatcher.schemas = Arc::new(Gate::new(Some(&config)).map_err(anyhow::Error::msg)?);
    let stats = h.dispatcher.stats.clone();
    let log = Settlements::default();
    let events = vec![
        (typed("good", r#"{"id":"o1","total":3}"#, "1"), 0),
        (typed("bad", r#"{"total":"three"}"#, "1"), 0),
        (typed("garbage", "not json", "1"), 0),
        (event("untyped", r#"{"id":"o2","total":1}"#), 0),
    ];
    h.dispatcher.run(source(events, &log, false), CancellationToken::new()).await?;

    assert_eq!(called(&h.calls), ["good"], "only the valid event reaches the plugin");
    assert_eq!(h.out.payloads(), [r#"{"id":"o1","total":3}"#]);
    let dlq = dlq_records(&h.dlq);
    let reasons: Vec<_> = dlq.iter().map(|r| (header(r, "sluice-dlq-event-id"), header(r, "sluice-dlq-reason"))).collect();
    assert_eq!(reasons, [(Some("bad"), Some("invalid")), (Some("garbage"), Some("invalid")), (Some("untyped"), Some("invalid"))]);
    assert_eq!(dlq[0].payload, br#"{"total":"three"}"#, "the original event is kept");
    assert_eq!(header(&dlq[0], "event-type"), Some("order"), "with its headers");
    assert_eq!(
        header(&dlq[0], "sluice-dlq-message"),
        Some(r#"the event does not match the schema for order@1: /: "id" is a required property; /total: value is not of type "number""#)
    );
    assert_eq!(header(&dlq[0], "sluice-dlq-attempts"), Some("0"));
    let garbage = header(&dlq[1], "sluice-dlq-message").unwrap_or_default();
    assert!(garbage.starts_with("the event does not match the schema for order@1: the payload is not JSON: "), "{garbage}");
    assert_eq!(header(&dlq[2], "sluice-dlq-message"), Some("the event has no `event-type` header, and schemas.missing is \"reject\""));
    let s = stats.snapshot();
    assert_eq!((s.invalid_inputs, s.dead_lettered, s.acked, s.calls), (3, 3, 4, 1));
    assert_eq!(settlements(&log).iter().filter(|(_, s)| *s == Settlement::DeadLettered).count(), 3);
    Ok(())
}

#[tokio::test]
async fn an_invalid_output_rejects_its_event_saying_which_output_and_why() -> anyhow::Result<()> {
    // The plugin sends two outputs: the event as it is (typed by its input)
    // and an `audit` of its own type with whatever `audit` field it got.
    let mut h = harness(
        |e, _| {
            let audit = Output {
                destination: None,
                key: None,
                payload: e.payload.clone(),
                headers: vec![text_header("event-type", "audit")],
                reply: false,
            };
            Ok(echo(e).map(|mut outputs| {
                outputs.push(audit);
                outputs
            }))
        },
        SinkMode::Ok,
    );
    let audit = SchemaEntry {
        event_type: "audit".into(),
        version: None,
        path: PathBuf::from("audit.json"),
        document: Arc::new(json!({"type": "object", "required": ["by"]})),
    };
    let config = SchemasConfig { output: vec![entry("1", order_schema()), audit], ..SchemasConfig::default() };
    h.dispatcher.schemas = Arc::new(Gate::new(Some(&config)).map_err(anyhow::Error::msg)?);
    let stats = h.dispatcher.stats.clone();
    let log = Settlements::default();
    let events = vec![
        (typed("good", r#"{"id":"o1","total":3,"by":"x"}"#, "1"), 0),
        (typed("no-by", r#"{"id":"o2","total":3}"#, "1"), 0),
        (typed("bad-total", r#"{"id":"o3","total":"3","by":"x"}"#, "1"), 0),
        (typed("both", r#"{"id":"o4","total":"3"}"#, "1"), 0),
    ];
    h.dispatcher.run(source(events, &log, false), CancellationToken::new()).await?;

    assert_eq!(called(&h.calls), ["good", "no-by", "bad-total", "both"], "inputs are not validated: no input schemas");
    assert_eq!(h.out.payloads().len(), 2, "both outputs of the good event, none of the others");
    let dlq = dlq_records(&h.dlq);
    let messages: Vec<_> = dlq.iter().map(|r| (header(r, "sluice-dlq-reason"), header(r, "sluice-dlq-message"))).collect();
    assert_eq!(
        messages,
        [
            (
                Some("rejected"),
                Some(r#"output 2 of 2: the output does not match the schema for audit (no version): /: "by" is a required property"#)
            ),
            (
                Some("rejected"),
                Some(r#"output 1 of 2: the output does not match the schema for order@1: /total: value is not of type "number""#)
            ),
            (
                Some("rejected"),
                Some(
                    r#"output 1 of 2: the output does not match the schema for order@1: /total: value is not of type "number" (and 1 more outputs fail)"#
                )
            ),
        ]
    );
    assert_eq!(header(&dlq[0], "sluice-dlq-attempts"), Some("1"));
    let s = stats.snapshot();
    assert_eq!((s.invalid_outputs, s.dead_lettered, s.outputs), (4, 3, 2), "every failing output is counted");
    assert_eq!(stats.errors.get(super::super::stats::ErrorKind::Rejected), 3, "each rejected event once");
    Ok(())
}

/// A scripted plugin that declares what it accepts.
struct Declaring {
    inner: Scripted,
    accepts: Accepts,
}

#[async_trait::async_trait]
impl HandlerFactory for Declaring {
    async fn create(&self) -> Result<Box<dyn Handler>, crate::runtime::LoadError> {
        self.inner.create().await
    }
    fn name(&self) -> &str {
        "declaring"
    }
    fn digest(&self) -> &str {
        "decl"
    }
    fn accepts(&self) -> Option<&Accepts> {
        Some(&self.accepts)
    }
}

#[tokio::test]
async fn versions_the_plugin_does_not_accept_are_dead_lettered_as_unsupported() -> anyhow::Result<()> {
    let mut h = harness(|e, _| Ok(echo(e)), SinkMode::Ok);
    let calls = h.calls.clone();
    let script: Arc<Script> = Arc::new(|e, _| Ok(echo(e)));
    let accepts = Accepts::parse(&["order@2".to_owned()]).map_err(anyhow::Error::msg)?;
    h.dispatcher.plugin = Arc::new(PluginSlot::new(Arc::new(Declaring { inner: Scripted { script, calls }, accepts })));
    let stats = h.dispatcher.stats.clone();
    let log = Settlements::default();
    let events = vec![(typed("v1", "{}", "1"), 0), (typed("v2", "{}", "2"), 0), (event("untyped", "{}"), 0)];
    h.dispatcher.run(source(events, &log, false), CancellationToken::new()).await?;

    assert_eq!(called(&h.calls), ["v2"]);
    let dlq = dlq_records(&h.dlq);
    let reasons: Vec<_> = dlq.iter().map(|r| (header(r, "sluice-dlq-event-id"), header(r, "sluice-dlq-reason"))).collect();
    assert_eq!(reasons, [(Some("v1"), Some("unsupported")), (Some("untyped"), Some("unsupported"))]);
    assert_eq!(header(&dlq[0], "sluice-dlq-message"), Some("the plugin does not accept event type order@1; it accepts: order@2"));
    assert_eq!(header(&dlq[0], "sluice-dlq-plugin"), Some("declaring"));
    assert_eq!(stats.snapshot().unsupported, 2);
    Ok(())
}

#[tokio::test]
async fn the_accept_list_is_the_current_versions() -> anyhow::Result<()> {
    // Version 1 accepts order@1 only; the slot is swapped to version 2,
    // which accepts order@2 only, before the events arrive.
    let mut h = harness(|e, _| Ok(echo(e)), SinkMode::Ok);
    let calls = h.calls.clone();
    let script: Arc<Script> = Arc::new(|e, _| Ok(echo(e)));
    let v1 = Accepts::parse(&["order@1".to_owned()]).map_err(anyhow::Error::msg)?;
    let v2 = Accepts::parse(&["order@2".to_owned()]).map_err(anyhow::Error::msg)?;
    let slot =
        Arc::new(PluginSlot::new(Arc::new(Declaring { inner: Scripted { script: script.clone(), calls: calls.clone() }, accepts: v1 })));
    slot.swap(Arc::new(Declaring { inner: Scripted { script, calls }, accepts: v2 }));
    h.dispatcher.plugin = slot;
    let log = Settlements::default();
    let events = vec![(typed("v1", "{}", "1"), 0), (typed("v2", "{}", "2"), 0)];
    h.dispatcher.run(source(events, &log, false), CancellationToken::new()).await?;
    assert_eq!(called(&h.calls), ["v2"]);
    let dlq = dlq_records(&h.dlq);
    assert_eq!(dlq.iter().map(|r| header(r, "sluice-dlq-event-id")).collect::<Vec<_>>(), [Some("v1")]);
    Ok(())
}

//! Property tests (proptest) on the boundaries where outside data enters:
//! JSON-lines decoding, NATS and Kafka header mapping, and the host/guest
//! boundary (events through a real component and back).
//!
//! CI runs a bounded number of cases; run longer with
//! `PROPTEST_CASES=100000 cargo test -p sluice --test properties --release`.
//! A failing case is shrunk and printed; proptest stores its seed in
//! `host/tests/properties.proptest-regressions` so it is re-run first.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use proptest::prelude::*;
use rdkafka::message::{Header as KafkaHeader, OwnedHeaders, OwnedMessage, Timestamp};
use sluice::codec::{decode_event, encode_record};
use sluice::config::WasiGrants;
use sluice::event::{Event, Header};
use sluice::runtime::{LoadedPlugin, PluginSpec, Runtime, RuntimeOptions};
use sluice::sink::Record;

/// `PROPTEST_CASES` when set, otherwise `default`.
fn config(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(default);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

fn headers() -> impl Strategy<Value = Vec<Header>> {
    prop::collection::vec((".{0,12}", bytes(24)).prop_map(|(key, value)| Header { key, value }), 0..6)
}

fn events() -> impl Strategy<Value = Vec<Event>> {
    let event = (".{0,20}", prop::option::of(bytes(16)), bytes(2048), headers(), any::<u64>(), 1..5u32, prop::option::of(".{0,10}"))
        .prop_map(|(id, key, payload, headers, timestamp_ms, attempt, reply_to)| Event {
            id,
            source: "prop".into(),
            key,
            payload,
            headers,
            timestamp_ms,
            attempt,
            reply_to,
        });
    prop::collection::vec(event, 1..12)
}

proptest! {
    #![proptest_config(config(512))]

    /// Any bytes at all: decoding answers, never panics.
    #[test]
    fn decoding_any_line_never_panics(line in bytes(256)) {
        let _ = decode_event(&line, "fuzz", "fuzz:1".into(), 0);
    }

    /// Any JSON value in any field: decoding answers, never panics.
    #[test]
    fn decoding_odd_json_never_panics(field in "(id|key|key_base64|payload|payload_base64|headers|timestamp|reply_to|nope)", value in ".{0,40}") {
        for candidate in [format!("{{\"{field}\": {value}}}"), format!("{{\"{field}\": \"{value}\"}}"), format!("{{\"headers\": [[\"{field}\", {value}]]}}")] {
            let _ = decode_event(candidate.as_bytes(), "fuzz", "fuzz:1".into(), 0);
        }
    }

    /// What a file sink writes, a file source reads back the same: key,
    /// payload and headers (repeated names, binary values, any UTF-8).
    #[test]
    fn an_encoded_record_decodes_to_the_same_event(key in prop::option::of(bytes(32)), payload in bytes(512), headers in headers()) {
        let record = Record { destination: None, key: key.clone(), payload: payload.clone(), headers: headers.clone(), version: None, id: None, partition: None };
        let line = encode_record(&record);
        let event = decode_event(&line[..line.len() - 1], "prop", "prop:1".into(), 7);
        prop_assert!(event.is_ok(), "{:?} from {}", event.err(), String::from_utf8_lossy(&line));
        let event = event.map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(event.key, key);
        prop_assert_eq!(event.payload, payload);
        prop_assert_eq!(event.headers, headers);
    }

    /// Headers NATS accepts map to NATS and back unchanged (key included);
    /// the rest are refused with a reason, never a panic.
    #[test]
    fn nats_headers_round_trip_or_are_refused(headers in headers(), key in prop::option::of(bytes(16))) {
        match sluice::nats::check_headers(&headers, key.as_deref()) {
            Ok(()) => {
                let map = sluice::nats::nats_headers(&headers, key.as_deref());
                prop_assert!(map.is_ok(), "checked but not mappable: {:?}", map.err());
                let map = map.map_err(|e| TestCaseError::fail(e.to_string()))?;
                let (back, back_key) = sluice::nats::event_headers(Some(&map));
                prop_assert_eq!(back_key, key);
                let mut want = headers.clone();
                let mut got = back.clone();
                want.sort_by(|a, b| a.key.cmp(&b.key));
                got.sort_by(|a, b| a.key.cmp(&b.key));
                prop_assert_eq!(got, want);
            }
            Err(why) => prop_assert!(!why.to_string().is_empty()),
        }
    }

    /// A Kafka message becomes an event with its bytes untouched, and a
    /// reply topic header makes it a request. (Header names are C strings
    /// in librdkafka: no NUL; the Kafka sink refuses one, see below.)
    #[test]
    fn kafka_messages_map_to_events(key in prop::option::of(bytes(16)), payload in prop::option::of(bytes(256)), headers in headers().prop_filter("NUL in a header name", |hs| hs.iter().all(|h| !h.key.contains('\0'))), offset in 0..i64::MAX, partition in 0..1000i32) {
        let mut kafka = OwnedHeaders::new();
        for h in &headers {
            kafka = kafka.insert(KafkaHeader { key: &h.key, value: Some(&h.value) });
        }
        let message = OwnedMessage::new(payload.clone(), key.clone(), "topic".into(), Timestamp::CreateTime(5), partition, offset, Some(kafka));
        let event = sluice::kafka::message_event(&message);
        prop_assert_eq!(event.id, format!("topic/{partition}/{offset}"));
        prop_assert_eq!(event.key, key);
        prop_assert_eq!(event.payload, payload.unwrap_or_default());
        prop_assert_eq!(event.timestamp_ms, 5);
        let reply = headers.iter().find(|h| h.key == "kafka_replyTopic").and_then(|h| String::from_utf8(h.value.clone()).ok()).filter(|t| !t.is_empty());
        prop_assert_eq!(event.reply_to, reply);
        prop_assert_eq!(event.headers, headers);
    }
}

/// Runs a plugin call to completion on a small runtime of this thread's
/// (proptest cases are synchronous).
fn block_on<F: std::future::Future>(future: F) -> Result<F::Output, String> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_time().build().map_err(|e| format!("cannot start a tokio runtime: {e}"))?;
    Ok(runtime.block_on(future))
}

/// The passthrough component, loaded once (a setup failure, such as the
/// plugins not being built, fails every case with the reason).
fn passthrough() -> Result<&'static LoadedPlugin, String> {
    static PLUGIN: OnceLock<Result<LoadedPlugin, String>> = OnceLock::new();
    PLUGIN
        .get_or_init(|| {
            let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plugins/target/wasm32-wasip2/release/passthrough.wasm");
            let spec = PluginSpec {
                pipeline: "properties".into(),
                path,
                sha256: None,
                config: Vec::new(),
                wasi: WasiGrants::default(),
                timeout: Duration::from_secs(5),
                init_timeout: Duration::from_secs(10),
                memory: 64 << 20,
                instance: sluice::config::InstancePolicy::Reuse,
                grants: Vec::new(),
                metrics: Default::default(),
                http: None,
                http_stubs: None,
            };
            let runtime = Runtime::new(&RuntimeOptions::default()).map_err(|e| e.to_string())?;
            block_on(LoadedPlugin::load(&runtime, spec))?.map_err(|e| format!("{e} (build the plugins: bash scripts/build-plugins.sh)"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

proptest! {
    #![proptest_config(config(96))]

    /// The host/guest boundary: any batch of events (binary payloads and
    /// keys, repeated and odd headers, long ids) goes into a real component
    /// and comes back byte for byte.
    #[test]
    fn events_cross_the_component_boundary_unchanged(batch in events()) {
        let plugin = passthrough().map_err(TestCaseError::fail)?;
        let results = block_on(async {
            let mut instance = plugin.instantiate().await.map_err(|e| TestCaseError::fail(e.to_string()))?;
            instance.handle(&batch).await.map_err(|e| TestCaseError::fail(e.to_string()))
        }).map_err(TestCaseError::fail)??;
        prop_assert_eq!(results.len(), batch.len());
        for (event, result) in batch.iter().zip(results) {
            let outputs = result.map_err(|e| TestCaseError::fail(e.message))?;
            prop_assert_eq!(outputs.len(), 1);
            let output = &outputs[0];
            prop_assert_eq!(&output.payload, &event.payload);
            prop_assert_eq!(&output.key, &event.key);
            prop_assert_eq!(&output.headers, &event.headers);
        }
    }
}

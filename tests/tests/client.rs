//! Service calls (`sluice:plugin/client`) against the real binary: the
//! `ask` plugin asks a service the test runs (a NATS responder, a Kafka
//! responder) about each event of a file and outputs its answer; errors,
//! timeouts and the absence of responders arrive typed and end in the dead
//! letter with the calls listed; emits are published only for events that
//! succeed, once.

#[allow(dead_code)]
mod common;
#[path = "common/kafka.rs"]
#[allow(dead_code)]
mod kafka_fixture;
#[path = "common/nats.rs"]
#[allow(dead_code)]
mod nats_fixture;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use futures::StreamExt;
use serde_json::Value;

use common::*;

/// `events.jsonl` → `ask` → `out.jsonl`, failures to `dlq.jsonl`, with a
/// correlation id per event, two attempts 1–2 ms apart; `tables` holds the
/// `clients` tables.
fn ask_pipeline(plugin_config: &str, tables: &str) -> String {
    let base = one_pipeline("ask", "ask", plugin_config, "max_attempts = 2\nbackoff = { initial = \"1ms\", max = \"2ms\" }");
    format!("{base}\n[pipelines.ask.correlation]\n\n{tables}")
}

fn nats_client(name: &str, url: &str, subject: &str, extra: &str) -> String {
    format!("[pipelines.ask.clients.{name}]\ntransport = \"nats\"\nurl = \"{url}\"\nsubject = \"{subject}\"\n{extra}\n")
}

/// What the responder saw: payload and headers of each request.
type Seen = Arc<Mutex<Vec<(String, async_nats::HeaderMap)>>>;

/// Answers requests on `subject`: `fail…` with a NATS service error,
/// `slow…` after 2 s, anything else with `reserved:<payload>`.
async fn responder(client: async_nats::Client, subject: &str) -> Result<Seen> {
    let mut requests = client.subscribe(subject.to_owned()).await?;
    client.flush().await?;
    let seen: Seen = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            let payload = String::from_utf8_lossy(&request.payload).into_owned();
            if let Ok(mut log) = log.lock() {
                log.push((payload.clone(), request.headers.clone().unwrap_or_default()));
            }
            let Some(reply) = request.reply else { continue };
            let client = client.clone();
            tokio::spawn(async move {
                if payload.starts_with("fail") {
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert("Nats-Service-Error", "out of stock");
                    headers.insert("Nats-Service-Error-Code", "409");
                    let _ = client.publish_with_headers(reply, headers, "".into()).await;
                } else {
                    if payload.starts_with("slow") {
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                    let _ = client.publish(reply, format!("reserved:{payload}").into()).await;
                }
                let _ = client.flush().await;
            });
        }
    });
    Ok(seen)
}

async fn run(scratch: &Scratch) -> Result<Finished> {
    let dir = scratch.dir().to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut command = std::process::Command::new(sluice_bin());
        command.args(["run", "sluice.toml"]).current_dir(dir);
        Running::spawn(command)?.wait(RUN_TIMEOUT)
    })
    .await?
}

/// Everything published to `subject` that `subscription` gets, sorted: a
/// sentinel published now arrives after all of it (sluice has exited, so
/// whatever it published reached the server first).
async fn emitted_before_sentinel(
    client: &async_nats::Client,
    subject: &str,
    subscription: &mut async_nats::Subscriber,
) -> Result<Vec<String>> {
    client.publish(subject.to_owned(), "end".into()).await?;
    client.flush().await?;
    let mut emitted = Vec::new();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(30), subscription.next()).await?.context("subscription ended")?;
        let payload = String::from_utf8_lossy(&message.payload).into_owned();
        if payload == "end" {
            break;
        }
        emitted.push(payload);
    }
    emitted.sort();
    Ok(emitted)
}

/// The idempotency keys of the requests with `payload` the responder saw.
fn keys_seen(seen: &Seen, payload: &str) -> Vec<String> {
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    seen.iter().filter(|(p, _)| p == payload).map(|(_, h)| h.get("Idempotency-Key").map(|v| v.to_string()).unwrap_or_default()).collect()
}

fn by_payload<'a>(records: &'a [Value], payload: &str) -> Result<&'a Value> {
    records
        .iter()
        .find(|r| r["payload"].as_str() == Some(payload))
        .with_context(|| format!("no record with payload {payload:?} in {records:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_service_errors_and_timeouts_arrive_typed() -> Result<()> {
    let server = nats_fixture::NatsServer::start()?;
    let url = server.url();
    let seen = responder(server.client().await?, "inventory.reserve").await?;
    let scratch = Scratch::new()?;
    scratch.write_events("events.jsonl", &[event("sku-1"), event("fail-sku"), event("slow-sku")])?;
    let config = ask_pipeline("request = \"inventory\"", &nats_client("inventory", &url, "inventory.reserve", "timeout = \"300ms\""));
    scratch.write("sluice.toml", config)?;
    run(&scratch).await?.ensure_success()?;

    let out = scratch.read_jsonl("out.jsonl")?;
    assert_eq!(payloads(&out), ["reserved:sku-1"], "the plugin's output is the service's answer");
    let dlq = scratch.read_jsonl("dlq.jsonl")?;
    let failed = by_payload(&dlq, "fail-sku")?;
    assert_eq!(header(failed, "sluice-dlq-reason"), Some("rejected"), "a service error is not retried");
    let message = header(failed, "sluice-dlq-message").unwrap_or_default();
    assert!(message.contains("error 409: out of stock"), "the service's error, typed: {message}");
    let calls: Value = serde_json::from_str(header(failed, "sluice-dlq-calls").context("the calls are listed")?)?;
    assert_eq!(calls[0]["kind"], "request");
    assert_eq!(calls[0]["target"], "inventory");
    assert_eq!(calls[0]["path"], "inventory.reserve");
    let slow = by_payload(&dlq, "slow-sku")?;
    let message = header(slow, "sluice-dlq-message").unwrap_or_default();
    assert!(message.contains("no answer within 300 ms"), "a timeout, not a service error: {message}");
    let calls: Value = serde_json::from_str(header(slow, "sluice-dlq-calls").context("the calls are listed")?)?;
    assert_eq!(calls.as_array().map(Vec::len), Some(2), "one request per attempt: {calls}");

    // The request carried the event's identity.
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    let (_, headers) = seen.iter().find(|(p, _)| p == "sku-1").context("the responder saw sku-1")?;
    let key = headers.get("Idempotency-Key").map(|v| v.to_string()).unwrap_or_default();
    assert!(key.ends_with(":0"), "an idempotency key <event id>:0, got {key:?}");
    assert!(headers.get("x-correlation-id").is_some(), "the correlation id goes with the request");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_listening_is_no_responders() -> Result<()> {
    let server = nats_fixture::NatsServer::start()?;
    let scratch = Scratch::new()?;
    scratch.write_events("events.jsonl", &[event("sku-1")])?;
    scratch.write("sluice.toml", ask_pipeline("request = \"inventory\"", &nats_client("inventory", &server.url(), "nobody.here", "")))?;
    run(&scratch).await?.ensure_success()?;
    let dlq = scratch.read_jsonl("dlq.jsonl")?;
    let message = header(by_payload(&dlq, "sku-1")?, "sluice-dlq-message").unwrap_or_default();
    assert!(message.contains("nobody listens"), "no responders, at once: {message}");
    assert!(scratch.read_jsonl("out.jsonl")?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emits_are_published_once_and_only_for_events_that_succeed() -> Result<()> {
    let server = nats_fixture::NatsServer::start()?;
    let url = server.url();
    let client = server.client().await?;
    let seen = responder(client.clone(), "inventory.reserve").await?;
    let mut audit = client.subscribe("audit.events").await?;
    client.flush().await?;
    let scratch = Scratch::new()?;
    scratch.write_events("events.jsonl", &[event("ok-1"), event("again:retry-once"), event("bad:reject"), event("ok-2")])?;
    let tables = format!(
        "{}{}",
        nats_client("inventory", &url, "inventory.reserve", ""),
        nats_client("audit", &url, "audit.events", "allow = [\"emit\"]")
    );
    scratch.write("sluice.toml", ask_pipeline("request = \"inventory\"\nemit = \"audit\"", &tables))?;
    run(&scratch).await?.ensure_success()?;

    let emitted = emitted_before_sentinel(&client, "audit.events", &mut audit).await?;
    assert_eq!(emitted, ["again:retry-once", "ok-1", "ok-2"], "one emit per successful event, none for the rejected one");
    assert_eq!(payloads(&scratch.read_jsonl("out.jsonl")?).len(), 3);

    // The retried event asked twice, with the same idempotency key.
    let keys = keys_seen(&seen, "again:retry-once");
    ensure!(keys.len() == 2, "two attempts, two requests: {keys:?}");
    assert_eq!(keys[0], keys[1], "the same key on the retry");
    assert!(!keys[0].is_empty());
    Ok(())
}

#[test]
fn a_plugin_that_calls_services_is_refused_without_clients() -> Result<()> {
    let scratch = Scratch::new()?;
    scratch.write_events("events.jsonl", &[event("sku-1")])?;
    scratch.write("sluice.toml", one_pipeline("ask", "ask", "request = \"inventory\"", ""))?;
    let finished = scratch.run(&["run", "sluice.toml"])?;
    finished.ensure_failure()?;
    ensure!(finished.stderr.contains("client"), "the refusal names the capability: {}", finished.stderr);
    ensure!(finished.stderr.contains("clients."), "and says how to grant it: {}", finished.stderr);
    Ok(())
}

#[test]
fn a_client_table_with_keys_of_the_other_transport_is_refused() -> Result<()> {
    let scratch = Scratch::new()?;
    scratch.write_events("events.jsonl", &[event("sku-1")])?;
    let tables = "[pipelines.ask.clients.inventory]\ntransport = \"nats\"\nsubject = \"a\"\nreply_topic = \"r\"\n";
    scratch.write("sluice.toml", ask_pipeline("request = \"inventory\"", tables))?;
    let finished = scratch.run(&["check", "sluice.toml"])?;
    finished.ensure_failure()?;
    // `check` lists each violation on stdout beside the pipelines that load.
    let said = format!("{}{}", finished.stdout, finished.stderr);
    ensure!(said.contains("clients.inventory.reply_topic"), "names the key: {said}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_request_and_reply() -> Result<()> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::{Header as KafkaHeader, Headers, Message, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::ClientConfig;

    let broker = kafka_fixture::KafkaBroker::shared()?;
    let bootstrap = broker.bootstrap();
    let suffix = std::process::id();
    let (requests, replies) = (format!("client-req-{suffix}"), format!("client-rep-{suffix}"));
    kafka_fixture::create_topics(&bootstrap, &[(&requests, 1), (&replies, 2)]).await?;

    // The responder: answers each request on its reply topic and partition
    // with the same correlation id, `fail…` as a NestJS error.
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", format!("responder-{suffix}"))
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[&requests])?;
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", &bootstrap).create()?;
    tokio::spawn(async move {
        while let Ok(message) = consumer.recv().await {
            let value = |name: &str| {
                message
                    .headers()
                    .and_then(|h| h.iter().find(|x| x.key == name).and_then(|x| x.value.map(|v| String::from_utf8_lossy(v).into_owned())))
            };
            let (Some(id), Some(topic), Some(partition)) =
                (value("kafka_correlationId"), value("kafka_replyTopic"), value("kafka_replyPartition"))
            else {
                continue;
            };
            let payload = String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned();
            let mut headers = OwnedHeaders::new().insert(KafkaHeader { key: "kafka_correlationId", value: Some(id.as_bytes()) });
            let body = if payload.starts_with("fail") {
                headers = headers.insert(KafkaHeader {
                    key: "kafka_nest-err",
                    value: Some(br#"{"status":"error","message":"no such sku"}"#.as_slice()),
                });
                String::new()
            } else {
                format!("reserved:{payload}")
            };
            headers = headers.insert(KafkaHeader { key: "kafka_nest-is-disposed", value: Some(b"\0".as_slice()) });
            let record = FutureRecord::<(), _>::to(&topic).partition(partition.parse().unwrap_or(0)).payload(&body).headers(headers);
            let _ = producer.send(record, Duration::from_secs(5)).await;
        }
    });

    let scratch = Scratch::new()?;
    scratch.write_events("events.jsonl", &[event("sku-1"), event("fail-sku")])?;
    let tables = format!(
        "[pipelines.ask.clients.inventory]\ntransport = \"kafka\"\nbrokers = \"{bootstrap}\"\ntopic = \"{requests}\"\nreply_topic = \"{replies}\"\ntimeout = \"20s\"\n"
    );
    scratch.write("sluice.toml", ask_pipeline("request = \"inventory\"", &tables))?;
    run(&scratch).await?.ensure_success()?;
    assert_eq!(payloads(&scratch.read_jsonl("out.jsonl")?), ["reserved:sku-1"]);
    let dlq = scratch.read_jsonl("dlq.jsonl")?;
    let message = header(by_payload(&dlq, "fail-sku")?, "sluice-dlq-message").unwrap_or_default();
    assert!(message.contains("no such sku"), "the NestJS error, typed: {message}");
    Ok(())
}

/// A real NestJS microservice (`tests/nestjs/service.mjs`, NATS transport)
/// answers `send("reserve", …)` from the plugin and receives its emits as
/// NestJS events; its `RpcException` arrives as a typed service error.
/// Needs `scripts/nestjs-client.sh install`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nestjs_microservice_answers_the_plugin() -> Result<()> {
    let server = nats_fixture::NatsServer::start()?;
    let url = server.url();
    let service_dir = root().join(".cache/nestjs-client");
    ensure!(
        service_dir.join("node_modules/.complete").is_file() && service_dir.join("service.mjs").is_file(),
        "the NestJS packages are not installed at {}: run `bash scripts/nestjs-client.sh install`",
        service_dir.display()
    );
    let scratch = Scratch::new()?;
    let received = scratch.path("received.jsonl");
    let mut node = std::process::Command::new("node");
    node.arg("service.mjs").arg(&url).arg(&received).current_dir(&service_dir);
    let mut service = Running::spawn(node)?;
    service.wait_until("the NestJS service to subscribe", Duration::from_secs(60), || {
        server.subscribers("reserve").unwrap_or(0) == 1 && server.subscribers("audit").unwrap_or(0) == 1
    })?;

    scratch.write_events("events.jsonl", &[event(r#"{"sku":"a"}"#), event(r#"{"sku":"none"}"#), event(r#"{"sku":"b"}"#)])?;
    let tables = format!(
        "{}{}",
        nats_client("inventory", &url, "reserve", "codec = \"nestjs\"\npattern = \"reserve\"").replace("subject = \"reserve\"\n", ""),
        nats_client("audit", &url, "audit", "codec = \"nestjs\"\npattern = \"audit\"\nallow = [\"emit\"]")
            .replace("subject = \"audit\"\n", "")
    );
    scratch.write("sluice.toml", ask_pipeline("request = \"inventory\"\nemit = \"audit\"", &tables))?;
    run(&scratch).await?.ensure_success()?;

    assert_eq!(payloads(&scratch.read_jsonl("out.jsonl")?), [r#"{"reserved":"a"}"#, r#"{"reserved":"b"}"#], "the services' `response`s");
    let dlq = scratch.read_jsonl("dlq.jsonl")?;
    let message = header(by_payload(&dlq, r#"{"sku":"none"}"#)?, "sluice-dlq-message").unwrap_or_default();
    assert!(message.contains("out of stock"), "the RpcException, typed: {message}");
    // `b`'s event arrives after `none`'s would have: then nothing else comes.
    let events = poll_until("the service to receive b's event", Duration::from_secs(30), || {
        let lines = read_jsonl(&received)?;
        Ok(lines.iter().any(|l| l["sku"] == "b").then_some(lines))
    })?;
    assert_eq!(events, [serde_json::json!({"sku": "a"}), serde_json::json!({"sku": "b"})], "emits of the successful events only");
    service.terminate()?;
    Ok(())
}

/// The TypeScript, Python, C and Go twins of `ask` (built by
/// `scripts/build-lang-plugins.sh`) make the same calls with the same
/// results: the answer as output, a service error typed and rejected, one
/// emit per successful event, the same idempotency key on a retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typescript_python_c_and_go_sdks_call_services_as_rust_does() -> Result<()> {
    let server = nats_fixture::NatsServer::start()?;
    let url = server.url();
    let client = server.client().await?;
    for lang in ["ask_ts", "ask_py", "ask_c", "ask_go"] {
        let subject = format!("{lang}.reserve");
        let audit_subject = format!("{lang}.audit");
        let seen = responder(client.clone(), &subject).await?;
        let mut audit = client.subscribe(audit_subject.clone()).await?;
        client.flush().await?;
        let plugin = root().join("plugins/target/components").join(format!("{lang}.wasm"));
        ensure!(plugin.is_file(), "{} is missing: run `bash scripts/build-lang-plugins.sh` first", plugin.display());
        let scratch = Scratch::new()?;
        scratch.write_events("events.jsonl", &[event("sku-1"), event("fail-sku"), event("again:retry-once")])?;
        let tables =
            format!("{}{}", nats_client("inventory", &url, &subject, ""), nats_client("audit", &url, &audit_subject, "allow = [\"emit\"]"));
        let config = ask_pipeline("request = \"inventory\"\nemit = \"audit\"", &tables)
            .replace(&toml_path(&common::plugin("ask")), &toml_path(&plugin));
        scratch.write("sluice.toml", config)?;
        run(&scratch).await?.ensure_success().with_context(|| format!("{lang} ran"))?;

        let out = scratch.read_jsonl("out.jsonl")?;
        assert_eq!(payloads(&out), ["reserved:sku-1", "reserved:again:retry-once"], "{lang}: the answers are the outputs");
        let dlq = scratch.read_jsonl("dlq.jsonl")?;
        let failed = by_payload(&dlq, "fail-sku")?;
        assert_eq!(header(failed, "sluice-dlq-reason"), Some("rejected"), "{lang}: a service error is not retried");
        let message = header(failed, "sluice-dlq-message").unwrap_or_default();
        assert!(message.contains("error 409: out of stock"), "{lang}: the service's error, typed: {message}");

        let emitted = emitted_before_sentinel(&client, &audit_subject, &mut audit).await?;
        assert_eq!(emitted, ["again:retry-once", "sku-1"], "{lang}: one emit per successful event");

        let keys = keys_seen(&seen, "again:retry-once");
        ensure!(keys.len() == 2 && keys[0] == keys[1] && !keys[0].is_empty(), "{lang}: one key on both attempts: {keys:?}");
    }
    Ok(())
}

/// `sluice plugin test --replies` answers a plugin's service calls from
/// rules in a file, offline: the answer, a service error, the emits (shown
/// as `emit`) and the calls made, per event; a request no rule matches is
/// `not-allowed`, which the Rust and TypeScript SDKs both reject, in the
/// same words.
#[test]
fn plugin_test_answers_service_calls_from_a_replies_file() -> Result<()> {
    let twin = root().join("plugins/target/components/ask_ts.wasm");
    ensure!(twin.is_file(), "{} is missing: run `bash scripts/build-lang-plugins.sh ts` first", twin.display());
    for (lang, plugin) in [("rust", common::plugin("ask")), ("typescript", twin)] {
        plugin_test_with_replies(lang, &plugin)?;
    }
    Ok(())
}

fn plugin_test_with_replies(lang: &str, plugin: &std::path::Path) -> Result<()> {
    let scratch = Scratch::new()?;
    scratch.write_events("events.jsonl", &[event("sku-1"), event("fail-sku"), event("unlisted")])?;
    scratch.write(
        "replies.json",
        r#"{"inventory": [{"when": "fail", "error": {"code": "409", "message": "out of stock"}}, {"when": "sku", "reply": "reserved"}], "audit": []}"#,
    )?;
    let output = std::process::Command::new(sluice_bin())
        .args(["plugin", "test"])
        .arg(plugin)
        .args(["--events", "events.jsonl", "--replies", "replies.json", "--config", "request=inventory", "--config", "emit=audit"])
        .arg("--cache-dir")
        .arg(compile_cache())
        .current_dir(scratch.dir())
        .output()?;
    let lines: Vec<Value> = String::from_utf8(output.stdout)?.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    ensure!(lines.len() == 3, "{lang}: one line per event: {lines:?}");
    assert_eq!(lines[2]["error"]["disposition"], "reject", "{lang}: an unlisted request: {}", lines[2]);
    assert_eq!(lines[2]["error"]["message"], "call not allowed: no rule in replies.json matches this request", "{lang}");
    assert_eq!(lines[0]["outputs"][0]["emit"], "audit");
    assert_eq!(lines[0]["outputs"][0]["payload"], "sku-1");
    assert_eq!(lines[0]["outputs"][1]["payload"], "reserved", "the stubbed answer is the output");
    assert_eq!(lines[0]["calls"][0]["target"], "inventory");
    assert!(lines[0]["calls"][0]["idempotency_key"].as_str().is_some_and(|k| k.ends_with(":0")));
    assert_eq!(lines[1]["error"]["disposition"], "reject");
    assert_eq!(lines[1]["error"]["message"], "the service answered with error 409: out of stock");
    assert_eq!(lines[1]["calls"][0]["error"], "service error 409: out of stock");
    Ok(())
}

/// Under exactly-once Kafka, emits to a destination on the source's
/// cluster are written in the pipeline's transaction: a read_committed
/// reader sees one emit per successful event, none for the rejected one,
/// and one for an event that failed once after emitting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_emits_commit_with_the_outputs() -> Result<()> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::ClientConfig;

    let broker = kafka_fixture::KafkaBroker::shared()?;
    let bootstrap = broker.bootstrap();
    let suffix = format!("{}-{}", std::process::id(), std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis());
    let [input, output, dlq, audit] = ["in", "out", "dlq", "audit"].map(|t| format!("client-eos-{t}-{suffix}"));
    kafka_fixture::create_topics(&bootstrap, &[(&input, 1), (&output, 1), (&dlq, 1), (&audit, 1)]).await?;
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", &bootstrap).create()?;
    for payload in ["ok-1", "again:retry-once", "bad:reject", "ok-2"] {
        producer
            .send(FutureRecord::<(), _>::to(&input).partition(0).payload(payload), Duration::from_secs(10))
            .await
            .map_err(|(e, _)| anyhow::anyhow!("producing: {e}"))?;
    }
    let scratch = Scratch::new()?;
    let config = format!(
        r#"{runtime}
[pipelines.eos]
source = {{ kind = "kafka", brokers = "{bootstrap}", group = "g-{suffix}", topics = ["{input}"], start = "earliest", exactly_once = true, commit_interval = "200ms" }}
sink = {{ kind = "kafka", brokers = "{bootstrap}", topic = "{output}" }}
dead_letter = {{ kind = "kafka", brokers = "{bootstrap}", topic = "{dlq}" }}
[pipelines.eos.plugin]
path = {plugin}
config = {{ emit = "audit" }}
[pipelines.eos.policy]
max_attempts = 2
backoff = {{ initial = "1ms", max = "2ms" }}
[pipelines.eos.clients.audit]
transport = "kafka"
brokers = "{bootstrap}"
topic = "{audit}"
allow = ["emit"]
"#,
        runtime = runtime_table(),
        plugin = toml_path(&plugin("ask")),
    );
    let host = start(&scratch, &config, "sluice.toml")?;
    let wait_for = |topic: &str, n: usize| {
        poll_until(&format!("{n} committed records in {topic}"), Duration::from_secs(90), || {
            let got = kafka_fixture::committed_payloads(&bootstrap, topic)?;
            Ok((got.len() >= n).then_some(got))
        })
    };
    let outputs = tokio::task::block_in_place(|| wait_for(&output, 3))?;
    let dead = tokio::task::block_in_place(|| wait_for(&dlq, 1))?;
    host.terminate()?;
    host.wait(RUN_TIMEOUT)?.ensure_success()?;
    let mut emitted = kafka_fixture::committed_payloads(&bootstrap, &audit)?;
    emitted.sort();
    assert_eq!(outputs.len(), 3);
    assert_eq!(dead, ["bad:reject"]);
    assert_eq!(emitted, ["again:retry-once", "ok-1", "ok-2"], "one committed emit per successful event");
    Ok(())
}

//! NATS and JetStream end to end: the real `sluice` binary against a real
//! `nats-server` (one per test), driven and checked by a plain async-nats
//! client written here, never through sluice's own code.

#[allow(dead_code)]
mod common;
#[path = "common/nats.rs"]
mod fixture;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use futures::StreamExt;

use common::*;
use fixture::*;

const WITHIN: Duration = Duration::from_secs(60);

/// A pipeline config: `source` and `sink` are inline TOML tables.
fn pipeline(name: &str, plugin_name: &str, source: &str, sink: &str, dead_letter: &str, policy: &str) -> String {
    broker_pipeline(name, plugin_name, [source, sink, dead_letter], policy, "5s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_nats_subject_to_subject_keeps_every_event_in_order() -> Result<()> {
    let server = NatsServer::start()?;
    let scratch = Scratch::new()?;
    let url = server.url();
    let config = pipeline(
        "core",
        "uppercase",
        &format!(r#"{{ kind = "nats", url = "{url}", subject = "in.words" }}"#),
        &format!(r#"{{ kind = "nats", url = "{url}", subject = "out.words" }}"#),
        r#"{ kind = "file", path = "dlq.jsonl" }"#,
        "",
    );
    let client = server.client().await?;
    let mut outputs = client.subscribe("out.words").await?;
    client.flush().await?;
    let mut host = start(&scratch, &config, "sluice.toml")?;
    host.wait_until("sluice to subscribe", WITHIN, || server.subscribers("in.words").unwrap_or(0) == 1)?;

    let n = 2_000;
    for i in 0..n {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("trace", format!("t{i}").as_str());
        client.publish_with_headers("in.words", headers, format!("word {i}").into()).await?;
    }
    client.flush().await?;
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let message = tokio::time::timeout(WITHIN, outputs.next())
            .await
            .with_context(|| format!("{} of {n} outputs arrived", got.len()))?
            .context("subscription ended")?;
        got.push(String::from_utf8_lossy(&message.payload).into_owned());
    }
    let expected: Vec<String> = (0..n).map(|i| format!("WORD {i}")).collect();
    assert_eq!(got, expected, "every event, uppercased, in publish order");
    host.terminate()?;
    host.wait(WITHIN)?.ensure_success()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_group_of_two_hosts_splits_the_load_and_loses_nothing() -> Result<()> {
    let server = NatsServer::start()?;
    let scratch = Scratch::new()?;
    let url = server.url();
    let config = |host: &str| {
        pipeline(
            "shared",
            "passthrough",
            &format!(r#"{{ kind = "nats", url = "{url}", subject = "jobs", queue_group = "workers" }}"#),
            &format!(r#"{{ kind = "nats", url = "{url}", subject = "done.{host}" }}"#),
            r#"{ kind = "file", path = "dlq.jsonl" }"#,
            "",
        )
    };
    let client = server.client().await?;
    let mut done = client.subscribe("done.*").await?;
    client.flush().await?;
    let mut a = start(&scratch, &config("a"), "a.toml")?;
    let b = start(&scratch, &config("b"), "b.toml")?;
    a.wait_until("both hosts to join the queue group", WITHIN, || server.subscribers("jobs").unwrap_or(0) == 2)?;

    let n = 4_000;
    for i in 0..n {
        // Headers travel both ways: NATS headers → event → output → NATS.
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("job-id", i.to_string().as_str());
        headers.append("tag", "a");
        headers.append("tag", "b");
        client.publish_with_headers("jobs", headers, format!("job-{i}").into()).await?;
    }
    client.flush().await?;
    let mut by_host: HashMap<String, Vec<String>> = HashMap::new();
    let mut total = 0;
    while total < n {
        let message = tokio::time::timeout(WITHIN, done.next())
            .await
            .with_context(|| format!("{total} of {n} jobs done"))?
            .context("subscription ended")?;
        let headers = message.headers.as_ref().context("an output without the input's headers")?;
        let payload = String::from_utf8_lossy(&message.payload);
        assert_eq!(headers.get("job-id").map(|v| format!("job-{v}")).as_deref(), Some(payload.as_ref()));
        let tags: Vec<&str> = headers.get_all("tag").map(|v| v.as_str()).collect();
        assert_eq!(tags, ["a", "b"], "repeated header values kept in order");
        by_host.entry(message.subject.to_string()).or_default().push(String::from_utf8_lossy(&message.payload).into_owned());
        total += 1;
    }
    let all: HashSet<&String> = by_host.values().flatten().collect();
    assert_eq!(all.len(), n, "each job done exactly once");
    let (from_a, from_b) = (by_host.get("done.a").map_or(0, Vec::len), by_host.get("done.b").map_or(0, Vec::len));
    assert!(from_a > 0 && from_b > 0, "both hosts took a share: a={from_a} b={from_b}");
    a.terminate()?;
    b.terminate()?;
    a.wait(WITHIN)?.ensure_success()?;
    b.wait(WITHIN)?.ensure_success()?;
    Ok(())
}

/// The classic microservice call, answered by a WASM handler, from a plain
/// NATS client: a reply, an error reply, and a handler timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_reply_answers_errors_and_timeouts_from_a_plain_client() -> Result<()> {
    let server = NatsServer::start()?;
    let scratch = Scratch::new()?;
    let url = server.url();
    let config = pipeline(
        "users",
        "chaos",
        &format!(r#"{{ kind = "nats", url = "{url}", subject = "svc.get-user", queue_group = "users" }}"#),
        &format!(r#"{{ kind = "nats", url = "{url}", subject = "svc.events" }}"#),
        r#"{ kind = "file", path = "dlq.jsonl" }"#,
        "timeout = \"200ms\"\nmax_attempts = 1\nconcurrency = 2\nordering = \"none\"",
    );
    let mut host = start(&scratch, &config, "sluice.toml")?;
    host.wait_until("sluice to subscribe", WITHIN, || server.subscribers("svc.get-user").unwrap_or(0) == 1)?;
    let client = async_nats::ConnectOptions::new().request_timeout(Some(Duration::from_secs(10))).connect(server.url()).await?;

    let mut headers = async_nats::HeaderMap::new();
    headers.insert("X-Correlation-Id", "call-1");
    let reply = client.request_with_headers("svc.get-user", headers, "reply:{\"id\":42,\"name\":\"Ada\"}".into()).await?;
    assert_eq!(String::from_utf8_lossy(&reply.payload), r#"{"id":42,"name":"Ada"}"#);
    let header = |m: &async_nats::Message, name: &str| m.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.to_string());
    assert_eq!(header(&reply, "X-Correlation-Id").as_deref(), Some("call-1"), "correlation header copied");
    assert_eq!(header(&reply, "Nats-Service-Error"), None);

    let mut headers = async_nats::HeaderMap::new();
    headers.insert("X-Correlation-Id", "call-2");
    let error = client.request_with_headers("svc.get-user", headers, "reject:no user 7".into()).await?;
    assert_eq!(header(&error, "Nats-Service-Error-Code").as_deref(), Some("400"));
    assert_eq!(header(&error, "Nats-Service-Error").as_deref(), Some("no user 7"));
    assert_eq!(header(&error, "X-Correlation-Id").as_deref(), Some("call-2"));
    let body: serde_json::Value = serde_json::from_slice(&error.payload)?;
    assert_eq!(body["error"]["reason"], "rejected");
    assert_eq!(body["error"]["message"], "no user 7");

    // The guest sleeps past the 200 ms timeout: the caller gets an error
    // well before its own 10 s timeout, not silence.
    let asked = Instant::now();
    let timed_out = client.request("svc.get-user", "sleep:3000".into()).await?;
    let waited = asked.elapsed();
    assert_eq!(header(&timed_out, "Nats-Service-Error-Code").as_deref(), Some("500"));
    let body: serde_json::Value = serde_json::from_slice(&timed_out.payload)?;
    assert_eq!(body["error"]["reason"], "timeout");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("timed out") || message.contains("deadline"), "{message}");
    assert!(waited < Duration::from_secs(3), "answered after {waited:?}");

    // A request whose handler emits no reply still gets an answer.
    let silent = client.request("svc.get-user", "ok:an event, not an answer".into()).await?;
    let body: serde_json::Value = serde_json::from_slice(&silent.payload)?;
    assert_eq!(body["error"]["reason"], "no-reply");

    // Both failures are dead-lettered with the reply subject recorded.
    let dlq = scratch.read_jsonl("dlq.jsonl")?;
    assert_eq!(dlq.len(), 2, "{dlq:?}");
    assert!(dlq.iter().all(|r| common::header(r, "sluice-dlq-reply-to").is_some_and(|s| s.starts_with("_INBOX."))));
    host.terminate()?;
    host.wait(WITHIN)?.ensure_success()?;
    Ok(())
}

/// What the chaos plugin should make of input `i` in the JetStream tests:
/// most succeed, every tenth fails once then succeeds, every tenth is rejected.
fn chaos_input(i: usize) -> String {
    match i % 10 {
        3 => "retry:1".into(),
        7 => format!("reject:bad-{i}"),
        _ => format!("ok:out-{i}"),
    }
}

fn chaos_expected(i: usize) -> Option<String> {
    match i % 10 {
        3 => Some("recovered after 1 failures".into()),
        7 => None,
        _ => Some(format!("out-{i}")),
    }
}

fn jetstream_pipeline(url: &str, policy: &str, ack_wait: &str) -> String {
    pipeline(
        "orders",
        "chaos",
        &format!(
            r#"{{ kind = "jetstream", url = "{url}", stream = "IN", consumer = "sluice", ack_wait = "{ack_wait}", max_ack_pending = 1000 }}"#
        ),
        &format!(r#"{{ kind = "jetstream", url = "{url}", subject = "out.orders" }}"#),
        &format!(r#"{{ kind = "jetstream", url = "{url}", subject = "dlq.orders" }}"#),
        policy,
    )
}

async fn jetstream_streams(client: &async_nats::Client) -> Result<()> {
    create_stream(client, "IN", &["in.orders"]).await?;
    create_stream(client, "OUT", &["out.orders"]).await?;
    create_stream(client, "DLQ", &["dlq.orders"]).await
}

/// Checks the output and dead-letter streams against the inputs: every
/// input ended as exactly its expected output or exactly one dead-letter
/// record, nothing twice.
async fn check_exactly_once(client: &async_nats::Client, sequences: &[u64]) -> Result<()> {
    let input_of: HashMap<String, usize> = sequences.iter().enumerate().map(|(i, seq)| (format!("IN:{seq}"), i)).collect();
    let outputs = read_stream(client, "OUT").await?;
    let mut seen = HashSet::new();
    for output in &outputs {
        let msg_id = output.header("Nats-Msg-Id").context("an output without Nats-Msg-Id")?;
        ensure!(seen.insert(msg_id.to_owned()), "duplicate output {msg_id}");
        let event = msg_id.strip_suffix(":0").context("one output per event")?;
        let i = *input_of.get(event).with_context(|| format!("output for unknown input {event}"))?;
        ensure!(chaos_expected(i).as_deref() == Some(output.payload.as_str()), "input {i} gave {:?}", output.payload);
    }
    let dead = read_stream(client, "DLQ").await?;
    let mut dead_inputs = HashSet::new();
    for record in &dead {
        let event = record.header("sluice-dlq-event-id").context("a dead letter without event id")?;
        let i = *input_of.get(event).with_context(|| format!("dead letter for unknown input {event}"))?;
        ensure!(dead_inputs.insert(i), "input {i} dead-lettered twice");
        ensure!(record.header("sluice-dlq-reason") == Some("rejected"), "{record:?}");
        ensure!(record.header("sluice-dlq-message") == Some(format!("bad-{i}").as_str()), "{record:?}");
        ensure!(record.payload == chaos_input(i), "the original event is kept");
    }
    let expected_out = (0..sequences.len()).filter(|i| chaos_expected(*i).is_some()).count();
    ensure!(outputs.len() == expected_out, "{} outputs, expected {expected_out}", outputs.len());
    ensure!(dead.len() == sequences.len() - expected_out, "{} dead letters", dead.len());
    Ok(())
}

/// Waits until every input of the JetStream tests is handled and
/// acknowledged, stops `host`, then checks the streams against the inputs.
async fn finish_and_check(what: &str, client: &async_nats::Client, host: Running, sequences: &[u64]) -> Result<()> {
    let n = sequences.len() as u64;
    let expected_out = (0..sequences.len()).filter(|i| chaos_expected(*i).is_some()).count() as u64;
    wait_async(what, WITHIN, async || {
        let done = consumer_backlog(client, "IN", "sluice").await? == Some((0, 0))
            && stream_len(client, "OUT").await? >= expected_out
            && stream_len(client, "DLQ").await? >= n - expected_out;
        Ok(done.then_some(()))
    })
    .await?;
    host.terminate()?;
    host.wait(WITHIN)?.ensure_success()?;
    check_exactly_once(client, sequences).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_ten_thousand_events_end_as_exactly_one_output_or_dead_letter() -> Result<()> {
    let server = NatsServer::start()?;
    let scratch = Scratch::new()?;
    let client = server.client().await?;
    jetstream_streams(&client).await?;
    let n = 10_000;
    let sequences = publish_all(&client, "in.orders", (0..n).map(chaos_input)).await?;
    let policy = "max_attempts = 3\nconcurrency = 2\nordering = \"none\"\nbackoff = { initial = \"50ms\", jitter = 0.0 }";
    let host = start(&scratch, &jetstream_pipeline(&server.url(), policy, "30s"), "sluice.toml")?;
    finish_and_check("every event to be handled and acknowledged", &client, host, &sequences).await
}

/// With `ordering = "none"`, a retryable failure is a nak with the policy's
/// delay: an event failing twice reaches its output after about
/// 300 ms + 600 ms, measured from outside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nak_delays_follow_the_backoff_policy() -> Result<()> {
    let server = NatsServer::start()?;
    let scratch = Scratch::new()?;
    let client = server.client().await?;
    jetstream_streams(&client).await?;
    let policy = "max_attempts = 5\nordering = \"none\"\nbackoff = { initial = \"300ms\", multiplier = 2.0, jitter = 0.0 }";
    let host = start(&scratch, &jetstream_pipeline(&server.url(), policy, "30s"), "sluice.toml")?;
    // A first event makes sure the pipeline is up before timing starts.
    publish_all(&client, "in.orders", ["ok:warm".to_owned()]).await?;
    wait_async("the warm-up output", WITHIN, async || Ok((stream_len(&client, "OUT").await? == 1).then_some(()))).await?;

    let mut outputs = client.subscribe("out.orders").await?;
    client.flush().await?;
    let published = Instant::now();
    publish_all(&client, "in.orders", ["retry:2".to_owned()]).await?;
    let output = tokio::time::timeout(WITHIN, outputs.next()).await?.context("subscription ended")?;
    let took = published.elapsed();
    assert_eq!(String::from_utf8_lossy(&output.payload), "recovered after 2 failures");
    let expected = Duration::from_millis(300 + 600);
    assert!(took >= expected, "redelivered too early: {took:?} < {expected:?}");
    assert!(took < expected + Duration::from_millis(700), "redelivered too late: {took:?}");
    host.terminate()?;
    host.wait(WITHIN)?.ensure_success()?;
    Ok(())
}

/// A redelivered input (here: the whole stream again, through a reset
/// consumer) does not duplicate outputs: their `Nats-Msg-Id`s are the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msg_id_deduplicates_the_outputs_of_a_redelivered_input() -> Result<()> {
    let server = NatsServer::start()?;
    let scratch = Scratch::new()?;
    let client = server.client().await?;
    jetstream_streams(&client).await?;
    let n = 500;
    let sequences = publish_all(&client, "in.orders", (0..n).map(chaos_input)).await?;
    let config = jetstream_pipeline(&server.url(), "max_attempts = 3\nbackoff = { initial = \"10ms\" }", "30s");
    let expected_out = (0..n).filter(|i| chaos_expected(*i).is_some()).count() as u64;
    for round in 0..2 {
        let host = start(&scratch, &config, "sluice.toml")?;
        wait_async("the stream to be consumed", WITHIN, async || {
            Ok((consumer_backlog(&client, "IN", "sluice").await? == Some((0, 0)) && stream_len(&client, "OUT").await? >= expected_out)
                .then_some(()))
        })
        .await?;
        host.terminate()?;
        host.wait(WITHIN)?.ensure_success()?;
        if round == 0 {
            // `ordering = "partition"` (the default) keeps a subject's order,
            // retries included: outputs follow their inputs' order.
            let input_of: HashMap<String, u64> = sequences.iter().map(|seq| (format!("IN:{seq}:0"), *seq)).collect();
            let order: Vec<u64> = read_stream(&client, "OUT")
                .await?
                .iter()
                .filter_map(|o| o.header("Nats-Msg-Id").and_then(|id| input_of.get(id)).copied())
                .collect();
            ensure!(order.len() as u64 == expected_out && order.windows(2).all(|w| w[0] < w[1]), "outputs out of input order");
            // Forget every acknowledgement: all inputs are delivered again.
            async_nats::jetstream::new(client.clone()).get_stream("IN").await?.delete_consumer("sluice").await?;
        }
    }
    assert_eq!(stream_len(&client, "OUT").await?, expected_out, "no output stored twice");
    check_exactly_once(&client, &sequences).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_run_loses_nothing_and_duplicates_nothing() -> Result<()> {
    let server = NatsServer::start()?;
    let scratch = Scratch::new()?;
    let client = server.client().await?;
    jetstream_streams(&client).await?;
    let n = 10_000;
    let sequences = publish_all(&client, "in.orders", (0..n).map(chaos_input)).await?;
    // A short ack_wait: what the killed host held is redelivered quickly.
    let config = jetstream_pipeline(&server.url(), "max_attempts = 3\nconcurrency = 2\nbackoff = { initial = \"10ms\" }", "2s");
    let first = start(&scratch, &config, "sluice.toml")?;
    wait_async("some outputs before the kill", WITHIN, async || Ok((stream_len(&client, "OUT").await? >= 2_000).then_some(()))).await?;
    let status = std::process::Command::new("kill").args(["-KILL", &first.pid().to_string()]).status()?;
    ensure!(status.success(), "kill -9 failed");
    let killed_at = stream_len(&client, "OUT").await?;
    ensure!(killed_at < 9_000, "the run finished before the kill ({killed_at} outputs); the test proves nothing");
    drop(first);

    let second = start(&scratch, &config, "sluice.toml")?;
    finish_and_check("the restarted host to finish", &client, second, &sequences).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_broker_is_reconnected_to_and_nothing_is_lost() -> Result<()> {
    let mut server = NatsServer::start()?;
    let scratch = Scratch::new()?;
    let client = server.client().await?;
    jetstream_streams(&client).await?;
    let n = 4_000;
    let mut sequences = publish_all(&client, "in.orders", (0..n / 2).map(chaos_input)).await?;
    let config = jetstream_pipeline(&server.url(), "max_attempts = 3\nbackoff = { initial = \"10ms\" }", "5s");
    let host = start(&scratch, &config, "sluice.toml")?;
    wait_async("some outputs before the restart", WITHIN, async || Ok((stream_len(&client, "OUT").await? >= 200).then_some(()))).await?;
    server.restart()?;
    // The test's own client reconnects too; publish the second half after.
    let client = server.client().await?;
    sequences.extend(publish_all(&client, "in.orders", (n / 2..n).map(chaos_input)).await?);
    finish_and_check("the host to reconnect and finish", &client, host, &sequences).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_not_there_fails_the_pipeline_with_its_address() -> Result<()> {
    let scratch = Scratch::new()?;
    let port = free_port()?;
    let config = pipeline(
        "lonely",
        "passthrough",
        &format!(r#"{{ kind = "nats", url = "nats://127.0.0.1:{port}", subject = "in" }}"#),
        r#"{ kind = "stdout" }"#,
        r#"{ kind = "file", path = "dlq.jsonl" }"#,
        "",
    );
    scratch.write("sluice.toml", &config)?;
    let finished = scratch.run(&["run", "sluice.toml"])?;
    finished.ensure_failure()?;
    let address = format!("127.0.0.1:{port}");
    assert!(finished.stderr.contains(&address), "{}", finished.stderr);
    assert!(finished.stderr.contains("lonely"), "{}", finished.stderr);
    Ok(())
}

/// A handler slower than `ack_wait`: in-progress signals keep the server
/// from delivering the event again while it is being worked on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_handler_is_not_redelivered_while_it_works() -> Result<()> {
    let server = NatsServer::start()?;
    let scratch = Scratch::new()?;
    let client = server.client().await?;
    jetstream_streams(&client).await?;
    publish_all(&client, "in.orders", ["sleep:2500".to_owned(), "ok:after".to_owned()]).await?;
    let host = start(&scratch, &jetstream_pipeline(&server.url(), "timeout = \"10s\"", "1s"), "sluice.toml")?;
    wait_async("both events to be handled", WITHIN, async || {
        Ok((consumer_backlog(&client, "IN", "sluice").await? == Some((0, 0)) && stream_len(&client, "OUT").await? == 2).then_some(()))
    })
    .await?;
    let stream = async_nats::jetstream::new(client.clone()).get_stream("IN").await?;
    let mut consumer =
        stream.get_consumer::<async_nats::jetstream::consumer::pull::Config>("sluice").await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let info = consumer.info().await?;
    // Every delivery, redeliveries included, takes a consumer sequence number.
    assert_eq!(info.delivered.consumer_sequence, 2, "the server redelivered an event still being handled");
    let outputs: Vec<String> = read_stream(&client, "OUT").await?.into_iter().map(|o| o.payload).collect();
    assert_eq!(outputs, vec!["slept", "after"]);
    host.terminate()?;
    host.wait(WITHIN)?.ensure_success()?;
    Ok(())
}

/// `examples/nats/sluice.toml` runs as documented against a real server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nats_example_runs_as_documented() -> Result<()> {
    let server = NatsServer::start()?;
    let mut command = std::process::Command::new(sluice_bin());
    command.args(["run", "examples/nats/sluice.toml"]).current_dir(root()).env("NATS_URL", server.url());
    let host = Running::spawn(command)?;
    let client = server.client().await?;
    // The example creates its streams and consumer itself.
    wait_async("the example's consumer", WITHIN, async || {
        Ok(consumer_backlog(&client, "ORDERS", "enricher").await.ok().flatten().map(|_| ()))
    })
    .await?;
    let orders = [r#"{"order":1,"user":"alice","total":30}"#, r#"{"order":2,"total":5}"#, "this is not JSON"];
    let sequences = publish_all(&client, "orders.new", orders.iter().map(|o| o.to_string())).await?;
    wait_async("one enriched order and one dead letter", WITHIN, async || {
        Ok((stream_len(&client, "ORDERS_ENRICHED").await.unwrap_or(0) == 1 && stream_len(&client, "ORDERS_DLQ").await.unwrap_or(0) == 1)
            .then_some(()))
    })
    .await?;
    let enriched = read_stream(&client, "ORDERS_ENRICHED").await?;
    let order: serde_json::Value = serde_json::from_str(&enriched[0].payload)?;
    assert_eq!(order["user"], "alice");
    assert_eq!(order["env"], "nats-example");
    assert_eq!(order["event_id"], format!("ORDERS:{}", sequences[0]));
    assert_eq!(enriched[0].header("Nats-Msg-Id"), Some(format!("ORDERS:{}:0", sequences[0]).as_str()));
    let dead = read_stream(&client, "ORDERS_DLQ").await?;
    assert_eq!(dead[0].payload, "this is not JSON");
    assert_eq!(dead[0].header("sluice-dlq-reason"), Some("rejected"));
    host.terminate()?;
    host.wait(WITHIN)?.ensure_success()?;
    Ok(())
}

/// A bound consumer with its own `max_deliver` lowers `max_attempts` to it,
/// so the last delivery's failure is dead-lettered, not dropped in silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_max_deliver_ends_in_the_dead_letter_not_in_silence() -> Result<()> {
    use async_nats::jetstream::consumer;
    let server = NatsServer::start()?;
    let scratch = Scratch::new()?;
    let client = server.client().await?;
    jetstream_streams(&client).await?;
    async_nats::jetstream::new(client.clone())
        .get_stream("IN")
        .await?
        .create_consumer(consumer::pull::Config {
            durable_name: Some("sluice".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_deliver: 2,
            ..Default::default()
        })
        .await?;
    let sequences = publish_all(&client, "in.orders", ["retry:5".to_owned()]).await?;
    let policy = "max_attempts = 5\nordering = \"none\"\nbackoff = { initial = \"20ms\" }";
    let host = start(&scratch, &jetstream_pipeline(&server.url(), policy, "30s"), "sluice.toml")?;
    wait_async("the dead letter", WITHIN, async || Ok((stream_len(&client, "DLQ").await? == 1).then_some(()))).await?;
    let dead = read_stream(&client, "DLQ").await?;
    assert_eq!(dead[0].header("sluice-dlq-reason"), Some("retries-exhausted"));
    assert_eq!(dead[0].header("sluice-dlq-attempts"), Some("2"), "the consumer's limit, not the policy's 5");
    assert_eq!(dead[0].header("sluice-dlq-event-id"), Some(format!("IN:{}", sequences[0]).as_str()));
    assert_eq!(stream_len(&client, "OUT").await?, 0);
    host.terminate()?;
    let finished = host.wait(WITHIN)?;
    finished.ensure_success()?;
    assert!(finished.stderr.contains("max_deliver = 2"), "the limit is warned about at start:\n{}", finished.stderr);
    Ok(())
}

//! Safe rollouts end to end (`[pipelines.<name>.rollout]`, the admin API's
//! `/pipelines/{name}/candidate`): the real binary on JetStream, the
//! `rollout_*` test plugins as current version and candidates, and a ledger
//! of every event sent checked against the outputs (none lost, none twice,
//! each output tagged with the version that made it).

#[allow(dead_code)]
mod common;
#[path = "common/nats.rs"]
#[allow(dead_code)]
mod fixture;
#[path = "common/rollout.rs"]
mod orders;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;

use common::*;
use fixture::*;

const WITHIN: Duration = Duration::from_secs(60);
const TOKEN: &str = "rollout-token";

/// A host running pipeline `orders` (JetStream in, out and dead letter)
/// with `rollout_base` as its current version.
struct Rig {
    _server: NatsServer,
    client: async_nats::Client,
    scratch: Scratch,
    host: Running,
    port: u16,
}

async fn rig(rollout: &str) -> Result<Rig> {
    rig_with("rollout_base", rollout).await
}

async fn rig_with(current: &str, rollout: &str) -> Result<Rig> {
    let server = NatsServer::start()?;
    let scratch = Scratch::new()?;
    let client = server.client().await?;
    orders::create_streams(&client).await?;
    let url = server.url();
    let host = orders::OrdersHost { url: &url, current, rollout, token: Some(TOKEN), instance_id: None, store: false };
    host.write(&scratch, "sluice.toml")?;
    let (mut host, port) = orders::run(&scratch, "sluice.toml")?;
    host.wait_until("the admin API", WITHIN, || http_request(port, "GET", "/pipelines/orders", None, b"").is_ok_and(|(s, _)| s == 200))?;
    Ok(Rig { _server: server, client, scratch, host, port })
}

impl Rig {
    /// Publishes `order-<i>` with key `k<i>` for each i of `range`.
    async fn publish(&self, range: std::ops::Range<u64>) -> Result<()> {
        let js = async_nats::jetstream::new(self.client.clone());
        let mut acks = Vec::new();
        for i in range {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Sluice-Key", format!("k{i}").as_str());
            acks.push(js.publish_with_headers("in.orders", headers, format!("order-{i}").into()).await?);
        }
        for ack in acks {
            ack.await?;
        }
        Ok(())
    }

    /// Waits until OUT holds `count` messages.
    async fn outputs(&mut self, count: u64) -> Result<Vec<Stored>> {
        let deadline = std::time::Instant::now() + WITHIN;
        loop {
            let len = stream_len(&self.client, "OUT").await?;
            if len >= count {
                break;
            }
            ensure!(self.host.is_running()?, "sluice exited while {len} of {count} outputs were there");
            ensure!(std::time::Instant::now() < deadline, "{len} of {count} outputs within {WITHIN:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        read_stream(&self.client, "OUT").await
    }

    fn get(&self, path: &str) -> Result<Value> {
        let (status, body) = http_request(self.port, "GET", path, None, b"")?;
        ensure!(status == 200, "GET {path}: {status} {body}");
        Ok(serde_json::from_str(&body)?)
    }

    fn plugin(&self) -> Result<Value> {
        Ok(self.get("/pipelines/orders")?["plugin"].clone())
    }

    /// Uploads `name` as the candidate (`query`: mode and fractions).
    fn candidate(&self, name: &str, query: &str) -> Result<Value> {
        let bytes = std::fs::read(plugin(name))?;
        let (status, body) = http_request(self.port, "POST", &format!("/pipelines/orders/candidate{query}"), Some(TOKEN), &bytes)?;
        ensure!(status == 200, "POST candidate {name}: {status} {body}");
        Ok(serde_json::from_str(&body)?)
    }

    /// Waits until the candidate's counts satisfy `condition`.
    fn wait_for_candidate(&mut self, what: &str, condition: impl Fn(&Value) -> bool) -> Result<Value> {
        let port = self.port;
        let mut seen = Value::Null;
        self.host.wait_until(what, WITHIN, || {
            let Ok((200, body)) = http_request(port, "GET", "/pipelines/orders/candidate", None, b"") else { return false };
            seen = serde_json::from_str(&body).unwrap_or(Value::Null);
            condition(&seen)
        })?;
        Ok(seen)
    }
}

/// Checks the ledger: `order-0` … `order-<sent-1>` each exactly once, its
/// `n` header its number (never a candidate's drift), and returns each
/// event's number with the digest of the version that made its output.
fn ledger(outputs: &[Stored], sent: u64) -> Result<BTreeMap<u64, String>> {
    let mut seen = BTreeMap::new();
    for output in outputs {
        let n: u64 = output
            .payload
            .strip_prefix("order-")
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("an output {:?}", output.payload))?;
        ensure!(output.header("n") == Some(n.to_string().as_str()), "output {n} has header n = {:?}", output.header("n"));
        let digest = output.header("sluice-plugin-digest").context("an output without its version")?.to_owned();
        ensure!(seen.insert(n, digest).is_none(), "order-{n} was published twice");
    }
    ensure!(seen.len() as u64 == sent && seen.keys().copied().eq(0..sent), "{} distinct outputs for {sent} events", seen.len());
    Ok(seen)
}

fn metric(port: u16, name: &str) -> Result<f64> {
    let samples = metrics(port)?;
    samples
        .iter()
        .find(|(series, _)| series.starts_with(&format!("{name}{{")) && series.contains(r#"pipeline="orders""#))
        .map(|(_, value)| *value)
        .with_context(|| format!("no {name} for orders"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identical_candidate_is_shadowed_then_promotes_itself() -> Result<()> {
    let mut rig = rig("mode = \"shadow\"\npromote_after = 200").await?;
    let base = sha256_hex(&plugin("rollout_base"))?;
    let same = sha256_hex(&plugin("rollout_same"))?;
    rig.publish(0..100).await?;
    rig.outputs(100).await?;

    let answer = rig.candidate("rollout_same", "")?;
    ensure!(answer["candidate"]["digest"] == same.as_str() && answer["candidate"]["mode"] == "shadow", "{answer}");
    rig.publish(100..300).await?;
    let port = rig.port;
    rig.host.wait_until("the promotion", WITHIN, || {
        http_request(port, "GET", "/pipelines/orders", None, b"")
            .is_ok_and(|(_, body)| serde_json::from_str::<Value>(&body).is_ok_and(|v| v["plugin"]["current"]["digest"] == same.as_str()))
    })?;
    let plugin = rig.plugin()?;
    ensure!(plugin["previous"]["digest"] == base.as_str(), "the old version is kept for a rollback: {plugin}");
    ensure!(plugin["current"]["origin"] == "promotion", "{plugin}");
    let last = &plugin["rollout"]["last"];
    ensure!(last["outcome"] == "promoted" && last["digest"] == same.as_str(), "{last}");
    let counts = &last["report"]["counts"];
    ensure!(counts["handled"].as_u64() >= Some(200) && counts["different"] == 0 && counts["candidate_failures"] == 0, "{counts}");
    ensure!(plugin["rollout"]["candidate"].is_null(), "no candidate after the promotion: {plugin}");

    // After the promotion, the new version serves.
    rig.publish(300..400).await?;
    let outputs = rig.outputs(400).await?;
    let versions = ledger(&outputs, 400)?;
    ensure!(versions.range(0..100).all(|(_, d)| *d == base), "before the candidate, the current version served");
    ensure!(versions.range(300..400).all(|(_, d)| *d == same), "after the promotion, the promoted version serves");
    ensure!(versions.values().all(|d| *d == base || *d == same));
    ensure!(stream_len(&rig.client, "DLQ").await? == 0);
    ensure!(metric(rig.port, "sluice_rollout_promotions_total")? == 1.0);
    ensure!(metric(rig.port, "sluice_rollout_shadowed_total")? >= 200.0);

    rig.host.terminate()?;
    let finished = rig.host.wait(WITHIN)?;
    finished.ensure_success()?;
    ensure!(
        finished.stderr.contains("candidate ended") && finished.stderr.contains("Promoted"),
        "the promotion is logged:\n{}",
        finished.stderr
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_that_changes_a_field_in_ten_percent_is_reported_and_not_promoted() -> Result<()> {
    let mut rig = rig("promote_after = 100").await?;
    let base = sha256_hex(&plugin("rollout_base"))?;
    let drift = sha256_hex(&plugin("rollout_drift"))?;

    // Changes need the token.
    let (status, _) = http_request(rig.port, "POST", "/pipelines/orders/candidate", None, b"")?;
    ensure!(status == 401, "POST candidate without a token: {status}");
    rig.candidate("rollout_drift", "")?;
    rig.publish(0..300).await?;
    let report = rig.wait_for_candidate("300 compared events", |r| r["candidate"]["counts"]["handled"].as_u64() >= Some(300))?;
    let candidate = &report["candidate"];
    let counts = &candidate["counts"];
    ensure!(counts["handled"] == 300 && counts["different"] == 30 && counts["same"] == 270, "one in ten differs: {counts}");
    ensure!(counts["candidate_failures"] == 0 && counts["effects_refused"] == 0, "{counts}");
    let examples = candidate["examples"].as_array().context("no examples")?;
    ensure!(examples.len() == 20, "the first 20 differing events are kept: {}", examples.len());
    for example in examples {
        ensure!(example["difference"] == "output 1: headers", "{example}");
        let n = example["current"]["outputs"][0]["payload"].as_str().and_then(|p| p.strip_prefix("order-")).context("current payload")?;
        ensure!(n.parse::<u64>()? % 10 == 0, "only every tenth event differs: {example}");
        let header = |side: &str| example[side]["outputs"][0]["headers"].as_array().and_then(|h| h.iter().find(|h| h[0] == "n").cloned());
        ensure!(header("current") == Some(serde_json::json!(["n", n])), "{example}");
        ensure!(header("candidate") == Some(serde_json::json!(["n", "drifted"])), "{example}");
    }
    ensure!(candidate["pending"].is_null(), "nothing decided: {candidate}");
    let plugin = rig.plugin()?;
    ensure!(plugin["current"]["digest"] == base.as_str(), "not promoted: {plugin}");

    // `sluice status` shows it side by side.
    let status = rig.scratch.sluice(&["status", "--admin", &format!("127.0.0.1:{}", rig.port), "--interval", "10ms"]).output()?;
    let text = String::from_utf8_lossy(&status.stdout);
    ensure!(text.contains(&format!("candidate orders: {} shadow: 300 compared, 270 same, 30 different", &drift[..12])), "{text}");
    ensure!(text.contains("output 1: headers") && text.contains(r#"["n","drifted"]"#), "{text}");

    // Only the current version's outputs were published.
    let outputs = rig.outputs(300).await?;
    ensure!(ledger(&outputs, 300)?.values().all(|d| *d == base), "a shadowed candidate publishes nothing");
    ensure!(stream_len(&rig.client, "DLQ").await? == 0);
    ensure!(metric(rig.port, "sluice_rollout_differences_total")? == 30.0);

    // Aborted by hand (the CLI); the report is kept.
    let aborted = rig
        .scratch
        .sluice(&["plugin", "abort", "orders", "--admin", &format!("127.0.0.1:{}", rig.port)])
        .env("SLUICE_ADMIN_TOKEN", TOKEN)
        .output()?;
    ensure!(aborted.status.success(), "{}", String::from_utf8_lossy(&aborted.stderr));
    let after = rig.get("/pipelines/orders/candidate")?;
    ensure!(
        after["candidate"].is_null() && after["last"]["outcome"] == "aborted" && after["last"]["report"]["counts"]["different"] == 30,
        "{after}"
    );
    rig.host.terminate()?;
    rig.host.wait(WITHIN)?.ensure_success()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_failing_half_its_events_rolls_back_and_the_current_version_handles_them() -> Result<()> {
    let mut rig = rig("mode = \"canary\"\ncanary = 0.5\njudge_after = 20\nrollback_margin = 0.1\npromote_after = 1000").await?;
    let base = sha256_hex(&plugin("rollout_base"))?;
    let flaky = sha256_hex(&plugin("rollout_flaky"))?;
    let answer = rig.candidate("rollout_flaky", "")?;
    ensure!(answer["candidate"]["mode"] == "canary", "{answer}");
    rig.publish(0..400).await?;
    let outputs = rig.outputs(400).await?;
    let port = rig.port;
    rig.host.wait_until("the rollback", WITHIN, || {
        http_request(port, "GET", "/pipelines/orders/candidate", None, b"")
            .is_ok_and(|(_, body)| body.contains(r#""outcome":"rolled-back""#))
    })?;
    let versions = ledger(&outputs, 400)?;
    let canaried: Vec<u64> = versions.iter().filter(|(_, d)| **d == flaky).map(|(n, _)| *n).collect();
    ensure!(!canaried.is_empty(), "the canary served some events for real");
    ensure!(canaried.iter().all(|n| n % 2 == 0), "the canary only served the events it did not fail: {canaried:?}");
    ensure!(versions.values().all(|d| *d == base || *d == flaky));
    ensure!(stream_len(&rig.client, "DLQ").await? == 0, "nothing dead-lettered because of the canary");

    let rollout = rig.get("/pipelines/orders/candidate")?;
    let last = &rollout["last"];
    ensure!(last["digest"] == flaky.as_str() && last["reason"].as_str().is_some_and(|r| r.contains("rollback_margin")), "{last}");
    let counts = &last["report"]["counts"];
    ensure!(counts["handled"].as_u64() >= Some(20) && counts["fallbacks"] == counts["candidate_failures"], "{counts}");
    ensure!(counts["fallbacks"].as_u64() > Some(0) && counts["current_failures"] == 0, "{counts}");
    ensure!(rig.plugin()?["current"]["digest"] == base.as_str());
    ensure!(metric(rig.port, "sluice_rollout_rollbacks_total")? == 1.0);
    // The report is the candidate's as it ended; a call in flight then
    // still counts into the totals.
    ensure!(metric(rig.port, "sluice_rollout_canary_fallbacks_total")? >= counts["fallbacks"].as_f64().unwrap_or(f64::MAX));

    // After the rollback, every event goes to the current version.
    rig.publish(400..500).await?;
    let outputs = rig.outputs(500).await?;
    let versions = ledger(&outputs, 500)?;
    ensure!(versions.range(400..500).all(|(_, d)| *d == base));
    rig.host.terminate()?;
    let finished = rig.host.wait(WITHIN)?;
    finished.ensure_success()?;
    ensure!(finished.stderr.contains("candidate rolled back"), "the rollback is logged:\n{}", finished.stderr);
    Ok(())
}

/// A candidate that traps, spins past its deadline or answers otherwise
/// (`chaos` shadowing `passthrough`) costs only its own report: every event
/// is delivered by the current version, nothing is dead-lettered, and the
/// pipeline's own counters show no failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_or_hanging_shadow_costs_only_its_own_report() -> Result<()> {
    let mut rig = rig_with("passthrough", "timeout = \"300ms\"").await?;
    rig.candidate("chaos", "")?;
    // `loop` last: once a shadow call overruns its deadline, the rest of
    // its batch is not shadowed.
    let payloads = ["trap", "ok:x", "trap", "reject:no", "loop"].map(str::to_owned);
    publish_all(&rig.client, "in.orders", payloads.clone()).await?;
    let outputs = rig.outputs(5).await?;
    let published: Vec<&str> = outputs.iter().map(|o| o.payload.as_str()).collect();
    ensure!(published.iter().copied().eq(payloads.iter().map(String::as_str)), "the current version delivered each once: {published:?}");
    let report = rig.wait_for_candidate("five shadowed events", |r| r["candidate"]["counts"]["handled"] == 5)?;
    let counts = &report["candidate"]["counts"];
    ensure!(counts["candidate_failures"] == 4 && counts["candidate_rejections"] == 1 && counts["different"] == 5, "{counts}");
    let failures: Vec<&str> =
        report["candidate"]["examples"].as_array().context("examples")?.iter().filter_map(|e| e["candidate"]["failure"].as_str()).collect();
    ensure!(failures == ["trap", "trap", "rejected", "timeout"], "{failures:?}");
    let stats = rig.get("/pipelines/orders")?["stats"].clone();
    ensure!(stats["failures"] == 0 && stats["dead_lettered"] == 0, "the pipeline saw no failure: {stats}");
    ensure!(stream_len(&rig.client, "DLQ").await? == 0);
    rig.host.terminate()?;
    rig.host.wait(WITHIN)?.ensure_success()?;
    Ok(())
}

//! A candidate tried across the fleet through the plugin store
//! (`sluice plugin candidate --config`): three hosts share one JetStream
//! consumer and follow a NATS plugin store; every host tries the store's
//! candidate, the first whose rules decide writes the decision to the
//! store, and the others follow it. A ledger of every event sent is
//! checked against the outputs (none lost, none twice, none dead-lettered).

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
const HOSTS: [&str; 3] = ["a", "b", "c"];

/// Host `id` of the fleet (the `orders` pipeline of `common/rollout.rs`):
/// `rollout_base` as its file, and the store on the same server. The rules: an identical shadow promotes
/// after 200 compared events; a canary failing more than the current
/// version by 10 points rolls back after 20.
fn host<'a>(url: &'a str, id: &'a str) -> orders::OrdersHost<'a> {
    orders::OrdersHost {
        url,
        current: "rollout_base",
        rollout: "promote_after = 200\njudge_after = 20\nrollback_margin = 0.1\n",
        token: None,
        instance_id: Some(id),
        store: true,
    }
}

async fn publish(client: &async_nats::Client, range: std::ops::Range<u64>) -> Result<()> {
    let js = async_nats::jetstream::new(client.clone());
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

async fn outputs(client: &async_nats::Client, count: u64) -> Result<Vec<Stored>> {
    wait_async(&format!("{count} outputs"), WITHIN, async || Ok((stream_len(client, "OUT").await? >= count).then_some(()))).await?;
    read_stream(client, "OUT").await
}

/// `order-0` … `order-<sent-1>` each published exactly once; each event's
/// number with the digest of the version that made its output.
fn ledger(outputs: &[Stored], sent: u64) -> Result<BTreeMap<u64, String>> {
    let mut seen = BTreeMap::new();
    for output in outputs {
        let n: u64 = output
            .payload
            .strip_prefix("order-")
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("an output {:?}", output.payload))?;
        let digest = output.header("sluice-plugin-digest").context("an output without its version")?.to_owned();
        ensure!(seen.insert(n, digest).is_none(), "order-{n} was published twice");
    }
    ensure!(seen.len() as u64 == sent && seen.keys().copied().eq(0..sent), "{} distinct outputs for {sent} events", seen.len());
    Ok(seen)
}

/// Host `port`'s plugin status for `orders`.
fn plugin_status(port: u16) -> Result<Value> {
    let (status, body) = http_request(port, "GET", "/pipelines/orders", None, b"")?;
    ensure!(status == 200, "/pipelines/orders answered {status}: {body}");
    Ok(serde_json::from_str::<Value>(&body)?["plugin"].clone())
}

/// Waits until `condition` holds for every host's plugin status.
fn every_host(ports: &[u16], what: &str, condition: impl Fn(&Value) -> bool) -> Result<Vec<Value>> {
    poll_until(what, WITHIN, || {
        let statuses: Vec<Value> = ports.iter().map(|port| plugin_status(*port).unwrap_or(Value::Null)).collect();
        Ok(statuses.iter().all(&condition).then_some(statuses))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_candidate_promotes_once_everywhere_and_a_failing_canary_rolls_back_everywhere() -> Result<()> {
    let server = NatsServer::start()?;
    let scratch = Scratch::new()?;
    let client = server.client().await?;
    orders::create_streams(&client).await?;
    let url = server.url();
    let (base, same, flaky) =
        (sha256_hex(&plugin("rollout_base"))?, sha256_hex(&plugin("rollout_same"))?, sha256_hex(&plugin("rollout_flaky"))?);
    for name in HOSTS {
        host(&url, &format!("host-{name}")).write(&scratch, &format!("{name}.toml"))?;
    }
    // The store's first version: the hosts' file.
    scratch.run(&["plugin", "push", "--config", "a.toml", "orders", &plugin("rollout_base").display().to_string()])?.ensure_success()?;
    let mut hosts = Vec::new();
    let mut ports = Vec::new();
    for name in HOSTS {
        let (running, port) = orders::run(&scratch, &format!("{name}.toml"))?;
        ports.push(port);
        hosts.push(running);
    }
    every_host(&ports, "every host on the base version", |p| p["current"]["digest"] == base.as_str())?;
    publish(&client, 0..100).await?;
    outputs(&client, 100).await?;

    // 1. An identical candidate through the store: every host shadows it.
    let same_path = plugin("rollout_same").display().to_string();
    let set = std::time::Instant::now();
    let out = scratch.run(&["plugin", "candidate", "--config", "a.toml", "orders", &same_path, "--mode", "shadow"])?;
    out.ensure_success()?;
    ensure!(out.stdout.contains(&same), "the CLI names the candidate: {}", out.stdout);
    every_host(&ports, "every host shadowing the candidate", |p| p["rollout"]["candidate"]["digest"] == same.as_str())?;
    eprintln!("fleet rollout: candidate set → 3 hosts shadowing it in {:?}", set.elapsed());
    let fleet = scratch.run(&["plugin", "fleet", "--config", "a.toml", "orders"])?;
    ensure!(fleet.stdout.contains(&format!("candidate {}", &same[..12])), "the fleet view shows the candidate: {}", fleet.stdout);

    // Events flow: the first host with 200 compared promotes it, the
    // store's pointer follows, and so does every other host.
    let flowing = std::time::Instant::now();
    publish(&client, 100..1000).await?;
    let promoted = every_host(&ports, "every host on the promoted candidate", |p| {
        p["current"]["digest"] == same.as_str() && p["rollout"]["candidate"].is_null()
    })?;
    for status in &promoted {
        ensure!(status["previous"]["digest"] == base.as_str(), "the base version is kept for a rollback: {status}");
        ensure!(status["rollout"]["last"]["outcome"] == "promoted", "{status}");
    }
    eprintln!("fleet rollout: 900 events published → promoted on 3 hosts in {:?}", flowing.elapsed());
    let fleet = poll_until("the fleet converged on the promoted version", WITHIN, || {
        let fleet = &plugin_status(ports[0])?["fleet"];
        Ok((fleet["converged"] == true && fleet["current"] == same.as_str() && fleet["candidate"].is_null()).then(|| fleet.clone()))
    })?;
    eprintln!("fleet after the promotion: {fleet}");
    let outputs_now = outputs(&client, 1000).await?;
    ledger(&outputs_now, 1000)?;

    // 2. A canary failing half its events, through the store.
    let flaky_path = plugin("rollout_flaky").display().to_string();
    let args = ["plugin", "candidate", "--config", "b.toml", "orders", &flaky_path, "--mode", "canary", "--canary", "0.5"];
    scratch.run(&args)?.ensure_success()?;
    every_host(&ports, "every host trying the canary", |p| {
        p["rollout"]["candidate"]["digest"] == flaky.as_str() && p["rollout"]["candidate"]["mode"] == "canary"
    })?;
    let flowing = std::time::Instant::now();
    publish(&client, 1000..1400).await?;
    let rolled = every_host(&ports, "every host to end the canary", |p| {
        p["rollout"]["candidate"].is_null() && p["rollout"]["last"]["digest"] == flaky.as_str()
    })?;
    eprintln!("fleet rollout: 400 events published → canary rolled back on 3 hosts in {:?}", flowing.elapsed());
    for status in &rolled {
        ensure!(status["current"]["digest"] == same.as_str(), "the canary never became current: {status}");
        ensure!(status["rollout"]["last"]["outcome"] == "rolled-back", "{status}");
    }
    let outputs_now = outputs(&client, 1400).await?;
    let versions = ledger(&outputs_now, 1400)?;
    let canaried: Vec<u64> = versions.iter().filter(|(_, d)| **d == flaky).map(|(n, _)| *n).collect();
    ensure!(canaried.iter().all(|n| n % 2 == 0), "the canary only served the events it did not fail: {canaried:?}");
    ensure!(versions.values().all(|d| *d == base || *d == same || *d == flaky));
    ensure!(stream_len(&client, "DLQ").await? == 0, "nothing dead-lettered because of the canary");

    // After it, every event goes to the promoted version, on every host.
    publish(&client, 1400..1500).await?;
    let versions = ledger(&outputs(&client, 1500).await?, 1500)?;
    ensure!(versions.range(1400..1500).all(|(_, d)| *d == same));

    for host in &hosts {
        host.terminate()?;
    }
    let mut written = 0;
    for host in hosts {
        let finished = host.wait(WITHIN)?;
        finished.ensure_success()?;
        written += finished.stderr.matches("rollout decision written to the plugin store").count();
    }
    // One host's decision per candidate: the promotion, then the rollback.
    ensure!(written == 2, "each candidate decided once for the fleet, not by each host: {written} decisions written");
    Ok(())
}

/// A store candidate a host cannot load (the wrong world) is refused there
/// and reported in its heartbeat; one it tries is ended by `sluice plugin
/// abort --config`, and the current version never stops serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_fleet_candidate_is_reported_and_an_aborted_one_ends_everywhere() -> Result<()> {
    let server = NatsServer::start()?;
    let scratch = Scratch::new()?;
    let client = server.client().await?;
    orders::create_streams(&client).await?;
    let (base, same) = (sha256_hex(&plugin("rollout_base"))?, sha256_hex(&plugin("rollout_same"))?);
    host(&server.url(), "host-a").write(&scratch, "a.toml")?;
    scratch.run(&["plugin", "push", "--config", "a.toml", "orders", &plugin("rollout_base").display().to_string()])?.ensure_success()?;
    let (host, port) = orders::run(&scratch, "a.toml")?;
    let ports = [port];
    every_host(&ports, "the host on the base version", |p| p["current"]["digest"] == base.as_str())?;

    let bad = plugin("wrong_world").display().to_string();
    scratch.run(&["plugin", "candidate", "--config", "a.toml", "orders", &bad])?.ensure_success()?;
    let refused = every_host(&ports, "the candidate refused and reported", |p| {
        p["fleet"]["hosts"][0]["candidate_refused"]["reason"].as_str().is_some()
    })?;
    ensure!(refused[0]["rollout"]["candidate"].is_null() && refused[0]["current"]["digest"] == base.as_str(), "{}", refused[0]);
    let fleet = scratch.run(&["plugin", "fleet", "--config", "a.toml", "orders"])?;
    ensure!(fleet.stdout.contains("refused candidate"), "the fleet view shows the refusal: {}", fleet.stdout);

    // A loadable candidate replaces it; abort ends it on the host.
    scratch
        .run(&["plugin", "candidate", "--config", "a.toml", "orders", &plugin("rollout_same").display().to_string()])?
        .ensure_success()?;
    every_host(&ports, "the host trying the candidate", |p| {
        p["rollout"]["candidate"]["digest"] == same.as_str() && p["fleet"]["hosts"][0]["candidate_refused"].is_null()
    })?;
    scratch.run(&["plugin", "abort", "--config", "a.toml", "orders"])?.ensure_success()?;
    every_host(&ports, "the candidate aborted", |p| p["rollout"]["candidate"].is_null() && p["rollout"]["last"]["outcome"] == "aborted")?;
    let again = scratch.run(&["plugin", "abort", "--config", "a.toml", "orders"])?;
    ensure!(again.code() != Some(0) && again.stderr.contains("no candidate"), "a second abort says there is none: {}", again.stderr);

    publish(&client, 0..50).await?;
    let versions = ledger(&outputs(&client, 50).await?, 50)?;
    ensure!(versions.values().all(|d| *d == base), "the base version served throughout");
    ensure!(stream_len(&client, "DLQ").await? == 0);
    host.terminate()?;
    host.wait(WITHIN)?.ensure_success()?;
    Ok(())
}

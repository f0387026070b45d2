//! Fleet distribution of plugin versions through the broker
//! (`[plugins.store]`): three hosts in one NATS queue group follow a
//! JetStream plugin store while events flow; each output is checked
//! against a ledger of the ids sent.

#[allow(dead_code)]
mod common;
#[allow(dead_code)]
#[path = "common/nats.rs"]
mod fixture;
#[path = "common/fleet.rs"]
mod fleet;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use futures::StreamExt;

use common::*;
use fixture::*;
use fleet::{converge, running};

const WITHIN: Duration = Duration::from_secs(60);
/// The bound on a push reaching every host (measured well under it).
const CONVERGE_WITHIN: Duration = Duration::from_secs(10);

/// Host `host`'s config: one pipeline from the queue group `workers`, its
/// outputs on `done.<host>`, following the store on the same server.
fn config(url: &str, host: &str) -> String {
    let pipeline = broker_pipeline(
        "shared",
        "tag_v1",
        [
            &format!(r#"{{ kind = "nats", url = "{url}", subject = "jobs", queue_group = "workers" }}"#),
            &format!(r#"{{ kind = "nats", url = "{url}", subject = "done.{host}" }}"#),
            &format!(r#"{{ kind = "file", path = "dlq-{host}.jsonl" }}"#),
        ],
        "",
        "10s",
    );
    let pipeline = pipeline.replacen("[runtime]\n", &format!("[runtime]\ninstance_id = \"host-{host}\"\n"), 1);
    format!("{pipeline}\n[admin]\nlisten = \"{ANY_PORT}\"\n\n[plugins.store]\nnats = \"{url}\"\n")
}

/// One output seen: its id, the host that made it, the digest header.
#[derive(Debug, Clone)]
struct Seen {
    id: u64,
    host: String,
    digest: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_follow_pushes_and_rollbacks_without_losing_an_event() -> Result<()> {
    let server = NatsServer::start()?;
    let scratch = Scratch::new()?;
    let url = server.url();
    let (v1, v2, v3) = (sha256_hex(&plugin("tag_v1"))?, sha256_hex(&plugin("tag_v2"))?, sha256_hex(&plugin("uppercase"))?);
    for host in ["a", "b", "c"] {
        scratch.write(&format!("{host}.toml"), config(&url, host))?;
    }
    let client = server.client().await?;
    let mut done = client.subscribe("done.*").await?;
    client.flush().await?;

    // The ledger: every output, by id.
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let collector = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(message) = done.next().await {
                let payload = String::from_utf8_lossy(&message.payload).to_lowercase();
                let id = payload.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or(u64::MAX);
                let digest =
                    message.headers.as_ref().and_then(|h| h.get("sluice-plugin-digest")).map(|v| v.to_string()).unwrap_or_default();
                let host = message.subject.trim_start_matches("done.").to_owned();
                if let Ok(mut seen) = seen.lock() {
                    seen.push(Seen { id, host, digest });
                }
            }
        })
    };

    let mut a = Running::spawn(scratch.sluice(&["run", "a.toml"]))?;
    let mut b = Running::spawn(scratch.sluice(&["run", "b.toml"]))?;
    let mut c = Running::spawn(scratch.sluice(&["run", "c.toml"]))?;
    let (pa, pb, mut pc) = (a.admin_port()?, b.admin_port()?, c.admin_port()?);
    a.wait_until("three hosts in the queue group", WITHIN, || server.subscribers("jobs").unwrap_or(0) == 3)?;
    converge(&[pa, pb, pc], &v1, Instant::now(), WITHIN)?;

    // Events flow all along, one every millisecond; `paused` holds them
    // while a host stops or starts (core NATS drops what a stopping
    // host's subscription held: that is the transport, not the rollout).
    let sent = Arc::new(AtomicU64::new(0));
    let paused = Arc::new(AtomicBool::new(false));
    // Rounds of the publisher's loop that found it paused: one counted
    // after a pause began says no publish is under way any more.
    let held = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (client, sent, paused, held, stop) = (client.clone(), sent.clone(), paused.clone(), held.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                if !paused.load(Ordering::SeqCst) {
                    let id = sent.load(Ordering::SeqCst);
                    client.publish("jobs", format!("job-{id}").into()).await?;
                    sent.store(id + 1, Ordering::SeqCst);
                } else {
                    held.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            client.flush().await?;
            anyhow::Ok(())
        })
    };
    let drained = |what: &str| -> Result<()> {
        let count = sent.load(Ordering::SeqCst) as usize;
        wait_for(&format!("{what}: every event sent so far handled"), WITHIN, || seen.lock().map(|s| s.len() >= count).unwrap_or(false))
    };
    let pause_and_drain = |what: &str| -> Result<()> {
        paused.store(true, Ordering::SeqCst);
        let before = held.load(Ordering::SeqCst);
        wait_for(&format!("{what}: the publisher to hold"), WITHIN, || held.load(Ordering::SeqCst) > before)?;
        drained(what)
    };
    // Events flow on the version the hosts run now: some of its outputs
    // come back (the ledger's last check needs each version's), rather than
    // a fixed wait hoping they do.
    let flowing = |what: &str, digest: &str| -> Result<()> {
        let mark = seen.lock().map(|s| s.len()).unwrap_or(0);
        wait_for(&format!("{what}: outputs of {}", &digest[..12]), WITHIN, || {
            seen.lock().is_ok_and(|s| s.get(mark..).is_some_and(|new| new.iter().filter(|x| x.digest == digest).count() >= 20))
        })
    };
    flowing("before any push", &v1)?;

    // Push v2: all three take it.
    let pushed = Instant::now();
    scratch.run(&["plugin", "push", "--config", "a.toml", "shared", &plugin("tag_v2").display().to_string()])?.ensure_success()?;
    let to_v2 = converge(&[pa, pb, pc], &v2, pushed, WITHIN)?;
    ensure!(to_v2 < CONVERGE_WITHIN, "v2 took {to_v2:?} to reach every host");
    eprintln!("fleet: push v2 → 3 hosts converged in {to_v2:?}");
    flowing("after the push of v2", &v2)?;

    // Host c goes down; v3 is pushed while it is away.
    pause_and_drain("before stopping c")?;
    c.terminate()?;
    c.wait(WITHIN)?.ensure_success()?;
    paused.store(false, Ordering::SeqCst);
    let pushed = Instant::now();
    scratch.run(&["plugin", "push", "--config", "b.toml", "shared", &plugin("uppercase").display().to_string()])?.ensure_success()?;
    let to_v3 = converge(&[pa, pb], &v3, pushed, WITHIN)?;
    eprintln!("fleet: push v3 → 2 hosts converged in {to_v3:?}");
    flowing("after the push of v3", &v3)?;

    // c comes back with tag_v1 as its file, and starts on v3.
    pause_and_drain("before restarting c")?;
    let restart_mark = seen.lock().map(|s| s.len()).unwrap_or(0);
    c = Running::spawn(scratch.sluice(&["run", "c.toml"]))?;
    pc = c.admin_port()?;
    c.wait_until("c back in the queue group", WITHIN, || server.subscribers("jobs").unwrap_or(0) == 3)?;
    let (digest, plugin_status) = running(pc)?;
    ensure!(digest == v3, "c restarted on {digest}, not the store's v3: {plugin_status}");
    ensure!(plugin_status["current"]["origin"] == "start", "c's v3 is its start version: {plugin_status}");
    paused.store(false, Ordering::SeqCst);
    flowing("with c back", &v3)?;

    // Roll back: v2 again everywhere.
    let rolled = Instant::now();
    scratch.run(&["plugin", "rollback", "--config", "c.toml", "shared"])?.ensure_success()?;
    let back = converge(&[pa, pb, pc], &v2, rolled, WITHIN)?;
    eprintln!("fleet: rollback → 3 hosts converged in {back:?}");
    flowing("after the rollback", &v2)?;

    // The fleet view: every host reports v2.
    let fleet = poll_until("the heartbeats to show a converged fleet", WITHIN, || {
        let (_, status) = running(pa)?;
        let fleet = status["fleet"].clone();
        let hosts = fleet["hosts"].as_array().map_or(0, Vec::len);
        Ok((fleet["converged"] == true && fleet["current"] == v2.as_str() && hosts == 3).then_some(fleet))
    })?;
    eprintln!("fleet: {fleet}");
    let out = scratch.run(&["plugin", "fleet", "--config", "a.toml", "shared"])?;
    out.ensure_success()?;

    stop.store(true, Ordering::SeqCst);
    publisher.await??;
    drained("at the end")?;
    for host in [&a, &b, &c] {
        host.terminate()?;
    }
    for host in [a, b, c] {
        host.wait(WITHIN)?.ensure_success()?;
    }
    collector.abort();

    // The ledger: every id sent handled exactly once, by a version pushed.
    let seen = seen.lock().map(|s| s.clone()).map_err(|_| anyhow::anyhow!("ledger poisoned"))?;
    let total = sent.load(Ordering::SeqCst);
    let mut ids: BTreeMap<u64, usize> = BTreeMap::new();
    for s in &seen {
        *ids.entry(s.id).or_default() += 1;
    }
    let twice: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).map(|(id, _)| *id).take(10).collect();
    ensure!(twice.is_empty(), "handled more than once: {twice:?}");
    let missing: Vec<u64> = (0..total).filter(|id| !ids.contains_key(id)).take(10).collect();
    ensure!(missing.is_empty(), "lost: {missing:?} (of {total})");
    ensure!(ids.len() as u64 == total, "{} ids seen, {total} sent", ids.len());
    let pushed: HashSet<&str> = [v1.as_str(), v2.as_str(), v3.as_str()].into();
    let strange: Vec<&Seen> = seen.iter().filter(|s| !pushed.contains(s.digest.as_str())).take(5).collect();
    ensure!(strange.is_empty(), "outputs from a version never pushed: {strange:?}");
    // c after its restart never ran its own file's v1.
    let c_v1: Vec<&Seen> = seen[restart_mark..].iter().filter(|s| s.host == "c" && s.digest == v1).take(5).collect();
    ensure!(c_v1.is_empty(), "c ran its local v1 after restarting: {c_v1:?}");
    let versions_used: HashSet<&str> = seen.iter().map(|s| s.digest.as_str()).collect();
    ensure!(versions_used.len() == 3, "outputs of v1, v2 and v3 all seen: {}", versions_used.len());
    eprintln!("fleet: {total} events, each handled once");
    Ok(())
}

/// A version a host cannot load (the wrong world) is refused: the host
/// keeps the version it runs, counts the rejection and says why in its
/// heartbeat, and `sluice plugin fleet` shows the split (exit 2) until a
/// good version is pushed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_version_keeps_the_old_one_and_is_reported() -> Result<()> {
    let server = NatsServer::start()?;
    let scratch = Scratch::new()?;
    let url = server.url();
    let (v1, v2) = (sha256_hex(&plugin("tag_v1"))?, sha256_hex(&plugin("tag_v2"))?);
    scratch.write("a.toml", config(&url, "a"))?;
    let mut a = Running::spawn(scratch.sluice(&["run", "a.toml"]))?;
    let port = a.admin_port()?;
    converge(&[port], &v1, Instant::now(), WITHIN)?;

    let bad = plugin("wrong_world").display().to_string();
    scratch.run(&["plugin", "push", "--config", "a.toml", "shared", &bad])?.ensure_success()?;
    let status = poll_until("the host to refuse the version", WITHIN, || {
        let (digest, status) = running(port)?;
        let refused = status["fleet"]["hosts"][0]["refused"]["reason"].as_str().is_some();
        Ok((refused && status["rejections"].as_u64() >= Some(1)).then_some((digest, status)))
    })?;
    ensure!(status.0 == v1, "the host keeps v1 after refusing: {}", status.1);
    ensure!(status.1["fleet"]["converged"] == false, "a refusal splits the fleet: {}", status.1);
    ensure!(status.1["last_rejection"]["origin"] == "store", "{}", status.1);
    let split = scratch.run(&["plugin", "fleet", "--config", "a.toml"])?;
    ensure!(split.code() == Some(2), "`plugin fleet` exits 2 on a split fleet: {:?}", split.code());

    scratch.run(&["plugin", "push", "--config", "a.toml", "shared", &plugin("tag_v2").display().to_string()])?.ensure_success()?;
    converge(&[port], &v2, Instant::now(), WITHIN)?;
    poll_until("the refusal to clear", WITHIN, || {
        let (_, status) = running(port)?;
        let hosts = &status["fleet"]["hosts"];
        Ok((status["fleet"]["converged"] == true && hosts[0]["refused"].is_null()).then_some(()))
    })?;
    scratch.run(&["plugin", "fleet", "--config", "a.toml"])?.ensure_success()?;
    a.terminate()?;
    a.wait(WITHIN)?.ensure_success()?;
    Ok(())
}

/// With `[plugins] trusted_keys`, a version from the store is checked as
/// an upload is: pushed unsigned it is refused; pushed with its signature
/// (stored beside it) it is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_fleet_takes_only_signed_versions_from_the_store() -> Result<()> {
    let server = NatsServer::start()?;
    let scratch = Scratch::new()?;
    let url = server.url();
    scratch.run(&["plugin", "keygen", "release"])?.ensure_success()?;
    // The start version, signed, in the scratch folder (its .sig beside it).
    std::fs::copy(plugin("tag_v1"), scratch.path("tag_v1.wasm"))?;
    scratch.run(&["plugin", "sign", "tag_v1.wasm", "--key", "release.key"])?.ensure_success()?;
    let v2 = plugin("tag_v2").display().to_string();
    scratch.run(&["plugin", "sign", &v2, "--key", "release.key", "--out", "tag_v2.sig"])?.ensure_success()?;
    let text = config(&url, "a").replace(&toml_path(&plugin("tag_v1")), &toml_path(&scratch.path("tag_v1.wasm")));
    let text = text.replace("[plugins.store]\n", "[plugins]\ntrusted_keys = [\"release.pub\"]\n\n[plugins.store]\n");
    scratch.write("a.toml", text)?;
    let mut a = Running::spawn(scratch.sluice(&["run", "a.toml"]))?;
    let port = a.admin_port()?;
    let (v1, v2_digest) = (sha256_hex(&plugin("tag_v1"))?, sha256_hex(&plugin("tag_v2"))?);
    converge(&[port], &v1, Instant::now(), WITHIN)?;

    scratch.run(&["plugin", "push", "--config", "a.toml", "shared", &v2])?.ensure_success()?;
    let reason = poll_until("the unsigned version to be refused", WITHIN, || {
        let (_, status) = running(port)?;
        Ok(status["fleet"]["hosts"][0]["refused"]["reason"].as_str().map(str::to_owned))
    })?;
    ensure!(reason.contains("not signed"), "refused for being unsigned: {reason}");
    ensure!(running(port)?.0 == v1, "keeps v1");

    // Pushed again with its signature: the host tries it again.
    scratch.run(&["plugin", "push", "--config", "a.toml", "shared", &v2, "--signature", "tag_v2.sig"])?.ensure_success()?;
    converge(&[port], &v2_digest, Instant::now(), WITHIN)?;
    a.terminate()?;
    a.wait(WITHIN)?.ensure_success()?;
    Ok(())
}

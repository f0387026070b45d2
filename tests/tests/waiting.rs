//! Plugins that wait: guests that sleep in a host call, past their deadline,
//! or block in `init`, against the real binary. None of them may hold a
//! thread, stall another pipeline or the admin API, or keep the host from
//! stopping (issue: the async runtime).

#[allow(dead_code)]
mod common;

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use common::*;

const WITHIN: Duration = Duration::from_secs(180);
/// Events each slow pipeline gets.
const SLOW_EVENTS: usize = 10_000;

/// A pipeline of `chaos` reading `{name}.jsonl`, writing `{name}-out.jsonl`
/// and `{name}-dlq.jsonl`.
fn pipeline(name: &str, follow: bool, plugin_config: &str, policy: &str) -> String {
    format!(
        r#"
[pipelines.{name}]
source = {{ kind = "file", path = "{name}.jsonl", follow = {follow} }}
sink = {{ kind = "file", path = "{name}-out.jsonl" }}
dead_letter = {{ kind = "file", path = "{name}-dlq.jsonl" }}

[pipelines.{name}.plugin]
path = {plugin}
config = {{ {plugin_config} }}

[pipelines.{name}.policy]
{policy}
"#,
        plugin = toml_path(&plugin("chaos")),
    )
}

/// Threads of process `pid` (`Threads:` in its /proc status).
fn threads(pid: u32) -> Result<usize> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("Threads:")).context("no Threads: line")?;
    Ok(line.trim_start_matches("Threads:").trim().parse()?)
}

/// 10,000 events whose handler sleeps ten minutes, through one lane and
/// through 64 lanes, with a 5 ms deadline: every one is dead-lettered with
/// reason `timeout`, the host's threads stay few, a healthy pipeline beside
/// them keeps answering in milliseconds and the admin API at once. A
/// pipeline whose plugin blocks in `init` is refused within its
/// `init_timeout`, and the others run. SIGTERM then stops the host within
/// `shutdown_timeout` although calls are still waiting.
#[test]
fn sleeping_handlers_hold_no_thread_and_stall_nothing_else() -> Result<()> {
    let scratch = Scratch::new()?;
    let sleepy: Vec<_> = (0..SLOW_EVENTS).map(|_| event("sleep:600000")).collect();
    scratch.write_events("one-lane.jsonl", &sleepy)?;
    scratch.write_events("lanes.jsonl", &sleepy)?;
    scratch.write("healthy.jsonl", "")?;
    scratch.write("blocked.jsonl", "")?;
    // Sleeps whose deadline is far off: still waiting when SIGTERM comes.
    scratch.write_events("waiting.jsonl", &(0..64).map(|_| event("sleep:600000")).collect::<Vec<_>>())?;
    let slow = r#"timeout = "5ms"
max_attempts = 1
batch_size = 1"#;
    let config = format!(
        "{runtime}shutdown_timeout = \"3s\"\nplugin_threads = 2\n\n[admin]\nlisten = \"{ANY_PORT}\"\n{one}{many}{healthy}{blocked}{waiting}",
        runtime = runtime_table(),
        one = pipeline("one-lane", false, "", slow),
        many = pipeline("lanes", false, "", &format!("{slow}\nconcurrency = 64\nordering = \"none\"")),
        healthy = pipeline("healthy", true, "", "timeout = \"5s\""),
        blocked = pipeline("blocked", false, "init_sleep_ms = \"600000\"", "init_timeout = \"500ms\""),
        waiting = pipeline("waiting", false, "", "timeout = \"10m\"\nbatch_size = 1\nconcurrency = 64\nordering = \"none\""),
    );
    let mut host = start(&scratch, &config, "sluice.toml")?;
    let port = host.admin_port()?;
    let pid = host.pid();
    host.wait_until("the admin API", WITHIN, || http_request(port, "GET", "/healthz", None, b"").is_ok_and(|(s, _)| s == 200))?;

    // The healthy pipeline's first event makes its instance: not measured.
    scratch.append_events("healthy.jsonl", &[event("ok:warm-up")])?;
    host.wait_until("the healthy pipeline's first output", WITHIN, || scratch.count_lines("healthy-out.jsonl") == 1)?;
    // While the slow pipelines run: the healthy one's round trips (its
    // source polls the file every 100 ms), the admin API's answers and the
    // thread count.
    let mut peak_threads = 0;
    let mut round_trips = Vec::new();
    let mut admin = Vec::new();
    for i in 0..20 {
        peak_threads = peak_threads.max(threads(pid)?);
        let started = Instant::now();
        let (status, _) = http_request(port, "GET", "/readyz", None, b"")?;
        admin.push(started.elapsed());
        ensure!(status == 503, "/readyz must name the pipeline refused for its init, answered {status}");
        let started = Instant::now();
        scratch.append_events("healthy.jsonl", &[event(&format!("ok:{i}"))])?;
        host.wait_until("the healthy pipeline's output", WITHIN, || scratch.count_lines("healthy-out.jsonl") == i + 2)?;
        round_trips.push(started.elapsed());
    }
    let lanes_done = scratch.count_lines("lanes-dlq.jsonl");
    host.wait_until("10,000 timeouts through 64 lanes and through one", WITHIN, || {
        if let Ok(n) = threads(pid) {
            peak_threads = peak_threads.max(n);
        }
        scratch.count_lines("lanes-dlq.jsonl") == SLOW_EVENTS && scratch.count_lines("one-lane-dlq.jsonl") == SLOW_EVENTS
    })?;
    ensure!(lanes_done < SLOW_EVENTS || scratch.count_lines("one-lane-dlq.jsonl") > 0, "the measurements ran beside the slow pipelines");
    for name in ["lanes", "one-lane"] {
        let dead = scratch.read_jsonl(&format!("{name}-dlq.jsonl"))?;
        ensure!(dead.len() == SLOW_EVENTS, "{name}: {} dead letters", dead.len());
        for record in &dead {
            ensure!(header(record, "sluice-dlq-reason") == Some("timeout"), "{name}: {record}");
            ensure!(header(record, "sluice-dlq-message").is_some_and(|m| m.contains("timed out after 5ms")), "{name}: {record}");
        }
        ensure!(scratch.count_lines(&format!("{name}-out.jsonl")) == 0, "{name}: a ten-minute sleep cannot succeed");
    }
    eprintln!("peak threads {peak_threads}; healthy round trips {round_trips:?}; /readyz {admin:?}");
    // The old runtime lent each waiting guest a blocking thread: hundreds.
    ensure!(peak_threads <= 40, "the host grew to {peak_threads} threads with guests waiting in 129 lanes");
    let slowest = round_trips.iter().max().copied().unwrap_or_default();
    ensure!(slowest < Duration::from_secs(1), "the healthy pipeline took {slowest:?} for one event beside the sleepers: {round_trips:?}");
    let slowest = admin.iter().max().copied().unwrap_or_default();
    ensure!(slowest < Duration::from_secs(1), "/readyz took {slowest:?}");
    let (_, ready) = http_request(port, "GET", "/readyz", None, b"")?;
    ensure!(ready.contains("within policy.init_timeout (500ms)"), "/readyz names the blocked init: {ready}");

    // 64 calls still wait (ten-minute deadline): SIGTERM ends the host
    // within shutdown_timeout (3 s) all the same, handing them back.
    let started = Instant::now();
    host.terminate()?;
    let finished = host.wait(Duration::from_secs(30))?;
    let took = started.elapsed();
    ensure!(took < Duration::from_secs(8), "SIGTERM took {took:?} with a 3 s shutdown_timeout");
    ensure!(scratch.count_lines("waiting-dlq.jsonl") == 0, "nothing waiting was dead-lettered: {}", finished.stderr);
    Ok(())
}

/// `sluice check` refuses a plugin that blocks in `init`, within the
/// pipeline's `init_timeout`, naming it; it does not hang.
#[test]
fn check_refuses_a_plugin_that_blocks_in_init() -> Result<()> {
    let scratch = Scratch::new()?;
    scratch.write("blocked.jsonl", "")?;
    let config = format!("{}{}", runtime_table(), pipeline("blocked", false, "init_loop = \"1\"", "init_timeout = \"300ms\""));
    scratch.write("sluice.toml", config)?;
    let started = Instant::now();
    let checked = Running::spawn(scratch.sluice(&["check", "sluice.toml"]))?.wait(Duration::from_secs(60))?;
    checked.ensure_failure()?;
    ensure!(checked.stdout.contains("did not finish starting and `init` within policy.init_timeout (300ms)"), "{}", checked.stdout);
    ensure!(started.elapsed() < Duration::from_secs(30), "check took {:?}", started.elapsed());
    Ok(())
}

/// Guests that burn CPU until their deadline in 64 lanes (32 on each of
/// two plugin threads, `plugin_threads = 2`) while the admin API is asked for
/// `/healthz` and `/metrics` and a healthy pipeline gets events one at a
/// time: the admin API answers (the guests run on the plugin threads, not
/// on the async workers that serve it, the sources and the sinks); the healthy pipeline's events come through (a lane beside
/// spinners waits its turn, a tick each, but is never starved); the
/// spinners are dead-lettered at their deadline, and the host's threads
/// stay few. (The latencies are printed, not bounded tightly: on a shared
/// 2-CPU machine they measure the machine's load as much as the host.)
#[test]
fn spinning_guests_do_not_stall_the_admin_api_or_other_pipelines() -> Result<()> {
    const SPINNERS: usize = 10_000;
    let scratch = Scratch::new()?;
    scratch.write_events("spin.jsonl", &(0..SPINNERS).map(|_| event("loop")).collect::<Vec<_>>())?;
    scratch.write("healthy.jsonl", "")?;
    let config = format!(
        "{runtime}shutdown_timeout = \"3s\"\n\n[admin]\nlisten = \"{ANY_PORT}\"\n{spin}{healthy}",
        runtime = runtime_table(),
        spin = pipeline("spin", false, "", "timeout = \"300ms\"\nmax_attempts = 1\nbatch_size = 1\nconcurrency = 64\nordering = \"none\""),
        healthy = pipeline("healthy", true, "", "timeout = \"5s\""),
    );
    let mut host = start(&scratch, &config, "sluice.toml")?;
    let port = host.admin_port()?;
    let pid = host.pid();
    host.wait_until("the admin API", WITHIN, || http_request(port, "GET", "/healthz", None, b"").is_ok_and(|(s, _)| s == 200))?;
    scratch.append_events("healthy.jsonl", &[event("ok:warm-up")])?;
    host.wait_until("the healthy pipeline's first output", WITHIN, || scratch.count_lines("healthy-out.jsonl") == 1)?;
    // The spinners are at it: some have run into their deadline.
    host.wait_until("the first spinners' deadlines", WITHIN, || scratch.count_lines("spin-dlq.jsonl") >= 64)?;
    let spun_before = scratch.count_lines("spin-dlq.jsonl");

    let mut peak_threads = 0;
    let (mut healthz, mut metrics, mut round_trips) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..10 {
        peak_threads = peak_threads.max(threads(pid)?);
        for _ in 0..5 {
            let started = Instant::now();
            let (status, _) = http_request(port, "GET", "/healthz", None, b"")?;
            healthz.push(started.elapsed());
            ensure!(status == 200, "/healthz answered {status}");
        }
        let started = Instant::now();
        let (status, body) = http_request(port, "GET", "/metrics", None, b"")?;
        metrics.push(started.elapsed());
        ensure!(status == 200 && body.contains("pipeline=\"spin\""), "/metrics answered {status}: {body}");
        let started = Instant::now();
        scratch.append_events("healthy.jsonl", &[event(&format!("ok:{i}"))])?;
        host.wait_until("the healthy pipeline's output beside the spinners", WITHIN, || scratch.count_lines("healthy-out.jsonl") == i + 2)?;
        round_trips.push(started.elapsed());
    }
    let spun_after = scratch.count_lines("spin-dlq.jsonl");
    eprintln!(
        "spinners dead-lettered {spun_before} → {spun_after} of {SPINNERS}; peak threads {peak_threads}; \
         /healthz {healthz:?}; /metrics {metrics:?}; healthy round trips {round_trips:?}"
    );
    ensure!(
        spun_after > spun_before && spun_after < SPINNERS,
        "the measurements ran while the spinners spun ({spun_before} → {spun_after})"
    );
    let slowest = healthz.iter().max().copied().unwrap_or_default();
    ensure!(slowest < Duration::from_secs(2), "/healthz took {slowest:?} beside 64 spinning guests");
    let slowest = metrics.iter().max().copied().unwrap_or_default();
    ensure!(slowest < Duration::from_secs(2), "/metrics took {slowest:?} beside 64 spinning guests");
    let slowest = round_trips.iter().max().copied().unwrap_or_default();
    ensure!(slowest < Duration::from_secs(10), "the healthy pipeline took {slowest:?} for one event beside 64 spinners: {round_trips:?}");
    ensure!(peak_threads <= 40, "the host grew to {peak_threads} threads");

    let dead = scratch.read_jsonl("spin-dlq.jsonl")?;
    for record in dead.iter().take(64) {
        ensure!(header(record, "sluice-dlq-reason") == Some("timeout"), "{record}");
    }
    let healthy = scratch.read_jsonl("healthy-out.jsonl")?;
    ensure!(healthy.len() == 11, "{} healthy outputs", healthy.len());
    let started = Instant::now();
    host.terminate()?;
    host.wait(Duration::from_secs(30))?;
    ensure!(started.elapsed() < Duration::from_secs(8), "SIGTERM took {:?} with spinning guests", started.elapsed());
    Ok(())
}

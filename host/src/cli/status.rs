//! `sluice status`: what a running host is doing, as a table, from its
//! admin API (`GET /pipelines`, sampled twice for rates).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

pub struct Options {
    /// The admin API's address, e.g. `127.0.0.1:9090`.
    pub admin: String,
    /// Time between the two samples the rates come from.
    pub interval: Duration,
    /// Bearer token for `GET /pipelines` (`SLUICE_ADMIN_READ_TOKEN`).
    pub token: Option<String>,
    /// PEM file of the CA an `https://` admin API's certificate chains to
    /// (instead of the public web roots).
    pub ca_file: Option<std::path::PathBuf>,
}

pub fn status(options: &Options) -> Result<ExitCode> {
    let base = if options.admin.contains("://") { options.admin.clone() } else { format!("http://{}", options.admin) };
    let agent = agent(options.ca_file.as_deref(), Some(Duration::from_secs(5)))?;
    let first = fetch(&agent, &base, options.token.as_deref())?;
    let started = Instant::now();
    std::thread::sleep(options.interval);
    let second = fetch(&agent, &base, options.token.as_deref())?;
    let elapsed = started.elapsed().as_secs_f64().max(0.001);
    print!("{}", render(&first, &second, elapsed));
    Ok(ExitCode::SUCCESS)
}

/// An HTTP(S) client; with `ca_file`, HTTPS trusts that CA only. Every
/// request ends within `timeout` (`None`: a stream, bounded by connect
/// and read timeouts only).
pub(super) fn agent(ca_file: Option<&std::path::Path>, timeout: Option<Duration>) -> Result<ureq::Agent> {
    let mut config = ureq::Agent::config_builder().timeout_global(timeout).timeout_connect(Some(Duration::from_secs(5)));
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).with_context(|| format!("cannot read the CA file {}", path.display()))?;
        let certs = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(cert)) => Some(Ok(cert)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("{} is not a PEM file", path.display()))?;
        if certs.is_empty() {
            bail!("{} holds no PEM certificate", path.display());
        }
        let tls = ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::new_with_certs(&certs)).build();
        config = config.tls_config(tls);
    }
    Ok(config.build().into())
}

fn fetch(agent: &ureq::Agent, base: &str, token: Option<&str>) -> Result<Value> {
    let url = format!("{base}/pipelines");
    let mut request = agent.get(&url);
    if let Some(token) = token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    let mut response = match request.call() {
        Err(ureq::Error::StatusCode(401)) => {
            bail!("{url} requires a token: set SLUICE_ADMIN_READ_TOKEN to the host's `admin.read_token` (or `admin.token`)")
        }
        answer => answer.with_context(|| {
            format!(
                "cannot reach the admin API at {url}; is `sluice run` running with an [admin] section, and is this its `listen` address?"
            )
        })?,
    };
    let body: Value = response.body_mut().read_json().with_context(|| format!("{url} did not answer with JSON"))?;
    if body.get("pipelines").and_then(Value::as_array).is_none() {
        bail!("{url} answered without a `pipelines` list: is it a sluice admin API?");
    }
    Ok(body)
}

/// The table: one row per pipeline of `second`, rates from the difference.
fn render(first: &Value, second: &Value, elapsed: f64) -> String {
    let empty = Vec::new();
    let before = first["pipelines"].as_array().unwrap_or(&empty);
    let now = second["pipelines"].as_array().unwrap_or(&empty);
    let count = |p: &Value, field: &str| p["stats"][field].as_u64().unwrap_or(0);
    let header = [
        "PIPELINE",
        "STATE",
        "PLUGIN",
        "VERSION",
        "RECEIVED",
        "IN/S",
        "OUTPUTS",
        "OUT/S",
        "FAILURES",
        "DEAD",
        "IN-FLIGHT",
        "RELOADS",
        "RESTARTS",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    // Why pipelines that do not run stopped, printed under the table.
    let mut errors = Vec::new();
    // The fleet of each pipeline following a plugin store, under that.
    let mut fleets = Vec::new();
    for pipeline in now {
        let name = pipeline["name"].as_str().unwrap_or("?");
        let earlier = before.iter().find(|p| p["name"].as_str() == Some(name));
        let rate = |field: &str| {
            let was = earlier.map_or(0, |p| count(p, field));
            format!("{:.0}", count(pipeline, field).saturating_sub(was) as f64 / elapsed)
        };
        let plugin = &pipeline["plugin"];
        let digest = plugin["current"]["digest"].as_str().unwrap_or("-");
        let in_flight = count(pipeline, "received")
            .saturating_sub(count(pipeline, "acked") + count(pipeline, "abandoned") + count(pipeline, "redelivered"));
        let state = pipeline["state"].as_str().unwrap_or("?");
        // An open or probing circuit breaker is why a pipeline takes nothing;
        // a restarting one shows its attempt (the error and next try are
        // in `GET /pipelines/NAME`).
        let state = match (pipeline["breaker"]["state"].as_str(), pipeline["restart"]["attempt"].as_u64()) {
            (Some(breaker), _) if breaker != "closed" => format!("{state}:breaker-{breaker}"),
            (_, Some(attempt)) => format!("{state}:attempt-{attempt}"),
            _ => state.to_owned(),
        };
        rows.push(vec![
            name.to_owned(),
            state,
            plugin["name"].as_str().unwrap_or("-").to_owned(),
            digest.get(..12).unwrap_or(digest).to_owned(),
            count(pipeline, "received").to_string(),
            rate("received"),
            count(pipeline, "outputs").to_string(),
            rate("outputs"),
            count(pipeline, "failures").to_string(),
            count(pipeline, "dead_lettered").to_string(),
            in_flight.to_string(),
            plugin["reloads"].as_u64().unwrap_or(0).to_string(),
            pipeline["restarts"].as_u64().unwrap_or(0).to_string(),
        ]);
        if let Some(error) = pipeline["restart"]["last_error"].as_str().or(pipeline["error"].as_str()) {
            errors.push(format!("{name}: {error}"));
        }
        if plugin["fleet"].is_object() {
            fleets.push(fleet_lines(name, &plugin["fleet"]));
        }
        if plugin["rollout"]["candidate"].is_object() || plugin["rollout"]["last"].is_object() {
            fleets.push(rollout_lines(name, &plugin["rollout"]));
        }
    }
    if now.is_empty() {
        return "no pipelines are running\n".into();
    }
    let widths: Vec<usize> = (0..header.len()).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    for error in errors {
        out.push_str(&error.replace(['\n', '\r'], " "));
        out.push('\n');
    }
    for fleet in fleets {
        out.push_str(&fleet);
    }
    out
}

/// A pipeline's fleet (`plugin.fleet`): the store's current version, and
/// per host the version it runs, the candidate it tries and what it
/// refused.
fn fleet_lines(name: &str, fleet: &Value) -> String {
    let short = |digest: &Value| digest.as_str().map(|d| d.get(..12).unwrap_or(d).to_owned()).unwrap_or_else(|| "-".into());
    let empty = Vec::new();
    let hosts = fleet["hosts"].as_array().unwrap_or(&empty);
    let state = if fleet["converged"].as_bool() == Some(true) { "converged" } else { "NOT converged" };
    let candidate = match fleet["candidate"].as_str() {
        Some(_) => format!(", candidate {}", short(&fleet["candidate"])),
        None => String::new(),
    };
    let mut out = format!("fleet {name}: store current {}{candidate}, {} host(s), {state}\n", short(&fleet["current"]), hosts.len());
    for host in hosts {
        let refused = |field: &str, what: &str| match host[field]["digest"].as_str() {
            Some(_) => format!("  {what} {}: {}", short(&host[field]["digest"]), host[field]["reason"].as_str().unwrap_or("?")),
            None => String::new(),
        };
        let trying = match host["candidate"].as_str() {
            Some(_) => format!("  trying {}", short(&host["candidate"])),
            None => String::new(),
        };
        out.push_str(&format!(
            "  {}  {}{trying}{}{}\n",
            host["host"].as_str().unwrap_or("?"),
            short(&host["digest"]),
            refused("refused", "refused").replace(['\n', '\r'], " "),
            refused("candidate_refused", "refused candidate").replace(['\n', '\r'], " ")
        ));
    }
    out
}

/// A pipeline's rollout (`plugin.rollout`): the candidate's counts and its
/// first differing events side by side, or how the last one ended.
fn rollout_lines(name: &str, rollout: &Value) -> String {
    let short = |digest: &Value| digest.as_str().map(|d| d.get(..12).unwrap_or(d).to_owned()).unwrap_or_else(|| "-".into());
    let one_line = |text: &str| text.replace(['\n', '\r'], " ");
    let mut out = String::new();
    let candidate = &rollout["candidate"];
    if candidate.is_object() {
        let c = &candidate["counts"];
        let n = |field: &str| c[field].as_u64().unwrap_or(0);
        let mode = candidate["mode"].as_str().unwrap_or("?");
        let detail = match mode {
            "canary" => format!(
                "{} handled, {} failed (fell back to current), current {} of {} failed",
                n("handled"),
                n("candidate_failures"),
                n("current_failures"),
                n("current_events")
            ),
            _ => format!(
                "{} compared, {} same, {} different, candidate failed {} (current {}), {} call(s) refused",
                n("handled"),
                n("same"),
                n("different"),
                n("candidate_failures"),
                n("current_failures"),
                n("effects_refused")
            ),
        };
        let ms = |field: &str| c[field].as_f64().unwrap_or(0.0);
        out.push_str(&format!(
            "candidate {name}: {} {mode}: {detail}; {:.2} ms/event (current {:.2})\n",
            short(&candidate["digest"]),
            ms("candidate_ms"),
            ms("current_ms")
        ));
        if let Some(pending) = candidate["pending"].as_str() {
            out.push_str(&format!("  decided: {}\n", one_line(pending)));
        }
        let empty = Vec::new();
        for example in candidate["examples"].as_array().unwrap_or(&empty) {
            out.push_str(&format!(
                "  {}: {}\n    current:   {}\n    candidate: {}\n",
                example["event_id"].as_str().unwrap_or("?"),
                one_line(example["difference"].as_str().unwrap_or("?")),
                example["current"],
                example["candidate"]
            ));
        }
    }
    let last = &rollout["last"];
    if last.is_object() {
        out.push_str(&format!(
            "last candidate {name}: {} {} at {}: {}\n",
            short(&last["digest"]),
            last["outcome"].as_str().unwrap_or("?"),
            last["at"].as_str().unwrap_or("?"),
            one_line(last["reason"].as_str().unwrap_or(""))
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::render;
    use serde_json::json;

    #[test]
    fn rates_come_from_the_difference_between_samples() {
        let sample = |received: u64, acked: u64| {
            json!({ "pipelines": [{
                "name": "orders", "state": "running",
                "plugin": { "name": "enricher", "reloads": 2, "current": { "digest": "0123456789abcdef0123" } },
                "stats": { "received": received, "outputs": acked, "acked": acked, "failures": 1, "dead_lettered": 1, "abandoned": 0, "redelivered": 0 }
            }]})
        };
        let table = render(&sample(100, 90), &sample(300, 280), 2.0);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("PIPELINE  STATE"), "{table}");
        let cells: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(cells, ["orders", "running", "enricher", "0123456789ab", "300", "100", "280", "95", "1", "1", "20", "2", "0"]);
    }

    #[test]
    fn a_restarting_pipeline_shows_its_attempt_restarts_and_last_error() {
        let sample = json!({ "pipelines": [
            { "name": "orders", "state": "restarting", "restarts": 3,
              "restart": { "attempt": 2, "next_try": "2026-12-06T03:00:00Z", "last_error": "sink failed: full" } },
            { "name": "audit", "state": "failed", "restarts": 5, "error": "failed after 5 restart(s)" }
        ]});
        let table = render(&sample, &sample, 1.0);
        let lines: Vec<&str> = table.lines().collect();
        let orders: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(orders, ["orders", "restarting:attempt-2", "-", "-", "0", "0", "0", "0", "0", "0", "0", "0", "3"], "{table}");
        assert_eq!(lines[2].split_whitespace().nth(1), Some("failed"), "{table}");
        assert_eq!(lines[3], "orders: sink failed: full", "{table}");
        assert_eq!(lines[4], "audit: failed after 5 restart(s)", "{table}");
    }

    #[test]
    fn a_split_fleet_shows_each_host_and_what_it_refused() {
        let sample = json!({ "pipelines": [{
            "name": "orders", "state": "running", "stats": {},
            "plugin": { "name": "enricher", "current": { "digest": "aaaaaaaaaaaaaaaa" }, "fleet": {
                "current": "bbbbbbbbbbbbbbbb", "candidate": "cccccccccccccccc", "converged": false, "hosts": [
                    { "host": "h1", "digest": "bbbbbbbbbbbbbbbb", "candidate": "cccccccccccccccc" },
                    { "host": "h2", "digest": "aaaaaaaaaaaaaaaa", "refused": { "digest": "bbbbbbbbbbbbbbbb", "reason": "init failed" },
                      "candidate_refused": { "digest": "cccccccccccccccc", "reason": "wrong world" } }
                ] } }
        }]});
        let table = render(&sample, &sample, 1.0);
        let lines: Vec<&str> = table.lines().skip(2).collect();
        assert_eq!(
            lines,
            [
                "fleet orders: store current bbbbbbbbbbbb, candidate cccccccccccc, 2 host(s), NOT converged",
                "  h1  bbbbbbbbbbbb  trying cccccccccccc",
                "  h2  aaaaaaaaaaaa  refused bbbbbbbbbbbb: init failed  refused candidate cccccccccccc: wrong world",
            ],
            "{table}"
        );
    }

    #[test]
    fn a_shadowed_candidate_shows_its_counts_and_differences_side_by_side() {
        let sample = json!({ "pipelines": [{
            "name": "orders", "state": "running", "stats": {},
            "plugin": { "name": "enricher", "current": { "digest": "aaaaaaaaaaaaaaaa" }, "rollout": { "candidate": {
                "digest": "bbbbbbbbbbbbbbbb", "mode": "shadow", "sample": 1.0, "canary": 0.1,
                "counts": { "handled": 10, "same": 9, "different": 1, "candidate_failures": 0, "current_failures": 0, "effects_refused": 2, "candidate_ms": 0.5, "current_ms": 0.25 },
                "examples": [{ "event_id": "e7", "difference": "output 1: payload",
                    "current": { "outputs": [{ "payload": "a" }] }, "candidate": { "outputs": [{ "payload": "b" }] } }]
            } } }
        }]});
        let table = render(&sample, &sample, 1.0);
        let lines: Vec<&str> = table.lines().skip(2).collect();
        assert_eq!(
            lines,
            [
                "candidate orders: bbbbbbbbbbbb shadow: 10 compared, 9 same, 1 different, candidate failed 0 (current 0), 2 call(s) refused; 0.50 ms/event (current 0.25)",
                "  e7: output 1: payload",
                r#"    current:   {"outputs":[{"payload":"a"}]}"#,
                r#"    candidate: {"outputs":[{"payload":"b"}]}"#,
            ],
            "{table}"
        );
    }

    #[test]
    fn a_canary_shows_its_fallbacks_and_the_last_candidate_how_it_ended() {
        let sample = json!({ "pipelines": [{
            "name": "orders", "state": "running", "stats": {},
            "plugin": { "name": "enricher", "current": { "digest": "aaaaaaaaaaaaaaaa" }, "rollout": {
                "candidate": { "digest": "cccccccccccccccc", "mode": "canary", "sample": 1.0, "canary": 0.5, "examples": [],
                    "counts": { "handled": 20, "candidate_failures": 10, "current_failures": 0, "current_events": 22, "candidate_ms": 1.0, "current_ms": 0.5 },
                    "pending": "roll back: the candidate failed 50.0% of 20 events" },
                "last": { "digest": "bbbbbbbbbbbbbbbb", "outcome": "promoted", "at": "2026-12-06T20:00:00Z", "reason": "200 events: 0 differing" }
            } }
        }]});
        let table = render(&sample, &sample, 1.0);
        let lines: Vec<&str> = table.lines().skip(2).collect();
        assert_eq!(
            lines,
            [
                "candidate orders: cccccccccccc canary: 20 handled, 10 failed (fell back to current), current 0 of 22 failed; 1.00 ms/event (current 0.50)",
                "  decided: roll back: the candidate failed 50.0% of 20 events",
                "last candidate orders: bbbbbbbbbbbb promoted at 2026-12-06T20:00:00Z: 200 events: 0 differing",
            ],
            "{table}"
        );
    }

    #[test]
    fn an_open_breaker_shows_in_the_state() {
        let sample = json!({ "pipelines": [{
            "name": "orders", "state": "running", "plugin": {}, "stats": {},
            "breaker": { "state": "open", "failures": 0, "opened": 1 }
        }]});
        let table = render(&sample, &sample, 1.0);
        assert!(table.lines().nth(1).is_some_and(|row| row.split_whitespace().nth(1) == Some("running:breaker-open")), "{table}");
    }
}

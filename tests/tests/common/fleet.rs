//! What the fleet tests (NATS and Kafka stores) ask every host: which
//! version its pipeline `shared` runs, and when all of them run one.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use serde_json::Value;

use super::common::{http_request, poll_until};

/// The digest host `port` runs for `shared`, and its plugin status.
pub fn running(port: u16) -> Result<(String, Value)> {
    let (status, body) = http_request(port, "GET", "/pipelines/shared", None, b"")?;
    ensure!(status == 200, "/pipelines/shared answered {status}: {body}");
    let body: Value = serde_json::from_str(&body)?;
    let plugin = body.get("plugin").cloned().unwrap_or(Value::Null);
    Ok((plugin["current"]["digest"].as_str().unwrap_or_default().to_owned(), plugin))
}

/// Waits (up to `within`) until every host in `ports` runs `digest`;
/// returns how long it took since `since`.
pub fn converge(ports: &[u16], digest: &str, since: Instant, within: Duration) -> Result<Duration> {
    poll_until(&format!("every host to run {}", &digest[..12]), within, || {
        for port in ports {
            // Not registered yet (404) counts as not there yet.
            if running(*port).map(|(running, _)| running != digest).unwrap_or(true) {
                return Ok(None);
            }
        }
        Ok(Some(since.elapsed()))
    })
}

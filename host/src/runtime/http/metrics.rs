//! Per destination tallies of a pipeline's plugin HTTP requests, rendered
//! by [`crate::metrics`] on `/metrics`:
//!
//! - `sluice_http_requests_total{pipeline,plugin,host,outcome}`: requests
//!   by status class (`2xx`…) or `failed` (no response);
//! - `sluice_http_errors_total{pipeline,plugin,host,kind}`: `denied`,
//!   `timeout`, `transport`, `too-large` (a body over the cap);
//! - `sluice_http_request_duration_seconds{pipeline,plugin,host}`: to the
//!   response head (or the failure).
//!
//! Kept per pipeline name, process-wide, so counts carry over plugin
//! reloads and restarts. `host` is `host:port` as requested; a plugin
//! chooses it (denied ones too), so distinct hosts are capped at
//! [`MAX_HOSTS`] per pipeline and the rest counted as `other`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use prometheus_client::metrics::histogram::Histogram;

/// Distinct `host` labels per pipeline before the rest fold into `other`.
pub const MAX_HOSTS: usize = 100;

/// What became of a request (or its body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Status(u16),
    Denied,
    Timeout,
    Transport,
    TooLarge,
}

/// Error kinds, in `errors` order.
pub const ERROR_KINDS: [&str; 4] = ["denied", "timeout", "transport", "too-large"];
/// Outcome labels, in `requests` order.
pub const OUTCOMES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "failed"];

#[derive(Debug)]
pub struct HostMetrics {
    requests: [AtomicU64; 6],
    errors: [AtomicU64; 4],
    pub duration: Histogram,
}

impl Default for HostMetrics {
    fn default() -> Self {
        Self {
            requests: Default::default(),
            errors: Default::default(),
            // 100 µs to ~6.5 s, doubling: a local service to a slow API.
            duration: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.000_1, 2.0, 17)),
        }
    }
}

impl HostMetrics {
    pub fn requests(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        OUTCOMES.iter().zip(&self.requests).map(|(l, v)| (*l, v.load(Ordering::Relaxed)))
    }
    pub fn errors(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        ERROR_KINDS.iter().zip(&self.errors).map(|(l, v)| (*l, v.load(Ordering::Relaxed)))
    }
}

/// One pipeline's tallies.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    hosts: Mutex<HashMap<String, Arc<HostMetrics>>>,
}

impl HttpMetrics {
    fn host(&self, host: &str) -> Option<Arc<HostMetrics>> {
        let mut hosts = self.hosts.lock().ok()?;
        if let Some(found) = hosts.get(host) {
            return Some(found.clone());
        }
        let label = if hosts.len() < MAX_HOSTS { host } else { "other" };
        Some(hosts.entry(label.to_owned()).or_default().clone())
    }

    /// Counts one outcome; `duration` for those that end a request (a body
    /// failing later adds an error, not a request).
    pub fn count(&self, host: &str, outcome: Outcome, duration: Option<Duration>) {
        let Some(metrics) = self.host(host) else { return };
        let error = match outcome {
            Outcome::Status(_) => None,
            Outcome::Denied => Some(0),
            Outcome::Timeout => Some(1),
            Outcome::Transport => Some(2),
            Outcome::TooLarge => Some(3),
        };
        if let Some(kind) = error {
            metrics.errors[kind].fetch_add(1, Ordering::Relaxed);
        }
        let ends_request = !matches!(outcome, Outcome::TooLarge) && (duration.is_some() || outcome == Outcome::Denied);
        if ends_request {
            let class = match outcome {
                Outcome::Status(status @ 100..=599) => usize::from(status / 100 - 1),
                _ => 5,
            };
            metrics.requests[class].fetch_add(1, Ordering::Relaxed);
        }
        if let Some(duration) = duration {
            metrics.duration.observe(duration.as_secs_f64());
        }
    }

    /// Every destination so far, sorted by host.
    pub fn snapshot(&self) -> Vec<(String, Arc<HostMetrics>)> {
        let mut hosts: Vec<_> = match self.hosts.lock() {
            Ok(hosts) => hosts.iter().map(|(h, m)| (h.clone(), m.clone())).collect(),
            Err(_) => Vec::new(),
        };
        hosts.sort_by(|a, b| a.0.cmp(&b.0));
        hosts
    }
}

static PIPELINES: LazyLock<Mutex<HashMap<String, Arc<HttpMetrics>>>> = LazyLock::new(Default::default);

/// The tallies of pipeline `name` (made on first use).
pub fn for_pipeline(name: &str) -> Arc<HttpMetrics> {
    match PIPELINES.lock() {
        Ok(mut pipelines) => pipelines.entry(name.to_owned()).or_default().clone(),
        Err(_) => Arc::default(),
    }
}

/// The tallies of pipeline `name`, if its plugin ever made a request.
pub fn of_pipeline(name: &str) -> Option<Arc<HttpMetrics>> {
    PIPELINES.lock().ok().and_then(|pipelines| pipelines.get(name).cloned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(pairs: impl Iterator<Item = (&'static str, u64)>, label: &str) -> u64 {
        pairs.filter(|(l, _)| *l == label).map(|(_, v)| v).sum()
    }

    #[test]
    fn outcomes_land_in_their_class_and_errors_in_their_kind() {
        let m = HttpMetrics::default();
        let d = Some(Duration::from_millis(1));
        m.count("a:443", Outcome::Status(200), d);
        m.count("a:443", Outcome::Status(503), d);
        m.count("a:443", Outcome::Timeout, d);
        m.count("a:443", Outcome::TooLarge, None);
        m.count("b:443", Outcome::Denied, None);
        let hosts = m.snapshot();
        let a = &hosts[0].1;
        assert_eq!(get(a.requests(), "2xx"), 1);
        assert_eq!(get(a.requests(), "5xx"), 1);
        assert_eq!(get(a.requests(), "failed"), 1);
        assert_eq!(get(a.errors(), "timeout"), 1);
        assert_eq!(get(a.errors(), "too-large"), 1);
        let b = &hosts[1].1;
        assert_eq!((hosts[1].0.as_str(), get(b.errors(), "denied"), get(b.requests(), "failed")), ("b:443", 1, 1));
    }

    #[test]
    fn hosts_past_the_cap_fold_into_other() {
        let m = HttpMetrics::default();
        for i in 0..MAX_HOSTS + 5 {
            m.count(&format!("h{i}:443"), Outcome::Denied, None);
        }
        let hosts = m.snapshot();
        assert_eq!(hosts.len(), MAX_HOSTS + 1);
        let other = hosts.iter().find(|(h, _)| h == "other").map(|(_, m)| get(m.errors(), "denied"));
        assert_eq!(other, Some(5));
    }
}

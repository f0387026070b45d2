//! Service-call metrics of one pipeline: requests per destination and
//! outcome, and their latency per destination. Labels are bounded by the
//! config (destination names) and a fixed set of outcomes, never by data.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::metrics::histogram::Histogram;

/// Requests per `(destination, outcome)` and latency per destination.
#[derive(Debug, Default)]
pub struct ClientMetrics {
    requests: Mutex<BTreeMap<(String, &'static str), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
}

impl ClientMetrics {
    pub fn record(&self, destination: &str, outcome: &'static str, took: Option<Duration>) {
        if let Ok(mut requests) = self.requests.lock() {
            *requests.entry((destination.to_owned(), outcome)).or_default() += 1;
        }
        if let (Some(took), Ok(mut latency)) = (took, self.latency.lock()) {
            latency
                .entry(destination.to_owned())
                .or_insert_with(|| Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.000_05, 2.0, 17)))
                .observe(took.as_secs_f64());
        }
    }

    /// Requests so far, by destination and outcome.
    pub fn requests(&self) -> Vec<((String, &'static str), u64)> {
        self.requests.lock().map(|r| r.iter().map(|(k, v)| (k.clone(), *v)).collect()).unwrap_or_default()
    }

    /// The latency histograms, by destination (cloned: a histogram shares
    /// its storage with its clones).
    pub fn latency(&self) -> Vec<(String, Histogram)> {
        self.latency.lock().map(|l| l.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default()
    }
}

//! The plugin's own metrics: counters, gauges and histograms with labels,
//! exported on the host's `/metrics` as `sluice_plugin_<name>` with the
//! pipeline and plugin as labels (a counter gets `_total`).
//!
//! ```no_run
//! use sluice_plugin::{metrics, Event, HandlerError, Output};
//!
//! fn handle(event: Event) -> Result<Vec<Output>, HandlerError> {
//!     let sku = event.payload_str()?;
//!     metrics::counter("orders", &[("sku", sku)]).add(1);
//!     metrics::histogram("order_bytes", &[]).observe(event.payload.len() as f64);
//!     metrics::gauge("last_order_size", &[]).set(event.payload.len() as f64);
//!     Ok(vec![Output::new(sku)])
//! }
//! ```
//!
//! No capability is needed and recording never fails the event. The host's
//! rules (docs/plugins/README.md, "Metrics"):
//!
//! - Names and label names are `[a-zA-Z_][a-zA-Z0-9_]*`. A call with an
//!   invalid name, a name already used with another kind, or invalid labels
//!   is dropped, counted in `sluice_plugin_metric_drops_total`, and
//!   reported once in the host's log.
//! - Each metric keeps at most `plugin.metrics.max_series` label sets
//!   (100 by default); further label sets are folded into one series whose
//!   labels all read `other`, counted in
//!   `sluice_plugin_metric_series_folded_total`. Label by a bounded set
//!   (status, SKU class, destination), never by an id.
//! - A value is recorded when you call, not when the event succeeds: a
//!   failed attempt's values stay, since they describe work that was done.
//! - Histograms use the host's buckets: exponential from 0.001 to ~16 777
//!   (seconds or sizes alike).
//!
//! Outside a component (native unit tests of a plugin) the values are kept
//! in memory per test thread, read back with [`counter_value`],
//! [`gauge_value`] and [`histogram_count`] and emptied with [`clear`].

/// Adds `value` to counter `name` with `labels`.
pub fn counter_add(name: &str, labels: &[(&str, &str)], value: u64) {
    imp::counter_add(name, labels, value);
}

/// Sets gauge `name` with `labels` to `value`.
pub fn gauge_set(name: &str, labels: &[(&str, &str)], value: f64) {
    imp::gauge_set(name, labels, value);
}

/// Records `value` in histogram `name` with `labels`.
pub fn histogram_observe(name: &str, labels: &[(&str, &str)], value: f64) {
    imp::histogram_observe(name, labels, value);
}

/// Counter `name` with `labels`: `counter("orders", &[("sku", sku)]).add(1)`.
pub fn counter<'a>(name: &'a str, labels: &'a [(&'a str, &'a str)]) -> Counter<'a> {
    Counter { name, labels }
}

/// Gauge `name` with `labels`: `gauge("queue_depth", &[]).set(3.0)`.
pub fn gauge<'a>(name: &'a str, labels: &'a [(&'a str, &'a str)]) -> Gauge<'a> {
    Gauge { name, labels }
}

/// Histogram `name` with `labels`: `histogram("latency_seconds", &[]).observe(0.2)`.
pub fn histogram<'a>(name: &'a str, labels: &'a [(&'a str, &'a str)]) -> Histogram<'a> {
    Histogram { name, labels }
}

/// A counter series: a name and its labels. Only ever goes up.
#[derive(Debug, Clone, Copy)]
pub struct Counter<'a> {
    name: &'a str,
    labels: &'a [(&'a str, &'a str)],
}

impl Counter<'_> {
    /// Adds `value`.
    pub fn add(self, value: u64) {
        counter_add(self.name, self.labels, value);
    }

    /// Adds one.
    pub fn inc(self) {
        self.add(1);
    }
}

/// A gauge series: a value that goes up and down.
#[derive(Debug, Clone, Copy)]
pub struct Gauge<'a> {
    name: &'a str,
    labels: &'a [(&'a str, &'a str)],
}

impl Gauge<'_> {
    /// Sets the value (NaN and infinities are dropped by the host).
    pub fn set(self, value: f64) {
        gauge_set(self.name, self.labels, value);
    }
}

/// A histogram series: a distribution of observed values.
#[derive(Debug, Clone, Copy)]
pub struct Histogram<'a> {
    name: &'a str,
    labels: &'a [(&'a str, &'a str)],
}

impl Histogram<'_> {
    /// Records one observation (NaN and infinities are dropped by the host).
    pub fn observe(self, value: f64) {
        histogram_observe(self.name, self.labels, value);
    }

    /// Records the time `f` takes, in seconds, and returns what it returns.
    /// Uses the monotonic clock WASI always grants.
    pub fn time<T>(self, f: impl FnOnce() -> T) -> T {
        let started = std::time::Instant::now();
        let out = f();
        self.observe(started.elapsed().as_secs_f64());
        out
    }
}

/// The native value of counter `name` with `labels` (in any order), 0 when
/// never recorded. Only outside a component, for plugin unit tests.
#[cfg(not(target_arch = "wasm32"))]
pub fn counter_value(name: &str, labels: &[(&str, &str)]) -> u64 {
    imp::read(name, labels, |v| match v {
        imp::Value::Counter(n) => Some(*n),
        _ => None,
    })
    .unwrap_or(0)
}

/// The native value of gauge `name` with `labels`, if set. Only outside a
/// component.
#[cfg(not(target_arch = "wasm32"))]
pub fn gauge_value(name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    imp::read(name, labels, |v| match v {
        imp::Value::Gauge(g) => Some(*g),
        _ => None,
    })
}

/// How many observations histogram `name` with `labels` has natively.
/// Only outside a component.
#[cfg(not(target_arch = "wasm32"))]
pub fn histogram_count(name: &str, labels: &[(&str, &str)]) -> u64 {
    imp::read(name, labels, |v| match v {
        imp::Value::Histogram(observed) => Some(observed.len() as u64),
        _ => None,
    })
    .unwrap_or(0)
}

/// Forgets the native values of this thread (no effect in a component).
pub fn clear() {
    #[cfg(not(target_arch = "wasm32"))]
    imp::clear();
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use crate::bindings::sluice::plugin::metrics as host;

    fn owned(labels: &[(&str, &str)]) -> Vec<(String, String)> {
        labels.iter().map(|&(k, v)| (k.to_owned(), v.to_owned())).collect()
    }

    pub fn counter_add(name: &str, labels: &[(&str, &str)], value: u64) {
        host::counter_add(name, &owned(labels), value);
    }
    pub fn gauge_set(name: &str, labels: &[(&str, &str)], value: f64) {
        host::gauge_set(name, &owned(labels), value);
    }
    pub fn histogram_observe(name: &str, labels: &[(&str, &str)], value: f64) {
        host::histogram_observe(name, &owned(labels), value);
    }
}

/// The native stand-in: values per test thread, keyed by name and sorted
/// labels. No validation: the host's rules are tested in the host.
#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    pub enum Value {
        Counter(u64),
        Gauge(f64),
        Histogram(Vec<f64>),
    }

    type Key = (String, Vec<(String, String)>);

    thread_local! {
        static VALUES: RefCell<BTreeMap<Key, Value>> = const { RefCell::new(BTreeMap::new()) };
    }

    fn key(name: &str, labels: &[(&str, &str)]) -> Key {
        let mut labels: Vec<(String, String)> = labels.iter().map(|&(k, v)| (k.to_owned(), v.to_owned())).collect();
        labels.sort();
        (name.to_owned(), labels)
    }

    fn update(name: &str, labels: &[(&str, &str)], fresh: Value, f: impl FnOnce(&mut Value)) {
        VALUES.with(|values| f(values.borrow_mut().entry(key(name, labels)).or_insert(fresh)));
    }

    pub fn counter_add(name: &str, labels: &[(&str, &str)], value: u64) {
        update(name, labels, Value::Counter(0), |v| {
            if let Value::Counter(n) = v {
                *n = n.saturating_add(value);
            }
        });
    }
    pub fn gauge_set(name: &str, labels: &[(&str, &str)], value: f64) {
        update(name, labels, Value::Gauge(0.0), |v| {
            if let Value::Gauge(g) = v {
                *g = value;
            }
        });
    }
    pub fn histogram_observe(name: &str, labels: &[(&str, &str)], value: f64) {
        update(name, labels, Value::Histogram(Vec::new()), |v| {
            if let Value::Histogram(observed) = v {
                observed.push(value);
            }
        });
    }
    pub fn read<T>(name: &str, labels: &[(&str, &str)], f: impl FnOnce(&Value) -> Option<T>) -> Option<T> {
        VALUES.with(|values| values.borrow().get(&key(name, labels)).and_then(f))
    }
    pub fn clear() {
        VALUES.with(|values| values.borrow_mut().clear());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_kept_per_name_and_label_set() {
        clear();
        counter("orders", &[("sku", "a"), ("shop", "x")]).add(2);
        counter("orders", &[("shop", "x"), ("sku", "a")]).inc();
        counter("orders", &[("sku", "b")]).inc();
        gauge("depth", &[]).set(4.5);
        histogram("bytes", &[]).observe(10.0);
        let doubled = histogram("seconds", &[]).time(|| 2 * 21);
        assert_eq!(doubled, 42);
        assert_eq!(counter_value("orders", &[("sku", "a"), ("shop", "x")]), 3);
        assert_eq!(counter_value("orders", &[("sku", "b")]), 1);
        assert_eq!(counter_value("orders", &[]), 0);
        assert_eq!(gauge_value("depth", &[]), Some(4.5));
        assert_eq!(histogram_count("bytes", &[]), 1);
        assert_eq!(histogram_count("seconds", &[]), 1);
        clear();
        assert_eq!(counter_value("orders", &[("sku", "b")]), 0);
    }
}

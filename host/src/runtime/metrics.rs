//! The `metrics` import (`sluice:plugin/metrics@0.2.0`): counters, gauges
//! and histograms a plugin records, kept per pipeline and rendered on the
//! host's `/metrics` as `sluice_plugin_<name>` with `pipeline` and `plugin`
//! labels before the plugin's own.
//!
//! The registry ([`PluginMetrics`]) belongs to the pipeline, not to an
//! instance: every instance of every version of the pipeline's plugin
//! records into the same one, so values survive a trap (a fresh instance),
//! a hot reload and a restart after failure. A value is recorded when the
//! guest calls, not when the event concludes: a failed attempt's values
//! stay, since they describe work that was done.
//!
//! What a guest names is untrusted, so everything is bounded: the number of
//! metrics per pipeline ([`MetricsLimits::max_metrics`]), the label sets per
//! metric ([`MetricsLimits::max_series`], the excess folded into one series
//! whose labels all read `other`, and counted), the labels per series and
//! the length of a label value. A call that breaks a rule is dropped,
//! counted by reason, and reported once in the host's log; it never fails
//! the event.
//!
//! The hot path is a read lock on the pipeline's name map and the lock of
//! one metric: recording into an existing series allocates nothing.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelSetEncoder, LabelValueEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use serde::Deserialize;

use super::bindings::current::metrics as wit;
use super::instance::PluginState;

/// The prefix of every plugin metric's name on `/metrics`.
pub const PREFIX: &str = "sluice_plugin_";

/// Labels per series a plugin may use. Each label multiplies what a series
/// costs to keep and to scrape; ten is more than a useful metric needs.
pub const MAX_LABELS: usize = 10;

/// Bytes of one label value. Long values (URLs, messages) are what makes a
/// metric's cardinality explode; an identifier fits.
pub const MAX_LABEL_VALUE: usize = 256;

/// Characters of a metric or label name.
pub const MAX_NAME: usize = 100;

/// Upper bounds of the histogram buckets: exponential from 0.001 by
/// doubling, the last ~16 777 (seconds from a millisecond to hours, sizes
/// from bytes to kilobytes alike), then `+Inf`. The WIT promises these.
const BUCKETS: usize = 25;

/// The plugin metrics caps of a pipeline (`[pipelines.<name>.plugin.metrics]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsLimits {
    /// Label sets kept per metric; a new label set past this is folded into
    /// the metric's `other` series. 100 bounds a pipeline's plugin series to
    /// ~`max_metrics` × 100 while leaving room for a label per SKU class,
    /// status code or destination.
    #[serde(default = "default_max_series")]
    pub max_series: usize,
    /// Metric names a pipeline's plugin may use; a call naming one more is
    /// dropped. 50 is several times what a handler records in practice.
    #[serde(default = "default_max_metrics")]
    pub max_metrics: usize,
}

fn default_max_series() -> usize {
    100
}

fn default_max_metrics() -> usize {
    50
}

impl Default for MetricsLimits {
    fn default() -> Self {
        Self { max_series: default_max_series(), max_metrics: default_max_metrics() }
    }
}

/// The three kinds a plugin may record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }

    /// The sample names a family of this kind writes, without the prefix:
    /// two families whose samples share a name cannot both be rendered.
    fn samples(self, name: &str) -> Vec<String> {
        match self {
            Kind::Counter => vec![format!("{name}_total"), name.to_owned()],
            Kind::Gauge => vec![name.to_owned()],
            Kind::Histogram => vec![name.to_owned(), format!("{name}_bucket"), format!("{name}_count"), format!("{name}_sum")],
        }
    }
}

/// Why a call was dropped (the `reason` label of
/// `sluice_plugin_metric_drops_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The name is not `[a-zA-Z_][a-zA-Z0-9_]*` (at most [`MAX_NAME`]), or
    /// it would render onto a host metric or another plugin metric.
    InvalidName,
    /// The name is already a metric of another kind.
    KindClash,
    /// The pipeline already has `max_metrics` metrics.
    TooManyMetrics,
    /// A label name is invalid, reserved or repeated, a value is too long,
    /// or there are too many labels.
    InvalidLabels,
    /// A gauge or histogram value that is NaN or infinite.
    InvalidValue,
}

impl DropReason {
    pub const ALL: [DropReason; 5] =
        [DropReason::InvalidName, DropReason::KindClash, DropReason::TooManyMetrics, DropReason::InvalidLabels, DropReason::InvalidValue];

    pub fn label(self) -> &'static str {
        match self {
            DropReason::InvalidName => "invalid_name",
            DropReason::KindClash => "kind_clash",
            DropReason::TooManyMetrics => "too_many_metrics",
            DropReason::InvalidLabels => "invalid_labels",
            DropReason::InvalidValue => "invalid_value",
        }
    }
}

/// What became of one call.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Recorded,
    /// Recorded into the metric's `other` series; `first` for the first
    /// fold of this metric (worth a log line).
    Folded {
        first: bool,
    },
    /// Not recorded; `report` carries the explanation the first time this
    /// problem is seen for this metric (`None` after that).
    Dropped {
        reason: DropReason,
        report: Option<String>,
    },
}

/// The plugin metrics of one pipeline. Cheap to clone; every instance of
/// the pipeline's plugin holds one.
#[derive(Clone, Default)]
pub struct PluginMetrics(Arc<Registry>);

impl std::fmt::Debug for PluginMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginMetrics").field("metrics", &self.names().len()).finish()
    }
}

#[derive(Default)]
struct Registry {
    max_series: AtomicUsize,
    max_metrics: AtomicUsize,
    families: RwLock<Families>,
    /// Problems already reported (reason, metric), bounded by
    /// [`MAX_REPORTED`]; the counters keep counting past it.
    reported: Mutex<HashSet<(DropReason, String)>>,
    drops: [AtomicU64; DropReason::ALL.len()],
}

/// The maps' hasher: foldhash, seeded per map. Their keys come from the
/// guest, but the maps are capped (`max_metrics`, `max_series`), so
/// flooding one costs a guest nothing it could not do anyway; SipHash made
/// a recording ~a third slower.
type Hasher = foldhash::fast::RandomState;

/// Distinct problems logged per pipeline. A guest making up names in a
/// loop would otherwise fill the log and this set.
const MAX_REPORTED: usize = 200;

#[derive(Default)]
struct Families {
    by_name: HashMap<String, Arc<Family>, Hasher>,
    /// The sample names the families write (see [`Kind::samples`]).
    samples: HashSet<String>,
}

struct Family {
    kind: Kind,
    series: Mutex<SeriesSet>,
    /// Calls folded into `other`.
    folded: AtomicU64,
}

#[derive(Default)]
struct SeriesSet {
    /// Label sets, sorted by label name, to values.
    by_labels: HashMap<Vec<(String, String)>, Value, Hasher>,
    /// The series past `max_series` fold into: the label names of the
    /// first folded call, each with the value `other`.
    other: Option<(Vec<(String, String)>, Value)>,
}

impl SeriesSet {
    /// Every series, sorted by labels, then the `other` one: the order
    /// `/metrics` and `plugin test` show them in.
    fn rows(&self) -> Vec<(&Vec<(String, String)>, &Value)> {
        let mut rows: Vec<(&Vec<(String, String)>, &Value)> = self.by_labels.iter().collect();
        rows.sort_by(|a, b| a.0.cmp(b.0));
        rows.extend(self.other.as_ref().map(|(labels, value)| (labels, value)));
        rows
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Value {
    Counter(u64),
    Gauge(f64),
    Histogram(Box<Histogram>),
}

#[derive(Clone, Debug, PartialEq, Default)]
struct Histogram {
    /// Per bucket (not cumulative), the last for `+Inf`.
    counts: [u64; BUCKETS + 1],
    sum: f64,
    count: u64,
}

/// The buckets' upper bounds (`le`), computed once at compile time.
const BOUNDS: [f64; BUCKETS] = {
    let mut bounds = [0.0; BUCKETS];
    let mut i = 0;
    while i < BUCKETS {
        bounds[i] = 0.001 * (1u64 << i) as f64;
        i += 1;
    }
    bounds
};

impl Histogram {
    fn observe(&mut self, value: f64) {
        // The first bucket whose bound is at least `value`; BUCKETS (`+Inf`)
        // past the last.
        let bucket = BOUNDS.partition_point(|bound| *bound < value);
        if let Some(count) = self.counts.get_mut(bucket) {
            *count += 1;
        }
        self.sum += value;
        self.count += 1;
    }

    fn buckets(&self) -> [(f64, u64); BUCKETS + 1] {
        let mut out = [(f64::MAX, 0); BUCKETS + 1];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = (BOUNDS.get(i).copied().unwrap_or(f64::MAX), self.counts[i]);
        }
        out
    }
}

/// One recording, as the guest made it.
#[derive(Debug, Clone, Copy)]
enum Sample {
    Add(u64),
    Set(f64),
    Observe(f64),
}

impl Sample {
    fn kind(self) -> Kind {
        match self {
            Sample::Add(_) => Kind::Counter,
            Sample::Set(_) => Kind::Gauge,
            Sample::Observe(_) => Kind::Histogram,
        }
    }

    fn fresh(self) -> Value {
        match self {
            Sample::Add(_) => Value::Counter(0),
            Sample::Set(_) => Value::Gauge(0.0),
            Sample::Observe(_) => Value::Histogram(Box::default()),
        }
    }

    fn apply(self, value: &mut Value) {
        match (self, value) {
            (Sample::Add(n), Value::Counter(total)) => *total = total.saturating_add(n),
            (Sample::Set(v), Value::Gauge(gauge)) => *gauge = v,
            (Sample::Observe(v), Value::Histogram(histogram)) => histogram.observe(v),
            // The family's kind was checked before: a sample always meets
            // a value of its kind.
            _ => {}
        }
    }
}

/// Host metric families that start with [`PREFIX`]: a plugin metric may
/// not render onto them.
const HOST_FAMILIES: [(&str, Kind); 8] = [
    ("calls", Kind::Counter),
    ("reloads", Kind::Counter),
    ("reload_rejections", Kind::Counter),
    ("memory_bytes", Kind::Gauge),
    ("memory_peak_bytes", Kind::Gauge),
    ("call_duration_seconds", Kind::Histogram),
    ("metric_series_folded", Kind::Counter),
    ("metric_drops", Kind::Counter),
];

impl PluginMetrics {
    /// An empty registry under `limits`.
    pub fn new(limits: MetricsLimits) -> Self {
        let metrics = Self::default();
        metrics.set_limits(limits);
        metrics
    }

    /// Applies new caps (a config reload). Series and metrics already kept
    /// stay; the caps apply to new ones.
    pub fn set_limits(&self, limits: MetricsLimits) {
        self.0.max_series.store(limits.max_series, Ordering::Relaxed);
        self.0.max_metrics.store(limits.max_metrics, Ordering::Relaxed);
    }

    /// The caps in force.
    pub fn limits(&self) -> MetricsLimits {
        MetricsLimits { max_series: self.0.max_series.load(Ordering::Relaxed), max_metrics: self.0.max_metrics.load(Ordering::Relaxed) }
    }

    /// Adds `value` to counter `name`.
    pub fn counter_add(&self, name: &str, labels: Vec<(String, String)>, value: u64) -> Outcome {
        self.record(name, labels, Sample::Add(value))
    }

    /// Sets gauge `name`.
    pub fn gauge_set(&self, name: &str, labels: Vec<(String, String)>, value: f64) -> Outcome {
        self.record(name, labels, Sample::Set(value))
    }

    /// Records one observation in histogram `name`.
    pub fn histogram_observe(&self, name: &str, labels: Vec<(String, String)>, value: f64) -> Outcome {
        self.record(name, labels, Sample::Observe(value))
    }

    fn record(&self, name: &str, mut labels: Vec<(String, String)>, sample: Sample) -> Outcome {
        if let Sample::Set(v) | Sample::Observe(v) = sample {
            if !v.is_finite() {
                return self
                    .dropped(DropReason::InvalidValue, name, || format!("a {} value of {v} (not a finite number)", sample.kind().label()));
            }
        }
        // One series per label set whatever the order the guest lists them in.
        if !labels.is_sorted_by(|a, b| a.0 <= b.0) {
            labels.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        }
        // The usual case, a metric met before: recorded under the read lock
        // of the name map, with no reference count to touch.
        if let Ok(families) = self.0.families.read() {
            if let Some(family) = families.by_name.get(name) {
                if family.kind == sample.kind() {
                    return self.record_into(family, name, labels, sample);
                }
            }
        }
        match self.family(name, sample.kind()) {
            Ok(family) => self.record_into(&family, name, labels, sample),
            Err((reason, detail)) => self.dropped(reason, name, || detail),
        }
    }

    /// Records into `family`: its series for `labels`, a new one while
    /// under `max_series`, or else the `other` series.
    fn record_into(&self, family: &Family, name: &str, labels: Vec<(String, String)>, sample: Sample) -> Outcome {
        let max_series = self.0.max_series.load(Ordering::Relaxed);
        let mut series = match family.series.lock() {
            Ok(series) => series,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(value) = series.by_labels.get_mut(labels.as_slice()) {
            sample.apply(value);
            return Outcome::Recorded;
        }
        if let Err(detail) = check_labels(&labels, sample.kind()) {
            drop(series);
            return self.dropped(DropReason::InvalidLabels, name, || detail);
        }
        if series.by_labels.len() < max_series {
            let mut value = sample.fresh();
            sample.apply(&mut value);
            series.by_labels.insert(labels, value);
            return Outcome::Recorded;
        }
        let first = series.other.is_none();
        let (_, value) = series.other.get_or_insert_with(|| {
            let folded = labels.into_iter().map(|(k, _)| (k, "other".to_owned())).collect();
            (folded, sample.fresh())
        });
        sample.apply(value);
        family.folded.fetch_add(1, Ordering::Relaxed);
        Outcome::Folded { first }
    }

    /// The family `name`, made on first use when the name is valid, free
    /// and under the cap.
    fn family(&self, name: &str, kind: Kind) -> Result<Arc<Family>, (DropReason, String)> {
        let clash = |family: &Family| {
            (DropReason::KindClash, format!("`{name}` is a {}; recording it as a {} is dropped", family.kind.label(), kind.label()))
        };
        {
            let families = self.0.families.read().map_err(|_| (DropReason::InvalidName, "registry poisoned".to_owned()))?;
            if let Some(family) = families.by_name.get(name) {
                return if family.kind == kind { Ok(family.clone()) } else { Err(clash(family)) };
            }
        }
        check_name(name).map_err(|detail| (DropReason::InvalidName, detail))?;
        let mut families = self.0.families.write().map_err(|_| (DropReason::InvalidName, "registry poisoned".to_owned()))?;
        if let Some(family) = families.by_name.get(name) {
            return if family.kind == kind { Ok(family.clone()) } else { Err(clash(family)) };
        }
        let max_metrics = self.0.max_metrics.load(Ordering::Relaxed);
        if families.by_name.len() >= max_metrics {
            return Err((
                DropReason::TooManyMetrics,
                format!("the pipeline's plugin already has {max_metrics} metrics (plugin.metrics.max_metrics)"),
            ));
        }
        let samples = kind.samples(name);
        let taken = |sample: &String| families.samples.contains(sample) || host_samples().any(|s| &s == sample);
        if let Some(sample) = samples.iter().find(|s| taken(s)) {
            return Err((
                DropReason::InvalidName,
                format!("`{PREFIX}{name}` as a {} would write `{PREFIX}{sample}`, which another metric writes", kind.label()),
            ));
        }
        families.samples.extend(samples);
        let family = Arc::new(Family { kind, series: Mutex::new(SeriesSet::default()), folded: AtomicU64::new(0) });
        families.by_name.insert(name.to_owned(), family.clone());
        Ok(family)
    }

    fn dropped(&self, reason: DropReason, name: &str, detail: impl FnOnce() -> String) -> Outcome {
        if let Some(counter) = DropReason::ALL.iter().position(|r| *r == reason).and_then(|i| self.0.drops.get(i)) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        let report = match self.0.reported.lock() {
            Ok(mut reported) if reported.len() < MAX_REPORTED => {
                // Bounded: a name is at most what the guest sent, and the set
                // at most MAX_REPORTED entries.
                let key = (reason, name.chars().take(MAX_NAME + 1).collect::<String>());
                reported.insert(key).then(detail)
            }
            _ => None,
        };
        Outcome::Dropped { reason, report }
    }

    /// The metric names recorded so far, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = match self.0.families.read() {
            Ok(families) => families.by_name.keys().cloned().collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        names
    }

    /// Calls dropped for `reason` so far.
    pub fn drops(&self, reason: DropReason) -> u64 {
        DropReason::ALL.iter().position(|r| *r == reason).and_then(|i| self.0.drops.get(i)).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Calls folded into `other` for each metric that folded any, sorted.
    pub fn folded(&self) -> Vec<(String, u64)> {
        let mut folded: Vec<(String, u64)> = match self.0.families.read() {
            Ok(families) => families
                .by_name
                .iter()
                .map(|(name, family)| (name.clone(), family.folded.load(Ordering::Relaxed)))
                .filter(|(_, n)| *n > 0)
                .collect(),
            Err(_) => Vec::new(),
        };
        folded.sort();
        folded
    }

    /// Every series recorded so far, one line each, as `plugin test`
    /// prints them: `sluice_plugin_events_total{tag="a"} 3` (counters),
    /// `… 1.5` (gauges), `… count=2 sum=11` (histograms: buckets would
    /// bury the figures), sorted by name and labels; then a line per metric
    /// that folded calls into `other` and per drop reason that dropped any.
    /// Without the `pipeline` and `plugin` labels `/metrics` adds.
    pub fn summary(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for (name, family) in self.families_sorted() {
            let series = match family.series.lock() {
                Ok(series) => series,
                Err(poisoned) => poisoned.into_inner(),
            };
            for (labels, value) in series.rows() {
                let labels = match labels.is_empty() {
                    true => String::new(),
                    false => format!("{{{}}}", labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect::<Vec<_>>().join(",")),
                };
                lines.push(match value {
                    Value::Counter(n) => format!("{PREFIX}{name}_total{labels} {n}"),
                    Value::Gauge(v) => format!("{PREFIX}{name}{labels} {v}"),
                    Value::Histogram(h) => format!("{PREFIX}{name}{labels} count={} sum={}", h.count, h.sum),
                });
            }
        }
        for (name, n) in self.folded() {
            lines.push(format!("{n} call(s) to {PREFIX}{name} folded into its `other` series (plugin.metrics.max_series)"));
        }
        for reason in DropReason::ALL {
            let n = self.drops(reason);
            if n > 0 {
                lines.push(format!("{n} call(s) dropped: {} (see the log)", reason.label()));
            }
        }
        lines
    }

    fn families_sorted(&self) -> Vec<(String, Arc<Family>)> {
        let mut families: Vec<(String, Arc<Family>)> = match self.0.families.read() {
            Ok(families) => families.by_name.iter().map(|(n, f)| (n.clone(), f.clone())).collect(),
            Err(_) => Vec::new(),
        };
        families.sort_by(|a, b| a.0.cmp(&b.0));
        families
    }
}

fn host_samples() -> impl Iterator<Item = String> {
    HOST_FAMILIES.into_iter().flat_map(|(name, kind)| kind.samples(name))
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, at most [`MAX_NAME`] characters.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= MAX_NAME
}

fn check_name(name: &str) -> Result<(), String> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(format!(
            "metric name {:?} is not [a-zA-Z_][a-zA-Z0-9_]* of at most {MAX_NAME} characters",
            name.chars().take(MAX_NAME).collect::<String>()
        ))
    }
}

/// Checks a new series' labels (sorted by name).
fn check_labels(labels: &[(String, String)], kind: Kind) -> Result<(), String> {
    if labels.len() > MAX_LABELS {
        return Err(format!("{} labels; at most {MAX_LABELS}", labels.len()));
    }
    for (i, (key, value)) in labels.iter().enumerate() {
        let shown = || key.chars().take(MAX_NAME).collect::<String>();
        if !valid_name(key) || key.starts_with("__") {
            return Err(format!("label name {:?} is not [a-zA-Z_][a-zA-Z0-9_]* (nor starting with `__`)", shown()));
        }
        if key == "pipeline" || key == "plugin" || (kind == Kind::Histogram && key == "le") {
            return Err(format!("label name `{key}` is the host's"));
        }
        if i > 0 && labels[i - 1].0 == *key {
            return Err(format!("label `{key}` is given twice"));
        }
        if value.len() > MAX_LABEL_VALUE {
            return Err(format!("the value of label `{key}` has {} bytes; at most {MAX_LABEL_VALUE}", value.len()));
        }
    }
    Ok(())
}

/// A label value as the exposition format needs it: backslash, double
/// quote and line feed escaped (prometheus-client writes values as given).
struct Escaped<'a>(&'a str);

impl EncodeLabelValue for Escaped<'_> {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// The host's labels, then the plugin's.
struct SeriesLabels<'a> {
    pipeline: &'a str,
    plugin: &'a str,
    labels: &'a [(String, String)],
}

impl EncodeLabelSet for SeriesLabels<'_> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        let host = [("pipeline", Escaped(self.pipeline)), ("plugin", Escaped(self.plugin))];
        let guest: Vec<(&str, Escaped)> = self.labels.iter().map(|(k, v)| (k.as_str(), Escaped(v))).collect();
        (host.as_slice(), guest.as_slice()).encode(encoder)
    }
}

/// One pipeline's plugin metrics, for rendering.
pub struct Source<'a> {
    pub pipeline: &'a str,
    pub plugin: &'a str,
    pub metrics: &'a PluginMetrics,
}

/// Writes every pipeline's plugin metrics, then the folded and dropped
/// counts. Pipelines using one name with the same kind share its family;
/// a name two pipelines use with different kinds (or whose samples would
/// collide across pipelines) is written for the first pipeline in name
/// order only.
pub fn encode(encoder: &mut DescriptorEncoder, sources: &[Source<'_>]) -> Result<(), std::fmt::Error> {
    let mut by_name: std::collections::BTreeMap<String, Vec<(&Source<'_>, Arc<Family>)>> = Default::default();
    for source in sources {
        for (name, family) in source.metrics.families_sorted() {
            by_name.entry(name).or_default().push((source, family));
        }
    }
    let mut taken: HashSet<String> = host_samples().collect();
    for (name, members) in &by_name {
        let Some(kind) = members.first().map(|(_, f)| f.kind) else { continue };
        let samples = kind.samples(name);
        if samples.iter().any(|s| taken.contains(s)) {
            continue;
        }
        taken.extend(samples);
        let full = format!("{PREFIX}{name}");
        let help = format!("Recorded by the plugin ({} `{name}`).", kind.label());
        let metric_type = match kind {
            Kind::Counter => MetricType::Counter,
            Kind::Gauge => MetricType::Gauge,
            Kind::Histogram => MetricType::Histogram,
        };
        let mut metric = encoder.encode_descriptor(&full, &help, None, metric_type)?;
        for (source, family) in members.iter().filter(|(_, f)| f.kind == kind) {
            let series = match family.series.lock() {
                Ok(series) => series,
                Err(poisoned) => poisoned.into_inner(),
            };
            for (labels, value) in series.rows() {
                let labels = SeriesLabels { pipeline: source.pipeline, plugin: source.plugin, labels };
                let family_encoder = metric.encode_family(&labels)?;
                match value {
                    Value::Counter(n) => ConstCounter::new(*n).encode(family_encoder)?,
                    Value::Gauge(v) => ConstGauge::new(*v).encode(family_encoder)?,
                    Value::Histogram(h) => {
                        let mut family_encoder = family_encoder;
                        family_encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(h.sum, h.count, &h.buckets(), None)?
                    }
                }
            }
        }
    }
    let mut folded = encoder.encode_descriptor(
        "sluice_plugin_metric_series_folded",
        "Plugin metric recordings folded into the metric's `other` series (the metric had plugin.metrics.max_series label sets).",
        None,
        MetricType::Counter,
    )?;
    for source in sources {
        for (name, n) in source.metrics.folded() {
            ConstCounter::new(n).encode(folded.encode_family(&[("pipeline", Escaped(source.pipeline)), ("metric", Escaped(&name))])?)?;
        }
    }
    let mut drops = encoder.encode_descriptor(
        "sluice_plugin_metric_drops",
        "Plugin metric recordings dropped, by reason: invalid_name, kind_clash, too_many_metrics, invalid_labels, invalid_value.",
        None,
        MetricType::Counter,
    )?;
    for source in sources {
        for reason in DropReason::ALL {
            let n = source.metrics.drops(reason);
            ConstCounter::new(n)
                .encode(drops.encode_family(&[("pipeline", Escaped(source.pipeline)), ("reason", Escaped(reason.label()))])?)?;
        }
    }
    Ok(())
}

impl PluginState {
    /// Reports a dropped or first folded call in the host's log, once.
    fn report_metric(&self, name: &str, outcome: Outcome) {
        let pipeline = &self.log.pipeline;
        let plugin = &self.log.plugin;
        match outcome {
            Outcome::Recorded | Outcome::Folded { first: false } | Outcome::Dropped { report: None, .. } => {}
            Outcome::Folded { first: true } => tracing::warn!(
                target: "sluice::guest",
                %pipeline,
                %plugin,
                metric = name,
                max_series = self.metrics.limits().max_series,
                "plugin metric reached its label set cap: new label sets are folded into one series labelled `other` (counted in sluice_plugin_metric_series_folded_total)"
            ),
            Outcome::Dropped { reason, report: Some(detail) } => tracing::warn!(
                target: "sluice::guest",
                %pipeline,
                %plugin,
                reason = reason.label(),
                "plugin metric recording dropped (reported once; counted in sluice_plugin_metric_drops_total): {detail}"
            ),
        }
    }
}

impl wit::Host for PluginState {
    fn counter_add(&mut self, name: String, labels: Vec<(String, String)>, value: u64) {
        let outcome = self.metrics.counter_add(&name, labels, value);
        self.report_metric(&name, outcome);
    }

    fn gauge_set(&mut self, name: String, labels: Vec<(String, String)>, value: f64) {
        let outcome = self.metrics.gauge_set(&name, labels, value);
        self.report_metric(&name, outcome);
    }

    fn histogram_observe(&mut self, name: String, labels: Vec<(String, String)>, value: f64) {
        let outcome = self.metrics.histogram_observe(&name, labels, value);
        self.report_metric(&name, outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn render(metrics: &PluginMetrics) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(Collector(metrics.clone())));
        let mut out = String::new();
        assert!(prometheus_client::encoding::text::encode(&mut out, &registry).is_ok());
        out
    }

    #[derive(Debug)]
    struct Collector(PluginMetrics);

    impl prometheus_client::collector::Collector for Collector {
        fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            encode(&mut encoder, &[Source { pipeline: "p", plugin: "counter", metrics: &self.0 }])
        }
    }

    #[test]
    fn the_summary_has_a_line_per_series_then_folds_and_drops() {
        let m = PluginMetrics::new(MetricsLimits { max_series: 1, max_metrics: 50 });
        m.counter_add("orders", labels(&[("sku", "a\"1")]), 2);
        m.counter_add("orders", labels(&[("sku", "b")]), 1);
        m.gauge_set("depth", vec![], 1.5);
        m.histogram_observe("bytes", vec![], 5.0);
        m.histogram_observe("bytes", vec![], 6.0);
        m.counter_add("bad-name", vec![], 1);
        assert_eq!(
            m.summary(),
            [
                "sluice_plugin_bytes count=2 sum=11",
                "sluice_plugin_depth 1.5",
                r#"sluice_plugin_orders_total{sku="a\"1"} 2"#,
                r#"sluice_plugin_orders_total{sku="other"} 1"#,
                "1 call(s) to sluice_plugin_orders folded into its `other` series (plugin.metrics.max_series)",
                "1 call(s) dropped: invalid_name (see the log)",
            ]
        );
        assert!(PluginMetrics::default().summary().is_empty());
    }

    #[test]
    fn names_follow_the_prometheus_rule() {
        for good in ["a", "_", "orders", "Orders_2", "_x9"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", "9a", "a-b", "a.b", "é", "a b", &"x".repeat(MAX_NAME + 1)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn counters_gauges_and_histograms_render_with_host_labels() {
        let m = PluginMetrics::new(MetricsLimits::default());
        assert_eq!(m.counter_add("orders", labels(&[("sku", "a")]), 2), Outcome::Recorded);
        assert_eq!(m.counter_add("orders", labels(&[("sku", "a")]), 3), Outcome::Recorded);
        assert_eq!(m.gauge_set("queue_depth", vec![], 7.5), Outcome::Recorded);
        m.histogram_observe("size_bytes", vec![], 0.0015);
        m.histogram_observe("size_bytes", vec![], 20_000.0);
        let text = render(&m);
        assert!(text.contains("# TYPE sluice_plugin_orders counter"), "{text}");
        assert!(text.contains("sluice_plugin_orders_total{pipeline=\"p\",plugin=\"counter\",sku=\"a\"} 5"), "{text}");
        assert!(text.contains("sluice_plugin_queue_depth{pipeline=\"p\",plugin=\"counter\"} 7.5"), "{text}");
        assert!(text.contains("sluice_plugin_size_bytes_count{pipeline=\"p\",plugin=\"counter\"} 2"), "{text}");
        assert!(text.contains("sluice_plugin_size_bytes_bucket{le=\"0.001\",pipeline=\"p\",plugin=\"counter\"} 0"), "{text}");
        assert!(text.contains("sluice_plugin_size_bytes_bucket{le=\"0.002\",pipeline=\"p\",plugin=\"counter\"} 1"), "{text}");
        assert!(text.contains("sluice_plugin_size_bytes_bucket{le=\"+Inf\",pipeline=\"p\",plugin=\"counter\"} 2"), "{text}");
    }

    #[test]
    fn label_order_does_not_make_a_new_series() {
        let m = PluginMetrics::new(MetricsLimits::default());
        m.counter_add("c", labels(&[("b", "2"), ("a", "1")]), 1);
        m.counter_add("c", labels(&[("a", "1"), ("b", "2")]), 1);
        let text = render(&m);
        assert!(text.contains("sluice_plugin_c_total{pipeline=\"p\",plugin=\"counter\",a=\"1\",b=\"2\"} 2"), "{text}");
    }

    #[test]
    fn values_are_escaped() {
        let m = PluginMetrics::new(MetricsLimits::default());
        m.counter_add("c", labels(&[("v", "a\"b\\c\nd")]), 1);
        let text = render(&m);
        assert!(text.contains(r#"v="a\"b\\c\nd"} 1"#), "{text}");
    }

    #[test]
    fn excess_label_sets_fold_into_other_and_are_counted() {
        let m = PluginMetrics::new(MetricsLimits { max_series: 2, max_metrics: 50 });
        assert_eq!(m.counter_add("c", labels(&[("sku", "a")]), 1), Outcome::Recorded);
        assert_eq!(m.counter_add("c", labels(&[("sku", "b")]), 1), Outcome::Recorded);
        assert_eq!(m.counter_add("c", labels(&[("sku", "c")]), 1), Outcome::Folded { first: true });
        assert_eq!(m.counter_add("c", labels(&[("sku", "d")]), 4), Outcome::Folded { first: false });
        // An existing series still records as itself.
        assert_eq!(m.counter_add("c", labels(&[("sku", "a")]), 1), Outcome::Recorded);
        assert_eq!(m.folded(), vec![("c".to_owned(), 2)]);
        let text = render(&m);
        assert!(text.contains("sluice_plugin_c_total{pipeline=\"p\",plugin=\"counter\",sku=\"other\"} 5"), "{text}");
        assert!(text.contains("sluice_plugin_c_total{pipeline=\"p\",plugin=\"counter\",sku=\"a\"} 2"), "{text}");
        assert!(text.contains("sluice_plugin_metric_series_folded_total{pipeline=\"p\",metric=\"c\"} 2"), "{text}");
    }

    #[test]
    fn invalid_names_and_kind_clashes_are_dropped_and_reported_once() {
        let m = PluginMetrics::new(MetricsLimits::default());
        assert!(matches!(m.counter_add("bad-name", vec![], 1), Outcome::Dropped { reason: DropReason::InvalidName, report: Some(_) }));
        assert!(matches!(m.counter_add("bad-name", vec![], 1), Outcome::Dropped { reason: DropReason::InvalidName, report: None }));
        m.counter_add("x", vec![], 1);
        assert!(matches!(m.gauge_set("x", vec![], 1.0), Outcome::Dropped { reason: DropReason::KindClash, report: Some(_) }));
        assert!(matches!(m.histogram_observe("x", vec![], 1.0), Outcome::Dropped { reason: DropReason::KindClash, report: None }));
        assert_eq!(m.drops(DropReason::InvalidName), 2);
        assert_eq!(m.drops(DropReason::KindClash), 2);
        assert_eq!(m.names(), vec!["x".to_owned()]);
        let text = render(&m);
        assert!(text.contains("sluice_plugin_metric_drops_total{pipeline=\"p\",reason=\"invalid_name\"} 2"), "{text}");
    }

    #[test]
    fn names_that_would_render_onto_another_metric_are_refused() {
        let m = PluginMetrics::new(MetricsLimits::default());
        // Host metrics under the same prefix.
        for name in ["calls", "calls_total", "memory_bytes", "call_duration_seconds_bucket", "metric_series_folded_total"] {
            assert!(matches!(m.gauge_set(name, vec![], 1.0), Outcome::Dropped { reason: DropReason::InvalidName, .. }), "{name}");
        }
        // Another plugin metric's samples.
        m.counter_add("orders", vec![], 1);
        assert!(matches!(m.gauge_set("orders_total", vec![], 1.0), Outcome::Dropped { reason: DropReason::InvalidName, .. }));
        m.histogram_observe("latency", vec![], 1.0);
        assert!(matches!(m.counter_add("latency_count", vec![], 1), Outcome::Dropped { reason: DropReason::InvalidName, .. }));
    }

    #[test]
    fn bad_labels_are_dropped() {
        let m = PluginMetrics::new(MetricsLimits::default());
        let long = "v".repeat(MAX_LABEL_VALUE + 1);
        let many: Vec<(String, String)> = (0..=MAX_LABELS).map(|i| (format!("l{i}"), "v".to_owned())).collect();
        for bad in [
            labels(&[("a-b", "1")]),
            labels(&[("__x", "1")]),
            labels(&[("pipeline", "1")]),
            labels(&[("plugin", "1")]),
            labels(&[("a", "1"), ("a", "2")]),
            labels(&[("a", &long)]),
            many,
        ] {
            assert!(matches!(m.counter_add("c", bad.clone(), 1), Outcome::Dropped { reason: DropReason::InvalidLabels, .. }), "{bad:?}");
        }
        assert!(matches!(
            m.histogram_observe("h", labels(&[("le", "1")]), 1.0),
            Outcome::Dropped { reason: DropReason::InvalidLabels, .. }
        ));
        assert_eq!(m.counter_add("c", labels(&[("le", "1")]), 1), Outcome::Recorded);
    }

    #[test]
    fn non_finite_values_are_dropped() {
        let m = PluginMetrics::new(MetricsLimits::default());
        assert!(matches!(m.gauge_set("g", vec![], f64::NAN), Outcome::Dropped { reason: DropReason::InvalidValue, .. }));
        assert!(matches!(m.histogram_observe("h", vec![], f64::INFINITY), Outcome::Dropped { reason: DropReason::InvalidValue, .. }));
        assert!(m.names().is_empty());
    }

    #[test]
    fn the_metric_count_is_capped() {
        let m = PluginMetrics::new(MetricsLimits { max_series: 100, max_metrics: 2 });
        m.counter_add("a", vec![], 1);
        m.counter_add("b", vec![], 1);
        assert!(matches!(m.counter_add("c", vec![], 1), Outcome::Dropped { reason: DropReason::TooManyMetrics, .. }));
        assert_eq!(m.counter_add("a", vec![], 1), Outcome::Recorded);
    }

    #[test]
    fn reports_are_bounded() {
        let m = PluginMetrics::new(MetricsLimits::default());
        let reports = (0..MAX_REPORTED * 2)
            .filter(|i| matches!(m.counter_add(&format!("bad-{i}"), vec![], 1), Outcome::Dropped { report: Some(_), .. }))
            .count();
        assert_eq!(reports, MAX_REPORTED);
        assert_eq!(m.drops(DropReason::InvalidName), (MAX_REPORTED * 2) as u64);
    }

    #[test]
    fn pipelines_share_a_family_of_the_same_kind() {
        let a = PluginMetrics::new(MetricsLimits::default());
        let b = PluginMetrics::new(MetricsLimits::default());
        a.counter_add("orders", vec![], 1);
        b.counter_add("orders", vec![], 2);
        let c = PluginMetrics::new(MetricsLimits::default());
        c.gauge_set("orders", vec![], 3.0);
        let mut registry = prometheus_client::registry::Registry::default();
        #[derive(Debug)]
        struct Three(PluginMetrics, PluginMetrics, PluginMetrics);
        impl prometheus_client::collector::Collector for Three {
            fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
                encode(
                    &mut encoder,
                    &[
                        Source { pipeline: "a", plugin: "x", metrics: &self.0 },
                        Source { pipeline: "b", plugin: "x", metrics: &self.1 },
                        Source { pipeline: "c", plugin: "x", metrics: &self.2 },
                    ],
                )
            }
        }
        registry.register_collector(Box::new(Three(a, b, c)));
        let mut text = String::new();
        assert!(prometheus_client::encoding::text::encode(&mut text, &registry).is_ok());
        assert_eq!(text.matches("# TYPE sluice_plugin_orders ").count(), 1, "{text}");
        assert!(text.contains("sluice_plugin_orders_total{pipeline=\"a\",plugin=\"x\"} 1"), "{text}");
        assert!(text.contains("sluice_plugin_orders_total{pipeline=\"b\",plugin=\"x\"} 2"), "{text}");
        assert!(!text.contains("pipeline=\"c\",plugin=\"x\"} 3"), "{text}");
    }
}

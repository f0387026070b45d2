package plugin

// Metrics records the plugin's own metrics, on the host's /metrics as
// sluice_plugin_<name> (counters get _total) with the pipeline and plugin
// as labels. Labels are key/value pairs, as for Log:
//
//	plugin.Metrics.Counter("orders", [2]string{"sku", sku}).Inc()
//	plugin.Metrics.Gauge("queue_depth").Set(12)
//	plugin.Metrics.Histogram("order_bytes").Observe(float64(len(ev.Payload)))
//
// No capability is needed, and recording never fails the event: the host
// drops, counts and reports once what breaks its rules (names
// [a-zA-Z_][a-zA-Z0-9_]*, one kind per name), and folds label sets past
// max_series per metric (100 by default) into one series labelled
// "other". A value is recorded when you call, not when the event succeeds:
// a failed attempt's values stay. Histograms use the host's buckets,
// exponential from 0.001 to ~16 777. A plugin that never calls Metrics
// does not import it.
//
// In native builds (go test) values are kept in memory, read back with
// Metrics.CounterValue, GaugeValue and HistogramCount, emptied by
// Metrics.Clear.
var Metrics metricsAPI

type metricsAPI struct{}

// Counter is one counter series: a name and its labels. It only goes up.
type Counter struct {
	name   string
	labels [][2]string
}

// Gauge is one gauge series: a value that goes up and down.
type Gauge struct {
	name   string
	labels [][2]string
}

// Histogram is one histogram series: a distribution of observations.
type Histogram struct {
	name   string
	labels [][2]string
}

// Counter returns counter series name with labels.
func (metricsAPI) Counter(name string, labels ...[2]string) Counter { return Counter{name, labels} }

// Gauge returns gauge series name with labels.
func (metricsAPI) Gauge(name string, labels ...[2]string) Gauge { return Gauge{name, labels} }

// Histogram returns histogram series name with labels.
func (metricsAPI) Histogram(name string, labels ...[2]string) Histogram {
	return Histogram{name, labels}
}

// Add adds value.
func (c Counter) Add(value uint64) { counterAdd(c.name, c.labels, value) }

// Inc adds one.
func (c Counter) Inc() { counterAdd(c.name, c.labels, 1) }

// Set sets the value (NaN and infinities are dropped by the host).
func (g Gauge) Set(value float64) { gaugeSet(g.name, g.labels, value) }

// Observe records one observation (NaN and infinities are dropped by the
// host).
func (h Histogram) Observe(value float64) { histogramObserve(h.name, h.labels, value) }

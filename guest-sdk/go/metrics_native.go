//go:build !wasip1

package plugin

import (
	"sort"
	"strings"
)

// Native builds (go test): values in memory, keyed by name and sorted
// labels, with no validation (the host's rules are tested in the host).
var (
	nativeCounters   = map[string]uint64{}
	nativeGauges     = map[string]float64{}
	nativeHistograms = map[string][]float64{}
)

func metricKey(name string, labels [][2]string) string {
	pairs := make([]string, len(labels))
	for i, kv := range labels {
		pairs[i] = kv[0] + "=" + kv[1]
	}
	sort.Strings(pairs)
	return name + "{" + strings.Join(pairs, ",") + "}"
}

func counterAdd(name string, labels [][2]string, value uint64) {
	nativeCounters[metricKey(name, labels)] += value
}

func gaugeSet(name string, labels [][2]string, value float64) {
	nativeGauges[metricKey(name, labels)] = value
}

func histogramObserve(name string, labels [][2]string, value float64) {
	k := metricKey(name, labels)
	nativeHistograms[k] = append(nativeHistograms[k], value)
}

// CounterValue is counter name's value with labels (in any order), 0 if
// never recorded (native builds only).
func (metricsAPI) CounterValue(name string, labels ...[2]string) uint64 {
	return nativeCounters[metricKey(name, labels)]
}

// GaugeValue is gauge name's value with labels, if set (native builds only).
func (metricsAPI) GaugeValue(name string, labels ...[2]string) (float64, bool) {
	v, ok := nativeGauges[metricKey(name, labels)]
	return v, ok
}

// HistogramCount is how many observations histogram name has with labels
// (native builds only).
func (metricsAPI) HistogramCount(name string, labels ...[2]string) int {
	return len(nativeHistograms[metricKey(name, labels)])
}

// Clear forgets every native value (native builds only).
func (metricsAPI) Clear() {
	nativeCounters = map[string]uint64{}
	nativeGauges = map[string]float64{}
	nativeHistograms = map[string][]float64{}
}

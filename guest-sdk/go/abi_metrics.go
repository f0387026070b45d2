//go:build wasip1

// The `metrics` import of sluice:plugin@0.2.0, by hand like abi.go: each
// function takes the name (ptr, len), the labels as a list of
// tuple<string, string> (16 B elements: key ptr, len, value ptr, len) and
// the value (u64 or f64), and returns nothing.

package plugin

//go:wasmimport sluice:plugin/metrics@0.2.0 counter-add
func hostCounterAdd(namePtr, nameLen, labelsPtr, labelsLen uint32, value uint64)

//go:wasmimport sluice:plugin/metrics@0.2.0 gauge-set
func hostGaugeSet(namePtr, nameLen, labelsPtr, labelsLen uint32, value float64)

//go:wasmimport sluice:plugin/metrics@0.2.0 histogram-observe
func hostHistogramObserve(namePtr, nameLen, labelsPtr, labelsLen uint32, value float64)

func counterAdd(name string, labels [][2]string, value uint64) {
	np, nl := lower([]byte(name))
	lp, ll := lowerPairs(labels)
	hostCounterAdd(np, nl, lp, ll, value)
}

func gaugeSet(name string, labels [][2]string, value float64) {
	np, nl := lower([]byte(name))
	lp, ll := lowerPairs(labels)
	hostGaugeSet(np, nl, lp, ll, value)
}

func histogramObserve(name string, labels [][2]string, value float64) {
	np, nl := lower([]byte(name))
	lp, ll := lowerPairs(labels)
	hostHistogramObserve(np, nl, lp, ll, value)
}

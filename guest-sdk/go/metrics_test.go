//go:build !wasip1

package plugin

import "testing"

func TestMetricsAreKeptPerNameAndLabelSet(t *testing.T) {
	Metrics.Clear()
	Metrics.Counter("orders", [2]string{"sku", "a"}, [2]string{"shop", "x"}).Add(2)
	Metrics.Counter("orders", [2]string{"shop", "x"}, [2]string{"sku", "a"}).Inc()
	Metrics.Gauge("depth").Set(4.5)
	Metrics.Histogram("bytes").Observe(10)
	if n := Metrics.CounterValue("orders", [2]string{"sku", "a"}, [2]string{"shop", "x"}); n != 3 {
		t.Fatalf("orders = %d, want 3", n)
	}
	if v, ok := Metrics.GaugeValue("depth"); !ok || v != 4.5 {
		t.Fatalf("depth = %v %v", v, ok)
	}
	if n := Metrics.HistogramCount("bytes"); n != 1 {
		t.Fatalf("bytes count = %d", n)
	}
	Metrics.Clear()
	if n := Metrics.CounterValue("orders", [2]string{"sku", "a"}, [2]string{"shop", "x"}); n != 0 {
		t.Fatalf("after Clear: %d", n)
	}
}

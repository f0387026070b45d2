"""The plugin's own metrics: counters, gauges and histograms with labels,
on the host's `/metrics` as `sluice_plugin_<name>` (counters `_total`) with
the pipeline and plugin as labels.

    from sluice_plugin import metrics

    metrics.counter("orders", sku=sku).inc()              # or .add(3)
    metrics.gauge("queue_depth").set(12)
    metrics.histogram("order_bytes").observe(len(event.payload))
    with metrics.histogram("lookup_seconds", table="users").time():
        ...

Labels are keyword arguments (values become text). No capability is
needed, and recording never fails the event: the host drops, counts and
reports once what breaks its rules (names `[a-zA-Z_][a-zA-Z0-9_]*`, one kind
per name), and folds label sets past `max_series` per metric (100 by
default) into one series labelled `other`. A value is recorded when you
call, not when the event succeeds: a failed attempt's values stay.
Histograms use the host's buckets, exponential from 0.001 to ~16 777.

`guest-sdk/python/build.sh` makes the component import the host's
`metrics` interface only when the plugin imports this module.
"""

from __future__ import annotations

import time as _time
from contextlib import contextmanager
from typing import Any, Iterator, List, Tuple

from wit_world.imports import metrics as _host

__all__ = ["Counter", "Gauge", "Histogram", "counter", "gauge", "histogram"]


def _pairs(labels: dict) -> List[Tuple[str, str]]:
    return [(str(k), str(v)) for k, v in labels.items()]


class Counter:
    """A counter series (`counter(name, **labels)`): only goes up."""

    __slots__ = ("name", "labels")

    def __init__(self, name: str, labels: List[Tuple[str, str]]):
        self.name = name
        self.labels = labels

    def add(self, value: int = 1) -> None:
        """Adds `value`, a non-negative int (anything else raises ValueError)."""
        if not isinstance(value, int) or value < 0 or value >= 2**64:
            raise ValueError(f"counter {self.name}: add a non-negative integer, not {value!r}")
        _host.counter_add(self.name, self.labels, value)

    def inc(self) -> None:
        """Adds one."""
        _host.counter_add(self.name, self.labels, 1)


class Gauge:
    """A gauge series (`gauge(name, **labels)`): a value that goes up and down."""

    __slots__ = ("name", "labels")

    def __init__(self, name: str, labels: List[Tuple[str, str]]):
        self.name = name
        self.labels = labels

    def set(self, value: float) -> None:
        """Sets the value (NaN and infinities are dropped by the host)."""
        _host.gauge_set(self.name, self.labels, float(value))


class Histogram:
    """A histogram series (`histogram(name, **labels)`): a distribution."""

    __slots__ = ("name", "labels")

    def __init__(self, name: str, labels: List[Tuple[str, str]]):
        self.name = name
        self.labels = labels

    def observe(self, value: float) -> None:
        """Records one observation (NaN and infinities are dropped by the host)."""
        _host.histogram_observe(self.name, self.labels, float(value))

    @contextmanager
    def time(self) -> Iterator[None]:
        """Observes how long the `with` block takes, in seconds (also when it raises)."""
        started = _time.perf_counter()
        try:
            yield
        finally:
            self.observe(_time.perf_counter() - started)


def counter(name: str, /, **labels: Any) -> Counter:
    """Counter `name` with `labels`: `counter("orders", sku="a").inc()`."""
    return Counter(name, _pairs(labels))


def gauge(name: str, /, **labels: Any) -> Gauge:
    """Gauge `name` with `labels`: `gauge("queue_depth").set(3)`."""
    return Gauge(name, _pairs(labels))


def histogram(name: str, /, **labels: Any) -> Histogram:
    """Histogram `name` with `labels`: `histogram("bytes").observe(n)`."""
    return Histogram(name, _pairs(labels))

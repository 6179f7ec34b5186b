"""Prometheus metrics: requests, errors, latency and time to first byte per model and backend;
in-flight requests and backend health, read from the live backends at scrape time.

Requests are counted in plain numbers (a bucket index found by ``bisect``) and handed to
prometheus_client only when /metrics is scraped: its Counter and Histogram objects take a lock
and walk the buckets on every observation, ~5% of the proxy's CPU at full load. The exposition is
prometheus_client's, unchanged.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .backends import Backend

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BOUNDS = [*map(floatToGoString, BUCKETS), "+Inf"]
LABELS = ("model", "backend")


class _Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(BUCKETS, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        cumulative: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip(BOUNDS, self.counts, strict=True):
            total += count
            cumulative.append((bound, total))
        return cumulative


class _Series:
    """What is counted for one model and backend."""

    __slots__ = ("requests", "latency", "ttfb")

    def __init__(self) -> None:
        self.requests: dict[int, int] = {}  # by HTTP status
        self.latency = _Histogram()
        self.ttfb = _Histogram()


class Metrics:
    """One registry per proxy, so several proxies can live in one process."""

    def __init__(self, backends: Callable[[], Iterable[Backend]]) -> None:
        self._series: dict[tuple[str, str], _Series] = {}
        self._errors: dict[tuple[str, str, str], int] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_RequestCollector(self))
        self.registry.register(_BackendCollector(backends))

    def observe(
        self, model: str, backend: str, status: int, latency: float, ttfb: float | None
    ) -> None:
        series = self._series.get((model, backend))
        if series is None:
            series = self._series[(model, backend)] = _Series()
        requests = series.requests
        requests[status] = requests.get(status, 0) + 1
        series.latency.observe(latency)
        if ttfb is not None:
            series.ttfb.observe(ttfb)

    def error(self, model: str, backend: str, kind: str) -> None:
        key = (model, backend, kind)
        self._errors[key] = self._errors.get(key, 0) + 1

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _RequestCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        requests = CounterMetricFamily(
            "toolkit_proxy_requests",
            "Requests answered, by model, backend and HTTP status.",
            labels=[*LABELS, "status"],
        )
        errors = CounterMetricFamily(
            "toolkit_proxy_errors",
            "Failures: connect, upstream_5xx, timeout, stream_broken, no_backend.",
            labels=[*LABELS, "kind"],
        )
        latency = HistogramMetricFamily(
            "toolkit_proxy_request_duration_seconds",
            "Time from request to the last byte of the response.",
            labels=LABELS,
        )
        ttfb = HistogramMetricFamily(
            "toolkit_proxy_time_to_first_byte_seconds",
            "Time from request to the first byte of the upstream response body.",
            labels=LABELS,
        )
        for (model, backend), series in list(self._metrics._series.items()):
            for status, count in list(series.requests.items()):
                requests.add_metric([model, backend, str(status)], count)
            latency.add_metric([model, backend], series.latency.buckets(), series.latency.sum)
            ttfb.add_metric([model, backend], series.ttfb.buckets(), series.ttfb.sum)
        for labels, count in list(self._metrics._errors.items()):
            errors.add_metric(list(labels), count)
        return [requests, errors, latency, ttfb]


class _BackendCollector(Collector):
    def __init__(self, backends: Callable[[], Iterable[Backend]]) -> None:
        self._backends = backends

    def collect(self) -> Iterable[Metric]:
        in_flight = GaugeMetricFamily(
            "toolkit_proxy_in_flight_requests",
            "Requests in flight per backend.",
            labels=["backend"],
        )
        healthy = GaugeMetricFamily(
            "toolkit_proxy_backend_healthy", "1 if the backend is healthy.", labels=["backend"]
        )
        slots = GaugeMetricFamily(
            "toolkit_proxy_backend_slots",
            "Parallel slots of a llama.cpp backend, when its /slots told.",
            labels=["backend"],
        )
        for backend in self._backends():
            in_flight.add_metric([backend.url], backend.in_flight)
            healthy.add_metric([backend.url], 1 if backend.healthy else 0)
            if backend.slots is not None:
                slots.add_metric([backend.url], backend.slots)
        return [in_flight, healthy, slots]

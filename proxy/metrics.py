"""Prometheus metrics: requests, errors, latency and time to first byte per model and backend;
in-flight requests and backend health, read from the live backends at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .backends import Backend

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """One registry per app, so several proxies can live in one process (tests)."""

    def __init__(self, backends: Callable[[], Iterable[Backend]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "toolkit_proxy_requests",
            "Requests answered, by model, backend and HTTP status.",
            ("model", "backend", "status"),
            registry=self.registry,
        )
        self.errors = Counter(
            "toolkit_proxy_errors",
            "Failures: connect, upstream_5xx, timeout, stream_broken, no_backend.",
            ("model", "backend", "kind"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "toolkit_proxy_request_duration_seconds",
            "Time from request to the last byte of the response.",
            ("model", "backend"),
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.ttfb = Histogram(
            "toolkit_proxy_time_to_first_byte_seconds",
            "Time from request to the first byte of the upstream response body.",
            ("model", "backend"),
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_BackendCollector(backends))

        self._children: dict[tuple[str, str, int], tuple[Any, Any, Any]] = {}

    def observe(
        self, model: str, backend: str, status: int, latency: float, ttfb: float | None
    ) -> None:
        key = (model, backend, status)
        children = self._children.get(key)
        if children is None:  # labels() takes a lock and builds a tuple: do it once per key
            children = self._children[key] = (
                self.requests.labels(model, backend, str(status)),
                self.latency.labels(model, backend),
                self.ttfb.labels(model, backend),
            )
        requests, latency_histogram, ttfb_histogram = children
        requests.inc()
        latency_histogram.observe(latency)
        if ttfb is not None:
            ttfb_histogram.observe(ttfb)

    def error(self, model: str, backend: str, kind: str) -> None:
        self.errors.labels(model, backend, kind).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


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
        yield in_flight
        yield healthy
        yield slots

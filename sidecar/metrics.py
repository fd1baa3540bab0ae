"""Prometheus metrics: event counters, and a Collector that reads state gauges at scrape time."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sidecar import __version__
from sidecar.state import MirrorState

ERROR_STAGES = ("etcd", "render", "write", "reload", "empty")
# From sub-millisecond (a debounce of 0 on loopback) to the seconds a large rewrite can take.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """Counters the sync loop and actions increment, registered in the registry given."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.file_writes = Counter(
            "etcd_sidecar_file_writes",
            "Output files actually rewritten (bytes changed).",
            ["output"],
            registry=registry,
        )
        self.errors = Counter(
            "etcd_sidecar_errors",
            "Failures by stage: etcd, render, write, reload, empty, k8s_events.",
            ["stage"],
            registry=registry,
        )
        self.watch_restarts = Counter(
            "etcd_sidecar_watch_restarts",
            "Watch re-establishments by reason.",
            ["reason"],
            registry=registry,
        )
        self.update_latency = Histogram(
            "etcd_sidecar_update_latency_seconds",
            "From a watch response's arrival to its file being renamed into place.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.reloads = Counter(
            "etcd_sidecar_reloads",
            "On-change actions by action (signal, url, exec) and result (success, failure).",
            ["action", "result"],
            registry=registry,
        )
        self.ignored_events = Counter(
            "etcd_sidecar_ignored_events",
            "Watch events at or below the revision already applied, ignored.",
            registry=registry,
        )
        for stage in ERROR_STAGES:
            self.errors.labels(stage=stage)

    def track_outputs(self, paths: list[str]) -> None:
        for path in paths:
            self.file_writes.labels(output=path)


class StateCollector(Collector):
    """Gauges that describe state, computed from it when Prometheus scrapes."""

    def __init__(self, state: MirrorState, max_staleness: float) -> None:
        self._state = state
        self._max_staleness = max_staleness

    def collect(self) -> Iterator[Metric]:
        state = self._state
        ready = not state.missing_for_ready(time.monotonic(), self._max_staleness)
        yield _gauge("etcd_sidecar_ready", "1 when /ready would answer 200.", float(ready))
        yield _gauge(
            "etcd_sidecar_etcd_connected",
            "1 while the watch on etcd is established.",
            float(state.sync.connected),
        )
        yield _gauge(
            "etcd_sidecar_revision",
            "etcd revision the outputs reflect.",
            float(state.outputs_revision),
        )
        yield _gauge("etcd_sidecar_keys", "Number of mirrored keys.", float(len(state.kvs)))
        yield _gauge(
            "etcd_sidecar_last_sync_timestamp_seconds",
            "When the outputs were last confirmed current (Unix time).",
            state.sync.last_sync or 0.0,
        )
        info = GaugeMetricFamily(
            "etcd_sidecar_build_info",
            "Always 1; the version label says which build.",
            labels=["version"],
        )
        info.add_metric([__version__], 1.0)
        yield info


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def create_metrics(state: MirrorState, max_staleness: float) -> Metrics:
    """A fresh registry with every sidecar metric (tests make one per sidecar)."""
    metrics = Metrics(CollectorRegistry())
    metrics.registry.register(StateCollector(state, max_staleness))
    metrics.track_outputs([o.path for o in state.outputs])
    return metrics

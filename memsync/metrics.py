"""Prometheus metrics for projections and facade appends.

Counters and the batch-latency histogram are fed by :class:`~memsync.hooks.Hooks`;
gauges (head, checkpoint, lag in events and seconds, parked, reachable) are
computed at scrape time by a collector, from the log and from what each runner
last saw, so a scrape never blocks on a store that is down.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from memsync.hooks import Hooks
from memsync.log import EventLog
from memsync.projector import ProjectionRunner

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """One registry per process; attach it to the Hooks the runners and facade use."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events_applied = Counter("memsync_projection_events_applied", "Events applied", ["projection"], registry=r)
        self.batches = Counter("memsync_projection_batches", "Batches applied", ["projection"], registry=r)
        self.batch_seconds = Histogram(
            "memsync_projection_batch_seconds",
            "Batch apply latency",
            ["projection"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.retries = Counter("memsync_projection_retries", "Store calls retried", ["projection"], registry=r)
        self.parked = Counter("memsync_projection_parked_events", "Events parked", ["projection"], registry=r)
        self.appends = Counter("memsync_appends", "Events appended through the facade", registry=r)
        self.conflicts = Counter("memsync_append_conflicts", "Appends refused for a version conflict", registry=r)
        self.refused = Counter("memsync_append_refused", "Appends refused (invalid or against state)", registry=r)

    def attach(self, hooks: Hooks) -> None:
        hooks.on("after_batch", self._after_batch)
        hooks.on("retry", lambda projection, **_: self.retries.labels(projection).inc())
        hooks.on("parked", lambda projection, **_: self.parked.labels(projection).inc())
        hooks.on("after_append", lambda records: self.appends.inc(len(records)))
        hooks.on("append_refused", self._refused)

    def watch(self, log: EventLog, runners: dict[str, ProjectionRunner]) -> None:
        """Export head/checkpoint/lag/reachable gauges for these runners."""
        self.registry.register(_ProjectionCollector(log, runners))

    def serve(self, port: int, host: str = "127.0.0.1") -> Any:
        """Serve /metrics over HTTP (loopback unless told otherwise)."""
        return start_http_server(port, addr=host, registry=self.registry)

    def _after_batch(self, projection: str, first_seq: int, last_seq: int, ops: Any, seconds: float) -> None:
        self.events_applied.labels(projection).inc(last_seq - first_seq + 1)
        self.batches.labels(projection).inc()
        self.batch_seconds.labels(projection).observe(seconds)

    def _refused(self, events: Any, error: BaseException) -> None:
        from memsync.errors import ConflictError

        (self.conflicts if isinstance(error, ConflictError) else self.refused).inc()


class _ProjectionCollector(Collector):
    def __init__(self, log: EventLog, runners: dict[str, ProjectionRunner]) -> None:
        self.log = log
        self.runners = runners

    def collect(self) -> Iterator[GaugeMetricFamily]:
        head_seq = self.log.head().seq
        head = GaugeMetricFamily("memsync_log_head_seq", "Last seq in the log")
        head.add_metric([], head_seq)
        yield head
        checkpoint = GaugeMetricFamily("memsync_projection_checkpoint", "Last seq applied", labels=["projection"])
        lag = GaugeMetricFamily("memsync_projection_lag_events", "head - checkpoint", labels=["projection"])
        lag_s = GaugeMetricFamily(
            "memsync_projection_lag_seconds", "Age of the oldest event not yet applied", labels=["projection"]
        )
        reachable = GaugeMetricFamily("memsync_store_reachable", "1 when the store answers", labels=["projection"])
        parked = GaugeMetricFamily("memsync_projection_parked", "Events parked now", labels=["projection"])
        now = time.time()
        for name, runner in self.runners.items():
            seen = runner.checkpoint_seen or 0
            checkpoint.add_metric([name], seen)
            lag.add_metric([name], head_seq - seen)
            oldest = next(iter(self.log.read(after=seen, limit=1)), None) if head_seq > seen else None
            lag_s.add_metric([name], max(0.0, now - oldest.recorded_at.timestamp()) if oldest else 0.0)
            reachable.add_metric([name], 1.0 if runner.store.ping() else 0.0)
            parked.add_metric([name], len(self.log.parked(name)))
        yield from (checkpoint, lag, lag_s, reachable, parked)

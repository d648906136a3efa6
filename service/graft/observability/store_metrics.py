"""The job store's state as Prometheus gauges, read from the store at scrape time (never a
stale copy); the server registers `StoreCollector` next to its graft.observability.metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# The name its records carried while it lived in graft.observability.metrics.
log = logging.getLogger("graft.observability.metrics")


class StoreCollector(Collector):
    """Job and registry gauges read from the store at scrape time."""

    def __init__(
        self, store: Any, worker_ready_seconds: float, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.worker_ready_seconds = worker_ready_seconds
        self.clock = clock

    def describe(self) -> Iterable[Any]:
        return []  # collected lazily: no store access at registration

    def collect(self) -> Iterator[Any]:
        up = GaugeMetricFamily("graft_store_up", "1 when the job store answered this scrape.")
        try:
            now = self.clock()
            counts = self.store.count_jobs_by_state()
            depth = self.store.queue_depth()
            oldest = self.store.oldest_queued_age(now)
            versions = self.store.count_model_versions()
            workers = self.store.list_workers()
            upload_bytes = self.store.upload_usage()
        except Exception:
            log.exception("metrics: the job store did not answer")
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        jobs = GaugeMetricFamily("graft_jobs", "Jobs in the store, by state.", labels=["state"])
        for state, n in sorted(counts.items()):
            jobs.add_metric([state.name.lower()], n)
        yield jobs
        yield GaugeMetricFamily("graft_queue_depth", "Jobs waiting for a worker.", value=depth)
        yield GaugeMetricFamily(
            "graft_oldest_queued_job_age_seconds",
            "Age of the oldest queued job (0 when none waits).",
            value=oldest,
        )
        yield GaugeMetricFamily(
            "graft_registry_model_versions",
            "Model versions in the registry.",
            value=versions,
        )
        yield GaugeMetricFamily(
            "graft_upload_bytes",
            "Bytes the uploaded datasets of every tenant store (archives plus extracted copies;"
            " each tenant's are bounded by upload_quota_bytes).",
            value=upload_bytes,
        )
        ready = sum(1 for w in workers if now - w.last_heartbeat <= self.worker_ready_seconds)
        yield GaugeMetricFamily(
            "graft_workers_ready",
            "Workers whose last heartbeat is recent enough to count them alive.",
            value=ready,
        )

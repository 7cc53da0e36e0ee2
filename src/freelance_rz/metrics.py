"""Prometheus metrics of producers and workers, with ``prometheus_client`` (the ``metrics``
extra: ``pip install 'freelance_rz[metrics]'``). Every metric is in docs/operations.md.

Nothing here counts anything. A producer's metrics are its detailed STATUS
(:meth:`~freelance_rz.Producer.status` with ``detail=True``) read when Prometheus scrapes:
the totals per state from the ledger, the per-task counts and histograms from its tally
(:mod:`freelance_rz.core.tally`), so a scrape shows exactly what ``status()`` says. The
dashboard (``freelance-status --serve``) turns the STATUS replies of every producer it
watches into the same metrics, labelled by ``producer``. A worker's metrics read its slots
and its :class:`~freelance_rz.worker.stats.WorkerStats`. The costs are paid at scrape time,
on the scraping thread, never on the producer's or the worker's hot path.

:func:`serve` exposes a collector over HTTP (``prometheus_client``'s threaded server);
:class:`ProducerCollector` and :class:`WorkerCollector` can also be registered in an
application's own registry.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

try:
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
    from prometheus_client.registry import Collector
    from prometheus_client.metrics_core import Metric
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ImportError(
        "freelance_rz metrics need prometheus_client: pip install 'freelance_rz[metrics]'"
    ) from exc

log = logging.getLogger("freelance_rz.metrics")

PREFIX = "freelance_rz_"
#: the outcome label of ``freelance_rz_jobs_total`` -> the tally's count it reads
JOB_OUTCOMES = {"submitted": "submitted", "done": "done", "failed": "failed", "retried": "retried",
                "dead": "dead", "cancelled": "cancelled"}
#: producer gauges read from STATUS: metric name -> (STATUS key, help)
PRODUCER_GAUGES = {
    "jobs_pending": ("pending", "Jobs waiting for a worker (the ledger's count)."),
    "jobs_deferred": ("deferred", "Jobs held back until a due time: a delay or a retry's backoff."),
    "jobs_blocked": ("blocked", "Jobs waiting for the jobs they depend on to succeed."),
    "jobs_leased": ("leased", "Jobs a worker holds under a lease (the ledger's count)."),
    "parked_claims": ("parked_claims", "Claims parked here: free worker slots waiting for a job."),
    "workers": ("workers", "Workers heard from in the last minute."),
    "connections": ("connections", "Open connections to the offer socket."),
    "uptime_seconds": ("uptime_s", "Seconds since the producer started."),
}
STATUS_TIMEOUT_S = 2.0  # a scrape waits this long for a producer's I/O thread


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _histogram(name: str, doc: str, label_names: list[str], bounds: list[float],
               rows: Iterable[tuple[list[str], Any, Any]]) -> HistogramMetricFamily:
    """A histogram family from per-bucket (not cumulative) counts over ``bounds`` (one more
    count for the unbounded bucket), and a sum, per label set."""
    family = HistogramMetricFamily(name, doc, labels=label_names)
    for labels, counts, total in rows:
        if not isinstance(counts, list) or len(counts) != len(bounds) + 1 or _number(total) is None:
            continue
        cumulative, buckets = 0.0, []
        for bound, count in zip([*bounds, math.inf], counts, strict=True):
            cumulative += _number(count) or 0.0
            buckets.append(("+Inf" if bound == math.inf else f"{bound:g}", cumulative))
        family.add_metric(labels, buckets, sum_value=float(total))
    return family


def producer_families(info: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> list[Metric]:
    """The producer metrics of one STATUS ``info`` map (best with ``detail``: the per-task
    families need it), each sample labelled with ``labels`` too (the dashboard adds
    ``producer``). Fields that are missing or of the wrong type are left out, never raised
    on: the map may come from the network."""
    extra = dict(labels or {})
    names, values = list(extra), list(extra.values())
    families: list[Metric] = []
    for metric, (key, doc) in PRODUCER_GAUGES.items():
        value = _number(info.get(key))
        if value is not None:
            gauge = GaugeMetricFamily(PREFIX + metric, doc, labels=names)
            gauge.add_metric(values, value)
            families.append(gauge)
    bad = _number(info.get("bad_messages"))
    if bad is not None:
        counter = CounterMetricFamily(PREFIX + "bad_messages", "Messages rejected as malformed.",
                                      labels=names)
        counter.add_metric(values, bad)
        families.append(counter)
    tasks = [t for t in info.get("tasks") or () if isinstance(t, Mapping) and isinstance(t.get("task"), str)]
    bounds = [b for b in info.get("buckets_s") or () if _number(b) is not None]
    if not tasks:
        return families
    jobs = CounterMetricFamily(PREFIX + "jobs", "Jobs by task and outcome since the producer started "
                               "(submitted, done, failed, retried, dead, cancelled).",
                               labels=[*names, "task", "outcome"])
    for task in tasks:
        for outcome, key in JOB_OUTCOMES.items():
            count = _number(task.get(key))
            if count is not None:
                jobs.add_metric([*values, task["task"], outcome], count)
    families.append(jobs)
    for metric, key, doc in (
        ("queue_wait_seconds", "wait", "Seconds a job waited from pending to leased, by task."),
        ("run_seconds", "run", "Seconds from a job's lease to its result, by task."),
    ):
        families.append(_histogram(PREFIX + metric, doc, [*names, "task"], bounds, (
            ([*values, t["task"]], t.get(f"{key}_counts"), t.get(f"{key}_sum_s")) for t in tasks
        )))
    return families


class ProducerCollector(Collector):
    """A ``prometheus_client`` collector of one producer: each scrape asks it for its
    detailed STATUS (from the scraping thread; the producer's I/O thread answers between two
    turns) and yields :func:`producer_families`. A producer that is not running yields
    nothing.

    Args:
        producer: a :class:`~freelance_rz.Producer` (anything with ``status(timeout_s,
            detail=)``).
    """

    def __init__(self, producer: Any) -> None:
        self._producer = producer

    def describe(self) -> list[Metric]:
        return []  # names depend on what the producer has seen; no check at registration

    def collect(self) -> Iterator[Metric]:
        try:
            info = self._producer.status(STATUS_TIMEOUT_S, detail=True)
        except (RuntimeError, FutureTimeout) as exc:
            log.debug("metrics: producer status unavailable: %s", exc)
            return
        yield from producer_families(info)


class WorkerCollector(Collector):
    """A ``prometheus_client`` collector of one worker, read at scrape time.

    Args:
        snapshot: ``snapshot()`` -> :class:`WorkerSnapshot` (the worker's
            :meth:`~freelance_rz.Worker.metrics_snapshot`).
    """

    def __init__(self, snapshot: Callable[[], WorkerSnapshot]) -> None:
        self._snapshot = snapshot

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        slots = GaugeMetricFamily(PREFIX + "worker_slots", "The worker's slots by state (busy: "
                                  "running a job; free: ready and idle; starting: its job "
                                  "process is importing the task modules).", labels=["state"])
        for state, count in snap.slots.items():
            slots.add_metric([state], count)
        yield slots
        jobs = CounterMetricFamily(PREFIX + "worker_jobs", "Jobs this worker ran, by task and "
                                   "outcome (done, failed, crashed: its process died).",
                                   labels=["task", "outcome"])
        for (task, outcome), count in sorted(snap.jobs.items()):
            jobs.add_metric([task, outcome], count)
        yield jobs
        yield CounterMetricFamily(PREFIX + "worker_job_process_restarts", "Job processes started "
                                  "after the first ones (after a crash, a time limit, a cancel, "
                                  "a lost producer, or recycling).", value=snap.restarts)
        yield GaugeMetricFamily(PREFIX + "worker_producers", "Producers this worker has a "
                                "connection to.", value=snap.producers)


@dataclass(frozen=True, slots=True)
class WorkerSnapshot:
    """What a worker's metrics show: slot counts by state, jobs by (task, outcome),
    job-process restarts, producers connected."""

    slots: dict[str, int]
    jobs: dict[tuple[str, str], int]
    restarts: int
    producers: int


class MetricsServer:
    """A running metrics endpoint (``http://HOST:PORT/metrics``); :meth:`close` stops it.

    Args:
        collector: what it serves (in a registry of its own, so several producers of one
            process never clash).
        host, port: where to listen (port 0: a free one, see :attr:`port`).

    Raises:
        OSError: the address cannot be bound.
    """

    def __init__(self, collector: Collector, host: str, port: int) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)
        self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        self.host = host
        self.port: int = self._server.server_port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and release the port. Safe to call twice."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

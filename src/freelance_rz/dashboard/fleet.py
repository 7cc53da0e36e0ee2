"""What the dashboard knows of the fleet, built from the producers' detailed STATUS replies.
Pure: the rows and the time are passed in.

Theory of operation
-------------------
A brokerless fleet has no central place to look: the dashboard asks every producer it knows
(found over mDNS or given with ``--connect``) for its detailed STATUS at each poll and hands
the rows to :meth:`Fleet.update`. A producer that answers is *up*; one that does not (killed,
cut off, or answering nonsense) is *down* and keeps its last good reply, marked stale; one no
longer announced and down for FORGET_S leaves the page. Workers are not asked anything: each
producer lists the workers it heard from, with the jobs they run there and the claims they
parked there (their free slots), so a worker's busy slots are the sum over producers and its
free slots the most any one producer sees.

Charts need history: at each poll the fleet keeps one sample per producer of its cumulative
counts and histogram sums, and the differences between two polls give the throughput and the
mean and 95th percentile times of that interval (a producer that restarted, whose counts went
down, counts from its new start). HISTORY_S seconds of samples are kept.

Everything in a row came from the network. :meth:`Fleet.snapshot` returns only checked,
JSON-ready values (the page shows them as text, never as markup), with peer strings cut.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..status import read_info

HISTORY_S = 600.0  # seconds of chart samples kept
FORGET_S = 300.0  # a producer no longer announced and down this long leaves the page
FAILURES_SHOWN = 50  # recent failures shown, fleet-wide
TEXT_CHARS = 500  # characters of a peer string shown (a traceback: TRACEBACK_CHARS)
TRACEBACK_CHARS = 4000
#: keys of a STATUS_REPLY that say which jobs wait for a capability or a limit (filled by
#: producers that match claims to requirements or enforce limits); shown as they come
WAITING_KEYS = ("waiting", "unmatched", "waiting_requirements", "limits", "limited")
#: the counts a task entry of a detailed STATUS carries
TASK_COUNTS = ("submitted", "pending", "leased", "done", "failed", "dead", "cancelled", "retried")


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value


def _text(value: Any, limit: int = TEXT_CHARS) -> str:
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", errors="replace")
    return value[:limit] if isinstance(value, str) else "" if value is None else str(value)[:limit]


def plain(value: Any, depth: int = 0) -> Any:
    """A decoded msgpack value as JSON can hold it: strings cut, bytes as text, map keys as
    strings, nesting cut at depth 6 (shown as ``"…"``)."""
    if depth > 6:
        return "…"
    if isinstance(value, Mapping):
        return {_text(k, 100): plain(v, depth + 1) for k, v in list(value.items())[:200]}
    if isinstance(value, (list, tuple)):
        return [plain(v, depth + 1) for v in value[:200]]
    if isinstance(value, bool) or value is None or _num(value) is not None:
        return value
    return _text(value)


def _maps(value: Any) -> list[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, (list, tuple)) else []


@dataclass
class _Producer:
    endpoint: str
    first_seen: float
    up: bool = False
    info: dict[str, Any] | None = None  # its last good reply
    error: str = ""
    last_ok: float | None = None
    gone_since: float | None = None  # no longer in the rows (not announced)
    totals: dict[str, Any] | None = None  # cumulative counts at the last poll, for the charts


@dataclass
class Fleet:
    """The dashboard's picture of the fleet (see the module docstring). ``group``: shown."""

    group: str = ""
    producers: dict[str, _Producer] = field(default_factory=dict)  # by endpoint
    samples: deque[dict[str, Any]] = field(default_factory=deque)
    polls: int = 0

    def update(self, rows: Sequence[Mapping[str, Any]], now: float) -> None:
        """Take one poll's rows (:func:`~freelance_rz.status.query_status` with ``detail``;
        a row per producer, an ``error`` row for one that did not answer). ``now``: wall-clock
        seconds of the poll."""
        self.polls += 1
        seen = set()
        deltas: list[dict[str, Any]] = []
        for row in rows:
            endpoint = _text(row.get("endpoint"), 200)
            seen.add(endpoint)
            producer = self.producers.get(endpoint)
            if producer is None:
                producer = self.producers[endpoint] = _Producer(endpoint, now)
            producer.gone_since = None
            self._take(producer, row, now, deltas)
        for endpoint, producer in list(self.producers.items()):
            if endpoint in seen:
                continue
            producer.up = False
            producer.error = producer.error or "no longer announced"
            producer.gone_since = producer.gone_since or now
            if now - producer.gone_since > FORGET_S:
                del self.producers[endpoint]
        self.samples.append(_sample(now, deltas))
        while self.samples and self.samples[0]["t"] < now - HISTORY_S:
            self.samples.popleft()

    def _take(self, producer: _Producer, row: Mapping[str, Any], now: float,
              deltas: list[dict[str, Any]]) -> None:
        if "error" in row:
            producer.up, producer.error = False, _text(row["error"])
            return
        try:
            read_info(row)  # the basic fields, type-checked
        except ValueError as exc:
            producer.up, producer.error = False, f"malformed reply: {exc}"
            return
        info = dict(row)
        totals = _totals(info)
        if producer.totals is not None and producer.info is not None \
                and producer.info.get("producer_id") == info.get("producer_id"):
            deltas.append(_delta(producer.totals, totals))
        producer.up, producer.error, producer.info, producer.last_ok = True, "", info, now
        producer.totals = totals

    def snapshot(self, now: float, admin: bool = False) -> dict[str, Any]:
        """Everything the page shows, JSON-ready (see docs/operations.md)."""
        producers = [self._producer_view(p, now) for p in
                     sorted(self.producers.values(), key=lambda p: p.endpoint)]
        live = [(p, p.info) for p in self.producers.values() if p.info is not None and p.up]
        return {
            "group": self.group, "at": now, "polls": self.polls, "admin": admin,
            "producers": producers,
            "tasks": [_task_view(p, t) for p, info in live for t in _maps(info.get("tasks"))],
            "workers": _workers(live),
            "running": [_running_view(p, j) for p, info in live for j in _maps(info.get("running"))],
            "failures": sorted(
                (_failure_view(p, f) for p, info in live for f in _maps(info.get("failures"))),
                key=lambda f: -(f["at"] or 0),
            )[:FAILURES_SHOWN],
            "waiting": [{"producer": _pid(p), "key": key, "value": _waiting_view(key, info[key])}
                        for p, info in live for key in WAITING_KEYS if info.get(key)],
            "series": list(self.samples),
        }

    def _producer_view(self, producer: _Producer, now: float) -> dict[str, Any]:
        info = producer.info or {}
        view: dict[str, Any] = {
            "endpoint": producer.endpoint, "id": _pid(producer), "up": producer.up,
            "error": producer.error, "group": _text(info.get("group"), 100),
            "version": _text(info.get("version"), 40),
            "stale_s": None if producer.last_ok is None or producer.up else round(now - producer.last_ok, 1),
        }
        for key in ("pending", "leased", "done", "failed", "dead", "cancelled", "workers",
                    "parked_claims", "finished_last_min", "uptime_s", "connections"):
            view[key] = _num(info.get(key))
        return view

    def infos(self) -> list[tuple[str, dict[str, Any] | None, bool]]:
        """``(endpoint, last good info or None, up)`` per producer (for the metrics)."""
        return [(p.endpoint, p.info, p.up) for p in self.producers.values()]


def _waiting_view(key: str, value: Any) -> Any:
    """What the page shows of one ``WAITING_KEYS`` entry: ``waiting`` (the jobs no connected
    worker can run, docs/protocol.md) as rows of ``task``, ``jobs``, ``needs`` (resources and
    labels, e.g. ``gpu=1 zone=eu``) and ``why``; another key's value as it comes."""
    if key != "waiting":
        return plain(value)
    rows = []
    for entry in _maps(value):
        needs = [f"{_text(name, 64)}={amount:g}" if _num(amount) is not None else
                 f"{_text(name, 64)}={_text(amount, 128)}"
                 for field in ("resources", "labels") if isinstance(entry.get(field), Mapping)
                 for name, amount in entry[field].items()]
        rows.append({"task": _text(entry.get("task")), "jobs": _num(entry.get("jobs")),
                     "needs": " ".join(needs), "why": _text(entry.get("missing") or entry.get("message"))})
    return rows


def _pid(producer: _Producer) -> str:
    return _text((producer.info or {}).get("producer_id") or producer.endpoint, 100)


def _totals(info: Mapping[str, Any]) -> dict[str, Any]:
    """The cumulative figures of one reply the charts difference."""
    tasks = _maps(info.get("tasks"))
    width = max((len(t.get("run_counts") or ()) for t in tasks), default=0)
    run_buckets = [0.0] * width
    for task in tasks:
        for i, count in enumerate(task.get("run_counts") or ()):
            run_buckets[i] += _num(count) or 0
    return {
        "finished": sum((_num(info.get(k)) or 0) for k in ("done", "failed")),
        "failed": (_num(info.get("failed")) or 0) + (_num(info.get("dead")) or 0),
        "wait_sum": sum(_num(t.get("wait_sum_s")) or 0 for t in tasks),
        "wait_count": sum(sum(_num(c) or 0 for c in t.get("wait_counts") or ()) for t in tasks),
        "run_sum": sum(_num(t.get("run_sum_s")) or 0 for t in tasks),
        "run_buckets": run_buckets,
        "bounds": [b for b in info.get("buckets_s") or () if _num(b) is not None],
    }


def _delta(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """What happened between two polls of one producer (counts never go below zero)."""
    out = {key: max(0.0, new[key] - old[key]) for key in ("finished", "failed", "wait_sum",
                                                          "wait_count", "run_sum")}
    same = len(old["run_buckets"]) == len(new["run_buckets"])
    out["run_buckets"] = [max(0.0, n - (o if same else 0)) for o, n in
                          zip(old["run_buckets"] if same else new["run_buckets"], new["run_buckets"], strict=True)]
    out["bounds"] = new["bounds"]
    return out


def _sample(now: float, deltas: list[dict[str, Any]]) -> dict[str, Any]:
    """One chart point: jobs finished and failed (both per poll interval), mean wait, mean
    run and 95th percentile run (milliseconds; None without jobs)."""
    finished = sum(d["finished"] for d in deltas)
    wait_count = sum(d["wait_count"] for d in deltas)
    buckets: list[float] = []
    bounds: list[float] = []
    for d in deltas:
        if len(d["run_buckets"]) != len(d["bounds"]) + 1:
            continue
        bounds = d["bounds"]
        buckets = [a + b for a, b in zip(buckets or [0.0] * len(d["run_buckets"]), d["run_buckets"], strict=True)]
    runs = sum(buckets)
    return {
        "t": round(now, 3), "finished": finished, "failed": sum(d["failed"] for d in deltas),
        "wait_ms": round(1000 * sum(d["wait_sum"] for d in deltas) / wait_count, 3) if wait_count else None,
        "run_ms": round(1000 * sum(d["run_sum"] for d in deltas) / runs, 3) if runs else None,
        "run_p95_ms": _quantile(bounds, buckets, 0.95),
    }


def _quantile(bounds: list[float], buckets: list[float], q: float) -> float | None:
    """The ``q`` quantile (milliseconds) of per-bucket counts, as Prometheus's
    ``histogram_quantile`` estimates it: linear within the bucket it falls in."""
    total = sum(buckets)
    if not total:
        return None
    rank, seen = q * total, 0.0
    for i, count in enumerate(buckets):
        if seen + count >= rank and count:
            lower = bounds[i - 1] if i else 0.0
            if i >= len(bounds):
                return round(1000 * lower, 3)
            return round(1000 * (lower + (bounds[i] - lower) * (rank - seen) / count), 3)
        seen += count
    return None


def _task_view(producer: _Producer, task: Mapping[str, Any]) -> dict[str, Any]:
    view: dict[str, Any] = {"producer": _pid(producer), "task": _text(task.get("task"), 200)}
    for key in TASK_COUNTS:
        view[key] = _num(task.get(key))
    for kind in ("wait", "run"):
        count = sum(_num(c) or 0 for c in task.get(f"{kind}_counts") or ())
        total = _num(task.get(f"{kind}_sum_s"))
        view[f"{kind}_mean_ms"] = round(1000 * total / count, 3) if count and total is not None else None
    return view


def _workers(live: list[tuple[_Producer, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each worker once, over every producer that heard from it."""
    merged: dict[str, dict[str, Any]] = {}
    for producer, info in live:
        for entry in _maps(info.get("worker_list")):
            name = _text(entry.get("id"), 100)
            worker = merged.setdefault(name, {"id": name, "busy": 0, "free": 0, "last_seen_s": None,
                                              "producers": [], "resources": None, "labels": None})
            worker["busy"] += int(_num(entry.get("running")) or 0)
            worker["free"] = max(worker["free"], int(_num(entry.get("parked")) or 0))
            seen = _num(entry.get("last_seen_s"))
            if seen is not None and (worker["last_seen_s"] is None or seen < worker["last_seen_s"]):
                worker["last_seen_s"] = seen
            worker["producers"].append(_pid(producer))
            for key in ("resources", "labels"):
                if entry.get(key) is not None:
                    worker[key] = plain(entry[key])
    return sorted(merged.values(), key=lambda w: w["id"])


def _running_view(producer: _Producer, job: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "producer": _pid(producer), "endpoint": producer.endpoint, "job_id": _num(job.get("job_id")),
        "task": _text(job.get("task"), 200), "worker": _text(job.get("worker"), 100),
        "attempt": _num(job.get("attempt")), "running_s": _num(job.get("running_s")),
        "done": _num(job.get("done")), "total": _num(job.get("total")),
        "message": _text(job.get("message"), 200),
    }


def _failure_view(producer: _Producer, failure: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "producer": _pid(producer), "endpoint": producer.endpoint,
        "job_id": _num(failure.get("job_id")), "task": _text(failure.get("task"), 200),
        "kind": _text(failure.get("kind"), 20), "at": _num(failure.get("at")),
        "attempt": _num(failure.get("attempt")), "worker": _text(failure.get("worker"), 100),
        "type": _text(failure.get("type"), 100), "message": _text(failure.get("message")),
        "traceback": _text(failure.get("traceback"), TRACEBACK_CHARS),
    }

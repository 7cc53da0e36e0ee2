"""The numbers of a lab run's report, computed from its tables (pure: no files, no clock).

:func:`compute_report` reads the run's tables (:mod:`~freelance_rz.lab.tables`) into the
report dict: counts of jobs by outcome, latencies, duplicate executions and what explains
them, per worker and per producer rows, and the recovery times C4 (a killed worker's jobs
leased again) and C5 (workers noticing a lost producer). Every time is in seconds.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from .tables import KILL_ACTIONS, Execution, Job, World, build_tables

__all__ = ["compute_report"]

BUCKETS = ("completed", "failed", "dead", "cancelled", "lost", "abandoned")  # a job's outcome in the report
WORKER_COLUMNS = ("leased", "started", "finished", "cut_off")  # the report's per-worker counts


def _percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _r(value: float | None) -> float | None:
    """Seconds rounded to the millisecond, for a readable report."""
    return None if value is None else round(value, 3)


# --------------------------------------------------------------------------- duplicates and recovery


def _duplicates(executions: list[Execution]) -> dict[str, Any]:
    """Extra executions per key beyond the first, each matched to a distinct earlier execution
    of the same key that accounts for it: one cut off before the extra one started
    (explained), else one that never finished on a worker never cut off (after a crash)."""
    by_key: dict[str, list[Execution]] = defaultdict(list)
    for run in executions:
        by_key[run.key].append(run)
    total = explained = after_crash = 0
    unexplained_keys: set[str] = set()
    for key, runs in by_key.items():
        runs.sort(key=lambda r: r.start)
        used: set[int] = set()
        for i in range(1, len(runs)):
            total += 1
            start = runs[i].start
            cut = [j for j in range(i) if j not in used and (c := runs[j].cut_at) is not None and c < start]
            crashed = [j for j in range(i) if j not in used and runs[j].end is None and runs[j].cut_at is None]
            if cut:
                used.add(cut[0])
                explained += 1
            elif crashed:
                used.add(crashed[0])
                after_crash += 1
            else:
                unexplained_keys.add(key)
    return {
        "duplicate_executions": total,
        "duplicates_explained": explained,
        "duplicates_after_crash": after_crash,
        "duplicates_unexplained": total - explained - after_crash,
        "duplicates_unexplained_keys": sorted(unexplained_keys)[:20],
    }


def _held_at(job: Job, worker: str, k: float) -> bool:
    """Whether ``worker`` held a lease of ``job`` at time ``k``: its latest lease up to ``k``
    went to that worker and nothing ended it (released, requeued, terminal) by then."""
    leases = [(t, w) for t, w in job.leases if t <= k]
    if not leases or leases[-1][1] != worker:
        return False
    leased_t = leases[-1][0]
    return not any(leased_t <= t <= k for t, _ in job.ends)


def _recovery_c4(world: World, jobs: list[Job], t0: float) -> list[dict[str, Any]]:
    """For each sigkill/restart of a worker (or its host): each job it held and how long
    until that job was leased again (to any worker), in seconds."""
    out = []
    for action in world.actions:
        if action.get("action") not in KILL_ACTIONS:
            continue
        k = action["t"]
        for worker in sorted(w for w in world.workers if world.affects(action, w)):
            held = []
            for job in jobs:
                if not _held_at(job, worker, k):
                    continue
                later = [(t, w) for t, w in job.leases if t > k]
                held.append({
                    "job": job.label,
                    "re_leased_after_s": _r(later[0][0] - k) if later else None,
                    "to": later[0][1] if later else None,
                })
            held.sort(key=lambda h: str(h["job"]))
            times = [h["re_leased_after_s"] for h in held if h["re_leased_after_s"] is not None]
            out.append({
                "worker": worker, "action": action["action"], "t_s": _r(k - t0),
                "jobs": held, "max_s": max(times) if times else None,
            })
    return out


def _running_at(world: World, worker: str, k: float, t0: float) -> bool:
    """Whether a worker's process was up just before time ``k``: its last start/restart/sigkill
    action before ``k`` is not a sigkill; with no such action, its scenario ``start_s`` (seconds
    after ``t0``) has passed."""
    before = [a for a in world.life_actions(worker) if a["t"] < k]
    if before:
        return bool(before[-1]["action"] != "sigkill")
    return t0 + world.start_s.get(worker, 0.0) <= k


def _recovery_c5(world: World, records: list[dict[str, Any]], t0: float) -> list[dict[str, Any]]:
    """For each loss of a producer (sigkill or restart of it or its host, link_down of its
    host): for each worker up at that moment (and on another host for a link_down), seconds
    until its first ``unreachable`` record for that producer, before the producer's next loss."""
    unreachable: dict[tuple[str, str], list[float]] = defaultdict(list)  # (worker, producer) -> t
    for rec in records:
        if rec.get("kind") != "unreachable":
            continue
        producer = rec.get("producer") or world.keys.get(str(rec.get("producer_key")))
        if producer is not None:
            unreachable[(str(rec.get("peer")), producer)].append(rec["t"])
    out = []
    for producer in sorted(world.producers):
        losses = world.producer_losses(producer)
        for i, action in enumerate(losses):
            k = action["t"]
            until = losses[i + 1]["t"] if i + 1 < len(losses) else math.inf
            workers: dict[str, float | None] = {}
            for worker in sorted(world.workers):
                if not _running_at(world, worker, k, t0):
                    continue
                if action["action"] == "link_down" and world.host.get(worker) == world.host.get(producer):
                    continue
                seen = [t for t in unreachable[(worker, producer)] if k <= t < until]
                workers[worker] = _r(min(seen) - k) if seen else None
            times = [v for v in workers.values() if v is not None]
            out.append({
                "producer": producer, "action": action["action"], "t_s": _r(k - t0),
                "workers": workers, "max_s": max(times) if times else None,
            })
    return sorted(out, key=lambda entry: entry["t_s"])


def _category(outcome: str) -> str:
    """The report bucket of a resolution outcome."""
    if outcome == "ok":
        return "completed"
    if outcome == "JobLost":
        return "dead"
    if outcome == "CancelledError":
        return "cancelled"
    return "failed"



# --------------------------------------------------------------------------- the report


@dataclass
class _JobTally:
    """The jobs' outcomes: jobs per bucket (:data:`BUCKETS`), the report's per-producer rows,
    the latencies (seconds, submitted to resolution) of the resolved jobs, and the makespan
    over all producers (seconds, unrounded; None when no job was resolved)."""

    counts: dict[str, int]
    producers: dict[str, dict[str, Any]]
    latencies: list[float]
    makespan: float | None


def _tally_jobs(world: World, jobs: list[Job]) -> _JobTally:
    """Each job in one bucket: its resolution's category, else lost (its producer could still
    resolve it) or abandoned; per producer too, with its makespan."""
    counts = dict.fromkeys(BUCKETS, 0)
    per_producer: dict[str, dict[str, Any]] = {
        p: {"submitted": 0, **dict.fromkeys(counts, 0), "makespan_s": None} for p in sorted(world.producers)
    }
    latencies: list[float] = []
    first_submit: dict[str, float] = {}
    last_resolution: dict[str, float] = {}
    for job in jobs:
        row = per_producer[job.producer]
        row["submitted"] += 1
        assert job.submitted_t is not None
        first_submit[job.producer] = min(first_submit.get(job.producer, math.inf), job.submitted_t)
        resolution = job.resolution
        if resolution is None:
            alive = job.last_incarnation and not world.killed_at_end(job.producer)
            bucket = "lost" if alive else "abandoned"
        else:
            bucket = _category(resolution[1])
            latencies.append(resolution[0] - job.submitted_t)
            last_resolution[job.producer] = max(last_resolution.get(job.producer, -math.inf), resolution[0])
        counts[bucket] += 1
        row[bucket] += 1
    for producer, row in per_producer.items():
        if producer in first_submit and producer in last_resolution:
            row["makespan_s"] = _r(last_resolution[producer] - first_submit[producer])
    makespan = None
    if first_submit and last_resolution:
        makespan = max(last_resolution.values()) - min(first_submit.values())
    return _JobTally(counts=counts, producers=per_producer, latencies=latencies, makespan=makespan)


def _latency(latencies: list[float]) -> dict[str, float | None]:
    """``p50``, ``p99`` (nearest rank) and ``max`` of ``latencies`` (seconds, rounded)."""
    return {
        "p50": _r(_percentile(latencies, 50)),
        "p99": _r(_percentile(latencies, 99)),
        "max": _r(max(latencies)) if latencies else None,
    }


def _per_worker(world: World, jobs: list[Job], executions: list[Execution]) -> dict[str, dict[str, int]]:
    """Per worker (the known ones first, by name): leases handed to it, executions started,
    finished and cut off."""
    per_worker = {w: dict.fromkeys(WORKER_COLUMNS, 0) for w in sorted(world.workers)}
    for job in jobs:
        for _, worker in job.leases:
            per_worker.setdefault(worker, dict.fromkeys(WORKER_COLUMNS, 0))
            per_worker[worker]["leased"] += 1
    for run in executions:
        row = per_worker.setdefault(run.worker, dict.fromkeys(WORKER_COLUMNS, 0))
        row["started"] += 1
        row["finished"] += run.end is not None
        row["cut_off"] += run.cut_at is not None
    return per_worker


def _recovery(world: World, jobs: list[Job], records: list[dict[str, Any]], t0: float) -> dict[str, Any]:
    """The report's ``recovery``: C4 and C5 entries, each kind's largest ``max_s``."""
    c4 = _recovery_c4(world, jobs, t0)
    c5 = _recovery_c5(world, records, t0)
    c4_times = [e["max_s"] for e in c4 if e["max_s"] is not None]
    c5_times = [e["max_s"] for e in c5 if e["max_s"] is not None]
    return {
        "c4": c4,
        "c4_max_s": max(c4_times) if c4_times else None,
        "c5": c5,
        "c5_max_s": max(c5_times) if c5_times else None,
    }


def _as_run(world: World, records: list[dict[str, Any]], t0: float) -> dict[str, Any]:
    """The report's ``actions`` (every one, no-ops with their note) and ``peer_exits``, with
    ``t_s`` in seconds from ``t0``."""
    return {
        "actions": [
            {"t_s": _r(a["t"] - t0), "action": a.get("action"), "target": a.get("target"),
             **({"note": a["note"]} if a.get("note") else {})}
            for a in world.all_actions
        ],
        "peer_exits": [
            {"t_s": _r(r["t"] - t0), "target": r.get("target"), "code": r.get("code")}
            for r in records if r.get("kind") == "peer_exit"
        ],
    }


def compute_report(scenario: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    """The report of a run, from its scenario and its records alone (pure; times in seconds).

    Fields:

    - ``scenario``, ``mode``, ``duration_s``: from the scenario.
    - ``jobs_submitted``: jobs with a ``submitted`` record (a job is ``(producer peer,
      incarnation, job_id)``, see :mod:`~freelance_rz.lab.tables`).
    - ``jobs_completed`` / ``jobs_failed`` / ``jobs_dead`` / ``jobs_cancelled``: jobs whose
      first resolution is "ok" / any other exception / "JobLost" / "CancelledError". A job's
      resolution is its first ``resolved`` record, else its first terminal ledger record
      (``done`` = ok, ``failed``, ``dead``, ``cancelled``).
    - ``jobs_lost``: submitted jobs with no resolution at all, whose producer could still
      resolve them at the end: the job was submitted by the producer's last process (or by
      any of its processes, when it has a durable store), and the producer's last
      start/restart/sigkill action (on it or its host) is not a sigkill.
    - ``jobs_abandoned``: the other unresolved jobs, whose producer process was killed
      (sigkill, or a restart without a store) with nothing left to resolve them.
    - ``duplicate_executions``: ``started`` records per key beyond the first. Each extra one
      is ``duplicates_explained`` when an earlier execution of that key was cut off before it
      started: its worker or the job's producer was sigkilled or restarted (it or its host)
      between the execution's start and its finish (or at any time after its start, when it
      never finished), or the link of the worker's or the producer's host was down at some
      moment of that span (from link_down to the next link_up of that host). Else ``duplicates_after_crash`` when an earlier execution never
      finished although its worker was never cut off (the job's process died: a retried
      poison job). Else ``duplicates_unexplained`` (keys in ``duplicates_unexplained_keys``).
      Each earlier execution accounts for one extra execution at most.
    - ``futures_resolved_more_than_once``: jobs with more than one ``resolved`` record.
    - ``makespan_s``: first ``submitted`` to last resolution.
    - ``latency_s``: ``p50``, ``p99`` (nearest rank) and ``max`` of submitted → resolution
      over the resolved jobs.
    - ``workers``: per worker ``leased`` (leases handed to it), ``started`` and ``finished``
      executions, ``cut_off`` (executions cut off, as above).
    - ``producers``: per producer ``submitted``, ``completed``, ``failed``, ``dead``,
      ``cancelled``, ``lost``, ``abandoned``, ``makespan_s``.
    - ``recovery``: ``c4``, per sigkill/restart of a worker: each job it held then (its last
      lease up to then went to that worker and nothing ended it) and ``re_leased_after_s``,
      the time to that job's next ``leased`` record (any worker), ``max_s``; ``c5``, per loss
      of a producer (sigkill or restart of it or its host, link_down of its host): for each
      worker up at that moment (and, for a link_down, on another host) the time to its first
      ``unreachable`` record for that producer before the producer's next loss (None: never),
      and ``max_s``; ``c4_max_s`` and ``c5_max_s`` over all of them.
    - ``actions``: the timeline as run (``t_s`` from the run's start, ``action``, ``target``);
      ``peer_exits``: (``t_s``, ``target``, ``code``).

    Times ``t_s`` count from the run's time zero: the runner's ``go`` record (else the
    earliest record); peers start before it, so their ``start`` actions have ``t_s`` < 0.
    Actions the runner notes as no-ops ("already running", "not running") are listed but
    count for nothing.

    Args:
        scenario: the run's scenario as a dict (``Scenario.to_dict()`` plus the runner's
            ``mode``, as in ``scenario.json``).
        records: the run's event records, in any order (see :func:`~freelance_rz.lab.tables.build_tables`).

    Raises:
        KeyError, TypeError, ValueError: as :func:`~freelance_rz.lab.tables.build_tables`.
    """
    tables = build_tables(scenario, records)
    world, jobs, t0 = tables.world, tables.jobs, tables.t0
    tally = _tally_jobs(world, jobs)
    return {
        "scenario": scenario.get("name"),
        "mode": scenario.get("mode"),
        "duration_s": scenario.get("duration_s"),
        "jobs_submitted": len(jobs),
        "jobs_completed": tally.counts["completed"],
        "jobs_failed": tally.counts["failed"],
        "jobs_dead": tally.counts["dead"],
        "jobs_cancelled": tally.counts["cancelled"],
        "jobs_lost": tally.counts["lost"],
        "jobs_abandoned": tally.counts["abandoned"],
        **_duplicates(tables.executions),
        "futures_resolved_more_than_once": sum(1 for job in jobs if len(job.resolved) > 1),
        "makespan_s": _r(tally.makespan),
        "latency_s": _latency(tally.latencies),
        "workers": _per_worker(world, jobs, tables.executions),
        "producers": tally.producers,
        "recovery": _recovery(world, jobs, tables.records, t0),
        **_as_run(world, tables.records, t0),
    }

"""The report of a lab run, computed from its event records only.

A run directory holds ``scenario.json`` and ``events.jsonl`` (format: the records contract,
kept beside the runner). :func:`compute_report` is a pure function of the scenario dict and
the list of records; :func:`build_report` reads the two files, :func:`write_outputs` writes
``report.json`` (and ``timeline.png`` when matplotlib is importable), and
:func:`format_report` renders a report for the terminal. Every time is in seconds.

Theory of operation. Records are sorted by ``t`` (wall clock). Three tables are built:

- **jobs**, one per job identity ``(producer peer, incarnation, job_id)``. The incarnation
  is 0 for a producer with a durable store (its job ids survive a restart); otherwise it is
  the producer process's ``pid`` when records carry one, else the number of start/restart
  actions on that producer before the record (a producer restarted without a store numbers
  its jobs from the start again). ``job_key`` records join a job to its ``key``.
- **executions**, one per ``started`` record of the lab task, paired with the ``finished``
  record of the same key, worker and pid.
- **cuts**: an execution is cut off by a ``sigkill`` or ``restart`` action on its worker or
  on its job's producer (or their hosts) while it runs, and by the link of the worker's or
  the producer's host being down at some moment while it runs (``link_down`` to the next
  ``link_up``); see :meth:`_World.cut_at`.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Timeline", "build_report", "compute_report", "compute_timeline", "format_report", "read_run", "write_outputs"]

PRODUCER_KINDS = frozenset(
    {"producer_ready", "job_key", "submitted", "leased", "released", "requeued",
     "done", "failed", "dead", "cancelled", "resolved"}
)
TERMINAL_KINDS = {"done": "ok", "failed": "JobFailed", "dead": "JobLost", "cancelled": "CancelledError"}
KILL_ACTIONS = frozenset({"sigkill", "restart"})  # actions that end a peer's process at once
LIFE_ACTIONS = frozenset({"start", "restart", "sigkill"})  # actions that decide if a process is up
NO_OP_NOTES = frozenset({"already running", "not running"})  # the runner's notes on actions that did nothing


@dataclass
class Job:
    """One job at one producer: the times (wall clock, seconds) of the steps of its life."""

    producer: str
    job_id: int
    key: str | None = None
    submitted_t: float | None = None
    leases: list[tuple[float, str]] = field(default_factory=list)  # (t, worker)
    ends: list[tuple[float, str]] = field(default_factory=list)  # lease ends: released, requeued, terminal
    terminal: list[tuple[float, str]] = field(default_factory=list)  # (t, kind) of done/failed/dead/cancelled
    resolved: list[tuple[float, str]] = field(default_factory=list)  # (t, outcome)
    last_incarnation: bool = True  # submitted by the producer's last process (or it has a store)

    @property
    def label(self) -> str:
        return self.key if self.key is not None else f"{self.producer}#{self.job_id}"

    @property
    def resolution(self) -> tuple[float, str] | None:
        """(t, outcome) of the first resolution: the first ``resolved`` record, else the first
        terminal ledger event (a job restored by a durable restart may have no Future here)."""
        if self.resolved:
            return self.resolved[0]
        if self.terminal:
            t, kind = self.terminal[0]
            return t, TERMINAL_KINDS[kind]
        return None


@dataclass
class Execution:
    """One run of the lab task: ``start``/``end`` wall-clock seconds (``end`` None when the
    task never wrote ``finished``)."""

    key: str
    worker: str
    pid: int | None
    start: float
    end: float | None = None
    producer: str | None = None
    cut_at: float | None = None  # the first kill/cut of this execution, if any
    heard_at: float | None = None  # when its producer next recorded a step of the job

    def until(self, default: float) -> float:
        """When the execution ended, was cut off, or (it never finished: a time limit, a
        crash) its producer next heard of the job; ``default`` when none is known."""
        for t in (self.end, self.cut_at, self.heard_at):
            if t is not None:
                return t
        return default


# --------------------------------------------------------------------------- helpers


def _peer_specs(scenario: dict[str, Any], role: str) -> dict[str, dict[str, Any]]:
    """The scenario's producers or workers as {name: spec}; accepts a list of tables with a
    ``name`` or a table of tables keyed by name."""
    raw = scenario.get(role) or {}
    if isinstance(raw, dict):
        return {str(name): dict(spec or {}) for name, spec in raw.items()}
    return {str(spec["name"]): dict(spec) for spec in raw if isinstance(spec, dict) and "name" in spec}


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


class _World:
    """Who is who in a run: hosts of peers, producer stores and ids, actions per target."""

    def __init__(self, scenario: dict[str, Any], records: list[dict[str, Any]]) -> None:
        producer_specs = _peer_specs(scenario, "producers")
        worker_specs = _peer_specs(scenario, "workers")
        self.host: dict[str, str] = {}
        for name, spec in {**producer_specs, **worker_specs}.items():
            if spec.get("host"):
                self.host[name] = str(spec["host"])
        self.producers: set[str] = set(producer_specs)
        self.workers: set[str] = set(worker_specs)
        self.start_s: dict[str, float] = {
            name: float(spec.get("start_s") or 0.0) for name, spec in {**producer_specs, **worker_specs}.items()
        }
        self.durable: set[str] = {name for name, spec in producer_specs.items() if spec.get("store")}
        self.hosts: set[str] = {str(h.get("name") if isinstance(h, dict) else h) for h in scenario.get("hosts") or []}
        self.keys: dict[str, str] = {}  # producer id or endpoint -> producer peer
        self.actions: list[dict[str, Any]] = []  # the actions that did something
        self.all_actions: list[dict[str, Any]] = []  # also "start" of a running peer and the like
        for rec in records:
            kind, peer = rec.get("kind"), rec.get("peer")
            if kind == "action":
                self.all_actions.append(rec)
                if rec.get("note") not in NO_OP_NOTES:
                    self.actions.append(rec)
                continue
            if peer and rec.get("host") and kind not in ("peer_exit",):
                self.host.setdefault(str(peer), str(rec["host"]))
            if kind in PRODUCER_KINDS and peer:
                self.producers.add(peer)
            if kind in ("started", "finished", "unreachable") and peer:
                self.workers.add(peer)
            if kind == "leased" and rec.get("worker"):
                self.workers.add(rec["worker"])
            if kind == "producer_ready" and peer:
                if rec.get("store"):
                    self.durable.add(peer)
                if rec.get("producer_id"):
                    self.keys[str(rec["producer_id"])] = peer
                for endpoint in rec.get("endpoints") or []:
                    self.keys[str(endpoint)] = peer

    def link_host(self, action: dict[str, Any]) -> str | None:
        """The host whose link a link_down/link_up action means: its target, or the host of
        the peer it names (a peer may stand for its host)."""
        if action.get("host_target"):
            return str(action["host_target"])
        target = action.get("target")
        if target is None:
            return None
        return str(self.host.get(target, target) if target not in self.hosts else target)

    def link_downs(self, host: str | None) -> list[float]:
        """Times the link of ``host`` was cut."""
        return [a["t"] for a in self.actions if a.get("action") == "link_down" and self.link_host(a) == host]

    def affects(self, action: dict[str, Any], peer: str) -> bool:
        """Whether an action names this peer or its host."""
        target = action.get("target")
        return target == peer or (target is not None and target == self.host.get(peer))

    def life_actions(self, peer: str) -> list[dict[str, Any]]:
        return [a for a in self.actions if a.get("action") in LIFE_ACTIONS and self.affects(a, peer)]

    def starts(self, peer: str) -> list[float]:
        """Times of start/restart actions on this peer (or its host)."""
        return [a["t"] for a in self.life_actions(peer) if a["action"] in ("start", "restart")]

    def killed_at_end(self, peer: str) -> bool:
        """Whether the peer's last start/restart/sigkill action is a sigkill."""
        life = self.life_actions(peer)
        return bool(life) and life[-1]["action"] == "sigkill"

    def link_outages(self, host: str | None) -> list[tuple[float, float]]:
        """(down, up) times of each cut of the link of ``host``; ``up`` is inf when the link
        never came back."""
        out = []
        for down in self.link_downs(host):
            ups = [a["t"] for a in self.actions
                   if a.get("action") == "link_up" and self.link_host(a) == host and a["t"] >= down]
            out.append((down, min(ups) if ups else math.inf))
        return out

    def kills(self, peer: str | None) -> list[float]:
        """Times of sigkill or restart actions on the peer or its host."""
        if peer is None:
            return []
        return [a["t"] for a in self.actions if a.get("action") in KILL_ACTIONS and self.affects(a, peer)]

    def cut_at(self, run: Execution) -> float | None:
        """When an execution was cut off, or None: the first sigkill/restart of its worker or
        of its job's producer (or their hosts) from its start until its result reached the
        producer (its finish or the producer's next step for the job, whichever is later; ever
        after when neither is known: a result finished but not yet delivered dies with its
        worker too), or the first moment in that span when the link of the worker's host or
        of the producer's host (when they differ) was down (the link action is written just
        before the link goes down, so an execution may start a few ms after it)."""
        known = [t for t in (run.end, run.heard_at) if t is not None]
        end = max(known) if known else math.inf
        hits = [k for k in self.kills(run.worker) + self.kills(run.producer) if run.start <= k <= end]
        whost, phost = self.host.get(run.worker), self.host.get(run.producer or "")
        hosts = [] if whost == phost else [whost, phost]  # on one host, no link between them
        for host in hosts:
            for down, up in self.link_outages(host):
                if down <= end and up > run.start:
                    hits.append(max(down, run.start))
        return min(hits) if hits else None

    def producer_losses(self, producer: str) -> list[dict[str, Any]]:
        """Actions that take a producer away: sigkill or restart of it or its host, link_down of
        its host."""
        return [
            a for a in self.actions
            if (a.get("action") in KILL_ACTIONS and self.affects(a, producer))
            or (a.get("action") == "link_down" and self.link_host(a) == self.host.get(producer))
        ]


# --------------------------------------------------------------------------- tables


def _incarnation(world: _World, rec: dict[str, Any]) -> Any:
    peer = rec["peer"]
    if peer in world.durable:
        return 0
    if rec.get("pid") is not None:
        return ("pid", rec["pid"])
    return ("epoch", sum(1 for t in world.starts(peer) if t <= rec["t"]))


def _build_jobs(world: _World, records: list[dict[str, Any]]) -> dict[tuple[str, Any, int], Job]:
    jobs: dict[tuple[str, Any, int], Job] = {}
    last_inc: dict[str, Any] = {}
    for rec in records:
        kind = rec.get("kind")
        if kind not in PRODUCER_KINDS or kind == "producer_ready" or rec.get("job_id") is None:
            continue
        peer, inc = rec["peer"], _incarnation(world, rec)
        last_inc[peer] = inc
        ident = (peer, inc, int(rec["job_id"]))
        job = jobs.get(ident)
        if job is None:
            if kind not in ("submitted", "job_key"):
                continue  # a step of a job never submitted in this run: ignored
            job = jobs[ident] = Job(producer=peer, job_id=int(rec["job_id"]))
        t = rec["t"]
        if kind == "job_key":
            job.key = str(rec["key"])
        elif kind == "submitted":
            job.submitted_t = t if job.submitted_t is None else min(job.submitted_t, t)
        elif kind == "leased":
            job.leases.append((t, str(rec.get("worker"))))
        elif kind in ("released", "requeued"):
            job.ends.append((t, kind))
        elif kind in TERMINAL_KINDS:
            job.terminal.append((t, kind))
            job.ends.append((t, kind))
        elif kind == "resolved":
            job.resolved.append((t, str(rec.get("outcome"))))
    for (peer, inc, _), job in jobs.items():
        job.last_incarnation = inc == last_inc.get(peer)
    return {ident: job for ident, job in jobs.items() if job.submitted_t is not None}


def _build_executions(world: _World, records: list[dict[str, Any]], jobs: list[Job]) -> list[Execution]:
    producer_of = {job.key: job.producer for job in jobs if job.key is not None}
    ends_of: dict[str, list[float]] = defaultdict(list)  # key -> producer-side end steps
    for job in jobs:
        if job.key is not None:
            ends_of[job.key].extend(t for t, _ in job.ends)
    executions: list[Execution] = []
    open_runs: dict[tuple[str, str, Any], Execution] = {}
    for rec in records:
        kind = rec.get("kind")
        if kind not in ("started", "finished") or rec.get("key") is None:
            continue
        ident = (str(rec["key"]), str(rec.get("peer")), rec.get("pid"))
        if kind == "started":
            run = Execution(key=ident[0], worker=ident[1], pid=rec.get("pid"), start=rec["t"],
                            producer=producer_of.get(ident[0]))
            executions.append(run)
            open_runs[ident] = run
        else:
            ended = open_runs.pop(ident) if ident in open_runs else None
            if ended is not None:
                ended.end = rec["t"]
    for run in executions:
        run.heard_at = min((t for t in ends_of[run.key] if t >= run.start), default=None)
        run.cut_at = world.cut_at(run)
    return executions


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


def _recovery_c4(world: _World, jobs: list[Job], t0: float) -> list[dict[str, Any]]:
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


def _running_at(world: _World, worker: str, k: float, t0: float) -> bool:
    """Whether a worker's process was up just before time ``k``: its last start/restart/sigkill
    action before ``k`` is not a sigkill; with no such action, its scenario ``start_s`` (seconds
    after ``t0``) has passed."""
    before = [a for a in world.life_actions(worker) if a["t"] < k]
    if before:
        return bool(before[-1]["action"] != "sigkill")
    return t0 + world.start_s.get(worker, 0.0) <= k


def _recovery_c5(world: _World, records: list[dict[str, Any]], t0: float) -> list[dict[str, Any]]:
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
class Timeline:
    """What the timeline picture needs: the run's time zero, first and last record (wall clock, seconds), the
    worker and producer names, the executions and the actions, all from the records."""

    t0: float  # the run's time zero (the ``go`` record)
    t_first: float  # the earliest record (peers start before time zero)
    t_end: float
    workers: list[str]
    producers: list[str]
    executions: list[Execution]
    actions: list[dict[str, Any]]


def _sorted_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted((r for r in records if isinstance(r.get("t"), (int, float))), key=lambda r: r["t"])


def _run_start(records: list[dict[str, Any]]) -> float:
    """The run's time zero (wall clock, seconds): the runner's ``go`` record (timeline
    ``at_s`` count from it), else the earliest record, else 0."""
    for rec in records:
        if rec.get("kind") == "go":
            return float(rec["t"])
    return records[0]["t"] if records else 0.0


def compute_timeline(scenario: dict[str, Any], records: list[dict[str, Any]]) -> Timeline:
    """The :class:`Timeline` of a run (pure)."""
    records = _sorted_records(records)
    world = _World(scenario, records)
    jobs = list(_build_jobs(world, records).values())
    executions = _build_executions(world, records, jobs)
    return Timeline(
        t0=_run_start(records),
        t_first=records[0]["t"] if records else 0.0,
        t_end=records[-1]["t"] if records else 0.0,
        workers=sorted(world.workers | {run.worker for run in executions}),
        producers=sorted(world.producers),
        executions=executions,
        actions=world.all_actions,
    )


def compute_report(scenario: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    """The report of a run, from its scenario and its records alone (pure; times in seconds).

    Fields:

    - ``scenario``, ``mode``, ``duration_s``: from the scenario.
    - ``jobs_submitted``: jobs with a ``submitted`` record (a job is ``(producer peer,
      incarnation, job_id)``, see the module docstring).
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
    """
    records = _sorted_records(records)
    t0 = _run_start(records)
    world = _World(scenario, records)
    jobs = list(_build_jobs(world, records).values())
    executions = _build_executions(world, records, jobs)

    counts = {"completed": 0, "failed": 0, "dead": 0, "cancelled": 0, "lost": 0, "abandoned": 0}
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

    per_worker: dict[str, dict[str, int]] = {
        w: {"leased": 0, "started": 0, "finished": 0, "cut_off": 0} for w in sorted(world.workers)
    }
    for job in jobs:
        for _, worker in job.leases:
            per_worker.setdefault(worker, {"leased": 0, "started": 0, "finished": 0, "cut_off": 0})
            per_worker[worker]["leased"] += 1
    for run in executions:
        row = per_worker.setdefault(run.worker, {"leased": 0, "started": 0, "finished": 0, "cut_off": 0})
        row["started"] += 1
        row["finished"] += run.end is not None
        row["cut_off"] += run.cut_at is not None

    makespan = None
    if first_submit and last_resolution:
        makespan = max(last_resolution.values()) - min(first_submit.values())
    c4 = _recovery_c4(world, jobs, t0)
    c5 = _recovery_c5(world, records, t0)
    c4_times = [e["max_s"] for e in c4 if e["max_s"] is not None]
    c5_times = [e["max_s"] for e in c5 if e["max_s"] is not None]
    return {
        "scenario": scenario.get("name"),
        "mode": scenario.get("mode"),
        "duration_s": scenario.get("duration_s"),
        "jobs_submitted": len(jobs),
        "jobs_completed": counts["completed"],
        "jobs_failed": counts["failed"],
        "jobs_dead": counts["dead"],
        "jobs_cancelled": counts["cancelled"],
        "jobs_lost": counts["lost"],
        "jobs_abandoned": counts["abandoned"],
        **_duplicates(executions),
        "futures_resolved_more_than_once": sum(1 for job in jobs if len(job.resolved) > 1),
        "makespan_s": _r(makespan),
        "latency_s": {
            "p50": _r(_percentile(latencies, 50)),
            "p99": _r(_percentile(latencies, 99)),
            "max": _r(max(latencies)) if latencies else None,
        },
        "workers": per_worker,
        "producers": per_producer,
        "recovery": {
            "c4": c4,
            "c4_max_s": max(c4_times) if c4_times else None,
            "c5": c5,
            "c5_max_s": max(c5_times) if c5_times else None,
        },
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


# --------------------------------------------------------------------------- files and terminal


def read_run(run_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The scenario dict and the records of a run directory (lines that are not JSON objects
    are skipped)."""
    run_dir = Path(run_dir)
    scenario = json.loads((run_dir / "scenario.json").read_text())
    records = []
    events = run_dir / "events.jsonl"
    if events.exists():
        for line in events.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                records.append(rec)
    return scenario, records


def build_report(run_dir: str | Path) -> dict[str, Any]:
    """:func:`compute_report` of the run in ``run_dir`` (``scenario.json``, ``events.jsonl``)."""
    scenario, records = read_run(run_dir)
    return compute_report(scenario, records)


def write_outputs(run_dir: str | Path) -> dict[str, Any]:
    """Write ``report.json`` and, when matplotlib is importable, ``timeline.png`` into
    ``run_dir``; return the report (``timeline`` names the picture, or is None)."""
    run_dir = Path(run_dir)
    scenario, records = read_run(run_dir)
    report = compute_report(scenario, records)
    report["timeline"] = None
    try:
        from .plot import plot_timeline

        plot_timeline(scenario, records, run_dir / "timeline.png")
        report["timeline"] = "timeline.png"
    except ImportError:
        pass
    (run_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def format_report(report: dict[str, Any]) -> str:
    """The report as text tables for a terminal (rich, no colour codes)."""
    import io

    from rich.console import Console
    from rich.table import Table

    buffer = io.StringIO()
    console = Console(file=buffer, width=110, color_system=None, force_terminal=False)
    summary = Table(title=f"lab run: {report.get('scenario')} ({report.get('mode')})", show_header=False)
    summary.add_column("field")
    summary.add_column("value", justify="right")
    for name in (
        "jobs_submitted", "jobs_completed", "jobs_failed", "jobs_dead", "jobs_cancelled", "jobs_lost",
        "jobs_abandoned", "duplicate_executions", "duplicates_explained", "duplicates_after_crash",
        "duplicates_unexplained", "futures_resolved_more_than_once", "makespan_s",
    ):
        summary.add_row(name, _fmt(report.get(name)))
    latency = report.get("latency_s") or {}
    summary.add_row("latency_s p50 / p99 / max", " / ".join(_fmt(latency.get(q)) for q in ("p50", "p99", "max")))
    recovery = report.get("recovery") or {}
    summary.add_row("recovery C4 max_s (re-leased)", _fmt(recovery.get("c4_max_s")))
    summary.add_row("recovery C5 max_s (unreachable)", _fmt(recovery.get("c5_max_s")))
    console.print(summary)

    workers = Table(title="workers")
    for col in ("worker", "leased", "started", "finished", "cut_off"):
        workers.add_column(col, justify="left" if col == "worker" else "right")
    for name, row in (report.get("workers") or {}).items():
        workers.add_row(name, *(_fmt(row[c]) for c in ("leased", "started", "finished", "cut_off")))
    console.print(workers)

    cols = ("submitted", "completed", "failed", "dead", "cancelled", "lost", "abandoned", "makespan_s")
    producers = Table(title="producers")
    producers.add_column("producer")
    for col in cols:
        producers.add_column(col, justify="right")
    for name, row in (report.get("producers") or {}).items():
        producers.add_row(name, *(_fmt(row[c]) for c in cols))
    console.print(producers)

    for entry in recovery.get("c4") or []:
        jobs = ", ".join(f"{j['job']} {_fmt(j['re_leased_after_s'])} s" for j in entry["jobs"]) or "no job held"
        console.print(f"C4 {entry['action']} {entry['worker']} at {_fmt(entry['t_s'])} s: {jobs}")
    for entry in recovery.get("c5") or []:
        seen = ", ".join(f"{w} {_fmt(v)} s" for w, v in entry["workers"].items()) or "no worker up"
        console.print(f"C5 {entry['action']} {entry['producer']} at {_fmt(entry['t_s'])} s: {seen}")
    return buffer.getvalue()

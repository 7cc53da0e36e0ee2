"""The tables of a lab run, built from its event records only (pure: no files, no clock).

A run's records (format: the records contract, kept beside the runner) are read into three
tables that :mod:`~freelance_rz.lab.analysis` turns into the report's numbers and
:mod:`~freelance_rz.lab.plot` into the timeline picture. Every time is wall-clock seconds.

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
  ``link_up``); see :meth:`World.cut_at`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

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



# --------------------------------------------------------------------------- who is who


def _peer_specs(scenario: dict[str, Any], role: str) -> dict[str, dict[str, Any]]:
    """The scenario's producers or workers as {name: spec}; accepts a list of tables with a
    ``name`` or a table of tables keyed by name."""
    raw = scenario.get(role) or {}
    if isinstance(raw, dict):
        return {str(name): dict(spec or {}) for name, spec in raw.items()}
    return {str(spec["name"]): dict(spec) for spec in raw if isinstance(spec, dict) and "name" in spec}



class World:
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


def _incarnation(world: World, rec: dict[str, Any]) -> Any:
    peer = rec["peer"]
    if peer in world.durable:
        return 0
    if rec.get("pid") is not None:
        return ("pid", rec["pid"])
    return ("epoch", sum(1 for t in world.starts(peer) if t <= rec["t"]))


def _build_jobs(world: World, records: list[dict[str, Any]]) -> dict[tuple[str, Any, int], Job]:
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


def _build_executions(world: World, records: list[dict[str, Any]], jobs: list[Job]) -> list[Execution]:
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



def _sorted_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted((r for r in records if isinstance(r.get("t"), (int, float))), key=lambda r: r["t"])


def _run_start(records: list[dict[str, Any]]) -> float:
    """The run's time zero (wall clock, seconds): the runner's ``go`` record (timeline
    ``at_s`` count from it), else the earliest record, else 0."""
    for rec in records:
        if rec.get("kind") == "go":
            return float(rec["t"])
    return records[0]["t"] if records else 0.0


@dataclass
class Tables:
    """The tables of a run, made by :func:`build_tables`."""

    records: list[dict[str, Any]]  # the records with a numeric ``t``, sorted by it
    t0: float  # the run's time zero (wall clock, seconds; the ``go`` record)
    world: World
    jobs: list[Job]  # the submitted jobs, in the order of their first record
    executions: list[Execution]  # in the order of their ``started`` records


def build_tables(scenario: dict[str, Any], records: list[dict[str, Any]]) -> Tables:
    """The :class:`Tables` of a run (pure).

    Args:
        scenario: the run's scenario as a dict (``Scenario.to_dict()``, as in
            ``scenario.json``); its ``producers``, ``workers`` and ``hosts`` name the peers.
        records: the run's event records in any order; those without a numeric ``t``
            (wall-clock seconds) are left out.

    Raises:
        KeyError, TypeError, ValueError: a record of a kind read here lacks a field that kind
            needs or holds one of the wrong type (e.g. a ``job_key`` record without ``key``);
            records of other kinds are counted for nothing.
    """
    records = _sorted_records(records)
    world = World(scenario, records)
    jobs = list(_build_jobs(world, records).values())
    executions = _build_executions(world, records, jobs)
    return Tables(records=records, t0=_run_start(records), world=world, jobs=jobs, executions=executions)


# --------------------------------------------------------------------------- the timeline picture's data


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


def compute_timeline(scenario: dict[str, Any], records: list[dict[str, Any]]) -> Timeline:
    """The :class:`Timeline` of a run (pure); arguments as for :func:`build_tables`."""
    tables = build_tables(scenario, records)
    records, executions = tables.records, tables.executions
    return Timeline(
        t0=tables.t0,
        t_first=records[0]["t"] if records else 0.0,
        t_end=records[-1]["t"] if records else 0.0,
        workers=sorted(tables.world.workers | {run.worker for run in executions}),
        producers=sorted(tables.world.producers),
        executions=executions,
        actions=tables.world.all_actions,
    )

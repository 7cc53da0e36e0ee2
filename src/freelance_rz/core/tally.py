"""What a producer has done, per task: counts, wait and run times, recent failures. Pure.

Theory of operation
-------------------
The ledger (:mod:`.ledger`) keeps the state of each live job and the totals per state; it
knows nothing of tasks, and a job leaves it when it ends. Operators want more: jobs by task
and state, how long jobs wait for a worker and how long they run (Prometheus histograms, the
dashboard's charts), which jobs run now, and the last failures with their tracebacks. The
:class:`Tally` keeps that, fed by the same transitions the ledger tells its journal (the
producer's journal adapter passes each one on, with the task and the time), so it cannot
drift from the ledger: per task, the live counts add up to the ledger's ``pending``,
``deferred`` and ``leased``, and the finished counts to its ``done``, ``failed``, ``dead`` and ``cancelled``.

Cost: each transition is a dict lookup and a few integer additions (a histogram
observation is one ``bisect``); a live job costs one small record (its task, since when it is
in its state, the worker holding it, its call). Nothing is decoded on the way; a failure's
error payload is decoded only when a detailed STATUS asks for it. Everything kept is bounded:
at most MAX_TASKS tasks (more are counted under OTHER_TASK), FAILURES_KEPT failures.

Times are wall-clock seconds passed in (``now``); nothing here reads a clock.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass
from typing import Any, Final

from ..errors import ProtocolError
from .payload import unpack_error
from .text import clean, worker_label

#: upper bounds, in seconds, of the wait and run histograms' buckets (a last, unbounded one
#: follows): from a millisecond (a trivial job on loopback) to ten minutes.
BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
             30.0, 60.0, 300.0, 600.0)
MAX_TASKS = 1000  # tasks tallied separately; the jobs of any further task count under OTHER_TASK
OTHER_TASK = "(other)"
TASKS_IN_STATUS = 100  # tasks a detailed STATUS lists (the most recently active first)
RUNNING_IN_STATUS = 100  # running jobs a detailed STATUS lists (the longest running first)
FAILURES_KEPT = 20  # recent failures and dead letters kept, and listed
TRACEBACK_CHARS = 4000  # characters of a traceback listed (its end: where it was raised)
MESSAGE_CHARS = 500  # characters of an error message listed
#: what each finished state counts as in ``TaskTally.counts``
COUNTED = ("submitted", "pending", "leased", "done", "failed", "dead", "cancelled", "retried",
           "deferred", "blocked")


class Histogram:
    """Observations (seconds) counted in the buckets of :data:`BUCKETS_S` (``counts`` has one
    more entry, for values above the last bound), with their ``sum``."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS_S) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS_S, seconds)] += 1
        self.sum += seconds


class TaskTally:
    """One task's counts (``COUNTED`` names: ``pending`` and ``leased`` are live jobs, the
    others totals since the producer started) and histograms of the seconds its jobs waited
    to be leased (``wait``) and ran until their result (``run``)."""

    __slots__ = ("name", "counts", "wait", "run", "active_at")

    def __init__(self, name: str, now: float) -> None:
        self.name = name
        self.counts = dict.fromkeys(COUNTED, 0)
        self.wait = Histogram()
        self.run = Histogram()
        self.active_at = now  # when a job of it last changed state


# A live job as the tally sees it, a plain tuple (TASK, SINCE, WORKER, ATTEMPT, CALL): its
# task's name, since when it is in its state, the routing id of the worker holding its lease
# (None: pending), the attempt, and its call payload (a reference to the ledger's bytes, for a
# retry). A plain tuple of plain values, so the garbage collector stops tracking it: a million
# pending jobs add nothing to its passes (a class instance or a named tuple would).
_Live = tuple[str, float, bytes | None, int, bytes]
TASK: Final = 0
SINCE: Final = 1
WORKER: Final = 2
ATTEMPT: Final = 3
CALL: Final = 4
#: WORKER of a deferred job (a routing id is never empty)
DEFERRED: Final = b""
#: WORKER of a job blocked on its dependencies (a generated routing id is 5 bytes, and one a
#: peer sets never starts with a zero byte)
BLOCKED: Final = b"\x00"
_MARKS = {None: "pending", DEFERRED: "deferred", BLOCKED: "blocked"}  # WORKER -> live count


@dataclass(frozen=True, slots=True)
class Failure:
    """A job that failed (``kind`` ``"failed"``: its error payload as on the wire) or was
    dead-lettered (``"dead"``: ``reason`` says how its last lease was lost, when known)."""

    job_id: int
    task: str
    kind: str
    at: float
    worker: bytes | None
    attempt: int
    error: bytes
    call: bytes
    reason: str | None = None


class Tally:
    """Per-task counts, wait and run histograms, running jobs and recent failures of one
    producer (see the module docstring). Each method is one ledger transition; ``now`` is
    wall-clock seconds. A job the tally does not know (a bug elsewhere) is ignored."""

    def __init__(self) -> None:
        self.tasks: dict[str, TaskTally] = {}
        self.live: dict[int, _Live] = {}
        self.running: dict[int, None] = {}  # leased job ids, in the order they were leased
        self.failures: deque[Failure] = deque(maxlen=FAILURES_KEPT)

    def _task(self, task: str, now: float) -> TaskTally:
        tally = self.tasks.get(task)
        if tally is None:
            if len(self.tasks) >= MAX_TASKS:
                task = OTHER_TASK
                tally = self.tasks.get(task)
            if tally is None:
                tally = self.tasks[task] = TaskTally(task, now)
        return tally

    def add(self, job_id: int, task: str, call: bytes, now: float, *, restored: bool = False) -> None:
        """A job became pending: submitted (or ``restored`` from a store: counted pending,
        not submitted again). ``call``: its call payload."""
        tally = self._task(task, now)
        if not restored:
            tally.counts["submitted"] += 1
        tally.counts["pending"] += 1
        tally.active_at = now
        self.live[job_id] = (tally.name, now, None, 1, call)

    def lease(self, job_id: int, worker: bytes, attempt: int, now: float) -> None:
        """A pending job was leased to ``worker`` (routing id): its wait ends."""
        job = self.live.get(job_id)
        if job is None:
            return
        tally = self.tasks[job[TASK]]
        counts = tally.counts
        counts["pending"] -= 1
        counts["leased"] += 1
        waited, wait = now - job[SINCE], tally.wait  # Histogram.observe, inlined: the hot path
        wait.counts[bisect.bisect_left(BUCKETS_S, waited)] += 1
        wait.sum += waited
        tally.active_at = now
        self.live[job_id] = (job[TASK], now, worker, attempt, job[CALL])
        self.running[job_id] = None

    def back(self, job_id: int, now: float, *, retried: bool) -> None:
        """A leased job is pending again: its lease was given back unused (release) or lost
        (``retried``: it will be tried again)."""
        job = self.live.get(job_id)
        if job is None or not job[WORKER]:
            return
        tally = self.tasks[job[TASK]]
        counts = tally.counts
        counts["leased"] -= 1
        counts["pending"] += 1
        if retried:
            counts["retried"] += 1
        tally.active_at = now
        self.live[job_id] = (job[TASK], now, None, job[ATTEMPT], job[CALL])
        self.running.pop(job_id, None)

    def defer(self, job_id: int, now: float, *, retried: bool) -> None:
        """A job waits for its due time: submitted with a delay, or (``retried``) its task
        failed with an error it retries (a leased job's run ends here)."""
        job = self.live.get(job_id)
        if job is None or job[WORKER] == DEFERRED:
            return
        tally = self.tasks[job[TASK]]
        counts = tally.counts
        if job[WORKER] in _MARKS:
            counts[_MARKS[job[WORKER]]] -= 1
        else:
            counts["leased"] -= 1
            self.running.pop(job_id, None)
            tally.run.observe(now - job[SINCE])
        counts["deferred"] += 1
        if retried:
            counts["retried"] += 1
        tally.active_at = now
        self.live[job_id] = (job[TASK], now, DEFERRED, job[ATTEMPT], job[CALL])

    def ready(self, job_id: int, now: float, call: bytes | None = None) -> None:
        """A deferred or blocked job may run: it waits for a worker from now (``call``: its
        call with its dependencies' results, when it was blocked)."""
        self._mark(job_id, now, None, call)

    def block(self, job_id: int, now: float) -> None:
        """A job just submitted waits for the jobs it depends on."""
        self._mark(job_id, now, BLOCKED)

    def _mark(self, job_id: int, now: float, mark: bytes | None, call: bytes | None = None) -> None:
        job = self.live.get(job_id)
        if job is None or job[WORKER] not in _MARKS or job[WORKER] == mark:
            return
        counts = self.tasks[job[TASK]].counts
        counts[_MARKS[job[WORKER]]] -= 1
        counts[_MARKS[mark]] += 1
        self.live[job_id] = (job[TASK], now, mark, job[ATTEMPT], call or job[CALL])

    def finish(self, job_id: int, state: str, payload: bytes, now: float) -> None:
        """A job ended in ``state`` (``done``, ``failed``, ``dead``, ``cancelled``);
        ``payload``: its value or error, as on the wire."""
        job = self.live.pop(job_id, None)
        if job is None:
            return
        tally = self.tasks[job[TASK]]
        counts = tally.counts
        if job[WORKER] in _MARKS:
            counts[_MARKS[job[WORKER]]] -= 1
        else:
            counts["leased"] -= 1
            self.running.pop(job_id, None)
            if state == "done" or state == "failed":
                ran, run = now - job[SINCE], tally.run
                run.counts[bisect.bisect_left(BUCKETS_S, ran)] += 1
                run.sum += ran
        counts[state] += 1
        tally.active_at = now
        if state in ("failed", "dead"):
            self.failures.append(Failure(
                job_id, job[TASK], state, now, job[WORKER], job[ATTEMPT],
                payload if state == "failed" else b"", job[CALL],
            ))

    def explain(self, job_id: int, reason: str) -> None:
        """Say why a job just dead-lettered was lost (its last failure entry gets ``reason``)."""
        if self.failures and self.failures[-1].job_id == job_id:
            last = self.failures.pop()
            self.failures.append(Failure(
                last.job_id, last.task, last.kind, last.at, last.worker, last.attempt,
                last.error, last.call, reason,
            ))

    def failure(self, job_id: int) -> Failure | None:
        """The kept failure of ``job_id``, or None."""
        return next((f for f in self.failures if f.job_id == job_id), None)

    # --- reports ------------------------------------------------------------------------

    def report(self, now: float) -> dict[str, Any]:
        """The detailed STATUS entries (docs/protocol.md, STATUS_REPLY): ``buckets_s``,
        ``tasks`` (at most TASKS_IN_STATUS, most recently active first), ``failures`` (newest
        first, tracebacks cut to TRACEBACK_CHARS). Running jobs are listed by the offer
        engine, which joins :attr:`running` with the ledger."""
        busiest = sorted(self.tasks.items(), key=lambda item: -item[1].active_at)[:TASKS_IN_STATUS]
        return {
            "buckets_s": list(BUCKETS_S),
            "tasks": [_task_entry(name, tally) for name, tally in busiest],
            "tasks_total": len(self.tasks),
            "failures": [_failure_entry(f) for f in reversed(self.failures)],
        }

    def running_since(self, limit: int) -> list[tuple[int, str, float]]:
        """Up to ``limit`` running jobs, longest running first: ``(job_id, task, leased at)``."""
        out: list[tuple[int, str, float]] = []
        for job_id in self.running:
            if len(out) >= limit:
                break
            job = self.live[job_id]
            out.append((job_id, job[TASK], job[SINCE]))
        return out


def _task_entry(name: str, tally: TaskTally) -> dict[str, Any]:
    return {
        "task": name, **tally.counts,
        "wait_counts": list(tally.wait.counts), "wait_sum_s": round(tally.wait.sum, 6),
        "run_counts": list(tally.run.counts), "run_sum_s": round(tally.run.sum, 6),
    }


def _failure_entry(failure: Failure) -> dict[str, Any]:
    kind, message, trace = "JobLost", failure.reason or "its worker went silent", ""
    if failure.kind == "failed":
        try:
            kind, message, trace = unpack_error(failure.error)
        except ProtocolError as exc:
            kind, message = "ProtocolError", exc.message
    return {
        "job_id": failure.job_id, "task": failure.task, "kind": failure.kind,
        "at": round(failure.at, 3), "attempt": failure.attempt,
        "worker": None if failure.worker is None else worker_label(failure.worker),
        "type": clean(kind, 100), "message": message[:MESSAGE_CHARS],
        "traceback": trace[-TRACEBACK_CHARS:],
    }

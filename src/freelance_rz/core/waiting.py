"""What the ledger's waiting jobs wait on: due times (DEFERRED jobs) and the jobs they depend
on (BLOCKED jobs). Pure; the ledger owns one :class:`Waiting` and makes every transition
itself (this module never changes a job's state).

Due times wait in a heap of ``(due, sequence, job id)``: a job deferred costs one push, a due
job one pop, and nothing is ever scanned, so a million delayed jobs cost the others nothing
(entries of jobs cancelled or resolved meanwhile are dropped when they surface). Dependencies
are edges from a live job to the BLOCKED jobs waiting for it, kept until it ends: then each
dependent gets its result (and unblocks when it was the last one it waited for), or fails
with DependencyFailed, and so on down the chain. A cycle cannot exist: a job can depend only
on jobs that exist before it.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

from ..errors import ProtocolError
from .jobs import JobRecord, JobState
from .payload import peek_task, unpack_error

#: how a dependency ended, for the DependencyFailed message
ENDED = {JobState.FAILED: "failed", JobState.DEAD: "was dead-lettered (its workers were lost)",
         JobState.CANCELLED: "was cancelled"}


class Waiting:
    """The due-time heap and dependency edges of one ledger.

    Args:
        jobs: the ledger's live jobs by id (read only).
        unblock: ``unblock(job)``: the last dependency of a BLOCKED job succeeded.
        fail: ``fail(job, dependency, why)``: a dependency of a BLOCKED job ended otherwise.
    """

    def __init__(self, jobs: dict[int, JobRecord], unblock: Callable[[JobRecord], None],
                 fail: Callable[[JobRecord, int, str], None]) -> None:
        self._jobs = jobs
        self._unblock = unblock
        self._fail = fail
        self._due: list[tuple[float, int, int]] = []  # (due, sequence, job id)
        self._seq = itertools.count()
        self._dependents: dict[int, list[int]] = {}  # live job -> BLOCKED jobs waiting for it

    # --- due times ------------------------------------------------------------------------

    def push(self, job: JobRecord, due: float) -> None:
        """``job`` (DEFERRED) waits until ``due`` (monotonic seconds)."""
        job.due = due
        heapq.heappush(self._due, (due, next(self._seq), job.job_id))

    def next_due(self) -> float | None:
        """The earliest due time, or None. May be early (a stale entry), never late."""
        return self._due[0][0] if self._due else None

    def due(self, now: float) -> list[JobRecord]:
        """The DEFERRED jobs due at ``now``, in due order (ties: in order deferred)."""
        out, heap = [], self._due
        while heap and heap[0][0] <= now:
            due, _, job_id = heapq.heappop(heap)
            job = self._jobs.get(job_id)
            if job is not None and job.state is JobState.DEFERRED and job.due == due:
                out.append(job)
        return out

    # --- dependencies ----------------------------------------------------------------------

    def block(self, job: JobRecord, deps: tuple[int, ...], values: dict[int, bytes],
              later: float | None) -> None:
        """``job`` (BLOCKED) waits for the live jobs ``deps``; ``values``: results of jobs it
        depends on that succeeded already; ``later``: its due time, if any.

        Raises:
            ValueError: a job of ``deps`` is not live.
        """
        for dep in deps:
            if dep not in self._jobs:
                raise ValueError(f"job {job.job_id} depends on job {dep}, which is not live")
        job.blockers, job.values, job.later = len(deps), dict(values), later
        for dep in deps:
            self._dependents.setdefault(dep, []).append(job.job_id)

    def settle(self, job: JobRecord, state: JobState, value: bytes) -> None:
        """``job`` ended in ``state`` (``value``: its result or error payload): tell the
        BLOCKED jobs that wait for it."""
        dependents = self._dependents.pop(job.job_id, None)
        for dep_id in dependents or ():
            dep = self._jobs.get(dep_id)
            if dep is None or dep.state is not JobState.BLOCKED:
                continue  # cancelled or failed since
            if state is JobState.DONE:
                assert dep.values is not None
                dep.values[job.job_id] = value
                dep.blockers -= 1
                if dep.blockers == 0:
                    self._unblock(dep)
            else:
                self._fail(dep, job.job_id, _why(job, state, value))


def _why(job: JobRecord, state: JobState, value: bytes) -> str:
    """Why a dependent of ``job`` fails: e.g. ``job 7 (myapp:fetch), which it depends on,
    failed: ValueError: no such page``."""
    why = f"job {job.job_id} ({peek_task(job.payload)}), which it depends on, {ENDED[state]}"
    if value:
        try:
            kind, message, _ = unpack_error(value)
            why += f": {kind}: {message[:200]}"
        except ProtocolError:
            pass
    return why

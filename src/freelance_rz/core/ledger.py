"""The producer's job ledger: states, leases, retries, dead letters, dedupe. Pure.

Theory of operation
-------------------
Every job is in exactly one state. The events that move it are in ``TRANSITIONS``; an event
with no entry for the job's state raises :class:`LedgerError` (a bug, never a wire input:
wire inputs that do not fit are answered by return values, e.g. a stale lease is "void").

    PENDING  --claim-->    LEASED     a worker holds it under a lease with a deadline
    (new)    --resume-->   LEASED     a leased job of an earlier run (a durable restart),
                                      under its stored lease and worker, deadline now + lease_s
    LEASED   --beat-->     LEASED     deadline = now + lease_s
    LEASED   --release-->  PENDING    declined / undeliverable: head of queue, same attempt
    LEASED   --expire-->   PENDING    deadline passed: head of queue, attempt + 1
    LEASED   --exhaust-->  DEAD       deadline passed on the last attempt: dead letter
    LEASED   --succeed/fail--> DONE / FAILED
    PENDING  --succeed/fail--> DONE / FAILED   (a result from an earlier, expired lease, or
                                               refused: no worker can take the job)
    PENDING  --cancel-->   CANCELLED
    LEASED   --cancel-->   CANCELLED  (its lease becomes void)

    (new)    --defer-->    DEFERRED   submitted with a due time (a delay)
    DEFERRED --due-->      PENDING    its due time came: tail of its queue
    LEASED   --retry-->    DEFERRED   a task error its retry policy retries (core/retry.py):
                                      due after the backoff; its lease becomes void
    PENDING, DEFERRED --retry--> DEFERRED   the same, from a result of an earlier lease
    DEFERRED --succeed/fail/cancel--> DONE / FAILED / CANCELLED   (as from PENDING)

    (new)    --block-->    BLOCKED    submitted with dependencies not done yet
    BLOCKED  --unblock-->  PENDING    its last dependency succeeded (its call now carries
                                      their results in place of the references to them)
    BLOCKED  --defer-->    DEFERRED   the same, for a job with a due time
    BLOCKED  --fail/cancel--> FAILED / CANCELLED   a dependency failed, was cancelled or
                                      dead-lettered: DependencyFailed, down the whole chain

A DEFERRED job is not offered: it waits in a heap of due times (no timer, no scan; the I/O
thread polls with :meth:`Ledger.next_due` as a deadline and calls :meth:`Ledger.wake`).

The first result for a job from any lease issued for it (to the worker it was issued to)
resolves the job; every later or unknown result is "stale": acknowledged and dropped by the
caller. Terminal jobs (DONE, FAILED, DEAD, CANCELLED) leave the table at once, so memory is
bounded by live jobs; per-state counters keep the totals.

Pending jobs wait in a :class:`~.pending.PendingIndex`: one queue per requirement signature
(task, resources, labels), each one FIFO per priority; a claim is offered the best job its
worker can run (:meth:`Ledger.claim`, DESIGN §8) at a cost that grows with the signatures,
never with the jobs. Lease deadlines wait in a heap (extended deadlines are re-pushed lazily
when popped), so every operation is O(1) or O(log n) in the number of live jobs. The clock is
passed in as ``now`` (monotonic seconds); nothing here reads it.

This is the one place a job's state lives on the producer: besides its state, attempt and
leases, a job carries its options (time limit, priority), its requirements (:class:`~.match.Needs`),
its latest progress report and, for a job too large for every worker, since when. Every transition is told to a
:class:`Journal` as it happens (a durable producer's store writes it down; it never decides
anything itself), so the journal cannot drift from the ledger.
"""

from __future__ import annotations

import heapq
import random
import secrets
from collections.abc import Hashable, Iterable

from ..errors import ProtocolError
from .jobs import TERMINAL, TRANSITIONS, Expired, JobState, Journal, Lease, LedgerError, NullJournal
from .jobs import JobRecord as _Job
from .match import Capabilities, Needs
from .payload import pack_error, remote_error, substitute, unpack_call
from .limits import Limits
from .pending import PendingIndex
from .waiting import Waiting

__all__ = ["TERMINAL", "TRANSITIONS", "Expired", "JobState", "Journal", "Lease", "Ledger",
           "LedgerError", "NullJournal", "after_lost_lease", "needs_of", "timeout_ms"]
from .retry import RetryPolicy, retry_in


def timeout_ms(timeout_s: float) -> int:
    """The time limit in milliseconds that JOB carries for a limit of ``timeout_s`` seconds
    (> 0): at least 1, since 0 means "no limit" on the wire. The one rounding rule."""
    return max(1, int(timeout_s * 1000))


def after_lost_lease(attempt: int, max_attempts: int) -> int | None:
    """The rule for a lost lease (expired, including a lease resumed after a restart that no
    heartbeat renewed, or its job's process died): the attempt the job goes on with, or None
    when that was its last attempt and it is dead-lettered. The one place this rule is
    written."""
    return None if attempt >= max_attempts else attempt + 1


class _LedgerView:
    """The ledger's queries (:class:`Ledger` makes every transition)."""

    _jobs: dict[int, _Job]
    _pending: PendingIndex
    _deadlines: list[tuple[float, int, int]]
    _lease_job: dict[int, int]
    _progressing: dict[int, None]
    _waiting: Waiting
    counts: dict[JobState, int]

    def __len__(self) -> int:
        """Number of live jobs (pending, deferred, blocked or leased)."""
        return len(self._jobs)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._jobs

    def state(self, job_id: int) -> JobState | None:
        """State of a live job, or None when it is terminal or unknown."""
        job = self._jobs.get(job_id)
        return None if job is None else job.state

    def attempt(self, job_id: int) -> int:
        """The attempt number of a live job (1 for its first lease). Raises KeyError."""
        return self._jobs[job_id].attempt

    def job(self, job_id: int) -> _Job | None:
        """The live job's record (read it, do not change it), or None."""
        return self._jobs.get(job_id)

    def payload_size(self, job_id: int) -> int:
        """Bytes of a live job's payload. Raises KeyError."""
        return len(self._jobs[job_id].payload)

    @property
    def pending(self) -> int:
        return self.counts[JobState.PENDING]

    def next_due(self) -> float | None:
        """Earliest due time of a deferred job (monotonic seconds), or None. May be early
        (a cancelled job's entry), never late."""
        return self._waiting.next_due()

    def next_deadline(self) -> float | None:
        """Earliest lease deadline (monotonic seconds), or None. May be early, never late."""
        return self._deadlines[0][0] if self._deadlines else None

    def leases_of(self, worker: Hashable) -> list[int]:
        """Live lease ids held by ``worker`` (O(live leases); for status and tests)."""
        return [
            lease_id
            for lease_id, job_id in self._lease_job.items()
            if self._jobs[job_id].worker == worker
        ]

    def too_large(self, max_payload: int) -> list[int]:
        """Ids of pending jobs whose payload is over ``max_payload`` bytes, at the head of
        each signature's and priority's queue (those a claim limited to it passed over), at
        most 100."""
        return [job.job_id for job in self._pending.too_large(max_payload)]

    def waiting(self) -> list[tuple[Needs, int]]:
        """Each requirement signature with pending jobs, and how many (O(signatures))."""
        return self._pending.signatures()

    def progressing(self, limit: int) -> list[_Job]:
        """Up to ``limit`` live jobs that reported progress, oldest report first."""
        jobs: list[_Job] = []
        for job_id in self._progressing:
            if len(jobs) >= limit:
                break
            jobs.append(self._jobs[job_id])
        return jobs


class Ledger(_LedgerView):
    """The job table of one producer.

    Args:
        lease_s: seconds a lease lives without a heartbeat (> 0).
        max_attempts: leases a job may lose before it is dead-lettered (>= 1); a job may
            override it at submit.
        rng: where lease ids come from (default: the operating system's CSPRNG, so a lease
            id cannot be predicted from others; tests pass a seeded ``random.Random``).
        journal: told every transition (default: nothing keeps them).

    Raises:
        ValueError: on out-of-range arguments.
    """

    def __init__(
        self, *, lease_s: float, max_attempts: int, rng: random.Random | None = None,
        journal: Journal | None = None,
    ) -> None:
        if not lease_s > 0:
            raise ValueError(f"lease_s must be > 0 seconds, got {lease_s!r}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts!r}")
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self._jobs: dict[int, _Job] = {}
        self._pending = PendingIndex()  # pending jobs by requirement signature, in order
        self._deadlines: list[tuple[float, int, int]] = []  # (deadline, lease_id, job_id)
        self._lease_job: dict[int, int] = {}  # live lease id -> job id
        self._rng = rng or secrets.SystemRandom()
        self.journal: Journal = journal or NullJournal()
        self._progressing: dict[int, None] = {}  # live jobs that reported progress, in order
        self.counts: dict[JobState, int] = {state: 0 for state in JobState}
        self.retried = 0  # task errors retried (total)
        self._waiting = Waiting(self._jobs, self._unblock, self._fail_dependency)
        self.limits = Limits()  # per-task concurrency and rate limits (none by default)
        # jobs failed for a dependency since the engine last asked: (job id, error payload)
        self.dependency_failures: list[tuple[int, bytes]] = []
        self.unblocked = 0  # jobs unblocked (total): the engine offers them

    # --- transitions -----------------------------------------------------------------------

    def _move(self, job: _Job, event: str, value: bytes = b"") -> None:
        new = TRANSITIONS.get((job.state, event))
        if new is None:
            raise LedgerError(f"job {job.job_id}: event {event!r} not allowed in {job.state}")
        if job.state is JobState.PENDING and event != "claim":
            self._pending.leave(job)  # cancelled, resolved or refused while queued
        if job.state is not None:
            self.counts[job.state] -= 1
        self.counts[new] += 1
        job.state = new
        if new in TERMINAL:
            del self._jobs[job.job_id]
            self._progressing.pop(job.job_id, None)
            self._end_lease(job)
            self._waiting.settle(job, new, value)

    def _fail_dependency(self, job: _Job, dependency: int, why: str) -> None:
        error = pack_error("DependencyFailed", f"job {job.job_id} did not run: {why}", "",
                           dependency=dependency)
        self._move(job, "fail")
        self.journal.finish(job.job_id, "failed", error)
        self.dependency_failures.append((job.job_id, error))

    def _unblock(self, job: _Job) -> None:
        if job.values:
            try:
                job.payload = substitute(job.payload, job.values)
            except ProtocolError as exc:  # a worker's result that cannot be read
                self._fail_dependency(job, min(job.values), f"{exc.message} could not be read")
                return
        job.values = None
        self.journal.unblock(job.job_id, job.payload)
        self.unblocked += 1
        if job.later is None:
            self._move(job, "unblock")
            self._pending.push(job)
        else:
            self._move(job, "defer")
            self._waiting.push(job, job.later)
            self.journal.defer(job.job_id, job.later, job.retries)

    def _end_lease(self, job: _Job) -> None:
        if job.lease_id is not None:
            self._lease_job.pop(job.lease_id, None)
            job.lease_id = None
            job.worker = None
            if self.limits.active:
                self.limits.ended(job.needs.task)

    def submit(
        self, job_id: int, payload: bytes, *, max_attempts: int | None = None, priority: int = 0,
        timeout_ms: int | None = None, needs: Needs | None = None, due: float | None = None,
        retry: RetryPolicy | None = None, deps: Iterable[int] = (),
        values: dict[int, bytes] | None = None, failed: tuple[int, str] | None = None,
    ) -> None:
        """Add a job at the tail of its signature's and priority's queue (higher priorities
        are claimed first, FIFO within one). ``timeout_ms``: its time limit on a worker, if
        any (see :func:`timeout_ms`). ``needs``: its requirements (None: read from the
        payload's call, see :func:`needs_of`). ``due``: not offered before then (monotonic
        seconds; the job is DEFERRED until :meth:`wake` at or after it). ``retry``: the task
        errors it retries (:mod:`.retry`). ``deps``: ids of live jobs it waits for (BLOCKED
        until each succeeded); ``values``: results of jobs it depends on that already
        succeeded (job id -> value payload); the references to them in ``payload``
        (:data:`~.payload.REF_EXT`) are replaced by these results when it unblocks.
        ``failed``: ``(job id, what became of it)`` of a dependency that failed already: the
        job fails at once with DependencyFailed (see :attr:`dependency_failures`).

        Raises:
            ValueError: ``job_id`` is already live, ``max_attempts`` < 1, or a dependency
                in ``deps`` is not live.
        """
        blocked = bool(deps) or bool(values) or failed is not None
        job = self._add(job_id, payload, max_attempts, priority, timeout_ms, needs, due, retry, blocked)
        self.journal.add(job_id, payload, job.max_attempts)
        self._enter(job, due, deps, values, failed)

    def _enter(self, job: _Job, due: float | None, deps: Iterable[int],
               values: dict[int, bytes] | None, failed: tuple[int, str] | None) -> None:
        """Journal a new or restored job's wait, if any: its due time, its dependencies."""
        if job.state is JobState.DEFERRED:
            self.journal.defer(job.job_id, job.due, job.retries)
        elif job.state is JobState.BLOCKED:
            deps = tuple(dict.fromkeys(deps))
            self._waiting.block(job, deps, values or {}, due)
            # every job it refers to, those that succeeded already too: a restart reads their
            # results from the store to put in place of the references
            self.journal.block(job.job_id, tuple(dict.fromkeys((*deps, *(values or {})))), due)
            if failed is not None:
                self._fail_dependency(job, failed[0], f"job {failed[0]}, which it depends on, {failed[1]}")
            elif job.blockers == 0:
                self._unblock(job)

    def _add(
        self, job_id: int, payload: bytes, max_attempts: int | None, priority: int,
        timeout_ms: int | None, needs: Needs | None, due: float | None = None,
        retry: RetryPolicy | None = None, blocked: bool = False,
    ) -> _Job:
        job = self._new(job_id, payload, max_attempts, priority, timeout_ms, needs, retry)
        if blocked:
            self._move(job, "block")
        elif due is None:
            self._move(job, "submit")
            self._pending.push(job)
        else:
            self._move(job, "defer")
            self._waiting.push(job, due)
        return job

    def _new(
        self, job_id: int, payload: bytes, max_attempts: int | None, priority: int,
        timeout_ms: int | None, needs: Needs | None, retry: RetryPolicy | None,
    ) -> _Job:
        if job_id in self._jobs:
            raise ValueError(f"job {job_id} is already in the ledger")
        if max_attempts is not None and max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts!r}")
        job = _Job(job_id, payload, max_attempts or self.max_attempts, needs or needs_of(payload),
                   priority=priority, timeout_ms=timeout_ms, retry=retry)
        self._jobs[job_id] = job
        return job

    def wake(self, now: float) -> int:
        """Make every deferred job whose due time is <= ``now`` pending (at the tail of its
        queue, in due order); returns how many. O(k log n) for k due jobs."""
        woken = 0
        for job in self._waiting.due(now):
            self._move(job, "due")
            self._pending.push(job)
            self.journal.ready(job.job_id)
            woken += 1
        return woken

    def restore(
        self,
        job_id: int,
        payload: bytes,
        *,
        attempt: int,
        max_attempts: int,
        leases: dict[int, Hashable],
        priority: int = 0,
        timeout_ms: int | None = None,
        needs: Needs | None = None,
        lease_id: int | None = None,
        now: float = 0.0,
        due: float | None = None,
        retries: int = 0,
        retry: RetryPolicy | None = None,
        deps: Iterable[int] = (),
        values: dict[int, bytes] | None = None,
        failed: tuple[int, str] | None = None,
    ) -> None:
        """Re-add a live job of an earlier run (a durable store's restart), with its attempt
        number, ``retries`` (task errors retried so far) and the leases issued for it before
        (lease id -> worker), so a result that a worker delivers late under one of those
        leases is still accepted once. Restore jobs in job id order (a dependency's id is
        lower than its dependents').

        The job comes back in the state it was stored in:

        - ``lease_id`` given: it was leased under ``lease_id`` (one of ``leases``) and stays
          LEASED to that worker ("resume") with the deadline ``now + lease_s`` (``now``:
          monotonic seconds): the worker, still running it, renews the lease with its next
          heartbeat and delivers its result as usual; a worker that is gone lets it expire like
          any lease (attempt + 1, or dead-lettered on its last attempt), one lease period after
          the restart. Its lease is not journaled again: the journal holds it as it is.
        - ``deps``, ``values`` or ``failed`` given: BLOCKED on ``deps`` (as for :meth:`submit`;
          the wait is journaled again, which changes nothing a store holds).
        - ``due`` later than ``now``: DEFERRED until then (journaled again); a due time that
          passed while the producer was down makes it pending at once.
        - else: PENDING, at the tail of its queue.

        Raises:
            ValueError: ``job_id`` is already live, ``attempt``/``max_attempts`` < 1,
                ``lease_id`` is not one of ``leases``, or a dependency in ``deps`` is not live.
        """
        if attempt < 1:
            raise ValueError(f"attempt must be >= 1, got {attempt!r}")
        if lease_id is not None and lease_id not in leases:
            raise ValueError(f"lease_id {lease_id!r} is not one of the job's leases")
        if lease_id is not None:
            job = self._new(job_id, payload, max_attempts, priority, timeout_ms, needs, retry)
            self._move(job, "resume")
            self._hold(job, lease_id, leases[lease_id], now)
        else:
            due = None if due is None or due <= now else due
            blocked = bool(deps) or bool(values) or failed is not None
            job = self._add(job_id, payload, max_attempts, priority, timeout_ms, needs, due, retry, blocked)
        job.attempt = attempt
        job.retries = retries
        job.issued.update(leases)
        if lease_id is None:
            self._enter(job, due, deps, values, failed)

    def claim(
        self, worker: Hashable, now: float, caps: Capabilities | None = None
    ) -> Lease | None:
        """Lease to ``worker`` the first pending job (by priority, then FIFO) that a worker
        with ``caps`` can run (its task modules, free resources, labels and largest payload;
        None: any job), or None when there is none. Jobs it passes over keep their place
        (see :mod:`.pending` and :meth:`too_large`)."""
        job = self._pending.take(caps, self.limits.closed(now) if self.limits.active else None)
        return None if job is None else self._lease(job, worker, now)  # type: ignore[arg-type]

    def _lease(self, job: _Job, worker: Hashable, now: float) -> Lease:
        self._move(job, "claim")
        lease_id = self._rng.getrandbits(63)
        while lease_id in self._lease_job or lease_id in job.issued:
            lease_id = self._rng.getrandbits(63)
        job.issued[lease_id] = worker
        self._hold(job, lease_id, worker, now)
        self.journal.lease(job.job_id, lease_id, worker, job.attempt)  # type: ignore[arg-type]
        return Lease(job.job_id, lease_id, job.attempt, job.payload, job.deadline, job.timeout_ms,
                     job.needs.resources)

    def _live(self, worker: Hashable, lease_id: int) -> _Job | None:
        job_id = self._lease_job.get(lease_id)
        if job_id is None:
            return None
        job = self._jobs[job_id]
        return job if job.worker == worker else None

    def job_of(self, worker: Hashable, lease_id: int) -> int | None:
        """The job a live lease of ``worker`` is for, or None when the lease is void."""
        job = self._live(worker, lease_id)
        return None if job is None else job.job_id

    def beat(self, worker: Hashable, lease_ids: Iterable[int], now: float) -> list[int]:
        """Extend ``worker``'s leases to ``now + lease_s``; return the ids that are void
        (unknown, expired, cancelled, resolved or held by another worker). A lease resumed
        after a restart (see :meth:`restore`) is renewed like any other."""
        void = []
        for lease_id in lease_ids:
            job = self._live(worker, lease_id)
            if job is None:
                void.append(lease_id)
            else:
                self._move(job, "beat")
                job.deadline = now + self.lease_s
        return void

    def _hold(self, job: _Job, lease_id: int, worker: Hashable, now: float) -> None:
        """Make ``lease_id`` the leased job's live lease, held by ``worker`` until
        ``now + lease_s`` (it counts against its task's limits, :mod:`.limits`)."""
        job.lease_id = lease_id
        job.worker = worker
        job.deadline = now + self.lease_s
        self._lease_job[lease_id] = job.job_id
        heapq.heappush(self._deadlines, (job.deadline, lease_id, job.job_id))
        if self.limits.active:
            self.limits.started(job.needs.task, now)

    def limit(self, task: str, max_running: int | None, per_s: float | None, now: float) -> None:
        """Limit the jobs of ``task`` leased at once (``max_running``) and started a second
        (``per_s``) from now on (both None: no limit; see :mod:`.limits`)."""
        running = sum(1 for job_id in self._lease_job.values() if self._jobs[job_id].needs.task == task)
        self.limits.change(task, max_running, per_s, now, running)

    def postpone(self, seconds: float) -> None:
        """Push every live lease's deadline ``seconds`` later: the producer itself could not
        run for that long (its process was stalled), so silence from workers proves nothing."""
        for job_id in self._lease_job.values():
            self._jobs[job_id].deadline += seconds

    def release(self, worker: Hashable, job_id: int, lease_id: int) -> bool:
        """Put a leased job back at the head of the queue with the same attempt (the worker
        declined it, or the JOB could not be delivered). False when the lease is void."""
        job = self._live(worker, lease_id)
        if job is None or job.job_id != job_id:
            return False
        del job.issued[lease_id]  # the job never ran under this lease
        self._end_lease(job)
        self._move(job, "release")
        self._pending.push(job, head=True)
        self.journal.release(job_id, lease_id)
        return True

    def resolve(
        self, worker: Hashable, job_id: int, lease_id: int, ok: bool, payload: bytes = b"",
        now: float | None = None,
    ) -> bool:
        """Take a result (``payload``: its value or error, as on the wire). True when it is
        the first for the job and came under a lease issued for it to this ``worker``: the
        job is then DONE (``ok``) or FAILED and has left the ledger, or, for an error its
        retry rule retries (:func:`.retry.retry_in`; only when ``now`` is given), DEFERRED
        until ``now`` plus the backoff (that lease's later results are stale). False for a
        stale, duplicate or forged result: change nothing."""
        job = self._jobs.get(job_id)
        if job is None or job.issued.get(lease_id, _NOBODY) != worker:
            return False
        if not ok and now is not None:
            error = remote_error(payload)
            delay = None if error is None else retry_in(job.retry, job.retries, error, self._rng.random())
            if delay is not None:
                self._retry(job, lease_id, now + delay)
                return True
        self._move(job, "succeed" if ok else "fail", payload)
        self.journal.finish(job_id, "done" if ok else "failed", payload)
        return True

    def _retry(self, job: _Job, lease_id: int, due: float) -> None:
        del job.issued[lease_id]  # its result is taken: the same result again is stale
        self._end_lease(job)
        self._move(job, "retry")
        job.retries += 1
        self.retried += 1
        self._waiting.push(job, due)
        self.journal.defer(job.job_id, due, job.retries, lease_id)

    def refuse(self, job_id: int, error: bytes) -> bool:
        """Fail a pending job that will never be handed out (no worker can take it), with
        the error payload ``error``. False when it is not pending."""
        job = self._jobs.get(job_id)
        if job is None or job.state is not JobState.PENDING:
            return False
        self._move(job, "fail")
        self.journal.finish(job_id, "failed", error)
        return True

    def report(self, worker: Hashable, lease_id: int, progress: tuple[float, float | None, str]) -> int | None:
        """Keep a running job's latest progress, reported by ``worker`` under ``lease_id``.
        Returns the job's id, or None (and keeps nothing) when the lease is void."""
        job = self._live(worker, lease_id)
        if job is None:
            return None
        job.progress = progress
        self._progressing[job.job_id] = None
        return job.job_id

    def cancel(self, job_id: int) -> JobState | None:
        """Cancel a live job. Returns the state it was in (PENDING, or LEASED: its lease is
        now void and the worker learns so at its next heartbeat), or None if not live."""
        job = self._jobs.get(job_id)
        if job is None:
            return None
        was = job.state
        self._move(job, "cancel")
        self.journal.finish(job_id, "cancelled", b"")
        return was

    def expire(self, now: float) -> list[Expired]:
        """Re-queue (attempt + 1) or dead-letter every job whose lease deadline is <= now."""
        out = []
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            _, lease_id, job_id = heapq.heappop(heap)
            job = self._jobs.get(job_id)
            if job is None or job.lease_id != lease_id:
                continue  # resolved, released or re-leased since
            if job.deadline > now:  # extended by heartbeats: look again later
                heapq.heappush(heap, (job.deadline, lease_id, job_id))
                continue
            out.append(self._lose(job, lease_id))
        return out

    def lose(self, worker: Hashable, job_id: int, lease_id: int) -> Expired | None:
        """The worker reports that the job's process died under this lease (a crash, not a
        task error): count it as a lost attempt, exactly as if the lease had expired. None
        when the lease is void."""
        job = self._live(worker, lease_id)
        if job is None or job.job_id != job_id:
            return None
        return self._lose(job, lease_id)

    def _lose(self, job: _Job, lease_id: int) -> Expired:
        self._end_lease(job)
        lost, next_attempt = job.attempt, after_lost_lease(job.attempt, job.max_attempts)
        if next_attempt is None:
            self._move(job, "exhaust")
            self.journal.finish(job.job_id, "dead", b"")
            return Expired(job.job_id, lease_id, lost, dead=True)
        self._move(job, "expire")
        job.attempt = next_attempt
        self._pending.push(job, head=True)
        self.journal.requeue(job.job_id, job.attempt)
        return Expired(job.job_id, lease_id, lost, dead=False)


_NOBODY = object()


def needs_of(payload: bytes) -> Needs:
    """The requirements a job's call payload carries (its task, and the ``resources`` and
    ``labels`` of its options); for a payload that cannot be read, those of a task named
    ``"?"``, which no worker runs."""
    try:
        task, _, _, options = unpack_call(payload)
    except ProtocolError:
        return Needs.of("?")
    return Needs.of(task, options.get("resources"), options.get("labels"))

"""A job's states, the table of the events that move it, the record the ledger keeps of it,
and the :class:`Journal` the ledger tells every transition. Pure.

:mod:`.ledger` is the one place a job's state changes; this module holds what it and its
helpers (:mod:`.waiting`) share. See the ledger's docstring for the state table in prose.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Protocol

from .match import Needs
from .retry import RetryPolicy


class LedgerError(Exception):
    """An event that is not allowed in the job's current state (a programming error)."""


class JobState(enum.Enum):
    # Members are singletons compared by identity: hash them so too. Enum's own hash
    # (of the name, in Python) ran ~15 times a job on the producer's hot path.
    __hash__ = object.__hash__

    PENDING = "pending"
    DEFERRED = "deferred"  # not offered before its due time (a delay, a retry's backoff)
    BLOCKED = "blocked"  # not offered before the jobs it depends on succeeded
    LEASED = "leased"
    DONE = "done"
    FAILED = "failed"
    DEAD = "dead"
    CANCELLED = "cancelled"


#: (state, event) -> next state. ``None`` stands for "not in the ledger yet".
TRANSITIONS: dict[tuple[JobState | None, str], JobState] = {
    (None, "submit"): JobState.PENDING,
    (JobState.PENDING, "claim"): JobState.LEASED,
    (None, "resume"): JobState.LEASED,
    (JobState.LEASED, "beat"): JobState.LEASED,
    (JobState.LEASED, "release"): JobState.PENDING,
    (JobState.LEASED, "expire"): JobState.PENDING,
    (JobState.LEASED, "exhaust"): JobState.DEAD,
    (JobState.LEASED, "succeed"): JobState.DONE,
    (JobState.LEASED, "fail"): JobState.FAILED,
    (JobState.PENDING, "succeed"): JobState.DONE,
    (JobState.PENDING, "fail"): JobState.FAILED,
    (JobState.PENDING, "cancel"): JobState.CANCELLED,
    (JobState.LEASED, "cancel"): JobState.CANCELLED,
    (None, "defer"): JobState.DEFERRED,
    (JobState.DEFERRED, "due"): JobState.PENDING,
    (JobState.LEASED, "retry"): JobState.DEFERRED,
    (JobState.PENDING, "retry"): JobState.DEFERRED,
    (JobState.DEFERRED, "retry"): JobState.DEFERRED,
    (JobState.DEFERRED, "succeed"): JobState.DONE,
    (JobState.DEFERRED, "fail"): JobState.FAILED,
    (JobState.DEFERRED, "cancel"): JobState.CANCELLED,
    (None, "block"): JobState.BLOCKED,
    (JobState.BLOCKED, "unblock"): JobState.PENDING,
    (JobState.BLOCKED, "defer"): JobState.DEFERRED,
    (JobState.BLOCKED, "fail"): JobState.FAILED,
    (JobState.BLOCKED, "cancel"): JobState.CANCELLED,
}
TERMINAL = frozenset({JobState.DONE, JobState.FAILED, JobState.DEAD, JobState.CANCELLED})

class Journal(Protocol):
    """Told every transition of the ledger, in order (a durable producer's job store; the
    ``on_event`` hook). Worker ids are routing ids; payloads are as on the wire."""

    def add(self, job_id: int, payload: bytes, max_attempts: int) -> None: ...

    def lease(self, job_id: int, lease_id: int, worker: bytes, attempt: int) -> None: ...

    def release(self, job_id: int, lease_id: int) -> None: ...

    def requeue(self, job_id: int, attempt: int) -> None: ...

    def finish(self, job_id: int, state: str, payload: bytes) -> None: ...

    def defer(self, job_id: int, due: float, retries: int, lease_id: int | None = None) -> None:
        """The job waits until ``due`` (monotonic seconds): submitted with a delay
        (``retries`` 0) or retried after a task error (``retries``: how many so far) whose
        result came under ``lease_id``: that lease is forgotten (its result was taken)."""

    def ready(self, job_id: int) -> None:
        """A deferred job's due time came: it is pending."""

    def block(self, job_id: int, deps: tuple[int, ...], due: float | None = None) -> None:
        """The job waits for the jobs ``deps`` (ids; those that succeeded already included:
        their results replace the references to them) to succeed, then, when ``due`` is
        given (monotonic seconds), until then."""

    def unblock(self, job_id: int, payload: bytes) -> None:
        """The job's dependencies succeeded: ``payload`` is its call with their results."""


class NullJournal:
    """A journal that keeps nothing (a producer without a store)."""

    def add(self, job_id: int, payload: bytes, max_attempts: int) -> None:
        pass

    def lease(self, job_id: int, lease_id: int, worker: bytes, attempt: int) -> None:
        pass

    def release(self, job_id: int, lease_id: int) -> None:
        pass

    def requeue(self, job_id: int, attempt: int) -> None:
        pass

    def finish(self, job_id: int, state: str, payload: bytes) -> None:
        pass

    def defer(self, job_id: int, due: float, retries: int, lease_id: int | None = None) -> None:
        pass

    def ready(self, job_id: int) -> None:
        pass

    def block(self, job_id: int, deps: tuple[int, ...], due: float | None = None) -> None:
        pass

    def unblock(self, job_id: int, payload: bytes) -> None:
        pass


@dataclass(slots=True)
class JobRecord:
    job_id: int
    payload: bytes
    max_attempts: int
    needs: Needs  # its requirements (one object per signature, interned by the index)
    priority: int = 0
    timeout_ms: int | None = None  # its time limit on a worker
    state: JobState | None = None
    seq: int = 0  # its place in the pending index, while pending
    attempt: int = 1
    lease_id: int | None = None  # current lease
    worker: Hashable = None  # holder of the current lease
    deadline: float = 0.0
    # every lease ever issued for this job -> its worker (results from these are accepted)
    issued: dict[int, Hashable] = field(default_factory=dict)
    progress: tuple[float, float | None, str] | None = None  # its latest report_progress()
    too_large_since: float | None = None  # when it was first too large for every worker
    retry: RetryPolicy | None = None  # which task errors it retries (None: only Retry)
    retries: int = 0  # task errors retried so far
    due: float = 0.0  # while DEFERRED: when it becomes pending (monotonic seconds)
    # while BLOCKED: how many dependencies have not succeeded yet, and the results of those
    # that have (job id -> value payload), put in place of the references when it unblocks
    blockers: int = 0
    values: dict[int, bytes] | None = None
    later: float | None = None  # a BLOCKED job's due time, if it has one

    @property
    def pending(self) -> bool:
        return self.state is JobState.PENDING


@dataclass(frozen=True, slots=True)
class Lease:
    """A job handed to a worker. ``deadline`` in monotonic seconds; ``attempt`` from 1;
    ``resources``: what the job holds on the worker while it runs (``(name, amount)``)."""

    job_id: int
    lease_id: int
    attempt: int
    payload: bytes
    deadline: float
    timeout_ms: int | None = None
    resources: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class Expired:
    """A lease that ran out. ``dead``: the job was dead-lettered, else it was re-queued."""

    job_id: int
    lease_id: int
    attempt: int
    dead: bool

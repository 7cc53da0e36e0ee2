"""The Futures a producer returns, the progress and events it reports, and how a job's
outcome (:class:`~freelance_rz.core.offer.Outcome`) becomes a Future's result or exception."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures._base import PENDING
from typing import Any, NamedTuple

from ..core import payload as pl
from ..core.offer import Outcome
from ..errors import DependencyFailed, JobFailed, JobLost, JobTimeout, JobTooLarge, ProducerClosed, ProtocolError
from ..tracing import end_job_span

_CONDITION_LOCK = threading.Lock()


class JobEvent(NamedTuple):
    """One step in a job's life, as given to ``Producer(on_event=...)``.

    ``kind``: ``"submitted"``, ``"leased"`` (handed to ``worker``, try number ``attempt``),
    ``"released"`` (the lease was given back unused), ``"requeued"`` (its lease was lost;
    ``attempt`` is the next try), ``"deferred"`` (submitted with a delay), ``"retrying"`` (its
    task failed with an error it retries; ``attempt``: the run that comes next, counting runs
    that ended in a task error), ``"due"`` (a deferred job became pending),
    ``"blocked"`` (it waits for jobs it depends on), ``"unblocked"`` (they all succeeded), or
    the end: ``"done"``, ``"failed"``, ``"dead"``
    (dead-lettered), ``"cancelled"``. ``at``: wall-clock time (``time.time()``, seconds).
    ``worker``: the worker, as ``NAME-xxxxxxxx`` (its ``--name`` and a hash of its secret
    routing id, which tells apart workers of one name), for ``"leased"``, else None.
    """

    kind: str
    job_id: int
    at: float
    worker: str | None = None
    attempt: int | None = None


class JobProgress(NamedTuple):
    """A running job's latest :func:`~freelance_rz.report_progress`: ``done`` of ``total``
    (None when unknown), and a ``message``."""

    done: float
    total: float | None
    message: str


class JobFuture(Future):  # type: ignore[type-arg]
    """A Future of a job. ``job_id`` (int) is the job's id at its producer.

    It differs from ``concurrent.futures.Future`` in three ways. :meth:`cancel` works until
    the job has finished: a job no worker holds is dropped, and a job a worker is running is
    aborted there (its lease is voided; the worker learns it at its next heartbeat, within
    a quarter of the lease). So a Future never reports ``running()``: the job may be handed
    to another worker if its worker dies. And its lock (a Condition) is made on first use: a
    pending job's Future then costs about 230 bytes instead of 1.6 KB, and a producer may hold
    a million of them.

    When tracing is active (docs/operations.md), ``span`` is the producer's span of the job
    (ended when the Future resolves) and ``traceparent`` its W3C trace context, carried by the
    JOB; both are None otherwise.
    """

    # the producer's trace span of the job and its W3C traceparent, set at submit when
    # tracing is active (class defaults: no memory per Future otherwise)
    span: Any = None
    traceparent: str | None = None

    def __init__(self, job_id: int, on_cancel: Callable[[JobFuture], None] | None = None) -> None:
        # Future.__init__ without its Condition; these are the fields it sets (3.10-3.13).
        self._state = PENDING
        self._result = None
        self._exception = None
        self._waiters: list[Any] = []
        self._done_callbacks: list[Any] = []
        self.job_id = job_id
        self._on_cancel = on_cancel
        self.progress: JobProgress | None = None  # the latest report_progress() of the job

    @property
    def _condition(self) -> threading.Condition:  # type: ignore[override]
        condition = self.__dict__.get("_lazy_condition")
        if condition is None:
            with _CONDITION_LOCK:
                condition = self.__dict__.setdefault("_lazy_condition", threading.Condition())
        return condition  # type: ignore[no-any-return]

    def cancel(self) -> bool:
        """Cancel the job unless it has finished (aborting it on its worker if it runs).
        Returns True if the Future is now cancelled."""
        if not super().cancel():
            return False
        if self._on_cancel is not None:
            self._on_cancel(self)
        return True


#: remote error types that come back as exceptions of their own (subclasses of JobFailed)
_LOCAL_ERRORS: dict[str, type[JobFailed]] = {
    "JobTimeout": JobTimeout, "JobTooLarge": JobTooLarge, "DependencyFailed": DependencyFailed,
}


def resolve(future: JobFuture, outcome: Outcome, job_id: int) -> None:
    """Set what became of job ``job_id`` on its Future: its value (``done``), a
    :class:`~freelance_rz.JobFailed` with the remote error (``failed``; a result that cannot
    be read fails with :class:`~freelance_rz.ProtocolError`), :class:`~freelance_rz.JobLost`
    (``dead``), or cancelled (waking ``wait()`` and ``as_completed()``, as
    ``ThreadPoolExecutor`` does)."""
    if outcome.kind == "cancelled":
        if not future.cancelled():
            Future.cancel(future)
        future.set_running_or_notify_cancel()
    elif outcome.kind == "dead":
        future.set_exception(JobLost(job_id, outcome.attempts, outcome.reason))
    else:
        try:
            if outcome.kind == "done":
                future.set_result(pl.unpack_value(outcome.payload))
            else:
                remote = pl.unpack_error(outcome.payload)
                failed = _LOCAL_ERRORS.get(remote[0], JobFailed)(*remote, outcome.attempts)
                if isinstance(failed, DependencyFailed):
                    failed.dependency = pl.error_dependency(outcome.payload)
                future.set_exception(failed)
        except ProtocolError as exc:  # a result we cannot read still resolves the Future
            future.set_exception(exc)
    if future.span is not None:
        error = future.exception() if outcome.kind in ("failed", "dead") else None
        end_job_span(future.span, outcome.kind, None if error is None else repr(error)[:200])
        future.span = None


def stored_future(job_id: int, state: str, payload: bytes,
                  on_cancel: Callable[[JobFuture], None] | None = None) -> JobFuture:
    """A resolved Future for a job finished before (from the store): ``state`` is one of
    ``done``, ``failed``, ``dead``, ``cancelled``; ``on_cancel``: its producer's (so it is
    known as one of its jobs when passed as an argument)."""
    future = JobFuture(job_id, on_cancel)
    if state == "dead":
        future.set_exception(JobLost(job_id, None, "dead-lettered before a restart"))
    else:
        resolve(future, Outcome(state, payload), job_id)
    return future


def close_future(future: JobFuture, pending: bool) -> None:
    """The producer closed before the job finished: a job no worker held is cancelled, a
    running one fails with :class:`~freelance_rz.ProducerClosed`."""
    if pending and Future.cancel(future):
        future.set_running_or_notify_cancel()  # wakes wait() and as_completed()
    elif not future.done():
        future.set_exception(ProducerClosed("the producer was closed before the job finished"))
    if future.span is not None:
        end_job_span(future.span, "closed")
        future.span = None

"""Exceptions of freelance_rz: one root, split into local misuse, wire errors and job outcomes.

Modelled on h11's ``LocalProtocolError``/``RemoteProtocolError`` split: errors are translated
once, at the boundary where they are detected, into one of these types.
"""

from __future__ import annotations

from typing import Any


class FreelanceError(Exception):
    """Root of every exception freelance_rz raises on purpose."""


class ProtocolError(FreelanceError):
    """A message broke the wire protocol (docs/protocol.md).

    Attributes:
        code: one of ``protocol.E_*`` (sent back in ERR).
        message: what was wrong, for logs and ERR.
        rid: the request id of the offending message when it could be read, else None.
    """

    def __init__(self, code: int, message: str, rid: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.rid = rid


class JobFailed(FreelanceError):
    """The job ran (or was refused by the worker) and raised; set on the job's Future.

    Attributes:
        remote_type: the exception's class name on the worker, e.g. ``"ValueError"``, or
            ``"TaskNotAllowed"`` or ``"JobTimeout"`` for errors of the worker itself.
        remote_message: ``str(exception)`` on the worker.
        remote_traceback: the formatted traceback on the worker ("" when there is none).
        attempts: how many times the task ran to an error (1, or more when the job was
            retried on task errors: ``options(retry_on=...)`` or a raised :class:`Retry`);
            None when unknown (a result of a job from before a restart).
    """

    def __init__(self, remote_type: str, remote_message: str, remote_traceback: str,
                 attempts: int | None = None) -> None:
        super().__init__(f"{remote_type}: {remote_message}")
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback
        self.attempts = attempts

    def __str__(self) -> str:
        # A traceback prints "JobFailed: ValueError: ..."; a subclass named after the remote
        # type (JobTimeout) would read "JobTimeout: JobTimeout: ...", so it is not repeated.
        text = self.remote_message
        if self.remote_type != type(self).__name__:
            text = f"{self.remote_type}: {text}"
        if self.attempts is not None and self.attempts > 1:
            text += f" (after {self.attempts} attempts)"
        if self.remote_traceback:
            text += "\n\nRemote traceback:\n" + self.remote_traceback.rstrip()
        return text


class JobTimeout(JobFailed, TimeoutError):
    """The job ran past its time limit (``timeout_s``); the worker stopped it (killed its
    process, or cancelled it in the thread and asyncio pools). Not retried. Also a
    ``TimeoutError``, so ``except TimeoutError`` catches it."""


class JobTooLarge(JobFailed):
    """The job was never run: its encoded arguments are larger than every connected worker
    takes (their ``--max-payload-bytes``). The message names the job's size and both limits
    (the largest a connected worker takes, and the producer's ``max_payload_bytes``).
    ``remote_type`` is ``"JobTooLarge"``."""


class JobLost(FreelanceError):
    """The job was dead-lettered: ``max_attempts`` of its leases were lost (the worker holding
    it died or stopped heartbeating, or the job's own process died), so it is not offered
    again.

    Attributes:
        job_id: the producer's id of the job.
        attempts: how many leases were lost (None for a job dead-lettered before the
            producer restarted on its store: the count is not kept).
        reason: what the last loss was: as a worker reported it (e.g. the job's process
            "was killed by signal SIGSEGV"), else that each worker holding it died or stopped
            heartbeating (its leases expired); the end of ``str()`` of the error.
    """

    def __init__(self, job_id: int, attempts: int | None, reason: str | None = None) -> None:
        lost = "" if attempts is None else f" after {attempts} lost attempt(s)"
        reason = reason or "each worker holding it died or stopped heartbeating"
        super().__init__(f"job {job_id} dead-lettered{lost}: {reason}")
        self.job_id = job_id
        self.attempts = attempts
        self.reason = reason


class DependencyFailed(JobFailed):
    """The job never ran: a job it depends on (a Future passed as an argument, or in
    ``options(after=[...])``) failed, was cancelled or was dead-lettered; so do the jobs that
    depend on this one, down the chain. ``remote_type`` is ``"DependencyFailed"``; the message
    names the job that failed (its id and task) and why.

    Attributes:
        dependency: the id of the job it depended on that failed (None when unknown).
    """

    dependency: int | None = None


class Retry(FreelanceError):
    """Raised by a task to be run again later: ``raise freelance_rz.Retry(in_s=10)``.

    The job waits ``in_s`` seconds (None: the job's backoff, ``options(backoff_s=...)``,
    doubling with each retry) and is offered again, as long as its ``max_retries`` (default
    3) allow; after that its Future fails with :class:`JobFailed` whose ``remote_type`` is
    ``"Retry"``. It needs no ``retry_on``. (RQ's ``Retry``, Celery's ``self.retry()``.)

    Args:
        in_s: seconds to wait before the next attempt (>= 0), or None.
        message: said in the last error when the retries are spent.

    Raises:
        TypeError: ``in_s`` is not a number (a str, a bool).
        ValueError: ``in_s`` is negative, not finite or over 1e9.
    """

    def __init__(self, in_s: float | None = None, message: str = "the task asked to be retried") -> None:
        if in_s is not None:
            if isinstance(in_s, bool) or not isinstance(in_s, (int, float)):
                raise TypeError(f"Retry(in_s=...) must be None or a number of seconds, got {in_s!r}")
            if not 0 <= in_s < 1e9:
                raise ValueError(f"Retry(in_s=...) must be None or seconds from 0 to 1e9, got {in_s!r}")
        super().__init__(message)
        self.retry_in_s = in_s

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.retry_in_s, str(self)))


class ProducerClosed(FreelanceError):
    """The producer was closed (:meth:`Producer.close`) before the job finished."""


class TaskNotAllowed(FreelanceError):
    """The task name is malformed or names something outside the worker's allowlist."""


class StoreError(FreelanceError):
    """The job store file cannot be used: not a SQLite database, damaged, another
    application's database, a newer schema version, locked by another store, or an SQLite
    error while reading or writing it. The message names the path and what is wrong.

    Attributes:
        path: the store's file path.
        problem: what is wrong, without the path.
    """

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"job store {path!r}: {problem}")
        self.path = path
        self.problem = problem

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.problem))

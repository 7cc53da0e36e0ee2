"""Retries on task errors: which remote errors a job retries, and after how long. Pure.

A job's :class:`RetryPolicy` travels in its call's options (``"retry"``, see
:meth:`RetryPolicy.wire`), so a durable producer restores it with the job. When a job's
result is an error, the ledger asks :func:`retry_in` whether it is retried and after how many
seconds; the job then waits (``DEFERRED``) until then and is offered again. Retries on task
errors are counted apart from lost leases (``max_attempts``: a worker that died).

An error matches the policy when one of the names in ``on`` is the qualified name
(``"module:qualname"``) of the remote exception's class or of one of its bases: a worker sends
those names (the class's MRO, at most :data:`MAX_ERROR_TYPES`) in the error payload's
``types`` (docs/protocol.md). An error from a worker that sends no ``types`` matches on its
class name alone (the part after ``:``). A task that raises :class:`~freelance_rz.Retry` is
retried whatever ``on`` says (after its ``in_s``, or the backoff), within ``max_retries``.

The backoff is exponential: ``backoff_s * 2 ** (n - 1)`` seconds before retry ``n``, at most
``backoff_max_s``; with ``jitter``, a uniform draw from the upper half of that ("equal
jitter", AWS Architecture Blog, *Exponential Backoff and Jitter*, 2015): retries of jobs that
failed together spread out, yet none comes back sooner than half its backoff.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: the qualified name a worker sends for :class:`freelance_rz.Retry`
RETRY_TYPE = "freelance_rz.errors:Retry"
MAX_ERROR_TYPES = 16  # names of an exception's classes an error payload carries, at most
MAX_TYPE_CHARS = 256  # characters of one such name, at most (longer ones are left out)
MAX_RETRY_ON = 32  # names a policy's ``on`` may hold
DEFAULT_MAX_RETRIES = 3  # a task raising Retry without options: Celery's default too
DEFAULT_BACKOFF_S = 1.0
DEFAULT_BACKOFF_MAX_S = 60.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Which task errors a job retries and how. ``on``: qualified names of exception
    classes (``"builtins:ConnectionError"``, ``"myapp.errors:Busy"``); ``max_retries``:
    retries at most (>= 0); ``backoff_s`` / ``backoff_max_s``: seconds before the first
    retry / at most before any; ``jitter``: draw from the upper half of each backoff."""

    on: frozenset[str] = frozenset()
    max_retries: int = DEFAULT_MAX_RETRIES
    backoff_s: float = DEFAULT_BACKOFF_S
    backoff_max_s: float = DEFAULT_BACKOFF_MAX_S
    jitter: bool = True

    def wire(self) -> dict[str, Any]:
        """The policy as the call's ``"retry"`` option (milliseconds as ints)."""
        return {"on": sorted(self.on), "max": self.max_retries,
                "backoff_ms": round(self.backoff_s * 1000),
                "backoff_max_ms": round(self.backoff_max_s * 1000), "jitter": self.jitter}

    @classmethod
    def from_wire(cls, value: Any) -> RetryPolicy | None:
        """The policy of a call's ``"retry"`` option; None when absent or malformed (then
        only :class:`~freelance_rz.Retry` raised by the task retries, with the defaults)."""
        if type(value) is not dict:
            return None
        on, most = value.get("on", []), value.get("max", DEFAULT_MAX_RETRIES)
        base, top = value.get("backoff_ms", 1000), value.get("backoff_max_ms", 60_000)
        if (type(on) is not list or len(on) > MAX_RETRY_ON or not all(type(n) is str for n in on)
                or not all(type(n) is int and n >= 0 for n in (most, base, top))):
            return None
        return cls(frozenset(on), most, base / 1000, top / 1000, value.get("jitter", True) is True)


DEFAULT = RetryPolicy()


@dataclass(frozen=True, slots=True)
class RemoteError:
    """What the retry rule reads of an error payload: the class name, the qualified names
    of the class and its bases (empty from a worker that does not send them), and the delay
    a raised :class:`~freelance_rz.Retry` asked for (``retry_in_s``; None: the backoff)."""

    type: str
    types: tuple[str, ...] = ()
    retry_in_s: float | None = None

    @property
    def is_retry(self) -> bool:
        return RETRY_TYPE in self.types


def matches(on: frozenset[str], error: RemoteError) -> bool:
    """Whether ``error`` is of a class named in ``on`` (see the module docstring)."""
    if error.types:
        return not on.isdisjoint(error.types)
    return any(name.rpartition(":")[2] == error.type for name in on)


def backoff(policy: RetryPolicy, retry: int, draw: float) -> float:
    """Seconds before retry number ``retry`` (from 1); ``draw`` is uniform in [0, 1)."""
    delay = min(policy.backoff_max_s, policy.backoff_s * 2.0 ** min(retry - 1, 64))
    return delay / 2 + draw * delay / 2 if policy.jitter else delay


def retry_in(policy: RetryPolicy | None, retries: int, error: RemoteError, draw: float) -> float | None:
    """Seconds until a job that failed with ``error`` after ``retries`` retries is offered
    again, or None when the error is final (no match, or its retries are spent). ``policy``
    None: the job's options asked for none (only a raised Retry retries, with the defaults)."""
    rules = policy or DEFAULT
    if retries >= rules.max_retries:
        return None
    if error.is_retry:
        return backoff(rules, retries + 1, draw) if error.retry_in_s is None else error.retry_in_s
    if policy is None or not matches(policy.on, error):
        return None
    return backoff(policy, retries + 1, draw)

"""The job options that say when a job may run (DESIGN §9): retries on task errors and a
delay or a due time, checked at :meth:`~freelance_rz.Producer.options` so a bad value fails
there with a clear error, never later on the I/O thread."""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Iterable
from typing import Any

from ..core import check as _check
from ..core.retry import DEFAULT_BACKOFF_MAX_S, DEFAULT_BACKOFF_S, DEFAULT_MAX_RETRIES, MAX_RETRY_ON, RetryPolicy

_QUALIFIED = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
MAX_RETRIES = 1_000_000  # the most retries a job may ask for


def _error_name(entry: Any) -> str:
    """One entry of ``retry_on`` as a qualified name ``"module:qualname"``."""
    if isinstance(entry, type) and issubclass(entry, BaseException):
        return f"{entry.__module__}:{entry.__qualname__}"
    if isinstance(entry, str) and _QUALIFIED.fullmatch(entry):
        return entry
    raise TypeError(
        "retry_on must hold exception classes or 'module:QualName' strings (e.g. "
        f"(ConnectionError, 'myapp.errors:Busy')), got {entry!r}"
    )


def retry_policy(retry_on: Any, max_retries: Any, backoff_s: Any, backoff_max_s: Any,
                 jitter: Any) -> RetryPolicy | None:
    """The retry policy of ``options(...)``, or None when none of its arguments was given.

    Raises:
        TypeError: ``retry_on`` is not an exception class, a ``"module:QualName"`` string or an
            iterable of them; ``max_retries`` not an int; a backoff not a number; ``jitter``
            not a bool.
        ValueError: more than 32 names in ``retry_on``; ``max_retries`` outside 0 to 10**6;
            a backoff outside 0 to 1e9 seconds, or ``backoff_max_s`` < ``backoff_s``.
    """
    if all(v is None for v in (retry_on, max_retries, backoff_s, backoff_max_s, jitter)):
        return None
    entries: Iterable[Any] = () if retry_on is None else (
        (retry_on,) if isinstance(retry_on, (str, type)) else retry_on)
    if not isinstance(entries, Iterable):
        raise TypeError(f"retry_on must be an exception class or a tuple of them, got {retry_on!r}")
    names = frozenset(_error_name(entry) for entry in entries)
    if len(names) > MAX_RETRY_ON:
        raise ValueError(f"retry_on may name at most {MAX_RETRY_ON} exception classes, got {len(names)}")
    most = _check.integer("max_retries", max_retries, min_=0, max_=MAX_RETRIES, allow_none=True)
    base = _check.number("backoff_s", backoff_s, min_=0, max_=_check.MAX_SECONDS, unit="seconds",
                         allow_none=True)
    top = _check.number("backoff_max_s", backoff_max_s, min_=0, max_=_check.MAX_SECONDS,
                        unit="seconds", allow_none=True)
    base = DEFAULT_BACKOFF_S if base is None else base
    top = max(DEFAULT_BACKOFF_MAX_S, base) if top is None else top
    if top < base:
        raise ValueError(f"backoff_max_s ({top!r} seconds) must be >= backoff_s ({base!r} seconds)")
    return RetryPolicy(names, DEFAULT_MAX_RETRIES if most is None else most, base, top,
                       True if jitter is None else _check.boolean("jitter", jitter))


def delay_of(delay_s: Any, at: Any) -> tuple[float | None, float | None]:
    """``(delay_s, at)`` of ``options(...)``, checked: seconds from submit, or the unix time
    of an aware datetime (at most one of them; both None when neither was given).

    Raises:
        TypeError: ``delay_s`` not a number, ``at`` not a ``datetime.datetime``.
        ValueError: ``delay_s`` negative or over 1e9 seconds; ``at`` a naive datetime (no
            ``tzinfo``: its time zone would be a guess); both given.
    """
    delay_s = _check.number("delay_s", delay_s, min_=0, max_=_check.MAX_SECONDS, unit="seconds",
                            allow_none=True)
    if at is None:
        return delay_s, None
    if not isinstance(at, dt.datetime):
        raise TypeError(f"at must be a datetime.datetime with a time zone, got {at!r}")
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(
            f"at must be an aware datetime (with tzinfo), got the naive {at!r}: e.g. "
            "datetime.now(timezone.utc) + timedelta(minutes=5), or "
            "datetime(2030, 1, 1, 9, 0, tzinfo=ZoneInfo('Europe/Berlin'))"
        )
    if delay_s is not None:
        raise ValueError("give delay_s or at, not both")
    return None, at.timestamp()


def due_time(delay_s: float | None, at: float | None) -> float | None:
    """The monotonic time (seconds) a job submitted now is due, or None (at once). A wall
    time ``at`` is converted once, here: later changes of the wall clock do not move it."""
    if delay_s is not None:
        return time.monotonic() + delay_s
    if at is not None:
        return time.monotonic() + (at - time.time())
    return None

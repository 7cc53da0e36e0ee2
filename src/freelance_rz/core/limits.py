"""Concurrency and rate limits per task, enforced at offer time across all workers. Pure.

``producer.limit("myapp.tasks:call_api", max_running=5, per_s=10.0)``: at most 5 jobs of
that task leased at once (to any workers), and at most 10 started a second. The ledger tells
:class:`Limits` each lease that starts or ends (:meth:`Limits.started`, :meth:`Limits.ended`);
a claim asks which tasks are closed now (:meth:`Limits.closed`) and the pending index passes
over their queues, so the claim gets another job its worker can run, or parks. Nothing is
scanned: a limit costs a set lookup per signature a claim looks at, and nothing when no limit
is set.

The rate is a token bucket (Tanenbaum, *Computer Networks*, "token bucket"): ``per_s`` tokens
a second up to ``max(1, per_s)``, one taken per start; so over any interval of ``T`` seconds
at most ``max(1, per_s) + per_s * T`` jobs start (at most ``per_s`` a second on average,
exactly, however many workers claim). A task closed by its rate reopens when its next token
is due: :meth:`Limits.next_open` is a deadline for the producer's loop, never a timer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class _Limit:
    max_running: int | None
    per_s: float | None
    running: int = 0
    tokens: float = 0.0
    refilled_at: float = 0.0

    def refill(self, now: float) -> None:
        if self.per_s is not None:
            top = max(1.0, self.per_s)
            self.tokens = min(top, self.tokens + (now - self.refilled_at) * self.per_s)
        self.refilled_at = now

    def is_open(self) -> bool:
        return (self.max_running is None or self.running < self.max_running) and (
            self.per_s is None or self.tokens >= 1.0)


class Limits:
    """The limits of one producer's tasks, and how many jobs of each run now."""

    def __init__(self) -> None:
        self._limits: dict[str, _Limit] = {}
        self._closed: set[str] = set()  # tasks at a limit (rates refreshed in closed())
        self.reopened = False  # a task reopened since the engine last looked: offer again
        self.peaks: dict[str, int] = {}  # most leased at once, per limited task (for tests)
        self.active = False  # any task limited (an attribute: read once or more per job)

    def change(self, task: str, max_running: int | None, per_s: float | None, now: float,
            running: int) -> None:
        """Limit ``task`` (None and None: no limit); ``running``: its jobs leased now. A new
        rate starts with a full bucket."""
        if max_running is None and per_s is None:
            self._limits.pop(task, None)
            self._closed.discard(task)
            self.reopened = True
            self.active = bool(self._limits)
            return
        limit = _Limit(max_running, per_s, running, max(1.0, per_s or 0.0), now)
        self._limits[task] = limit
        self.active = True
        self._update(task, limit)

    def _update(self, task: str, limit: _Limit) -> None:
        if limit.is_open():
            if task in self._closed:
                self._closed.discard(task)
                self.reopened = True
        else:
            self._closed.add(task)

    def closed(self, now: float) -> set[str]:
        """The tasks whose jobs may not be leased now (an empty set without limits)."""
        if self._closed:
            for task in [t for t in self._closed if self._limits[t].per_s is not None]:
                limit = self._limits[task]
                limit.refill(now)
                self._update(task, limit)
        return self._closed

    def started(self, task: str, now: float) -> None:
        """A job of ``task`` was leased."""
        limit = self._limits.get(task)
        if limit is not None:
            limit.running += 1
            limit.refill(now)
            limit.tokens -= 1.0
            self.peaks[task] = max(self.peaks.get(task, 0), limit.running)
            self._update(task, limit)

    def ended(self, task: str) -> None:
        """A lease of a job of ``task`` ended (result, cancel, loss, release, retry)."""
        limit = self._limits.get(task)
        if limit is not None:
            limit.running -= 1
            self._update(task, limit)

    def next_open(self) -> float | None:
        """When the earliest task closed by its rate gets its next token (monotonic
        seconds), or None."""
        times = [limit.refilled_at + (1.0 - limit.tokens) / limit.per_s
                 for task in self._closed for limit in (self._limits[task],)
                 if limit.per_s is not None and limit.tokens < 1.0
                 and (limit.max_running is None or limit.running < limit.max_running)]
        return min(times) if times else None

    def report(self, pending_by_task: dict[str, int]) -> list[dict[str, Any]]:
        """STATUS ``limits``: per limited task its ``task``, ``max_running``, ``per_s``,
        ``running`` (leased now), ``held`` (pending jobs waiting for the limit, when it is
        closed) and ``closed`` (bool)."""
        return [
            {"task": task, "max_running": limit.max_running, "per_s": limit.per_s,
             "running": limit.running, "closed": task in self._closed,
             "held": pending_by_task.get(task, 0) if task in self._closed else 0}
            for task, limit in sorted(self._limits.items())
        ]

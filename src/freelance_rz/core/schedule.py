"""Periodic jobs: when each schedule fires. Pure (the wall-clock time is passed in).

A schedule fires at its *slots*: every ``every_s`` seconds from when it was made, or the
times its cron expression names in its time zone (cron by the ``cronsim`` library, the
``schedule`` extra: small, no dependencies, correct across daylight-saving changes, and its
only job is this one). :meth:`Schedules.due` is asked with the time now and answers which
schedules fire, each with the slot it fires for:

* a schedule fires once per slot, and never for a slot at or before the one it last fired
  for (``last``; a durable producer keeps it, so a restart never fires a slot twice);
* slots missed while the producer was down (or stalled) fire once, for the latest of them,
  not once each;
* ``overlap=False``: a slot whose previous run is still live is skipped (counted as fired,
  so it does not fire late);
* a paused schedule fires nothing; resumed, it goes on from the next slot after now.

Everything is in wall-clock seconds (``time.time()``): cron slots are wall-clock times, and a
restart must find them again. The producer converts the next slot to its monotonic clock to
poll with it as a deadline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

MAX_CRON_CHARS = 200  # a cron expression's length, at most
MIN_EVERY_S = 0.1  # the shortest period, in seconds: a periodic job, not a busy loop


def _zone(tz: str | None) -> Any:
    if tz is None:
        return timezone.utc
    from zoneinfo import ZoneInfo

    return ZoneInfo(tz)


def check_cron(cron: str, tz: str | None) -> None:
    """Raise ValueError naming the problem when ``cron`` or ``tz`` cannot be used (ImportError
    when the ``schedule`` extra is not installed)."""
    try:
        from cronsim import CronSim, CronSimError
    except ImportError:
        raise ImportError("cron schedules need the 'schedule' extra: "
                          "pip install 'freelance_rz[schedule]'") from None
    if len(cron) > MAX_CRON_CHARS:
        raise ValueError(f"cron must be at most {MAX_CRON_CHARS} characters")
    try:
        zone = _zone(tz)
    except Exception as exc:
        raise ValueError(f"tz must be an IANA time zone name such as 'Europe/Berlin', got {tz!r} ({exc})") from None
    try:
        next(CronSim(cron, datetime(2000, 1, 1, tzinfo=zone)))
    except (CronSimError, StopIteration) as exc:
        raise ValueError(f"cron {cron!r} is not a cron expression: {exc}") from None


@dataclass(slots=True)
class Schedule:
    """One periodic job. ``call``: its packed call; ``every_s`` (seconds) or ``cron`` with
    ``tz`` (None: UTC); ``created`` and ``last`` (the slot it last fired for, or None) in
    wall-clock seconds; ``job_id``: the job of its latest run."""

    schedule_id: int
    name: str
    call: bytes
    every_s: float | None = None
    cron: str | None = None
    tz: str | None = None
    overlap: bool = True
    paused: bool = False
    created: float = 0.0
    last: float | None = None
    job_id: int | None = None
    runs: int = 0  # runs started by this process
    skipped: int = 0  # slots skipped by overlap=False

    def _slot(self, n: int) -> float:
        """The ``n``-th slot of an ``every_s`` schedule. Slots are computed this one way only:
        ``created + n * every_s`` rounds, and a slot found by division (``floor``) may be the
        one just fired (0.3 s: 12,709 runs in 3 s), so the division only guesses ``n``."""
        assert self.every_s is not None
        return self.created + n * self.every_s

    def after(self, when: float) -> float:
        """The first slot strictly after ``when`` (wall-clock seconds)."""
        if self.every_s is not None:
            n = max(1, math.floor((when - self.created) / self.every_s))
            while self._slot(n) <= when:
                n += 1
            return self._slot(n)
        from cronsim import CronSim

        start = datetime.fromtimestamp(when, _zone(self.tz))
        return next(CronSim(str(self.cron), start)).timestamp()

    def latest(self, now: float) -> float:
        """The latest slot at or before ``now`` (its next slot is due: one exists)."""
        if self.every_s is not None:
            n = max(0, math.floor((now - self.created) / self.every_s))
            while n > 0 and self._slot(n) > now:
                n -= 1
            while self._slot(n + 1) <= now:
                n += 1
            return self._slot(n)
        from cronsim import CronSim

        start = datetime.fromtimestamp(now, _zone(self.tz)) + timedelta(minutes=1)
        for slot in CronSim(str(self.cron), start, reverse=True):
            if slot.timestamp() <= now:
                return slot.timestamp()
        raise AssertionError("unreachable: a cron expression has past slots")

    def next_slot(self) -> float:
        """The slot it fires for next."""
        return self.after(self.last if self.last is not None else self.created)


class Schedules:
    """The schedules of one producer, by id. ``live(job_id)`` tells whether a job is still
    live (for ``overlap=False``)."""

    def __init__(self) -> None:
        self.by_id: dict[int, Schedule] = {}
        self._next: float | None = None  # the earliest next slot of an active schedule

    def __len__(self) -> int:
        return len(self.by_id)

    def add(self, schedule: Schedule) -> None:
        self.by_id[schedule.schedule_id] = schedule
        self._next = None

    def remove(self, schedule_id: int) -> Schedule | None:
        self._next = None
        return self.by_id.pop(schedule_id, None)

    def pause(self, schedule_id: int, paused: bool, now: float) -> Schedule | None:
        """Pause or resume; a resumed schedule goes on from the next slot after ``now``."""
        schedule = self.by_id.get(schedule_id)
        if schedule is not None and schedule.paused != paused:
            schedule.paused = paused
            if not paused:
                schedule.last = max(schedule.last or schedule.created, now)
            self._next = None
        return schedule

    def next_fire(self) -> float | None:
        """The earliest next slot of an active schedule (wall-clock seconds), or None."""
        if self._next is None:
            slots = [s.next_slot() for s in self.by_id.values() if not s.paused]
            self._next = min(slots) if slots else math.inf
        return None if math.isinf(self._next) else self._next

    def due(self, now: float, live: Any) -> list[tuple[Schedule, float]]:
        """The schedules that fire at ``now``, each with its slot (its ``last`` is set to
        it); ``live(job_id)``: the job of a previous run is still live (``overlap=False``
        skips the slot then, and it is not returned)."""
        upcoming = self.next_fire()
        if upcoming is None or upcoming > now:
            return []
        out = []
        for schedule in self.by_id.values():
            if schedule.paused or schedule.next_slot() > now:
                continue
            schedule.last = schedule.latest(now)  # missed slots fire once, for the latest
            if not schedule.overlap and schedule.job_id is not None and live(schedule.job_id):
                schedule.skipped += 1
                continue
            out.append((schedule, schedule.last))
        self._next = None
        return out

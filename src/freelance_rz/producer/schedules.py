"""Periodic jobs on a producer: the handle the application holds, and the I/O thread's side
(it fires due schedules as jobs, journals each fire in the store, and answers the handle's
commands). When each schedule fires is :mod:`freelance_rz.core.schedule`'s (pure).

A schedule is known by its ``name`` (default: its task, arguments and timing, hashed): a
durable producer keeps each schedule and the slot it last fired for in its store, so after a
restart it fires missed slots once, never a slot twice, and a schedule declared again under
the same name takes over what was kept instead of making a second one.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from ..core.payload import peek_task
from ..core.schedule import Schedule, Schedules
from .journal import Wall

log = logging.getLogger("freelance_rz.producer")


@dataclass(frozen=True, slots=True)
class ScheduleCommand:
    """``action``: ``"add"`` (``schedule``), ``"pause"``, ``"resume"``, ``"remove"``
    (``schedule_id``) or ``"info"``; ``answer``: the schedule's state after it (a dict), or
    None when there is no such schedule."""

    action: str
    answer: Future[dict[str, Any] | None]
    schedule: Schedule | None = None
    schedule_id: int = 0


def default_name(call: bytes, every_s: float | None, cron: str | None, tz: str | None) -> str:
    """A schedule's name when none is given: its task and a hash of its call and timing."""
    digest = hashlib.sha256(repr((call, every_s, cron, tz)).encode()).hexdigest()[:16]
    return f"{peek_task(call)}/{digest}"


def describe(schedule: Schedule, wall: Wall | None = None) -> dict[str, Any]:
    """What a handle reports of a schedule (wall-clock seconds)."""
    return {"id": schedule.schedule_id, "name": schedule.name, "every_s": schedule.every_s,
            "cron": schedule.cron, "tz": schedule.tz, "overlap": schedule.overlap,
            "paused": schedule.paused, "last": schedule.last, "next": None if schedule.paused
            else schedule.next_slot(), "runs": schedule.runs, "skipped": schedule.skipped,
            "job_id": schedule.job_id}


@dataclass
class Scheduler:
    """The I/O thread's side of a producer's schedules.

    Args:
        wall: the turn's wall-clock time.
        submit: ``submit(call) -> job_id`` submits a run (a job of its own; its Future is held
            by the handle's ``last``).
        live: ``live(job_id)``: the job is still in the ledger.
        store: the durable store, or None.
    """

    wall: Wall
    submit: Callable[[bytes], int]
    live: Callable[[int], bool]
    store: Any = None
    schedules: Schedules = field(default_factory=Schedules)
    by_name: dict[str, int] = field(default_factory=dict)

    def restore(self, kept: list[Schedule]) -> None:
        for schedule in kept:
            self.schedules.add(schedule)
            self.by_name[schedule.name] = schedule.schedule_id

    def command(self, command: ScheduleCommand) -> None:
        """Carry out a handle's command; its answer is set."""
        now = self.wall.now
        schedule: Schedule | None
        if command.action == "add" and command.schedule is not None:
            schedule = self._add(command.schedule)
        elif command.action in ("pause", "resume"):
            schedule = self.schedules.pause(command.schedule_id, command.action == "pause", now)
        elif command.action == "remove":
            schedule = self.schedules.remove(command.schedule_id)
            if schedule is not None:
                self.by_name.pop(schedule.name, None)
                if self.store is not None:
                    self.store.schedule_remove(schedule.schedule_id)
                command.answer.set_result(describe(schedule))
                return
        else:
            schedule = self.schedules.by_id.get(command.schedule_id)
        if schedule is not None and self.store is not None and command.action != "info":
            self.store.schedule_put(schedule)
        command.answer.set_result(None if schedule is None else describe(schedule))

    def _add(self, schedule: Schedule) -> Schedule:
        schedule.schedule_id = max(self.schedules.by_id, default=0) + 1
        kept_id = self.by_name.get(schedule.name)
        kept = None if kept_id is None else self.schedules.by_id.get(kept_id)
        if kept is not None:  # declared again (after a restart): it goes on where it was
            schedule.schedule_id, schedule.last = kept.schedule_id, kept.last
            schedule.created, schedule.paused = kept.created, kept.paused
            schedule.job_id, schedule.runs, schedule.skipped = kept.job_id, kept.runs, kept.skipped
        self.schedules.add(schedule)
        self.by_name[schedule.name] = schedule.schedule_id
        return schedule

    def tick(self) -> int:
        """Fire the schedules due now; returns how many jobs were submitted."""
        if not self.schedules.by_id:  # asked every turn of the I/O thread
            return 0
        fired = 0
        for schedule, slot in self.schedules.due(self.wall.now, self.live):
            schedule.job_id = self.submit(schedule.call)
            schedule.runs += 1
            fired += 1
            if self.store is not None:  # in the same flush as the job: a slot fires once
                self.store.schedule_fire(schedule.schedule_id, slot, schedule.job_id)
            log.debug("schedule %s fired for %.3f: job %d", schedule.name, slot, schedule.job_id)
        return fired

    def next_wakeup(self) -> float | None:
        """The next slot, on the I/O thread's monotonic clock, or None."""
        if not self.schedules.by_id:
            return None
        upcoming = self.schedules.next_fire()
        return None if upcoming is None else self.wall.monotonic(upcoming)


class ScheduleHandle:
    """A periodic job of a producer (made by :meth:`~freelance_rz.Producer.schedule`).

    ``id`` and ``name`` identify it; :meth:`pause`, :meth:`resume` and :meth:`remove` change
    it, :meth:`info` tells its state: ``every_s``, ``cron``, ``tz``, ``overlap``, ``paused``,
    ``last`` and ``next`` (its last and next slots, unix seconds), ``runs`` (jobs started by
    this process), ``skipped`` (slots skipped by ``overlap=False``), ``job_id`` (its latest
    run's job). Each method waits for the producer's I/O thread (at most ``timeout_s``).

    Raises (each method):
        RuntimeError: the producer has stopped.
        concurrent.futures.TimeoutError: no answer within ``timeout_s`` seconds.
    """

    def __init__(self, info: dict[str, Any], post: Callable[[ScheduleCommand], bool]) -> None:
        self.id: int = info["id"]
        self.name: str = info["name"]
        self._post = post

    def _do(self, action: str, timeout_s: float | None) -> dict[str, Any] | None:
        command = ScheduleCommand(action, Future(), schedule_id=self.id)
        if not self._post(command):
            raise RuntimeError("the producer has stopped")
        return command.answer.result(timeout_s)

    def pause(self, timeout_s: float | None = 5.0) -> None:
        """Fire nothing until :meth:`resume`."""
        self._do("pause", timeout_s)

    def resume(self, timeout_s: float | None = 5.0) -> None:
        """Fire again, from the next slot after now (slots passed while paused do not fire)."""
        self._do("resume", timeout_s)

    def remove(self, timeout_s: float | None = 5.0) -> None:
        """Remove it for good (from the store too); a run in progress goes on."""
        self._do("remove", timeout_s)

    def info(self, timeout_s: float | None = 5.0) -> dict[str, Any] | None:
        """Its state (see the class docstring), or None once removed."""
        return self._do("info", timeout_s)

    def __repr__(self) -> str:
        return f"<ScheduleHandle {self.id} {self.name!r}>"


__all__ = ["ScheduleCommand", "ScheduleHandle", "Scheduler", "default_name", "describe"]

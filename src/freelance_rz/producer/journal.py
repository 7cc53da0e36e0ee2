"""Where the ledger's transitions go on a producer: the job store (a durable producer), the
tally (per-task counts for STATUS and metrics), and the application's ``on_event`` hook. The ledger tells its :class:`~freelance_rz.core.ledger.Journal`
every step of every job at exactly the right moment; these adapters only pass them on."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ..core.ledger import Journal
from ..core.payload import peek_task
from ..core.tally import Tally
from ..core.text import worker_label
from .future import JobEvent
from .store import JobStore

log = logging.getLogger("freelance_rz.producer")


class Wall:
    """The wall-clock time (``time.time()``, seconds) of the I/O thread's current turn, from
    the turn's monotonic reading (the one clock read of a turn) and the offset between the two
    clocks taken at start: finished results and events are stamped with it."""

    def __init__(self) -> None:
        self._offset = time.time() - time.monotonic()
        self.now = time.monotonic() + self._offset

    def tick(self, monotonic_now: float) -> None:
        self.now = monotonic_now + self._offset

    def at(self, monotonic: float) -> float:
        """The wall-clock time of a monotonic time (seconds)."""
        return monotonic + self._offset

    def monotonic(self, wall: float) -> float:
        """The monotonic time of a wall-clock time (seconds)."""
        return wall - self._offset


class StoreJournal:
    """Writes the ledger's transitions into a :class:`JobStore` (buffered there until the I/O
    thread flushes it at the end of the turn)."""

    def __init__(self, store: JobStore, wall: Wall) -> None:
        self._wall = wall
        self.add = store.add
        self.lease = store.lease
        self.release = store.release
        self.requeue = store.requeue
        self._finish = store.finish
        self._defer = store.defer
        self._store = store

    def finish(self, job_id: int, state: str, payload: bytes) -> None:
        self._finish(job_id, state, payload, self._wall.now)

    def defer(self, job_id: int, due: float, retries: int, lease_id: int | None = None) -> None:
        self._defer(job_id, self._wall.at(due), retries, lease_id)  # wall time: a restart converts it

    def ready(self, job_id: int) -> None:
        pass  # the stored due time has passed: a restart finds the job pending

    def block(self, job_id: int, deps: tuple[int, ...], due: float | None = None) -> None:
        self._store.block(job_id, deps, None if due is None else self._wall.at(due))

    def unblock(self, job_id: int, payload: bytes) -> None:
        self._store.unblock(job_id, payload)


class EventTap:
    """Passes transitions on to ``journal`` and tells ``on_event`` about each, as a
    :class:`~freelance_rz.JobEvent`. A failing hook is logged and changes nothing."""

    def __init__(self, journal: Journal, on_event: Callable[[JobEvent], None], wall: Wall) -> None:
        self._journal = journal
        self._on_event = on_event
        self._wall = wall

    def _emit(self, *event: Any) -> None:
        try:
            self._on_event(JobEvent(*event))
        except Exception:  # a tracing hook must never take the producer down
            log.exception("on_event callback failed")

    def add(self, job_id: int, payload: bytes, max_attempts: int) -> None:
        self._journal.add(job_id, payload, max_attempts)
        self._emit("submitted", job_id, self._wall.now)

    def lease(self, job_id: int, lease_id: int, worker: bytes, attempt: int) -> None:
        self._journal.lease(job_id, lease_id, worker, attempt)
        self._emit("leased", job_id, self._wall.now, worker_label(worker), attempt)

    def release(self, job_id: int, lease_id: int) -> None:
        self._journal.release(job_id, lease_id)
        self._emit("released", job_id, self._wall.now)

    def requeue(self, job_id: int, attempt: int) -> None:
        self._journal.requeue(job_id, attempt)
        self._emit("requeued", job_id, self._wall.now, None, attempt)

    def finish(self, job_id: int, state: str, payload: bytes) -> None:
        self._journal.finish(job_id, state, payload)
        self._emit(state, job_id, self._wall.now)

    def defer(self, job_id: int, due: float, retries: int, lease_id: int | None = None) -> None:
        self._journal.defer(job_id, due, retries, lease_id)
        self._emit("retrying" if retries else "deferred", job_id, self._wall.now, None,
                   retries + 1 if retries else None)

    def ready(self, job_id: int) -> None:
        self._journal.ready(job_id)
        self._emit("due", job_id, self._wall.now)

    def block(self, job_id: int, deps: tuple[int, ...], due: float | None = None) -> None:
        self._journal.block(job_id, deps, due)
        self._emit("blocked", job_id, self._wall.now)

    def unblock(self, job_id: int, payload: bytes) -> None:
        self._journal.unblock(job_id, payload)
        self._emit("unblocked", job_id, self._wall.now)


class TallyTap:
    """Passes transitions on to ``journal`` and tells the producer's
    :class:`~freelance_rz.core.tally.Tally` about each, with the job's task (read from the
    first bytes of its call) and the turn's wall-clock time: per-task counts, wait and run
    times and recent failures for STATUS, metrics and the dashboard."""

    def __init__(self, journal: Journal, tally: Tally, wall: Wall) -> None:
        self._journal = journal
        self._tally = tally
        self._wall = wall

    def add(self, job_id: int, payload: bytes, max_attempts: int) -> None:
        self._journal.add(job_id, payload, max_attempts)
        self._tally.add(job_id, peek_task(payload), payload, self._wall.now)

    def lease(self, job_id: int, lease_id: int, worker: bytes, attempt: int) -> None:
        self._journal.lease(job_id, lease_id, worker, attempt)
        self._tally.lease(job_id, worker, attempt, self._wall.now)

    def release(self, job_id: int, lease_id: int) -> None:
        self._journal.release(job_id, lease_id)
        self._tally.back(job_id, self._wall.now, retried=False)

    def requeue(self, job_id: int, attempt: int) -> None:
        self._journal.requeue(job_id, attempt)
        self._tally.back(job_id, self._wall.now, retried=True)

    def finish(self, job_id: int, state: str, payload: bytes) -> None:
        self._journal.finish(job_id, state, payload)
        self._tally.finish(job_id, state, payload, self._wall.now)

    def defer(self, job_id: int, due: float, retries: int, lease_id: int | None = None) -> None:
        self._journal.defer(job_id, due, retries, lease_id)
        self._tally.defer(job_id, self._wall.now, retried=retries > 0)

    def ready(self, job_id: int) -> None:
        self._journal.ready(job_id)
        self._tally.ready(job_id, self._wall.now)

    def block(self, job_id: int, deps: tuple[int, ...], due: float | None = None) -> None:
        self._journal.block(job_id, deps, due)
        self._tally.block(job_id, self._wall.now)

    def unblock(self, job_id: int, payload: bytes) -> None:
        self._journal.unblock(job_id, payload)
        self._tally.ready(job_id, self._wall.now, payload)

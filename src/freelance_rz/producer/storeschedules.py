"""The job store's ``schedules`` table: periodic jobs and the slot each last fired for
(see :mod:`freelance_rz.producer.store`, which buffers these rows and writes them in its
flush's transaction, with the jobs of the runs they record)."""

from __future__ import annotations

import sqlite3

import msgpack

from ..core.schedule import Schedule
from .storefile import sqlite_error


class ScheduleRows:
    """Schedule changes buffered until the store's next flush."""

    def __init__(self) -> None:
        self._put: dict[int, Schedule] = {}  # schedules added or changed
        self._last: dict[int, tuple[float, int | None]] = {}  # schedule id -> (slot fired for, its job)
        self._gone: set[int] = set()

    def put(self, schedule: Schedule) -> None:
        self._put[schedule.schedule_id] = schedule
        self._gone.discard(schedule.schedule_id)

    def fire(self, schedule_id: int, last: float, job_id: int | None) -> None:
        self._last[schedule_id] = (last, job_id)

    def remove(self, schedule_id: int) -> None:
        self._put.pop(schedule_id, None)
        self._last.pop(schedule_id, None)
        self._gone.add(schedule_id)

    def write(self, conn: sqlite3.Connection) -> None:
        """Write the buffered changes (inside the store's transaction), then forget them
        (a failed transaction raises before they are forgotten, so a later flush retries)."""
        if not (self._gone or self._put or self._last):
            return
        conn.executemany("DELETE FROM schedules WHERE schedule_id = ?", [(i,) for i in self._gone])
        conn.executemany(
            "INSERT OR REPLACE INTO schedules (schedule_id, name, spec, created, paused, last,"
            " job_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(s.schedule_id, s.name, msgpack.packb([s.call, s.every_s, s.cron, s.tz, s.overlap]),
              s.created, int(s.paused), *self._last.get(s.schedule_id, (s.last, s.job_id)))
             for s in self._put.values()])
        conn.executemany("UPDATE schedules SET last = ?, job_id = ? WHERE schedule_id = ?",
                         [(last, job_id, i) for i, (last, job_id) in self._last.items()
                          if i not in self._put])
        self._put, self._last, self._gone = {}, {}, set()


def read_schedules(conn: sqlite3.Connection, path: str) -> list[Schedule]:
    """The schedules kept in the store at ``path``, by id.

    Raises:
        StoreError: SQLite failed.
    """
    try:
        rows = conn.execute("SELECT schedule_id, name, spec, created, last, paused, job_id"
                            " FROM schedules ORDER BY schedule_id").fetchall()
    except sqlite3.Error as exc:
        raise sqlite_error(path, "reading schedules", exc) from exc
    out = []
    for schedule_id, name, spec, created, last, paused, job_id in rows:
        call, every_s, cron, tz, overlap = msgpack.unpackb(spec)
        out.append(Schedule(schedule_id, name, call, every_s, cron, tz, bool(overlap),
                            bool(paused), created, last, job_id))
    return out

"""A durable job store for a producer: stdlib ``sqlite3``, WAL mode, batched writes.

What it is for (issue 7)
------------------------
A producer that dies takes its in-memory :class:`~freelance_rz.core.ledger.Ledger` with it.
With a store, every transition the ledger makes (a job added, leased, given back, re-queued,
finished) is journaled here, in order, as the ledger tells it (the store never decides or
checks a transition: that is the ledger's), and a restarted producer rebuilds its ledger from
:meth:`JobStore.restore`:
pending jobs are offered again, leased jobs stay leased under their stored lease and worker
(the ledger gives each one lease period from the restart to be renewed by that worker's
heartbeat, else it expires as usual), deferred jobs wait for their due time and blocked ones
for their dependencies again, finished results are kept (for a while, see retention) so a
result of an earlier run can still be looked up.

Durability
----------
The file is a SQLite database in WAL mode with ``synchronous=NORMAL``. A transaction is in the
WAL file once :meth:`JobStore.flush` returns, so it survives a crash of the *process*
(SIGKILL, an exception, ``os._exit``): that is the failure this store is about. It is not
fsynced on every commit, so the last transactions before a crash of the *machine* (power loss,
kernel panic) may be lost; the database is still consistent then (SQLite's guarantee).

Batching: the mutating methods (:meth:`~JobStore.add`, :meth:`~JobStore.lease`,
:meth:`~JobStore.release`, :meth:`~JobStore.requeue`, :meth:`~JobStore.finish`) only buffer.
:meth:`~JobStore.flush` writes the buffer in ONE transaction; the producer calls it once per
turn of its loop (and before it tells a caller a job is accepted). Buffered changes are
coalesced per job, so a job added, leased and finished between two flushes costs one row
(its result) and a job added and leased costs one row plus one lease row. Until a flush,
changes are lost in a crash; after it, they are not.

Memory
------
The store keeps in memory only the changes buffered since the last flush: nothing per live
job, and no payload or result once flushed.

Threads and processes
---------------------
A store is used by one thread at a time (the producer's I/O thread); it is not thread-safe.
It may be opened in one thread and then handed to another (the connection is opened with
``check_same_thread=False`` for that), as long as the two never use it at once.
The file is locked for the life of the store (SQLite ``locking_mode=EXCLUSIVE``): a second
store (a second producer, in this or another process) on the same file gets
:class:`StoreError` rather than both offering the same jobs. The operating system drops the
lock when the process dies, so a restarted producer opens the file at once.

Safety of the file
------------------
(:mod:`freelance_rz.producer.storefile` opens and checks the file.) Opening never empties, recreates or "repairs" an existing file. A file that is not a SQLite
database, is damaged (``PRAGMA quick_check`` fails), belongs to another application, is a
store of a newer schema version, or lacks one of the tables raises :class:`StoreError` naming
the path and the problem, and nothing is written to it. Only a missing or empty (0-byte) file
is initialised as a new store.

File modes
----------
A store holds every job's arguments and every result, so it is private to its owner. A new
store file is created with mode 0600 before SQLite opens it (SQLite gives its ``-wal`` and
``-shm`` files the database file's mode). An existing store, ``-wal`` or ``-shm`` file that
group or others can write is refused with :class:`StoreError` (anyone could then change the
jobs a producer hands out); one that they can read is used, with a warning. Both messages say
``chmod 600 PATH``.

Layout (schema version 2; a version 1 store is upgraded when opened; ``PRAGMA user_version`` holds the version, ``PRAGMA
application_id`` marks the file as a freelance_rz job store)::

    meta(key, value)                        producer_key, next_job_id
    jobs(job_id, payload, attempt, max_attempts, lease_id, retries, due, deps)
                                            live jobs only; lease_id NULL when pending;
                                            retries: task errors retried; due: not
                                            offered before then (unix seconds) or NULL;
                                            deps: msgpack array of the ids of the jobs it
                                            waits for (NULL: none, or they succeeded)
    leases(job_id, lease_id, worker)        every lease issued for a live job
    results(job_id, state, payload, finished_at)
                                            finished jobs, until retention purges them
    schedules(schedule_id, name, spec, created, last, paused, job_id)
                                            periodic jobs: spec is msgpack [call, every_s,
                                            cron, tz, overlap]; last: the slot it last
                                            fired for (unix seconds), written in the same
                                            transaction as the job of that run (job_id)
"""

from __future__ import annotations

import math
import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from ..core.schedule import Schedule
from .storeschedules import ScheduleRows, read_schedules
from ..errors import StoreError
from .storefile import SCHEMA_VERSION, open_store, sqlite_error, transaction

#: states of a finished job, as stored in :attr:`StoredResult.state`.
FINISHED_STATES = frozenset({"done", "failed", "dead", "cancelled"})
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True, slots=True)
class StoredJob:
    """A live job as restored from the store.

    Attributes:
        job_id: the producer's id of the job.
        payload: the job as submitted (the packed call).
        attempt: the attempt its next lease will carry (from 1).
        max_attempts: leases it may lose before it is dead-lettered.
        leases: every lease still on record for it, lease id -> worker routing id (leases
            given back with :meth:`JobStore.release` are forgotten), so a result from a
            lease of an earlier process can still be accepted.
        lease_id: the lease it was held under when the store was last written (one of
            ``leases``, and ``attempt`` is that lease's attempt), or None: it was pending.
        retries: task errors retried so far.
        due: it is not offered before then (unix seconds), or None. Kept as written: a
            due time that has passed (or a leased job's) means nothing.
        deps: ids of the jobs it waits for (its call refers to their results).
    """

    job_id: int
    payload: bytes
    attempt: int
    max_attempts: int
    leases: dict[int, bytes]
    lease_id: int | None = None
    retries: int = 0
    due: float | None = None
    deps: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class StoredResult:
    """A finished job.

    Attributes:
        job_id: the producer's id of the job.
        state: ``"done"``, ``"failed"``, ``"dead"`` or ``"cancelled"``.
        payload: the packed result value (done) or error map (failed), as passed to
            :meth:`JobStore.finish`; ``b""`` for dead and cancelled jobs by convention.
        finished_at: when it finished, unix seconds (``time.time()``).
    """

    job_id: int
    state: str
    payload: bytes
    finished_at: float


@dataclass(frozen=True, slots=True)
class Restored:
    """What :meth:`JobStore.restore` found.

    Attributes:
        pending: the jobs that were not leased, by job id: pending (to offer again, in
            queue order), deferred (``due``) or blocked (``deps``).
        leased: the jobs that were leased, by job id, each with its ``lease_id`` and
            ``attempt``: they are restored leased to the same worker (see
            :meth:`~freelance_rz.core.ledger.Ledger.restore`), not re-queued.
        next_job_id: the first job id never used in this store (purged jobs included).
        producer_key: a random id made when the store was created and kept for its life, so
            workers can recognise a restarted producer of the same store.
        schedules: the periodic jobs kept, with the slot each last fired for.
    """

    pending: list[StoredJob]
    leased: list[StoredJob]
    next_job_id: int
    producer_key: str
    schedules: list[Schedule] = field(default_factory=list)


class JobStore:
    """The durable job table of one producer (see the module docstring).

    Args:
        path: the database file (``str`` or path-like). Created when missing; its directory
            must exist.
        retention_s: :meth:`purge` removes results that finished more than this many
            seconds ago; None keeps them regardless of age.
        retention_count: :meth:`purge` keeps only the newest this many results (by
            ``finished_at``, then job id); None keeps any number.

    Raises:
        StoreError: the file is not a SQLite database, is damaged, is another
            application's database, is a store of a newer :data:`SCHEMA_VERSION`, lacks a
            table, is locked by another store, it or its ``-wal`` or ``-shm`` file is
            writable by group or others (see *File modes* above), or it cannot be opened or
            created (the file is left as it was).
        ValueError: ``retention_s`` < 0 or not a number, ``retention_count`` < 0 or not
            an int.

    Opening an existing store runs SQLite's ``PRAGMA quick_check`` (about 15 ms for a store
    of 100,000 results here; it grows with the file) and reads the ids of the live jobs.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        retention_s: float | None = 7 * 24 * 3600,
        retention_count: int | None = 100_000,
    ) -> None:
        if retention_s is not None and (
            isinstance(retention_s, bool)
            or not isinstance(retention_s, (int, float))
            or not retention_s >= 0
            or math.isinf(retention_s)
        ):
            raise ValueError(
                f"retention_s must be None or a number of seconds >= 0, got {retention_s!r}"
            )
        if retention_count is not None and (
            isinstance(retention_count, bool)
            or not isinstance(retention_count, int)
            or retention_count < 0
        ):
            raise ValueError(
                f"retention_count must be None or an int >= 0, got {retention_count!r}"
            )
        self.path = os.fspath(path)
        self._schedules = ScheduleRows()  # schedule changes since the last flush
        self.retention_s = retention_s
        self.retention_count = retention_count
        self._reset_buffer()
        self._conn: sqlite3.Connection | None = None
        conn = open_store(self.path)
        try:
            self._producer_key, self._next_id = self._load(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._stored_next_id = self._next_id

    def _load(self, conn: sqlite3.Connection) -> tuple[str, int]:
        try:
            meta = dict(conn.execute("SELECT key, value FROM meta"))
            key, next_id = meta.get("producer_key"), meta.get("next_job_id")
            if not isinstance(key, str) or not isinstance(next_id, int):
                raise StoreError(self.path, f"is damaged: bad meta table {meta!r}")
            for table in ("jobs", "results"):
                (top,) = conn.execute(f"SELECT max(job_id) FROM {table}").fetchone()
                if top is not None and top >= next_id:
                    next_id = top + 1
        except sqlite3.Error as exc:
            raise sqlite_error(self.path, "reading it", exc) from exc
        return key, next_id

    # --- lifecycle ---------------------------------------------------------------------------

    def _reset_buffer(self) -> None:
        self._ins: dict[int, tuple[bytes, int]] = {}  # new jobs: job_id -> (payload, max)
        # jobs' columns changed since the last flush: job_id -> {"attempt": a, "lease_id": l, ...}
        self._set: dict[int, dict[str, Any]] = {}
        self._lease_add: dict[tuple[int, int], bytes] = {}  # (job_id, lease_id) -> worker
        self._lease_del: set[tuple[int, int]] = set()
        self._gone: set[int] = set()  # stored jobs that finished
        self._fin: dict[int, StoredResult] = {}  # results to write
        self._dirty = False

    def _require_open(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(self.path, "is closed")
        return self._conn

    def close(self) -> None:
        """Flush, then close the file (releasing its lock). Idempotent.

        Raises:
            StoreError: the final flush failed (the file is closed anyway; the buffered
                changes are lost).
        """
        conn = self._conn
        if conn is None:
            return
        try:
            self.flush()
        finally:
            self._conn = None
            conn.close()

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def restore(self) -> Restored:
        """Rebuild the job table of a (re)started producer. Call once, after opening.

        Nothing is changed: pending, deferred and blocked jobs are returned with their due
        time, retries and dependencies, leased jobs with the lease and attempt they were held
        under (a lease the file has no worker for, which
        a store written by this module never has, is returned held by worker ``b""``: no
        worker has that routing id, so it expires). What happens to a leased job from then on
        is the ledger's to journal (renewed by a heartbeat; expired: re-queued with
        ``attempt + 1`` or dead-lettered on its last attempt).

        Returns:
            :class:`Restored`: the jobs not leased, in order; the leased jobs; the next job
            id; the store's producer key; the schedules. Give them to the ledger merged in
            job id order (a job's dependencies have lower ids).

        Raises:
            StoreError: SQLite failed while reading (e.g. a damaged page).
        """
        conn = self._require_open()
        self.flush()
        try:
            leases: dict[int, dict[int, bytes]] = {}
            for job_id, lease_id, worker in conn.execute(
                "SELECT job_id, lease_id, worker FROM leases"
            ):
                leases.setdefault(job_id, {})[lease_id] = worker
            pending: list[StoredJob] = []
            leased: list[StoredJob] = []
            for job_id, payload, attempt, max_attempts, lease_id, retries, due, deps in conn.execute(
                "SELECT job_id, payload, attempt, max_attempts, lease_id, retries, due, deps"
                " FROM jobs ORDER BY job_id"
            ):
                issued = leases.get(job_id, {})
                if lease_id is None:
                    pending.append(StoredJob(job_id, payload, attempt, max_attempts, issued,
                                             retries=retries, due=due, deps=_ids(deps)))
                else:
                    issued.setdefault(lease_id, b"")
                    leased.append(StoredJob(job_id, payload, attempt, max_attempts, issued, lease_id,
                                            retries=retries))
            schedules = read_schedules(conn, self.path)
        except sqlite3.Error as exc:
            raise sqlite_error(self.path, "restoring jobs", exc) from exc
        return Restored(pending, leased, self._next_id, self._producer_key, schedules)

    def schedule_put(self, schedule: Schedule) -> None:
        """Journal a schedule added or changed (paused, resumed). Buffered.

        Raises:
            StoreError: the store is closed.
        """
        self._require_open()
        self._schedules.put(schedule)
        self._dirty = True

    def schedule_fire(self, schedule_id: int, last: float, job_id: int) -> None:
        """Journal that a schedule fired for the slot ``last`` (unix seconds) as job
        ``job_id`` (a restart knows whether that run is still live: ``overlap=False``).
        Buffered, and written in the same transaction as the job of that run.

        Raises:
            StoreError: the store is closed.
        """
        self._require_open()
        self._schedules.fire(schedule_id, last, job_id)
        self._dirty = True

    def schedule_remove(self, schedule_id: int) -> None:
        """Journal that a schedule was removed. Buffered.

        Raises:
            StoreError: the store is closed.
        """
        self._require_open()
        self._schedules.remove(schedule_id)
        self._dirty = True

    # --- the journal (buffered until flush) ---------------------------------------------------

    def add(self, job_id: int, payload: bytes, max_attempts: int) -> None:
        """Journal a new pending job (attempt 1). Buffered until :meth:`flush`.

        Args:
            job_id: a fresh id (never used in this store: take them from
                :attr:`Restored.next_job_id` on; any order is fine), a 64-bit signed int.
            payload: the job (bytes-like).
            max_attempts: leases it may lose before it is dead-lettered (>= 1).

        Raises:
            ValueError: an argument is out of range.
            TypeError: ``payload`` is not bytes-like.
            StoreError: the store is closed.
        """
        self._require_open()
        _check_int64("job_id", job_id)
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
        if not isinstance(max_attempts, int) or not 1 <= max_attempts <= _INT64_MAX:
            raise ValueError(f"max_attempts must be an int >= 1, got {max_attempts!r}")
        self._ins[job_id] = (bytes(payload), max_attempts)
        self._set[job_id] = {"attempt": 1, "lease_id": None}
        if job_id >= self._next_id:
            self._next_id = job_id + 1
        self._dirty = True

    def lease(self, job_id: int, lease_id: int, worker: bytes, attempt: int) -> None:
        """Journal that a pending job was leased. Buffered until :meth:`flush`.

        Args:
            job_id: the job.
            lease_id: the new lease's id (a 64-bit signed int; the ledger's are 63-bit).
            worker: routing id of the worker holding it.
            attempt: the attempt the lease carries (from 1).

        Raises:
            ValueError: ``lease_id`` or ``attempt`` is out of range.
            StoreError: the store is closed.
        """
        self._require_open()
        _check_int64("lease_id", lease_id)
        _check_attempt(attempt)
        self._columns(job_id, attempt=attempt, lease_id=lease_id)
        self._lease_add[(job_id, lease_id)] = worker

    def release(self, job_id: int, lease_id: int) -> None:
        """Journal that a lease was given back (declined, or the JOB could not be sent): the
        job is pending again with the same attempt and the lease is forgotten. Buffered.

        Raises:
            StoreError: the store is closed.
        """
        self._require_open()
        self._columns(job_id, lease_id=None)
        self._forget(job_id, lease_id)

    def _forget(self, job_id: int, lease_id: int) -> None:
        key = (job_id, lease_id)
        if self._lease_add.pop(key, None) is None:
            self._lease_del.add(key)

    def requeue(self, job_id: int, attempt: int) -> None:
        """Journal that a lease expired: the job is pending again with ``attempt`` (the old
        lease stays on record, so a late result under it is still recognised). Buffered.

        Raises:
            ValueError: ``attempt`` < 1.
            StoreError: the store is closed.
        """
        self._require_open()
        _check_attempt(attempt)
        self._columns(job_id, attempt=attempt, lease_id=None)

    def defer(self, job_id: int, due: float, retries: int, lease_id: int | None = None) -> None:
        """Journal that a job waits until ``due`` (unix seconds): submitted with a delay, or
        retried after a task error (``retries`` so far) reported under ``lease_id``, which is
        forgotten as a given-back lease is (its result was taken: the same result again,
        after a restart too, is stale). Buffered.

        Raises:
            ValueError: ``retries`` < 0 or ``due`` not a finite number.
            StoreError: the store is closed.
        """
        self._require_open()
        _check_due(due, retries)
        self._columns(job_id, lease_id=None, retries=retries, due=float(due))
        if lease_id is not None:
            self._forget(job_id, lease_id)

    def block(self, job_id: int, deps: tuple[int, ...], due: float | None = None) -> None:
        """Journal that a job waits for the jobs ``deps`` (ids, those that succeeded already
        included) to succeed, and then until ``due`` (unix seconds) when given. Buffered.

        Raises:
            ValueError: ``due`` not a finite number.
            StoreError: the store is closed.
        """
        self._require_open()
        if due is None:
            self._columns(job_id, deps=msgpack.packb(list(deps)))
        else:
            _check_due(due, 0)
            self._columns(job_id, deps=msgpack.packb(list(deps)), due=float(due))

    def unblock(self, job_id: int, payload: bytes) -> None:
        """Journal that a job's dependencies succeeded: ``payload`` is its call with their
        results in place. Buffered.

        Raises:
            StoreError: the store is closed.
        """
        self._require_open()
        new = self._ins.get(job_id)  # not written yet: its row is inserted with the payload
        if new is not None:
            self._ins[job_id] = (bytes(payload), new[1])
        self._columns(job_id, deps=None, **({} if new is not None else {"payload": bytes(payload)}))

    def _columns(self, job_id: int, **values: Any) -> None:
        self._set.setdefault(job_id, {}).update(values)
        self._dirty = True

    def finish(self, job_id: int, state: str, payload: bytes, finished_at: float) -> None:
        """Journal that a live job finished: its payload and leases are dropped and its
        result is kept (until :meth:`purge` removes it). Buffered until :meth:`flush`.

        Args:
            job_id: the job.
            state: ``"done"``, ``"failed"``, ``"dead"`` or ``"cancelled"``.
            payload: the packed result value (done) or error map (failed); ``b""`` for dead
                and cancelled jobs.
            finished_at: unix seconds (``time.time()``); retention ages count from it.

        Raises:
            ValueError: ``state`` is not one of the above.
            TypeError: ``payload`` is not bytes-like.
            StoreError: the store is closed.
        """
        self._require_open()
        if state not in FINISHED_STATES:
            raise ValueError(f"state must be one of {sorted(FINISHED_STATES)}, got {state!r}")
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
        self._set.pop(job_id, None)
        if self._ins.pop(job_id, None) is None:
            self._gone.add(job_id)
        self._fin[job_id] = StoredResult(job_id, state, bytes(payload), float(finished_at))
        self._dirty = True

    # --- writing -----------------------------------------------------------------------------

    @staticmethod
    def _write_finished(
        conn: sqlite3.Connection, gone: Iterable[int], results: Iterable[tuple[Any, ...]]
    ) -> None:
        gone_rows = [(job_id,) for job_id in gone]
        if gone_rows:
            conn.executemany("DELETE FROM jobs WHERE job_id = ?", gone_rows)
            conn.executemany("DELETE FROM leases WHERE job_id = ?", gone_rows)
        conn.executemany(
            "INSERT OR REPLACE INTO results (job_id, state, payload, finished_at)"
            " VALUES (?, ?, ?, ?)",
            results,
        )

    def flush(self) -> None:
        """Write every buffered change in one transaction (a no-op when there is none).

        When this returns, the changes survive a crash of the process.

        Raises:
            StoreError: the store is closed, or SQLite failed (disk full, I/O error, a
                damaged page). The transaction is rolled back and the changes stay
                buffered, so a later flush can retry them.
        """
        conn = self._require_open()
        if not self._dirty:
            return
        try:
            with transaction(conn):
                self._write(conn)
        except sqlite3.Error as exc:
            raise sqlite_error(self.path, "writing changes", exc) from exc
        self._stored_next_id = self._next_id
        self._reset_buffer()

    def _write(self, conn: sqlite3.Connection) -> None:
        if self._gone or self._fin:
            self._write_finished(
                conn, self._gone,
                [(r.job_id, r.state, r.payload, r.finished_at) for r in self._fin.values()],
            )
        if self._lease_del:
            conn.executemany("DELETE FROM leases WHERE job_id = ? AND lease_id = ?", self._lease_del)
        if self._ins:
            conn.executemany(
                "INSERT INTO jobs (job_id, payload, attempt, max_attempts, lease_id, retries, due,"
                " deps) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (job_id, payload, cols["attempt"], max_attempts, cols["lease_id"],
                     cols.get("retries", 0), cols.get("due"), cols.get("deps"))
                    for job_id, (payload, max_attempts) in self._ins.items()
                    for cols in (self._set[job_id],)
                ],
            )
        # updates grouped by the columns they set (attempt, lease_id, retries, due)
        updates: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
        for job_id, cols in self._set.items():
            if job_id not in self._ins:
                names = tuple(sorted(cols))
                updates.setdefault(names, []).append((*(cols[n] for n in names), job_id))
        for names, rows in updates.items():
            assigned = ", ".join(f"{name} = ?" for name in names)
            conn.executemany(f"UPDATE jobs SET {assigned} WHERE job_id = ?", rows)
        if self._lease_add:
            conn.executemany(
                "INSERT OR REPLACE INTO leases (job_id, lease_id, worker) VALUES (?, ?, ?)",
                [
                    (job_id, lease_id, worker)
                    for (job_id, lease_id), worker in self._lease_add.items()
                    if job_id not in self._fin
                ],
            )
        self._schedules.write(conn)
        if self._next_id != self._stored_next_id:
            conn.execute("UPDATE meta SET value = ? WHERE key = 'next_job_id'", (self._next_id,))

    # --- queries -----------------------------------------------------------------------------

    def result(self, job_id: int) -> StoredResult | None:
        """The result of a job finished in this run or an earlier one (buffered results
        included), or None when the job is live, unknown or purged.

        Raises:
            StoreError: the store is closed, or SQLite failed.
        """
        conn = self._require_open()
        found = self._fin.get(job_id)
        if found is not None:
            return found
        if not isinstance(job_id, int) or not _INT64_MIN <= job_id <= _INT64_MAX:
            return None
        try:
            row = conn.execute(
                "SELECT job_id, state, payload, finished_at FROM results WHERE job_id = ?",
                (job_id,),
            ).fetchone()
        except sqlite3.Error as exc:
            raise sqlite_error(self.path, "reading a result", exc) from exc
        return None if row is None else StoredResult(*row)

    def is_live(self, job_id: int) -> bool:
        """True when the job is pending or leased (buffered changes included).

        Raises:
            StoreError: the store is closed, or SQLite failed.
        """
        conn = self._require_open()
        if job_id in self._fin:
            return False
        if job_id in self._ins:
            return True
        if not isinstance(job_id, int) or not _INT64_MIN <= job_id <= _INT64_MAX:
            return False
        try:
            row = conn.execute("SELECT 1 FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        except sqlite3.Error as exc:
            raise sqlite_error(self.path, "reading a job", exc) from exc
        return row is not None

    def purge(self, now: float) -> int:
        """Apply retention: flush, then remove the results whose age (``now - finished_at``)
        exceeds ``retention_s``, then all but the newest ``retention_count`` results.

        Args:
            now: unix seconds (``time.time()``), the clock of ``finished_at``.

        Returns:
            How many results were removed.

        Raises:
            StoreError: the store is closed, or SQLite failed.
        """
        conn = self._require_open()
        self.flush()
        if self.retention_s is None and self.retention_count is None:
            return 0
        removed = 0
        try:
            with transaction(conn):
                if self.retention_s is not None:
                    removed += conn.execute(
                        "DELETE FROM results WHERE finished_at < ?", (now - self.retention_s,)
                    ).rowcount
                if self.retention_count is not None:
                    (count,) = conn.execute("SELECT count(*) FROM results").fetchone()
                    if count > self.retention_count:
                        removed += conn.execute(
                            "DELETE FROM results WHERE job_id IN (SELECT job_id FROM results"
                            " ORDER BY finished_at DESC, job_id DESC LIMIT -1 OFFSET ?)",
                            (self.retention_count,),
                        ).rowcount
        except sqlite3.Error as exc:
            raise sqlite_error(self.path, "purging results", exc) from exc
        return removed


def _ids(deps: bytes | None) -> tuple[int, ...]:
    """The job ids of a ``deps`` column (empty when NULL or not an array of ints)."""
    if deps is None:
        return ()
    try:
        ids = msgpack.unpackb(deps)
    except Exception:
        return ()
    return tuple(i for i in ids if type(i) is int) if type(ids) is list else ()


def _check_due(due: float, retries: int) -> None:
    if not isinstance(retries, int) or not 0 <= retries <= _INT64_MAX:
        raise ValueError(f"retries must be an int >= 0, got {retries!r}")
    if isinstance(due, bool) or not isinstance(due, (int, float)) or not math.isfinite(due):
        raise ValueError(f"due must be a finite number of seconds, got {due!r}")


def _check_int64(name: str, value: int) -> None:
    if not isinstance(value, int) or not _INT64_MIN <= value <= _INT64_MAX:
        raise ValueError(f"{name} must be a 64-bit int, got {value!r}")


def _check_attempt(attempt: int) -> None:
    if not isinstance(attempt, int) or not 1 <= attempt <= _INT64_MAX:
        raise ValueError(f"attempt must be an int >= 1, got {attempt!r}")


__all__ = ["SCHEMA_VERSION", "JobStore", "Restored", "StoreError", "StoredJob", "StoredResult"]

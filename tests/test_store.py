"""Tests of the durable job store (sqlite3 on tmp_path; no sockets)."""

from __future__ import annotations

import copy
import gc
import os
import pickle
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from freelance_rz.producer import storefile as store_module
from freelance_rz.errors import FreelanceError
from freelance_rz.producer.store import (
    SCHEMA_VERSION,
    JobStore,
    Restored,
    StoredJob,
    StoredResult,
    StoreError,
)

W1, W2 = b"\x00worker-1", b"\x00worker-2"
# clock values for the model: few distinct ones, so ties and exact retention boundaries occur
TIMES = st.sampled_from([0.0, 49.5, 50.0, 100.0, 150.5])


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "jobs.sqlite"


def reopen(path: Path, **kwargs) -> tuple[JobStore, Restored]:
    store = JobStore(path, **kwargs)
    return store, store.restore()


def snapshot(path: Path) -> dict[str, bytes]:
    """The bytes of the store file and its companions (-wal, -shm, -journal) that exist."""
    found = {}
    for suffix in ("", "-wal", "-shm", "-journal"):
        p = Path(f"{path}{suffix}")
        if p.exists():
            found[suffix] = p.read_bytes()
    return found


# --- opening a new store --------------------------------------------------------------------


def test_new_store_is_empty_and_uses_wal(path):
    store, restored = reopen(path)
    assert restored.pending == [] and restored.leased == []
    assert restored.next_job_id == 1
    assert len(restored.producer_key) == 16
    int(restored.producer_key, 16)
    assert not store.is_live(1) and store.result(1) is None
    conn = store._conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    store.close()
    store.close()  # idempotent


def test_schedules_keep_their_state_and_latest_run(path):
    """A schedule added, fired (with its run's job) and paused comes back as it was: its
    slot, its latest job (``overlap=False`` after a restart) and its pause, in their columns."""
    from freelance_rz.core.schedule import Schedule

    store, _ = reopen(path)
    tick = Schedule(1, "tick", b"call", every_s=0.3, created=100.0)
    nightly = Schedule(2, "nightly", b"other", cron="0 3 * * *", tz="Europe/Berlin", overlap=False,
                       created=100.0)
    store.schedule_put(tick)
    store.schedule_put(nightly)
    store.schedule_fire(1, 100.3, 7)  # in the same flush as the put
    store.flush()
    nightly.paused = True
    store.schedule_put(nightly)
    store.schedule_fire(2, 3600.0, 9)  # the put and a fire of one schedule in one flush
    store.flush()
    store.schedule_fire(1, 100.6, 8)  # a fire alone
    store.flush()
    store.close()
    store, restored = reopen(path)
    kept = {s.name: s for s in restored.schedules}
    assert (kept["tick"].last, kept["tick"].job_id, kept["tick"].paused) == (100.6, 8, False)
    assert kept["tick"].every_s == 0.3 and kept["tick"].call == b"call"
    assert (kept["nightly"].last, kept["nightly"].job_id, kept["nightly"].paused) == (3600.0, 9, True)
    assert (kept["nightly"].cron, kept["nightly"].tz, kept["nightly"].overlap) == ("0 3 * * *", "Europe/Berlin", False)
    store.schedule_remove(1)
    store.flush()
    store.close()
    store, restored = reopen(path)
    assert [s.name for s in restored.schedules] == ["nightly"]
    store.close()


def test_producer_key_is_stable_per_store_and_differs_between_stores(tmp_path):
    with JobStore(tmp_path / "a") as a:
        key_a = a.restore().producer_key
    with JobStore(tmp_path / "a") as a, JobStore(tmp_path / "b") as b:
        assert a.restore().producer_key == key_a
        assert b.restore().producer_key != key_a


def test_an_empty_file_becomes_a_store(path):
    path.write_bytes(b"")
    with JobStore(path) as store:
        assert store.restore().next_job_id == 1


def test_bad_arguments(path):
    for bad in (-1, float("nan"), float("inf"), "7", True):
        with pytest.raises(ValueError, match="retention_s"):
            JobStore(path, retention_s=bad)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="retention_count"):
            JobStore(path, retention_count=bad)
    assert not path.exists()  # refused before touching the file
    with pytest.raises(StoreError, match="cannot be opened|unable to open"):
        JobStore(path.parent / "no-such-dir" / "jobs.sqlite")
    with pytest.raises(StoreError, match="directory"):
        JobStore(path.parent)


def test_a_second_store_on_the_same_file_is_refused(path, monkeypatch):
    monkeypatch.setattr(store_module, "LOCK_TIMEOUT_S", 0.05)
    with JobStore(path):
        with pytest.raises(StoreError, match="in use"):
            JobStore(path)
    JobStore(path).close()  # the lock goes with the first store


# --- every operation survives close / reopen ----------------------------------------------


def test_round_trip_of_every_operation(path):
    with JobStore(path) as store:
        store.restore()
        for job_id in range(1, 8):
            store.add(job_id, b"job%d" % job_id, 3)
        store.flush()
        store.lease(1, 101, W1, 1)  # stays leased
        store.lease(2, 102, W1, 1)
        store.lease(3, 103, W2, 1)
        store.lease(4, 104, W1, 1)
        store.lease(6, 106, W2, 1)
        store.add(8, b"job8", 2)
        store.lease(8, 108, W2, 1)
        store.release(8, 108)  # given back in the same batch as leased
        store.flush()
        store.release(2, 102)  # declined: pending, same attempt, lease forgotten
        store.requeue(3, 2)  # expired: pending, attempt 2, lease 103 remembered
        store.finish(4, "done", b"value", 1000.5)
        store.finish(5, "failed", b"error-map", 1001.0)
        store.finish(6, "dead", b"", 1002.0)
        store.finish(7, "cancelled", b"", 1003.0)
    store, restored = reopen(path)
    assert restored.pending == [
        StoredJob(2, b"job2", 1, 3, {}),
        StoredJob(3, b"job3", 2, 3, {103: W2}),
        StoredJob(8, b"job8", 1, 2, {}),
    ]
    assert restored.leased == [StoredJob(1, b"job1", 1, 3, {101: W1}, 101)]  # as it was
    assert restored.next_job_id == 9
    assert store.result(4) == StoredResult(4, "done", b"value", 1000.5)
    assert store.result(5) == StoredResult(5, "failed", b"error-map", 1001.0)
    assert store.result(6) == StoredResult(6, "dead", b"", 1002.0)
    assert store.result(7) == StoredResult(7, "cancelled", b"", 1003.0)
    assert [store.is_live(j) for j in range(1, 9)] == [True] * 3 + [False] * 4 + [True]
    assert store._conn.execute("SELECT count(*) FROM leases").fetchone() == (2,)  # 101, 103
    assert store.result(1) is None and store.result(99) is None
    store.close()


def test_crash_after_flush_keeps_flushed_and_loses_unflushed(path):
    store = JobStore(path)
    store.restore()
    store.add(1, b"a", 3)
    store.add(2, b"b", 3)
    store.lease(2, 22, W1, 1)
    store.flush()
    store.add(3, b"c", 3)  # never flushed
    store.finish(1, "done", b"r", 5.0)  # never flushed
    store.release(2, 22)  # never flushed
    del store  # dropped without close(): the buffer is not written
    gc.collect()
    store, restored = reopen(path)
    assert [(j.job_id, j.attempt, j.leases) for j in restored.pending] == [(1, 1, {})]
    assert restored.leased == [StoredJob(2, b"b", 1, 3, {22: W1}, 22)]
    assert restored.next_job_id == 3
    assert store.result(1) is None and not store.is_live(3)
    store.close()


def test_crash_image_taken_while_the_store_is_open(path, tmp_path):
    """Copy the files as they are on disk while the store is open (what a SIGKILL leaves,
    WAL not checkpointed) and open the copy."""
    store = JobStore(path)
    store.restore()
    for job_id in range(1, 101):
        store.add(job_id, b"x" * 100, 2)
    store.flush()
    for job_id in range(1, 51):
        store.lease(job_id, 1000 + job_id, W1, 1)
    for job_id in range(1, 21):
        store.finish(job_id, "done", b"ok", 7.0)
    store.flush()
    store.add(101, b"lost", 2)
    store.finish(21, "done", b"lost", 8.0)
    image = tmp_path / "image.sqlite"
    for suffix, data in snapshot(path).items():
        Path(f"{image}{suffix}").write_bytes(data)
    assert Path(f"{image}-wal").exists()  # the committed data is (at least partly) in the WAL
    store.close()
    copy_, restored = reopen(image)
    assert [j.job_id for j in restored.pending] == list(range(51, 101))
    assert [(j.job_id, j.attempt, j.lease_id) for j in restored.leased] == [
        (job_id, 1, 1000 + job_id) for job_id in range(21, 51)
    ]
    assert copy_.result(20) == StoredResult(20, "done", b"ok", 7.0)
    assert copy_.result(21) is None and not copy_.is_live(101)
    assert restored.next_job_id == 101
    copy_.close()


def test_sigkill_of_the_process(path):
    script = textwrap.dedent(
        f"""
        import os, signal
        from freelance_rz.producer.store import JobStore
        store = JobStore({str(path)!r})
        store.restore()
        store.add(1, b"one", 3)
        store.add(2, b"two", 3)
        store.lease(1, 11, b"w", 1)
        store.flush()
        store.finish(2, "done", b"unflushed", 1.0)
        store.add(3, b"three", 3)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == -9, proc.stderr.decode()
    store, restored = reopen(path)
    assert [(j.job_id, j.attempt) for j in restored.pending] == [(2, 1)]
    assert restored.leased == [StoredJob(1, b"one", 1, 3, {11: b"w"}, 11)]
    assert store.result(2) is None and restored.next_job_id == 3
    store.close()


# --- restore semantics ----------------------------------------------------------------------


def test_restore_returns_leased_jobs_under_their_lease_and_changes_nothing(path):
    """Leased jobs come back with their lease, worker and attempt (the ledger keeps them
    leased for one lease period); nothing is re-queued or dead-lettered by the restore
    itself, so restarting twice changes nothing either."""
    with JobStore(path) as store:
        store.restore()
        store.add(1, b"p1", 3)
        store.add(2, b"l2", 3)
        store.add(3, b"l3-last", 2)
        store.add(4, b"p4", 3)
        store.add(5, b"l5-only", 1)
        store.lease(2, 20, W1, 1)
        store.lease(3, 30, W1, 1)
        store.requeue(3, 2)
        store.lease(3, 31, W2, 2)  # on its last attempt
        store.lease(5, 50, W2, 1)  # on its only attempt
    expected_leased = [
        StoredJob(2, b"l2", 1, 3, {20: W1}, 20),
        StoredJob(3, b"l3-last", 2, 2, {30: W1, 31: W2}, 31),
        StoredJob(5, b"l5-only", 1, 1, {50: W2}, 50),
    ]
    for _ in range(2):
        store, restored = reopen(path)
        assert [(j.job_id, j.attempt, j.lease_id) for j in restored.pending] == [
            (1, 1, None), (4, 1, None),
        ]
        assert restored.leased == expected_leased
        assert all(store.is_live(job_id) for job_id in range(1, 6))
        assert all(store.result(job_id) is None for job_id in range(1, 6))
        store.close()
    # what the ledger journals from then on: job 2 expired (re-queued), job 3 dead-lettered
    store, _ = reopen(path)
    store.requeue(2, 2)
    store.finish(3, "dead", b"", 5.0)
    store.close()
    store, again = reopen(path)
    assert [(j.job_id, j.attempt, j.leases) for j in again.pending] == [
        (1, 1, {}), (2, 2, {20: W1}), (4, 1, {}),
    ]
    assert again.leased == [expected_leased[2]]
    assert store.result(3) == StoredResult(3, "dead", b"", 5.0)
    store.close()


def test_a_lease_without_its_worker_row_is_restored_held_by_nobody(path):
    """A leases row missing (not written by this module; a hand-edited file): the job still
    comes back leased, held by routing id b"" (no worker has it), so it expires."""
    with JobStore(path) as store:
        store.restore()
        store.add(1, b"p1", 3)
        store.lease(1, 10, W1, 1)
    with JobStore(path) as store:
        store._conn.execute("DELETE FROM leases")
    store, restored = reopen(path)
    assert restored.leased == [StoredJob(1, b"p1", 1, 3, {10: b""}, 10)]
    store.close()


def test_next_job_id_counts_purged_and_out_of_order_ids(path):
    with JobStore(path, retention_count=0) as store:
        store.restore()
        store.add(7, b"", 1)
        store.add(3, b"", 1)
        store.finish(7, "done", b"", 1.0)
        store.finish(3, "done", b"", 1.0)
        assert store.purge(now=2.0) == 2
    store, restored = reopen(path)
    assert restored.next_job_id == 8
    assert store.result(7) is None
    store.close()


def test_results_are_visible_before_flush_and_buffers_coalesce(path):
    with JobStore(path) as store:
        store.restore()
        store.add(1, b"a", 1)
        store.lease(1, 5, W1, 1)
        store.finish(1, "done", b"r", 3.0)
        assert store.result(1) == StoredResult(1, "done", b"r", 3.0)
        assert not store.is_live(1)
        store.flush()
        assert store._conn.execute("SELECT count(*) FROM jobs").fetchone() == (0,)
        assert store._conn.execute("SELECT count(*) FROM leases").fetchone() == (0,)
        store.flush()  # nothing buffered: no-op
    store, _ = reopen(path)
    assert store.result(1) == StoredResult(1, "done", b"r", 3.0)
    store.close()


def test_misuse_raises_value_error(path):
    """Arguments out of range are refused. (Which transition may follow which is the
    ledger's rule, tested in tests/test_ledger.py: the store journals what it is told.)"""
    with JobStore(path) as store:
        store.add(1, b"a", 2)
        with pytest.raises(ValueError, match="max_attempts"):
            store.add(2, b"a", 0)
        with pytest.raises(ValueError, match="job_id"):
            store.add(2**64, b"a", 1)
        with pytest.raises(TypeError):
            store.add(2, "text", 1)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="lease_id"):
            store.lease(1, 2**64, W1, 1)
        with pytest.raises(ValueError, match="attempt"):
            store.lease(1, 10, W1, 0)
        with pytest.raises(ValueError, match="attempt"):
            store.requeue(1, 0)
        store.lease(1, 10, W1, 1)
        with pytest.raises(ValueError, match="state"):
            store.finish(1, "exploded", b"", 1.0)
    for call in (
        lambda: store.add(2, b"", 1),
        lambda: store.lease(1, 12, W1, 1),
        lambda: store.finish(1, "done", b"", 1.0),
        store.flush,
        store.restore,
        lambda: store.result(1),
        lambda: store.purge(0.0),
    ):
        with pytest.raises(StoreError, match="closed"):
            call()


def test_a_failed_flush_keeps_the_buffer_for_a_retry(path):
    class Failing:
        def __init__(self, conn):
            self.conn = conn

        def __getattr__(self, name):
            return getattr(self.conn, name)

        def executemany(self, *args):
            raise sqlite3.OperationalError("disk I/O error")

    store = JobStore(path)
    store.add(1, b"a", 1)
    real = store._conn
    store._conn = Failing(real)
    with pytest.raises(StoreError, match="disk I/O error") as info:
        store.flush()
    assert str(path) in str(info.value) and isinstance(info.value, FreelanceError)
    assert not real.in_transaction
    store._conn = real
    store.flush()
    store.close()
    store, restored = reopen(path)
    assert [j.job_id for j in restored.pending] == [1]
    store.close()


# --- files that are not (usable) stores ----------------------------------------------------


def test_newer_schema_version_is_refused(path):
    JobStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    before = snapshot(path)
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}") as info:
        JobStore(path)
    assert "upgrade" in str(info.value) and str(path) in str(info.value)
    assert info.value.path == str(path)
    assert str(pickle.loads(pickle.dumps(info.value))) == str(info.value)
    assert snapshot(path) == before


@pytest.mark.parametrize("kind", ["random", "random-after-sqlite-header", "short"])
def test_garbage_file_is_refused_and_left_alone(path, kind):
    data = os.urandom(8192)
    if kind == "random-after-sqlite-header":
        data = b"SQLite format 3\x00" + data
    elif kind == "short":
        data = b"SQLite format 3\x00"
    path.write_bytes(data)
    with pytest.raises(StoreError, match="not a SQLite database|damaged") as info:
        JobStore(path)
    assert str(path) in str(info.value)
    assert snapshot(path) == {"": data}


@pytest.mark.parametrize("keep", [0.5, 0.2])
def test_truncated_store_is_refused_and_left_alone(path, keep):
    with JobStore(path) as store:
        for job_id in range(1, 301):
            store.add(job_id, os.urandom(300), 3)
        for job_id in range(1, 151):
            store.finish(job_id, "done", os.urandom(200), float(job_id))
    data = path.read_bytes()
    cut = data[: int(len(data) * keep) // 4096 * 4096]  # whole pages: only the tail is gone
    path.write_bytes(cut)
    with pytest.raises(StoreError, match="damaged") as info:
        JobStore(path)
    assert str(path) in str(info.value)
    assert snapshot(path) == {"": cut}


def test_another_applications_database_is_refused(path):
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO users VALUES (1, 'ada')")
    conn.close()
    before = snapshot(path)
    with pytest.raises(StoreError, match="another application.*users"):
        JobStore(path)
    assert snapshot(path) == before


def test_store_with_a_missing_table_is_refused(path):
    JobStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE leases")
    conn.close()
    before = snapshot(path)
    with pytest.raises(StoreError, match="missing table.*leases"):
        JobStore(path)
    assert snapshot(path) == before


# --- retention ------------------------------------------------------------------------------


def finish_all(store: JobStore, finished_at: dict[int, float]) -> None:
    for job_id, at in finished_at.items():
        store.add(job_id, b"p", 1)
        store.finish(job_id, "done", b"r%d" % job_id, at)


def test_retention_by_age(path):
    with JobStore(path, retention_s=150.0, retention_count=None) as store:
        finish_all(store, {1: 100.0, 2: 200.0, 3: 250.0, 4: 300.0})
        assert store.purge(now=400.0) == 2  # ages 300 and 200 > 150; 150 is kept
        assert [store.result(j) is not None for j in (1, 2, 3, 4)] == [False, False, True, True]
        assert store.purge(now=400.0) == 0
    store, _ = reopen(path)
    assert store.result(1) is None and store.result(3) is not None
    store.close()


def test_retention_by_count_keeps_the_newest(path):
    def kept() -> set[int]:
        return {j for j in range(1, 9) if store.result(j) is not None}

    with JobStore(path, retention_s=None, retention_count=3) as store:
        finish_all(store, {1: 50.0, 2: 10.0, 3: 40.0, 4: 40.0, 5: 30.0, 6: 20.0})
        assert store.purge(now=0.0) == 3
        assert kept() == {1, 3, 4}
    with JobStore(path, retention_s=None, retention_count=2) as store:
        assert store.purge(now=0.0) == 1  # a tie on finished_at: the higher job id is newer
        assert kept() == {1, 4}
        store.add(7, b"p", 1)
        store.finish(7, "failed", b"e", 45.0)  # buffered: purge flushes first
        assert store.purge(now=0.0) == 1
        assert kept() == {1, 7}
        store.add(8, b"p", 1)
        store.finish(8, "done", b"old", 5.0)
        assert store.purge(now=0.0) == 1
        assert kept() == {1, 7}
    store, _ = reopen(path)
    assert kept() == {1, 7}
    store.close()


def test_no_retention_keeps_everything(path):
    with JobStore(path, retention_s=None, retention_count=None) as store:
        finish_all(store, {1: 0.0, 2: 1.0})
        assert store.purge(now=1e12) == 0
        assert store.result(1) is not None


def test_default_retention_is_a_week_and_100k(path):
    with JobStore(path) as store:
        assert store.retention_s == 7 * 24 * 3600 and store.retention_count == 100_000
        finish_all(store, {1: 0.0, 2: 1000.0})
        assert store.purge(now=7 * 24 * 3600 + 500.0) == 1


# --- a model ----------------------------------------------------------------------------------


class Model:
    """What the store should hold: live jobs, results, the id counter."""

    def __init__(self) -> None:
        self.live: dict[int, dict] = {}  # job_id -> payload, attempt, max, lease, leases
        self.results: dict[int, tuple[str, bytes, float]] = {}
        self.next_id = 1


class StoreMachine(RuleBasedStateMachine):
    retention = st.sampled_from([(None, None), (100.0, None), (None, 2), (50.0, 3), (None, 0)])

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="store-model-")
        self.path = os.path.join(self.dir, "jobs.sqlite")
        self.store: JobStore | None = None
        self.model = Model()
        self.durable = copy.deepcopy(self.model)
        self.fresh = 1
        self.used: set[int] = set()

    @initialize(retention=retention)
    def open_store(self, retention):
        self.retention_s, self.retention_count = retention
        self.store = JobStore(
            self.path, retention_s=self.retention_s, retention_count=self.retention_count
        )
        self.key = self.store.restore().producer_key

    def teardown(self) -> None:
        if self.store is not None:
            self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def jobs(self, leased: bool | None) -> list[int]:
        return sorted(
            j for j, job in self.model.live.items()
            if leased is None or (job["lease"] is not None) == leased
        )

    def maybe_flush(self, then_flush: bool) -> None:
        if then_flush:
            self.flush()

    @rule(
        payload=st.binary(max_size=20), max_attempts=st.integers(1, 3), gap=st.integers(0, 2),
        then_flush=st.booleans(),
    )
    def add(self, payload, max_attempts, gap, then_flush):
        job_id = self.fresh + gap
        self.fresh = job_id + 1
        self.store.add(job_id, payload, max_attempts)
        self.model.live[job_id] = dict(
            payload=payload, attempt=1, max=max_attempts, lease=None, leases={}
        )
        self.model.next_id = max(self.model.next_id, job_id + 1)
        self.used.add(job_id)
        self.maybe_flush(then_flush)

    @precondition(lambda self: self.jobs(leased=False))
    @rule(data=st.data(), worker=st.sampled_from([W1, W2]), then_flush=st.booleans())
    def lease(self, data, worker, then_flush):
        job_id = data.draw(st.sampled_from(self.jobs(leased=False)))
        job = self.model.live[job_id]
        lease_id = data.draw(st.integers(0, 2**63 - 1).filter(lambda x: x not in job["leases"]))
        self.store.lease(job_id, lease_id, worker, job["attempt"])
        job["lease"] = lease_id
        job["leases"][lease_id] = worker
        self.maybe_flush(then_flush)

    @precondition(lambda self: self.jobs(leased=True))
    @rule(data=st.data(), then_flush=st.booleans())
    def release(self, data, then_flush):
        job_id = data.draw(st.sampled_from(self.jobs(leased=True)))
        job = self.model.live[job_id]
        self.store.release(job_id, job["lease"])
        del job["leases"][job["lease"]]
        job["lease"] = None
        self.maybe_flush(then_flush)

    @precondition(lambda self: self.jobs(leased=True))
    @rule(data=st.data(), then_flush=st.booleans())
    def requeue(self, data, then_flush):
        job_id = data.draw(st.sampled_from(self.jobs(leased=True)))
        job = self.model.live[job_id]
        job["attempt"] += 1
        job["lease"] = None
        self.store.requeue(job_id, job["attempt"])
        self.maybe_flush(then_flush)

    @precondition(lambda self: self.model.live)
    @rule(
        data=st.data(),
        state=st.sampled_from(["done", "failed", "dead", "cancelled"]),
        payload=st.binary(max_size=20),
        at=TIMES,
        then_flush=st.booleans(),
    )
    def finish(self, data, state, payload, at, then_flush):
        job_id = data.draw(st.sampled_from(self.jobs(leased=None)))
        self.store.finish(job_id, state, payload, at)
        del self.model.live[job_id]
        self.model.results[job_id] = (state, payload, at)
        self.maybe_flush(then_flush)

    @rule()
    def flush(self):
        self.store.flush()
        self.durable = copy.deepcopy(self.model)

    @rule(now=TIMES)
    def purge(self, now):
        removed = self.store.purge(now)
        results = self.model.results
        before = len(results)
        if self.retention_s is not None:
            for job_id in [j for j, r in results.items() if r[2] < now - self.retention_s]:
                del results[job_id]
        if self.retention_count is not None:
            newest = sorted(results, key=lambda j: (results[j][2], j), reverse=True)
            for job_id in newest[self.retention_count:]:
                del results[job_id]
        assert removed == before - len(results)
        self.durable = copy.deepcopy(self.model)

    @rule(clean=st.booleans(), retention=retention)
    def restart(self, clean, retention):
        if clean:
            self.store.close()  # flushes
        else:  # crash: the buffer is lost. Closing the connection under the store is what
            # dropping it does (a sqlite3.Connection sits in a reference cycle, so dropping
            # needs a gc.collect(), which is slow here: test_crash_after_flush does that)
            self.store._conn.close()
            del self.store
            self.model = copy.deepcopy(self.durable)
        self.retention_s, self.retention_count = retention
        self.store = JobStore(
            self.path, retention_s=self.retention_s, retention_count=self.retention_count
        )
        restored = self.store.restore()
        model = self.model
        pending = [j for j in sorted(model.live) if model.live[j]["lease"] is None]
        leased = [j for j in sorted(model.live) if model.live[j]["lease"] is not None]
        assert restored.producer_key == self.key
        assert restored.next_job_id == model.next_id

        def stored(j: int) -> StoredJob:
            job = model.live[j]
            return StoredJob(j, job["payload"], job["attempt"], job["max"], job["leases"],
                             job["lease"])

        assert restored.pending == [stored(j) for j in pending]
        assert restored.leased == [stored(j) for j in leased]  # the restore changes nothing
        self.durable = copy.deepcopy(model)
        self.fresh = restored.next_job_id  # as the producer would: lost ids may come again

    @invariant()
    def views_agree(self):
        for job_id in self.used:
            assert self.store.is_live(job_id) == (job_id in self.model.live)
            expected = self.model.results.get(job_id)
            found = self.store.result(job_id)
            got = None if found is None else (found.state, found.payload, found.finished_at)
            assert got == expected


TestStoreModel = StoreMachine.TestCase
TestStoreModel.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


# --- schema version 2: deferred jobs (issue 15) ------------------------------------------------

V1_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID",
    "CREATE TABLE jobs (job_id INTEGER PRIMARY KEY, payload BLOB NOT NULL,"
    " attempt INTEGER NOT NULL, max_attempts INTEGER NOT NULL, lease_id INTEGER)",
    "CREATE TABLE leases (job_id INTEGER NOT NULL, lease_id INTEGER NOT NULL,"
    " worker BLOB NOT NULL, PRIMARY KEY (job_id, lease_id)) WITHOUT ROWID",
    "CREATE TABLE results (job_id INTEGER PRIMARY KEY, state TEXT NOT NULL,"
    " payload BLOB NOT NULL, finished_at REAL NOT NULL)",
    "CREATE INDEX results_by_finished_at ON results (finished_at)",
)


def test_deferred_jobs_keep_their_due_time_and_retries(path):
    with JobStore(path) as store:
        store.add(1, b"later", 3)
        store.defer(1, 2_000_000_000.5, 0)  # submitted with a delay
        store.add(2, b"retried", 3)
        store.flush()
        store.lease(2, 77, b"w", 1)
        store.flush()
        store.defer(2, 2_000_000_010.0, 2, 77)  # its task failed, retried twice so far
        store.add(3, b"now", 3)
    with JobStore(path) as store:
        jobs = {job.job_id: job for job in store.restore().pending}
    assert (jobs[1].due, jobs[1].retries) == (2_000_000_000.5, 0)
    assert (jobs[2].due, jobs[2].retries, jobs[2].attempt) == (2_000_000_010.0, 2, 1)
    assert jobs[2].leases == {}  # its result was taken: the same result again is stale
    assert (jobs[3].due, jobs[3].retries) == (None, 0)
    with JobStore(path) as store, pytest.raises(ValueError):
        store.defer(1, float("nan"), 0)


def test_a_version_1_store_is_upgraded_and_keeps_its_jobs(path):
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in V1_SCHEMA:
        conn.execute(statement)
    conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                     [("producer_key", "abcd"), ("next_job_id", 6)])
    conn.execute("INSERT INTO jobs VALUES (5, x'00', 2, 3, NULL)")
    conn.execute("INSERT INTO results VALUES (4, 'done', x'01', 1.0)")
    conn.execute("PRAGMA application_id=1179802161")  # "FRZ1"
    conn.execute("PRAGMA user_version=1")
    conn.close()
    with JobStore(path, retention_s=None) as store:
        restored = store.restore()
        assert [(j.job_id, j.attempt, j.retries, j.due) for j in restored.pending] == [(5, 2, 0, None)]
        assert (restored.producer_key, restored.next_job_id) == ("abcd", 6)
        assert store.result(4).payload == b"\x01"
        store.defer(5, 2_000_000_000.0, 1)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    assert conn.execute("SELECT retries, due FROM jobs").fetchall() == [(1, 2_000_000_000.0)]
    conn.close()


def test_a_blocked_job_keeps_its_dependencies_and_due_time(path):
    with JobStore(path) as store:
        store.add(1, b"waits", 3)
        store.block(1, (7, 8), 2_000_000_000.5)  # 7 may have succeeded already: kept too
        store.add(2, b"waits too", 3)
        store.block(2, (7,))
    with JobStore(path) as store:
        jobs = {job.job_id: job for job in store.restore().pending}
        assert (jobs[1].deps, jobs[1].due) == ((7, 8), 2_000_000_000.5)
        assert (jobs[2].deps, jobs[2].due) == ((7,), None)
        with pytest.raises(ValueError):
            store.block(2, (7,), float("inf"))

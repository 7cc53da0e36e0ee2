"""Durable producer (store=...): SIGKILL the producer process mid-run, restart it on the same
store, and every accepted job completes exactly once from the caller's view."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import GROUP, TESTS_DIR
from freelance_rz import Producer, StoreError

pytestmark = pytest.mark.timeout(120)


class DurableProducer:
    def __init__(self, tmp_path, name: str, *args: str, env: dict[str, str] | None = None) -> None:
        self.log_path = tmp_path / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.started_at = time.time()
        self.proc = subprocess.Popen(
            [sys.executable, "rzdurable.py", str(tmp_path / "jobs.sqlite"), GROUP, *args],
            cwd=TESTS_DIR, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
            env=None if env is None else dict(os.environ, **env),
        )

    def events(self, kind: str) -> list[tuple[int, int | None, float]]:
        """(job id, attempt, wall-clock time) of each "event KIND ..." line (attempt None for
        the events that carry none, e.g. deferred)."""
        return [
            (int(job), None if attempt == "None" else int(attempt), float(at))
            for _, k, job, attempt, at in (line.split() for line in self.lines()
                                           if line.startswith("event "))
            if k == kind
        ]

    def lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()

    def done(self) -> dict[int, dict]:
        return {
            int(line.split(" ", 2)[1]): json.loads(line.split(" ", 2)[2])
            for line in self.lines() if line.startswith("done ")
        }

    def wait_for(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"{what}; log:\n" + "\n".join(self.lines())
            assert self.proc.poll() is None, "exited early; log:\n" + "\n".join(self.lines())
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()


@pytest.fixture
def durable(tmp_path):
    made: list[DurableProducer] = []

    def make(name: str, *args: str, env: dict[str, str] | None = None) -> DurableProducer:
        made.append(DurableProducer(tmp_path, name, *args, env=env))
        return made[-1]

    yield make
    for producer in made:
        producer.kill()


def test_sigkill_and_restart_every_job_completes_once(durable, start_worker):
    start_worker("w1")
    start_worker("w2")
    first = durable("first", "submit", "40", "0.15")
    first.wait_for(lambda: len(first.done()) >= 8, 30, "no job finished")
    first.kill()  # jobs pending, leased and finished
    finished_before = first.done()
    second = durable("second", "resume", "40")
    second.wait_for(lambda: "all done" in second.lines(), 60, "resumed jobs did not finish")
    results = second.done()
    assert sorted(results) == list(range(1, 41))  # every accepted job, exactly once
    assert all("error" not in result for result in results.values()), results
    for job_id, result in finished_before.items():  # finished results were kept, not re-run
        assert results[job_id] == result


def test_result_of_a_job_running_across_the_restart_is_delivered_once(durable, start_worker):
    start_worker("w1", "--slots", "1")
    first = durable("first", "submit", "1", "3.0")
    first.wait_for(lambda: any(line.startswith("endpoint") for line in first.lines()), 20, "no start")
    time.sleep(1.5)  # the worker is running the job
    first.kill()
    killed_at = time.time()
    second = durable("second", "resume", "1")
    second.wait_for(lambda: "all done" in second.lines(), 30, "the result never arrived")
    result = second.done()[1]
    assert result["worker"] == "w1"
    assert result["started"] < killed_at  # the run that began before the kill, not a re-run


def _runs(path) -> list[str]:
    """The executions of rztasks.mark recorded in ``path``: one worker name each."""
    return path.read_text().split("\n")[:-1] if path.exists() else []


def test_a_running_job_survives_a_producer_restart_and_runs_once(durable, start_worker, tmp_path):
    """SIGKILL the producer while a real worker runs its job, restart it on the store: the
    lease is restored, the worker's heartbeat renews it, the job runs once and its result
    arrives. The worker has a free slot, so a job offered again would be taken at once (the
    behaviour before: the old lease void, the run aborted and started over)."""
    marks = tmp_path / "runs.txt"
    worker = start_worker("w1", "--slots", "2")
    first = durable("first", "mark", "1", str(marks), "6.0")
    first.wait_for(lambda: _runs(marks), 30, "the job never started")
    first.kill()
    second = durable("second", "resume", "1")
    second.wait_for(lambda: "all done" in second.lines(), 60, "the result never arrived")
    assert second.done()[1] == "w1"
    assert _runs(marks) == ["w1 " + _runs(marks)[0].split()[1]]  # it ran exactly once
    assert second.events("leased") == [] and second.events("requeued") == []
    assert "aborting" not in worker.log(), worker.log()
    assert "1 running job(s) go on under their leases" in worker.log()


def test_a_restart_keeps_a_running_job_leased_its_dependent_blocked_and_a_delayed_job_deferred(
    durable, start_worker, tmp_path,
):
    """Issue 15 on top of the kept leases: SIGKILL the producer while job 1 runs, job 2
    waits for job 1's result and job 3 for its due time. The restarted producer keeps job 1
    leased (it runs once, on the same worker, which has a free slot), gives job 2 job 1's
    result, and offers job 3 no sooner than its due time (which falls after the restart)."""
    marks = tmp_path / "runs.txt"
    worker = start_worker("w1", "--slots", "2")
    first = durable("first", "mixed", "3", str(marks), "4.0", "8.0")
    first.wait_for(lambda: _runs(marks), 30, "the job never started")
    [(_, _, submitted_at)] = [e for e in first.events("deferred") if e[0] == 3]
    first.kill()
    second = durable("second", "resume", "3")
    second.wait_for(lambda: "all done" in second.lines(), 60, "the results never arrived")
    done = second.done()
    assert done[1] == "w1" and len(_runs(marks)) == 1  # it ran exactly once
    assert done[2] == {"args": ["w1"], "kwargs": {}}  # job 1's result, from the old lease
    assert done[3]["started"] >= submitted_at + 8.0 - 0.05  # wall clocks of one host
    assert [job for job, _, _ in second.events("due")] == [3]  # it was still deferred
    assert [job for job, _, _ in second.events("unblocked")] == [2]
    assert sorted(job for job, _, _ in second.events("leased")) == [2, 3]  # job 1 not again
    assert "aborting" not in worker.log(), worker.log()


def test_a_busy_worker_keeps_its_job_across_a_producer_restart_while_another_waits(
    durable, start_worker, tmp_path,
):
    """The worker running the job has no free slot, so it sends the restarted producer no
    claim; an idle worker is waiting for work. The busy worker asks the new process at once,
    renews the restored lease, and the job runs once (not again on the idle worker)."""
    marks = tmp_path / "runs.txt"
    busy = start_worker("w1", "--slots", "1")
    first = durable("first", "mark", "1", str(marks), "6.0")
    first.wait_for(lambda: _runs(marks), 30, "the job never started")
    idle = start_worker("w2", "--slots", "1")
    first.kill()
    second = durable("second", "resume", "1")
    second.wait_for(lambda: "all done" in second.lines(), 60, "the result never arrived")
    assert second.done()[1] == "w1"
    assert [run.split()[0] for run in _runs(marks)] == ["w1"]  # it ran exactly once
    assert second.events("leased") == [] and second.events("requeued") == []
    assert "aborting" not in busy.log() + idle.log()


def test_a_job_whose_worker_died_too_is_offered_again_one_lease_after_the_restart(
    durable, start_worker, tmp_path,
):
    """SIGKILL the producer and the worker running its job: the restarted producer keeps the
    lease until one lease_s after its restart, then re-queues the job (attempt 2) and another
    worker runs it again."""
    lease_s = 3.0
    env = {"RZ_LEASE_S": str(lease_s)}
    marks = tmp_path / "runs.txt"
    w1 = start_worker("w1", "--slots", "1")
    first = durable("first", "mark", "1", str(marks), "30.0", env=env)
    first.wait_for(lambda: _runs(marks), 30, "the job never started")
    first.kill()
    w1.signal_group(signal.SIGKILL)
    w1.wait(10)
    second = durable("second", "resume", "1", env=env)
    start_worker("w2", "--slots", "1")
    # the job runs 30 s on w2 too: no need to wait for it, only for the re-lease
    second.wait_for(lambda: second.events("leased"), 60, "the job was never offered again")
    (job_id, attempt, leased_at), = second.events("leased")
    assert (job_id, attempt) == (1, 2)
    assert [e[:2] for e in second.events("requeued")] == [(1, 2)]
    # the lease's deadline was set after the process started: never re-offered before that
    assert leased_at >= second.started_at + lease_s
    second.wait_for(lambda: len(_runs(marks)) == 2, 30, "w2 never ran it")
    assert [run.split()[0] for run in _runs(marks)] == ["w1", "w2"]


def test_corrupt_or_newer_store_is_refused_and_left_alone(tmp_path):
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError) as info:
        Producer(interfaces=["127.0.0.1"], store=corrupt)
    assert str(corrupt) in str(info.value)
    assert corrupt.read_bytes() == b"this is not a database" * 100

    import sqlite3

    from freelance_rz.producer.store import SCHEMA_VERSION

    newer = tmp_path / "newer.sqlite"
    Producer(interfaces=["127.0.0.1"], store=newer).close()
    conn = sqlite3.connect(newer)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match=str(SCHEMA_VERSION + 1)):
        Producer(interfaces=["127.0.0.1"], store=newer)


def test_get_returns_finished_results_after_restart(tmp_path, start_worker):
    import rztasks

    store = tmp_path / "jobs.sqlite"
    with Producer(GROUP, interfaces=["127.0.0.1"], store=store) as producer:
        start_worker("w1")
        ok = producer.submit(rztasks.add, 2, 3)
        bad = producer.submit(rztasks.fail, "stored failure")
        assert ok.result(timeout=20) == 5
        bad.exception(timeout=10)
    with Producer(GROUP, interfaces=["127.0.0.1"], store=store, announce=False) as again:
        assert again.get(ok.job_id).result(timeout=1) == 5
        assert again.get(bad.job_id).exception(timeout=1).remote_message == "stored failure"
        with pytest.raises(KeyError):
            again.get(999)
        assert again.submit(rztasks.add, 0, 0).job_id > bad.job_id  # ids are never reused
        again.close()


def test_job_options_survive_a_restart(tmp_path):
    import zmq

    import rztasks
    from freelance_rz.core import wire as p

    store = tmp_path / "jobs.sqlite"
    first = Producer(GROUP, interfaces=["127.0.0.1"], store=store, announce=False).start()
    first.submit(rztasks.add, 1, 1)
    urgent = first.options(priority=5, timeout_s=2.5, max_attempts=1).submit(rztasks.add, 2, 2)
    first.close()
    again = Producer(GROUP, interfaces=["127.0.0.1"], store=store, announce=False).start()
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    sock.connect(again.endpoint)
    try:
        sock.send_multipart(p.encode(p.Claim(rid=1, wait_ms=1000, tasks=("rztasks",))))
        job = p.decode_reply(sock.recv_multipart())
        assert (job.job_id, job.timeout_ms) == (urgent.job_id, 2500)  # priority kept, limit too
    finally:
        sock.close()
        again.close()


def test_a_job_whose_submit_failed_to_record_never_runs(tmp_path, make_producer, start_worker):
    """A job reaches workers only once it is in the store: when the write fails, submit raises
    StoreError and the job never runs, even with a worker waiting for one."""
    import rztasks

    producer = make_producer(store=tmp_path / "jobs.sqlite")
    start_worker("w1")
    assert producer.submit(rztasks.add, 1, 1).result(timeout=15) == 2  # a worker is parked now
    real_flush = producer._io.store.flush

    def failing_flush():
        raise StoreError(str(tmp_path / "jobs.sqlite"), "disk full (simulated)")

    producer._io.store.flush = failing_flush
    marks = tmp_path / "ran.txt"
    with pytest.raises(StoreError, match="simulated"):
        producer.submit(rztasks.mark, str(marks))
    producer._io.store.flush = real_flush
    assert producer.submit(rztasks.add, 2, 2).result(timeout=15) == 4
    time.sleep(0.5)
    assert not marks.exists()
    assert producer.status()["cancelled"] == 1


def test_an_acknowledged_result_is_in_the_store(tmp_path):
    """Acknowledged must mean durable, as it does for submits: a durable producer that takes a
    RESULT and dies before its store has it must not have acknowledged it (the worker drops an
    acknowledged result, and the job would run again). The producer here dies in the flush
    that writes the result; a raw worker claims, sends the RESULT and watches for the ACK."""
    import zmq

    from freelance_rz.core import payload as pl
    from freelance_rz.core import wire as w
    from freelance_rz.producer.store import JobStore

    store = tmp_path / "jobs.sqlite"
    out = open(tmp_path / "crashy.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "rzcrashy.py", str(store), GROUP], cwd=TESTS_DIR, stdout=out,
        stderr=subprocess.STDOUT, start_new_session=True,
    )
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        deadline = time.monotonic() + 30
        while b"endpoint" not in (tmp_path / "crashy.log").read_bytes():
            assert time.monotonic() < deadline and proc.poll() is None, (tmp_path / "crashy.log").read_text()
            time.sleep(0.05)
        endpoint = (tmp_path / "crashy.log").read_text().split("endpoint ", 1)[1].split()[0]
        sock.connect(endpoint)
        sock.send_multipart(w.encode(w.Claim(rid=1, wait_ms=5000, tasks=("rztasks",))))
        assert sock.poll(10_000), "no JOB"
        job = w.decode_reply(sock.recv_multipart())
        assert isinstance(job, w.Job)
        sock.send_multipart(w.encode(w.Result(rid=2, job_id=job.job_id, lease_id=job.lease_id,
                                              ok=True, payload=pl.pack_value(3))))
        acked = sock.poll(3000) and isinstance(w.decode_reply(sock.recv_multipart()), w.Ack)
        assert proc.wait(10) == 9  # it died in the flush that writes the result
    finally:
        sock.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        out.close()
    with JobStore(store) as reopened:
        stored = reopened.result(job.job_id)
    print(f"ACK received: {bool(acked)}; result in the store: {stored is not None}")
    assert not acked or stored is not None, "the RESULT was acknowledged but never written"

"""When a job may run (DESIGN §9), over real sockets with real worker processes: retries on
task errors with backoff, Retry raised by a task, delayed jobs (delay_s, at), cancelling a
waiting job, a durable restart with deferred jobs, and the argument checks at submit."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
from concurrent.futures import CancelledError

import pytest

import rztasks
from conftest import GROUP
from freelance_rz import JobFailed, Producer

pytestmark = pytest.mark.timeout(90)


def runs(path) -> list[float]:
    """The start times (``time.time()``) the task recorded, one per run."""
    return [float(line) for line in path.read_text().split()] if path.exists() else []


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:], strict=False)]


@pytest.fixture
def producer_and_worker(make_producer, start_worker):
    events: list = []
    producer = make_producer(announce=False, on_event=events.append)
    start_worker("w1", "--slots", "2", connect=producer.endpoint)
    assert producer.submit(rztasks.add, 1, 1).result(timeout=30) == 2  # the worker is up
    return producer, events


# --- retries on task errors ----------------------------------------------------------------


def test_a_matching_error_is_retried_with_exponential_backoff(producer_and_worker, tmp_path):
    producer, events = producer_and_worker
    path = tmp_path / "runs"
    options = producer.options(retry_on=(ConnectionError,), max_retries=5, backoff_s=0.4,
                               jitter=False)
    # ConnectionRefusedError is a ConnectionError: matched by its base's name
    future = options.submit(rztasks.flaky, str(path), 2)
    assert future.result(timeout=30) == 3
    first, second = gaps(runs(path))
    assert 0.4 <= first < 0.4 + 5.0 and 0.8 <= second < 0.8 + 5.0  # generous: a loaded host
    kinds = [e.kind for e in events if e.job_id == future.job_id]
    assert kinds.count("retrying") == 2 and kinds[-1] == "done"
    assert [e.attempt for e in events if e.kind == "retrying"] == [2, 3]
    status = producer.status(detail=True)
    assert status["retried"] == 2 and status["deferred"] == 0
    task = next(t for t in status["tasks"] if t["task"] == "rztasks:flaky")
    assert (task["retried"], task["done"], task["deferred"]) == (2, 1, 0)
    shown = subprocess.run(  # freelance-status shows the retries
        [sys.executable, "-c", "import sys; from freelance_rz.cli import status_main; "
         "sys.exit(status_main())", "--connect", producer.endpoint],
        capture_output=True, text=True, timeout=60)
    header = next(line for line in shown.stdout.splitlines() if "┃" in line)
    row = next(line for line in shown.stdout.splitlines() if "│" in line and "rz-test" in line or
               line.count("│") > 5)
    assert "retried" in header and " 2 " in row, shown.stdout


def test_retries_exhausted_fail_with_the_last_error_and_the_attempts(producer_and_worker, tmp_path):
    producer, _ = producer_and_worker
    path = tmp_path / "runs"
    options = producer.options(retry_on="rztasks:Busy", max_retries=2, backoff_s=0.05)
    with pytest.raises(JobFailed) as info:
        options.submit(rztasks.flaky, str(path), 99, "Busy").result(timeout=30)
    assert (info.value.remote_type, info.value.remote_message) == ("Busy", "run 3")
    assert info.value.attempts == 3 and "(after 3 attempts)" in str(info.value)
    assert len(runs(path)) == 3
    assert producer.status()["failed"] == 1


def test_an_error_the_policy_does_not_name_is_final(producer_and_worker, tmp_path):
    producer, _ = producer_and_worker
    path = tmp_path / "runs"
    options = producer.options(retry_on=(ConnectionError, "rztasks:Busy"), backoff_s=0.05)
    with pytest.raises(JobFailed) as info:
        options.submit(rztasks.flaky, str(path), 5, "ValueError").result(timeout=30)
    assert info.value.remote_type == "ValueError" and info.value.attempts == 1
    assert len(runs(path)) == 1 and producer.status()["retried"] == 0
    with pytest.raises(JobFailed):  # without options, a task error is final as before
        producer.submit(rztasks.flaky, str(tmp_path / "other"), 5).result(timeout=30)
    assert len(runs(tmp_path / "other")) == 1


def test_a_task_raising_retry_runs_again_after_its_delay(producer_and_worker, tmp_path):
    producer, _ = producer_and_worker
    path = tmp_path / "runs"
    assert producer.submit(rztasks.retry_me, str(path), 2, 0.3).result(timeout=30) == 3
    assert all(0.3 <= gap < 0.3 + 5.0 for gap in gaps(runs(path)))
    # past max_retries (3 by default) the job fails with the Retry itself
    with pytest.raises(JobFailed) as info:
        producer.submit(rztasks.retry_me, str(tmp_path / "again"), 99, 0.0).result(timeout=30)
    assert info.value.remote_type == "Retry" and info.value.attempts == 4
    limited = producer.options(max_retries=1)
    with pytest.raises(JobFailed):
        limited.submit(rztasks.retry_me, str(tmp_path / "once"), 99, 0.0).result(timeout=30)
    assert len(runs(tmp_path / "once")) == 2


# --- delayed jobs ----------------------------------------------------------------------------


def test_delay_s_and_at_are_not_offered_before_their_time(producer_and_worker):
    producer, events = producer_and_worker
    submitted = time.time()
    later = producer.options(delay_s=1.0).submit(rztasks.whoami)
    at = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=1.5)
    at_job = producer.options(at=at).submit(rztasks.whoami)
    now_job = producer.submit(rztasks.whoami)
    assert producer.status()["deferred"] == 2
    assert now_job.result(timeout=30)["started"] < submitted + 1.0  # not held up by them
    assert later.result(timeout=30)["started"] >= submitted + 1.0
    assert at_job.result(timeout=30)["started"] >= at.timestamp()
    kinds = [e.kind for e in events if e.job_id == later.job_id]
    assert kinds[:3] == ["submitted", "deferred", "due"]


def test_a_waiting_job_can_be_cancelled(producer_and_worker, tmp_path):
    producer, _ = producer_and_worker
    path = tmp_path / "runs"
    waiting = producer.options(delay_s=30).submit(rztasks.flaky, str(path), 0)
    backing_off = producer.options(retry_on=ConnectionError, backoff_s=30).submit(
        rztasks.flaky, str(tmp_path / "backoff"), 5)
    deadline = time.monotonic() + 30
    while producer.status()["deferred"] < 2:  # the second failed once and backs off
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert waiting.cancel() and backing_off.cancel()
    with pytest.raises(CancelledError):
        waiting.result(timeout=5)
    deadline = time.monotonic() + 10
    while producer.status()["deferred"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert producer.status()["cancelled"] == 2
    assert runs(path) == [] and len(runs(tmp_path / "backoff")) == 1


def test_bad_arguments_are_refused_at_options(make_producer):
    producer = make_producer(announce=False)
    naive = dt.datetime.now() + dt.timedelta(seconds=5)
    with pytest.raises(ValueError, match="naive"):
        producer.options(at=naive)
    with pytest.raises(ValueError, match="delay_s"):
        producer.options(delay_s=-1)
    with pytest.raises(ValueError, match="not both"):
        producer.options(delay_s=1, at=dt.datetime.now(dt.timezone.utc))
    with pytest.raises(TypeError, match="at must be a datetime"):
        producer.options(at="2030-01-01")
    with pytest.raises(TypeError, match="unexpected keyword argument 'delay'"):
        producer.options(delay=5)  # an unknown option name
    with pytest.raises(TypeError, match="retry_on"):
        producer.options(retry_on=(ConnectionError, 42))
    with pytest.raises(TypeError, match="retry_on"):
        producer.options(retry_on="ConnectionError")  # a string names 'module:QualName'
    with pytest.raises(ValueError, match="backoff_max_s"):
        producer.options(retry_on=OSError, backoff_s=10, backoff_max_s=1)
    with pytest.raises(ValueError, match="max_retries"):
        producer.options(max_retries=-1)
    assert producer.status()["pending"] == 0


# --- durable restart ----------------------------------------------------------------------------


def test_deferred_jobs_survive_a_restart_and_run_once(tmp_path, start_worker):
    """A delayed job and a job backing off after a task error are in the store; a producer
    restarted on it offers each once its due time (wall clock, kept in the store) comes."""
    store, path = tmp_path / "jobs.sqlite", tmp_path / "runs"
    first = Producer(GROUP, interfaces=["127.0.0.1"], store=store, announce=False).start()
    worker = start_worker("w1", connect=first.endpoint)
    later = first.options(delay_s=2.0).submit(rztasks.flaky, str(tmp_path / "later"), 0)
    backoff = first.options(retry_on=ConnectionError, backoff_s=2.0, jitter=False).submit(
        rztasks.flaky, str(path), 1)
    deadline = time.monotonic() + 30
    while first.status()["deferred"] < 2:  # the second ran once, failed, and backs off
        assert time.monotonic() < deadline
        time.sleep(0.05)
    failed_at = runs(path)[0]
    first.close()
    worker.kill()
    assert runs(tmp_path / "later") == []
    again = Producer(GROUP, interfaces=["127.0.0.1"], store=store, announce=False).start()
    try:
        assert again.status()["deferred"] == 2
        start_worker("w2", connect=again.endpoint)
        assert again.get(later.job_id).result(timeout=30) == 1
        assert again.get(backoff.job_id).result(timeout=30) == 2
        times = runs(path)
        assert len(times) == 2 and times[1] >= failed_at + 2.0  # the backoff was kept
        assert len(runs(tmp_path / "later")) == 1
        assert again.status()["retried"] == 0  # counted by the first producer
    finally:
        again.close()

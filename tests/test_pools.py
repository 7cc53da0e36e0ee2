"""Worker pools (--pool process|thread|asyncio), per-process set-up (--init) and recycling
(--max-jobs-per-process, --max-memory-per-process), over real sockets with real workers."""

from __future__ import annotations

import subprocess
import sys
import time
import pytest

import rzpools
import rztasks
from conftest import GROUP, TESTS_DIR
from freelance_rz import JobFailed, JobLost, JobTimeout, Worker

pytestmark = pytest.mark.timeout(120)

POOLS = ["process", "thread", "asyncio"]


def wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def lines(path) -> list[str]:
    return path.read_text().split() if path.exists() else []


@pytest.mark.parametrize("pool", POOLS)
def test_each_pool_runs_plain_and_async_tasks_and_errors_travel(make_producer, start_worker, pool):
    producer = make_producer()
    start_worker("w1", "--tasks", "rzpools", "--pool", pool, "--slots", "2")
    assert producer.submit(rztasks.add, 2, 3).result(timeout=30) == 5
    assert producer.submit(rzpools.aadd, 2, 3).result(timeout=15) == 5
    for fn in (rztasks.fail, rzpools.afail):
        with pytest.raises(JobFailed) as info:
            producer.submit(fn, "boom").result(timeout=15)
        assert info.value.remote_type == "ValueError" and info.value.remote_message == "boom"
        assert f"in {fn.__name__}" in info.value.remote_traceback


@pytest.mark.parametrize("pool", POOLS)
def test_an_exception_that_cannot_be_printed_fails_its_job(make_producer, start_worker, pool):
    """A task's exception whose str() raises, whose traceback cannot be formatted or whose
    message UTF-8 cannot encode: JobFailed with what could be said, not a lost job (the job's
    process used to die formatting it)."""
    producer = make_producer()
    start_worker("w1", "--tasks", "rzpools", "--pool", pool, "--slots", "1")
    for fn in (rzpools.raise_unprintable, rzpools.araise_unprintable):
        with pytest.raises(JobFailed) as info:
            producer.options(max_attempts=1).submit(fn).result(timeout=30)
        assert info.value.remote_type == "Unprintable"
        assert "str() of this Unprintable raised RuntimeError" in info.value.remote_message
        assert f"in {fn.__name__}" in info.value.remote_traceback
    with pytest.raises(JobFailed) as info:
        producer.options(max_attempts=1).submit(rzpools.raise_bad_notes).result(timeout=15)
    assert (info.value.remote_type, info.value.remote_message) == ("BadNotes", "with notes")
    assert "could not be formatted: RuntimeError" in info.value.remote_traceback
    with pytest.raises(JobFailed) as info:
        producer.options(max_attempts=1).submit(rzpools.raise_surrogate).result(timeout=15)
    assert info.value.remote_message == "bad \\udcff text"


@pytest.mark.parametrize("pool", POOLS)
def test_each_pool_sends_what_the_retry_policy_reads(make_producer, start_worker, pool, tmp_path):
    """Issue 15's error fields leave every pool: a ConnectionRefusedError is retried under
    retry_on=ConnectionError (matched on the class's MRO names, ``types``), a Retry's delay
    (``retry_in_ms``) is kept, and an exception whose retry_in_s raises is still an ordinary
    error, retried on its type with the backoff (its job's process used to die)."""
    producer = make_producer()
    start_worker("w1", "--tasks", "rzpools", "--pool", pool, "--slots", "1")
    options = producer.options(retry_on=ConnectionError, backoff_s=0.05, jitter=False)
    assert options.submit(rztasks.flaky, str(tmp_path / "a"), 1).result(timeout=30) == 2
    assert options.submit(rzpools.aflaky, str(tmp_path / "b"), 1).result(timeout=30) == 2
    assert producer.submit(rzpools.aretry_me, str(tmp_path / "c"), 1, 0.05).result(timeout=30) == 2
    with pytest.raises(JobFailed) as info:
        producer.options(retry_on=ConnectionError, max_retries=1, backoff_s=0.05).submit(
            rzpools.raise_hostile).result(timeout=30)
    assert (info.value.remote_type, info.value.remote_message) == ("Hostile", "hostile")
    assert info.value.attempts == 2


@pytest.mark.parametrize("pool, task", [
    ("thread", rzpools.meet), ("asyncio", rzpools.ameet), ("asyncio", rzpools.meet),
])
def test_one_job_process_runs_slots_jobs_at_once(make_producer, start_worker, pool, task):
    """Four jobs that each wait for all four to arrive: they can only all succeed if they
    run at the same time, in one process (no timing involved)."""
    producer = make_producer()
    start_worker("w1", "--tasks", "rzpools", "--pool", pool, "--slots", "4")
    assert producer.submit(rzpools.pid).result(timeout=30)
    futures = [producer.submit(task, 4) for _ in range(4)]
    assert [f.result(timeout=40) for f in futures] == [True] * 4
    pids = {producer.submit(rzpools.pid).result(timeout=15) for _ in range(4)}
    assert len(pids) == 1


@pytest.mark.parametrize("pool, task", [
    ("process", rzpools.spin), ("thread", rzpools.spin), ("asyncio", rzpools.spin),
    ("thread", rzpools.asleep), ("asyncio", rzpools.asleep), ("process", rzpools.asleep),
])
def test_time_limits_in_every_pool(make_producer, start_worker, tmp_path, pool, task):
    """A job past its time limit fails with JobTimeout and its slot is free again. In the
    thread and asyncio pools the job is cancelled inside its process (its cleanup runs, the
    process is kept); in the process pool its process is killed."""
    producer = make_producer()
    worker = start_worker("w1", "--tasks", "rzpools", "--pool", pool, "--slots", "1")
    before = producer.submit(rzpools.pid).result(timeout=30)
    marker = tmp_path / "cleanup"
    with pytest.raises(JobTimeout):
        producer.options(timeout_s=0.5).submit(task, 60, str(marker)).result(timeout=20)
    after = producer.submit(rzpools.pid).result(timeout=20)
    if pool == "process":
        assert after != before
    else:
        assert after == before  # cancelled inside the process, not replaced
        wait_until(marker.exists, 10, "the task's finally block never ran")
    assert "time limit of 0.5 s" in worker.log()


@pytest.mark.parametrize("pool", ["thread", "asyncio"])
def test_cancel_a_running_job_in_a_shared_process(make_producer, start_worker, tmp_path, pool):
    """Future.cancel() of a running job: the worker cancels it inside the process (its
    cleanup runs) while the other slot's job goes on and completes."""
    producer = make_producer()
    worker = start_worker("w1", "--tasks", "rzpools", "--pool", pool, "--slots", "2")
    assert producer.submit(rzpools.pid).result(timeout=30)
    marker = tmp_path / "cleanup"
    other = producer.submit(rzpools.asleep if pool == "asyncio" else rzpools.spin, 2.0)
    long = producer.submit(rzpools.spin, 60, str(marker))
    wait_until(lambda: producer.status()["leased"] == 2, 15, "the jobs never started")
    assert long.cancel()
    wait_until(marker.exists, 15, "the cancelled task's finally block never ran")
    result = other.result(timeout=20)
    assert result == "slept" or isinstance(result, int)
    assert "aborting it" in worker.log() and "ignored cancellation" not in worker.log()


@pytest.mark.parametrize("pool, stuck", [("thread", rzpools.block), ("asyncio", rzpools.stubborn)])
def test_a_job_ignoring_cancellation_gets_its_process_replaced(
    make_producer, start_worker, tmp_path, pool, stuck,
):
    """A job past its time limit that does not stop (a thread blocked in C, a coroutine
    swallowing CancelledError): after the grace period its process is replaced, and the job
    another slot was running there is offered again at once, with no attempt lost
    (max_attempts=1), and completes."""
    producer = make_producer(max_attempts=1)
    worker = start_worker("w1", "--tasks", "rzpools", "--pool", pool, "--slots", "2")
    first_pid = producer.submit(rzpools.pid).result(timeout=30)
    log = tmp_path / "executions"
    bystander = producer.submit(rztasks.mark, str(log), 4.0)
    wait_until(lambda: len(lines(log)) == 2, 15, "the bystander never started")
    with pytest.raises(JobTimeout):
        producer.options(timeout_s=0.3).submit(stuck, 60).result(timeout=15)
    assert bystander.result(timeout=30) == "w1"
    executions = lines(log)[1::2]  # "worker pid" per execution
    assert len(executions) == 2 and executions[0] != executions[1]  # run again, elsewhere
    assert producer.submit(rzpools.pid).result(timeout=15) != first_pid
    assert "ignored cancellation" in worker.log()


def test_a_cancelled_job_holds_its_resources_until_its_run_stops(make_producer, start_worker):
    """Thread pool, 2 slots, --resources gpu=1: a GPU job past its time limit that ignores
    cancellation (blocked in C) holds the GPU until its process is replaced, so the next GPU
    job runs in the new process, never beside it in the old one (whose other slot is free)."""
    producer = make_producer(max_attempts=1)
    start_worker("w1", "--tasks", "rzpools", "--pool", "thread", "--slots", "2", "--resources", "gpu=1")
    first_pid = producer.submit(rzpools.pid).result(timeout=30)
    stuck = producer.options(timeout_s=0.3, resources={"gpu": 1}).submit(rzpools.block, 60)
    with pytest.raises(JobTimeout):
        stuck.result(timeout=15)
    assert producer.options(resources={"gpu": 1}).submit(rzpools.pid).result(timeout=30) != first_pid


@pytest.mark.parametrize("pool", ["thread", "asyncio"])
def test_a_crash_in_a_shared_process_loses_no_other_job(make_producer, start_worker, tmp_path, pool):
    """A task kills its process while another slot's job runs there: which one did it cannot
    be told, so both are offered again with no attempt lost and the next jobs run one at a
    time; the crashing job is then caught alone and dead-lettered after its attempts, the
    other completes even with max_attempts=1."""
    producer = make_producer()
    worker = start_worker("w1", "--tasks", "rzpools", "--pool", pool, "--slots", "2")
    assert producer.submit(rzpools.pid).result(timeout=30)
    log = tmp_path / "executions"
    bystander = producer.options(max_attempts=1).submit(rztasks.mark, str(log), 2.0)
    wait_until(lambda: len(lines(log)) == 2, 15, "the bystander never started")
    crashing = producer.options(max_attempts=2).submit(rztasks.crash)
    assert bystander.result(timeout=40) == "w1"
    with pytest.raises(JobLost, match="exited with code 3"):
        crashing.result(timeout=40)
    assert "run one at a time" in worker.log()


@pytest.mark.parametrize("pool, init", [
    ("process", "rzpools:setup"), ("thread", "rzpools:setup"), ("asyncio", "rzpools:asetup"),
])
def test_init_runs_once_per_job_process_before_its_first_job(
    make_producer, start_worker, tmp_path, monkeypatch, pool, init,
):
    monkeypatch.setenv("RZ_INIT_LOG", str(tmp_path / "inits"))
    producer = make_producer()
    start_worker("w1", "--tasks", "rzpools", "--pool", pool, "--slots", "2", "--init", init)
    seen = [producer.submit(rzpools.inits).result(timeout=30) for _ in range(6)]
    assert {s["inits"] for s in seen} == {1}  # every job ran after its process's one init
    processes = 2 if pool == "process" else 1
    wait_until(lambda: len(lines(tmp_path / "inits")) >= processes, 30, "a process never set up")
    time.sleep(0.5)  # (an init run twice would show by now)
    init_pids = [int(p) for p in lines(tmp_path / "inits")]
    assert len(init_pids) == processes == len(set(init_pids))
    assert {s["pid"] for s in seen} <= set(init_pids)


@pytest.mark.parametrize("pool", POOLS)
def test_recycling_after_n_jobs(make_producer, start_worker, tmp_path, monkeypatch, pool):
    """--max-jobs-per-process 3: every process runs 3 jobs, then a fresh one (which runs
    --init once) takes over; no job is lost or run twice."""
    monkeypatch.setenv("RZ_INIT_LOG", str(tmp_path / "inits"))
    producer = make_producer(max_attempts=1)
    worker = start_worker("w1", "--tasks", "rzpools", "--pool", pool, "--slots", "1",
                          "--init", "rzpools:setup", "--max-jobs-per-process", "3")
    pids = [producer.submit(rzpools.inits).result(timeout=30)["pid"] for _ in range(7)]
    assert [pids.count(p) for p in dict.fromkeys(pids)] == [3, 3, 1]
    assert lines(tmp_path / "inits")[:3] == [str(p) for p in dict.fromkeys(pids)]
    assert "--max-jobs-per-process" in worker.log()


@pytest.mark.parametrize("pool", POOLS)
def test_recycling_over_a_memory_limit(make_producer, start_worker, pool):
    """--max-memory-per-process 150: a process is replaced after the job that took it over
    the limit (that job still returns), and not before."""
    producer = make_producer(max_attempts=1)
    worker = start_worker("w1", "--tasks", "rzpools", "--pool", pool, "--slots", "1",
                          "--max-memory-per-process", "150")
    first = producer.submit(rzpools.hoard, 1).result(timeout=30)
    assert producer.submit(rzpools.hoard, 1).result(timeout=15) == first  # under the limit
    assert producer.submit(rzpools.hoard, 200).result(timeout=30) == first  # the job ends
    assert producer.submit(rzpools.pid).result(timeout=30) != first  # then it is replaced
    assert "--max-memory-per-process" in worker.log()


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "freelance_rz.cli", *args], cwd=TESTS_DIR, capture_output=True,
        text=True, timeout=timeout,
    )


@pytest.mark.parametrize("args, code, message", [
    (["--pool", "fork"], 2, "argument --pool: invalid choice: 'fork'"),
    (["--init", "rzpools"], 2, "--init 'rzpools' must be module:function"),
    (["--init", "rzpools:"], 2, "must be module:function"),
    (["--init", "nosuchmodule:setup"], 2, "--init module 'nosuchmodule' not found"),
    (["--connect", "banana"], 2, "--connect 'banana': expected tcp://HOST:PORT\n"),
    (["--tasks", "nosuchmodule"], 2, "--tasks module 'nosuchmodule' not found"),
    (["--max-jobs-per-process", "0"], 2, "max_jobs_per_process must be"),
    (["--max-memory-per-process", "-1"], 2, "max_memory_per_process_mib must be"),
])
def test_bad_pool_and_init_arguments_say_what_is_wrong(args, code, message):
    run = run_cli("--connect", "tcp://127.0.0.1:9", "--tasks", "rzpools", *args)
    assert run.returncode == code and message in run.stderr, run.stderr


@pytest.mark.parametrize("init, message", [
    ("rzpools:nothing", "module rzpools has no function 'nothing'"),
    ("rzpools:broken_setup", "ValueError: no model file here"),
])
def test_an_init_that_fails_stops_the_worker_with_the_error(init, message):
    run = run_cli("--connect", "tcp://127.0.0.1:9", "--group", GROUP, "--tasks", "rzpools",
                  "--init", init, "--slots", "2")
    assert run.returncode == 1, run.stderr
    assert "freelance-worker: error: job process could not start" in run.stderr
    assert message in run.stderr
    if init == "rzpools:broken_setup":
        assert "in broken_setup" in run.stderr  # with its traceback


def test_embedded_worker_messages_name_its_keyword_arguments(tmp_path):
    """From Python, a wrong argument is named as the keyword argument, not as the flag of
    freelance-worker (the CLI's messages are tested above)."""
    with pytest.raises(ValueError) as info:
        Worker(["rzpools"])
    assert str(info.value) == ("a worker needs a producer source: discover=True, discover_dns=, "
                               "connect= or connect_file=")
    with pytest.raises(ModuleNotFoundError) as missing:
        Worker(["nosuchmodule"], discover=True)
    assert str(missing.value) == "tasks module 'nosuchmodule' not found"
    with pytest.raises(ValueError) as bad:
        Worker(["rzpools"], connect=["banana"])
    assert str(bad.value) == "connect 'banana': expected tcp://HOST:PORT"
    with pytest.raises(ValueError, match=r"^init 'rzpools.setup' must be module:function"):
        Worker(["rzpools"], discover=True, init="rzpools.setup")
    with pytest.raises(ValueError, match="^key needs trust too"):
        Worker(["rzpools"], discover=True, key=tmp_path / "k.key_secret")


def test_embedded_worker_takes_the_same_options():
    with pytest.raises(ValueError, match="pool must be one of process, thread, asyncio"):
        Worker(["rzpools"], connect=["tcp://127.0.0.1:9"], pool="gevent")
    with pytest.raises(ValueError, match="must be module:function"):
        Worker(["rzpools"], connect=["tcp://127.0.0.1:9"], init="rzpools.setup")
    with pytest.raises(TypeError, match="max_jobs_per_process"):
        Worker(["rzpools"], connect=["tcp://127.0.0.1:9"], max_jobs_per_process=1.5)
    worker = Worker(["rzpools"], connect=["tcp://127.0.0.1:9"], pool="asyncio", slots=200,
                    init="rzpools:asetup", max_jobs_per_process=100, max_memory_per_process_mib=512)
    assert (worker.pool, worker.init, worker.max_jobs_per_process) == ("asyncio", "rzpools:asetup", 100)


def test_embedded_worker_runs_an_asyncio_pool(make_producer):
    """Worker(pool="asyncio", init=...) in this process, stopped from another thread."""
    import threading

    producer = make_producer(announce=False)
    worker = Worker(["rzpools"], connect=[producer.endpoint], pool="asyncio", slots=3)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        futures = [producer.submit(rzpools.ameet, 3) for _ in range(3)]
        assert [f.result(timeout=40) for f in futures] == [True] * 3
    finally:
        worker.stop()
        thread.join(30)
    assert not thread.is_alive()

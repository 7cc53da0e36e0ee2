"""A new user's first hour (issue 12): no silent hang, and a size limit reported as what it is.
Over real sockets and real mDNS on loopback, with worker subprocesses."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import time

import pytest

import rztasks
from conftest import GROUP, TESTS_DIR
from freelance_rz import JobTooLarge, ProducerClosed
from freelance_rz.core import fleet as fleet_module

pytestmark = pytest.mark.timeout(120)


def test_an_exception_in_a_with_block_without_workers_surfaces(tmp_path):
    """Item 1: `with Producer(group="nobody-here") as p: p.submit(f, 1).result(timeout=2)`
    froze forever: leaving the block waited for every job. Now the TimeoutError surfaces."""
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(f"""
        import time
        from freelance_rz import Producer
        import rztasks
        started = time.monotonic()
        try:
            with Producer(group="nobody-here-{GROUP}", interfaces=["127.0.0.1"]) as p:
                p.submit(rztasks.add, 1, 2).result(timeout=2)
        except TimeoutError:
            print("TimeoutError after %.1f s" % (time.monotonic() - started))
    """))
    run = subprocess.run([sys.executable, str(script)], cwd=TESTS_DIR, capture_output=True,
                         text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(TESTS_DIR)))
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("TimeoutError after"), run.stdout + run.stderr
    print(run.stdout.strip())


def test_jobs_waiting_with_no_worker_are_reported_once(make_producer, caplog, monkeypatch):
    """Item 1: a producer whose jobs no worker polled for a long time logged nothing, ever."""
    monkeypatch.setattr(fleet_module, "NO_WORKER_WARN_S", 1.0)
    caplog.set_level(logging.WARNING, logger="freelance_rz.producer")
    producer = make_producer(group=f"{GROUP}-empty")
    producer.submit(rztasks.add, 1, 1)
    deadline = time.monotonic() + 10
    while not any("no worker has claimed a job from" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, "no warning"
        time.sleep(0.1)
    time.sleep(2.5)
    warnings = [r.getMessage() for r in caplog.records if "no worker has claimed a job from" in r.getMessage()]
    assert len(warnings) == 1
    assert f"--group {GROUP}-empty" in warnings[0] and producer.endpoint in warnings[0]


def test_shutdown_with_a_timeout_closes_when_it_is_up(make_producer):
    producer = make_producer(group=f"{GROUP}-empty")
    future = producer.submit(rztasks.add, 1, 1)
    started = time.monotonic()
    producer.shutdown(wait=True, timeout_s=1.0)
    assert time.monotonic() - started < 5
    assert future.cancelled() or isinstance(future.exception(timeout=1), ProducerClosed)
    with pytest.raises(ValueError, match="timeout_s"):
        producer.shutdown(timeout_s=-1)


def test_the_payload_limit_is_exact_and_named(make_producer, start_worker):
    """Item 2: a worker with --max-payload-bytes 1000 and a 200 kB job failed the Future as
    JobLost ('each worker holding it died'); and a 5,000-byte job passed that limit (64 KiB
    slack). Now both fail with JobTooLarge naming both limits, at the first claim."""
    producer = make_producer(max_attempts=1)
    worker = start_worker("w1", "--max-payload-bytes", "1000")
    for size in (200_000, 5_000):
        with pytest.raises(JobTooLarge) as info:
            producer.submit(rztasks.echo, b"x" * size).result(timeout=30)
        assert "at most 1000 (their --max-payload-bytes)" in str(info.value)
        assert "up to 67108864 (max_payload_bytes)" in str(info.value)
    assert producer.submit(rztasks.echo, b"x" * 500).result(timeout=15) == {"args": [b"x" * 500], "kwargs": {}}
    assert "unreachable" not in worker.log()


def test_a_producer_limit_over_the_workers_is_job_too_large(make_producer, start_worker):
    """Item 2: Producer(max_payload_bytes=256 MiB) and default workers, a 100 MB argument."""
    producer = make_producer(max_payload_bytes=256 * 1024 * 1024)
    start_worker("w1")
    assert producer.submit(rztasks.add, 1, 1).result(timeout=30) == 2  # the worker is there
    with pytest.raises(JobTooLarge, match="at most 67108864 .* up to 268435456"):
        producer.submit(rztasks.echo, b"x" * 100_000_000).result(timeout=60)


def test_a_job_too_large_for_one_worker_runs_on_another(make_producer, start_worker):
    """A job no larger than some connected worker's limit waits for that worker; the small
    worker keeps running the jobs it can take."""
    producer = make_producer()
    start_worker("small", "--max-payload-bytes", "1000", "--slots", "1")
    start_worker("large", "--slots", "1")
    # mark() says which worker ran it; its truthy `spin` argument carries 5,000 bytes of padding
    big = producer.submit(rztasks.mark, "/dev/null", 0.0, spin=b"x" * 5000)
    small = [producer.submit(rztasks.whoami, 0.05) for _ in range(10)]
    assert big.result(timeout=30) == "large"
    assert {f.result(timeout=30)["worker"] for f in small} <= {"small", "large"}


def test_a_time_limit_under_a_millisecond_is_still_a_limit(make_producer, start_worker):
    """The time limit is rounded once (up to 1 ms): a 0.5 ms limit was sent as 0, which a
    worker reads as "no limit", and the job ran to its end."""
    from freelance_rz import JobTimeout
    from freelance_rz.core.ledger import timeout_ms

    assert timeout_ms(0.0005) == 1 and timeout_ms(2.0) == 2000
    producer = make_producer()
    start_worker("w1", "--slots", "1")
    started = time.monotonic()
    with pytest.raises(JobTimeout):
        producer.options(timeout_s=0.0005).submit(rztasks.whoami, 5.0).result(timeout=30)
    assert time.monotonic() - started < 4.5  # killed, not run to its end


@pytest.mark.parametrize("handled", [False, True])
def test_sigterm_to_an_app_closes_its_producer_only_with_the_documented_handler(tmp_path, handled):
    """docs/tutorial.md §9: SIGTERM kills a Python app without leaving ``with`` (no close():
    its endpoints-file line stays); with the handler the docs give, close() runs (the line
    is removed) and the app exits 143."""
    endpoints = tmp_path / "endpoints.txt"
    handler = ("signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))"
               if handled else "pass")
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(f"""
        import signal, sys, time
        from freelance_rz import Producer
        {handler}
        with Producer(group="sigterm-{GROUP}", announce=False, endpoints_file={str(endpoints)!r}) as p:
            print(p.endpoint, flush=True)
            time.sleep(60)
    """))
    app = subprocess.Popen([sys.executable, str(script)], cwd=TESTS_DIR, stdout=subprocess.PIPE,
                           text=True, start_new_session=True)
    try:
        endpoint = app.stdout.readline().strip()
        assert endpoint.startswith("tcp://") and endpoint in endpoints.read_text()
        app.terminate()
        code = app.wait(30)
    finally:
        if app.poll() is None:
            os.killpg(app.pid, 9)
            app.wait(10)
    if handled:
        assert code == 143 and endpoint not in endpoints.read_text()
    else:
        assert code == -15 and endpoint in endpoints.read_text()

"""Ghost producers (issue 12, item 4): mDNS caches keep a dead producer's records for many
minutes. A SIGKILLed producer was forgotten after --give-up-s, taken back from the cache ~5 s
later and retried another 60 s; "could not resolve" was logged every 10 s (each attempt up to
3 s); a durable restart flipped workers new -> old -> new; idle workers with ghosts took
2.8-18 s to stop on SIGTERM, and `freelance-status --watch` over 12 s to exit on Ctrl-C. Now a
forgotten producer stays forgotten, unresolvable names cost nothing, and stopping is prompt."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import GROUP, TESTS_DIR
from hostile_kit import MdnsForger, wait_until

pytestmark = pytest.mark.timeout(120)


def start_producer(tmp_path, *args: str, script: str = "rzproducer.py", label: str = "a"):
    out = open(tmp_path / f"producer-{label}.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, script, *args], cwd=TESTS_DIR, stdout=out, stderr=subprocess.STDOUT,
        start_new_session=True, env=dict(os.environ, RZ_GROUP=GROUP),
    )
    wait_until(lambda: b"tcp://" in (tmp_path / f"producer-{label}.log").read_bytes(), 20,
               "the producer did not start")
    return proc


def kill(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)


def test_a_forgotten_producer_stays_forgotten(start_worker, tmp_path):
    producer = start_producer(tmp_path, "100", "5.0")
    try:
        worker = start_worker("w1", "--give-up-s", "2")
        wait_until(lambda: "at tcp://" in worker.log(), 20, "the worker never found it")
        kill(producer)
        wait_until(lambda: "forgotten" in worker.log(), 20, "the worker never forgot it")
        forgotten_at = worker.log().count("\n")
        time.sleep(13.0)  # a new mDNS query series (every 10 s) brings the cached records back
        after = worker.log().splitlines()[forgotten_at:]
        print("\n".join(after) or "(nothing logged after it was forgotten)")
        assert not [line for line in after if "at tcp://" in line or "unreachable" in line]
        assert "could not resolve" not in worker.log()
    finally:
        kill(producer)


def test_an_idle_worker_with_ghosts_stops_at_once(start_worker, tmp_path):
    ghosts = [f"ghost{i}" for i in range(30)]  # PTR records whose SRV/TXT are long gone
    worker = start_worker("w1")
    wait_until(lambda: "started" in worker.log(), 30, "the worker never started")
    with MdnsForger(tmp_path, ghosts=ghosts, goodbye_every_s=1.0):
        time.sleep(3.0)  # the ghosts are being resolved (and fail)
        started = time.monotonic()
        worker.signal_group(signal.SIGTERM)
        code = worker.wait(30)
        took = time.monotonic() - started
    print(f"idle worker with 30 ghost producers: stopped {took:.2f} s after SIGTERM")
    assert code == 0, worker.log()
    assert took < 3.0


def test_freelance_status_watch_with_ghosts_exits_at_once_on_ctrl_c(tmp_path):
    with MdnsForger(tmp_path, ghosts=[f"ghost{i}" for i in range(30)], goodbye_every_s=1.0):
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from freelance_rz.cli import status_main; "
             "sys.exit(status_main())", "--discover", "--group", GROUP, "--interface",
             "127.0.0.1", "--watch", "--wait", "1"],
            cwd=TESTS_DIR, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            time.sleep(3.0)
            started = time.monotonic()
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
            took = time.monotonic() - started
        finally:
            if proc.poll() is None:
                kill(proc)
    print(f"freelance-status --watch with 30 ghosts: exited {took:.2f} s after Ctrl-C")
    assert took < 3.0


def test_a_durable_restart_is_followed_once_and_never_undone(start_worker, tmp_path):
    store = str(tmp_path / "jobs.sqlite")
    first = start_producer(tmp_path, store, GROUP, "submit", "40", "0.5", script="rzdurable.py")
    second = None
    try:
        worker = start_worker("w1", "--slots", "1")
        wait_until(lambda: "at tcp://" in worker.log(), 20, "the worker never found it")
        time.sleep(1.0)
        kill(first)
        second = start_producer(tmp_path, store, GROUP, "resume", "40", script="rzdurable.py",
                                label="b")
        wait_until(lambda: "restarted as" in worker.log(), 20, "the worker never followed it")
        time.sleep(12.0)  # the old instance's cached records come back with the next query series
        log = worker.log()
        print("\n".join(line for line in log.splitlines() if "restarted" in line or "forgotten" in line))
        assert log.count("restarted as") == 1
        wait_until(lambda: b"all done" in (tmp_path / "producer-b.log").read_bytes(), 60,
                   "the restarted producer never finished")
    finally:
        kill(first)
        if second is not None:
            kill(second)

"""Signals inside tasks, over real worker processes: a job process keeps the default signal
dispositions for the task and the programs it starts, leads a process group of its own (a
Ctrl-C to the worker's group does not reach it), and what a task started dies with its job
process: at a time limit, and when the worker itself is SIGKILLed (the reaper)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

import rztasks
from freelance_rz import JobTimeout

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]


def wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state first), or None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its new parent to reap it counts as gone)."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    except OSError:
        return []


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _grandchild(path: Path) -> int:
    """The pid of the `sleep 300` a task wrote to ``path``."""
    wait_until(path.exists, 30, "the task started its child")
    pid = int(path.read_text())
    assert _cmdline(pid) == ["sleep", "300"]
    return pid


def _kill_if_left(pid: int | None) -> None:
    if pid is not None and _alive(pid) and _cmdline(pid) == ["sleep", "300"]:
        os.kill(pid, signal.SIGKILL)


def test_a_task_can_terminate_the_program_it_started(make_producer, start_worker):
    """`Popen(["sleep", "30"]).terminate()` inside a task works: SIGTERM is not ignored."""
    producer = make_producer()
    start_worker("w1", "--slots", "1")
    assert producer.submit(rztasks.terminate_child).result(timeout=30) == -signal.SIGTERM


def test_job_processes_lead_their_own_group_and_pass_on_default_signals(make_producer, start_worker):
    """The job process is a process group of its own (not the worker's, which a terminal's
    Ctrl-C reaches), and a program it starts inherits no ignored or blocked signal."""
    producer = make_producer()
    worker = start_worker("w1", "--slots", "1")
    state = producer.submit(rztasks.signal_state).result(timeout=30)
    assert state["pgid"] == state["pid"] != os.getpgid(worker.pid)
    stop_signals = (1 << (signal.SIGINT - 1)) | (1 << (signal.SIGTERM - 1)) | (1 << (signal.SIGQUIT - 1))
    assert state["child_ignored"] & stop_signals == 0
    assert state["child_blocked"] == 0


def test_a_program_a_task_started_dies_with_its_sigkilled_worker(make_producer, start_worker, tmp_path):
    """Only the worker's main pid is SIGKILLed (not its group): its reaper kills the job
    process's group, so the task's `sleep 300` is gone within 10 s, and the reaper exits."""
    producer = make_producer(max_attempts=1)
    worker = start_worker("w1", "--slots", "1")
    path = tmp_path / "grandchild.pid"
    pid = None
    try:
        producer.submit(rztasks.spawn_grandchild, str(path))
        pid = _grandchild(path)
        reapers = [p for p in _children(worker.pid) if any(a.endswith("reaper.py") for a in _cmdline(p))]
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(10)
        wait_until(lambda: not _alive(pid), 10, "the task's child outlived its SIGKILLed worker")
        assert len(reapers) == 1
        wait_until(lambda: not _alive(reapers[0]), 10, "the reaper outlived its worker")
    finally:
        _kill_if_left(pid)


def test_a_timed_out_tasks_children_die_with_it(make_producer, start_worker, tmp_path):
    """At a job's time limit the worker kills its job process's whole group."""
    producer = make_producer()
    start_worker("w1", "--slots", "1")
    path = tmp_path / "grandchild.pid"
    pid = None
    try:
        future = producer.options(timeout_s=3).submit(rztasks.spawn_grandchild, str(path))
        pid = _grandchild(path)
        with pytest.raises(JobTimeout):
            future.result(timeout=30)
        wait_until(lambda: not _alive(pid), 10, "the timed-out task's child outlived it")
    finally:
        _kill_if_left(pid)

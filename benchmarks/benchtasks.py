"""Task module for the benchmarks (workers run with cwd = benchmarks/).

Every function here is also run inline by the PUSH/PULL baseline workers, so both systems
execute the same code. Tasks that take a ``key`` append one line per *execution* to the file
named by ``$BENCH_EXEC_LOG`` ("key worker started_at"), written when the task starts, so a job
killed mid-run and re-run elsewhere shows up as two executions (S4 duplicates).
"""

from __future__ import annotations

import os
import time

_log_fd: int | None = None


def _record(key: str) -> None:
    global _log_fd
    path = os.environ.get("BENCH_EXEC_LOG")
    if not path:
        return
    if _log_fd is None:
        _log_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_log_fd, f"{key} {os.environ.get('RZ_WORKER', '?')} {time.time():.6f}\n".encode())


def inc(x):
    """S1 / S6: the trivial job."""
    return x + 1


def sleep_job(key, seconds):
    """S2-S5: a job that takes ``seconds``; returns the worker that ran it."""
    _record(key)
    time.sleep(seconds)
    return os.environ.get("RZ_WORKER", "?")


def whoami(seconds=0.0):
    """Warm-up: which worker runs this (no execution record)."""
    time.sleep(seconds)
    return os.environ.get("RZ_WORKER", "?")


async def asleep(seconds):
    """IO: an I/O-bound job (an ``async def`` task)."""
    import asyncio

    await asyncio.sleep(seconds)
    return seconds


async def ainc(x):
    """S1 / S6 on the asyncio pool: the trivial job as a coroutine (a plain function there
    runs in the pool's threads, one hand-off more each way)."""
    return x + 1


def when_flaky(path, fails):
    """Issue 15 timing (benchmarks/when_timing.py): record this run's start in ``path``, and
    raise ConnectionRefusedError until ``fails`` runs are recorded."""
    with open(path, "a") as log:
        log.write(f"{time.time()!r}\n")
    with open(path) as log:
        runs = len(log.read().splitlines())
    if runs <= fails:
        raise ConnectionRefusedError(f"run {runs}")
    return runs


def when_span(path, delay_s=0.0):
    """Issue 15 timing: record this run's start and end in ``path`` (one line)."""
    started = time.time()
    time.sleep(delay_s)
    with open(path, "a") as log:
        log.write(f"{started!r} {time.time()!r}\n")
    return started

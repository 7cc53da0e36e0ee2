"""Tasks the lab's workers run (``--tasks freelance_rz.lab.tasks``). Each writes a
``started`` record when it begins and a ``finished`` record when it ends, in the job's own
process, so duplicate executions and crashes show in ``events.jsonl``."""

from __future__ import annotations

import os
import time

from .records import append_from_env


def work(key: str, seconds: float) -> str:
    """Sleep ``seconds`` (the GIL released), then return ``key``."""
    append_from_env("started", key=key, pid=os.getpid())
    time.sleep(seconds)
    append_from_env("finished", key=key, pid=os.getpid())
    return key


def spin(key: str, seconds: float) -> str:
    """Hold the GIL in a pure-Python loop for ``seconds``, then return ``key``."""
    append_from_env("started", key=key, pid=os.getpid())
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        n += 1
    append_from_env("finished", key=key, pid=os.getpid())
    return key


def crash(key: str, seconds: float = 0.0) -> None:
    """Kill the job's own process (``os._exit(3)``) after ``seconds``: a poison job."""
    append_from_env("started", key=key, pid=os.getpid())
    time.sleep(seconds)
    os._exit(3)

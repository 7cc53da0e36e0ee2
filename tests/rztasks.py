"""Task module the integration tests' workers run (started with cwd = tests/)."""

import os
import time
from os import system  # noqa: F401 - must NOT be runnable as "rztasks:system"


def add(a, b):
    return a + b


def echo(*args, **kwargs):
    return {"args": list(args), "kwargs": kwargs}


def fail(message):
    raise ValueError(message)


def whoami(delay_s=0.0):
    """Sleep, then say which worker ran this (RZ_WORKER is set per worker by the tests)."""
    started = time.time()
    time.sleep(delay_s)
    return {"worker": os.environ.get("RZ_WORKER", "?"), "started": started, "pid": os.getpid()}


def crash(code=3):
    os._exit(code)


def unencodable():
    return object()


def _private():
    return "never"


def mark(path, delay_s=0.0, spin=False):
    """Append this execution to ``path``, then sleep (or hold the GIL in a pure-Python loop)."""
    with open(path, "a") as log:
        log.write(f"{os.environ.get('RZ_WORKER', '?')} {os.getpid()}\n")
    deadline = time.monotonic() + delay_s
    if spin:
        n = 0
        while time.monotonic() < deadline:
            n += 1
    else:
        time.sleep(delay_s)
    return os.environ.get("RZ_WORKER", "?")


def steps(count, delay_s):
    """Report progress after each of ``count`` steps of ``delay_s`` seconds."""
    from freelance_rz import report_progress

    for step in range(1, count + 1):
        time.sleep(delay_s)
        report_progress(step, count, f"step {step}")
    return count


def blob(size):
    """``size`` bytes of result."""
    return b"x" * size


def terminate_child():
    """Start `sleep 30`, terminate it and return its exit status (-15 when SIGTERM works)."""
    import subprocess

    child = subprocess.Popen(["sleep", "30"])
    child.terminate()
    return child.wait(timeout=10)


def spawn_grandchild(path, hold_s=60.0):
    """Start `sleep 300` (a grandchild of the worker), write its pid to ``path``, then wait."""
    import subprocess

    child = subprocess.Popen(["sleep", "300"])
    with open(path + ".tmp", "w") as out:
        out.write(str(child.pid))
    os.replace(path + ".tmp", path)
    time.sleep(hold_s)
    return child.pid


def signal_state():
    """What a job process and a program it starts see of signals: the job's process group,
    and the ignored and blocked signal masks of a child (from /proc, as exec passed them)."""
    import subprocess

    status = subprocess.run(["cat", "/proc/self/status"], capture_output=True, text=True).stdout
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    return {
        "pid": os.getpid(), "pgid": os.getpgrp(),
        "child_ignored": int(fields["SigIgn"], 16), "child_blocked": int(fields["SigBlk"], 16),
    }


_calls = 0


def count_calls():
    """How many jobs this job process has run (module-level state), and its pid."""
    global _calls
    _calls += 1
    return {"pid": os.getpid(), "calls": _calls}


class Busy(Exception):
    """A custom error a retry policy names by string ("rztasks:Busy")."""


def flaky(path, fails, error="ConnectionRefusedError"):
    """Record this run's start (``time.time()``) in ``path``; raise ``error`` (a builtin, or
    "Busy") until ``fails`` runs are recorded, then return how many runs there were."""
    with open(path, "a") as log:
        log.write(f"{time.time()!r}\n")
    with open(path) as log:
        runs = len(log.read().splitlines())
    if runs <= fails:
        import builtins

        raise (Busy if error == "Busy" else getattr(builtins, error))(f"run {runs}")
    return runs


def retry_me(path, times, in_s=None):
    """Record this run's start in ``path``; raise Retry(in_s) for the first ``times`` runs."""
    from freelance_rz import Retry

    with open(path, "a") as log:
        log.write(f"{time.time()!r}\n")
    with open(path) as log:
        runs = len(log.read().splitlines())
    if runs <= times:
        raise Retry(in_s=in_s)
    return runs


def span(path, delay_s=0.0):
    """Record this run's start and end (``time.time()``) in ``path`` as one line."""
    started = time.time()
    time.sleep(delay_s)
    with open(path, "a") as log:
        log.write(f"{started!r} {time.time()!r} {os.environ.get('RZ_WORKER', '?')}\n")
    return started

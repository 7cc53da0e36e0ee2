"""Start and stop ``freelance-worker`` processes on this directory's ``tasks`` module.

The example scripts use it for ``--spawn-workers N``, so that they run on their own. Each
worker is started in its own session (its own process group) and stopped by that group id:
SIGTERM first (running jobs finish and deliver their results), SIGKILL after a grace period.
A worker's job processes end with it. Nothing is ever signalled by name. Not part of freelance_rz: a helper of the examples.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

WORKER_DIR = Path(__file__).resolve().parent  # workers run here, so `--tasks tasks` imports
STOP_GRACE_S = 10.0  # SIGTERM, then SIGKILL of the process group after this long


def worker_command() -> list[str]:
    """How to run ``freelance-worker``: the script next to this Python (a venv), else the one
    on PATH, else ``python -m freelance_rz.cli``."""
    beside = Path(sys.executable).parent / "freelance-worker"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("freelance-worker")
    if found:
        return [found]
    return [sys.executable, "-m", "freelance_rz.cli"]


@contextmanager
def spawned_workers(
    count: int, group: str, interfaces: Sequence[str], slots: int = 2, prefix: str = "w"
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Run ``count`` workers of ``group`` for the duration of a ``with`` block.

    Each is ``freelance-worker --discover --tasks tasks --group GROUP --interface IP ...``
    started in this directory, logging warnings and errors to this process's stderr.
    Leaving the block stops them (see the module docstring), also after an exception.
    """
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for n in range(1, count + 1):
            name = f"{prefix}{n}"
            cmd = [
                *worker_command(), "--discover", "--tasks", "tasks", "--group", group,
                "--slots", str(slots), "--name", name, "--log-level", "WARNING",
            ]
            for address in interfaces:
                cmd += ["--interface", address]
            proc = subprocess.Popen(
                cmd, cwd=WORKER_DIR, stdin=subprocess.DEVNULL, start_new_session=True
            )
            procs.append(proc)
            print(f"started worker {name} (pid {proc.pid}, group {group!r})", flush=True)
        yield procs
    finally:
        stop_workers(procs)


def stop_workers(procs: list[subprocess.Popen[bytes]], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM each worker's process group, wait up to ``grace_s``, then SIGKILL the group."""
    for proc in procs:
        if proc.poll() is None:
            _killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            # still running, so its pid (the group id) cannot have been reused yet
            print(f"worker pid {proc.pid} did not stop in {grace_s:g} s; killing it", flush=True)
            _killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass

"""Start and stop ``freelance-worker`` processes on this directory's ``tasks`` module.

The example scripts use it for ``--spawn-workers N``, so that they run on their own. Each
worker is started in its own session (its own process group) and stopped by that group id:
SIGTERM first (running jobs finish and deliver their results), SIGKILL after a grace period.
A worker's job processes end with it. Nothing is ever signalled by name. Not part of freelance_rz: a helper of the examples.
"""

from __future__ import annotations

import argparse
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


def example_args(argv: list[str] | None, doc: str, name: str) -> argparse.Namespace:
    """The options every example script takes: ``--spawn-workers N``, ``--group`` (default
    ``examples``; with ``--spawn-workers``, ``examples-NAME-PID``, a group of the run's own)
    and ``--interface`` (default: ``$FREELANCE_RZ_INTERFACES``, else 127.0.0.1)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument(
        "--spawn-workers", type=int, default=0, metavar="N",
        help="start N workers for this run and stop them at the end (default: use yours)",
    )
    parser.add_argument(
        "--group", help="producer group (default: 'examples'; with --spawn-workers, a group "
        "of this run's own)",
    )
    parser.add_argument(
        "--interface", action="append", metavar="IP",
        help="IPv4 address for mDNS (repeatable; default: $FREELANCE_RZ_INTERFACES, else "
        "127.0.0.1)",
    )
    args = parser.parse_args(argv)
    if args.group is None:
        args.group = f"examples-{name}-{os.getpid()}" if args.spawn_workers else "examples"
    if args.interface is None:
        env = os.environ.get("FREELANCE_RZ_INTERFACES", "")
        args.interface = [part.strip() for part in env.split(",") if part.strip()] or ["127.0.0.1"]
    return args


@contextmanager
def example_workers(args: argparse.Namespace) -> Iterator[None]:
    """The workers of an example run (from :func:`example_args`): spawned for the block with
    ``--spawn-workers``, else the user's own. SIGTERM unwinds like Ctrl-C, so spawned workers
    are stopped on the way out."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if args.spawn_workers:
        with spawned_workers(args.spawn_workers, args.group, args.interface):
            yield
    else:
        print(f"using your workers of group {args.group!r} (see examples/worker/README.md)")
        yield


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

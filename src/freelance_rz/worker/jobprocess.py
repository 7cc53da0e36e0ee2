"""The main of a job process (the child side of a worker's slot) and
:func:`report_progress`, which tasks call inside it.

A job process leads a process group of its own and keeps the default signal dispositions
(see :mod:`freelance_rz.worker.slots`), imports the worker's task modules once, then runs one
job at a time: it reads ``[job_id, payload]`` from its pipe, runs the call, and writes the
outcome back, in the pipe codec of :mod:`freelance_rz.core.payload`.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

from ..core import check as _check
from ..core import payload as pl

_PR_SET_PDEATHSIG = 1
# Blocked in the worker while it spawns a job process, unblocked by the job process once it has
# a process group of its own: a Ctrl-C to the worker's group in between never reaches it.
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
JOB_PROCESS_NAME = "freelance-job"
# A job process exits with this code when importing the main script started a worker again
# (no ``if __name__ == "__main__":``); the worker that spawned it explains.
UNGUARDED_MAIN_EXIT = 86


def main(conn: Connection, modules: list[str]) -> None:
    """Body of a job process: import the task modules, then run jobs until the pipe closes."""
    _die_with_parent()
    _own_process_group()
    from ..tasks import Allowlist

    try:
        allowlist = Allowlist(modules)
    except BaseException as exc:  # noqa: BLE001 - reported to the worker, which stops
        conn.send_bytes(pl.encode_from_job_process(pl.StartFailed(f"{type(exc).__name__}: {exc}")))
        return
    conn.send_bytes(pl.encode_from_job_process(pl.Ready()))
    global _progress_pipe
    _progress_pipe = conn
    while True:
        try:
            job_id, payload, traceparent = pl.decode_run(conn.recv_bytes())
        except EOFError:
            return
        if traceparent is None:
            done = _run(allowlist, payload)[0]
        else:  # in the worker's span of the job, a child of the producer's (the tracing extra)
            from ..tracing import traced_run

            call = functools.partial(_run, allowlist, payload)
            done = traced_run(traceparent, pl.peek_task(payload), job_id, call)
        conn.send_bytes(pl.encode_from_job_process(done))


def _run(allowlist: Any, payload: bytes) -> tuple[pl.Finished, str | None]:
    """Run one call; returns its outcome and, when it failed, ``"Type: message"``."""
    try:
        task, args, kwargs, _ = pl.unpack_call(payload)
        fn = allowlist.resolve(task)
        return pl.Finished(True, pl.pack_value(fn(*args, **kwargs))), None
    except BaseException as exc:  # noqa: BLE001 - every task error must travel (C7)
        error = pl.pack_exception(exc, traceback.format_exc())
        return pl.Finished(False, error), f"{type(exc).__name__}: {exc}"[:200]


_progress_pipe: Connection | None = None  # set in a job process
_progress_sent_at = 0.0
PROGRESS_EVERY_S = 0.1  # a job process sends progress at most this often (but always the last)


def report_progress(done: float, total: float | None = None, message: str = "") -> None:
    """Report the running job's progress, from inside a task: e.g. ``report_progress(3, 10,
    "resizing")``. It reaches the producer with the worker's next heartbeat (within a quarter
    of the lease), where :meth:`Producer.progress` and ``freelance-status`` show it. Calls more
    often than every 0.1 s are coalesced; outside a worker's job process it does nothing.

    Args:
        done: how much is done, a number >= 0 (an int or a float).
        total: how much there is to do, a number >= 0, or None when unknown.
        message: a short text (cut at 200 characters).

    Raises:
        TypeError: ``done`` or ``total`` is not a number (bools are refused), or ``message``
            is not a str.
        ValueError: ``done`` or ``total`` is negative, NaN, infinite or above 2**63 - 1.
    """
    global _progress_sent_at
    done = _check.number("done", done, min_=0, max_=_check.INT64_MAX)
    total = _check.number("total", total, min_=0, max_=_check.INT64_MAX, allow_none=True)
    message = _check.string("message", message)
    now = time.monotonic()
    finished = total is not None and done >= total
    if _progress_pipe is None or (now - _progress_sent_at < PROGRESS_EVERY_S and not finished):
        return
    _progress_sent_at = now
    _progress_pipe.send_bytes(pl.encode_from_job_process(pl.Progress(done, total, message[:200])))


def _own_process_group() -> None:
    """Lead a process group of its own, then restore the default signal dispositions.

    The worker decides when jobs stop (C6): a Ctrl-C in its terminal goes to the worker's
    process group, which this process has just left. The worker spawned it with SIGINT and
    SIGTERM blocked, so one sent to that group in between is pending here: it is discarded
    (ignoring a pending signal drops it) before they are unblocked. Nothing stays ignored or
    blocked, so programs a task starts get the defaults too (they are inherited across exec).
    """
    os.setpgid(0, 0)
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's default: KeyboardInterrupt
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)  # e.g. ignored by a shell's `worker &`


def _die_with_parent() -> None:
    """On Linux, ask the kernel to SIGKILL this process when its parent dies (prctl)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)
    except (OSError, AttributeError):
        pass

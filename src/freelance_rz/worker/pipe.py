"""A job process's end of its pipe to the worker, and :func:`report_progress`, which tasks
call inside a job process (it knows the calling thread's or asyncio task's job).

Imports only the standard library and the project's pure core: a job process is ready soon
after its interpreter starts.
"""

from __future__ import annotations

import contextvars
import os
import threading
import time
from collections import deque

from ..core import check as _check
from ..core import payload as pl

PROGRESS_EVERY_S = 0.1  # a job sends progress at most this often (but always the last)
_pipe: Pipe | None = None  # set in a job process
_run_id: contextvars.ContextVar[int] = contextvars.ContextVar("freelance_rz_run", default=0)
# (run id, when it last sent progress): a run id not the current one means never
_progress_at: contextvars.ContextVar[tuple[int, float]] = contextvars.ContextVar(
    "freelance_rz_progress_at", default=(0, 0.0)
)


class Pipe:
    """The job process's end of its pipe: whole frames read by one thread at a time
    (:meth:`read` blocks, :meth:`read_available` does one read for a caller that knows the
    descriptor is readable), whole frames written from any thread (:meth:`write`).

    Raises (from :meth:`write`):
        OSError: the worker has gone (the job process then exits).
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._reader = pl.FrameReader()
        self._bodies: deque[bytes] = deque()
        self._write_lock = threading.Lock()

    def _read_some(self) -> list[bytes] | None:
        try:
            data = os.read(self.fd, max(65536, self._reader.wanted))
        except OSError:
            return None
        return self._reader.feed(data) if data else None

    def read(self) -> bytes | None:
        """The next frame's body (blocking), or None when the worker closed the pipe."""
        while not self._bodies:
            bodies = self._read_some()
            if bodies is None:
                return None
            self._bodies.extend(bodies)
        return self._bodies.popleft()

    def read_available(self) -> list[bytes] | None:
        """One read: the frame bodies it completed (maybe none), or None at end of file."""
        return self._read_some()

    def write(self, frame: bytes) -> None:
        """Write one whole frame (frames from several threads never interleave)."""
        with self._write_lock:
            written = os.write(self.fd, frame)
            if written < len(frame):  # a large frame: the rest, as the worker reads
                view = memoryview(frame)[written:]
                while view:
                    view = view[os.write(self.fd, view):]


def attach(pipe: Pipe) -> None:
    """This process is a job process talking to its worker over ``pipe``."""
    global _pipe
    _pipe = pipe


def begin_run(run_id: int) -> None:
    """The current thread or asyncio task runs ``run_id`` (for :func:`report_progress`)."""
    _run_id.set(run_id)


def report_progress(done: float, total: float | None = None, message: str = "") -> None:
    """Report the running job's progress, from inside a task: e.g. ``report_progress(3, 10,
    "resizing")``. It reaches the producer with the worker's next heartbeat (within a quarter
    of the lease), where :meth:`Producer.progress` and ``freelance-status`` show it. Calls more
    often than every 0.1 s are coalesced; outside a worker's job process it does nothing.
    In the thread and asyncio pools it reports the job of the calling thread or task.

    Args:
        done: how much is done, a number >= 0 (an int or a float).
        total: how much there is to do, a number >= 0, or None when unknown.
        message: a short text (cut at 200 characters).

    Raises:
        TypeError: ``done`` or ``total`` is not a number (bools are refused), or ``message``
            is not a str.
        ValueError: ``done`` or ``total`` is negative, NaN, infinite or above 2**63 - 1.
    """
    done = _check.number("done", done, min_=0, max_=_check.INT64_MAX)
    total = _check.number("total", total, min_=0, max_=_check.INT64_MAX, allow_none=True)
    message = _check.string("message", message)
    run_id = _run_id.get()
    now = time.monotonic()
    finished = total is not None and done >= total
    last_run, last_at = _progress_at.get()
    if last_run != run_id:
        last_at = float("-inf")
    if _pipe is None or not run_id or (now - last_at < PROGRESS_EVERY_S and not finished):
        return
    _progress_at.set((run_id, now))
    _pipe.write(pl.encode_from_job_process(pl.Progress(run_id, done, total, message[:200])))

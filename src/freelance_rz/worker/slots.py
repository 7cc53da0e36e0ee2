"""How a job executes: one child process per slot, fed over a pipe, crash captured.

The worker's network loop never runs task code. Each slot owns a child process (started with
``spawn``, so it shares no threads or sockets with the worker) that imports the worker's task
modules once and then runs one job at a time. A job that hogs the GIL, hangs or kills its
interpreter therefore cannot silence the worker's heartbeats; a dead child is reported as a
``JobProcessDied`` outcome (``crashed``: the producer counts it as a lost attempt and offers
the job again, up to its ``max_attempts``) and replaced.

Signals: a job process keeps the default signal dispositions, for the task's code and for
every program it starts (``Popen(...).terminate()`` works, ``kill`` works). The worker decides
when a job stops by other means: each job process leads a process group of its own, so a
Ctrl-C in the worker's terminal (sent to the worker's group) never reaches it, and the worker
kills a job process's whole group when it aborts or replaces it (time limit, cancel, crash,
stop), so a task's children die with it. A :class:`Reaper` kills those groups when the worker
itself is killed.

Pipe messages are msgpack, never pickle: parent -> child ``[job_id, payload]``; child ->
parent one byte (1 ok, 0 error) followed by the msgpack result or error payload.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.spawn
import os
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import msgpack

from ..core import check as _check
from ..core import payload as pl

log = logging.getLogger("freelance_rz.runner")

_SPAWN = multiprocessing.get_context("spawn")
_PR_SET_PDEATHSIG = 1
# Blocked in the worker while it spawns a job process, unblocked by the job process once it has
# a process group of its own: a Ctrl-C to the worker's group in between never reaches it.
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
_JOB_PROCESS_NAME = "freelance-job"
# A job process exits with this code when importing the main script started a worker again
# (no ``if __name__ == "__main__":``); the worker that spawned it explains.
_UNGUARDED_MAIN_EXIT = 86


def refuse_unguarded_main() -> None:
    """Refuse to start a worker while a spawned process imports the main script.

    Job processes are started with multiprocessing's ``spawn``, which imports the main script
    again in each one (as ``__mp_main__``). A script that starts a worker at module level,
    not under ``if __name__ == "__main__":``, would start one in every job process. Called at
    the start of :meth:`Worker.run`.

    Raises:
        SystemExit: in a worker's own job process (code ``_UNGUARDED_MAIN_EXIT``; the worker
            that started it raises the RuntimeError below, once).
        RuntimeError: in any other spawned process, saying what to add.
    """
    process = multiprocessing.current_process()
    if not getattr(process, "_inheriting", False):  # set by spawn while it imports the script
        return
    if process.name == _JOB_PROCESS_NAME:
        raise SystemExit(_UNGUARDED_MAIN_EXIT)
    raise RuntimeError(_unguarded_main_message())


def _unguarded_main_message() -> str:
    main = sys.modules.get("__main__")
    script = getattr(main, "__file__", None) or "the main script"
    return (
        f"{script} starts a Worker when it is imported: a worker's job processes are started "
        "with multiprocessing's 'spawn', which imports the main script again in each of them. "
        'Start the worker under `if __name__ == "__main__":`, e.g.\n\n'
        '    if __name__ == "__main__":\n        Worker(["myapp.tasks"], discover=True).run()\n'
    )


class Reaper:
    """A worker's reaper process (:mod:`freelance_rz.worker.reaper`): told the process group of each
    job process, it SIGKILLs the groups still alive when the worker exits or is killed, so
    that programs a task started never outlive their worker.

    :meth:`watch` and :meth:`forget` never raise: without a reaper (it could not start, or it
    died) job processes still die with their worker (``PR_SET_PDEATHSIG``); only their
    children could outlive it.
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the reaper process (in a session of its own: Ctrl-C does not reach it). One
        that cannot start is logged as a warning; the worker runs without it."""
        from . import reaper as _reaper

        try:
            self._proc = subprocess.Popen(
                [multiprocessing.spawn.get_executable(), "-I", "-S", os.path.abspath(_reaper.__file__)],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True,
            )
        except OSError as exc:
            log.warning("cannot start the worker's reaper process (%s): programs tasks start "
                        "may outlive a killed worker", exc)

    def watch(self, pgid: int) -> None:
        """Kill process group ``pgid`` if the worker dies before :meth:`forget`."""
        self._send(b"+%d\n" % pgid)

    def forget(self, pgid: int) -> None:
        """The worker has killed process group ``pgid`` itself."""
        self._send(b"-%d\n" % pgid)

    def _send(self, line: bytes) -> None:
        if self._proc is None or self._proc.stdin is None:
            return
        try:
            self._proc.stdin.write(line)
            self._proc.stdin.flush()
        except OSError:  # the reaper died: log once, carry on without it
            log.warning("the worker's reaper process exited (code %s)", self._proc.poll())
            self._proc = None

    def close(self) -> None:
        """Close the reaper's stdin (it kills the groups still watched) and wait for it to
        exit. Safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass(frozen=True, slots=True)
class Outcome:
    """A finished job: ``ok`` and its payload (msgpack value, or error map when not ok).
    ``crashed``: the job's process died (a lost attempt, retried, not a task error)."""

    job_id: int
    ok: bool
    payload: bytes
    crashed: bool = False


@dataclass(frozen=True, slots=True)
class Progress:
    """What a running job reported with :func:`report_progress`."""

    job_id: int
    done: float
    total: float | None
    message: str


class JobProcess:
    """A slot's child process.

    Args:
        modules: the worker's task modules (the allowlist), imported by the child at start.
        reaper: told the process group of each child started, and of each one killed.

    Raises (from :meth:`start`):
        OSError: the child could not be started.
    """

    def __init__(self, modules: list[str], reaper: Reaper | None = None) -> None:
        self.modules = modules
        self._reaper = reaper
        self.job_id: int | None = None  # the job running now, if any
        self.ready = False  # the child has imported the task modules
        self._conn: Connection | None = None
        self._process: Any = None

    def start(self) -> None:
        """Start the child; it is :attr:`ready` once it has imported the task modules."""
        parent, child = _SPAWN.Pipe(duplex=True)
        process = _SPAWN.Process(
            target=_child_main, args=(child, self.modules), name=_JOB_PROCESS_NAME, daemon=True
        )
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            process.start()
        except BaseException:
            parent.close()
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            child.close()
        self._process = process
        if self._reaper is not None and process.pid is not None:
            self._reaper.watch(process.pid)  # its group id, once it has called setpgid
        self._conn = parent
        self.ready = False

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Block until the child has imported the task modules.

        Raises:
            RuntimeError: the child failed to import them, died or did not answer in time.
        """
        assert self._conn is not None
        if not self._conn.poll(timeout_s):
            raise RuntimeError(f"job process not ready after {timeout_s} s")
        self.take_outcome()

    def fileno(self) -> int:
        assert self._conn is not None
        return self._conn.fileno()

    @property
    def free(self) -> bool:
        return self.ready and self.job_id is None

    def run(self, job_id: int, payload: bytes) -> None:
        """Start a job (the slot must be free). Its outcome arrives via :meth:`take_outcome`
        when :meth:`fileno` is readable."""
        assert self._conn is not None and self.free
        self.job_id = job_id
        try:
            self._conn.send_bytes(msgpack.packb([job_id, payload], use_bin_type=True))
        except OSError:
            pass  # the child is dead: take_outcome reports it when the pipe shows EOF

    def take_outcome(self) -> Outcome | Progress | None:
        """Read what the child sent (call when :meth:`fileno` is readable): the finished
        job's outcome, the running job's progress, or None for the child's "ready" message.

        A dead child yields a ``crashed`` ``JobProcessDied`` outcome for its job and is
        replaced.

        Raises:
            RuntimeError: a starting child could not import the task modules.
        """
        assert self._conn is not None
        try:
            data = self._conn.recv_bytes()
        except (EOFError, OSError):
            job_id, self.job_id = self.job_id, None
            code = self._reap()
            if not self.ready:
                if self._process.exitcode == _UNGUARDED_MAIN_EXIT:
                    raise RuntimeError(_unguarded_main_message()) from None
                raise RuntimeError(f"job process {code} while starting") from None
            self.start()
            if job_id is None:
                log.warning("idle job process %s; replaced", code)
                return None
            log.warning("job %d: job process %s; replaced", job_id, code)
            message = f"the job's process {code}"
            return Outcome(job_id, False, pl.pack_error("JobProcessDied", message, ""), crashed=True)
        kind, body = data[:1], data[1:]
        if kind == b"P" and self.job_id is not None:
            done, total, message = msgpack.unpackb(body)
            return Progress(self.job_id, done, total, message)
        job_id, self.job_id = self.job_id, None
        if not self.ready:
            if kind != b"R":
                raise RuntimeError(f"job process could not start: {body.decode(errors='replace')}")
            self.ready = True
            return None
        if job_id is None:  # cannot happen with a well-behaved child
            log.error("job process sent an outcome while idle; dropped")
            return None
        return Outcome(job_id, kind == b"\x01", body)

    def abort(self) -> None:
        """Kill the running job (its outcome is dropped) and start a fresh child."""
        self.job_id = None
        self._reap(kill=True)
        self.start()

    def close(self) -> None:
        """Kill the child. Safe to call twice."""
        if self._process is not None:
            self._reap(kill=True)
            self._process = None

    def _reap(self, kill: bool = False) -> str:
        """Kill the child's process group (the child, when ``kill``, and whatever its tasks
        started), join the child and close the pipe. Returns how the child ended."""
        process = self._process
        # The group first, before the child is joined: until then its pid (the group's id)
        # cannot be reused. A child that has not made its group yet has no children either.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            if kill and process.is_alive():
                process.kill()
        process.join(timeout=5)
        if self._reaper is not None and process.exitcode is not None:
            self._reaper.forget(process.pid)
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        code = process.exitcode
        if code is None:
            return "did not exit"
        if code < 0:
            return f"was killed by signal {signal.Signals(-code).name}"
        return f"exited with code {code}"


def _child_main(conn: Connection, modules: list[str]) -> None:
    """Body of a job process: import the task modules, then run jobs until the pipe closes."""
    _die_with_parent()
    _own_process_group()
    from ..tasks import Allowlist

    try:
        allowlist = Allowlist(modules)
    except BaseException as exc:  # noqa: BLE001 - reported to the worker, which stops
        conn.send_bytes(b"E" + f"{type(exc).__name__}: {exc}".encode())
        return
    conn.send_bytes(b"R")
    global _progress_pipe
    _progress_pipe = conn
    while True:
        try:
            job_id, payload = msgpack.unpackb(conn.recv_bytes())
        except EOFError:
            return
        try:
            task, args, kwargs, _ = pl.unpack_call(payload)
            fn = allowlist.resolve(task)
            out = b"\x01" + pl.pack_value(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - every task error must travel (C7)
            out = b"\x00" + pl.pack_error(
                type(exc).__name__, str(exc), traceback.format_exc()
            )
        conn.send_bytes(out)


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
    _progress_pipe.send_bytes(b"P" + msgpack.packb([done, total, message[:200]]))


def _own_process_group() -> None:
    """Lead a process group of its own, then restore the default signal dispositions.

    The worker decides when jobs stop (C6): a Ctrl-C in its terminal goes to the worker's
    process group, which this process has just left. The worker spawned it with SIGINT and
    SIGTERM blocked, so one sent to that group in between is pending here: it is discarded
    (ignoring a pending signal drops it) before they are unblocked. Nothing stays ignored or
    blocked, so programs a task starts get the defaults too (they are inherited across exec).
    """
    os.setpgid(0, 0)
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
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

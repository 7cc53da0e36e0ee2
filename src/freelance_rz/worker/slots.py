"""How a job executes, seen from the worker: job processes fed over a pipe, crash captured.

The worker's network loop never runs task code. Jobs run in job processes (started as fresh
interpreters, ``python -c``, so they share no threads or sockets with the worker, and they
do not import the worker's main script), which set themselves up once (task modules
imported, ``--init`` run) and then run jobs: one at a time in the ``process`` pool (a process
per slot), or up to ``--slots`` at once in one process in the ``thread`` and ``asyncio``
pools (:mod:`freelance_rz.worker.pool` decides which process runs which slot). A job that
hogs the GIL, hangs or kills its interpreter therefore cannot silence the worker's heartbeats;
a dead process is reported as :class:`Died` and replaced.

Signals: a job process keeps the default signal dispositions, for the task's code and for
every program it starts (``Popen(...).terminate()`` works, ``kill`` works). The worker decides
when a job stops by other means: each job process leads a process group of its own, so a
Ctrl-C in the worker's terminal (sent to the worker's group) never reaches it, and the worker
kills a job process's whole group when it aborts or replaces it (time limit, cancel, crash,
recycling, stop), so a task's children die with it. A :class:`Reaper` kills those groups when
the worker itself is killed.

Pipe messages are msgpack, never pickle, in the pipe codec of :mod:`freelance_rz.core.payload`;
the child's side is :mod:`freelance_rz.worker.jobprocess`. A :class:`Slot` holds the job it
runs: the one place a running job's state lives on the worker (its lease is booked in the
producer's :class:`~freelance_rz.core.session.Session`).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from ..core import payload as pl
from .jobprocess import ENTRY, STOP_SIGNALS

log = logging.getLogger("freelance_rz.runner")

MAX_READ = 1 << 22  # bytes read from a job process's pipe at once, at most


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
                [sys.executable, "-I", "-S", os.path.abspath(_reaper.__file__)],
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
class Died:
    """A job process ended (how: ``"was killed by signal SIGSEGV"``, ``"exited with code 3"``)."""

    how: str


class JobProcess:
    """A job process and the worker's end of its pipe (a stream socket pair).

    Args:
        setup: what the child sets itself up with (task modules, ``--init``, pool, slots,
            ``sys.path``); sent as its first frame.
        reaper: told the process group of each child started, and of each one killed.

    Raises (from :meth:`start`):
        OSError: the child could not be started.

    ``running`` maps the run ids the child runs to their slots and ``lane`` is the lane of the
    pool it serves (:mod:`~freelance_rz.worker.pool` keeps both); ``jobs`` counts the jobs it
    was handed.
    """

    def __init__(self, setup: pl.Setup, reaper: Reaper | None = None) -> None:
        self.setup = setup
        self._reaper = reaper
        self.ready = False  # the child has set itself up
        self.running: dict[int, Any] = {}  # run id -> Slot
        self.jobs = 0
        self.lane = 0  # the pool's lane it serves
        self.fd = -1
        self._sock: socket.socket | None = None
        self._popen: subprocess.Popen[bytes] | _Forked | None = None
        self._reader = pl.FrameReader()

    def start(self, fork: bool = False) -> None:
        """Start the child and send it its set-up; it is :attr:`ready` once it has answered.

        ``fork``: fork this process instead of starting a fresh interpreter, which saves the
        interpreter's start and the imports (a job process is ready sooner). Only safe while
        this process runs no other thread; the caller checks (the worker does it for its
        first job processes, before it starts any thread; replacements are always fresh)."""
        parent, child = socket.socketpair()
        # Blocked until the child has left the worker's process group (it unblocks them).
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            self._popen = _fork(child.fileno(), parent.fileno()) if fork else subprocess.Popen(
                [sys.executable, *subprocess._args_from_interpreter_flags(),  # type: ignore[attr-defined]
                 "-c", ENTRY, str(child.fileno())],
                pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL,
            )
        except BaseException:
            parent.close()
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            child.close()
        if self._reaper is not None:
            self._reaper.watch(self._popen.pid)  # its group id, once it has called setpgid
        self._sock = parent
        self.fd = parent.fileno()
        self._send(pl.encode_to_job_process(self.setup))

    @property
    def pid(self) -> int:
        assert self._popen is not None
        return self._popen.pid

    def _send(self, frame: bytes) -> None:
        assert self._sock is not None
        try:
            self._sock.sendall(frame)
        except OSError:
            pass  # the child is dead: take() reports it when the pipe shows EOF

    def run(self, run_id: int, payload: bytes, traceparent: str | None = None, job_id: int = 0) -> None:
        """Hand the child a job (call only when it is ready and has a free thread);
        ``traceparent``: the trace context the JOB carried, if any (the job runs in a span,
        ``job_id``, the producer's, among its attributes)."""
        self.jobs += 1
        self._send(pl.encode_run(run_id, payload, traceparent, job_id))

    def cancel(self, run_id: int) -> None:
        """Ask the child to stop run ``run_id`` (thread and asyncio pools)."""
        self._send(pl.encode_to_job_process(pl.Cancel(run_id)))

    def take(self) -> list[pl.FromJobProcess] | Died:
        """Read what the child sent (call when :attr:`fd` is readable): its messages, maybe
        none yet (a frame arrives in parts), or :class:`Died` (its pipe closed: the child is
        reaped and its pipe closed)."""
        assert self._sock is not None
        try:
            data = self._sock.recv(min(max(65536, self._reader.wanted), MAX_READ), socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:  # e.g. ECONNRESET
            data = b""
        if not data:
            return Died(self._reap())
        return [pl.decode_from_job_process(body) for body in self._reader.feed(data)]

    def rss_bytes(self) -> int | None:
        """The child's resident memory, in bytes (Linux ``/proc``), or None when unknown."""
        try:
            with open(f"/proc/{self.pid}/statm", "rb") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None

    def close(self) -> str:
        """Kill the child (and whatever its tasks started), reap it and close the pipe.
        Returns how it ended. Safe to call twice."""
        if self._popen is None:
            return "was closed"
        return self._reap()

    def _reap(self) -> str:
        """Kill the child's process group, join the child and close the pipe. Returns how
        the child ended."""
        popen, self._popen = self._popen, None
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        if popen is None:
            return "was closed"
        # The group first, before the child is joined: until then its pid (the group's id)
        # cannot be reused. A child that has not made its group yet has no children either.
        try:
            os.killpg(popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            if popen.poll() is None:
                popen.kill()
        try:
            code = popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "did not exit"
        if self._reaper is not None:
            self._reaper.forget(popen.pid)
        if code < 0:
            return f"was killed by signal {signal.Signals(-code).name}"
        return f"exited with code {code}"


class _Forked:
    """A forked job process, with the part of ``Popen``'s interface the worker uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"job process {self.pid}", timeout)
            time.sleep(0.005)
        assert self.returncode is not None
        return self.returncode


def _fork(child_fd: int, parent_fd: int) -> _Forked:
    """Fork a job process running :func:`jobprocess.main` on ``child_fd``; it keeps no other
    descriptor of the worker's but standard input, output and error (stdin: /dev/null)."""
    pid = os.fork()
    if pid:
        return _Forked(pid)
    try:  # the child: never returns into the worker's code
        os.close(parent_fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.closerange(3, child_fd)
        os.closerange(child_fd + 1, max(child_fd + 1, os.sysconf("SC_OPEN_MAX")))
        logging.root.handlers.clear()  # as in a fresh interpreter: tasks' logging unconfigured
        logging.root.setLevel(logging.WARNING)
        from . import jobprocess

        jobprocess.main(child_fd)
    finally:
        os._exit(0)


@dataclass(slots=True)
class RunningJob:
    """A job a slot runs: the producer's session it came from (its endpoint), the lease, and
    what the JOB said. ``deadline``: its time limit (monotonic seconds), if it has one;
    ``progress``: reported since the last BEAT, not yet sent; ``resources``: what it holds
    of the worker's resources until it ends (or, cancelled, until its run has stopped);
    ``run_id``: its worker-local id on the pipe; ``proc``: the job process running it."""

    endpoint: str
    job_id: int
    lease_id: int
    lease_ms: int
    deadline: float | None = None
    timeout_ms: int = 0
    max_result: int = 0  # bytes of result payload the producer takes
    progress: tuple[float, float | None, str] | None = None
    task: str = "?"  # its task's name (for metrics and logs)
    traceparent: str | None = None  # the W3C trace context the JOB carried
    resources: tuple[tuple[str, float], ...] = ()  # what it holds while it runs (its JOB's)
    run_id: int = 0
    proc: JobProcess | None = None


@dataclass(slots=True)
class Stuck:
    """A cancelled run whose thread has not stopped yet: the slot stays busy until it does,
    or until ``deadline`` (monotonic seconds), when its process is replaced. It still holds
    ``resources`` (its job's) until then."""

    run_id: int
    proc: JobProcess
    deadline: float
    resources: tuple[tuple[str, float], ...] = ()


class Slot:
    """One slot of a worker: the job it runs (None when idle), in lane ``lane`` of its pool."""

    __slots__ = ("index", "lane", "job", "stuck")

    def __init__(self, index: int, lane: int) -> None:
        self.index = index
        self.lane = lane
        self.job: RunningJob | None = None
        self.stuck: Stuck | None = None


__all__ = ["Died", "JobProcess", "Reaper", "RunningJob", "Slot", "Stuck"]

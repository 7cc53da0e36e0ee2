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

Pipe messages are msgpack, never pickle, in the pipe codec of :mod:`freelance_rz.core.payload`;
the child's side is :mod:`freelance_rz.worker.jobprocess`. A :class:`Slot` is one job process
and the job it runs: the one place a running job's state lives on the worker (its lease is
booked in the producer's :class:`~freelance_rz.core.session.Session`).
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.spawn
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from ..core import payload as pl
from ..core.session import Outcome
from . import jobprocess
from .jobprocess import JOB_PROCESS_NAME, STOP_SIGNALS, UNGUARDED_MAIN_EXIT, report_progress

log = logging.getLogger("freelance_rz.runner")

_SPAWN = multiprocessing.get_context("spawn")


def refuse_unguarded_main() -> None:
    """Refuse to start a worker while a spawned process imports the main script.

    Job processes are started with multiprocessing's ``spawn``, which imports the main script
    again in each one (as ``__mp_main__``). A script that starts a worker at module level,
    not under ``if __name__ == "__main__":``, would start one in every job process. Called at
    the start of :meth:`Worker.run`.

    Raises:
        SystemExit: in a worker's own job process (code ``UNGUARDED_MAIN_EXIT``; the worker
            that started it raises the RuntimeError below, once).
        RuntimeError: in any other spawned process, saying what to add.
    """
    process = multiprocessing.current_process()
    if not getattr(process, "_inheriting", False):  # set by spawn while it imports the script
        return
    if process.name == JOB_PROCESS_NAME:
        raise SystemExit(UNGUARDED_MAIN_EXIT)
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
class Died:
    """A job process ended (how: ``"was killed by signal SIGSEGV"``, ``"exited with code 3"``)."""

    how: str


class JobProcess:
    """A slot's child process and its pipe.

    Args:
        modules: the worker's task modules (the allowlist), imported by the child at start.
        reaper: told the process group of each child started, and of each one killed.

    Raises (from :meth:`start`):
        OSError: the child could not be started.
    """

    def __init__(self, modules: list[str], reaper: Reaper | None = None) -> None:
        self.modules = modules
        self._reaper = reaper
        self.ready = False  # the child has imported the task modules
        self.restarts = 0  # children started after the first (a crash, a kill, an abort)
        self._conn: Connection | None = None
        self._process: Any = None

    def start(self) -> None:
        """Start the child; it is :attr:`ready` once it has imported the task modules."""
        parent, child = _SPAWN.Pipe(duplex=True)
        process = _SPAWN.Process(
            target=jobprocess.main, args=(child, self.modules), name=JOB_PROCESS_NAME, daemon=True
        )
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            process.start()
        except BaseException:
            parent.close()
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            child.close()
        if self._process is not None:
            self.restarts += 1
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
        self.take()

    def fileno(self) -> int:
        assert self._conn is not None
        return self._conn.fileno()

    def send(self, job_id: int, payload: bytes, traceparent: str | None = None) -> None:
        """Hand the child a job (call only when ready and idle); ``traceparent``: the trace
        context the JOB carried, if any."""
        assert self._conn is not None and self.ready
        try:
            self._conn.send_bytes(pl.encode_run(job_id, payload, traceparent))
        except OSError:
            pass  # the child is dead: take() reports it when the pipe shows EOF

    def take(self) -> pl.Progress | pl.Finished | Died | None:
        """Read what the child sent (call when :meth:`fileno` is readable): a job's
        progress or outcome, :class:`Died` (the child is replaced at once), or None (it is
        ready).

        Raises:
            RuntimeError: a starting child could not import the task modules, or died.
        """
        assert self._conn is not None
        try:
            data = self._conn.recv_bytes()
        except (EOFError, OSError):
            how = self._reap()
            if not self.ready:
                if self._process.exitcode == UNGUARDED_MAIN_EXIT:
                    raise RuntimeError(_unguarded_main_message()) from None
                raise RuntimeError(f"job process {how} while starting") from None
            self.start()
            return Died(how)
        msg = pl.decode_from_job_process(data)
        if isinstance(msg, pl.StartFailed):
            raise RuntimeError(f"job process could not start: {msg.message}")
        if isinstance(msg, pl.Ready):
            self.ready = True
            return None
        return msg

    def abort(self) -> None:
        """Kill the child (and what its task started) and start a fresh one."""
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


@dataclass(slots=True)
class RunningJob:
    """A job a slot runs: the producer's session it came from (its endpoint), the lease, and
    what the JOB said. ``deadline``: its time limit (monotonic seconds), if it has one;
    ``progress``: reported since the last BEAT, not yet sent; ``resources``: what it holds
    of the worker's resources until it ends."""

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


class Slot:
    """One slot of a worker: a job process and the job it runs (None when idle)."""

    def __init__(self, index: int, modules: list[str], reaper: Reaper | None) -> None:
        self.index = index
        self.proc = JobProcess(modules, reaper)
        self.job: RunningJob | None = None

    @property
    def free(self) -> bool:
        return self.proc.ready and self.job is None

    def run(self, job: RunningJob, payload: bytes) -> None:
        """Start ``job`` (the slot must be free)."""
        assert self.free
        self.job = job
        self.proc.send(job.job_id, payload, job.traceparent)

    def take(self) -> tuple[RunningJob, Outcome] | None:
        """Read what the job process sent: a finished job and its outcome (a died process
        gives a ``crashed`` ``JobProcessDied`` outcome), or None (progress, which is kept on
        the running job, or the process is ready)."""
        msg = self.proc.take()
        if msg is None:
            return None
        if isinstance(msg, pl.Progress):
            if self.job is not None:
                self.job.progress = (msg.done, msg.total, msg.message)
            return None
        job, self.job = self.job, None
        if job is None:
            if isinstance(msg, Died):
                log.warning("idle job process %s; replaced", msg.how)
            else:  # cannot happen with a well-behaved child
                log.error("job process sent an outcome while idle; dropped")
            return None
        if isinstance(msg, Died):
            log.warning("job %d: job process %s; replaced", job.job_id, msg.how,
                        extra={"job_id": job.job_id, "task": job.task})
            error = pl.pack_error("JobProcessDied", f"the job's process {msg.how}", "")
            return job, Outcome(job.job_id, False, error, crashed=True)
        return job, Outcome(job.job_id, msg.ok, msg.payload)

    def abort(self) -> RunningJob | None:
        """Kill the running job (its outcome is dropped) and give the slot a fresh process.
        Returns the job it ran."""
        job, self.job = self.job, None
        self.proc.abort()
        return job


__all__ = ["Reaper", "RunningJob", "Slot", "refuse_unguarded_main", "report_progress"]

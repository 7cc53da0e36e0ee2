"""How a job process runs its jobs, one runner per pool (``--pool``):

- ``process`` (:class:`SerialRunner`): one job at a time, on the main thread. An ``async
  def`` task runs to completion on the process's event loop (one loop, kept between jobs).
  A cancel is never sent: the worker kills the process instead.
- ``thread`` (:class:`ThreadRunner`): up to ``slots`` jobs at once, one per thread. The
  threads take turns reading the pipe (leader/followers: the thread that reads a job runs it
  while the next idle thread reads), so a job starts without a hand-off between threads;
  there is one thread more than slots, so a cancel is read even while every slot is busy.
  An ``async def`` task runs on its thread's own event loop.
- ``asyncio`` (:class:`AsyncioRunner`): one event loop on the main thread reads the pipe;
  ``async def`` tasks run on it concurrently, up to ``slots`` at once; plain functions run in
  its default executor (a pool of ``slots`` threads).

Cancelling (a time limit or ``Future.cancel()``; thread and asyncio pools): an asyncio task
is cancelled (``asyncio.CancelledError`` inside it); a task running on a thread gets
:class:`JobCancelled` raised inside it (``PyThreadState_SetAsyncExc``), which Python delivers
at the thread's next bytecode: not while it blocks in C (``time.sleep``, a socket read). A
task that does not stop keeps its slot busy; the worker replaces the whole process after a
grace period (:data:`~freelance_rz.worker.pool.CANCEL_GRACE_S`), see
:mod:`freelance_rz.worker.pool`. Either way the job ends with an error outcome, which the
worker does not send (it has answered the producer already).

Tracing: a job whose JOB carried a ``traceparent`` (a ``b"T"`` frame) runs inside the
worker's span of it (:func:`freelance_rz.tracing.job_span`), current where the task runs: the
main thread, the slot's thread (an ``async def`` task on it included), the job's asyncio
task, or, for a plain function on the asyncio pool, the executor thread (it runs in a copy of
the task's context).
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import inspect
import threading
import traceback
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial
from typing import Any

from ..core import payload as pl
from ..tasks import Allowlist
from .pipe import Pipe, begin_run


class JobCancelled(BaseException):
    """Raised inside a task's thread when its job was cancelled or ran past its time limit
    (thread and asyncio pools). A BaseException, like KeyboardInterrupt: ``except Exception``
    in a task does not swallow it, ``finally`` blocks run."""


_PLAIN = frozenset({int, float, str, bytes, bool, type(None), list, dict})  # never awaitable


def _error(exc: BaseException) -> bytes:
    """The error payload of ``exc`` (call inside its ``except`` block: the traceback).

    Never raises for what a task's exception does: a ``__str__`` that raises gives a message
    saying so, a traceback that cannot be formatted (``__notes__`` that raise) gives one line
    saying why, and text msgpack cannot encode (lone surrogates) is backslash-escaped; else
    the job's process would die and the job be reported lost instead of failed (C7). It
    carries the class's MRO names (``types``) and a :class:`~freelance_rz.Retry`'s delay
    (``retry_in_ms``) for the producer's retry rule (issue 15), each left out when it raises."""
    kind = type(exc).__name__
    try:
        message = str(exc)
    except BaseException as err:  # noqa: BLE001 - the task's own __str__
        message = f"(str() of this {kind} raised {type(err).__name__})"
    try:
        trace = traceback.format_exc()
    except BaseException as err:  # noqa: BLE001 - e.g. the task's own __notes__
        trace = f"(the traceback of this {kind} could not be formatted: {type(err).__name__})"
    try:  # a metaclass or a retry_in_s property of the task's own may raise too
        types: list[str] | None = [_utf8(name) for name in pl.error_types(exc)]
    except BaseException:  # noqa: BLE001 - then the policy matches by class name only
        types = None
    try:
        retry_in_ms = pl.retry_in_ms(exc)
    except BaseException:  # noqa: BLE001 - then the backoff applies
        retry_in_ms = None
    return pl.pack_error(_utf8(kind), _utf8(message), _utf8(trace), types, retry_in_ms)


def _utf8(text: str) -> str:
    """``text`` with what UTF-8 cannot encode (lone surrogates) backslash-escaped."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _failure(frame: bytes) -> str | None:
    """What failed in a run's outcome frame (``"ValueError: bad input"``), None when it
    succeeded (for its span)."""
    if frame[pl.FRAME_HEADER:pl.FRAME_HEADER + 1] != b"X":
        return None
    kind, message, _ = pl.unpack_error(frame[pl.FRAME_HEADER + 9:])
    return f"{kind}: {message}"[:200]


def _untraced(error: str | None) -> None:
    """``done`` of a run without a span."""


def _span(run: pl.Run) -> AbstractContextManager[Callable[[str | None], None]]:
    """The worker's span of ``run`` when its JOB carried a trace context (see
    :func:`freelance_rz.tracing.job_span`), else nothing; yields ``done(error)``."""
    if run.traceparent is None:
        return contextlib.nullcontext(_untraced)
    from ..tracing import job_span

    return job_span(run.traceparent, pl.peek_task(run.payload), run.job_id)


class Runner:
    """What every runner does: resolve a call (tasks resolved once, then cached), run
    ``--init``, encode outcomes. Subclasses serve the pipe.

    Args:
        pipe: the job process's end of its pipe.
        modules: the worker's task modules (imported here: ImportError propagates).
        slots: the jobs it may run at once.
    """

    def __init__(self, pipe: Pipe, modules: list[str], slots: int) -> None:
        self.pipe = pipe
        self.allowlist = Allowlist(modules)
        self.slots = slots
        self._resolved: dict[str, Callable[..., Any]] = {}
        self._loop: Any = None  # an asyncio event loop, made when first needed

    def call(self, payload: bytes) -> tuple[Callable[..., Any], list[Any], dict[str, Any]]:
        """The function, args and kwargs of a call payload.

        Raises:
            ProtocolError: a malformed payload. TaskNotAllowed: not in the allowlist.
        """
        task, args, kwargs, _ = pl.unpack_call(payload)
        fn = self._resolved.get(task)
        if fn is None:
            fn = self._resolved[task] = self.allowlist.resolve(task)
        return fn, args, kwargs

    def loop(self) -> Any:
        """This runner's event loop (for ``async def`` tasks and an ``async def`` init)."""
        if self._loop is None:
            import asyncio

            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
        return self._loop

    def start(self, init: Callable[[], Any] | None) -> None:
        """Run the ``--init`` function (if any) once, before the first job; an ``async def``
        one runs on :meth:`loop`. Its exception propagates."""
        if init is not None:
            value = init()
            if inspect.isawaitable(value):
                self.loop().run_until_complete(value)

    def serve(self) -> None:
        raise NotImplementedError

    def _outcome(self, run_id: int, payload: bytes) -> bytes:
        """Run one job on this thread; its outcome's frame (an awaitable it returns is run
        to completion by :meth:`_await`)."""
        begin_run(run_id)
        try:
            fn, args, kwargs = self.call(payload)
            value = fn(*args, **kwargs)
            if type(value) not in _PLAIN and inspect.isawaitable(value):
                value = self._await(run_id, value)
            return pl.encode_finished(run_id, True, pl.pack_value(value))
        except BaseException as exc:  # noqa: BLE001 - every task error must travel (C7)
            return pl.encode_finished(run_id, False, _error(exc))

    def _await(self, run_id: int, awaitable: Any) -> Any:
        """Run an awaitable a task returned to completion, on :meth:`loop`."""
        return self.loop().run_until_complete(awaitable)

    @staticmethod
    def _traced(job: pl.Run, body: Callable[[], bytes]) -> bytes:
        """``body()`` inside the job's trace span; its outcome's frame."""
        with _span(job) as done:
            frame = body()
            done(_failure(frame))
        return frame


class SerialRunner(Runner):
    """The ``process`` pool: one job at a time on the main thread."""

    def serve(self) -> None:
        pipe, run = self.pipe, self._outcome
        while (body := pipe.read()) is not None:
            kind = body[:1]
            if kind == b"J":  # the hot path (a cancel is never sent: the worker kills instead)
                pipe.write(run(*pl.decode_run(body)))
            elif kind == b"T":
                msg = pl.decode_to_job_process(body)
                assert isinstance(msg, pl.Run)
                pipe.write(self._traced(msg, partial(run, msg.run_id, msg.payload)))


@dataclass(slots=True)
class _Running:
    """A run on a thread: the thread, and its asyncio task when it awaits one."""

    ident: int
    cancelled: bool = False
    raised: bool = False  # JobCancelled was raised in its thread (maybe not delivered yet)
    loop: Any = None
    task: Any = None


class _Registry:
    """The runs executing on threads, so a cancel reaches the right thread or task.

    A thread enters its run before it starts it and leaves when it is done; a cancel raises
    :class:`JobCancelled` in the thread only while the run is entered, so it never hits a
    thread that has moved on (one that arrives between the task's end and the thread's
    leaving is cleared by :meth:`leave`); a cancel that comes before the thread entered the
    run stops it from starting. :meth:`run` does all of this around a run's body."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[int, _Running] = {}
        self._early: set[int] = set()  # cancelled before their thread entered them

    def enter(self, run_id: int) -> bool:
        """The calling thread starts ``run_id``; False when it was cancelled before."""
        with self._lock:
            if run_id in self._early:
                self._early.discard(run_id)
                return False
            self._runs[run_id] = _Running(threading.get_ident())
        return True

    def awaiting(self, run_id: int, loop: Any, task: Any) -> None:
        """The run awaits ``task`` on ``loop``: a cancel cancels the task."""
        with self._lock:
            run = self._runs[run_id]
            run.loop, run.task = loop, task
            if run.cancelled:
                task.cancel()

    def cancel(self, run_id: int) -> None:
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                self._early.add(run_id)  # read, not started yet (or over: then harmless)
                return
            if run.cancelled:
                return
            run.cancelled = True
            if run.task is not None:
                run.loop.call_soon_threadsafe(run.task.cancel)
            else:
                run.raised = True
                _raise_in(run.ident, JobCancelled)

    def leave(self, run_id: int) -> None:
        """The calling thread is done with ``run_id`` (call it from that thread)."""
        while True:
            try:
                with self._lock:
                    run = self._runs.pop(run_id, None)
                    if run is not None and run.raised:
                        _raise_in(run.ident, None)  # clear a cancel not delivered yet
                return
            except JobCancelled:  # the cancel landed here, after the task: already done
                continue

    def run(self, run_id: int, body: Callable[[], Any]) -> Any:
        """``body()`` as run ``run_id`` on the calling thread; a cancel that lands outside
        the task's own code gives ``body``'s error outcome: the frame of a failed run."""
        try:
            if not self.enter(run_id):
                raise JobCancelled("the job was cancelled before it started")
            outcome = body()
        except JobCancelled as exc:
            outcome = pl.encode_finished(run_id, False, _error(exc))
        self.leave(run_id)
        return outcome


def _raise_in(ident: int, exc: type[BaseException] | None) -> None:
    """Raise ``exc`` in thread ``ident`` at its next bytecode (None: clear a pending one)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exc) if exc else None)


class ThreadRunner(Runner):
    """The ``thread`` pool: up to ``slots`` jobs at once, one per thread (leader/followers)."""

    def __init__(self, pipe: Pipe, modules: list[str], slots: int) -> None:
        super().__init__(pipe, modules, slots)
        self.registry = _Registry()
        self._read_lock = threading.Lock()
        self._closed = False
        self._local = threading.local()

    def serve(self) -> None:
        # slots + 1 threads: while every slot runs a job, one more still reads cancels
        for index in range(1, self.slots + 1):
            threading.Thread(target=self._follow, name=f"freelance-slot-{index}", daemon=True).start()
        self._follow()

    def _next(self) -> pl.Run | None:
        """Read until a job arrives (handling cancels); None once the pipe has closed.
        Called holding the read lock."""
        while not self._closed:
            body = self.pipe.read()
            if body is None:
                self._closed = True
                break
            msg = pl.decode_to_job_process(body)
            if isinstance(msg, pl.Run):
                return msg
            if isinstance(msg, pl.Cancel):
                self.registry.cancel(msg.run_id)
        return None

    def _follow(self) -> None:
        while True:
            with self._read_lock:
                job = self._next()
            if job is None:
                return
            body = partial(self._outcome, job.run_id, job.payload)
            if job.traceparent is not None:
                body = partial(self._traced, job, body)
            self.pipe.write(self.registry.run(job.run_id, body))

    def _await(self, run_id: int, awaitable: Any) -> Any:
        """Run an awaitable to completion on this thread's event loop (cancellable)."""
        import asyncio

        loop = getattr(self._local, "loop", None)
        if loop is None:
            loop = self._local.loop = asyncio.new_event_loop()
        task = loop.create_task(_awaited(awaitable))
        self.registry.awaiting(run_id, loop, task)
        return loop.run_until_complete(task)


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


class AsyncioRunner(Runner):
    """The ``asyncio`` pool: one event loop; ``async def`` tasks on it, plain functions in
    its default executor (``slots`` threads)."""

    def __init__(self, pipe: Pipe, modules: list[str], slots: int) -> None:
        super().__init__(pipe, modules, slots)
        self.registry = _Registry()
        self._tasks: dict[int, Any] = {}  # run id -> the asyncio task of an async def job

    def serve(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        loop = self.loop()
        loop.set_default_executor(ThreadPoolExecutor(self.slots, thread_name_prefix="freelance-task"))
        self._closed = loop.create_future()
        loop.add_reader(self.pipe.fd, self._readable)
        loop.run_until_complete(self._closed)

    def _readable(self) -> None:
        bodies = self.pipe.read_available()
        if bodies is None:
            self.loop().remove_reader(self.pipe.fd)
            if not self._closed.done():
                self._closed.set_result(None)
            return
        for body in bodies:
            msg = pl.decode_to_job_process(body)
            if isinstance(msg, pl.Run):
                self._start(msg)
            elif isinstance(msg, pl.Cancel):
                task = self._tasks.get(msg.run_id)
                if task is not None:
                    task.cancel()
                else:
                    self.registry.cancel(msg.run_id)

    def _start(self, run: pl.Run) -> None:
        try:
            fn, args, kwargs = self.call(run.payload)
        except BaseException as exc:  # noqa: BLE001 - every task error must travel (C7)
            self.pipe.write(pl.encode_finished(run.run_id, False, _error(exc)))
            return
        if inspect.iscoroutinefunction(fn):
            self._tasks[run.run_id] = self.loop().create_task(self._coroutine(run, fn, args, kwargs))
        else:
            self.loop().create_task(self._in_thread(run, fn, args, kwargs))

    async def _coroutine(self, run: pl.Run, fn: Callable[..., Any], args: list[Any],
                         kwargs: dict[str, Any]) -> None:
        run_id = run.run_id
        begin_run(run_id)
        with _span(run) as done:
            try:
                outcome = pl.encode_finished(run_id, True, pl.pack_value(await fn(*args, **kwargs)))
            except BaseException as exc:  # noqa: BLE001 - CancelledError too: the job is over
                outcome = pl.encode_finished(run_id, False, _error(exc))
            done(_failure(outcome))
        del self._tasks[run_id]
        self.pipe.write(outcome)

    async def _in_thread(self, run: pl.Run, fn: Callable[..., Any], args: list[Any],
                         kwargs: dict[str, Any]) -> None:
        # Never cancelled itself: it ends when its thread ends, so the slot is busy as long
        # as the thread is (a cancel raises JobCancelled in the thread instead).
        run_id = run.run_id
        with _span(run) as done:
            if run.traceparent is None:
                outcome, awaitable = await self.loop().run_in_executor(
                    None, self._thread_call, run_id, fn, args, kwargs)
            else:  # in a copy of this task's context: the span is current in the thread too
                outcome, awaitable = await self.loop().run_in_executor(
                    None, contextvars.copy_context().run, self._thread_call, run_id, fn, args, kwargs)
            if outcome is None:  # the function returned an awaitable: await it here
                begin_run(run_id)
                try:
                    outcome = pl.encode_finished(run_id, True, pl.pack_value(await awaitable))
                except BaseException as exc:  # noqa: BLE001 - every task error must travel (C7)
                    outcome = pl.encode_finished(run_id, False, _error(exc))
            done(_failure(outcome))
        self.pipe.write(outcome)

    def _thread_call(self, run_id: int, fn: Callable[..., Any], args: list[Any],
                     kwargs: dict[str, Any]) -> tuple[bytes | None, Any]:
        """Run a plain function on an executor thread: its outcome's frame, or (None, the
        awaitable it returned)."""
        awaitable = None

        def body() -> bytes | None:
            nonlocal awaitable
            begin_run(run_id)
            try:
                value = fn(*args, **kwargs)
                if inspect.isawaitable(value):
                    awaitable = value
                    return None
                return pl.encode_finished(run_id, True, pl.pack_value(value))
            except BaseException as exc:  # noqa: BLE001 - every task error must travel (C7)
                return pl.encode_finished(run_id, False, _error(exc))

        return self.registry.run(run_id, body), awaitable


RUNNERS: dict[str, type[Runner]] = {
    "process": SerialRunner, "thread": ThreadRunner, "asyncio": AsyncioRunner,
}


def make(pool: str, pipe: Pipe, modules: list[str], slots: int) -> Runner:
    """The runner of ``pool`` (one of :data:`~freelance_rz.core.payload.POOLS`)."""
    return RUNNERS[pool](pipe, modules, slots)

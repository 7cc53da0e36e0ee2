"""Producer: an embedded ``concurrent.futures.Executor`` whose jobs are pulled by workers.

The producer owns one I/O thread. That thread alone touches the ZeroMQ ROUTER "offer" socket
and the :class:`~freelance_rz.ledger.Ledger`; application threads reach it through a
thread-safe queue plus a wake-up pipe polled beside the socket (the shape of pyzmq's
``zmq.auth.thread``: a thread that owns its socket, controlled over a pipe). The thread is a
thin shell: poll, decode, hand to the ledger, send what it returns, resolve futures.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import heapq
import itertools
import logging
import os
import queue
import resource
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Executor, Future
from concurrent.futures._base import PENDING
from typing import Any, ClassVar, NamedTuple

import zmq

from ..core import check as _check
from ..core import payload as pl
from ..core import wire as p
from .._sockets import send_frames, set_keepalive
from ..core.text import clean
from ..discovery import Announcer, local_networks, resolve_interfaces
from ..errors import JobFailed, JobLost, JobTimeout, JobTooLarge, ProducerClosed, ProtocolError
from ..core.ledger import Expired, JobState, Ledger
from ..security import CurveServer, check_pair, load_keypair
from ..errors import StoreError
from .store import JobStore, Restored
from ..tasks import task_name

log = logging.getLogger("freelance_rz.producer")

DEFAULT_LEASE_S = 1.0  # C4: a dead worker's job is re-offered within 1 s
MIN_LEASE_S = 0.2  # below this, heartbeats (every lease / 4) cannot keep up on a busy host
DEFAULT_MAX_ATTEMPTS = 3
MAX_WAIT_MS = 60_000  # longest a claim may park; longer requests are clamped
MAX_PARKED_PER_WORKER = 1024  # parked claims per worker identity (a worker needs one a slot)
MAX_PARKED = 16384  # parked claims in all; past it the identity with the most loses its oldest
RECV_BATCH = 256  # messages taken per wake-up before looking at the clock again
WORKER_FORGET_S = 60.0  # a worker silent this long leaves the STATUS table
DEFAULT_RETENTION_S = 7 * 24 * 3600.0  # finished results kept in a store a week...
DEFAULT_RETENTION_COUNT = 100_000  # ...and at most this many
PURGE_EVERY_S = 10.0  # how often retention is applied
PROGRESS_IN_STATUS = 100  # running jobs whose progress STATUS lists, at most
WORKERS_IN_STATUS = 200  # workers STATUS lists (the most recently heard), at most
PROGRESS_MESSAGE_CHARS = 200  # characters kept of a progress message
RCVHWM = 100  # messages queued in this process per connection, at most
ERR_REPLIES_PER_S = 1000  # ERR answers a second, at most; further bad messages are dropped
HANDSHAKE_IVL_MS = 5000  # a connection that has not finished its ZMTP handshake by then is closed
NO_WORKER_WARN_S = 10.0  # jobs waiting this long with no word from any worker: say so, once
TOO_LARGE_GRACE_S = 5.0  # a job too large for every connected worker this long fails
EXIT_WAIT_S = 5.0  # leaving `with` by an exception waits this long for running jobs
STALL_S = 0.2  # an I/O turn this much later than planned means the thread could not run
LINGER_MS = 200  # on close, time given to the last replies to leave
MAX_PAYLOAD_LIMIT = 2**62  # bytes: the largest max_payload_bytes (MAXMSGSIZE is an int64)


_CONDITION_LOCK = threading.Lock()


class JobEvent(NamedTuple):
    """One step in a job's life, as given to ``Producer(on_event=...)``.

    ``kind``: ``"submitted"``, ``"leased"`` (handed to ``worker``, try number ``attempt``),
    ``"released"`` (the lease was given back unused), ``"requeued"`` (its lease was lost;
    ``attempt`` is the next try), or the end: ``"done"``, ``"failed"``, ``"dead"``
    (dead-lettered), ``"cancelled"``. ``at``: wall-clock time (``time.time()``, seconds).
    ``worker``: the worker, as ``NAME-xxxxxxxx`` (its ``--name`` and a hash of its secret
    routing id, which tells apart workers of one name), for ``"leased"``, else None.
    """

    kind: str
    job_id: int
    at: float
    worker: str | None = None
    attempt: int | None = None


class JobProgress(NamedTuple):
    """A running job's latest :func:`~freelance_rz.report_progress`: ``done`` of ``total``
    (None when unknown), and a ``message``."""

    done: float
    total: float | None
    message: str


class JobFuture(Future):  # type: ignore[type-arg]
    """A Future of a job. ``job_id`` (int) is the job's id at its producer.

    It differs from ``concurrent.futures.Future`` in three ways. :meth:`cancel` works until
    the job has finished: a job no worker holds is dropped, and a job a worker is running is
    aborted there (its lease is voided; the worker learns it at its next heartbeat, within
    a quarter of the lease). So a Future never reports ``running()``: the job may be handed
    to another worker if its worker dies. And its lock (a Condition) is made on first use: a
    pending job's Future then costs about 230 bytes instead of 1.6 KB, and a producer may hold
    a million of them.
    """

    def __init__(self, job_id: int, on_cancel: Callable[[JobFuture], None] | None = None) -> None:
        # Future.__init__ without its Condition; these are the fields it sets (3.10-3.13).
        self._state = PENDING
        self._result = None
        self._exception = None
        self._waiters: list[Any] = []
        self._done_callbacks: list[Any] = []
        self.job_id = job_id
        self._on_cancel = on_cancel
        self.progress: JobProgress | None = None  # the latest report_progress() of the job

    @property
    def _condition(self) -> threading.Condition:  # type: ignore[override]
        condition = self.__dict__.get("_lazy_condition")
        if condition is None:
            with _CONDITION_LOCK:
                condition = self.__dict__.setdefault("_lazy_condition", threading.Condition())
        return condition  # type: ignore[no-any-return]

    def cancel(self) -> bool:
        """Cancel the job unless it has finished (aborting it on its worker if it runs).
        Returns True if the Future is now cancelled."""
        if not super().cancel():
            return False
        if self._on_cancel is not None:
            self._on_cancel(self)
        return True


class Producer(Executor):
    """Holds jobs and hands them to workers that pull them (a ``concurrent.futures.Executor``).

    Args:
        group: workers browsing for this group (``--group``) find this producer.
        interfaces: IPv4 addresses to bind, announce and multicast on. None reads
            ``$FREELANCE_RZ_INTERFACES`` (comma-separated), else binds and announces on all.
        port: TCP port of the offer socket; 0 picks a free one.
        lease_s: seconds a worker holds a job without a heartbeat before it is re-offered.
        max_attempts: leases a job may lose (worker died or went silent) before it is
            dead-lettered and its Future fails with :class:`~freelance_rz.JobLost`.
        announce: False skips mDNS (workers must then ``--connect`` to :attr:`endpoint`).
        store: path of a sqlite job store (created if missing). With it, :meth:`submit`
            returns only once the job is recorded, and a producer restarted on the same store
            offers its pending jobs again, re-queues those that were leased (attempt + 1),
            keeps finished results (:meth:`get`) and accepts results that workers still hold
            for the old process (the zguide's Titanic pattern, without a broker).
        retention_s, retention_count: finished results kept in the store at most this many
            seconds, and at most this many (newest first). None: no limit.
        max_payload_bytes: largest encoded job (task name and arguments) :meth:`submit`
            accepts, and largest encoded result workers may send back, in bytes (a result over
            it fails the job with ``remote_type == "ResultTooLarge"``; a message over it, plus
            64 KiB, drops the connection that sent it: ``zmq.MAXMSGSIZE``). Jobs are messages;
            bulk data belongs in files or object stores.
        on_event: called with a :class:`JobEvent` at each step of each job (for tracing and
            experiments). It runs on the I/O thread, so it must be quick; its exceptions are
            logged and ignored.
        secret_key, authorized_workers: CURVE security (give both, or neither): the path of
            this producer's ``NAME.key_secret`` file, and a directory of the ``NAME.key``
            public keys of the workers allowed to connect (read at start). The public key is
            announced in mDNS; see :mod:`freelance_rz.security` and docs/security.md.
        max_connections: the most connections the offer socket keeps open at once; at that
            many, a newer connection is closed as soon as it is accepted, so a flood of idle
            connections cannot use up the application's file descriptors (connections that
            never finish their ZeroMQ handshake are closed after 5 s anyway). None: half the
            process's open-file limit (``RLIMIT_NOFILE``, ``ulimit -n``), at least 64.

    Threads start at :meth:`start`, on ``with``, or on the first :meth:`submit`, never in the
    constructor. The design is the zguide's "freelance" pattern (ch. 4) turned around: the
    servers (workers) pull from the clients (producers), so there is no broker.

    Ranges: ``group`` 1 to 63 characters; ``port`` 0 to 65535; ``lease_s`` 0.2 to 1e9
    seconds; ``max_attempts`` >= 1; ``retention_s`` >= 0 seconds and ``retention_count`` >= 0
    (or None); ``max_payload_bytes`` 1 to 2**62; ``max_connections`` >= 1 (or None).

    Raises:
        TypeError: an argument of the wrong type (e.g. ``lease_s="1"``, ``max_attempts=2.5``,
            ``announce=None``, ``interfaces="10.0.0.5"`` instead of a list); the message names
            the argument, what it must be and the value given.
        ValueError: an argument out of its range, or an interface that is not an IPv4
            address; only one of ``secret_key`` and ``authorized_workers``; an unreadable key
            file or a directory without public keys.
        freelance_rz.StoreError: the store is corrupt, of a newer schema, or in use.
    """

    def __init__(
        self,
        group: str = "default",
        *,
        interfaces: list[str] | None = None,
        port: int = 0,
        lease_s: float = DEFAULT_LEASE_S,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        announce: bool = True,
        store: str | os.PathLike[str] | None = None,
        retention_s: float | None = DEFAULT_RETENTION_S,
        retention_count: int | None = DEFAULT_RETENTION_COUNT,
        max_payload_bytes: int = p.DEFAULT_MAX_PAYLOAD,
        on_event: Callable[[JobEvent], None] | None = None,
        secret_key: str | os.PathLike[str] | None = None,
        authorized_workers: str | os.PathLike[str] | None = None,
        max_connections: int | None = None,
    ) -> None:
        group = _check.group(group)
        interfaces = _check.strings("interfaces", interfaces, example="['192.168.1.20']", allow_none=True)
        port = _check.integer("port", port, min_=0, max_=65535)  # 0: any free port
        # workers heartbeat every lease_s / 4: below MIN_LEASE_S they cannot keep up
        lease_s = _check.number("lease_s", lease_s, min_=MIN_LEASE_S, max_=_check.MAX_SECONDS, unit="seconds")
        max_attempts = _check.integer("max_attempts", max_attempts, min_=1, max_=_check.INT64_MAX)
        announce = _check.boolean("announce", announce)
        store = _check.path("store", store)
        retention_s = _check.number("retention_s", retention_s, min_=0, unit="seconds", allow_none=True)
        retention_count = _check.integer(
            "retention_count", retention_count, min_=0, max_=_check.INT64_MAX, allow_none=True
        )
        max_payload_bytes = _check.integer(
            "max_payload_bytes", max_payload_bytes, min_=1, max_=MAX_PAYLOAD_LIMIT, unit="bytes"
        )
        on_event = _check.function("on_event", on_event)
        secret_key = _check.path("secret_key", secret_key)
        authorized_workers = _check.path("authorized_workers", authorized_workers)
        max_connections = _check.integer("max_connections", max_connections, min_=1, allow_none=True)
        if max_connections is None:
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            max_connections = 65536 if soft == resource.RLIM_INFINITY else max(64, soft // 2)
        self.max_connections = max_connections
        check_pair(secret_key, authorized_workers, ("secret_key", "authorized_workers"))
        self._curve: CurveServer | None = None
        if secret_key is not None and authorized_workers is not None:
            self._curve = CurveServer(load_keypair(secret_key), authorized_workers)
        self.group = group
        self._on_event = on_event
        self.max_payload_bytes = max_payload_bytes
        self.interfaces = resolve_interfaces(interfaces)
        self.port = port
        self.announce = announce
        self.producer_id = uuid.uuid4().hex[:16]
        self._ledger = Ledger(lease_s=lease_s, max_attempts=max_attempts)
        self._commands: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._store: JobStore | None = None
        self._restored: Restored | None = None
        self.store_key: str | None = None  # stable across restarts on the same store
        first_id = 1
        if store is not None:
            self._store = JobStore(store, retention_s=retention_s, retention_count=retention_count)
            self._restored = self._store.restore()
            self.store_key = self._restored.producer_key
            first_id = self._restored.next_job_id
        self._job_ids = itertools.count(first_id)
        self._lock = threading.Lock()  # guards start/shutdown state below
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._shutdown = False
        self._io_closed = False  # the I/O thread has ended; the wake pipe is closed
        self._wake_pending = False  # a wake-up byte is in the pipe (set by _put, cleared by I/O)
        self._endpoints: list[str] = []
        self._port = 0  # the offer socket's port once bound

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> Producer:
        """Bind the offer socket, announce it on mDNS and start the I/O thread.

        Blocks until announced (mDNS probing takes about 1.5 s). Idempotent.

        Raises:
            RuntimeError: after :meth:`shutdown`.
            zmq.ZMQError, OSError: the socket could not be bound or mDNS could not start.
        """
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot start a producer after shutdown")
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"freelance-producer-{self.producer_id[:6]}",
                    daemon=True,
                )
                self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            raise self._start_error
        return self

    @property
    def endpoint(self) -> str:
        """The bound ROUTER endpoint, e.g. ``"tcp://127.0.0.1:41234"`` (the first one when
        bound on several interfaces). Raises RuntimeError before :meth:`start`."""
        if not self._endpoints:
            raise RuntimeError("the producer is not started: call start() or use 'with'")
        return self._endpoints[0]

    @property
    def endpoints(self) -> list[str]:
        """Every bound endpoint (one per interface)."""
        return list(self._endpoints)

    def __enter__(self) -> Producer:
        return self.start()

    async def __aenter__(self) -> Producer:
        """``async with Producer(...) as producer:`` starts it (about 1.5 s of mDNS probing)
        on a thread, never blocking the event loop."""
        await asyncio.get_running_loop().run_in_executor(None, self.start)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        """As leaving a ``with`` block (waits for every job; closes at once when left by a
        cancellation, Ctrl-C or ``sys.exit()``), on a thread, never blocking the event loop."""
        await asyncio.get_running_loop().run_in_executor(None, self.__exit__, exc_type, *exc_info)

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        """Leaving a ``with`` block normally waits for every job (``shutdown(wait=True)``, as
        for any Executor). Left by an exception, it cancels the jobs no worker holds, waits
        at most EXIT_WAIT_S (5 s) for the running ones, then closes, so the exception
        surfaces instead of a wait for workers that may never come. Left by Ctrl-C or
        ``sys.exit()``, :meth:`close` stops at once."""
        if exc_type is None:
            self.shutdown(wait=True)
        elif issubclass(exc_type, Exception):
            self.shutdown(wait=True, cancel_futures=True, timeout_s=EXIT_WAIT_S)
        else:
            self.close()

    def submit(self, fn: Callable[..., Any] | str, /, *args: Any, **kwargs: Any) -> JobFuture:
        """Queue ``fn(*args, **kwargs)`` to run on a worker; return its Future.

        Args:
            fn: a module-level function (sent as ``"module:qualname"``; the worker must have
                its module in ``--tasks``) or a ``"module:function"`` string.
            args, kwargs: msgpack-encodable values (None, bool, int, float, str, bytes, and
                lists/tuples/dicts of them; tuples arrive as lists).

        Returns:
            A :class:`JobFuture` whose result is the task's return value; it fails with
            :class:`~freelance_rz.JobFailed` when the task raised or the worker refused it,
            or :class:`~freelance_rz.JobLost` when it was dead-lettered.

        Raises:
            TypeError: an argument msgpack cannot encode.
            ValueError: ``fn`` is not a module-level function or valid task name, or the
                encoded job is larger than ``max_payload_bytes``.
            RuntimeError: after :meth:`shutdown`.
        """
        return self._submit(fn, args, kwargs, JobOptions.DEFAULT)

    def options(
        self, *, timeout_s: float | None = None, max_attempts: int | None = None, priority: int = 0
    ) -> JobOptions:
        """Job options for the jobs submitted through the returned object, e.g.
        ``producer.options(timeout_s=30, priority=5).submit(fn, x)``.

        Args:
            timeout_s: seconds a job may run on a worker; past that its process is killed and
                its Future fails with :class:`~freelance_rz.JobTimeout` (not retried).
            max_attempts: leases the job may lose before it is dead-lettered (default: the
                producer's).
            priority: higher is handed out first; FIFO within one priority (default 0).

        Raises:
            TypeError: ``timeout_s`` not a number (or None), ``max_attempts`` or ``priority``
                not an int (bools are refused).
            ValueError: ``timeout_s`` not in (0, 1e9] seconds, ``max_attempts`` < 1,
                ``priority`` outside the signed 64-bit range (-2**63 to 2**63 - 1).
        """
        return JobOptions(self, timeout_s=timeout_s, max_attempts=max_attempts, priority=priority)

    def _submit(
        self, fn: Callable[..., Any] | str, args: tuple[Any, ...], kwargs: dict[str, Any],
        options: JobOptions,
    ) -> JobFuture:
        payload = pl.pack_call(task_name(fn), args, kwargs, options.wire)
        if len(payload) > self.max_payload_bytes:
            raise ValueError(
                f"job arguments take {len(payload)} bytes encoded, more than max_payload_bytes "
                f"({self.max_payload_bytes}); pass a path or URL to the data instead"
            )
        if self._thread is None:
            self.start()
        future = JobFuture(next(self._job_ids), self._on_cancel)
        recorded: Future[None] | None = None if self._store is None else Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot submit after shutdown")
            self._put("submit", future.job_id, payload, future, recorded, options)
        if recorded is not None:
            recorded.result()  # durable before we return (raises StoreError if it is not)
        return future

    def get(self, job_id: int, timeout_s: float | None = 5.0) -> JobFuture:
        """The Future of a job by id, also of a job submitted before a restart on the same
        store (already resolved when it finished; finished results are kept per retention).

        Args:
            job_id: the job's id (``future.job_id``, an int >= 1).
            timeout_s: seconds to wait for the I/O thread's answer (None: no limit).

        Raises:
            TypeError: ``job_id`` is not an int or ``timeout_s`` not a number.
            ValueError: ``job_id`` < 1 or ``timeout_s`` < 0.
            KeyError: no such job (never submitted, or its result was purged).
            RuntimeError: after the producer stopped.
            concurrent.futures.TimeoutError: no answer within ``timeout_s`` seconds.
        """
        job_id = _check.integer("job_id", job_id, min_=1, max_=_check.INT64_MAX)
        timeout_s = _answer_timeout(timeout_s)
        if self._thread is None:
            self.start()
        future: JobFuture | None = self._call(lambda loop: loop.find(job_id), timeout_s)
        if future is None:
            raise KeyError(f"no job {job_id} at this producer (or its result was purged)")
        return future

    async def submit_async(
        self, fn: Callable[..., Any] | str, /, *args: Any, **kwargs: Any
    ) -> Any:
        """``await`` a job's result from asyncio code without blocking the event loop.

        Same arguments and errors as :meth:`submit`; the first call may start the producer
        (binding and mDNS probing, about 1.5 s), which then happens in a thread. Cancelling
        the awaiting task cancels the job (aborting it on its worker if it runs).
        """
        return await self._submit_async(fn, args, kwargs, JobOptions.DEFAULT)

    async def _submit_async(
        self, fn: Callable[..., Any] | str, args: tuple[Any, ...], kwargs: dict[str, Any],
        options: JobOptions,
    ) -> Any:
        if self._thread is None:
            await asyncio.get_running_loop().run_in_executor(None, self.start)
        return await asyncio.wrap_future(self._submit(fn, args, kwargs, options))

    def progress(self, future: JobFuture) -> JobProgress | None:
        """The latest progress the job reported (:func:`~freelance_rz.report_progress`), or
        None; it arrives with the worker's heartbeats, so it lags by up to ``lease_s / 4``.

        Raises:
            TypeError: ``future`` is not a :class:`JobFuture`.
        """
        if not isinstance(future, JobFuture):
            raise TypeError(f"future must be a JobFuture (from submit), got {future!r} "
                            f"({type(future).__name__})")
        return future.progress

    def status(self, timeout_s: float | None = 5.0) -> dict[str, Any]:
        """Counts and facts, as the STATUS verb answers them: jobs ``pending``, ``leased``,
        ``done``, ``failed``, ``dead``, ``cancelled`` (since this start); ``workers`` heard from
        in the last minute and ``worker_list`` (``id``, ``last_seen_s``, ``running`` jobs);
        ``finished_last_min``; ``parked_claims``; ``uptime_s`` (seconds); ``bad_messages``;
        ``producer_id``, ``group``, ``endpoints``, ``version``.

        Args:
            timeout_s: seconds to wait for the I/O thread's answer (None: no limit).

        Raises:
            TypeError, ValueError: ``timeout_s`` is not a number >= 0 (or None).
            RuntimeError: the producer is not running.
            concurrent.futures.TimeoutError: no answer within ``timeout_s`` seconds.
        """
        timeout_s = _answer_timeout(timeout_s)
        info: dict[str, Any] = self._call(lambda loop: loop.status(time.monotonic()), timeout_s)
        return info

    async def status_async(self, timeout_s: float | None = 5.0) -> dict[str, Any]:
        """:meth:`status` from asyncio code: the I/O thread is asked from a worker thread of
        the event loop's default executor, so the loop never blocks, even for ``timeout_s``
        seconds. Same result and errors as :meth:`status`."""
        timeout_s = _answer_timeout(timeout_s)
        info: dict[str, Any] = await asyncio.get_running_loop().run_in_executor(
            None, self.status, timeout_s
        )
        return info

    async def progress_async(self, future: JobFuture) -> JobProgress | None:
        """:meth:`progress` from asyncio code, for symmetry with :meth:`status_async`: the
        latest progress is kept on the Future, so this never waits. Same result and errors as
        :meth:`progress`."""
        return self.progress(future)

    def _call(self, fn: Callable[[_OfferLoop], Any], timeout_s: float | None) -> Any:
        """Run ``fn(loop)`` on the I/O thread and return its result."""
        answer: Future[Any] = Future()
        with self._lock:
            if self._thread is None:
                raise RuntimeError("the producer is not started")
            self._put("call", fn, answer)
        return answer.result(timeout_s)

    def shutdown(
        self, wait: bool = True, *, cancel_futures: bool = False, timeout_s: float | None = None
    ) -> None:
        """Stop accepting jobs; the I/O thread ends once every job is resolved.

        Args:
            wait: block until then (as ``Executor.shutdown``; with no worker serving, this
                waits for one, and the producer logs a warning when jobs wait that way).
            cancel_futures: cancel jobs not yet handed to a worker first.
            timeout_s: with ``wait``, wait at most this many seconds, then :meth:`close`
                (the Futures of jobs still running fail with ``ProducerClosed``). None: no
                limit.

        Raises:
            ValueError: ``timeout_s`` is not None or a number >= 0.
        """
        if timeout_s is not None and (
            isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float))
            or not timeout_s >= 0
        ):
            raise ValueError(f"timeout_s must be None or a number of seconds >= 0, got {timeout_s!r}")
        with self._lock:
            first = not self._shutdown
            self._shutdown = True
            if first and self._thread is not None:
                self._put("shutdown", cancel_futures)
        if wait and self._thread is not None:
            try:
                self._thread.join(timeout_s)
            except BaseException:  # Ctrl-C while waiting: stop now (mDNS goodbye included)
                self.close()
                raise
            if self._thread.is_alive():
                log.warning("shutdown: jobs still running after %g s; closing", timeout_s)
                self.close()

    def close(self, timeout_s: float | None = 10.0) -> None:
        """Stop now: cancel the Futures of pending jobs, fail those of running ones with
        :class:`~freelance_rz.errors.ProducerClosed`, withdraw the mDNS announcement and
        close the socket. Idempotent. With a ``store``, the jobs themselves stay in it as they
        were, and a producer started on the store later carries on with them (to drop them
        for good, ``shutdown(cancel_futures=True)`` first).

        Args:
            timeout_s: seconds to wait for the I/O thread to end (None: no limit).
        """
        with self._lock:
            self._shutdown = True
            if self._thread is not None and not self._io_closed:
                self._put("close")
            never_started = self._thread is None and not self._io_closed
        if never_started:
            if self._store is not None:
                self._store.close()
            self._close_pipe()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _put(self, *command: Any) -> None:
        """Hand a command to the I/O thread. Call with ``self._lock`` held."""
        if self._io_closed:
            raise RuntimeError("the producer's I/O thread has stopped")
        self._commands.put(command)
        if not self._wake_pending:  # one wake-up byte per batch of commands
            self._wake_pending = True
            try:
                os.write(self._wake_w, b"\0")
            except BlockingIOError:
                pass  # the pipe is full: the I/O thread has wake-ups pending

    def _on_cancel(self, future: JobFuture) -> None:
        with self._lock:
            if not self._io_closed:
                self._put("cancel", future.job_id)

    # --- the I/O thread --------------------------------------------------------------------

    def _run(self) -> None:
        # A secure producer has a context of its own: ZAP is served per context.
        ctx = zmq.Context.instance() if self._curve is None else zmq.Context()
        try:
            if self._curve is not None:
                self._curve.start(ctx)
            sock = self._bind(ctx)
        except BaseException as exc:
            self._start_error = exc
            self._end_curve(ctx)
            if self._store is not None:
                self._store.close()
            self._close_pipe()
            self._started.set()
            return
        announcer, announced = None, threading.Event()
        if self.announce:
            announcer = Announcer(
                self.producer_id, self.group, self._endpoints, self.interfaces,
                store_key=self.store_key,
                public_key=None if self._curve is None else self._curve.keys.public,
            )
            threading.Thread(
                target=self._announce, args=(announcer, announced), daemon=True,
                name=f"freelance-announce-{self.producer_id[:6]}",
            ).start()
        else:
            announced.set()
            self._started.set()
        log.info("producer %s serving on %s", self.producer_id, ", ".join(self._endpoints))
        loop = _OfferLoop(self, sock)
        try:
            loop.run()
        except BaseException as exc:
            log.exception("producer I/O thread crashed")
            crashed = RuntimeError(f"producer I/O thread crashed: {exc!r}")
            for future in [*loop.futures.values(), *(r for _, r in loop.unrecorded)]:
                if not future.done():  # never leave a caller waiting forever
                    future.set_exception(crashed)
            raise
        finally:
            if announcer is not None:
                announced.wait()
                announcer.close()
            sock.close(LINGER_MS)
            self._end_curve(ctx)
            if self._store is not None:
                self._store.close()
            self._close_pipe()

    def _announce(self, announcer: Announcer, announced: threading.Event) -> None:
        """Register on mDNS beside the running I/O loop: zeroconf's ``register_service``
        returns only after its last broadcast, and workers that heard the first one are
        already claiming. On failure the producer closes and :meth:`start` raises."""
        try:
            announcer.start()
        except BaseException as exc:
            self._start_error = exc
            with self._lock:
                self._shutdown = True
                if not self._io_closed:
                    self._put("close")
        finally:
            announced.set()
            self._started.set()

    def _end_curve(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
        if self._curve is not None:
            self._curve.stop()
            ctx.term()

    def _close_pipe(self) -> None:
        with self._lock:
            self._io_closed = True
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _bind(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> zmq.Socket[bytes]:
        sock = ctx.socket(zmq.ROUTER)
        if self._curve is not None:
            self._curve.secure(sock)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a vanished worker is an error on send
        # Without CURVE, a reconnecting worker takes its routing id back from its old,
        # possibly half-open connection. With CURVE never: a connection of another key could
        # take a worker's id and its replies; a worker's id is held by its live connection.
        sock.setsockopt(zmq.ROUTER_HANDOVER, int(self._curve is None))
        sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_IVL_MS)
        set_keepalive(sock)
        # what one connection may have waiting in this process: a worker sends a claim per
        # free slot and a BEAT at a time; a flood waits in the kernel, then in its sender
        sock.setsockopt(zmq.RCVHWM, RCVHWM)
        sock.setsockopt(zmq.LINGER, LINGER_MS)
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_payload_bytes + p.FRAME_OVERHEAD)
        try:
            if self.interfaces is None:
                port = self._bind_port(sock, "*", self.port)
                hosts = [str(n.ip) for n in local_networks()] or ["127.0.0.1"]
            else:
                port = self.port
                for host in self.interfaces:
                    port = self._bind_port(sock, host, port)
                hosts = self.interfaces
        except BaseException:
            sock.close(0)
            raise
        self._endpoints = [f"tcp://{host}:{port}" for host in hosts]
        self._port = port
        return sock

    @staticmethod
    def _bind_port(sock: zmq.Socket[bytes], host: str, port: int) -> int:
        try:
            if port == 0:
                return sock.bind_to_random_port(f"tcp://{host}", min_port=20000, max_port=60000)
            sock.bind(f"tcp://{host}:{port}")
            return port
        except zmq.ZMQError as exc:
            raise OSError(
                f"cannot bind the offer socket to tcp://{host}:{port or '*'}: {exc} "
                "(is the address one of this host's, and the port free?)"
            ) from None


def _answer_timeout(timeout_s: Any) -> float | None:
    """``timeout_s`` of :meth:`Producer.status` and :meth:`Producer.get`, checked."""
    checked: float | None = _check.number(
        "timeout_s", timeout_s, min_=0, max_=threading.TIMEOUT_MAX, unit="seconds", allow_none=True
    )
    return checked


class JobOptions(Executor):
    """Options for jobs, bound to a producer (made by :meth:`Producer.options`): its
    :meth:`submit`, ``map`` and :meth:`submit_async` work as the producer's."""

    DEFAULT: ClassVar[JobOptions]

    def __init__(
        self,
        producer: Producer | None,
        *,
        timeout_s: float | None = None,
        max_attempts: int | None = None,
        priority: int = 0,
    ) -> None:
        timeout_s = _check.number(
            "timeout_s", timeout_s, above=0, max_=_check.MAX_SECONDS, unit="seconds", allow_none=True
        )
        max_attempts = _check.integer(
            "max_attempts", max_attempts, min_=1, max_=_check.INT64_MAX, allow_none=True
        )
        priority = _check.integer("priority", priority, min_=_check.INT64_MIN, max_=_check.INT64_MAX)
        self._producer = producer
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.priority = priority
        wire = {}  # kept in the job's payload, so a durable producer restores them
        if timeout_s is not None:
            wire["timeout_ms"] = max(1, int(timeout_s * 1000))
        if priority:
            wire["priority"] = priority
        self.wire: dict[str, int] | None = wire or None

    def submit(self, fn: Callable[..., Any] | str, /, *args: Any, **kwargs: Any) -> JobFuture:
        """As :meth:`Producer.submit`, with these options."""
        assert self._producer is not None
        return self._producer._submit(fn, args, kwargs, self)

    async def submit_async(self, fn: Callable[..., Any] | str, /, *args: Any, **kwargs: Any) -> Any:
        """As :meth:`Producer.submit_async`, with these options."""
        assert self._producer is not None
        return await self._producer._submit_async(fn, args, kwargs, self)


JobOptions.DEFAULT = JobOptions(None)


class _OfferLoop:
    """The producer's I/O loop state: socket, ledger, futures, parked claims."""

    def __init__(self, producer: Producer, sock: zmq.Socket[bytes]) -> None:
        self.producer = producer
        self.sock = sock
        self.ledger = producer._ledger
        self.lease_ms = int(self.ledger.lease_s * 1000)
        limit = producer.max_payload_bytes  # told to workers only when not the default
        self.max_result = None if limit == p.DEFAULT_MAX_PAYLOAD else limit
        self.futures: dict[int, JobFuture] = {}
        self.timeouts: dict[int, int] = {}  # job id -> time limit in ms, for jobs that have one
        self.throughput = _RecentCount(60)  # results taken in the last minute
        self.progressing: dict[int, bytes] = {}  # job id -> worker, for jobs that reported
        self.parked = _ParkedClaims()
        self.workers_seen: dict[bytes, float] = {}
        self.max_payload = producer.max_payload_bytes
        # per worker identity (kept as long as workers_seen keeps it): the largest job it
        # takes (from its claims), and with CURVE the key its routing id is bound to
        self.worker_limits: dict[bytes, int] = {}
        self.too_large_since: dict[int, float] = {}  # job id -> when no worker could take it
        self.dispatch_due = True  # jobs became pending: offer them to the parked claims
        self.keys_of: dict[bytes, tuple[str, float]] = {}  # routing id -> (key, last used)
        self.last_worker_at = time.monotonic()  # when any worker last sent anything
        self.idle_warned = False
        # the offer socket's open connections, by file descriptor, oldest first (its monitor
        # tells; see Producer(max_connections=))
        self.monitor = sock.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        self.accepted: dict[int, None] = {}
        self.shed_logged_at = -3600.0
        self.forget_at = 0.0  # next time silent workers leave workers_seen
        self.closing = False  # shutdown(): end once every job is resolved
        self.linger_until = 0.0  # ...and workers running a cancelled job have been told
        self.aborted = False  # close(): end now
        self.started_at = time.monotonic()
        self.bad_messages = 0
        self._last_bad_log = 0.0
        self._err_window_end, self._err_left = 0.0, ERR_REPLIES_PER_S
        self.store: JobStore | _NoStore | _EventTap = producer._store or _NoStore()
        if producer._on_event is not None:
            self.store = _EventTap(self.store, producer._on_event)
        self.unrecorded: list[tuple[int, Future[None]]] = []  # (job id, submit waiting to return)
        self.purge_at = 0.0
        restored = producer._restored
        if restored is not None:
            for job in restored.pending:
                try:
                    options = pl.unpack_call(job.payload)[3]
                except ProtocolError:
                    options = {}
                self.ledger.restore(
                    job.job_id, job.payload, attempt=job.attempt,
                    max_attempts=job.max_attempts, leases=dict(job.leases),
                    priority=options.get("priority", 0),
                )
                if "timeout_ms" in options:
                    self.timeouts[job.job_id] = options["timeout_ms"]
                self.futures[job.job_id] = JobFuture(job.job_id, producer._on_cancel)
            log.info("store: %d job(s) restored, %d dead-lettered", len(restored.pending), len(restored.dead))

    def find(self, job_id: int) -> JobFuture | None:
        """The live Future of a job, or a resolved one built from the store, or None."""
        if job_id in self.futures:
            return self.futures[job_id]
        stored = self.store.result(job_id)
        if stored is None:
            return None
        future = JobFuture(job_id)
        if stored.state == "cancelled":
            future.cancel()
        elif stored.state == "dead":
            future.set_exception(JobLost(job_id, None, "dead-lettered before a restart"))
        else:
            self._resolve(future, stored.state == "done", stored.payload)
        return future

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.producer._wake_r, zmq.POLLIN)
        poller.register(self.monitor, zmq.POLLIN)
        while True:
            before = time.monotonic()
            timeout_ms = self._timeout_ms(before)
            events = dict(poller.poll(timeout_ms))
            now = time.monotonic()
            stalled = now - before - timeout_ms / 1000
            if stalled > STALL_S:  # e.g. the app held the GIL in one long C call
                log.warning("producer I/O thread stalled %.1f s; leases extended as much", stalled)
                self.ledger.postpone(stalled)
            if self.producer._wake_r in events:
                self._drain_commands(now)
                if self.unrecorded:  # new jobs are durable before any worker can lease one
                    self._flush(now)
            if self.sock in events:
                self._drain_socket(now)
            if self.monitor in events:
                self._count_connections(now)
            self._expire(now)
            self._dispatch(now)
            self._flush(now)
            if self.closing and (self.aborted or (not self.ledger and now >= self.linger_until)):
                break
        for identity, rid in self.parked.keys():  # let parked workers move on at once
            self._send(identity, p.NoJob(rid=rid))
        self.sock.disable_monitor()
        self.monitor.close(0)
        for job_id, future in self.futures.items():  # only after close()
            if self.ledger.state(job_id) is JobState.PENDING and Future.cancel(future):
                future.set_running_or_notify_cancel()  # wakes wait() and as_completed()
            elif not future.done():
                future.set_exception(ProducerClosed("the producer was closed before the job finished"))

    def _flush(self, now: float) -> None:
        """Make this turn's changes durable, then let waiting submits return."""
        try:
            self.store.flush()
            if now >= self.purge_at:
                self.purge_at = now + PURGE_EVERY_S
                self.store.purge(time.time())
        except StoreError as exc:
            log.error("job store: %s", exc)
            for job_id, recorded in self.unrecorded:  # not durable: refuse these submits
                self._cancel(job_id)  # and never run them: their submit raised
                recorded.set_exception(exc)
            self.unrecorded.clear()
            return
        for _, recorded in self.unrecorded:
            recorded.set_result(None)
        self.unrecorded.clear()

    def _timeout_ms(self, now: float) -> int:
        soonest = self.ledger.next_deadline()
        first = self.parked.next_expiry()
        if first is not None:
            soonest = first if soonest is None else min(soonest, first)
        if soonest is None:
            return 1000
        return max(0, min(1000, int((soonest - now) * 1000) + 1))

    # --- commands from application threads --------------------------------------------------

    def _drain_commands(self, now: float) -> None:
        try:
            while os.read(self.producer._wake_r, 65536):
                pass
        except BlockingIOError:
            pass
        # Cleared after reading the pipe and before draining the queue: a _put that still
        # sees True has its command drained below; one that sees False writes a new byte.
        self.producer._wake_pending = False
        commands = self.producer._commands
        while True:
            try:
                command = commands.get_nowait()
            except queue.Empty:
                return
            verb = command[0]
            if verb == "submit":
                _, job_id, payload, future, recorded, options = command
                self.futures[job_id] = future
                self.dispatch_due = True
                self.ledger.submit(
                    job_id, payload, max_attempts=options.max_attempts, priority=options.priority
                )
                self.store.add(job_id, payload, options.max_attempts or self.ledger.max_attempts)
                if options.timeout_s is not None:
                    self.timeouts[job_id] = int(options.timeout_s * 1000)
                if recorded is not None:
                    self.unrecorded.append((job_id, recorded))
            elif verb == "cancel":
                self._cancel(command[1])
            elif verb == "call":
                _, fn, answer = command
                try:
                    answer.set_result(fn(self))
                except Exception as exc:  # handed back to the caller, never kills the loop
                    answer.set_exception(exc)
            elif verb == "close":
                self.closing = self.aborted = True
            elif verb == "shutdown":
                self.closing = True
                if command[1]:  # cancel_futures: the jobs no worker holds, as Executor does
                    for job_id, future in list(self.futures.items()):
                        if self.ledger.state(job_id) is JobState.PENDING:
                            future.cancel()  # posts a "cancel" command

    # --- messages from workers --------------------------------------------------------------

    def _drain_socket(self, now: float) -> None:
        secure = self.producer._curve is not None
        for _ in range(RECV_BATCH):
            try:
                if secure:
                    parts = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    key = str(parts[-1].get("User-Id"))
                    frames = [part.bytes for part in parts]
                else:
                    frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            if len(frames) < 2:
                self._bad(None, ProtocolError(p.E_MALFORMED, "no routing id"))
                continue
            identity = frames[0]
            if secure and not self._bind_key(identity, key, now):
                continue
            try:
                msg = p.decode_request(frames[1:], self.max_payload)
            except ProtocolError as exc:
                self._bad(identity, exc)
                continue
            if not isinstance(msg, p.Status):  # freelance-status is no worker
                self.workers_seen[identity] = now
                self.last_worker_at = now
            self._handle(identity, msg, now)

    def _bind_key(self, identity: bytes, key: str, now: float) -> bool:
        """With CURVE, a routing id belongs to the key that used it first, until it has not
        been used for WORKER_FORGET_S: a message under it from another key is refused."""
        bound = self.keys_of.get(identity)
        if bound is None or bound[0] == key:
            self.keys_of[identity] = (key, now)
            return True
        self._bad(identity, ProtocolError(
            p.E_INVALID, f"routing id {worker_label(identity)} belongs to another client key",
        ))
        return False

    def _count_connections(self, now: float) -> None:
        """Follow the offer socket's open connections (its monitor's ACCEPTED and
        DISCONNECTED events); past max_connections, close the newest ones at once."""
        from zmq.utils.monitor import recv_monitor_message

        while True:
            try:
                event = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                break
            if event["event"] == zmq.EVENT_ACCEPTED:
                self.accepted[event["value"]] = None
            else:
                self.accepted.pop(event["value"], None)
        limit = self.producer.max_connections
        if len(self.accepted) <= limit:
            return
        shed = 0
        for fd in list(self.accepted)[limit:]:
            shed += _shut_connection(fd, self.producer._port)
            del self.accepted[fd]  # its DISCONNECTED event follows; never shut it twice
        if now - self.shed_logged_at > 10.0:
            self.shed_logged_at = now
            log.warning(
                "offer socket: more than %d connections open (max_connections): closed the "
                "%d newest. A fleet this large needs a higher max_connections and open-file "
                "limit (ulimit -n); otherwise this is a flood of connections", limit, shed,
            )

    def _bad(self, identity: bytes | None, exc: ProtocolError) -> None:
        self.bad_messages += 1
        now = time.monotonic()
        if now - self._last_bad_log > 1.0:  # at most one line a second under a flood
            self._last_bad_log = now
            log.warning(
                "bad message from %s: %s (%d bad so far)",
                "?" if identity is None else worker_label(identity), clean(exc.message),
                self.bad_messages,
            )
        if now >= self._err_window_end:
            self._err_window_end, self._err_left = now + 1.0, ERR_REPLIES_PER_S
        if identity is not None and self._err_left > 0:  # a flood of junk is dropped cheaply
            self._err_left -= 1
            self._send(identity, p.Err(rid=exc.rid, code=exc.code, message=exc.message))

    def _handle(self, identity: bytes, msg: p.Request, now: float) -> None:
        if isinstance(msg, p.Claim):
            self._claim(identity, msg, now)
        elif isinstance(msg, p.Result):
            self._result(identity, msg, now)
        elif isinstance(msg, p.Beat):
            void = self.ledger.beat(identity, msg.leases, now)
            self._send(identity, p.BeatAck(rid=msg.rid, void=tuple(void)))
            for lease_id, done, total, message in msg.progress or ():
                job_id = self.ledger.job_of(identity, lease_id)
                if job_id is not None:
                    progress = JobProgress(done, total, message[:PROGRESS_MESSAGE_CHARS])
                    self.futures[job_id].progress = progress
                    self.progressing[job_id] = identity
        elif isinstance(msg, p.Decline):
            self._release(identity, msg.job_id, msg.lease_id)
            self._send(identity, p.Ack(rid=msg.rid))
            if msg.max_job is not None:  # over the worker's limit: a claim that did not say it
                self.worker_limits[identity] = msg.max_job
                self._refuse_too_large(msg.max_job, now)
        elif isinstance(msg, p.CancelClaim):
            self.parked.remove(identity, msg.claim_rid)
            self._send(identity, p.Ack(rid=msg.rid))
        elif isinstance(msg, p.Bye):
            self.parked.drop_worker(identity)
            self._send(identity, p.Ack(rid=msg.rid))
        elif isinstance(msg, p.Status):
            self._send(identity, p.StatusReply(rid=msg.rid, info=self.status(now)))

    def _claim(self, identity: bytes, claim: p.Claim, now: float, ack: int | None = None) -> None:
        """Answer a claim with a job now, or park it. ``ack``: rid of the RESULT that carried
        the claim, acknowledged by the JOB, or by an ACK when the claim is parked."""
        # a worker that does not say (an older one) takes what its MAXMSGSIZE lets through
        self.worker_limits[identity] = p.DEFAULT_MAX_PAYLOAD if claim.max_job is None else claim.max_job
        if self._offer(identity, claim.rid, now, ack):
            return
        if ack is not None:
            self._send(identity, p.Ack(rid=ack))
        expires_at = now + min(claim.wait_ms, MAX_WAIT_MS) / 1000
        parked, shed = self.parked.park(identity, claim.rid, expires_at)
        if not parked:
            self._send(identity, p.NoJob(rid=claim.rid))  # over its share: no memory for a flood
        if shed is not None:
            self._send(shed[0], p.NoJob(rid=shed[1]))

    def _offer(self, identity: bytes, rid: int, now: float, ack: int | None = None) -> bool:
        """Lease the next job the worker can take to a claim; False when there is none (or
        the worker is gone: then its parked claims are dropped too)."""
        limit = self.worker_limits.get(identity, p.DEFAULT_MAX_PAYLOAD)
        if limit < self.max_payload and self.ledger.too_large(limit):
            self._refuse_too_large(limit, now)
        while True:
            lease = self.ledger.claim(identity, now, None if limit >= self.max_payload else limit)
            if lease is None:
                return False
            future = self.futures[lease.job_id]
            if future.cancelled():
                self._cancel(lease.job_id)  # cancelled while its "cancel" was in flight
                continue
            self.store.lease(lease.job_id, lease.lease_id, identity, lease.attempt)
            job = p.Job(
                rid=rid, job_id=lease.job_id, lease_id=lease.lease_id, attempt=lease.attempt,
                lease_ms=self.lease_ms, payload=lease.payload, ack=ack,
                timeout_ms=self.timeouts.get(lease.job_id), max_result=self.max_result,
            )
            if self._send(identity, job):
                return True
            self._release(identity, lease.job_id, lease.lease_id)
            return False

    def _refuse_too_large(self, limit: int, now: float) -> None:
        """Fail the pending jobs too large for a worker of ``limit`` bytes that have also
        been too large for every worker heard from for TOO_LARGE_GRACE_S: no worker would
        ever take them. (Jobs some worker can take wait for it; the grace lets the workers of
        a fleet that is starting connect; the check costs nothing when the head job fits.)"""
        largest = max(self.worker_limits.values(), default=limit)
        if largest >= self.max_payload:
            self.too_large_since.clear()
            return
        for job_id in self.ledger.too_large(largest):
            if now - self.too_large_since.setdefault(job_id, now) < TOO_LARGE_GRACE_S:
                continue
            del self.too_large_since[job_id]
            size = self.ledger.payload_size(job_id)
            if not self.ledger.refuse(job_id):
                continue
            message = (
                f"job {job_id} takes {size} bytes encoded; the connected workers take at most "
                f"{largest} (their --max-payload-bytes), this producer up to {self.max_payload} "
                "(max_payload_bytes): start workers with a larger --max-payload-bytes, or pass "
                "a path or URL to the data instead"
            )
            log.error("%s", message)
            error = pl.pack_error("JobTooLarge", message, "")
            self.store.finish(job_id, "failed", error, time.time())
            future = self._forget(job_id)
            if future is not None:
                self._resolve(future, False, error)

    def _release(self, identity: bytes, job_id: int, lease_id: int) -> None:
        if self.ledger.release(identity, job_id, lease_id):
            self.dispatch_due = True
            self.store.release(job_id, lease_id)

    def _cancel(self, job_id: int) -> None:
        was = self.ledger.cancel(job_id)
        if was is not None:
            self.store.finish(job_id, "cancelled", b"", time.time())
        if was is JobState.LEASED:  # its worker learns at its next BEAT: let that come first
            self.linger_until = time.monotonic() + self.ledger.lease_s / 2
        future = self._forget(job_id)
        if future is not None and future.cancelled():
            # as ThreadPoolExecutor does: wakes concurrent.futures.wait() and as_completed()
            future.set_running_or_notify_cancel()

    def _result(self, identity: bytes, msg: p.Result, now: float) -> None:
        if msg.crashed:  # the job's process died: a lost attempt, as if the lease expired
            lost = self.ledger.lose(identity, msg.job_id, msg.lease_id)
            if lost is not None:  # recorded before the claim it carries may lease it again
                try:
                    reason = "the job's process died: " + pl.unpack_error(msg.payload)[1]
                except ProtocolError:
                    reason = "the job's process died"
                self._lost(lost, reason)
            self._answer_result(identity, msg, now)
            return
        accepted = self.ledger.resolve(identity, msg.job_id, msg.lease_id, msg.ok)
        self._answer_result(identity, msg, now)  # before the Future: callbacks may be slow
        if not accepted:
            log.debug("stale result for job %d dropped", msg.job_id)
            return
        self.store.finish(msg.job_id, "done" if msg.ok else "failed", msg.payload, time.time())
        self.throughput.add(now)
        future = self._forget(msg.job_id)
        assert future is not None  # a live job has its Future
        self._resolve(future, msg.ok, msg.payload)

    def _answer_result(self, identity: bytes, msg: p.Result, now: float) -> None:
        if msg.claim is None:
            self._send(identity, p.Ack(rid=msg.rid))
        else:
            self._claim(identity, msg.claim, now, ack=msg.rid)

    def _forget(self, job_id: int) -> JobFuture | None:
        """A job left the ledger: drop what the loop kept for it; return its Future."""
        self.timeouts.pop(job_id, None)
        self.progressing.pop(job_id, None)
        self.too_large_since.pop(job_id, None)
        return self.futures.pop(job_id, None)

    @staticmethod
    def _resolve(future: JobFuture, ok: bool, payload: bytes) -> None:
        try:
            if ok:
                future.set_result(pl.unpack_value(payload))
            else:
                remote = pl.unpack_error(payload)
                error = _LOCAL_ERRORS.get(remote[0], JobFailed)
                future.set_exception(error(*remote))
        except ProtocolError as exc:  # a result we cannot read still resolves the Future
            future.set_exception(exc)

    def _send(self, identity: bytes, msg: p.Reply) -> bool:
        try:
            send_frames(self.sock, [identity, *p.encode(msg)])
            return True
        except (zmq.Again, zmq.ZMQError) as exc:  # EHOSTUNREACH: the worker is gone
            log.debug("cannot send to %s: %s", worker_label(identity), exc)
            self._forget_worker(identity)
            return False

    def _forget_worker(self, identity: bytes) -> None:
        self.workers_seen.pop(identity, None)
        self.worker_limits.pop(identity, None)
        self.parked.drop_worker(identity)

    # --- time ------------------------------------------------------------------------------

    def _lost(self, lost: Expired, reason: str | None = None) -> None:
        """A lease was lost (expired, or its job's process died): the ledger re-queued the job
        or dead-lettered it."""
        if lost.dead:
            self.store.finish(lost.job_id, "dead", b"", time.time())
            future = self._forget(lost.job_id)
            assert future is not None
            future.set_exception(JobLost(lost.job_id, lost.attempt, reason))
            log.warning("job %d dead-lettered after %d attempts", lost.job_id, lost.attempt)
        else:
            self.store.requeue(lost.job_id, lost.attempt + 1)
            self.dispatch_due = True
            log.info("job %d lost its lease (%s); re-queued", lost.job_id, reason or "expired")

    def _expire(self, now: float) -> None:
        for expired in self.ledger.expire(now):
            self._lost(expired)
        for identity, rid in self.parked.expired(now):
            self._send(identity, p.NoJob(rid=rid))
        if now >= self.forget_at:  # bounds the tables; status() shows only the recent ones
            self.forget_at = now + WORKER_FORGET_S
            for identity in [k for k, t in self.workers_seen.items() if now - t > WORKER_FORGET_S]:
                self._forget_worker(identity)
            self.keys_of = {k: v for k, v in self.keys_of.items() if now - v[1] <= WORKER_FORGET_S}
        self._warn_if_unserved(now)

    def _warn_if_unserved(self, now: float) -> None:
        """Say once (until a worker speaks again) that jobs wait and no worker has said
        anything for NO_WORKER_WARN_S: a wrong group, or no worker started."""
        if not self.ledger.pending or now - self.last_worker_at < NO_WORKER_WARN_S:
            self.idle_warned = False
            return
        if self.idle_warned:
            return
        self.idle_warned = True
        group = self.producer.group
        log.warning(
            "%d job(s) waiting and no worker has spoken to producer %s (group %r) for %.0f s: "
            "start workers of this group, e.g. `freelance-worker --discover --group %s "
            "--tasks MODULE`, or `--connect %s`", self.ledger.pending,
            self.producer.producer_id, group, now - self.last_worker_at, group,
            self.producer.endpoints[0] if self.producer.endpoints else "ENDPOINT",
        )

    def _dispatch(self, now: float) -> None:
        """Hand pending jobs to parked claims, one worker identity after another, when jobs
        became pending since the last time; stops after a whole round of identities took
        nothing (the pending jobs are too large for the workers that wait)."""
        if not self.dispatch_due:
            return
        self.dispatch_due = False
        took_nothing: set[bytes] = set()
        while self.parked and self.ledger.pending:
            identity, rid, expires_at = self.parked.pop_next()
            if identity in took_nothing:
                self.parked.park(identity, rid, expires_at)
                return
            if not self._offer(identity, rid, now) and identity in self.workers_seen:
                self.parked.park(identity, rid, expires_at)  # nothing it can take: wait on
                took_nothing.add(identity)

    def status(self, now: float) -> dict[str, Any]:
        """Counts and facts for STATUS."""
        from .._version import __version__

        counts = {state.value: n for state, n in self.ledger.counts.items()}
        recent = sorted(
            ((identity, seen) for identity, seen in self.workers_seen.items()
             if now - seen <= WORKER_FORGET_S), key=lambda item: -item[1],
        )
        return {
            **counts,
            "producer_id": self.producer.producer_id,
            "group": self.producer.group,
            "endpoints": self.producer.endpoints,
            "workers": len(recent),
            "worker_list": [
                {
                    "id": worker_label(identity),
                    "last_seen_s": round(now - seen, 3),
                    "running": len(self.ledger.leases_of(identity)),
                }
                for identity, seen in recent[:WORKERS_IN_STATUS]
            ],
            "finished_last_min": self.throughput.count(now),
            "progress": [
                {
                    "job_id": job_id,
                    "worker": worker_label(identity),
                    **self.futures[job_id].progress._asdict(),  # type: ignore[union-attr]
                }
                for job_id, identity in list(self.progressing.items())[:PROGRESS_IN_STATUS]
            ],
            "parked_claims": len(self.parked),
            "uptime_s": round(now - self.started_at, 3),
            "version": __version__,
            "bad_messages": self.bad_messages,
            "connections": len(self.accepted),
        }


class _ParkedClaims:
    """Claims waiting for a job (long-polls), expired through a heap. Jobs go to the worker
    identities in turn (each one's oldest claim), and each identity may park at most
    MAX_PARKED_PER_WORKER claims: a flood of CLAIMs from one identity is answered NOJOB at
    once, neither growing the producer nor starving the other workers (a real worker parks
    one claim per free slot)."""

    def __init__(self) -> None:
        self._order: dict[tuple[bytes, int], float] = {}  # (identity, rid) -> expires_at
        # identity -> its parked rids, oldest first; identities in the order they are served
        self._by_worker: dict[bytes, dict[int, None]] = {}
        self._heap: list[tuple[float, bytes, int]] = []  # may hold removed claims: skipped

    def __len__(self) -> int:
        return len(self._order)

    def keys(self) -> list[tuple[bytes, int]]:
        return list(self._order)

    def park(
        self, identity: bytes, rid: int, expires_at: float
    ) -> tuple[bool, tuple[bytes, int] | None]:
        """Park a claim. Returns whether it was parked (not when the identity already has
        MAX_PARKED_PER_WORKER parked, or when MAX_PARKED are parked and it has the most), and
        the claim shed to make room (the oldest of the identity with the most, which gets
        NOJOB), if any."""
        rids = self._by_worker.get(identity, {})
        if len(rids) >= MAX_PARKED_PER_WORKER or (identity, rid) in self._order:
            return False, None
        shed = None
        if len(self._order) >= MAX_PARKED:
            top = max(self._by_worker, key=lambda other: len(self._by_worker[other]))
            if len(self._by_worker[top]) <= len(rids) + 1:
                return False, None
            shed = (top, next(iter(self._by_worker[top])))
            self.remove(*shed)
        rids = self._by_worker.setdefault(identity, rids)
        rids[rid] = None
        self._order[(identity, rid)] = expires_at
        heapq.heappush(self._heap, (expires_at, identity, rid))
        if len(self._heap) > 2 * len(self._order) + 1024:  # churn left stale entries: compact
            self._heap = [(t, i, r) for (i, r), t in self._order.items()]
            heapq.heapify(self._heap)
        return True, shed

    def remove(self, identity: bytes, rid: int) -> bool:
        if self._order.pop((identity, rid), None) is None:
            return False
        rids = self._by_worker[identity]
        del rids[rid]
        if not rids:
            del self._by_worker[identity]
        return True

    def drop_worker(self, identity: bytes) -> None:
        for rid in self._by_worker.pop(identity, ()):
            del self._order[(identity, rid)]

    def pop_next(self) -> tuple[bytes, int, float]:
        """Remove the oldest claim of the identity whose turn it is (call only when
        non-empty), that identity going to the back of the line; returns the claim and
        when it expires."""
        identity, rids = next(iter(self._by_worker.items()))
        rid = next(iter(rids))
        expires_at = self._order[(identity, rid)]
        self.remove(identity, rid)
        if identity in self._by_worker:
            self._by_worker[identity] = self._by_worker.pop(identity)
        return identity, rid, expires_at

    def expired(self, now: float) -> list[tuple[bytes, int]]:
        """Remove and return the claims whose wait is over."""
        out = []
        while self._heap and self._heap[0][0] <= now:
            _, identity, rid = heapq.heappop(self._heap)
            if self._order.get((identity, rid), now + 1) <= now and self.remove(identity, rid):
                out.append((identity, rid))
        return out

    def next_expiry(self) -> float | None:
        return self._heap[0][0] if self._heap else None


_LOCAL_ERRORS: dict[str, type[JobFailed]] = {"JobTimeout": JobTimeout, "JobTooLarge": JobTooLarge}
_LABELS: dict[bytes, str] = {}  # routing id -> worker_label, a cache bounded below


def worker_label(identity: bytes) -> str:
    """How a worker is shown (STATUS, events, logs): ``NAME-xxxxxxxx``, its name and a hash
    of its routing id. The routing id itself is a secret (whoever has it can take the
    worker's replies), so it is never shown."""
    label = _LABELS.get(identity)
    if label is None:
        name = identity.rpartition(b"-")[0] or identity[:32]
        label = f"{clean(name, 64)}-{hashlib.blake2b(identity, digest_size=4).hexdigest()}"
        if len(_LABELS) >= 4096:
            _LABELS.clear()
        _LABELS[identity] = label
    return label


class _RecentCount:
    """Events in the last ``window_s`` seconds, counted in one-second buckets (O(window))."""

    def __init__(self, window_s: int = 60) -> None:
        self.window_s = window_s
        self.buckets: collections.deque[list[int]] = collections.deque()  # [second, count]

    def add(self, now: float) -> None:
        second = int(now)
        if self.buckets and self.buckets[-1][0] == second:
            self.buckets[-1][1] += 1
            return
        self.buckets.append([second, 1])
        while self.buckets[0][0] <= second - self.window_s:
            self.buckets.popleft()

    def count(self, now: float) -> int:
        oldest = int(now) - self.window_s
        return sum(n for second, n in self.buckets if second > oldest)



def _shut_connection(fd: int, port: int) -> int:
    """Shut down the TCP connection libzmq holds as ``fd`` (libzmq then closes it as if the
    peer had gone), after checking on a duplicate of the descriptor that it still is a
    connection to our offer ``port`` (a descriptor number can be reused once libzmq closed
    it). Returns 1 if it was shut down, else 0."""
    try:
        conn = socket.socket(fileno=os.dup(fd))
    except OSError:
        return 0
    try:
        if conn.type == socket.SOCK_STREAM and conn.getsockname()[1] == port:
            conn.shutdown(socket.SHUT_RDWR)
            return 1
    except OSError:
        pass
    finally:
        conn.close()
    return 0


class _NoStore:
    """Stands in for a :class:`JobStore` when the producer keeps jobs in memory only."""

    def add(self, job_id: int, payload: bytes, max_attempts: int) -> None:
        pass

    def lease(self, job_id: int, lease_id: int, worker: bytes, attempt: int) -> None:
        pass

    def release(self, job_id: int, lease_id: int) -> None:
        pass

    def requeue(self, job_id: int, attempt: int) -> None:
        pass

    def finish(self, job_id: int, state: str, payload: bytes, finished_at: float) -> None:
        pass

    def flush(self) -> None:
        pass

    def purge(self, now: float) -> int:
        return 0

    def result(self, job_id: int) -> None:
        return None


class _EventTap:
    """Passes the loop's journal calls to the store and tells ``on_event`` about each: the
    store is already told every step of a job's life, at exactly the right moments."""

    def __init__(self, store: JobStore | _NoStore, on_event: Callable[[JobEvent], None]) -> None:
        self._store = store
        self._on_event = on_event
        self.flush = store.flush
        self.purge = store.purge
        self.result = store.result

    def _emit(self, *event: Any) -> None:
        try:
            self._on_event(JobEvent(*event))
        except Exception:  # a tracing hook must never take the producer down
            log.exception("on_event callback failed")

    def add(self, job_id: int, payload: bytes, max_attempts: int) -> None:
        self._store.add(job_id, payload, max_attempts)
        self._emit("submitted", job_id, time.time())

    def lease(self, job_id: int, lease_id: int, worker: bytes, attempt: int) -> None:
        self._store.lease(job_id, lease_id, worker, attempt)
        self._emit("leased", job_id, time.time(), worker_label(worker), attempt)

    def release(self, job_id: int, lease_id: int) -> None:
        self._store.release(job_id, lease_id)
        self._emit("released", job_id, time.time())

    def requeue(self, job_id: int, attempt: int) -> None:
        self._store.requeue(job_id, attempt)
        self._emit("requeued", job_id, time.time(), None, attempt)

    def finish(self, job_id: int, state: str, payload: bytes, finished_at: float) -> None:
        self._store.finish(job_id, state, payload, finished_at)
        self._emit(state, job_id, finished_at)

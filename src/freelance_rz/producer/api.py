"""Producer: an embedded ``concurrent.futures.Executor`` whose jobs are pulled by workers.

The :class:`Producer` object is the application's side: it checks arguments, encodes jobs
and hands typed commands to its I/O thread (:class:`~freelance_rz.producer.thread.OfferThread`),
which alone touches the offer socket and the job ledger. The split is pyzmq's
``ThreadAuthenticator`` (the API object) and ``AuthenticationThread`` (the thread that owns
the socket).
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import logging
import os
import resource
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, Future
from typing import Any, ClassVar

from ..core import check as _check
from ..core import payload as pl
from ..core import wire as w
from ..core.ledger import Ledger, timeout_ms
from ..core.match import Needs
from ..discovery import resolve_interfaces
from ..security import CurveServer, check_pair, load_keypair
from ..tasks import task_name
from ..tracing import active as tracing_active
from ..tracing import start_job_span
from .future import JobEvent, JobFuture, JobProgress
from .store import JobStore, Restored
from ..core.schedule import MIN_EVERY_S, Schedule, check_cron
from .depends import depends_on, owns, reference
from .schedules import ScheduleCommand, ScheduleHandle, default_name
from .when import delay_of, due_time, retry_policy
from .thread import AskStatus, Cancel, Close, FindJob, Limit, OfferThread, Settings, Shutdown, Submit

log = logging.getLogger("freelance_rz.producer")

DEFAULT_LEASE_S = 1.0  # C4: a dead worker's job is re-offered within 1 s
MIN_LEASE_S = 0.2  # below this, heartbeats (every lease / 4) cannot keep up on a busy host
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_RETENTION_S = 7 * 24 * 3600.0  # finished results kept in a store a week...
DEFAULT_RETENTION_COUNT = 100_000  # ...and at most this many
EXIT_WAIT_S = 5.0  # leaving `with` by an exception waits this long for running jobs
MAX_PAYLOAD_LIMIT = 2**62  # bytes: the largest max_payload_bytes (MAXMSGSIZE is an int64)


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
            offers its pending jobs again, keeps the leases of those that were leased for
            ``lease_s`` from the restart (a worker still running one renews it with its next
            heartbeat and the job goes on there; otherwise it is re-offered with attempt + 1,
            or dead-lettered on its last attempt, about ``lease_s`` after it is announced), keeps
            delayed jobs and retry backoffs waiting for their due times, jobs with
            dependencies waiting for them, and schedules with the slot each last fired for,
            keeps finished results (:meth:`get`) and accepts results that workers still hold for the
            old process (the zguide's Titanic pattern, without a broker). A
            KeyboardInterrupt inside :meth:`submit` after the job was recorded leaves it stored
            (it runs) without its Future reaching the caller.
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
        advertise: ``"HOST:PORT"`` (or ``"tcp://HOST:PORT"``) workers should connect to,
            announced (mDNS TXT ``ep``) and written (``endpoints_file``) instead of the bound
            endpoints: a producer behind NAT, or in a container whose published port or
            Service differs from what it binds. Give ``port`` too, so the bound port is fixed.
        endpoints_file: a file of producer endpoints on a file system the workers share
            (``freelance-worker --connect-file PATH``): this producer adds its line when it
            starts (its advertised or first non-loopback endpoint, with ``id``, ``g`` and,
            when they apply, ``sk`` and ``pk``) and removes it when it closes; the file is
            rewritten atomically under a lock (:mod:`freelance_rz.endpointsfile`). A producer
            killed without closing leaves its line; workers find it silent and stop waiting
            on it as on any silent producer.
        admin_token: a secret (16 to 256 characters) that lets an operator cancel a job or
            retry a recent failure over the wire (the ADMIN verb, e.g. from ``freelance-status
            --serve --token-file``). None: such requests are refused. Without CURVE it
            crosses the network in clear text (docs/security.md).
        metrics_port, metrics_host: serve Prometheus metrics at
            ``http://metrics_host:metrics_port/metrics`` from :meth:`start` on (port 0: a free
            one, see :attr:`metrics_url`); needs the ``metrics`` extra (``prometheus_client``).
            Every metric is in docs/operations.md. None: no endpoint.

    :attr:`metrics_url` is the metrics endpoint's address once started (None without one).

    Threads start at :meth:`start`, on ``with``, or on the first :meth:`submit`, never in the
    constructor. The design is the zguide's "freelance" pattern (ch. 4) turned around: the
    servers (workers) pull from the clients (producers), so there is no broker.

    Ranges: ``group`` 1 to 63 characters; ``port`` 0 to 65535; ``lease_s`` 0.2 to 1e9
    seconds; ``max_attempts`` >= 1; ``retention_s`` >= 0 seconds and ``retention_count`` >= 0
    (or None); ``max_payload_bytes`` 1 to 2**62; ``max_connections`` >= 1 (or None);
    ``advertise`` a port 1 to 65535 and a host that is an IPv4 address, a bracketed IPv6
    address or a DNS name.

    Raises:
        TypeError: an argument of the wrong type (e.g. ``lease_s="1"``, ``max_attempts=2.5``,
            ``announce=None``, ``interfaces="10.0.0.5"`` instead of a list); the message names
            the argument, what it must be and the value given.
        ValueError: an argument out of its range, or an interface that is not an IPv4
            address; only one of ``secret_key`` and ``authorized_workers``; an unreadable key
            file or a directory without public keys.
        freelance_rz.StoreError: the store is corrupt, of a newer schema, or in use.
    """

    metrics_url: str | None = None  # set by start() when serving metrics

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
        max_payload_bytes: int = w.DEFAULT_MAX_PAYLOAD,
        on_event: Callable[[JobEvent], None] | None = None,
        secret_key: str | os.PathLike[str] | None = None,
        authorized_workers: str | os.PathLike[str] | None = None,
        max_connections: int | None = None,
        advertise: str | None = None,
        endpoints_file: str | os.PathLike[str] | None = None,
        admin_token: str | None = None, metrics_port: int | None = None, metrics_host: str = "127.0.0.1",
    ) -> None:
        group = _check.group(group)
        reach = _advertised(advertise), _check.path("endpoints_file", endpoints_file)
        interfaces = _check.strings("interfaces", interfaces, example="['192.168.1.20']", allow_none=True)
        port = _check.integer("port", port, min_=0, max_=65535)  # 0: any free port
        # workers heartbeat every lease_s / 4: below MIN_LEASE_S they cannot keep up
        lease_s = _check.number("lease_s", lease_s, min_=MIN_LEASE_S, max_=_check.MAX_SECONDS, unit="seconds")
        max_attempts = _check.integer("max_attempts", max_attempts, min_=1, max_=_check.INT64_MAX)
        announce = _check.boolean("announce", announce)
        store = _check.path("store", store)
        retention_s, retention_count = _retention(retention_s, retention_count)
        max_payload_bytes = _check.integer(
            "max_payload_bytes", max_payload_bytes, min_=1, max_=MAX_PAYLOAD_LIMIT, unit="bytes"
        )
        on_event = _check.function("on_event", on_event)
        admin_token = _check.string("admin_token", admin_token, min_chars=16, max_chars=w.TOKEN_MAX, allow_none=True)
        curve = _curve_server(_check.path("secret_key", secret_key),
                              _check.path("authorized_workers", authorized_workers))
        self.group = group
        self.max_payload_bytes = max_payload_bytes
        self.max_connections = _max_connections(max_connections)
        self.interfaces = resolve_interfaces(interfaces)
        self.port = port
        self.announce = announce
        self.producer_id = uuid.uuid4().hex[:16]
        self._metrics_at = _check.metrics_address(metrics_port, metrics_host)
        job_store, restored, first_id = _open_store(store, retention_s, retention_count)
        self.store_key: str | None = None if restored is None else restored.producer_key
        self._job_ids = itertools.count(first_id)
        self._durable = job_store is not None
        settings = Settings(
            self.producer_id, group, self.interfaces, port, announce, max_payload_bytes,
            self.max_connections, curve, self.store_key, on_event, restored,
            advertised=reach[0], endpoints_file=reach[1], admin_token=admin_token,
        )
        self.advertise = reach[0]
        self._io = OfferThread(settings, Ledger(lease_s=lease_s, max_attempts=max_attempts),
                               job_store, self._on_cancel, self._job_ids.__next__)
        self._lock = threading.Lock()  # guards the start/shutdown state below
        self._started = False
        self._shutdown = False

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
            first, self._started = not self._started, True
        if first:
            self._io.start()
            if self._metrics_at is not None:
                self._serve_metrics(*self._metrics_at)
        else:
            self._io.wait_started()
        return self

    def _serve_metrics(self, host: str, port: int) -> None:
        """Serve this producer's metrics until its I/O thread ends (closes it if it cannot)."""
        try:
            from ..metrics import MetricsServer, ProducerCollector

            server = MetricsServer(ProducerCollector(self), host, port)
        except BaseException:
            self.close()
            raise
        self.metrics_url = server.url
        self._io.on_end.append(server.close)

    @property
    def endpoint(self) -> str:
        """The bound ROUTER endpoint, e.g. ``"tcp://127.0.0.1:41234"`` (the first one when
        bound on several interfaces). Raises RuntimeError before :meth:`start`."""
        if not self._io.endpoints:
            raise RuntimeError("the producer is not started: call start() or use 'with'")
        return self._io.endpoints[0]

    @property
    def endpoints(self) -> list[str]:
        """Every bound endpoint (one per interface)."""
        return list(self._io.endpoints)

    @property
    def _curve(self) -> CurveServer | None:
        return self._io.settings.curve

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
        self, *, timeout_s: float | None = None, max_attempts: int | None = None, priority: int = 0,
        resources: Mapping[str, float] | None = None, labels: Mapping[str, str] | None = None,
        retry_on: Any = None, max_retries: int | None = None, backoff_s: float | None = None,
        backoff_max_s: float | None = None, jitter: bool | None = None,
        delay_s: float | None = None, at: datetime.datetime | None = None, after: Any = None,
    ) -> JobOptions:
        """Job options for the jobs submitted through the returned object, e.g.
        ``producer.options(timeout_s=30, priority=5).submit(fn, x)`` or
        ``producer.options(resources={"gpu": 1}, labels={"zone": "eu"}).submit(render, scene)``.

        Args:
            timeout_s: seconds a job may run on a worker; past that its process is killed and
                its Future fails with :class:`~freelance_rz.JobTimeout` (not retried).
            max_attempts: leases the job may lose before it is dead-lettered (default: the
                producer's).
            priority: higher is handed out first; FIFO within one priority (default 0).
            resources: what the job holds on its worker while it runs, name -> amount (e.g.
                ``{"gpu": 1, "mem_gb": 16}``): only a worker with that much free
                (``--resources gpu=1,mem_gb=64``) is handed the job. Amounts are numbers >= 0
                in units of your choosing.
            labels: labels its worker must carry, name -> value (``{"zone": "eu"}``: a
                worker started with ``--label zone=eu``).
            retry_on: task errors retried: an exception class, a ``"module:QualName"`` string
                (for classes the producer cannot import), or a tuple of them; an error matches
                when its class or one of its bases is named (``ConnectionError`` retries a
                ``ConnectionRefusedError``). The job is offered again after the backoff; once
                ``max_retries`` are spent its Future fails with the last error
                (:class:`~freelance_rz.JobFailed`, whose ``attempts`` says how many runs
                there were). Lost leases are not task errors: ``max_attempts`` counts those.
            max_retries: retries at most (0 to 10**6; default 3), also for a task that raises
                :class:`~freelance_rz.Retry`.
            backoff_s, backoff_max_s: seconds before the first retry (default 1), doubling
                with each retry up to ``backoff_max_s`` (default 60, and at least backoff_s).
            jitter: wait a random time in the upper half of each backoff (default True), so
                jobs that failed together do not all come back at once.
            after: Futures of this producer's jobs that must succeed before this one is
                offered (ordering only; a Future passed as an argument, even inside a list or
                dict, also makes the job wait, and is replaced by that job's result). If one
                fails, is cancelled or dead-lettered, this job fails at once with
                :class:`~freelance_rz.DependencyFailed` naming it, and so on down the chain.
            delay_s: seconds from now before the job may be offered (>= 0); cancellable
                meanwhile (it is ``deferred`` in :meth:`status`).
            at: an aware ``datetime`` before which the job may not be offered (naive ones are
                refused: their time zone would be a guess). It is converted to the
                producer's monotonic clock once, at submit; a durable producer stores it as
                wall time and converts it again after a restart.

        The job's task is a requirement too: only a worker with the task's module in its
        ``--tasks`` is handed it. A job that no connected worker can run waits (it is listed
        in :meth:`status` ``waiting`` and logged) and runs when such a worker claims.

        Raises:
            TypeError: ``timeout_s`` not a number (or None), ``max_attempts`` or ``priority``
                not an int (bools are refused); ``resources`` or ``labels`` not a dict of str
                to numbers or str.
            ValueError: ``timeout_s`` not in (0, 1e9] seconds, ``max_attempts`` < 1, a
                negative ``delay_s`` or backoff, a naive ``at``, both ``delay_s`` and ``at``,
                ``priority`` outside the signed 64-bit range (-2**63 to 2**63 - 1); more than
                32 resources or labels, a name that is not 1 to 64 of ``A-Z a-z 0-9 _ . -``
                (starting with a letter or ``_``), an amount that is not a finite number from
                0 to 1e15, a label value over 128 characters.
        """
        return JobOptions(self, timeout_s=timeout_s, max_attempts=max_attempts, priority=priority,
                          resources=resources, labels=labels, retry_on=retry_on,
                          max_retries=max_retries, backoff_s=backoff_s,
                          backoff_max_s=backoff_max_s, jitter=jitter, delay_s=delay_s, at=at,
                          after=after)

    def _submit(
        self, fn: Callable[..., Any] | str, args: tuple[Any, ...], kwargs: dict[str, Any],
        options: JobOptions,
    ) -> JobFuture:
        task = task_name(fn)
        deps: list[JobFuture] = []
        foreign = [f for f in options.after if not owns(self, f)]
        payload = pl.pack_call(task, args, kwargs, options.wire, reference(self, deps, foreign))
        if foreign:
            raise ValueError(
                f"job {foreign[0].job_id}'s Future is of another producer: a job can depend only "
                "on jobs of its own producer (pass its result instead: future.result())")
        if len(payload) > self.max_payload_bytes:
            named = len(task.encode())  # the task name's share of the payload
            raise ValueError(
                f"the job takes {len(payload)} bytes encoded (its task name {named}), more than "
                f"max_payload_bytes ({self.max_payload_bytes}); " + (
                    "use a shorter task name" if 2 * named > len(payload)
                    else "pass a path or URL to the data instead of the arguments")
            )
        if not self._started:
            self.start()
        future = JobFuture(next(self._job_ids), self._on_cancel)
        if tracing_active():  # a span per job, child of the caller's current span
            future.span, future.traceparent = start_job_span(task, future.job_id)
        recorded: Future[None] | None = Future() if self._durable else None
        with self._lock:
            if self._shutdown or not self._io.put(Submit(
                future, payload, options.max_attempts, options.priority,
                None if options.wire is None else options.wire.get("timeout_ms"), recorded,
                Needs.of(task, options.resources, options.labels),
                due_time(options.delay_s, options.at), options.retry, (*deps, *options.after),
            )):
                raise RuntimeError("cannot submit after shutdown")
        if recorded is not None:
            recorded.result()  # durable before we return (raises StoreError if it is not)
        return future

    def limit(self, task: Callable[..., Any] | str, *, max_running: int | None = None,
              per_s: float | None = None) -> None:
        """Limit the jobs of ``task`` across all workers: at most ``max_running`` leased at
        once, at most ``per_s`` started a second (a token bucket: bursts of ``max(1, per_s)``;
        on average ``per_s``). Enforced when a worker claims: a claim gets another job its
        worker can run, or waits; a job held back is not reported as one no worker can run.
        Both None removes the limit; calling again replaces it. In effect from the I/O
        thread's next turn (before any claim it reads then), for this run of the producer:
        limits are not kept in a ``store`` (set them again after a restart, before ``start``
        if you like: jobs restored from a store then wait for them too).
        ``status()["limits"]`` shows each limit, its running jobs and the jobs it holds back.
        (Celery's ``rate_limit`` and worker concurrency hold per worker; this is per task, for
        the whole fleet, with no Redis.)

        Args:
            task: a module-level function or a ``"module:function"`` name.
            max_running: jobs of the task leased at once, at most (>= 1), or None.
            per_s: jobs of the task started a second, at most (> 0, at most 1e6), or None.

        Raises:
            TypeError: ``max_running`` not an int, ``per_s`` not a number.
            ValueError: ``task`` is not a valid task; ``max_running`` < 1; ``per_s`` <= 0.
            RuntimeError: after :meth:`shutdown`.
        """
        name = task_name(task)
        max_running = _check.integer("max_running", max_running, min_=1, max_=_check.INT64_MAX,
                                     allow_none=True)
        per_s = _check.number("per_s", per_s, above=0, max_=1e6, unit="jobs a second", allow_none=True)
        with self._lock:
            if self._shutdown or not self._io.put(Limit(name, max_running, per_s)):
                raise RuntimeError("cannot set a limit after shutdown")

    def schedule(
        self, fn: Callable[..., Any] | str, /, *args: Any, every_s: float | None = None,
        cron: str | None = None, tz: str | None = None, overlap: bool = True,
        name: str | None = None, kwargs: dict[str, Any] | None = None,
    ) -> ScheduleHandle:
        """Run ``fn(*args, **kwargs)`` periodically: every ``every_s`` seconds (from now), or
        at the times of a ``cron`` expression (``"*/5 * * * *"``, five fields) in the time
        zone ``tz`` (an IANA name such as ``"Europe/Berlin"``; None: UTC). Each run is a job
        of its own (see ``status()``, ``get(job_id)``); runs happen only while the producer
        runs, and nothing else is needed (no beat process).

        Slots missed while the producer was down fire once when it starts, not once each.
        With a ``store``, the schedule and the slot it last fired for are kept: a restarted
        producer never fires a slot twice, and declaring the schedule again under the same
        ``name`` (the default name is made of the task, its arguments and the timing) takes
        over the kept one instead of adding another.

        Args:
            fn, args: the task and its positional arguments (as for :meth:`submit`; Futures
                are refused: a schedule outlives them).
            every_s: seconds between runs (0.1 to 1e9).
            cron, tz: a cron expression and its time zone (needs the ``schedule`` extra:
                ``cronsim``). Give ``every_s`` or ``cron``, not both.
            overlap: False skips a run while the previous run of this schedule is still
                pending or running.
            name: what the schedule is known by (1 to 200 characters).
            kwargs: the task's keyword arguments.

        Returns:
            A :class:`~freelance_rz.producer.schedules.ScheduleHandle` (``pause()``,
            ``resume()``, ``remove()``, ``info()``).

        Raises:
            TypeError: a wrong type (``every_s`` not a number, ``cron`` not a str, an
                argument msgpack cannot encode).
            ValueError: neither or both of ``every_s`` and ``cron``; ``every_s`` < 0.1; a cron
                expression or time zone that cannot be used (the message says why).
            ImportError: ``cron`` without the ``schedule`` extra.
            RuntimeError: after :meth:`shutdown`.
        """
        every_s = _check.number("every_s", every_s, min_=MIN_EVERY_S, max_=_check.MAX_SECONDS,
                                unit="seconds", allow_none=True)
        cron = _check.string("cron", cron, allow_none=True)
        tz = _check.string("tz", tz, allow_none=True)
        if (every_s is None) == (cron is None):
            raise ValueError("give every_s (seconds) or cron (e.g. '*/5 * * * *'), one of them")
        if cron is not None:
            check_cron(cron, tz)
        elif tz is not None:
            raise ValueError("tz goes with cron; every_s counts seconds from now")
        call = pl.pack_call(task_name(fn), args, dict(kwargs or {}))
        name = _check.string("name", name, min_chars=1, max_chars=200, allow_none=True)
        job = Schedule(0, name or default_name(call, every_s, cron, tz), call, every_s, cron, tz,
                       _check.boolean("overlap", overlap), created=time.time())
        if not self._started:
            self.start()
        info = self._ask(ScheduleCommand("add", Future(), job), 5.0)
        return ScheduleHandle(info, self._post)

    def _post(self, command: ScheduleCommand) -> bool:
        with self._lock:
            return self._started and self._io.put(command)

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
        if not self._started:
            self.start()
        future: JobFuture | None = self._ask(FindJob(job_id, Future()), timeout_s)
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
        if not self._started:
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

    def status(self, timeout_s: float | None = 5.0, *, detail: bool = False) -> dict[str, Any]:
        """Counts and facts, as the STATUS verb answers them: jobs ``pending``, ``leased``,
        ``done``, ``failed``, ``dead``, ``cancelled`` (since this start); ``workers`` heard from
        in the last minute and ``worker_list`` (``id``, ``last_seen_s``, ``running`` jobs,
        ``parked`` claims); ``finished_last_min``; ``parked_claims``; ``connections``;
        ``uptime_s`` (seconds); ``bad_messages``; ``producer_id``, ``group``, ``endpoints``,
        ``version``; ``waiting``: the pending jobs that no connected worker can run, one map
        per requirement signature (``task``, ``resources``, ``labels``, ``jobs``: how many,
        ``missing``: what no connected worker offers, ``message``: e.g. ``"12 jobs of
        myapp.tasks:render need gpu=1: no connected worker offers gpu=1"``), most jobs first,
        at most 50. With ``detail``, also ``tasks`` (per task: counts by state, wait and run
        time histograms over ``buckets_s``), ``running`` jobs and recent ``failures`` with
        their tracebacks (docs/protocol.md, STATUS_REPLY).

        Args:
            timeout_s: seconds to wait for the I/O thread's answer (None: no limit).
            detail: add the detailed entries.

        Raises:
            TypeError, ValueError: ``timeout_s`` is not a number >= 0 (or None).
            RuntimeError: the producer is not running.
            concurrent.futures.TimeoutError: no answer within ``timeout_s`` seconds.
        """
        timeout_s = _answer_timeout(timeout_s)
        info: dict[str, Any] = self._ask(AskStatus(Future(), _check.boolean("detail", detail)), timeout_s)
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

    def _ask(self, question: AskStatus | FindJob | ScheduleCommand, timeout_s: float | None) -> Any:
        """Ask the I/O thread and wait for its answer."""
        with self._lock:
            if not self._started or not self._io.put(question):
                raise RuntimeError("the producer is not started" if not self._started
                                   else "the producer's I/O thread has stopped")
        return question.answer.result(timeout_s)

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
            if first and self._started:
                self._io.put(Shutdown(cancel_futures))
        if wait and self._started:
            try:
                self._io.join(timeout_s)
            except BaseException:  # Ctrl-C while waiting: stop now (mDNS goodbye included)
                self.close()
                raise
            if self._io.is_alive():
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
            started = self._started
            self._started = True  # a producer closed before it started never starts
        if not started:
            self._io.discard()
            return
        self._io.put(Close())
        self._io.join(timeout_s)

    def _on_cancel(self, future: JobFuture) -> None:
        self._io.put(Cancel(future.job_id))


def _retention(seconds: Any, count: Any) -> tuple[float | None, int | None]:
    """``retention_s`` and ``retention_count``, checked. Raises TypeError or ValueError."""
    seconds = _check.number("retention_s", seconds, min_=0, unit="seconds", allow_none=True)
    count = _check.integer("retention_count", count, min_=0, max_=_check.INT64_MAX, allow_none=True)
    return seconds, count


def _answer_timeout(timeout_s: Any) -> float | None:
    """``timeout_s`` of :meth:`Producer.status` and :meth:`Producer.get`, checked."""
    checked: float | None = _check.number(
        "timeout_s", timeout_s, min_=0, max_=threading.TIMEOUT_MAX, unit="seconds", allow_none=True
    )
    return checked


def _open_store(
    store: str | os.PathLike[str] | None, retention_s: float | None, retention_count: int | None,
) -> tuple[JobStore | None, Restored | None, int]:
    """The job store (None without ``store``), what it restored, and the first new job id."""
    if store is None:
        return None, None, 1
    job_store = JobStore(store, retention_s=retention_s, retention_count=retention_count)
    restored = job_store.restore()
    return job_store, restored, restored.next_job_id


def _advertised(value: Any) -> str | None:
    """``advertise`` as ``tcp://HOST:PORT``, checked; None stays None."""
    text: str | None = _check.string("advertise", value, allow_none=True)
    if text is None:
        return None
    endpoint = text if text.startswith("tcp://") else f"tcp://{text}"
    try:
        w.parse_endpoint(endpoint)
    except ValueError as exc:
        raise ValueError(f"advertise must be 'HOST:PORT', e.g. 'producer.example.org:5555', "
                         f"got {text!r}: {exc}") from None
    return endpoint


def _max_connections(value: Any) -> int:
    """``max_connections``, checked; None becomes half the open-file limit (at least 64)."""
    checked: int | None = _check.integer("max_connections", value, min_=1, allow_none=True)
    if checked is not None:
        return checked
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 65536 if soft == resource.RLIM_INFINITY else max(64, soft // 2)


def _curve_server(
    secret_key: str | os.PathLike[str] | None, authorized_workers: str | os.PathLike[str] | None
) -> CurveServer | None:
    """The producer's CURVE server, from both settings or neither."""
    check_pair(secret_key, authorized_workers, ("secret_key", "authorized_workers"))
    if secret_key is None or authorized_workers is None:
        return None
    return CurveServer(load_keypair(secret_key), authorized_workers)


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
        resources: Mapping[str, float] | None = None,
        labels: Mapping[str, str] | None = None,
        retry_on: Any = None,
        max_retries: int | None = None,
        backoff_s: float | None = None,
        backoff_max_s: float | None = None,
        jitter: bool | None = None,
        delay_s: float | None = None,
        at: datetime.datetime | None = None,
        after: Any = None,
    ) -> None:
        self.after = depends_on(after)
        self.retry = retry_policy(retry_on, max_retries, backoff_s, backoff_max_s, jitter)
        self.delay_s, self.at = delay_of(delay_s, at)  # seconds; unix seconds
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
        self.resources = _check.resources("resources", resources) or None
        self.labels = _check.labels("labels", labels) or None
        wire: dict[str, Any] = {}  # kept in the job's payload, so a durable producer restores them
        if timeout_s is not None:
            wire["timeout_ms"] = timeout_ms(timeout_s)
        if priority:
            wire["priority"] = priority
        if self.resources:
            wire["resources"] = self.resources
        if self.labels:
            wire["labels"] = self.labels
        if self.retry is not None:
            wire["retry"] = self.retry.wire()
        self.wire: dict[str, Any] | None = wire or None

    def submit(self, fn: Callable[..., Any] | str, /, *args: Any, **kwargs: Any) -> JobFuture:
        """As :meth:`Producer.submit`, with these options."""
        assert self._producer is not None
        return self._producer._submit(fn, args, kwargs, self)

    async def submit_async(self, fn: Callable[..., Any] | str, /, *args: Any, **kwargs: Any) -> Any:
        """As :meth:`Producer.submit_async`, with these options."""
        assert self._producer is not None
        return await self._producer._submit_async(fn, args, kwargs, self)


JobOptions.DEFAULT = JobOptions(None)


__all__ = ["JobEvent", "JobFuture", "JobOptions", "JobProgress", "Producer", "ScheduleHandle"]

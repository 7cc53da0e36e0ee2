"""The producer's I/O thread: it alone touches the ZeroMQ ROUTER "offer" socket, and drives
the pure offer engine (:mod:`freelance_rz.core.offer`) with what arrives there.

The shape is pyzmq's ``zmq.auth.thread``: an object that owns its socket and its thread,
started and stopped explicitly, and controlled by application threads through typed
commands on a thread-safe queue plus one wake-up byte on a pipe polled beside the socket.
Each turn of the loop reads the clock once, then: commands, socket, connections, the engine's
timers, and the store's flush (after which the RESULTs it held back are answered, and waiting
submits return). The loop resolves the application's Futures with the engine's outcomes.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import zmq

from .._sockets import recv_frames, send_frames, set_keepalive
from .._version import __version__
from ..core import wire as w
from ..core.ledger import JobState, Ledger
from ..core.match import Needs
from ..core.offer import OfferEngine, Outcome
from ..core.payload import job_options
from ..core.retry import RetryPolicy
from ..core.tally import Tally
from ..discovery import Announcer, local_networks
from ..errors import StoreError
from ..security import CurveServer
from ..tracing import ENABLED as TRACING
from .future import JobEvent, JobFuture, JobProgress, close_future, resolve, stored_future
from .journal import EventTap, StoreJournal, TallyTap, Wall
from .report import Reporter
from .connections import Connections
from .restore import restore_jobs, waits_for as _waits_for
from .schedules import ScheduleCommand, Scheduler
from .store import JobStore, Restored

log = logging.getLogger("freelance_rz.producer")

WAITING = (JobState.PENDING, JobState.DEFERRED)  # held by no worker: cancelled on close
RECV_BATCH = 256  # messages taken per wake-up before looking at the clock again
RCVHWM = 100  # messages queued in this process per connection, at most
HANDSHAKE_IVL_MS = 5000  # a connection that has not finished its ZMTP handshake by then is closed
PURGE_EVERY_S = 10.0  # how often the store's retention is applied
STALL_S = 0.2  # an I/O turn this much later than planned means the thread could not run
LINGER_MS = 200  # on close, time given to the last replies to leave


# --- commands from application threads -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Submit:
    """A new job and its requirements. ``recorded`` (durable producers): set once the job
    is in the store."""

    future: JobFuture
    payload: bytes
    max_attempts: int | None
    priority: int
    timeout_ms: int | None
    recorded: Future[None] | None
    needs: Needs | None = None
    due: float | None = None  # not offered before then (monotonic seconds)
    retry: RetryPolicy | None = None  # the task errors it retries
    deps: tuple[JobFuture, ...] = ()  # Futures of the jobs it waits for


@dataclass(frozen=True, slots=True)
class Cancel:
    job_id: int


@dataclass(frozen=True, slots=True)
class Limit:
    """Limit a task's jobs leased at once and started a second (None, None: no limit)."""

    task: str
    max_running: int | None
    per_s: float | None


@dataclass(frozen=True, slots=True)
class AskStatus:
    answer: Future[dict[str, Any]]
    detail: bool = False


@dataclass(frozen=True, slots=True)
class FindJob:
    """The Future of a job, live or from the store (None when unknown)."""

    job_id: int
    answer: Future[JobFuture | None]


@dataclass(frozen=True, slots=True)
class Shutdown:
    """End once every job is resolved (``cancel_futures``: cancel the pending ones first)."""

    cancel_futures: bool


@dataclass(frozen=True, slots=True)
class Close:
    """End now."""


Command = Submit | Cancel | AskStatus | FindJob | Shutdown | Close | Limit | ScheduleCommand


@dataclass(frozen=True, slots=True)
class Settings:
    """What the I/O thread needs of a producer (checked by :class:`~freelance_rz.Producer`)."""

    producer_id: str
    group: str
    interfaces: list[str] | None
    port: int
    announce: bool
    max_payload_bytes: int
    max_connections: int
    curve: CurveServer | None
    store_key: str | None
    on_event: Any = None  # Callable[[JobEvent], None] | None
    restored: Restored | None = field(default=None, repr=False)
    advertised: str | None = None  # tcp://HOST:PORT announced instead of the bound endpoints
    endpoints_file: Any = None  # str | os.PathLike[str] | None: where to write this producer's line
    admin_token: str | None = field(default=None, repr=False)


class OfferThread:
    """The I/O thread of one producer and the socket it owns.

    Args:
        settings: the producer's settings.
        ledger: the producer's job table (used by this thread only, once started).
        store: the job store of a durable producer, or None.
        on_cancel: given to the Futures of restored jobs (their ``cancel()`` posts a Cancel).
        new_job_id: ``new_job_id()`` gives the id of a job the thread submits itself (an
            operator's retry); None: such retries are refused.

    :attr:`on_end` holds functions called when the thread ends (e.g. stop a metrics server).
    """

    def __init__(self, settings: Settings, ledger: Ledger, store: JobStore | None,
                 on_cancel: Any, new_job_id: Callable[[], int] | None = None) -> None:
        self.settings = settings
        self.new_job_id = new_job_id
        self.on_end: list[Callable[[], None]] = []
        self.ledger = ledger
        self.store = store
        self.on_cancel = on_cancel
        self.endpoints: list[str] = []
        self.port = 0  # the offer socket's port once bound
        self.start_error: BaseException | None = None
        self._commands: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._lock = threading.Lock()  # guards _closed and the wake pipe
        self._closed = False  # the thread has ended (or never will start): the pipe is closed
        self._wake_pending = False  # a wake-up byte is in the pipe (set by put, cleared here)
        self._started = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"freelance-producer-{settings.producer_id[:6]}", daemon=True
        )

    # --- the application's side -------------------------------------------------------------

    def start(self) -> None:
        """Start the thread; return once it is bound and announced (or raise why not).

        Raises:
            zmq.ZMQError, OSError: the socket could not be bound or mDNS could not start.
        """
        self._thread.start()
        self.wait_started()

    def wait_started(self) -> None:
        """Wait until the thread is bound and announced; raise why not if it failed."""
        self._started.wait()
        if self.start_error is not None:
            raise self.start_error

    def put(self, command: Command) -> bool:
        """Hand a command to the thread; False when it has ended (nothing was handed)."""
        with self._lock:
            if self._closed:
                return False
            self._commands.put(command)
            if not self._wake_pending:  # one wake-up byte per batch of commands
                self._wake_pending = True
                try:
                    os.write(self._wake_w, b"\0")
                except BlockingIOError:
                    pass  # the pipe is full: wake-ups are pending anyway
            return True

    def join(self, timeout_s: float | None) -> None:
        self._thread.join(timeout_s)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def discard(self) -> None:
        """Release what a thread that never started holds (the store, the pipe)."""
        if self.store is not None:
            self.store.close()
        self._close_pipe()

    def _close_pipe(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self._wake_r)
                os.close(self._wake_w)

    # --- the thread -------------------------------------------------------------------------

    def _run(self) -> None:
        curve = self.settings.curve
        # A secure producer has a context of its own: ZAP is served per context.
        ctx = zmq.Context.instance() if curve is None else zmq.Context()
        try:
            if curve is not None:
                curve.start(ctx)
            sock = self._bind(ctx)
        except BaseException as exc:
            self.start_error = exc
            self._end_curve(ctx)
            self.discard()
            self._started.set()
            return
        entry = self._write_entry()
        announcer, announced = self._announce() if entry is not False else (None, threading.Event())
        log.info("producer %s serving on %s", self.settings.producer_id, ", ".join(self.endpoints))
        loop = _Loop(self, sock)
        try:
            loop.run()
        except BaseException as exc:
            log.exception("producer I/O thread crashed")
            loop.crashed(RuntimeError(f"producer I/O thread crashed: {exc!r}"))
            raise
        finally:
            if announcer is not None:
                announced.wait()
                announcer.close()
            if isinstance(entry, str):
                self._remove_entry(entry)
            sock.close(LINGER_MS)
            self._end_curve(ctx)
            if self.store is not None:
                self.store.close()
            self._close_pipe()
            for end in self.on_end:
                end()

    @property
    def advertised(self) -> str:
        """The endpoint workers are told: ``advertise``, else the first bound endpoint that
        is not loopback (the first one if all are)."""
        if self.settings.advertised is not None:
            return str(self.settings.advertised)
        return next((ep for ep in self.endpoints if not ep.startswith("tcp://127.")), self.endpoints[0])

    def _write_entry(self) -> str | bool | None:
        """Add this producer's line to the endpoints file. Returns the endpoint written,
        None without a file, False when it could not be written (then :meth:`start` raises
        why, and the thread closes)."""
        from ..endpointsfile import add_entry

        s = self.settings
        if s.endpoints_file is None:
            return None
        endpoint = self.advertised
        try:
            add_entry(s.endpoints_file, endpoint, {
                "id": s.producer_id, "g": s.group, "sk": s.store_key, "v": str(w.VERSION),
                "pk": None if s.curve is None else s.curve.keys.public.decode("ascii"),
            })
        except (OSError, ValueError) as exc:
            self.start_error = OSError(f"cannot write endpoints_file {s.endpoints_file}: {exc}")
            self.put(Close())
            self._started.set()
            return False
        return endpoint

    def _remove_entry(self, endpoint: str) -> None:
        from ..endpointsfile import remove_entry

        try:
            remove_entry(self.settings.endpoints_file, endpoint)
        except OSError as exc:
            log.warning("could not remove this producer's line from %s: %s", self.settings.endpoints_file, exc)

    def _announce(self) -> tuple[Announcer | None, threading.Event]:
        """Register on mDNS beside the running I/O loop (zeroconf's ``register_service``
        returns only after its last broadcast, and workers that heard the first one are
        already claiming). On failure the producer closes and :meth:`start` raises."""
        announced = threading.Event()
        s = self.settings
        if not s.announce:
            announced.set()
            self._started.set()
            return None, announced
        announcer = Announcer(
            s.producer_id, s.group, self.endpoints, s.interfaces, store_key=s.store_key,
            public_key=None if s.curve is None else s.curve.keys.public,
            advertised=None if s.advertised is None else [s.advertised],
        )

        def register() -> None:
            try:
                announcer.start()
            except BaseException as exc:
                self.start_error = exc
                self.put(Close())
            finally:
                announced.set()
                self._started.set()

        threading.Thread(target=register, daemon=True,
                         name=f"freelance-announce-{s.producer_id[:6]}").start()
        return announcer, announced

    def _end_curve(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
        if self.settings.curve is not None:
            self.settings.curve.stop()
            ctx.term()

    def _bind(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> zmq.Socket[bytes]:
        s = self.settings
        sock = ctx.socket(zmq.ROUTER)
        if s.curve is not None:
            s.curve.secure(sock)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a vanished worker is an error on send
        # Without CURVE, a reconnecting worker takes its routing id back from its old,
        # possibly half-open connection. With CURVE never: a connection of another key could
        # take a worker's id and its replies; a worker's id is held by its live connection.
        sock.setsockopt(zmq.ROUTER_HANDOVER, int(s.curve is None))
        sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_IVL_MS)
        set_keepalive(sock)
        # what one connection may have waiting in this process: a worker sends a claim per
        # free slot and a BEAT at a time; a flood waits in the kernel, then in its sender
        sock.setsockopt(zmq.RCVHWM, RCVHWM)
        sock.setsockopt(zmq.LINGER, LINGER_MS)
        sock.setsockopt(zmq.MAXMSGSIZE, s.max_payload_bytes + w.FRAME_OVERHEAD)
        try:
            if s.interfaces is None:
                port = _bind_port(sock, "*", s.port)
                hosts = [str(n.ip) for n in local_networks()] or ["127.0.0.1"]
            else:
                port = s.port
                for host in s.interfaces:
                    port = _bind_port(sock, host, port)
                hosts = s.interfaces
        except BaseException:
            sock.close(0)
            raise
        self.endpoints = [f"tcp://{host}:{port}" for host in hosts]
        self.port = port
        return sock

    def _take_commands(self) -> list[Command]:
        try:
            while os.read(self._wake_r, 65536):
                pass
        except BlockingIOError:
            pass
        with self._lock:  # a put after this writes a new wake-up byte
            self._wake_pending = False
        commands = []
        while True:
            try:
                commands.append(self._commands.get_nowait())
            except queue.Empty:
                return commands


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


class _Loop:
    """One run of the I/O thread: the engine, the Futures, the turns."""

    def __init__(self, thread: OfferThread, sock: zmq.Socket[bytes]) -> None:
        s = thread.settings
        self.thread = thread
        self.sock = sock
        self.secure = s.curve is not None
        self.ledger = thread.ledger
        self.store = thread.store
        self.futures: dict[int, JobFuture] = {}
        self.unrecorded: list[tuple[int, Future[None]]] = []  # (job id, submit waiting to return)
        self.wall = Wall()
        self.tally = Tally()
        journal: Any = StoreJournal(self.store, self.wall) if self.store is not None else self.ledger.journal
        journal = TallyTap(journal, self.tally, self.wall)
        if s.on_event is not None:
            journal = EventTap(journal, s.on_event, self.wall)
        self.ledger.journal = journal
        now = time.monotonic()
        self.connections = Connections()  # open connections to the offer socket
        self.reporter = Reporter(self.ledger, self.tally, self.wall, lambda: len(self.connections.accepted),
                                 self._resubmit)
        self.engine = OfferEngine(
            self.ledger, send=self._send, on_outcome=self._outcome, on_progress=self._progress,
            max_payload=s.max_payload_bytes, durable=self.store is not None,
            wanted=lambda job_id: not self.futures[job_id].cancelled(),
            facts={"producer_id": s.producer_id, "group": s.group,
                   "endpoints": list(thread.endpoints), "version": __version__},
            now=now, report=self.reporter.report, admin_token=s.admin_token,
            on_retry=None if thread.new_job_id is None else self.reporter.retry,
            traceparent=self._traceparent if TRACING else None,
        )
        self.scheduler = Scheduler(self.wall, lambda call: self._resubmit(
            call, job_options(call).get("priority", 0), job_options(call).get("timeout_ms")),
            self.ledger.__contains__, self.store)
        self.monitor = sock.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        self.purge_at = 0.0
        self.closing = False  # Shutdown: end once every job is resolved
        self.aborted = False  # Close: end now
        self.unheard_since: float | None = None  # restored leases wait until it is announced
        if s.restored is not None:
            assert self.store is not None
            self.scheduler.restore(s.restored.schedules)
            self.futures.update(restore_jobs(s.restored, self.ledger, self.tally, self.wall, now,
                                             lambda job_id: JobFuture(job_id, thread.on_cancel),
                                             self.store.result))
            # restored leases count from when workers can find it (see run())
            self.unheard_since = now if s.restored.leased else None

    # --- the turns ----------------------------------------------------------------------------

    def run(self) -> None:
        poller = zmq.Poller()
        for item in (self.sock, self.thread._wake_r, self.monitor):
            poller.register(item, zmq.POLLIN)
        now = self.engine.started_at
        while not (self.closing and (self.aborted or self.engine.finished(now))):
            before = now  # the clock is read once a turn, after the poll
            timeout_ms = self._timeout_ms(before)
            events = dict(poller.poll(timeout_ms))
            now = time.monotonic()
            self.wall.tick(now)
            stalled = now - before - timeout_ms / 1000
            if stalled > STALL_S:  # e.g. the app held the GIL in one long C call
                log.warning("producer I/O thread stalled %.1f s; leases extended as much", stalled)
                self.ledger.postpone(stalled)
            if self.unheard_since is not None:  # not announced yet: silence proves nothing
                self.ledger.postpone(now - self.unheard_since)
                self.unheard_since = None if self.thread._started.is_set() else now
            if self.thread._wake_r in events:
                for command in self.thread._take_commands():
                    self._command(command, now)
                if self.unrecorded:  # new jobs are durable before any worker can lease one
                    self._flush(now)
            if self.sock in events:
                self._drain_socket(now)
            if self.monitor in events:
                self.connections.count(self.monitor, self.thread.settings.max_connections,
                                       self.thread.port, now)
            self.engine.tick(now)
            if not self.closing:
                self.scheduler.tick()  # its runs and their slots are flushed together
            self._flush(now)
        self.engine.close()
        self.sock.disable_monitor()
        self.monitor.close(0)
        for job_id, future in self.futures.items():  # only after Close
            close_future(future, self.ledger.state(job_id) in WAITING)

    def _timeout_ms(self, now: float) -> int:
        times = [t for t in (self.engine.next_wakeup(), self.scheduler.next_wakeup()) if t is not None]
        soonest = min(times) if times else None
        if soonest is None:
            return 1000
        return max(0, min(1000, int((soonest - now) * 1000) + 1))

    def _command(self, command: Command, now: float) -> None:
        if isinstance(command, Submit):
            job_id = command.future.job_id
            self.futures[job_id] = command.future
            self.engine.submit(job_id, command.payload, max_attempts=command.max_attempts,
                               priority=command.priority, timeout_ms=command.timeout_ms,
                               needs=command.needs, due=command.due, retry=command.retry,
                               **(_waits_for(command.deps, self.ledger) if command.deps else {}))
            if command.recorded is not None:
                self.unrecorded.append((job_id, command.recorded))
        elif isinstance(command, Cancel):
            self.engine.cancel(command.job_id, now)
        elif isinstance(command, Limit):
            self.engine.limit(command.task, command.max_running, command.per_s, now)
        elif isinstance(command, ScheduleCommand):
            self.scheduler.command(command)
        elif isinstance(command, AskStatus):
            command.answer.set_result(self.engine.status(now, command.detail))
        elif isinstance(command, FindJob):
            try:
                command.answer.set_result(self._find(command.job_id))
            except Exception as exc:  # handed back to the caller, never kills the loop
                command.answer.set_exception(exc)
        elif isinstance(command, Close):
            self.closing = self.aborted = True
        elif isinstance(command, Shutdown):
            self.closing = True
            if command.cancel_futures:  # the jobs no worker holds, as Executor does
                for job_id, future in list(self.futures.items()):
                    if self.ledger.state(job_id) in WAITING:
                        future.cancel()  # posts a Cancel

    def _find(self, job_id: int) -> JobFuture | None:
        """The live Future of a job, or a resolved one built from the store, or None."""
        if job_id in self.futures:
            return self.futures[job_id]
        stored = None if self.store is None else self.store.result(job_id)
        return None if stored is None else stored_future(job_id, stored.state, stored.payload,
                                                         self.thread.on_cancel)

    def _drain_socket(self, now: float) -> None:
        for _ in range(RECV_BATCH):
            if self.secure:
                try:
                    parts = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    return
                self.engine.receive([part.bytes for part in parts], now,
                                    key=str(parts[-1].get("User-Id")))
                continue
            frames = recv_frames(self.sock)  # no exception raised when none is left
            if frames is None:
                return
            self.engine.receive(frames, now)

    def _send(self, identity: bytes, msg: w.Answer) -> bool:
        try:
            send_frames(self.sock, [identity, *w.encode(msg)])
            return True
        except (zmq.Again, zmq.ZMQError) as exc:  # EHOSTUNREACH: the worker is gone
            log.debug("cannot send to %r: %s", identity[:8], exc)
            return False

    def _resubmit(self, call: bytes, priority: int, timeout_ms: int | None) -> int:
        """Submit a job from the I/O thread itself (an operator's retry): its Future is held
        by nobody, its outcome shows in STATUS (and in the store of a durable producer)."""
        assert self.thread.new_job_id is not None
        job_id = self.thread.new_job_id()
        self.futures[job_id] = JobFuture(job_id, self.thread.on_cancel)
        self.engine.submit(job_id, call, max_attempts=None, priority=priority, timeout_ms=timeout_ms,
                           retry=RetryPolicy.from_wire(job_options(call).get("retry")))
        return job_id

    def _traceparent(self, job_id: int) -> str | None:
        future = self.futures.get(job_id)
        return None if future is None else future.traceparent

    def _outcome(self, job_id: int, outcome: Outcome) -> None:
        if outcome.reason is not None:
            self.tally.explain(job_id, outcome.reason)
        future = self.futures.pop(job_id, None)
        if future is not None:
            resolve(future, outcome, job_id)

    def _progress(self, job_id: int, progress: tuple[float, float | None, str]) -> None:
        future = self.futures.get(job_id)
        if future is not None:
            future.progress = JobProgress(*progress)

    def _flush(self, now: float) -> None:
        """Make this turn's changes durable, answer the RESULTs held back until then, then
        let waiting submits return."""
        if self.store is not None:
            try:
                self.store.flush()
                if now >= self.purge_at:
                    self.purge_at = now + PURGE_EVERY_S
                    self.store.purge(self.wall.now)
            except StoreError as exc:
                log.error("job store: %s", exc)
                for job_id, recorded in self.unrecorded:  # not durable: refuse these submits
                    self.engine.cancel(job_id, now)  # and never run them: their submit raised
                    recorded.set_exception(exc)
                self.unrecorded.clear()
        self.engine.journaled(now)
        for _, recorded in self.unrecorded:
            recorded.set_result(None)
        self.unrecorded.clear()

    def crashed(self, error: RuntimeError) -> None:
        """The loop died: never leave a caller waiting forever."""
        for future in [*self.futures.values(), *(r for _, r in self.unrecorded)]:
            if not future.done():
                future.set_exception(error)


__all__ = ["JobEvent", "OfferThread", "Settings"]

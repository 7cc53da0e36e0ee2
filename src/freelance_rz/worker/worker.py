"""Worker: finds producers, pulls one job per free slot, runs it, delivers the result.

Theory of operation
-------------------
The worker's main thread owns one DEALER socket per producer (a :class:`_Peer`) and the
job processes of its slots (:mod:`freelance_rz.runner`). Every live peer holds as many
parked claims (long-polls) as the worker has free slots. When a JOB fills a slot, the
now-surplus claims at the other peers are withdrawn (CANCEL_CLAIM) once the slot has stayed
busy for SURPLUS_GRACE_S; a JOB that arrives for a full worker is DECLINEd (back to the head
of that producer's queue), so a worker never holds more jobs than slots. When a job ends,
its RESULT carries the next claim to the same producer, so a busy worker spends one round
trip per job. Nothing is ever queued on the worker side (C1).

Liveness is judged by the conversation: every request must be answered, a CLAIM within
``wait_ms`` + grace and anything else within ``reply_timeout_s``. A peer that misses that is
unreachable: its socket is closed, its claims forgotten, and it is retried with exponential
backoff, re-sending every result it has not acknowledged. Results are kept until ACKed.

Peers and mDNS
--------------
Anyone can announce anything on mDNS, so an announcement is only a hint of where to
connect. A peer is one endpoint (one DEALER): announcements name the producer id, store key
and CURVE key found there. Nothing is replaced or dropped on mDNS alone: a goodbye only makes
the worker ask the producer (a BEAT) whether it is still there, and a durable producer's work
is handed to a new endpoint with the same store key only once that endpoint has answered and
the old one has stopped answering (and, with CURVE, only under the same key). At most
``max_producers`` discovered peers are kept; one that never answered makes room for a new
announcement. A discovered producer unreachable for ``give_up_s`` becomes dormant: its
announcements are ignored and it is probed once in a while (DORMANT_PROBE_S, growing), until it
answers again or a new instance is announced at its endpoint.
"""

from __future__ import annotations

import collections
import importlib.util
import itertools
import logging
import math
import os
import queue
import resource
import secrets
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import zmq

from ..core import check as _check
from ..core import payload as pl
from ..core import wire as p
from .._sockets import send_frames, set_keepalive
from ..core.text import clean
from ..discovery import Announcement, Browser, choose_endpoint, resolve_interfaces
from ..errors import ProtocolError
from .slots import JobProcess, Outcome, Progress, Reaper, refuse_unguarded_main
from ..security import (
    HANDSHAKE_EVENTS,
    KeyPair,
    check_pair,
    handshake_failure,
    load_keypair,
    load_public_keys,
    make_curve_client,
)

log = logging.getLogger("freelance_rz.worker")

DEFAULT_WAIT_MS = 1000  # claim long-poll; with CLAIM_GRACE_S this bounds C5 detection at 1.4 s
CLAIM_GRACE_S = 0.4  # extra time a producer has to answer a claim after wait_ms (C5: < 1.5 s)
REPLY_TIMEOUT_S = 1.0  # time a producer has to answer RESULT, BEAT, DECLINE, ...
MIN_TRANSFER_RATE = 10e6  # bytes/s: a RESULT's reply timeout grows by its size at this rate
BACKOFF_MIN_S = 0.25
BACKOFF_MAX_S = 10.0
STOP_DELIVERY_S = 10.0  # on stop, how long to keep trying to deliver finished results
TIMER_SLACK_S = 0.02  # after activity, timers are looked at within this many seconds
SURPLUS_GRACE_S = 0.05  # a claim a filled slot no longer needs is withdrawn after this
GIVE_UP_S = 60.0  # a producer unreachable this long: abort its jobs, forget it if discovered
MAX_PRODUCERS = 256  # discovered producers served at once (3 ZeroMQ sockets each at most)
FDS_PER_PRODUCER = 5  # a DEALER, its monitor pair and a TCP connection, rounded up
MAX_DORMANT = 1024  # forgotten producers remembered (so their mDNS ghosts are ignored)
DORMANT_PROBE_S = 60.0  # a forgotten producer is asked whether it is back after this...
DORMANT_PROBE_MAX_S = 600.0  # ...doubling up to this
EARLY_NOJOB_PAUSE_S = 0.5  # a NOJOB long before wait_ms (a producer shedding claims): pause
NAME_MAX_BYTES = 200  # a worker's name, in UTF-8: it is part of its routing id (255 bytes at most)
MAX_PAYLOAD_LIMIT = 2**62  # bytes: the largest max_payload_bytes (MAXMSGSIZE is an int64)


@dataclass(slots=True)
class _Running:
    peer: _Peer
    job_id: int
    lease_id: int
    lease_ms: int
    deadline: float | None = None  # the job's time limit (monotonic seconds), if it has one
    timeout_ms: int = 0
    max_result: int = p.DEFAULT_MAX_PAYLOAD  # bytes of result payload the producer takes
    progress: tuple[float, float | None, str] | None = None  # not yet sent to the producer


@dataclass(eq=False)
class _Peer:
    """One producer endpoint as the worker sees it (one DEALER socket)."""

    endpoint: str  # the peer's key: tcp://HOST:PORT
    discovered: bool
    producer_id: str | None = None  # as announced at this endpoint (None: --connect)
    store_key: str | None = None  # a durable producer's, the same across its restarts
    server_key: bytes | None = None  # its CURVE public key, when this worker uses CURVE
    names: set[str] = field(default_factory=set)  # mDNS instance names announcing it
    sock: zmq.Socket[bytes] | None = None
    monitor: zmq.Socket[bytes] | None = None  # handshake failures of sock, until it answers
    claims: set[int] = field(default_factory=set)  # rids of parked claims
    inflight: dict[int, tuple[str, float, int]] = field(default_factory=dict)  # rid -> (verb, deadline, job_id)
    unacked: dict[int, tuple[int, Outcome]] = field(default_factory=dict)  # job_id -> (lease, result)
    leases: dict[int, JobProcess] = field(default_factory=dict)  # lease_id -> slot running it
    backoff_s: float = BACKOFF_MIN_S
    retry_at: float = 0.0
    next_beat_at: float = 0.0
    withdrawn: bool = False  # every mDNS announcement of it was withdrawn (a hint only)
    unreachable_since: float | None = None  # monotonic seconds; None while it answers
    answered: bool = False  # it answered at least once since it was added: it is real
    probing: bool = False  # a dormant producer asked whether it is back (no claims yet)
    claim_pause_until: float = 0.0  # no new claims before this (it shed our claims early)

    @property
    def label(self) -> str:
        """How logs name it: the announced producer id, or the endpoint."""
        return clean(self.producer_id or self.endpoint, 80)

    @property
    def closed(self) -> bool:
        """It said goodbye on mDNS: once it stops answering it is gone for good, unless it is
        a durable producer, which will restart on its store and take the results."""
        return self.withdrawn and self.store_key is None

    @property
    def owes(self) -> bool:
        """The worker holds work of this producer: running jobs or unacknowledged results."""
        return bool(self.leases or self.unacked)


@dataclass
class WorkerStats:
    """What a worker did: counts of jobs and producers."""

    jobs_run: int = 0
    jobs_failed: int = 0
    producers_found: int = 0


class Worker:
    """Pulls jobs from producers and runs them in one child process per slot.

    Args:
        tasks: importable module names whose public functions may run (the allowlist).
        discover: browse mDNS for producers of ``group``.
        connect: static producer endpoints, e.g. ``["tcp://10.0.0.5:5555"]``.
        group: producer group to serve.
        slots: jobs run at once (default: number of CPUs).
        interfaces: IPv4 addresses for mDNS (None: ``$FREELANCE_RZ_INTERFACES``, else all).
        name: a label for logs and the routing id (default: hostname and pid).
        wait_ms: claim long-poll in milliseconds.
        give_up_s: seconds a producer may stay unreachable before its running jobs are aborted,
            its undelivered results dropped and, if it was discovered, it is forgotten.
        key, trust: CURVE security (give both, or neither): the path of this worker's
            ``NAME.key_secret`` file, and a directory of the ``NAME.key`` public keys of the
            producers it may serve. Announcements without a key or with a key not in ``trust``
            are ignored with a warning. With ``connect``, ``trust`` must hold exactly one key
            (the producer's). See :mod:`freelance_rz.security`.
        max_payload_bytes: largest job payload taken from a producer, in bytes (as the
            producers' ``max_payload_bytes``): a larger message (``zmq.MAXMSGSIZE``) drops
            the connection it came on; the job is then re-offered and finally dead-lettered.

    :meth:`run` blocks until :meth:`stop` (callable from any thread or a signal handler).

    A module named twice in ``tasks`` is taken once. Ranges: ``slots`` >= 1, ``wait_ms`` >= 1,
    ``give_up_s`` > 0 (``float("inf")``: never), ``group`` 1 to 63 characters, ``name`` at most
    200 bytes in UTF-8, ``max_payload_bytes`` 1 to 2**62.

    Raises:
        TypeError: an argument of the wrong type, e.g. ``tasks="myapp.tasks"`` (a str, not a
            list of str), ``slots=2.5``, ``discover=None``; the message names the argument,
            what it must be and the value given.
        ValueError: an argument out of its range; no producer source, no task module, bad
            interfaces; only one of ``key`` and ``trust``, an unreadable key, or ``trust``
            without public keys.
        ModuleNotFoundError: a ``tasks`` module cannot be found.
    """

    def __init__(
        self,
        tasks: Sequence[str],
        *,
        discover: bool = False,
        connect: Sequence[str] = (),
        group: str = "default",
        slots: int | None = None,
        interfaces: list[str] | None = None,
        name: str | None = None,
        wait_ms: int = DEFAULT_WAIT_MS,
        give_up_s: float = GIVE_UP_S,
        key: str | os.PathLike[str] | None = None,
        trust: str | os.PathLike[str] | None = None,
        max_payload_bytes: int = p.DEFAULT_MAX_PAYLOAD,
    ) -> None:
        tasks = list(dict.fromkeys(_check.strings("tasks", tasks, example="['myapp.tasks']")))
        discover = _check.boolean("discover", discover)
        connect = _check.strings("connect", connect, example="['tcp://10.0.0.5:41234']")
        group = _check.group(group)
        slots = _check.integer("slots", slots, min_=1, allow_none=True)
        interfaces = _check.strings("interfaces", interfaces, example="['192.168.1.20']", allow_none=True)
        name = _check.string("name", name, max_bytes=NAME_MAX_BYTES, allow_none=True)
        wait_ms = _check.integer("wait_ms", wait_ms, min_=1, max_=p.MAX_UINT, unit="milliseconds")
        give_up_s = _check.number("give_up_s", give_up_s, above=0, unit="seconds", allow_inf=True)
        key = _check.path("key", key)
        trust = _check.path("trust", trust)
        max_payload_bytes = _check.integer(
            "max_payload_bytes", max_payload_bytes, min_=1, max_=MAX_PAYLOAD_LIMIT, unit="bytes"
        )
        if not discover and not connect:
            raise ValueError("a worker needs --discover or at least one --connect endpoint")
        if not tasks:
            raise ValueError("a worker needs at least one --tasks module")
        for module in tasks:
            try:
                found = importlib.util.find_spec(module)
            except ImportError:  # "a.b" where "a" is missing or not a package
                found = None
            if found is None:
                raise ModuleNotFoundError(f"--tasks module {module!r} not found", name=module)
        self.slots = (os.cpu_count() or 1) if slots is None else slots
        for endpoint in connect:
            try:
                p.parse_endpoint(endpoint)
            except ValueError as exc:
                raise ValueError(f"--connect {endpoint!r}: {exc} (expected tcp://HOST:PORT)") from None
        check_pair(key, trust, ("--key", "--trust"))
        self._keys: KeyPair | None = None
        self._trusted: frozenset[bytes] = frozenset()
        if key is not None and trust is not None:
            self._keys, self._trusted = load_keypair(key), load_public_keys(trust)
            if connect and len(self._trusted) != 1:
                raise ValueError(
                    f"--connect with --key needs the producer's public key: --trust {trust} "
                    f"must hold exactly one key, it holds {len(self._trusted)} (use --discover "
                    "to serve several secure producers; they announce their keys)"
                )
        self.max_payload_bytes = max_payload_bytes
        # refused announcements' producer ids, warned about once (bounded: anyone can announce)
        self._ignored: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.tasks = tasks  # each module once, in the order given
        self.discover = discover
        self.connect = connect
        self.group = group
        self.interfaces = resolve_interfaces(interfaces)
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.wait_ms = wait_ms
        self.give_up_s = give_up_s
        # The routing id is a secret: with it, a client could take this worker's replies
        # (ROUTER_HANDOVER). 128 random bits; producers show only NAME-<hash> of it.
        self.identity = f"{self.name[:200]}-{secrets.token_hex(16)}".encode()
        self.stats = WorkerStats()
        self._events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._rids = itertools.count(1)
        self._peers: dict[str, _Peer] = {}  # endpoint -> peer
        # forgotten discovered producers, oldest first: endpoint -> peer (no socket)
        self._dormant: collections.OrderedDict[str, _Peer] = collections.OrderedDict()
        self._dormant_due = math.inf  # monotonic time of the next probe of a dormant one
        self.max_producers = MAX_PRODUCERS
        self._full_warned_at = -3600.0
        self._unanswered_logged_at = -3600.0
        self._procs: list[JobProcess] = []
        self._running: dict[JobProcess, _Running] = {}
        self._stopping = False
        self._stop_deadline = 0.0
        self._filled_at = 0.0  # when a slot was last filled (monotonic seconds)
        self._bad_messages = 0  # undecodable messages from producers, dropped
        self._bad_logged_at = 0.0
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None

    # --- control from other threads / signal handlers --------------------------------------

    def stop(self) -> None:
        """Graceful stop (C6): finish running jobs, deliver their results, claim nothing new.
        Safe from any thread and from signal handlers."""
        self._post("stop", None)

    def _post(self, kind: str, value: Any) -> None:
        self._events.put((kind, value))
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass  # the pipe is full (a wake-up is pending anyway) or closed (run ended)

    # --- main loop -------------------------------------------------------------------------

    def run(self) -> WorkerStats:
        """Serve until stopped. Returns the :class:`WorkerStats`.

        Raises:
            RuntimeError: a job process could not import the task modules, or the main script
                starts this worker when imported (no ``if __name__ == "__main__":``).
        """
        refuse_unguarded_main()
        self._ctx = zmq.Context.instance()
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft != resource.RLIM_INFINITY:  # up to 5 file descriptors a producer, 128 spare
            self.max_producers = min(MAX_PRODUCERS, max(8, (soft - 128) // FDS_PER_PRODUCER))
        browser = None
        reaper = Reaper()
        try:
            reaper.start()
            self._procs = [JobProcess(self.tasks, reaper) for _ in range(self.slots)]
            for proc in self._procs:
                proc.start()
            if self.discover:
                browser = Browser(
                    self.group, self.interfaces,
                    on_found=lambda a: self._post("found", a),
                    on_gone=lambda name: self._post("gone", name),
                )
                browser.start()
            server_key = next(iter(self._trusted), None)
            for endpoint in self.connect:
                self._add_peer(_Peer(endpoint, discovered=False, server_key=server_key), time.monotonic())
            for proc in self._procs:
                proc.wait_ready()
            log.info(
                "worker %s started: %d slot(s), tasks %s, %s", self.name, self.slots,
                ", ".join(self.tasks),
                f"discovering group {self.group!r}" if self.discover else "static producers",
            )
            self._loop()
        finally:
            if browser is not None:
                browser.close()
            for peer in list(self._peers.values()):
                self._drop_peer(peer)
            for proc in self._procs:
                proc.close()
            reaper.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
        log.info(
            "worker %s stopped: %d producer(s) found, %d job(s) run, %d failed",
            self.name, self.stats.producers_found, self.stats.jobs_run, self.stats.jobs_failed,
        )
        return self.stats

    def _loop(self) -> None:
        watched: tuple[Any, ...] = ()
        check_at = 0.0  # next time to look at deadlines, heartbeats and reconnects
        while True:
            # the poller is rebuilt only when peers or job processes came or went
            procs = {proc.fileno(): proc for proc in self._procs}
            peers = [peer for peer in self._peers.values() if peer.sock is not None]
            now_watched = (*procs, *(peer.sock for peer in peers))
            if now_watched != watched:
                watched = now_watched
                poller = zmq.Poller()
                poller.register(self._wake_r, zmq.POLLIN)
                for item in watched:
                    poller.register(item, zmq.POLLIN)
            timeout_ms = max(0, int((check_at - time.monotonic()) * 1000) + 1)
            events = dict(poller.poll(timeout_ms))
            now = time.monotonic()
            if self._wake_r in events:
                self._drain_events(now)
            for fd, proc in procs.items():
                if fd in events:
                    self._from_job_process(proc, now)
            for peer in peers:
                if peer.sock is not None and peer.sock in events:
                    self._drain_peer(peer, now)
            if events:  # handling may have set new timers: look within TIMER_SLACK_S
                check_at = min(check_at, now + TIMER_SLACK_S)
            if now >= check_at:  # timers: not on every message; idle, sleep until the next
                self._enforce_time_limits(now)
                for peer in list(self._peers.values()):
                    self._check_peer(peer, now)
                self._probe_dormant(now)
                check_at = self._soonest_timer(now)
            self._reconcile_claims(now)
            if self._stopping and self._finished(now):
                return

    def _enforce_time_limits(self, now: float) -> None:
        """Kill the process of a job past its time limit (C8) and report it as JobTimeout."""
        for proc, running in list(self._running.items()):
            if running.deadline is not None and now >= running.deadline:
                limit_s = running.timeout_ms / 1000
                log.warning("job %d ran past its time limit of %g s; killed", running.job_id, limit_s)
                self._abort(proc)
                self.stats.jobs_run += 1
                self.stats.jobs_failed += 1
                message = f"the job ran past its time limit of {limit_s:g} s and was killed"
                error = pl.pack_error("JobTimeout", message, "")
                self._deliver(running.peer, running, Outcome(running.job_id, False, error))

    def _abort(self, proc: JobProcess) -> None:
        """Kill the job running in ``proc`` (its slot gets a fresh process) and forget its
        lease; its result, if any, is not sent."""
        running = self._running.pop(proc)
        running.peer.leases.pop(running.lease_id, None)
        proc.abort()

    def _soonest_timer(self, now: float) -> float:
        soonest = min(now + 1.0, self._filled_at + SURPLUS_GRACE_S) if self._surplus() else now + 1.0
        for peer in self._peers.values():
            if peer.sock is None:
                soonest = min(soonest, peer.retry_at)
                continue
            if peer.leases:
                soonest = min(soonest, peer.next_beat_at)
            if peer.claim_pause_until > now:
                soonest = min(soonest, peer.claim_pause_until)
            for _, deadline, _ in peer.inflight.values():
                soonest = min(soonest, deadline)
        for running in self._running.values():
            if running.deadline is not None:
                soonest = min(soonest, running.deadline)
        return soonest

    def _surplus(self) -> bool:
        free = self._free_slots()
        return any(len(peer.claims) > free for peer in self._peers.values())

    def _finished(self, now: float) -> bool:
        if self._running:
            return False
        undelivered = sum(len(peer.unacked) for peer in self._peers.values())
        if not undelivered:
            return True
        if now > self._stop_deadline:
            log.error("stopping with %d result(s) undelivered: producers unreachable", undelivered)
            return True
        return False

    # --- discovery and control events ------------------------------------------------------

    def _drain_events(self, now: float) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                kind, value = self._events.get_nowait()
            except queue.Empty:
                return
            if kind == "stop":
                if not self._stopping:
                    log.info("worker %s stopping: finishing %d running job(s)", self.name, len(self._running))
                self._stopping = True
                self._stop_deadline = now + STOP_DELIVERY_S
            elif kind == "found":
                self._found(value, now)
            elif kind == "gone":
                self._gone(value, now)

    def _found(self, announcement: Announcement, now: float) -> None:
        """An announcement: a hint that a producer may be at an endpoint."""
        refusal = self._refusal(announcement)
        if refusal is not None:
            if announcement.producer_id not in self._ignored:
                self._ignored[announcement.producer_id] = None
                while len(self._ignored) > MAX_DORMANT:
                    self._ignored.popitem(last=False)
                log.warning("ignoring producer %s at %s: %s", clean(announcement.producer_id, 80),
                            clean(", ".join(announcement.endpoints)), refusal)
            return
        endpoint = choose_endpoint(announcement.endpoints, self.interfaces)
        peer = self._peers.get(endpoint)
        if peer is not None:
            peer.names.add(announcement.name)
            peer.withdrawn = False
            if peer.unreachable_since is not None or not peer.answered:
                # what is announced there may have changed (a restart); while it answers,
                # the conversation says more than mDNS
                peer.producer_id, peer.store_key = announcement.producer_id, announcement.store_key
                if peer.server_key != announcement.public_key and self._keys is not None:
                    peer.server_key = announcement.public_key
                    peer.retry_at = now  # reconnect with the key it announces now
            return
        dormant = self._dormant.get(endpoint)
        if dormant is not None:
            if dormant.producer_id == announcement.producer_id:
                log.debug("producer %s at %s is forgotten; announcement ignored", dormant.label, endpoint)
                return
            del self._dormant[endpoint]  # a new instance there: a new producer
        if sum(peer.discovered for peer in self._peers.values()) >= self.max_producers:
            if not self._make_room():
                if now - self._full_warned_at > 60.0:
                    self._full_warned_at = now
                    log.warning(
                        "ignoring producer %s at %s: already serving %d discovered producers "
                        "(the most a worker keeps; an mDNS flood?)",
                        clean(announcement.producer_id, 80), clean(endpoint), self.max_producers,
                    )
                return
        self._add_peer(_Peer(
            endpoint, discovered=True, producer_id=announcement.producer_id,
            store_key=announcement.store_key, server_key=announcement.public_key,
            names={announcement.name},
        ), now)

    def _make_room(self) -> bool:
        """Forget one discovered peer that never answered and is unreachable now, owing
        nothing (a flood's fake), to make room for a new one. False if there is none."""
        for peer in self._peers.values():
            if peer.discovered and not peer.answered and peer.sock is None and not peer.owes:
                self._forget(peer, "it never answered and more producers are announced")
                return True
        return False

    def _gone(self, name: str, now: float) -> None:
        """An mDNS goodbye: a hint only (anyone can send one). Ask the producer whether it
        is still there; if it does not answer, it closed."""
        for peer in self._peers.values():
            if name in peer.names:
                peer.names.discard(name)
                if not peer.names:
                    peer.withdrawn = True
                    if peer.sock is not None:
                        self._beat(peer, now)

    def _refusal(self, announcement: Announcement) -> str | None:
        """Why this worker will not serve an announced producer (CURVE settings), or None."""
        if self._keys is None:
            if announcement.public_key is not None:
                return "it requires CURVE keys; start the worker with --key and --trust"
            return None
        if announcement.public_key is None:
            return "it has no CURVE key, and this worker (--key) serves only producers with one"
        if announcement.public_key not in self._trusted:
            return (f"its public key is not in --trust (public-key = \"{announcement.public_key.decode()}\"; "
                    "to serve it, copy the producer's NAME.key file, which holds that line, there)")
        return None

    def _successor(self, old: _Peer) -> _Peer | None:
        """The restarted process of a durable producer that stopped answering: another peer
        with its store key that has answered (it proved itself), with CURVE under the same
        key. None when there is none (yet)."""
        if old.store_key is None or old.unreachable_since is None:
            return None
        for new in self._peers.values():
            if (
                new is not old and new.store_key == old.store_key and new.answered
                and new.unreachable_since is None
                and (self._keys is None or new.server_key == old.server_key)
            ):
                return new
        return None

    def _hand_over(self, old: _Peer, new: _Peer) -> None:
        """Move what the worker owes a restarted producer to its new process: unacknowledged
        results and the running jobs' future results (a durable producer takes them)."""
        log.info("producer %s at %s restarted as %s at %s: handing over %d running job(s) and "
                 "%d result(s)", old.label, old.endpoint, new.label, new.endpoint,
                 len(old.leases), len(old.unacked))
        new.unacked.update(old.unacked)
        new.leases.update(old.leases)
        for running in self._running.values():
            if running.peer is old:
                running.peer = new
        old.unacked.clear()
        old.leases.clear()
        self._forget(old, "it restarted elsewhere", level=logging.INFO)
        if new.sock is not None:
            for result in new.unacked.values():
                self._send_result(new, *result, claim=None)

    def _add_peer(self, peer: _Peer, now: float) -> None:
        self._peers[peer.endpoint] = peer
        log.info("producer %s at %s", peer.label, clean(peer.endpoint))
        self._connect(peer, now)

    def _give_up(self, peer: _Peer, why: str, level: int = logging.ERROR) -> None:
        """A producer gone for good (closed, or unreachable for ``give_up_s``): its leases are
        void or expired there (the jobs are offered again), so stop its running jobs and
        forget the results it never took."""
        if peer.owes:
            log.log(
                level, "producer %s %s: aborting %d running job(s), dropping %d undelivered "
                "result(s)", peer.label, why, len(peer.leases), len(peer.unacked),
            )
        for proc in list(peer.leases.values()):
            self._abort(proc)
        peer.unacked.clear()

    def _forget(
        self, peer: _Peer, why: str, probe_in: float = DORMANT_PROBE_S, level: int | None = None
    ) -> None:
        """Drop a discovered peer and remember it as dormant: its mDNS records (which
        outlive a dead producer by many minutes) are ignored, and it is asked again whether
        it is back in ``probe_in`` seconds."""
        self._drop_peer(peer)
        if not peer.probing:
            if level is None:
                level = logging.WARNING if peer.answered else logging.INFO
            log.log(level, "producer %s at %s forgotten: %s", peer.label, peer.endpoint, why)
        peer.answered = peer.probing = False
        peer.claims.clear()
        peer.inflight.clear()
        peer.backoff_s = probe_in
        peer.retry_at = time.monotonic() + probe_in
        self._dormant[peer.endpoint] = peer
        self._dormant.move_to_end(peer.endpoint)
        self._dormant_due = min(self._dormant_due, peer.retry_at)
        while len(self._dormant) > MAX_DORMANT:
            self._dormant.popitem(last=False)

    def _probe_dormant(self, now: float) -> None:
        """Ask forgotten producers whose time has come whether they are back (a BEAT)."""
        if now < self._dormant_due:
            return
        for peer in [peer for peer in self._dormant.values() if peer.retry_at <= now]:
            del self._dormant[peer.endpoint]
            if peer.endpoint in self._peers:
                continue
            peer.probing = True
            peer.unreachable_since = now
            self._peers[peer.endpoint] = peer
            self._connect(peer, now)
        self._dormant_due = min((peer.retry_at for peer in self._dormant.values()), default=math.inf)

    def _drop_peer(self, peer: _Peer) -> None:
        self._close_sock(peer)
        if self._peers.get(peer.endpoint) is peer:
            del self._peers[peer.endpoint]

    # --- sockets ---------------------------------------------------------------------------

    def _connect(self, peer: _Peer, now: float) -> None:
        """Open the peer's DEALER. A socket that cannot be made or connected (a bad
        endpoint, no file descriptors left) makes the peer unreachable, never the worker
        crash."""
        assert self._ctx is not None
        sock = monitor = None
        try:
            sock = self._ctx.socket(zmq.DEALER)
            if self._keys is not None and peer.server_key is not None:
                make_curve_client(sock, self._keys, peer.server_key)
            monitor = sock.get_monitor_socket(HANDSHAKE_EVENTS)
            sock.setsockopt(zmq.ROUTING_ID, self.identity)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RECONNECT_IVL, 100)
            set_keepalive(sock)
            sock.setsockopt(zmq.MAXMSGSIZE, self.max_payload_bytes + p.FRAME_OVERHEAD)
            sock.connect(peer.endpoint)
        except (zmq.ZMQError, ValueError) as exc:
            if monitor is not None:
                monitor.close(0)
            if sock is not None:
                sock.close(0)
            peer.sock = None
            if peer.unreachable_since is None:
                peer.unreachable_since = now
            log.error("producer %s at %s: cannot connect: %s; retrying in %.0f s", peer.label,
                      clean(peer.endpoint), exc, peer.backoff_s)
            peer.retry_at = now + peer.backoff_s
            peer.backoff_s = min(peer.backoff_s * 2, max(BACKOFF_MAX_S, peer.backoff_s))
            return
        peer.sock, peer.monitor = sock, monitor
        if peer.probing:
            self._beat(peer, now)
            return
        for result in peer.unacked.values():  # re-send what was never acknowledged
            self._send_result(peer, *result, claim=None)

    def _close_monitor(self, peer: _Peer) -> None:
        if peer.monitor is not None:
            assert peer.sock is not None
            peer.sock.disable_monitor()
            peer.monitor.close(0)
            peer.monitor = None

    def _close_sock(self, peer: _Peer) -> None:
        if peer.sock is not None:
            self._close_monitor(peer)
            peer.sock.close(0)
            peer.sock = None

    def _unreachable(self, peer: _Peer, now: float, why: str) -> None:
        failed = None if peer.monitor is None else handshake_failure(peer.monitor, self._keys)
        if peer.probing:
            log.debug("forgotten producer %s at %s still does not answer", peer.label, peer.endpoint)
            self._forget(peer, "still unreachable", min(peer.backoff_s * 2, DORMANT_PROBE_MAX_S))
            return
        if peer.unreachable_since is None:
            peer.unreachable_since = now
            if peer.closed:  # _check_peer says so next
                log.debug("producer %s withdrew its announcement and stopped answering", peer.label)
            elif failed is not None:  # a refused key or mismatched settings: never a silent hang
                log.error("producer %s at %s: %s; retrying with backoff", peer.label, peer.endpoint, failed)
            elif peer.answered or not peer.discovered:
                log.warning("producer %s unreachable (%s); retrying with backoff", peer.label, why)
            else:  # one line a second at most: a flood of fake announcements is no log flood
                level = logging.INFO if now - self._unanswered_logged_at >= 1.0 else logging.DEBUG
                self._unanswered_logged_at = now if level == logging.INFO else self._unanswered_logged_at
                log.log(level, "producer %s announced at %s does not answer (%s); retrying with "
                        "backoff", peer.label, peer.endpoint, why)
        else:
            log.debug("producer %s still unreachable (%s); retry in %.2f s", peer.label, why, peer.backoff_s)
        self._close_sock(peer)
        peer.claims.clear()
        peer.inflight.clear()
        peer.retry_at = now + peer.backoff_s
        peer.backoff_s = min(peer.backoff_s * 2, BACKOFF_MAX_S)

    def _check_peer(self, peer: _Peer, now: float) -> None:
        if peer.sock is None:
            assert peer.unreachable_since is not None
            successor = self._successor(peer) if peer.owes else None
            if successor is not None:
                self._hand_over(peer, successor)
                return
            if peer.closed or now - peer.unreachable_since > self.give_up_s:
                if peer.closed:  # its jobs were cancelled or failed there
                    self._give_up(peer, "withdrew its announcement and stopped answering", logging.WARNING)
                else:
                    self._give_up(peer, f"unreachable for {self.give_up_s:.0f} s")
                if peer.discovered:
                    self._forget(peer, "it stopped answering"
                                 if not peer.closed else "it withdrew its announcement")
                    return
            if now >= peer.retry_at:
                self._connect(peer, now)
            return
        late = [verb for verb, deadline, _ in peer.inflight.values() if deadline <= now]
        if late:
            self._unreachable(peer, now, f"no answer to {late[0]}")
            return
        if peer.leases and now >= peer.next_beat_at:
            if not any(verb == "BEAT" for verb, _, _ in peer.inflight.values()):
                self._beat(peer, now)
            lease_ms = min(self._running[proc].lease_ms for proc in peer.leases.values())
            peer.next_beat_at = now + max(lease_ms / 4000, 0.02)

    def _beat(self, peer: _Peer, now: float) -> None:
        """Send a BEAT for the peer's leases (none: a question whether it is there), with the
        progress the running jobs reported since the last one."""
        progress = []
        for lease_id, proc in peer.leases.items():
            running = self._running[proc]
            if running.progress is not None:
                progress.append((lease_id, *running.progress))
                running.progress = None
        beat = p.Beat(rid=next(self._rids), leases=tuple(peer.leases), progress=tuple(progress) or None)
        self._request(peer, beat)

    def _request(self, peer: _Peer, msg: p.Request, job_id: int = 0) -> None:
        """Send a request and expect its answer in time."""
        assert peer.sock is not None
        timeout = REPLY_TIMEOUT_S
        if isinstance(msg, p.Result):  # a large result takes a while to cross the link
            timeout += len(msg.payload) / MIN_TRANSFER_RATE
        if isinstance(msg, p.Claim):
            timeout = msg.wait_ms / 1000 + CLAIM_GRACE_S
        elif isinstance(msg, p.Result) and msg.claim is not None:
            self._expect(peer, msg.claim.rid, "CLAIM", msg.claim.wait_ms / 1000 + CLAIM_GRACE_S, 0)
        self._expect(peer, msg.rid, type(msg).__name__.upper(), timeout, job_id)
        try:
            send_frames(peer.sock, p.encode(msg))
        except zmq.Again:
            pass  # send queue full: the reply deadline will notice

    def _expect(self, peer: _Peer, rid: int, verb: str, timeout_s: float, job_id: int) -> None:
        peer.inflight[rid] = (verb, time.monotonic() + timeout_s, job_id)
        if verb == "CLAIM":
            peer.claims.add(rid)

    # --- claims ----------------------------------------------------------------------------

    def _claim(self) -> p.Claim:
        return p.Claim(rid=next(self._rids), wait_ms=self.wait_ms, max_job=self.max_payload_bytes)

    def _free_slots(self) -> int:
        return sum(1 for proc in self._procs if proc.free)

    def _reconcile_claims(self, now: float) -> None:
        """Keep as many parked claims at each live peer as there are free slots.

        Surplus claims (a slot was just filled) are withdrawn only once the slot has stayed
        busy for SURPLUS_GRACE_S: short jobs end sooner, and withdrawing and renewing a claim
        at every other producer for each of them would cost more than the rare JOB that has
        to be declined meanwhile."""
        free = 0 if self._stopping else self._free_slots()
        withdraw = now - self._filled_at >= SURPLUS_GRACE_S
        for peer in self._peers.values():
            if peer.sock is None or peer.probing:
                continue
            if self._stopping and peer.claims:
                for rid in peer.claims:  # BYE drops them unanswered
                    peer.inflight.pop(rid, None)
                peer.claims.clear()
                self._request(peer, p.Bye(rid=next(self._rids)))
                continue
            while len(peer.claims) < free and now >= peer.claim_pause_until:
                self._request(peer, self._claim())
            while len(peer.claims) > free and withdraw:
                rid = peer.claims.pop()
                peer.inflight.pop(rid, None)
                self._request(peer, p.CancelClaim(rid=next(self._rids), claim_rid=rid))

    # --- replies ---------------------------------------------------------------------------

    def _drain_peer(self, peer: _Peer, now: float) -> None:
        while peer.sock is not None:
            try:
                frames = peer.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = p.decode_reply(frames, self.max_payload_bytes)
            except ProtocolError as exc:
                self._bad_messages += 1
                if now - self._bad_logged_at > 1.0:  # at most one line a second under a flood
                    self._bad_logged_at = now
                    log.warning(
                        "producer %s sent a bad message: %s (dropped; %d so far)",
                        peer.label, clean(exc.message), self._bad_messages,
                    )
                continue
            if not peer.answered:
                self._first_answer(peer)
            if peer.unreachable_since is not None:
                log.info("producer %s reachable again", peer.label)
                peer.unreachable_since = None
            peer.backoff_s = BACKOFF_MIN_S  # it answers: it is alive
            self._handle(peer, msg, now)

    def _first_answer(self, peer: _Peer) -> None:
        """The peer answered: it is a real producer. Its handshake worked (the monitor is no
        longer needed), and it may be the new process of a durable producer that another
        peer's work waits for."""
        peer.answered = True
        self._close_monitor(peer)
        if peer.probing:
            peer.probing = False
            log.info("forgotten producer %s at %s answers again", peer.label, peer.endpoint)
        self.stats.producers_found += 1
        for old in list(self._peers.values()):
            if old.sock is None and old.owes and self._successor(old) is peer:
                self._hand_over(old, peer)

    def _handle(self, peer: _Peer, msg: p.Reply, now: float) -> None:
        expected = peer.inflight.pop(msg.rid, None) if msg.rid is not None else None
        if isinstance(msg, p.Job):
            solicited = msg.rid in peer.claims
            peer.claims.discard(msg.rid)
            if msg.ack is not None:  # the JOB also answers the RESULT that carried the claim
                acked = peer.inflight.pop(msg.ack, None)
                if acked is not None and acked[0] == "RESULT":
                    peer.unacked.pop(acked[2], None)
            self._job(peer, msg, now, solicited)
        elif isinstance(msg, p.NoJob):
            if msg.rid in peer.claims and expected is not None:
                sent_at = expected[1] - (self.wait_ms / 1000 + CLAIM_GRACE_S)
                if now - sent_at < self.wait_ms / 2000:  # shed long before wait_ms: no busy loop
                    peer.claim_pause_until = now + EARLY_NOJOB_PAUSE_S
            peer.claims.discard(msg.rid)
        elif isinstance(msg, p.Ack):
            if expected is not None and expected[0] == "RESULT":
                peer.unacked.pop(expected[2], None)
        elif isinstance(msg, p.BeatAck):
            for lease_id in msg.void:
                proc = peer.leases.get(lease_id)
                if proc is not None:
                    log.warning(
                        "job %d was cancelled by its producer (or re-offered to another "
                        "worker); aborting it", self._running[proc].job_id,
                    )
                    self._abort(proc)
        elif isinstance(msg, p.Err):
            log.error("producer %s refused %s: %s", peer.label, expected and expected[0], clean(msg.message))
            if expected is not None and expected[0] == "CLAIM":
                peer.claims.discard(msg.rid)
            if expected is not None and expected[0] == "RESULT":
                log.error("result of job %d was refused and is dropped", expected[2])
                peer.unacked.pop(expected[2], None)

    def _job(self, peer: _Peer, job: p.Job, now: float, solicited: bool) -> None:
        """Run a JOB in a free slot, or DECLINE it: no slot free, stopping, an answer to a
        claim this worker does not have outstanding (withdrawn, or never sent), or a payload
        over this worker's limit (the DECLINE says the limit)."""
        proc = next((proc for proc in self._procs if proc.free), None)
        too_large = len(job.payload) > self.max_payload_bytes
        if proc is None or self._stopping or not solicited or too_large:
            if too_large:
                log.warning(
                    "job %d of producer %s takes %d bytes, over this worker's limit of %d "
                    "(--max-payload-bytes); declined", job.job_id, peer.label, len(job.payload),
                    self.max_payload_bytes,
                )
            self._request(peer, p.Decline(
                rid=next(self._rids), job_id=job.job_id, lease_id=job.lease_id,
                max_job=self.max_payload_bytes if too_large else None,
            ))
            return
        proc.run(job.job_id, job.payload)
        self._filled_at = now
        running = _Running(peer, job.job_id, job.lease_id, job.lease_ms)
        if job.max_result is not None:
            running.max_result = job.max_result
        if job.timeout_ms:
            running.deadline = now + job.timeout_ms / 1000
            running.timeout_ms = job.timeout_ms
        self._running[proc] = running
        if not peer.leases:
            peer.next_beat_at = now + max(job.lease_ms / 4000, 0.02)
        peer.leases[job.lease_id] = proc

    # --- results ---------------------------------------------------------------------------

    def _from_job_process(self, proc: JobProcess, now: float) -> None:
        outcome = proc.take_outcome()
        if isinstance(outcome, Progress):  # sent with the next BEAT
            running = self._running.get(proc)
            if running is not None and running.job_id == outcome.job_id:
                running.progress = (outcome.done, outcome.total, outcome.message)
            return
        running = self._running.pop(proc, None)
        if outcome is None or running is None:
            return
        peer = running.peer
        peer.leases.pop(running.lease_id, None)
        if len(outcome.payload) > running.max_result:  # the producer would drop the connection
            message = (
                f"the result takes {len(outcome.payload)} bytes encoded, more than the "
                f"producer's limit of {running.max_result} (max_payload_bytes); return a path "
                "or URL to the data instead"
            )
            outcome = Outcome(outcome.job_id, False, pl.pack_error("ResultTooLarge", message, ""))
        self.stats.jobs_run += 1
        if not outcome.ok:
            self.stats.jobs_failed += 1
        self._deliver(peer, running, outcome)

    def _deliver(self, peer: _Peer, running: _Running, outcome: Outcome) -> None:
        peer.unacked[running.job_id] = (running.lease_id, outcome)
        if peer.sock is None:
            return  # sent when the producer is reachable again
        claim = None if self._stopping or peer.claim_pause_until > time.monotonic() else self._claim()
        self._send_result(peer, running.lease_id, outcome, claim=claim)

    def _send_result(
        self, peer: _Peer, lease_id: int, outcome: Outcome, claim: p.Claim | None
    ) -> None:
        msg = p.Result(
            rid=next(self._rids), job_id=outcome.job_id, lease_id=lease_id, ok=outcome.ok,
            payload=outcome.payload, claim=claim, crashed=outcome.crashed or None,
        )
        self._request(peer, msg, job_id=outcome.job_id)

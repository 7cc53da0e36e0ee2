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
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import os
import queue
import re
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import zmq

from . import protocol as p
from ._sockets import send_frames
from .discovery import Announcement, Browser, choose_endpoint, resolve_interfaces
from .errors import ProtocolError
from .runner import JobProcess, Outcome, Progress
from .security import (
    HANDSHAKE_EVENTS,
    KeyPair,
    check_pair,
    handshake_failure,
    load_keypair,
    load_public_keys,
    make_curve_client,
)

log = logging.getLogger("freelance_rz.worker")
_ENDPOINT_RE = re.compile(r"tcp://(?P<host>[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\]):(?P<port>[0-9]{1,5})")

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
    """One producer as the worker sees it."""

    key: str  # producer id (discovered) or endpoint (--connect)
    endpoint: str
    discovered: bool
    store_key: str | None = None  # a durable producer's, the same across its restarts
    server_key: bytes | None = None  # its CURVE public key, when this worker uses CURVE
    sock: zmq.Socket[bytes] | None = None
    monitor: zmq.Socket[bytes] | None = None  # handshake failures of sock, read when it fails
    claims: set[int] = field(default_factory=set)  # rids of parked claims
    inflight: dict[int, tuple[str, float, int]] = field(default_factory=dict)  # rid -> (verb, deadline, job_id)
    unacked: dict[int, tuple[int, Outcome]] = field(default_factory=dict)  # job_id -> (lease, result)
    leases: dict[int, JobProcess] = field(default_factory=dict)  # lease_id -> slot running it
    backoff_s: float = BACKOFF_MIN_S
    retry_at: float = 0.0
    next_beat_at: float = 0.0
    withdrawn: bool = False  # its mDNS records are gone
    unreachable_since: float | None = None  # monotonic seconds; None while it answers

    @property
    def closed(self) -> bool:
        """It said goodbye on mDNS: once it stops answering it is gone for good, unless it is
        a durable producer, which will restart on its store and take the results."""
        return self.withdrawn and self.store_key is None


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

    Raises:
        ValueError: no producer source, no task module, ``slots`` < 1, bad interfaces; only
            one of ``key`` and ``trust``, an unreadable key, or ``trust`` without public keys.
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
        if not give_up_s > 0:
            raise ValueError(f"give_up_s must be > 0 seconds, got {give_up_s!r}")
        self.slots = (os.cpu_count() or 1) if slots is None else slots
        if self.slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        for endpoint in connect:
            match = _ENDPOINT_RE.fullmatch(endpoint)
            if match is None or not 0 < int(match["port"]) < 65536:
                raise ValueError(f"--connect {endpoint!r}: expected tcp://HOST:PORT")
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
        if not isinstance(max_payload_bytes, int) or max_payload_bytes < 1:
            raise ValueError(f"max_payload_bytes must be a positive int, got {max_payload_bytes!r}")
        self.max_payload_bytes = max_payload_bytes
        self._ignored: set[str] = set()  # announcements refused, warned about once
        self.tasks = list(tasks)
        self.discover = discover
        self.connect = list(connect)
        self.group = group
        self.interfaces = resolve_interfaces(interfaces)
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.wait_ms = wait_ms
        self.give_up_s = give_up_s
        self.identity = f"{self.name}-{uuid.uuid4().hex[:8]}".encode()
        self.stats = WorkerStats()
        self._events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._rids = itertools.count(1)
        self._peers: dict[str, _Peer] = {}
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
            RuntimeError: a job process could not import the task modules.
        """
        self._ctx = zmq.Context.instance()
        browser = None
        try:
            self._procs = [JobProcess(self.tasks) for _ in range(self.slots)]
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
                self._add_peer(_Peer(endpoint, endpoint, discovered=False, server_key=server_key))
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
                error = p.pack_error("JobTimeout", message, "")
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
                self._found(value)
            elif kind == "gone":
                for peer in self._peers.values():
                    if peer.discovered and value.startswith(peer.key + "."):
                        peer.withdrawn = True

    def _found(self, announcement: Announcement) -> None:
        if announcement.producer_id in self._peers:
            self._peers[announcement.producer_id].withdrawn = False
            return
        refusal = self._refusal(announcement)
        if refusal is not None:
            if announcement.producer_id not in self._ignored:
                self._ignored.add(announcement.producer_id)
                log.warning("ignoring producer %s at %s: %s", announcement.producer_id,
                            ", ".join(announcement.endpoints), refusal)
            return
        endpoint = choose_endpoint(announcement.endpoints, self.interfaces)
        peer = _Peer(
            announcement.producer_id, endpoint, discovered=True, store_key=announcement.store_key,
            server_key=announcement.public_key,
        )
        for old in list(self._peers.values()):
            same_store = old.store_key is not None and old.store_key == peer.store_key
            if same_store or old.endpoint == endpoint:  # the producer restarted
                log.info("producer %s at %s replaced by %s", old.key, old.endpoint, peer.key)
                self._hand_over(old, peer)
        self._add_peer(peer)

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

    def _hand_over(self, old: _Peer, new: _Peer) -> None:
        """Move what the worker owes a restarted producer to its new process: unacknowledged
        results and the running jobs' future results (a durable producer takes them)."""
        new.unacked.update(old.unacked)
        new.leases.update(old.leases)
        for running in self._running.values():
            if running.peer is old:
                running.peer = new
        self._drop_peer(old)

    def _add_peer(self, peer: _Peer) -> None:
        self._peers[peer.key] = peer
        self.stats.producers_found += 1
        log.info("producer %s at %s", peer.key, peer.endpoint)
        self._connect(peer)

    def _give_up(self, peer: _Peer, why: str, level: int = logging.ERROR) -> None:
        """A producer gone for good (closed, or unreachable for ``give_up_s``): its leases are
        void or expired there (the jobs are offered again), so stop its running jobs and
        forget the results it never took."""
        if peer.leases or peer.unacked:
            log.log(
                level, "producer %s %s: aborting %d running job(s), dropping %d undelivered "
                "result(s)", peer.key, why, len(peer.leases), len(peer.unacked),
            )
        for proc in list(peer.leases.values()):
            self._abort(proc)
        peer.unacked.clear()
        if peer.discovered:
            log.warning("producer %s forgotten: %s", peer.key, why)

    def _drop_peer(self, peer: _Peer) -> None:
        self._close_sock(peer)
        del self._peers[peer.key]

    # --- sockets ---------------------------------------------------------------------------

    def _connect(self, peer: _Peer) -> None:
        assert self._ctx is not None
        sock = self._ctx.socket(zmq.DEALER)
        if self._keys is not None and peer.server_key is not None:
            make_curve_client(sock, self._keys, peer.server_key)
        peer.monitor = sock.get_monitor_socket(HANDSHAKE_EVENTS)
        sock.setsockopt(zmq.ROUTING_ID, self.identity)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_payload_bytes + p.FRAME_OVERHEAD)
        sock.connect(peer.endpoint)
        peer.sock = sock
        for result in peer.unacked.values():  # re-send what was never acknowledged
            self._send_result(peer, *result, claim=None)

    def _close_sock(self, peer: _Peer) -> None:
        if peer.sock is not None:
            if peer.monitor is not None:
                peer.sock.disable_monitor()
                peer.monitor.close(0)
                peer.monitor = None
            peer.sock.close(0)
            peer.sock = None

    def _unreachable(self, peer: _Peer, now: float, why: str) -> None:
        failed = None if peer.monitor is None else handshake_failure(peer.monitor, self._keys)
        if peer.unreachable_since is None:
            peer.unreachable_since = now
            if peer.closed:  # _check_peer says so next
                log.debug("producer %s withdrew its announcement and stopped answering", peer.key)
            elif failed is not None:  # a refused key or mismatched settings: never a silent hang
                log.error("producer %s at %s: %s; retrying with backoff", peer.key, peer.endpoint, failed)
            else:
                log.warning("producer %s unreachable (%s); retrying with backoff", peer.key, why)
        else:
            log.debug("producer %s still unreachable (%s); retry in %.2f s", peer.key, why, peer.backoff_s)
        self._close_sock(peer)
        peer.claims.clear()
        peer.inflight.clear()
        peer.retry_at = now + peer.backoff_s
        peer.backoff_s = min(peer.backoff_s * 2, BACKOFF_MAX_S)

    def _check_peer(self, peer: _Peer, now: float) -> None:
        if peer.sock is None:
            assert peer.unreachable_since is not None
            if peer.closed or now - peer.unreachable_since > self.give_up_s:
                if peer.closed:  # its jobs were cancelled or failed there
                    self._give_up(peer, "withdrew its announcement and stopped answering", logging.WARNING)
                else:
                    self._give_up(peer, f"unreachable for {self.give_up_s:.0f} s")
                if peer.discovered:
                    self._drop_peer(peer)
                    return
            if peer.withdrawn and not peer.unacked and not peer.leases:
                self._drop_peer(peer)
            elif now >= peer.retry_at:
                self._connect(peer)
            return
        late = [verb for verb, deadline, _ in peer.inflight.values() if deadline <= now]
        if late:
            self._unreachable(peer, now, f"no answer to {late[0]}")
            return
        if peer.withdrawn and not peer.unacked and not peer.leases and not self._stopping:
            log.info("producer %s withdrew its announcement", peer.key)
            self._drop_peer(peer)
            return
        if peer.leases and now >= peer.next_beat_at:
            if not any(verb == "BEAT" for verb, _, _ in peer.inflight.values()):
                progress = []
                for lease_id, proc in peer.leases.items():
                    running = self._running[proc]
                    if running.progress is not None:
                        progress.append((lease_id, *running.progress))
                        running.progress = None
                beat = p.Beat(
                    rid=next(self._rids), leases=tuple(peer.leases), progress=tuple(progress) or None
                )
                self._request(peer, beat)
            lease_ms = min(self._running[proc].lease_ms for proc in peer.leases.values())
            peer.next_beat_at = now + max(lease_ms / 4000, 0.02)

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
            if peer.sock is None or (peer.withdrawn and free):
                continue
            if self._stopping and peer.claims:
                for rid in peer.claims:  # BYE drops them unanswered
                    peer.inflight.pop(rid, None)
                peer.claims.clear()
                self._request(peer, p.Bye(rid=next(self._rids)))
                continue
            while len(peer.claims) < free:
                self._request(peer, p.Claim(rid=next(self._rids), wait_ms=self.wait_ms))
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
                msg = p.decode_reply(frames)
            except ProtocolError as exc:
                self._bad_messages += 1
                if now - self._bad_logged_at > 1.0:  # at most one line a second under a flood
                    self._bad_logged_at = now
                    log.warning(
                        "producer %s sent a bad message: %s (dropped; %d so far)",
                        peer.key, exc.message, self._bad_messages,
                    )
                continue
            if peer.unreachable_since is not None:
                log.info("producer %s reachable again", peer.key)
                peer.unreachable_since = None
            peer.backoff_s = BACKOFF_MIN_S  # it answers: it is alive
            self._handle(peer, msg, now)

    def _handle(self, peer: _Peer, msg: p.Reply, now: float) -> None:
        expected = peer.inflight.pop(msg.rid, None) if msg.rid is not None else None
        if isinstance(msg, p.Job):
            peer.claims.discard(msg.rid)
            if msg.ack is not None:  # the JOB also answers the RESULT that carried the claim
                acked = peer.inflight.pop(msg.ack, None)
                if acked is not None and acked[0] == "RESULT":
                    peer.unacked.pop(acked[2], None)
            self._job(peer, msg, now)
        elif isinstance(msg, p.NoJob):
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
            log.error("producer %s refused %s: %s", peer.key, expected and expected[0], msg.message)
            if expected is not None and expected[0] == "CLAIM":
                peer.claims.discard(msg.rid)
            if expected is not None and expected[0] == "RESULT":
                log.error("result of job %d was refused and is dropped", expected[2])
                peer.unacked.pop(expected[2], None)

    def _job(self, peer: _Peer, job: p.Job, now: float) -> None:
        proc = next((proc for proc in self._procs if proc.free), None)
        if proc is None or self._stopping:
            self._request(peer, p.Decline(rid=next(self._rids), job_id=job.job_id, lease_id=job.lease_id))
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
            outcome = Outcome(outcome.job_id, False, p.pack_error("ResultTooLarge", message, ""))
        self.stats.jobs_run += 1
        if not outcome.ok:
            self.stats.jobs_failed += 1
        self._deliver(peer, running, outcome)

    def _deliver(self, peer: _Peer, running: _Running, outcome: Outcome) -> None:
        peer.unacked[running.job_id] = (running.lease_id, outcome)
        if peer.sock is None:
            return  # sent when the producer is reachable again
        claim = None
        if not self._stopping and not peer.withdrawn:
            claim = p.Claim(rid=next(self._rids), wait_ms=self.wait_ms)
        self._send_result(peer, running.lease_id, outcome, claim=claim)

    def _send_result(
        self, peer: _Peer, lease_id: int, outcome: Outcome, claim: p.Claim | None
    ) -> None:
        msg = p.Result(
            rid=next(self._rids), job_id=outcome.job_id, lease_id=lease_id, ok=outcome.ok,
            payload=outcome.payload, claim=claim, crashed=outcome.crashed or None,
        )
        self._request(peer, msg, job_id=outcome.job_id)

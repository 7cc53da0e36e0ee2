"""The producers a worker knows: one :class:`~freelance_rz.core.session.Session` and at most
one :class:`~freelance_rz.worker.link.Link` per endpoint, and the rules for what mDNS may do
to them.

Anyone can announce anything on mDNS, so an announcement is only a hint of where to connect.
The other sources (:mod:`freelance_rz.sources`: re-resolved names, DNS-SD over unicast DNS,
an endpoints file) are hints too, and their announcements go through the same rules.
A peer is one endpoint: announcements name the producer id, store key and CURVE key found
there. Nothing is replaced or dropped on a source's word alone: a goodbye (or a name that
left its source) only makes the worker ask the producer (a BEAT) whether it is still there,
and a durable producer's work moves to a new endpoint with the same store key only once that
endpoint has answered and the old one has stopped answering (with CURVE, only under the same
key; :meth:`Peers.successor`). At most ``max_producers`` discovered peers are kept; one that
never answered makes room for a new announcement. A discovered producer given up on becomes
dormant: its announcements are ignored and it is probed once in a while (DORMANT_PROBE_S,
growing), until it answers again, a new instance is announced at its endpoint, or (sources
other than mDNS, whose producers may have no id) it leaves its source and comes back.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
from typing import Any
from typing import Protocol

import zmq

from ..core.session import Session
from ..core.text import clean
from ..discovery import MDNS, Announcement
from ..core.wire import parse_endpoint
from ..security import KeyPair, describe_handshake_failure, greeting_mechanism
from ..sources import STATIC
from .link import Link

log = logging.getLogger("freelance_rz.worker")

MAX_PRODUCERS = 256  # discovered producers served at once (3 ZeroMQ sockets each at most)
FDS_PER_PRODUCER = 5  # a DEALER, its monitor pair and a TCP connection, rounded up
MAX_DORMANT = 1024  # forgotten producers remembered (so their mDNS ghosts are ignored)
DORMANT_PROBE_S = 60.0  # a forgotten producer is asked whether it is back after this...
DORMANT_PROBE_MAX_S = 600.0  # ...doubling up to this


class LoopHooks(Protocol):
    """What the table asks of the worker's loop."""

    def beat(self, session: Session, now: float) -> None: ...

    def resend(self, session: Session, now: float) -> None: ...

    def abort_jobs(self, session: Session) -> None: ...

    def move_jobs(self, old: Session, new: Session) -> None: ...

    def beat_lease_ms(self, session: Session) -> int: ...


class Peers:
    """The table of a worker's producers.

    Args:
        ctx: the ZeroMQ context links are made in.
        identity: the worker's routing id.
        max_payload: the largest job payload taken, in bytes.
        keys, trusted: this worker's CURVE key pair and the producer keys it trusts (None and
            empty without CURVE).
        give_up_s: seconds a producer may stay unreachable before it is given up on.
        stats: the worker's counts (``producers_found`` is kept here).

    The worker's loop sets :attr:`hooks` before it runs.
    """

    def __init__(
        self, ctx: zmq.Context[zmq.Socket[bytes]], identity: bytes, max_payload: int,
        keys: KeyPair | None, trusted: frozenset[bytes], give_up_s: float, stats: Any,
    ) -> None:
        self.ctx = ctx
        self.identity = identity
        self.max_payload = max_payload
        self.keys = keys
        self.trusted = trusted
        self.give_up_s = give_up_s
        self.stats = stats
        self.hooks: LoopHooks | None = None
        self.sessions: dict[str, Session] = {}  # endpoint -> session
        self.links: dict[str, Link] = {}  # endpoint -> its DEALER, while connected
        # forgotten discovered producers, oldest first: endpoint -> session (no link)
        self.dormant: collections.OrderedDict[str, Session] = collections.OrderedDict()
        self.dormant_due = math.inf  # monotonic time of the next probe of a dormant one
        self.max_producers = MAX_PRODUCERS
        # refused announcements' producer ids, warned about once (bounded: anyone can announce)
        self._ignored: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._full_warned_at = -3600.0
        self._unanswered_logged_at = -3600.0
        self._greeting_asked: set[str] = set()  # endpoints whose ZMTP greeting was read

    # --- announcements ----------------------------------------------------------------------

    def found(self, announcement: Announcement, endpoint: str, now: float) -> None:
        """An announcement of a producer at ``endpoint`` (the one of its endpoints this host
        reaches best): add it, update it, or ignore it."""
        refusal = self._refusal(announcement)
        if refusal is not None:
            who = announcement.producer_id or endpoint
            if who not in self._ignored:
                self._ignored[who] = None
                while len(self._ignored) > MAX_DORMANT:
                    self._ignored.popitem(last=False)
                log.warning("ignoring producer %s at %s: %s", clean(who, 80),
                            clean(", ".join(announcement.endpoints)), refusal)
            return
        session = self.sessions.get(endpoint)
        if session is not None:
            self._update(session, announcement, now)
            return
        if announcement.source == STATIC:  # a --connect address whose key was probed
            self.add(Session(endpoint, discovered=False, server_key=announcement.public_key), now)
            return
        dormant = self.dormant.get(endpoint)
        if dormant is not None:
            back = announcement.source != MDNS and dormant.withdrawn  # it left its source and came back
            if dormant.producer_id == announcement.producer_id and not back:
                log.debug("producer %s at %s is forgotten; announcement ignored", dormant.label, endpoint)
                return
            del self.dormant[endpoint]  # a new instance there: a new producer
        if sum(s.discovered for s in self.sessions.values()) >= self.max_producers:
            if not self._make_room(now):
                if now - self._full_warned_at > 60.0:
                    self._full_warned_at = now
                    log.warning(
                        "ignoring producer %s at %s: already serving %d discovered producers "
                        "(the most a worker keeps; an mDNS flood, or a source naming more?)",
                        clean(announcement.producer_id or endpoint, 80), clean(endpoint),
                        self.max_producers,
                    )
                return
        self.add(Session(
            endpoint, discovered=True, producer_id=announcement.producer_id,
            store_key=announcement.store_key, server_key=announcement.public_key,
            names={announcement.name},
        ), now)

    def _update(self, session: Session, announcement: Announcement, now: float) -> None:
        session.names.add(announcement.name)
        session.withdrawn = False
        if session.unreachable_since is not None or not session.answered:
            # what is announced there may have changed (a restart); while it answers, the
            # conversation says more than mDNS
            session.producer_id, session.store_key = announcement.producer_id, announcement.store_key
            if session.server_key != announcement.public_key and self.keys is not None:
                session.server_key = announcement.public_key
                session.retry_at = now  # reconnect with the key it announces now

    def _refusal(self, announcement: Announcement) -> str | None:
        """Why this worker will not serve an announced producer (CURVE settings), or None."""
        if self.keys is None:
            if announcement.public_key is not None:
                return "it requires CURVE keys; start the worker with --key and --trust"
            return None
        if announcement.public_key is None:
            return "it has no CURVE key, and this worker (--key) serves only producers with one"
        if announcement.public_key not in self.trusted:
            return (f"its public key is not in --trust (public-key = \"{announcement.public_key.decode()}\"; "
                    "to serve it, copy the producer's NAME.key file, which holds that line, there)")
        return None

    def _make_room(self, now: float) -> bool:
        """Forget one discovered peer that never answered and is unreachable now, owing
        nothing (a flood's fake), to make room for a new one. False if there is none."""
        for session in self.sessions.values():
            if (session.discovered and not session.answered and session.endpoint not in self.links
                    and not session.owes):
                self.forget(session, "it never answered and more producers are announced", now)
                return True
        return False

    def gone(self, name: str) -> list[Session]:
        """An mDNS goodbye, or an announcement that left its source: a hint only (anyone
        can send a goodbye). Returns the connected sessions that have now lost every
        announcement: the worker asks them whether they are there. A forgotten one is only
        marked (it may come back to its source: :meth:`found`)."""
        asked = []
        for session in (*self.sessions.values(), *self.dormant.values()):
            if name in session.names:
                session.names.discard(name)
                if not session.names:
                    session.withdrawn = True
                    if session.endpoint in self.links:
                        asked.append(session)
        return asked

    def successor(self, old: Session) -> Session | None:
        """The restarted process of a durable producer that stopped answering: another peer
        with its store key that has answered (it proved itself), with CURVE under the same
        key. None when there is none (yet)."""
        if old.store_key is None or old.unreachable_since is None:
            return None
        for new in self.sessions.values():
            if (
                new is not old and new.store_key == old.store_key and new.answered
                and new.unreachable_since is None
                and (self.keys is None or new.server_key == old.server_key)
            ):
                return new
        return None

    # --- links ------------------------------------------------------------------------------

    def add(self, session: Session, now: float) -> None:
        self.sessions[session.endpoint] = session
        log.info("producer %s at %s", session.label, clean(session.endpoint))
        self.connect(session, now)

    def connect(self, session: Session, now: float) -> None:
        """Open the session's link. A link that cannot be made or connected (a bad endpoint,
        no file descriptors left) makes the producer unreachable, never the worker crash."""
        try:
            link = Link(self.ctx, session.endpoint, self.identity, self.max_payload, self.keys,
                        session.server_key)
        except (zmq.ZMQError, ValueError) as exc:
            log.error("producer %s at %s: cannot connect: %s; retrying in %.0f s", session.label,
                      clean(session.endpoint), exc, session.backoff_s)
            session.reset(now)
            return
        self.links[session.endpoint] = link
        assert self.hooks is not None
        if session.probing or self._awaited(session):  # ask whether it is (back) there
            self.hooks.beat(session, now)
        if not session.probing:  # re-send what was never acknowledged
            self.hooks.resend(session, now)

    def _awaited(self, new: Session) -> bool:
        """Whether ``new`` may be the restarted process of a durable producer that stopped
        answering and that this worker owes running jobs or results (same store key). It is
        asked at once (a BEAT) rather than at the next claim, which a worker with every slot
        busy never sends: its answer lets the work be handed over (:meth:`hand_over`) within
        the one lease period the restarted producer keeps the old leases for. Nothing is
        asked while the producer answers (an announcement may be forged)."""
        return new.store_key is not None and not new.answered and any(
            old is not new and old.store_key == new.store_key and old.owes
            and old.unreachable_since is not None for old in self.sessions.values()
        )

    def _ask_successors(self, old: Session, now: float) -> None:
        """``old`` just stopped answering: ask the connected peers that may be its restarted
        process (see :meth:`_awaited`) whether they are there."""
        assert self.hooks is not None
        for new in list(self.sessions.values()):
            if new.endpoint in self.links and self._awaited(new) and not new.beat_in_flight:
                self.hooks.beat(new, now)

    def disconnect(self, session: Session) -> None:
        link = self.links.pop(session.endpoint, None)
        if link is not None:
            link.close()

    def drop(self, session: Session) -> None:
        self.disconnect(session)
        if self.sessions.get(session.endpoint) is session:
            del self.sessions[session.endpoint]

    def close(self) -> None:
        for session in list(self.sessions.values()):
            self.drop(session)

    # --- forgetting -------------------------------------------------------------------------

    def forget(self, session: Session, why: str, now: float, probe_in: float = DORMANT_PROBE_S,
               level: int | None = None) -> None:
        """Drop a discovered peer and remember it as dormant: its mDNS records (which
        outlive a dead producer by many minutes) are ignored, and it is asked again whether
        it is back in ``probe_in`` seconds."""
        self.drop(session)
        if not session.probing:
            if level is None:
                level = logging.WARNING if session.answered else logging.INFO
            log.log(level, "producer %s at %s forgotten: %s", session.label, session.endpoint, why)
        session.answered = session.probing = False
        session.claims.clear()
        session.inflight.clear()
        session.backoff_s = probe_in
        session.retry_at = now + probe_in
        self.dormant[session.endpoint] = session
        self.dormant.move_to_end(session.endpoint)
        self.dormant_due = min(self.dormant_due, session.retry_at)
        while len(self.dormant) > MAX_DORMANT:
            self.dormant.popitem(last=False)

    def abandon(self, session: Session, now: float) -> None:
        """Stop using a producer that speaks another protocol version (it answered ERR 2):
        it is asked again (a BEAT) after DORMANT_PROBE_S, growing, in case it was upgraded."""
        self._give_up(session, "speaks another protocol version")
        self.forget(session, "it speaks another protocol version", now, level=logging.INFO)

    def probe_dormant(self, now: float) -> None:
        """Ask forgotten producers whose time has come whether they are back (a BEAT)."""
        if now < self.dormant_due:
            return
        for session in [s for s in self.dormant.values() if s.retry_at <= now]:
            del self.dormant[session.endpoint]
            if session.endpoint in self.sessions:
                continue
            session.probing = True
            session.unreachable_since = now
            self.sessions[session.endpoint] = session
            self.connect(session, now)
        self.dormant_due = min((s.retry_at for s in self.dormant.values()), default=math.inf)

    # --- liveness ---------------------------------------------------------------------------

    def check(self, session: Session, now: float) -> None:
        """The timers of one producer: reconnect, hand over, give up, time out, heartbeat."""
        assert self.hooks is not None
        if session.endpoint not in self.links:
            assert session.unreachable_since is not None
            successor = self.successor(session) if session.owes else None
            if successor is not None:
                self.hand_over(session, successor, now)
                return
            if session.closed or now - session.unreachable_since > self.give_up_s:
                if session.closed:  # its jobs were cancelled or failed there
                    self._give_up(session, "withdrew its announcement and stopped answering", logging.WARNING)
                else:
                    self._give_up(session, f"unreachable for {self.give_up_s:.0f} s")
                if session.discovered:
                    self.forget(session, "it stopped answering" if not session.closed
                                else "it withdrew its announcement", now)
                    return
            if now >= session.retry_at:
                self.connect(session, now)
            return
        late = session.late(now)
        if late is not None:
            self.unreachable(session, now, f"no answer to {late}")
            return
        if session.beat_due(now):
            if not session.beat_in_flight:
                self.hooks.beat(session, now)
            session.next_beat_at = now + max(self.hooks.beat_lease_ms(session) / 4000, 0.02)

    def unreachable(self, session: Session, now: float, why: str) -> None:
        """The producer missed a reply deadline: close its link and retry with backoff (a
        dormant one just stays dormant, asked again later)."""
        link = self.links.get(session.endpoint)
        failed = None if link is None else link.handshake_failure(self.keys)
        if session.probing:
            log.debug("forgotten producer %s at %s still does not answer", session.label, session.endpoint)
            self.forget(session, "still unreachable", now, min(session.backoff_s * 2, DORMANT_PROBE_MAX_S))
            return
        if session.unreachable_since is None:
            if session.closed:  # check() says so next
                log.debug("producer %s withdrew its announcement and stopped answering", session.label)
            elif failed is not None:  # a refused key or mismatched settings: never a silent hang
                log.error("producer %s at %s: %s; retrying with backoff", session.label, session.endpoint, failed)
            elif session.answered or not session.discovered:
                log.warning("producer %s unreachable (%s); retrying with backoff", session.label, why)
                if self.keys is None and not session.answered:
                    self._ask_greeting(session)
            else:  # one line a second at most: a flood of fake announcements is no log flood
                level = logging.INFO if now - self._unanswered_logged_at >= 1.0 else logging.DEBUG
                if level == logging.INFO:
                    self._unanswered_logged_at = now
                log.log(level, "producer %s announced at %s does not answer (%s); retrying with "
                        "backoff", session.label, session.endpoint, why)
        else:
            log.debug("producer %s still unreachable (%s); retry in %.2f s", session.label, why,
                      session.backoff_s)
        self.disconnect(session)
        session.reset(now)
        if session.owes and session.store_key is not None:
            self._ask_successors(session, now)

    def first_answer(self, session: Session, link: Link, now: float) -> None:
        """The producer answered: it is real. Its handshake worked, and it may be the new
        process of a durable producer that another peer's work waits for."""
        session.answered = True
        link.handshaken()
        if session.probing:
            session.probing = False
            log.info("forgotten producer %s at %s answers again", session.label, session.endpoint)
        self.stats.producers_found += 1
        for old in list(self.sessions.values()):  # its link may be open again: a retry
            if old.owes and self.successor(old) is session:
                self.hand_over(old, session, now)

    def hand_over(self, old: Session, new: Session, now: float) -> None:
        """Move what the worker owes a restarted producer to its new process: unacknowledged
        results and the running jobs. A durable producer restores their leases and holds
        them for one lease period from its restart: the jobs go on under the same leases
        once this worker's next BEAT renews them (a lease it has given up by then is void at
        that BEAT, and the job is aborted here as for any void lease)."""
        assert self.hooks is not None
        log.info("producer %s at %s restarted as %s at %s: %d running job(s) go on under their "
                 "leases there, %d result(s) are sent again", old.label, old.endpoint, new.label,
                 new.endpoint, len(old.leases), len(old.unacked))
        new.unacked.update(old.unacked)
        new.leases.update(old.leases)
        self.hooks.move_jobs(old, new)
        old.unacked.clear()
        old.leases.clear()
        self.forget(old, "it restarted elsewhere", now, level=logging.INFO)
        if new.endpoint in self.links:
            self.hooks.resend(new, now)

    def _ask_greeting(self, session: Session) -> None:
        """A producer given on the command line never answered this worker without keys: read
        its ZMTP greeting once, in a thread (up to 2 s), and say so if it requires CURVE. Its
        close may have outrun its greeting, so libzmq reported a dropped connection, not a
        mechanism mismatch (see :func:`~freelance_rz.security.greeting_mechanism`). Command-line
        endpoints only: they are few, and no announcement can add one."""
        if session.endpoint in self._greeting_asked:
            return
        self._greeting_asked.add(session.endpoint)
        threading.Thread(target=_say_if_curve, args=(session.label, session.endpoint), daemon=True,
                         name="freelance-rz-greeting").start()

    def _give_up(self, session: Session, why: str, level: int = logging.ERROR) -> None:
        """A producer gone for good (closed, or unreachable for ``give_up_s``): its leases are
        void or expired there (the jobs are offered again), so stop its running jobs and
        forget the results it never took."""
        assert self.hooks is not None
        if session.owes:
            log.log(
                level, "producer %s %s: aborting %d running job(s), dropping %d undelivered "
                "result(s)", session.label, why, len(session.leases), len(session.unacked),
            )
        self.hooks.abort_jobs(session)
        session.unacked.clear()


def _say_if_curve(label: str, endpoint: str) -> None:
    """Log an error if the producer at ``endpoint`` names CURVE in its ZMTP greeting."""
    try:
        host, port = parse_endpoint(endpoint)
    except ValueError:
        return
    if greeting_mechanism(host.strip("[]"), port, 2.0) == "CURVE":
        log.error("producer %s at %s: %s; retrying with backoff", label, endpoint,
                  describe_handshake_failure(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, None))

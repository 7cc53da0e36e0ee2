"""A worker's protocol state for one producer: its claims, its requests in flight, its
leases and the results it still owes. Pure: no sockets (the worker's link sends what the
session says), and the clock is passed in.

Theory of operation
-------------------
Every request the worker sends is *expected*: answered within its deadline (a CLAIM within
``wait_ms`` + CLAIM_GRACE_S, anything else within REPLY_TIMEOUT_S, a RESULT longer by its
size at MIN_TRANSFER_RATE). A request still unanswered at its deadline makes the producer
unreachable (:meth:`Session.late`): the worker closes the link and :meth:`Session.reset`
forgets the claims and requests in flight, schedules a retry after an exponential backoff,
and keeps the leases and the unacknowledged results, which go again once the producer
answers. :meth:`Session.on_reply` books a reply against what was expected and says what the
worker must do about it (:class:`Effect`): run or decline a JOB, abort voided leases, log a
refusal.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import wire as w
from .text import clean

DEFAULT_WAIT_MS = 1000  # claim long-poll; with CLAIM_GRACE_S this bounds C5 detection at 1.4 s
CLAIM_GRACE_S = 0.4  # extra time a producer has to answer a claim after wait_ms (C5: < 1.5 s)
REPLY_TIMEOUT_S = 1.0  # time a producer has to answer RESULT, BEAT, DECLINE, ...
MIN_TRANSFER_RATE = 10e6  # bytes/s: a RESULT's reply timeout grows by its size at this rate
BACKOFF_MIN_S = 0.25
BACKOFF_MAX_S = 10.0
EARLY_NOJOB_PAUSE_S = 0.5  # a NOJOB long before wait_ms (a producer shedding claims): pause


_VERB = {cls: cls.__name__.upper() for cls in (w.Claim, w.Result, w.Beat, w.Decline, w.CancelClaim,
                                                w.Bye, w.Status, w.Admin)}  # a request's verb, for logs


@dataclass(frozen=True, slots=True)
class Outcome:
    """A finished job: ``ok`` and its payload (msgpack value, or error map when not ok).
    ``crashed``: the job's process died (a lost attempt, retried, not a task error)."""

    job_id: int
    ok: bool
    payload: bytes
    crashed: bool = False


@dataclass(slots=True)
class Expected:
    """A request waiting for its answer: its verb, its deadline (monotonic seconds), and the
    job it is about (RESULT; 0 otherwise)."""

    verb: str
    deadline: float
    job_id: int = 0


@dataclass(frozen=True, slots=True)
class Effect:
    """What a reply asks of the worker. ``job``: a JOB to run (``solicited``: it answers a
    claim the worker holds; if not, it must be declined); ``void``: leases to abort;
    ``refused``: the verb and message of an ERR; ``dropped``: a result the producer refused
    (its job id), which is not sent again; ``abandon``: the producer speaks another protocol
    version (ERR 2, its message): stop using it."""

    job: w.Job | None = None
    solicited: bool = False
    void: tuple[int, ...] = ()
    refused: tuple[str | None, str] | None = None
    dropped: int | None = None
    abandon: str | None = None


@dataclass(eq=False)
class Session:
    """One producer as the worker sees it: an endpoint and the conversation with it."""

    endpoint: str  # its key: tcp://HOST:PORT
    discovered: bool
    producer_id: str | None = None  # as announced at this endpoint (None: --connect)
    store_key: str | None = None  # a durable producer's, the same across its restarts
    server_key: bytes | None = None  # its CURVE public key, when this worker uses CURVE
    names: set[str] = field(default_factory=set)  # mDNS instance names announcing it
    claims: set[int] = field(default_factory=set)  # rids of parked claims
    inflight: dict[int, Expected] = field(default_factory=dict)  # rid -> what is expected
    unacked: dict[int, tuple[int, Outcome]] = field(default_factory=dict)  # job_id -> (lease, result)
    leases: dict[int, int] = field(default_factory=dict)  # lease_id -> slot running it
    claimed_free: dict[str, float] | None = None  # the free resources its latest claim said
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

    # --- requests ---------------------------------------------------------------------------

    def expect(self, msg: w.Request, now: float, job_id: int = 0) -> None:
        """Book a request about to be sent (and the claim a RESULT carries)."""
        timeout = REPLY_TIMEOUT_S
        if isinstance(msg, w.Claim):
            timeout = msg.wait_ms / 1000 + CLAIM_GRACE_S
            self.claims.add(msg.rid)
            self.claimed_free = msg.resources
        elif isinstance(msg, w.Result):  # a large result takes a while to cross the link
            timeout += len(msg.payload) / MIN_TRANSFER_RATE
            if msg.claim is not None:
                self.expect(msg.claim, now)
        self.inflight[msg.rid] = Expected(_VERB[type(msg)], now + timeout, job_id)

    def withdraw(self, rid: int) -> None:
        """Forget a claim withdrawn (CANCEL_CLAIM, BYE): no answer will come to it."""
        self.claims.discard(rid)
        self.inflight.pop(rid, None)

    def late(self, now: float) -> str | None:
        """The verb of a request whose answer is overdue, or None."""
        return next((e.verb for e in self.inflight.values() if e.deadline <= now), None)

    def reset(self, now: float) -> None:
        """The producer is unreachable: forget the claims and requests in flight, and retry
        after a growing pause (leases and unacknowledged results are kept)."""
        if self.unreachable_since is None:
            self.unreachable_since = now
        self.claims.clear()
        self.inflight.clear()
        self.retry_at = now + self.backoff_s
        self.backoff_s = min(self.backoff_s * 2, BACKOFF_MAX_S)

    def soonest(self) -> float | None:
        """The earliest deadline of a request in flight, or None."""
        return min((e.deadline for e in self.inflight.values()), default=None)

    # --- replies ----------------------------------------------------------------------------

    def on_reply(self, msg: w.Reply, now: float, wait_ms: int) -> Effect:
        """Book a reply (the producer answered: it is reachable) and say what to do."""
        self.unreachable_since = None
        self.backoff_s = BACKOFF_MIN_S
        expected = self.inflight.pop(msg.rid, None) if msg.rid is not None else None
        if isinstance(msg, w.Job):
            solicited = msg.rid in self.claims
            self.claims.discard(msg.rid)
            if msg.ack is not None:  # the JOB also answers the RESULT that carried the claim
                self._acknowledged(self.inflight.pop(msg.ack, None))
            return Effect(job=msg, solicited=solicited)
        if isinstance(msg, w.NoJob):
            if msg.rid in self.claims and expected is not None:
                sent_at = expected.deadline - (wait_ms / 1000 + CLAIM_GRACE_S)
                if now - sent_at < wait_ms / 2000:  # shed long before wait_ms: no busy loop
                    self.claim_pause_until = now + EARLY_NOJOB_PAUSE_S
            self.claims.discard(msg.rid)
        elif isinstance(msg, w.Ack):
            self._acknowledged(expected)
        elif isinstance(msg, w.BeatAck):
            return Effect(void=tuple(lease for lease in msg.void if lease in self.leases))
        elif isinstance(msg, w.Err):
            if msg.code == w.E_VERSION:
                return Effect(abandon=msg.message)
            verb = None if expected is None else expected.verb
            dropped = None
            if verb == "CLAIM":
                self.claims.discard(msg.rid)
            elif verb == "RESULT" and expected is not None:
                dropped = expected.job_id
                self.unacked.pop(dropped, None)
            return Effect(refused=(verb, msg.message), dropped=dropped)
        return Effect()

    def _acknowledged(self, expected: Expected | None) -> None:
        if expected is not None and expected.verb == "RESULT":
            self.unacked.pop(expected.job_id, None)

    # --- claims and heartbeats --------------------------------------------------------------

    def claims_missing(self, free: int, now: float) -> int:
        """How many claims to send so that one is parked per free slot (none while paused)."""
        return 0 if now < self.claim_pause_until else max(0, free - len(self.claims))

    def surplus_claims(self, free: int) -> list[int]:
        """Claims beyond one per free slot, to withdraw."""
        return list(self.claims)[: max(0, len(self.claims) - free)]

    def beat_due(self, now: float) -> bool:
        """It holds leases and the time for a BEAT has come."""
        return bool(self.leases) and now >= self.next_beat_at

    @property
    def beat_in_flight(self) -> bool:
        return any(e.verb == "BEAT" for e in self.inflight.values())

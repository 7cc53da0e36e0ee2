"""The producer's offer engine without sockets: a Hypothesis state machine drives it with
several simulated workers (claims, results that carry claims, beats, declines, withdrawn
claims, crashes), the application (submits, cancels) and the clock, and checks after every
step: no job leased to two workers at once, every claim answered at most once and only while
it is outstanding, no worker handed more jobs than it claimed, every job either live or
resolved exactly once, and the counts adding up."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from freelance_rz.core import payload as pl
from freelance_rz.core import wire as w
from freelance_rz.core.ledger import JobState, Ledger
from freelance_rz.core.offer import OfferEngine, Outcome

WORKERS = [f"w{i}".encode() for i in range(4)]
LEASE_S = 1.0
MAX_ATTEMPTS = 2


def frames(identity: bytes, msg: w.Message) -> list[bytes]:
    return [identity, *w.encode(msg)]


class SimWorker:
    """What a well-behaved worker knows: its outstanding claims and the leases it holds."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.claims: set[int] = set()  # outstanding (sent, not answered, not withdrawn)
        self.withdrawn: set[int] = set()  # withdrawn: a reply may still cross on the wire
        self.leases: dict[int, int] = {}  # lease_id -> job_id
        self.alive = True

    @property
    def free(self) -> int:
        return self.slots - len(self.leases)


class OfferMachine(RuleBasedStateMachine):
    @initialize(slots=st.lists(st.integers(1, 3), min_size=len(WORKERS), max_size=len(WORKERS)))
    def start(self, slots):
        self.now = 0.0
        self.replies: list[tuple[bytes, w.Reply]] = []
        self.outcomes: Counter[int] = Counter()
        self.kinds: dict[int, str] = {}
        self.cancelled_by_app: set[int] = set()
        self.ledger = Ledger(lease_s=LEASE_S, max_attempts=MAX_ATTEMPTS, rng=random.Random(0))
        self.engine = OfferEngine(
            self.ledger, send=self.send, on_outcome=self.outcome, on_progress=lambda *a: None,
            max_payload=w.DEFAULT_MAX_PAYLOAD, facts={}, durable=False,
            wanted=lambda job_id: job_id not in self.cancelled_by_app, now=self.now,
        )
        self.workers = {identity: SimWorker(n) for identity, n in zip(WORKERS, slots, strict=True)}
        self.next_job = 1
        self.next_rid = 1
        self.answered: set[tuple[bytes, int]] = set()

    # --- the engine's outputs ---------------------------------------------------------------

    def send(self, identity, msg):
        self.replies.append((identity, msg))
        return self.workers[identity].alive

    def outcome(self, job_id, outcome: Outcome):
        self.outcomes[job_id] += 1
        self.kinds[job_id] = outcome.kind

    def deliver(self):
        """Hand the replies sent so far to the simulated workers, checking each."""
        replies, self.replies = self.replies, []
        for identity, msg in replies:
            worker = self.workers[identity]
            if not worker.alive:
                continue
            if isinstance(msg, (w.Job, w.NoJob)):
                key = (identity, msg.rid)
                assert key not in self.answered, f"claim {key} answered twice"
                self.answered.add(key)
                assert msg.rid in worker.claims or msg.rid in worker.withdrawn, "an unclaimed answer"
                if msg.rid in worker.withdrawn:  # crossed with its CANCEL_CLAIM: decline it
                    worker.withdrawn.discard(msg.rid)
                    if isinstance(msg, w.Job):
                        self.receive(identity, w.Decline(rid=self.rid(), job_id=msg.job_id, lease_id=msg.lease_id))
                    continue
                worker.claims.discard(msg.rid)
                if isinstance(msg, w.Job):
                    assert worker.free > 0, "a worker was handed more jobs than it claimed"
                    worker.leases[msg.lease_id] = msg.job_id

    def receive(self, identity, msg):
        self.engine.receive(frames(identity, msg), self.now)

    def rid(self):
        self.next_rid += 1
        return self.next_rid

    # --- the application --------------------------------------------------------------------

    @rule(priority=st.integers(-1, 1))
    def submit(self, priority):
        job_id, self.next_job = self.next_job, self.next_job + 1
        self.engine.submit(job_id, pl.pack_call("m:f", [job_id], {}), max_attempts=None,
                           priority=priority, timeout_ms=None)
        self.engine.tick(self.now)
        self.deliver()

    @precondition(lambda self: len(self.ledger))
    @rule(data=st.data())
    def cancel(self, data):
        job_id = data.draw(st.sampled_from(sorted(self.ledger._jobs)))
        self.cancelled_by_app.add(job_id)
        self.engine.cancel(job_id, self.now)
        self.deliver()

    # --- the workers ------------------------------------------------------------------------

    @rule(identity=st.sampled_from(WORKERS), wait_ms=st.sampled_from([0, 500, 5000]))
    def claim(self, identity, wait_ms):
        worker = self.workers[identity]
        if not worker.alive or len(worker.claims) >= worker.free:
            return
        rid = self.rid()
        worker.claims.add(rid)
        self.receive(identity, w.Claim(rid=rid, wait_ms=wait_ms, tasks=("m",)))
        self.deliver()

    @rule(identity=st.sampled_from(WORKERS), ok=st.booleans(), carry=st.booleans(),
          crashed=st.booleans(), data=st.data())
    def result(self, identity, ok, carry, crashed, data):
        worker = self.workers[identity]
        if not worker.alive or not worker.leases:
            return
        lease_id = data.draw(st.sampled_from(sorted(worker.leases)))
        job_id = worker.leases.pop(lease_id)
        claim = None
        if carry and len(worker.claims) < worker.free:
            claim = w.Claim(rid=self.rid(), wait_ms=500, tasks=("m",))
            worker.claims.add(claim.rid)
        payload = pl.pack_value(job_id) if ok and not crashed else pl.pack_error("E", "x", "")
        self.receive(identity, w.Result(rid=self.rid(), job_id=job_id, lease_id=lease_id,
                                        ok=ok and not crashed, payload=payload, claim=claim,
                                        crashed=True if crashed else None))
        self.deliver()

    @rule(identity=st.sampled_from(WORKERS), data=st.data())
    def forge(self, identity, data):
        """A RESULT for a lease another worker holds (or for a made-up one) changes nothing."""
        held = [(other, lease_id, job_id) for other, worker in self.workers.items() if other != identity
                for lease_id, job_id in worker.leases.items() if job_id in self.ledger]
        if not held:
            return
        _, lease_id, job_id = data.draw(st.sampled_from(held))
        lease_id = data.draw(st.sampled_from([lease_id, lease_id ^ 1]))
        self.receive(identity, w.Result(rid=self.rid(), job_id=job_id, lease_id=lease_id, ok=True,
                                        payload=pl.pack_value(0)))
        assert job_id in self.ledger and self.outcomes[job_id] == 0, "a forged result resolved a job"
        self.replies = [(i, m) for i, m in self.replies if i != identity or not isinstance(m, w.Ack)]
        self.deliver()

    @rule(identity=st.sampled_from(WORKERS))
    def beat(self, identity):
        worker = self.workers[identity]
        if not worker.alive:
            return
        self.receive(identity, w.Beat(rid=self.rid(), leases=tuple(worker.leases)))
        for msg in [m for i, m in self.replies if i == identity and isinstance(m, w.BeatAck)]:
            for lease_id in msg.void:  # cancelled or re-offered: the worker aborts it
                worker.leases.pop(lease_id, None)
        self.deliver()

    @rule(identity=st.sampled_from(WORKERS), data=st.data())
    def decline(self, identity, data):
        worker = self.workers[identity]
        if not worker.alive or not worker.leases:
            return
        lease_id = data.draw(st.sampled_from(sorted(worker.leases)))
        job_id = worker.leases.pop(lease_id)
        self.receive(identity, w.Decline(rid=self.rid(), job_id=job_id, lease_id=lease_id))
        self.deliver()

    @rule(identity=st.sampled_from(WORKERS), all_of_them=st.booleans())
    def withdraw(self, identity, all_of_them):
        worker = self.workers[identity]
        if not worker.alive or not worker.claims:
            return
        if all_of_them:
            worker.withdrawn |= worker.claims
            worker.claims.clear()
            self.receive(identity, w.Bye(rid=self.rid()))
        else:
            rid = min(worker.claims)
            worker.claims.discard(rid)
            worker.withdrawn.add(rid)
            self.receive(identity, w.CancelClaim(rid=self.rid(), claim_rid=rid))
        self.deliver()

    @rule(identity=st.sampled_from(WORKERS))
    def crash(self, identity):
        """A worker dies: it answers nothing more; sends to it fail (its claims are dropped
        when the engine next tries one); its leases expire."""
        self.workers[identity].alive = False

    @rule(seconds=st.sampled_from([0.1, 0.6, 1.1, 6.0]))
    def advance(self, seconds):
        self.now += seconds
        self.engine.tick(self.now)
        self.deliver()

    # --- invariants -------------------------------------------------------------------------

    @invariant()
    def no_job_leased_twice(self):
        holders = Counter(job_id for worker in self.workers.values() if worker.alive
                          for job_id in worker.leases.values())
        for job_id in holders:
            live = self.ledger.job(job_id)
            current = None if live is None else live.lease_id
            assert sum(1 for worker in self.workers.values() if worker.alive
                       for lease_id, j in worker.leases.items() if j == job_id and lease_id == current) <= 1
        leased = [job for job in self.ledger._jobs.values() if job.state is JobState.LEASED]
        assert len({job.lease_id for job in leased}) == len(leased)

    @invariant()
    def nothing_vanishes(self):
        for job_id in range(1, self.next_job):
            live = job_id in self.ledger
            assert live != (self.outcomes[job_id] == 1), f"job {job_id}: live {live}, outcomes {self.outcomes[job_id]}"
            assert self.outcomes[job_id] <= 1

    @invariant()
    def counts_add_up(self):
        counts = self.ledger.counts
        assert counts[JobState.PENDING] + counts[JobState.LEASED] == len(self.ledger)
        finished = Counter(self.kinds.values())
        assert counts[JobState.DONE] == finished["done"]
        assert counts[JobState.CANCELLED] == finished["cancelled"]
        assert counts[JobState.DEAD] == finished["dead"]
        assert counts[JobState.FAILED] == finished["failed"]

    @invariant()
    def parked_claims_are_outstanding(self):
        for identity, rid in self.engine.parked.keys():
            worker = self.workers[identity]
            assert rid in worker.claims or rid in worker.withdrawn or not worker.alive


TestOfferEngine = OfferMachine.TestCase
TestOfferEngine.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)

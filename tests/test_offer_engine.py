"""The producer's offer engine without sockets: a Hypothesis state machine drives it with
several simulated workers (claims, results that carry claims, beats, declines, withdrawn
claims, crashes), the application (submits, cancels) and the clock, and checks after every
step: no job leased to two workers at once, every claim answered at most once and only while
it is outstanding, no worker handed more jobs than it claimed, every job either live or
resolved exactly once, the counts adding up, and the per-task tally (fed by the ledger's
journal, as on a producer) agreeing with the ledger. Operators' ADMIN cancels, with the right
token or a wrong one, are among the steps.

Matching (DESIGN §8): the workers differ in task modules, GPUs and labels, the jobs in their
task and requirements. A worker is never handed a job it cannot run (its module, its labels,
its GPUs free when the JOB arrives), and once the engine has dispatched, no pending job that a
parked claim's worker can run is left waiting.

When a job may run (DESIGN §9): some jobs are submitted with a delay and some results are a
task's ``Retry(in_s)``; no job is handed out before its due time (and its retry's), and none
vanishes on the way."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from freelance_rz.core import payload as pl
from freelance_rz.core import wire as w
from freelance_rz.core.ledger import JobState, Ledger
from freelance_rz.core.match import Needs
from freelance_rz.core.offer import OfferEngine, Outcome
from freelance_rz.core.tally import Tally
from freelance_rz.errors import Retry
from freelance_rz.producer.journal import TallyTap

WORKERS = [f"w{i}".encode() for i in range(4)]
LEASE_S = 1.0
MAX_ATTEMPTS = 2
TOKEN = "admin-token-0123456789"
MODULES = ["m", "n", "o"]


def frames(identity: bytes, msg: w.Message) -> list[bytes]:
    return [identity, *w.encode(msg)]


class SimWorker:
    """What a well-behaved worker knows: its outstanding claims and the leases it holds, and
    what it can run: task modules, GPUs (shared by its running jobs) and labels."""

    def __init__(self, slots: int, modules: list[str], gpus: int, zone: str | None) -> None:
        self.slots = slots
        self.modules = modules
        self.gpus = gpus
        self.labels = {"zone": zone} if zone else None
        self.claims: set[int] = set()  # outstanding (sent, not answered, not withdrawn)
        self.withdrawn: set[int] = set()  # withdrawn: a reply may still cross on the wire
        self.leases: dict[int, int] = {}  # lease_id -> job_id
        self.held: dict[int, float] = {}  # lease_id -> GPUs its job holds
        self.claimed_free: dict | None = None  # what its latest claim said was free
        self.alive = True

    @property
    def free(self) -> int:
        return self.slots - len(self.leases)

    def free_resources(self) -> dict | None:
        return {"gpu": self.gpus - sum(self.held.values())} if self.gpus else None

    def can_run(self, needs: Needs) -> bool:
        gpu = dict(needs.resources).get("gpu", 0)
        free = (self.free_resources() or {}).get("gpu", 0)
        return (needs.module in self.modules and gpu <= free
                and all((self.labels or {}).get(k) == v for k, v in needs.labels))

    def claim(self, rid: int, wait_ms: int) -> w.Claim:
        self.claimed_free = self.free_resources()
        return w.Claim(rid=rid, wait_ms=wait_ms, tasks=tuple(self.modules),
                       resources=self.claimed_free, labels=self.labels)

    def drop(self, lease_id: int) -> int:
        self.held.pop(lease_id, None)
        return self.leases.pop(lease_id)


worker_kinds = st.tuples(
    st.integers(1, 3),  # slots
    st.lists(st.sampled_from(MODULES), min_size=1, max_size=3, unique=True),  # --tasks
    st.sampled_from([0, 0, 1, 2]),  # GPUs
    st.sampled_from([None, None, "a", "b"]),  # label zone
)


class OfferMachine(RuleBasedStateMachine):
    @initialize(kinds=st.lists(worker_kinds, min_size=len(WORKERS), max_size=len(WORKERS)),
                limit=st.sampled_from([None, 1, 2]))
    def start(self, kinds, limit):
        self.now = 0.0
        self.replies: list[tuple[bytes, w.Reply]] = []
        self.outcomes: Counter[int] = Counter()
        self.kinds: dict[int, str] = {}
        self.cancelled_by_app: set[int] = set()
        self.ledger = Ledger(lease_s=LEASE_S, max_attempts=MAX_ATTEMPTS, rng=random.Random(0))
        self.tally = Tally()
        self.ledger.journal = TallyTap(self.ledger.journal, self.tally, self)  # self.now: the wall
        self.engine = OfferEngine(
            self.ledger, send=self.send, on_outcome=self.outcome, on_progress=lambda *a: None,
            max_payload=w.DEFAULT_MAX_PAYLOAD, facts={}, durable=False,
            wanted=lambda job_id: job_id not in self.cancelled_by_app, now=self.now,
            admin_token=TOKEN,
        )
        self.tasks: dict[int, str] = {}
        self.workers = {identity: SimWorker(*kind) for identity, kind in zip(WORKERS, kinds, strict=True)}
        self.needs: dict[int, Needs] = {}
        self.next_job = 1
        self.next_rid = 1
        self.answered: set[tuple[bytes, int]] = set()
        self.not_before: dict[int, float] = {}  # job -> the earliest time it may be handed out
        self.limit = limit  # jobs of m:f leased at once, at most (None: no limit)
        if limit is not None:
            self.engine.limit("m:f", limit, None, self.now)
        self.after: dict[int, int] = {}  # job -> the job it depends on

    # --- the engine's outputs ---------------------------------------------------------------

    def send(self, identity, msg):
        self.replies.append((identity, msg))
        return identity not in self.workers or self.workers[identity].alive

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
                    assert self.now >= self.not_before.get(msg.job_id, 0.0), "offered too early"
                    if msg.job_id in self.after:  # offered only once its dependency succeeded
                        assert self.kinds.get(self.after[msg.job_id]) == "done", "offered before its dependency"
                    needs = self.needs[msg.job_id]
                    assert worker.can_run(needs), f"{identity} cannot run {needs}"
                    assert (msg.resources or {}) == dict(needs.resources)
                    worker.leases[msg.lease_id] = msg.job_id
                    worker.held[msg.lease_id] = dict(needs.resources).get("gpu", 0)

    def receive(self, identity, msg):
        self.engine.receive(frames(identity, msg), self.now)

    def settle(self):
        """What the producer's loop does after each message, and what a worker does when its
        free GPUs changed while it has claims parked (it renews one: the producer keeps
        what its latest claim said)."""
        for identity, worker in self.workers.items():
            if worker.alive and worker.claims and worker.claimed_free != worker.free_resources():
                rid = min(worker.claims)
                worker.claims.discard(rid)
                worker.withdrawn.add(rid)
                self.receive(identity, w.CancelClaim(rid=self.rid(), claim_rid=rid))
                claim = worker.claim(self.rid(), 5000)
                worker.claims.add(claim.rid)
                self.receive(identity, claim)
        self.engine.tick(self.now)
        self.deliver()

    def rid(self):
        self.next_rid += 1
        return self.next_rid

    # --- the application --------------------------------------------------------------------

    @rule(jobs=st.lists(st.tuples(
        st.integers(-1, 1), st.sampled_from(MODULES), st.sampled_from([0, 0, 1, 2]),
        st.sampled_from([None, None, "a"]), st.booleans(),
    ), min_size=1, max_size=3), delays=st.lists(st.sampled_from([None, None, 0.0, 0.6, 3.0]),
                                                min_size=3, max_size=3),
          after=st.lists(st.booleans(), min_size=3, max_size=3))
    def submit(self, jobs, delays, after):
        """Jobs (priority, module, GPUs, zone, requirements told or read from the payload,
        a delay or none) submitted in one turn of the producer's loop."""
        for (priority, module, gpu, zone, told), delay, wait in zip(jobs, delays, after, strict=False):
            job_id, self.next_job = self.next_job, self.next_job + 1
            options = {"resources": {"gpu": gpu}} if gpu else {}
            if zone:
                options["labels"] = {"zone": zone}
            task = f"{module}:f"
            needs = Needs.of(task, options.get("resources"), options.get("labels"))
            self.tasks[job_id] = task
            self.needs[job_id] = needs
            due = None if delay is None else self.now + delay
            if due is not None:
                self.not_before[job_id] = due
            deps = (job_id - 1,) if wait and (job_id - 1) in self.ledger else ()
            if deps:
                self.after[job_id] = deps[0]
            self.engine.submit(job_id, pl.pack_call(task, [job_id], {}, options or None),
                               max_attempts=None, priority=priority, timeout_ms=None,
                               needs=needs if told else None, due=due, deps=deps)
        self.settle()

    @precondition(lambda self: self.next_job > 1)
    @rule(data=st.data(), good_token=st.booleans())
    def admin_cancel(self, data, good_token):
        """An operator cancels a job over the wire: done with the token (if the job is live),
        refused with ERR 5 without it, and the job untouched."""
        job_id = data.draw(st.integers(1, self.next_job - 1))
        live = job_id in self.ledger
        rid = self.rid()
        self.engine.receive(frames(b"admin", w.Admin(
            rid=rid, token=TOKEN if good_token else "wrong", action="cancel", job_id=job_id,
        )), self.now)
        identity, reply = self.replies.pop()
        assert identity == b"admin"
        if good_token and live:
            assert isinstance(reply, w.Ack) and self.kinds[job_id] == "cancelled"
        else:
            assert isinstance(reply, w.Err) and reply.code == (w.E_INVALID if good_token else w.E_DENIED)
            assert (job_id in self.ledger) == live
        self.deliver()
        self.settle()

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
        self.receive(identity, worker.claim(rid, wait_ms))
        self.settle()

    @rule(identity=st.sampled_from(WORKERS), ok=st.booleans(), carry=st.booleans(),
          crashed=st.booleans(), data=st.data(), retry_in=st.sampled_from([None, None, 0.0, 0.8]))
    def result(self, identity, ok, carry, crashed, data, retry_in):
        worker = self.workers[identity]
        if not worker.alive or not worker.leases:
            return
        lease_id = data.draw(st.sampled_from(sorted(worker.leases)))
        job_id = worker.drop(lease_id)
        claim = None
        if carry and len(worker.claims) < worker.free:
            claim = worker.claim(self.rid(), 500)
            worker.claims.add(claim.rid)
        payload = pl.pack_value(job_id) if ok and not crashed else pl.pack_error("E", "x", "")
        if retry_in is not None and not ok and not crashed:  # the task raised Retry(in_s)
            payload = pl.pack_exception(Retry(in_s=retry_in), "")
            live = self.ledger.job(job_id)
            if live is not None and live.issued.get(lease_id) == identity:
                self.not_before[job_id] = self.now + retry_in
        self.receive(identity, w.Result(rid=self.rid(), job_id=job_id, lease_id=lease_id,
                                        ok=ok and not crashed, payload=payload, claim=claim,
                                        crashed=True if crashed else None))
        self.settle()

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
                if lease_id in worker.leases:
                    worker.drop(lease_id)
        self.settle()

    @rule(identity=st.sampled_from(WORKERS), data=st.data(), say_free=st.booleans())
    def decline(self, identity, data, say_free):
        worker = self.workers[identity]
        if not worker.alive or not worker.leases:
            return
        lease_id = data.draw(st.sampled_from(sorted(worker.leases)))
        job_id = worker.drop(lease_id)
        free = worker.free_resources() if say_free else None
        self.receive(identity, w.Decline(rid=self.rid(), job_id=job_id, lease_id=lease_id,
                                         resources=free))
        self.settle()

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
        self.settle()

    @rule(identity=st.sampled_from(WORKERS), wait_ms=st.sampled_from([0, 5000]))
    def claim_and_die(self, identity, wait_ms):
        """A worker's last claim: it dies before the answer, so the JOB cannot be sent."""
        worker = self.workers[identity]
        if not worker.alive or len(worker.claims) >= worker.free:
            return
        worker.alive = False
        self.receive(identity, worker.claim(self.rid(), wait_ms))
        self.settle()

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
    def a_limit_is_never_exceeded(self):
        if self.limit is not None:
            leased = [job for job in self.ledger._jobs.values()
                      if job.state is JobState.LEASED and job.needs.task == "m:f"]
            assert len(leased) <= self.limit

    @invariant()
    def nothing_vanishes(self):
        for job_id in range(1, self.next_job):
            live = job_id in self.ledger
            assert live != (self.outcomes[job_id] == 1), f"job {job_id}: live {live}, outcomes {self.outcomes[job_id]}"
            assert self.outcomes[job_id] <= 1

    @invariant()
    def counts_add_up(self):
        counts = self.ledger.counts
        assert sum(counts[s] for s in (JobState.PENDING, JobState.LEASED, JobState.DEFERRED,
                                       JobState.BLOCKED)) == len(self.ledger)
        finished = Counter(self.kinds.values())
        assert counts[JobState.DONE] == finished["done"]
        assert counts[JobState.CANCELLED] == finished["cancelled"]
        assert counts[JobState.DEAD] == finished["dead"]
        assert counts[JobState.FAILED] == finished["failed"]

    @invariant()
    def tally_agrees_with_ledger(self):
        """Per task, the tally's live and finished counts add up to the ledger's; its running
        jobs are the leased ones; every lease and every run is in a histogram."""
        counts = self.ledger.counts
        for state in JobState:
            assert sum(t.counts[state.value] for t in self.tally.tasks.values()) == counts[state]
        for name, tally in self.tally.tasks.items():
            assert tally.counts["submitted"] == sum(1 for t in self.tasks.values() if t == name)
            assert sum(tally.wait.counts) >= tally.counts["leased"]
            # every run ended in a result, or in a task error retried
            assert sum(tally.run.counts) <= tally.counts["done"] + tally.counts["failed"] + tally.counts["retried"]
        leased = {job.job_id for job in self.ledger._jobs.values() if job.state is JobState.LEASED}
        assert set(self.tally.running) == leased
        assert set(self.tally.live) == set(self.ledger._jobs)

    @invariant()
    def no_runnable_job_starves(self):
        """Once dispatched, no parked claim's worker can run a pending job (a dead worker's
        claims are dropped when a send to it fails)."""
        if self.engine.dispatch_due:
            return
        closed = self.ledger.limits.closed(self.now)  # tasks at their limit wait for it
        pending = [job for job in self.ledger._jobs.values()
                   if job.state is JobState.PENDING and job.needs.task not in closed]
        for identity, _ in self.engine.parked.keys():
            worker = self.workers[identity]
            if not worker.alive:
                continue
            runnable = [job.job_id for job in pending if worker.can_run(job.needs)]
            assert not runnable, f"{identity} is parked while it can run jobs {runnable}"

    @invariant()
    def parked_claims_are_outstanding(self):
        for identity, rid in self.engine.parked.keys():
            worker = self.workers[identity]
            assert rid in worker.claims or rid in worker.withdrawn or not worker.alive


TestOfferEngine = OfferMachine.TestCase
TestOfferEngine.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)

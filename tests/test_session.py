"""A worker's per-producer session without sockets: a Hypothesis state machine sends
requests (claims, results that carry claims, beats, declines), answers them as a producer
would or wouldn't (the right reply, an ERR, a reply to nothing, no reply: the time passes),
withdraws claims, and checks after every step: claims are requests in flight, a JOB is
solicited exactly when it answers a claim held, an unacknowledged result leaves only when
acknowledged or refused, and becoming unreachable forgets claims and requests in flight but
never leases or results."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from freelance_rz.core import wire as w
from freelance_rz.core.session import Outcome, Session

WAIT_MS = 1000


class SessionMachine(RuleBasedStateMachine):
    @initialize()
    def start(self):
        self.session = Session("tcp://127.0.0.1:5555", discovered=False)
        self.now = 0.0
        self.rid = 0
        self.requests: dict[int, w.Request] = {}  # sent and not yet answered or given up
        self.unacked_model: dict[int, int] = {}  # job_id -> rid of the RESULT carrying it
        self.withdrawn: list[int] = []  # claims withdrawn (a JOB may still cross)
        self.next_job = 1

    def next_rid(self):
        self.rid += 1
        return self.rid

    def send(self, msg, job_id=0):
        self.session.expect(msg, self.now, job_id)
        self.requests[msg.rid] = msg
        if isinstance(msg, w.Result) and msg.claim is not None:
            self.requests[msg.claim.rid] = msg.claim

    # --- requests ---------------------------------------------------------------------------

    @rule()
    def claim(self):
        self.send(w.Claim(rid=self.next_rid(), wait_ms=WAIT_MS, tasks=("m",)))

    @rule(carry=st.booleans())
    def result(self, carry):
        job_id, self.next_job = self.next_job, self.next_job + 1
        outcome = Outcome(job_id, True, b"\xc0")
        claim = w.Claim(rid=self.next_rid(), wait_ms=WAIT_MS, tasks=("m",)) if carry else None
        msg = w.Result(rid=self.next_rid(), job_id=job_id, lease_id=7, ok=True, payload=b"\xc0", claim=claim)
        self.session.unacked[job_id] = (7, outcome)
        self.unacked_model[job_id] = msg.rid
        self.send(msg, job_id)

    @rule()
    def beat(self):
        self.send(w.Beat(rid=self.next_rid(), leases=tuple(self.session.leases)))

    @rule(lease=st.integers(1, 5))
    def hold_lease(self, lease):
        self.session.leases[lease] = lease % 2

    @precondition(lambda self: self.session.claims)
    @rule()
    def withdraw(self):
        rid = min(self.session.claims)
        self.session.withdraw(rid)
        self.requests.pop(rid, None)
        self.withdrawn.append(rid)

    @precondition(lambda self: self.withdrawn)
    @rule(data=st.data())
    def job_crossing_a_withdrawn_claim(self, data):
        """A JOB answers a claim the worker has withdrawn (the two crossed): not solicited, so
        the worker declines it."""
        rid = data.draw(st.sampled_from(self.withdrawn))
        job = w.Job(rid=rid, job_id=98, lease_id=4, attempt=1, lease_ms=1000, payload=b"")
        effect = self.session.on_reply(job, self.now, WAIT_MS)
        assert effect.job is job and not effect.solicited

    # --- replies ----------------------------------------------------------------------------

    @precondition(lambda self: self.requests)
    @rule(data=st.data(), kind=st.sampled_from(["right", "err"]))
    def answer(self, data, kind):
        rid = data.draw(st.sampled_from(sorted(self.requests)))
        request = self.requests.pop(rid)
        held_claim = rid in self.session.claims
        if kind == "err":
            reply: w.Reply = w.Err(rid=rid, code=4, message="no")
        elif isinstance(request, w.Claim):
            if data.draw(st.booleans()):
                ack = data.draw(st.sampled_from([None, *[r for j, r in self.unacked_model.items()]]))
                reply = w.Job(rid=rid, job_id=99, lease_id=3, attempt=1, lease_ms=1000, payload=b"", ack=ack)
            else:
                reply = w.NoJob(rid=rid)
        elif isinstance(request, w.Beat):
            reply = w.BeatAck(rid=rid, void=tuple(request.leases[:1]))
        else:
            reply = w.Ack(rid=rid)
        effect = self.session.on_reply(reply, self.now, WAIT_MS)
        if isinstance(reply, w.Job):
            assert effect.job is reply and effect.solicited == held_claim
            if reply.ack is not None:
                self._acknowledged(reply.ack)
        elif isinstance(reply, w.Ack) and isinstance(request, w.Result):
            self._acknowledged(rid)
        elif isinstance(reply, w.Err) and isinstance(request, w.Result):
            self._acknowledged(rid)
            assert effect.dropped == request.job_id
        elif isinstance(reply, w.BeatAck):
            assert set(effect.void) <= set(self.session.leases)
        assert self.session.unreachable_since is None

    def _acknowledged(self, result_rid):
        self.requests.pop(result_rid, None)
        for job_id, rid in list(self.unacked_model.items()):
            if rid == result_rid:
                del self.unacked_model[job_id]

    @rule(rid=st.integers(10_000, 20_000), job=st.booleans())
    def stray_reply(self, rid, job):
        if job:  # a JOB for a claim never sent
            reply = w.Job(rid=rid, job_id=97, lease_id=5, attempt=1, lease_ms=1000, payload=b"")
            effect = self.session.on_reply(reply, self.now, WAIT_MS)
            assert effect.job is reply and not effect.solicited
        else:
            effect = self.session.on_reply(w.NoJob(rid=rid), self.now, WAIT_MS)
            assert effect.job is None and not effect.void

    @rule(seconds=st.sampled_from([0.1, 0.7, 1.5, 3.0]))
    def advance(self, seconds):
        self.now += seconds
        late = self.session.late(self.now)
        if late is None:
            return
        leases, unacked = dict(self.session.leases), dict(self.session.unacked)
        self.session.reset(self.now)
        assert not self.session.claims and not self.session.inflight
        assert self.session.leases == leases and self.session.unacked == unacked
        assert self.session.retry_at > self.now and self.session.unreachable_since is not None
        self.requests.clear()  # given up: their answers will never be read (the link closes)
        for job_id in self.unacked_model:  # sent again on the next connection, as the worker does
            msg = w.Result(rid=self.next_rid(), job_id=job_id, lease_id=7, ok=True, payload=b"\xc0")
            self.unacked_model[job_id] = msg.rid
            self.send(msg, job_id)

    # --- invariants -------------------------------------------------------------------------

    @invariant()
    def claims_are_claims_in_flight(self):
        for rid in self.session.claims:
            assert self.session.inflight[rid].verb == "CLAIM"

    @invariant()
    def results_leave_only_when_acknowledged(self):
        assert set(self.session.unacked) == set(self.unacked_model)

    @invariant()
    def deadlines_are_in_the_future_of_their_sending(self):
        for expected in self.session.inflight.values():
            assert expected.deadline > 0


TestSession = SessionMachine.TestCase
TestSession.settings = settings(max_examples=300, stateful_step_count=50, deadline=None)

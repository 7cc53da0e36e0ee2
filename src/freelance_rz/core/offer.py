"""The producer's protocol engine: requests in, replies out. Pure (``send`` is injected, the
clock is passed in).

Theory of operation
-------------------
The I/O thread (:mod:`freelance_rz.producer.thread`) feeds the engine every message that
reaches the offer socket (:meth:`OfferEngine.receive`), every job and cancellation of the
application (:meth:`~OfferEngine.submit`, :meth:`~OfferEngine.cancel`) and the time
(:meth:`~OfferEngine.tick`). The engine decodes and validates messages (:mod:`.wire`), keeps
its jobs in the :class:`~.ledger.Ledger` and the claims that wait for one in
:class:`~.parked.ParkedClaims`, and answers through ``send(identity, reply) -> bool`` (False:
that worker is gone). What becomes of each job (done, failed, dead, cancelled) and its progress
go to ``on_outcome`` and ``on_progress``; the thread resolves Futures with them.

Rules that live here: a claim gets the first pending job its worker can run (its task
modules, free resources, labels and ``max_job``: :mod:`.match`), or parks; a RESULT may carry
the next claim, answered together with it; a job too large for every worker heard from fails
after TOO_LARGE_GRACE_S; a job no connected worker can run waits and is reported
(:mod:`.fleet`); parked claims are served one identity after another, identities that can
run none of the pending jobs keeping their turn; with CURVE a routing id belongs to the key
that first used it; bad messages are answered ERR (at most ERR_REPLIES_PER_S a second), a
message of another protocol version in that version's framing. What a worker can run is
known per routing id, from its latest claim (:class:`~.fleet.Fleet`).

When the producer is durable, the answer to a RESULT (ACK, or the JOB that acknowledges it)
waits until the result is journaled (:meth:`OfferEngine.journaled`): a worker drops a result
once it is acknowledged, so acknowledged must mean written.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ProtocolError
from . import payload as pl
from . import wire as w
from .admin import AdminDesk
from .fleet import WAITING_IN_STATUS, Fleet
from .ledger import Expired, JobState, Ledger
from .match import Capabilities, Needs
from .parked import ParkedClaims
from .retry import RetryPolicy
from .text import clean, worker_label

log = logging.getLogger("freelance_rz.producer")

MAX_WAIT_MS = 60_000  # longest a claim may park; longer requests are clamped
WORKER_FORGET_S = 60.0  # a worker silent this long leaves the STATUS table
PROGRESS_IN_STATUS = 100  # running jobs whose progress STATUS lists, at most
WORKERS_IN_STATUS = 200  # workers STATUS lists (the most recently heard), at most
PROGRESS_MESSAGE_CHARS = 200  # characters kept of a progress message
ERR_REPLIES_PER_S = 1000  # ERR answers a second, at most; further bad messages are dropped
TOO_LARGE_GRACE_S = 5.0  # a job too large for every connected worker this long fails


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of a job. ``kind``: ``"done"`` (``payload`` is its value), ``"failed"``
    (``payload`` is its error, as on the wire), ``"dead"`` (dead-lettered after ``attempts``
    lost leases; ``reason`` says how the last was lost, when known) or ``"cancelled"``."""

    kind: str
    payload: bytes = b""
    attempts: int | None = None
    reason: str | None = None


class OfferEngine:
    """The protocol engine of one producer.

    Args:
        ledger: the job table (its journal is told every transition).
        send: ``send(identity, reply)`` puts a reply on the wire; False when the worker is gone.
        on_outcome: ``on_outcome(job_id, Outcome)`` when a job has left the ledger.
        on_progress: ``on_progress(job_id, (done, total, message))`` when a job reports.
        max_payload: the largest job or result payload the producer takes, in bytes.
        facts: fixed entries of STATUS (producer id, group, endpoints, version).
        durable: answer RESULTs only once they are journaled (see :meth:`journaled`).
        wanted: ``wanted(job_id)`` is False for a job whose cancellation is on its way from
            the application: such a job is cancelled instead of leased.
        now: the time it starts, monotonic seconds.
        report: ``report(now, detail)`` gives STATUS entries the engine does not keep (open
            connections; with ``detail``, the tally's per-task counts, running jobs, failures).
        traceparent: ``traceparent(job_id)``, the W3C trace context a JOB carries, or None.
        admin_token: the token an ADMIN request must carry (None: ADMIN is refused).
        on_retry: ``on_retry(job_id, now)`` submits a recent failure again (ADMIN retry);
            returns the new job's id, or None when ``job_id`` is no recent failure.
    """

    def __init__(
        self, ledger: Ledger, *, send: Callable[[bytes, w.Answer], bool],
        on_outcome: Callable[[int, Outcome], None],
        on_progress: Callable[[int, tuple[float, float | None, str]], None],
        max_payload: int, facts: dict[str, Any], durable: bool, wanted: Callable[[int], bool],
        now: float, report: Callable[[float, bool], dict[str, Any]] | None = None,
        traceparent: Callable[[int], str | None] | None = None, admin_token: str | None = None,
        on_retry: Callable[[int, float], int | None] | None = None,
    ) -> None:
        self.ledger = ledger
        self._send_reply = send
        self._on_outcome = on_outcome
        self._on_progress = on_progress
        self._wanted = wanted
        self._report = report
        self._traceparent = traceparent
        self.admin = AdminDesk(admin_token, ledger.state, self.cancel, on_retry)
        self.max_payload = max_payload
        self.facts = facts
        self.durable = durable
        self.lease_ms = int(ledger.lease_s * 1000)
        # the JOB's max_result, sent only when it is not the default
        self.max_result = None if max_payload == w.DEFAULT_MAX_PAYLOAD else max_payload
        self.parked = ParkedClaims()
        self.throughput = RecentCount(60)  # results taken in the last minute
        self.workers_seen: dict[bytes, float] = {}
        # per worker identity (kept as long as workers_seen keeps it): what it can run, and
        # with CURVE the key its routing id is bound to
        self.fleet = Fleet(now)
        self.keys_of: dict[bytes, tuple[str, float]] = {}  # routing id -> (key, last used)
        self.dispatch_due = True  # jobs became pending: offer them to the parked claims
        self._unblocked = 0  # the ledger's count of unblocked jobs when last looked at
        self.unjournaled: list[tuple[bytes, w.Result]] = []  # RESULTs answered once journaled
        self.forget_at = now + WORKER_FORGET_S  # next time silent workers leave the tables
        self.linger_until = 0.0  # a cancelled running job's worker has heard by then
        self.started_at = now
        self.bad_messages = 0
        self._bad_logged_at = -3600.0
        self._err_window_end, self._err_left = 0.0, ERR_REPLIES_PER_S

    # --- from the application ---------------------------------------------------------------

    def submit(self, job_id: int, payload: bytes, *, max_attempts: int | None, priority: int,
               timeout_ms: int | None, needs: Needs | None = None, due: float | None = None,
               retry: RetryPolicy | None = None, deps: tuple[int, ...] = (),
               values: dict[int, bytes] | None = None, failed: tuple[int, str] | None = None,
               ) -> None:
        """A new job, at the tail of its signature's and priority's queue (``needs``: its
        requirements; None: read from the payload), or deferred until ``due`` (monotonic
        seconds), or blocked on its dependencies (``deps``, ``values``, ``failed``: see
        :meth:`.Ledger.submit`); ``retry``: the task errors it retries."""
        self.ledger.submit(job_id, payload, max_attempts=max_attempts, priority=priority,
                           timeout_ms=timeout_ms, needs=needs, due=due, retry=retry, deps=deps,
                           values=values, failed=failed)
        self.dispatch_due = self.dispatch_due or due is None
        self._waited()

    def cancel(self, job_id: int, now: float) -> None:
        """Cancel a live job (a leased one's worker learns it at its next BEAT, so a closing
        producer lingers until then)."""
        was = self.ledger.cancel(job_id)
        if was is None:
            return
        if was is JobState.LEASED:
            self.linger_until = now + self.ledger.lease_s / 2
        self._on_outcome(job_id, Outcome("cancelled"))
        self._waited()

    def _waited(self) -> None:
        # checked here, once or more per message: there is rarely anything to do
        if self.ledger.dependency_failures or self.ledger.unblocked != self._unblocked or self.ledger.limits.reopened:
            _waited(self)

    def limit(self, task: str, max_running: int | None, per_s: float | None, now: float) -> None:
        """Limit the jobs of ``task`` leased at once and started a second (:mod:`.limits`)."""
        self.ledger.limit(task, max_running, per_s, now)
        self.dispatch_due = True


    # --- from the wire ----------------------------------------------------------------------

    def receive(self, frames: list[bytes], now: float, key: str | None = None) -> None:
        """A message as the ROUTER reads it (routing id first). ``key``: the CURVE key it
        came under (its ZAP User-Id), with CURVE only."""
        if len(frames) < 2:
            self._bad(None, ProtocolError(w.E_MALFORMED, "no routing id"), now)
            return
        identity = frames[0]
        if key is not None and not self._bind_key(identity, key, now):
            return
        try:
            msg = w.decode_request(frames[1:], self.max_payload)
        except ProtocolError as exc:
            self._bad(identity, exc, now, frames[1])
            return
        if not isinstance(msg, (w.Status, w.Admin)):  # freelance-status is no worker
            self.workers_seen[identity] = now
            self.fleet.last_heard = now
        self._handle(identity, msg, now)
        self._waited()

    def _bind_key(self, identity: bytes, key: str, now: float) -> bool:
        """With CURVE, a routing id belongs to the key that used it first, until it has not
        been used for WORKER_FORGET_S: a message under it from another key is refused."""
        bound = self.keys_of.get(identity)
        if bound is None or bound[0] == key:
            self.keys_of[identity] = (key, now)
            return True
        self._bad(identity, ProtocolError(
            w.E_INVALID, f"routing id {worker_label(identity)} belongs to another client key",
        ), now)
        return False

    def _bad(self, identity: bytes | None, exc: ProtocolError, now: float,
             signature: bytes = w.SIGNATURE) -> None:
        self.bad_messages += 1
        if now - self._bad_logged_at > 1.0:  # at most one line a second under a flood
            self._bad_logged_at = now
            log.warning(
                "bad message from %s: %s (%d bad so far)",
                "?" if identity is None else worker_label(identity), clean(exc.message),
                self.bad_messages,
            )
        if now >= self._err_window_end:
            self._err_window_end, self._err_left = now + 1.0, ERR_REPLIES_PER_S
        if identity is not None and self._err_left > 0:  # a flood of junk is dropped cheaply
            self._err_left -= 1
            if exc.code == w.E_VERSION:  # in the peer's framing, so that it reads it
                self._send(identity, w.VersionErr(signature=signature, message=exc.message))
            else:
                self._send(identity, w.Err(rid=exc.rid, code=exc.code, message=exc.message))

    def _handle(self, identity: bytes, msg: w.Request, now: float) -> None:
        if isinstance(msg, w.Claim):
            self._claim(identity, msg, now)
        elif isinstance(msg, w.Result):
            self._result(identity, msg, now)
        elif isinstance(msg, w.Beat):
            void = self.ledger.beat(identity, msg.leases, now)
            self._send(identity, w.BeatAck(rid=msg.rid, void=tuple(void)))
            for lease_id, done, total, message in msg.progress or ():
                progress = (done, total, message[:PROGRESS_MESSAGE_CHARS])
                job_id = self.ledger.report(identity, lease_id, progress)
                if job_id is not None:
                    self._on_progress(job_id, progress)
        elif isinstance(msg, w.Decline):
            self._decline(identity, msg, now)
        elif isinstance(msg, w.CancelClaim):
            self.parked.remove(identity, msg.claim_rid)
            self._send(identity, w.Ack(rid=msg.rid))
        elif isinstance(msg, w.Bye):
            self.parked.drop_worker(identity)
            self.fleet.forget(identity)  # it runs nothing more: not counted as connected
            self._send(identity, w.Ack(rid=msg.rid))
        elif isinstance(msg, w.Status):
            self._send(identity, w.StatusReply(rid=msg.rid, info=self.status(now, bool(msg.detail))))
        elif isinstance(msg, w.Admin):
            code, message = self.admin.handle(msg, now)
            self._send(identity, w.Ack(rid=msg.rid) if code is None
                       else w.Err(rid=msg.rid, code=code, message=message))

    # --- claims and jobs ---------------------------------------------------------------------

    def _claim(self, identity: bytes, claim: w.Claim, now: float, ack: int | None = None) -> None:
        """Answer a claim with a job now, or park it. ``ack``: rid of the RESULT that carried
        the claim, acknowledged by the JOB, or by an ACK when the claim is parked."""
        if self.fleet.learn(identity, claim) and self.parked.has(identity):
            self.dispatch_due = True  # its parked claims may run other jobs now
        if self._offer(identity, claim.rid, now, ack):
            return
        if identity not in self.fleet.caps:  # a JOB to it could not be sent: it is gone,
            return  # and nothing is parked for it
        if ack is not None:
            self._send(identity, w.Ack(rid=ack))
        expires_at = now + min(claim.wait_ms, MAX_WAIT_MS) / 1000
        parked, shed = self.parked.park(identity, claim.rid, expires_at)
        if not parked:
            self._send(identity, w.NoJob(rid=claim.rid))  # over its share: no memory for a flood
        if shed is not None:
            self._send(shed[0], w.NoJob(rid=shed[1]))

    def _offer(self, identity: bytes, rid: int, now: float, ack: int | None = None) -> bool:
        """Lease the next job the worker can run to a claim; False when there is none (or
        the worker is gone: then its parked claims are dropped too)."""
        caps = self.fleet.caps.get(identity)
        if caps is None:  # forgotten (gone): whatever it has parked goes too
            self.parked.drop_worker(identity)
            return False
        if caps.max_job < self.max_payload and self.ledger.too_large(caps.max_job):
            self._refuse_too_large(caps.max_job, now)
        while True:
            lease = self.ledger.claim(identity, now, caps)
            if lease is None:
                return False
            if not self._wanted(lease.job_id):
                self.cancel(lease.job_id, now)  # cancelled while its cancellation was on its way
                continue
            job = w.Job(
                rid=rid, job_id=lease.job_id, lease_id=lease.lease_id, attempt=lease.attempt,
                lease_ms=self.lease_ms, payload=lease.payload, ack=ack,
                timeout_ms=lease.timeout_ms, max_result=self.max_result,
                traceparent=None if self._traceparent is None else self._traceparent(lease.job_id),
                resources=dict(lease.resources) if lease.resources else None,
            )
            self.fleet.handed(identity, lease.resources)
            if self._send(identity, job):
                return True
            self._release(identity, lease.job_id, lease.lease_id)
            return False

    def _decline(self, identity: bytes, msg: w.Decline, now: float) -> None:
        """A JOB the worker will not run goes back to the head of its queue. A DECLINE that
        says why (too large; resources not free) corrects what the producer knows of the
        worker, so the job is not offered to it again for that reason."""
        self.fleet.declined(identity, msg)
        self._release(identity, msg.job_id, msg.lease_id)
        self._send(identity, w.Ack(rid=msg.rid))
        if msg.max_job is not None:  # over the worker's limit: a claim that did not say it
            self._refuse_too_large(msg.max_job, now)

    def _refuse_too_large(self, limit: int, now: float) -> None:
        """Fail the pending jobs too large for a worker of ``limit`` bytes that have also
        been too large for every worker heard from for TOO_LARGE_GRACE_S: no worker would
        ever take them. (Jobs some worker can take wait for it; the grace lets the workers of
        a fleet that is starting connect; the check costs nothing when the head job fits.)"""
        largest = self.fleet.largest_job(limit)
        for job_id in self.ledger.too_large(largest) if largest < self.max_payload else ():
            job = self.ledger.job(job_id)
            assert job is not None
            if job.too_large_since is None:
                job.too_large_since = now
            if now - job.too_large_since < TOO_LARGE_GRACE_S:
                continue
            message = (
                f"job {job_id} takes {len(job.payload)} bytes encoded; the connected workers take "
                f"at most {largest} (their --max-payload-bytes), this producer up to "
                f"{self.max_payload} (max_payload_bytes): start workers with a larger "
                "--max-payload-bytes, or pass a path or URL to the data instead"
            )
            error = pl.pack_error("JobTooLarge", message, "")
            if self.ledger.refuse(job_id, error):
                log.error("%s", message)
                self._on_outcome(job_id, Outcome("failed", error))

    def _release(self, identity: bytes, job_id: int, lease_id: int) -> None:
        if self.ledger.release(identity, job_id, lease_id):
            self.dispatch_due = True

    def _dispatch(self, now: float) -> None:
        """Hand pending jobs to parked claims, one worker identity after another, when jobs
        became pending (or a parked worker's capabilities changed) since the last time.
        Workers that can run the same jobs form a class (equal :class:`~.match.Capabilities`):
        once one of a class took nothing, the others are passed over, keeping their turn.
        It stops when every parked identity was passed over."""
        if not self.dispatch_due:
            return
        self.dispatch_due = False
        took_nothing: set[Capabilities] = set()
        caps = self.fleet.caps
        while self.parked and self.ledger.pending:
            found = self.parked.next_claim(lambda identity: caps.get(identity) in took_nothing)
            if found is None:
                return
            identity, rid = found
            view = caps.get(identity)
            if self._offer(identity, rid, now):
                self.parked.served(identity, rid)
            elif view is not None and identity in caps:  # it can run none of them (else it
                took_nothing.add(view)  # is gone, and its claims with it)

    # --- results ----------------------------------------------------------------------------

    def _result(self, identity: bytes, msg: w.Result, now: float) -> None:
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
        job = self.ledger.job(msg.job_id)
        tries = None if job is None else job.retries + 1  # runs that ended in a task error
        accepted = self.ledger.resolve(identity, msg.job_id, msg.lease_id, msg.ok, msg.payload, now)
        if accepted and self.durable:
            self.unjournaled.append((identity, msg))
        else:
            self._answer_result(identity, msg, now)  # before the Future: callbacks may be slow
        if not accepted:
            log.debug("stale result for job %d dropped", msg.job_id)
            return
        self.throughput.add(now)
        if self.ledger.state(msg.job_id) is JobState.DEFERRED:  # a task error, retried later
            log.info("job %d failed (attempt %d); retried in %.3g s", msg.job_id, tries or 0,
                     job.due - now if job is not None else 0.0, extra={"job_id": msg.job_id})
            return
        self._on_outcome(msg.job_id, Outcome("done", msg.payload) if msg.ok
                         else Outcome("failed", msg.payload, attempts=tries))

    def journaled(self, now: float) -> None:
        """The journal has written every transition so far: answer the RESULTs it held back."""
        held, self.unjournaled = self.unjournaled, []
        for identity, msg in held:
            self._answer_result(identity, msg, now)

    def _answer_result(self, identity: bytes, msg: w.Result, now: float) -> None:
        if msg.claim is None:
            self._send(identity, w.Ack(rid=msg.rid))
        else:
            self._claim(identity, msg.claim, now, ack=msg.rid)

    def _lost(self, lost: Expired, reason: str | None = None) -> None:
        """A lease was lost (expired, or its job's process died): the ledger re-queued the job
        or dead-lettered it."""
        if lost.dead:
            log.warning("job %d dead-lettered after %d attempts", lost.job_id, lost.attempt,
                        extra={"job_id": lost.job_id, "attempt": lost.attempt})
            self._on_outcome(lost.job_id, Outcome("dead", attempts=lost.attempt, reason=reason))
        else:
            self.dispatch_due = True
            log.info("job %d lost its lease (%s); re-queued", lost.job_id, reason or "expired",
                     extra={"job_id": lost.job_id, "attempt": lost.attempt})

    # --- time -------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Expire leases and parked claims, wake deferred jobs that are due, forget silent
        workers, offer pending jobs."""
        if self.ledger.wake(now):
            self.dispatch_due = True
        for expired in self.ledger.expire(now):
            self._lost(expired)
        if self.ledger.limits.active:
            self.ledger.limits.closed(now)  # a rate's next token may be due
        self._waited()
        for identity, rid in self.parked.expired(now):
            self._send(identity, w.NoJob(rid=rid))
        if now >= self.forget_at:  # bounds the tables; status() shows only the recent ones
            self.forget_at = now + WORKER_FORGET_S
            for identity in [k for k, t in self.workers_seen.items() if now - t > WORKER_FORGET_S]:
                self._forget_worker(identity)
            self.keys_of = {k: v for k, v in self.keys_of.items() if now - v[1] <= WORKER_FORGET_S}
        self.fleet.warn_unserved(now, self.ledger.pending, self.facts)
        self.fleet.warn(now, self.ledger.waiting, self.facts.get("producer_id"))
        self._dispatch(now)

    def next_wakeup(self) -> float | None:
        """The earliest time :meth:`tick` has work (a lease or a parked claim runs out, a
        deferred job is due, a task's rate limit has a token again for a parked claim; 0.0,
        at once, when pending jobs are to be offered to parked claims)."""
        return _next_wakeup(self)

    def finished(self, now: float) -> bool:
        """Every job resolved, and workers running a cancelled job have heard of it."""
        return not self.ledger and now >= self.linger_until

    def close(self) -> None:
        """Let parked workers move on at once (NOJOB to every parked claim)."""
        for identity, rid in self.parked.keys():
            self._send(identity, w.NoJob(rid=rid))

    # --- sending ----------------------------------------------------------------------------

    def _send(self, identity: bytes, msg: w.Answer) -> bool:
        if self._send_reply(identity, msg):
            return True
        self._forget_worker(identity)  # EHOSTUNREACH: the worker is gone
        return False

    def _forget_worker(self, identity: bytes) -> None:
        self.workers_seen.pop(identity, None)
        self.fleet.forget(identity)
        self.parked.drop_worker(identity)

    # --- status -----------------------------------------------------------------------------

    def status(self, now: float, detail: bool = False) -> dict[str, Any]:
        """Counts and facts for STATUS, and with ``detail`` the detailed entries (see
        docs/protocol.md); entries the engine does not keep come from ``report``."""
        return _status(self, now, detail)


def _waited(engine: OfferEngine) -> None:
    """Report the jobs failed for a dependency since the last time (DependencyFailed), and
    offer the jobs whose dependencies all succeeded (:meth:`OfferEngine._waited`)."""
    failures = engine.ledger.dependency_failures
    if failures:
        engine.ledger.dependency_failures = []
        for job_id, error in failures:
            engine._on_outcome(job_id, Outcome("failed", error))
    if engine.ledger.unblocked != engine._unblocked:
        engine._unblocked = engine.ledger.unblocked
        engine.dispatch_due = True
    if engine.ledger.limits.reopened:  # a task under a limit may run again
        engine.ledger.limits.reopened = False
        engine.dispatch_due = True


def _next_wakeup(engine: OfferEngine) -> float | None:
    """:meth:`OfferEngine.next_wakeup`."""
    if engine.dispatch_due and engine.parked:
        return 0.0
    ledger = engine.ledger
    times = [t for t in (ledger.next_deadline(), engine.parked.next_expiry(), ledger.next_due(),
                         ledger.limits.next_open() if engine.parked else None) if t is not None]
    return min(times) if times else None


def _pending_by_task(signatures: list[tuple[Needs, int]]) -> dict[str, int]:
    pending: dict[str, int] = {}
    for needs, count in signatures:
        pending[needs.task] = pending.get(needs.task, 0) + count
    return pending


def _status(engine: OfferEngine, now: float, detail: bool) -> dict[str, Any]:
    """:meth:`OfferEngine.status`."""
    counts = {state.value: n for state, n in engine.ledger.counts.items()}
    recent = sorted(
        ((identity, seen) for identity, seen in engine.workers_seen.items()
         if now - seen <= WORKER_FORGET_S), key=lambda item: -item[1],
    )
    return {
        **counts,
        "retried": engine.ledger.retried,  # task errors retried since this start
        **({"limits": engine.ledger.limits.report(_pending_by_task(engine.ledger.waiting()))}
           if engine.ledger.limits.active else {}),
        **engine.facts,
        "workers": len(recent),
        "worker_list": [
            {
                "id": worker_label(identity),
                "last_seen_s": round(now - seen, 3),
                "running": len(engine.ledger.leases_of(identity)),
                "parked": engine.parked.count(identity),
            }
            for identity, seen in recent[:WORKERS_IN_STATUS]
        ],
        "finished_last_min": engine.throughput.count(now),
        "progress": [
            {
                "job_id": job.job_id,
                "worker": worker_label(job.worker),  # type: ignore[arg-type]
                "done": job.progress[0], "total": job.progress[1], "message": job.progress[2],
            }
            for job in engine.ledger.progressing(PROGRESS_IN_STATUS)
            if job.progress is not None and job.worker is not None
        ],
        "parked_claims": len(engine.parked),
        # pending jobs no connected worker (one heard from, not forgotten) can run
        "waiting": [entry.as_status() for entry in
                    engine.fleet.waiting(engine.ledger.waiting())[:WAITING_IN_STATUS]],
        "uptime_s": round(now - engine.started_at, 3),
        "bad_messages": engine.bad_messages,
        **({} if engine._report is None else engine._report(now, detail)),
    }


class RecentCount:
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

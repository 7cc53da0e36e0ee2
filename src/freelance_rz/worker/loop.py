"""A worker's poll loop: the thin shell between its links (one DEALER per producer), its job
processes and the pure per-producer :class:`~freelance_rz.core.session.Session`.

Theory of operation
-------------------
Every live producer holds as many parked claims (long-polls) as the worker has free slots.
When a JOB fills a slot, the now-surplus claims at the other producers are withdrawn
(CANCEL_CLAIM) once the slot has stayed busy for SURPLUS_GRACE_S; a JOB that arrives for a full
worker, or for a claim the worker does not hold, is DECLINEd (back to the head of that
producer's queue), so a worker never holds more jobs than slots. When a job ends, its RESULT
carries the next claim to the same producer, so a busy worker spends one round trip per job.
Nothing is ever queued on the worker side (C1).

A claim says what the worker can run (:mod:`freelance_rz.core.match`): its task modules, its
labels and its resources free now (what it declared, less what its running jobs hold). Slots
and resources both bound what runs: a JOB whose resources are not free (claims to several
producers raced) is DECLINEd, saying what is free, and goes back to the head of its queue;
when the free resources change, one parked claim at each producer is renewed, so every
producer knows what is free now.

Liveness is judged by the conversation (see :mod:`freelance_rz.core.session`): a producer
that misses a reply deadline is unreachable, its link is closed and retried with backoff, its
unacknowledged results are sent again once it answers; one unreachable for ``give_up_s`` has
its running jobs aborted and, if discovered, is forgotten (:mod:`freelance_rz.worker.peers`).
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
from collections.abc import Callable
from typing import Any

import zmq

from ..core import payload as pl
from ..core import wire as w
from ..core.match import fits, free_resources
from ..core.session import Effect, Outcome, Session
from ..core.text import clean
from ..discovery import choose_endpoint
from ..errors import ProtocolError
from .health import HealthFile
from .peers import Peers
from .pool import Pool
from .slots import JobProcess, RunningJob, Slot
from .stats import WorkerStats

log = logging.getLogger("freelance_rz.worker")

STOP_DELIVERY_S = 10.0  # on stop, how long to keep trying to deliver finished results
TIMER_SLACK_S = 0.02  # after activity, timers are looked at within this many seconds
SURPLUS_GRACE_S = 0.05  # a claim a filled slot no longer needs is withdrawn after this


def _fields(job: RunningJob, session: Session | None) -> dict[str, Any]:
    """The job fields of a log line about ``job`` (for ``--log-format json``)."""
    return {"job_id": job.job_id, "task": job.task,
            "producer": job.endpoint if session is None else session.label}


def _running_job(session: Session, job: w.Job, held: tuple[tuple[str, float], ...],
                 now: float) -> RunningJob:
    """What a slot keeps of a JOB it runs (``held``: the resources it holds)."""
    running = RunningJob(
        session.endpoint, job.job_id, job.lease_id, job.lease_ms,
        max_result=w.DEFAULT_MAX_PAYLOAD if job.max_result is None else job.max_result,
        task=pl.peek_task(job.payload), traceparent=job.traceparent, resources=held,
    )
    if job.timeout_ms:
        running.deadline = now + job.timeout_ms / 1000
        running.timeout_ms = job.timeout_ms
    return running


def _health_info(loop: WorkerLoop) -> dict[str, Any]:
    """What the health file says (see :mod:`freelance_rz.worker.health`)."""
    links = loop.peers.links
    slots = loop.pool.slots
    return {
        "name": loop.name, "pid": os.getpid(), "slots": len(slots),
        "busy": sum(slot.job is not None for slot in slots), "producers": len(links),
        "answering": sum(1 for s in loop.peers.sessions.values()
                         if s.endpoint in links and s.answered and s.unreachable_since is None),
        "jobs_run": loop.stats.jobs_run, "jobs_failed": loop.stats.jobs_failed,
        "stopping": loop.stopping,
    }


def _free_resources(resources: dict[str, float] | None, pool: Pool) -> dict[str, float] | None:
    """The declared ``resources`` less what the running jobs hold, and the cancelled runs
    that have not stopped yet (:attr:`Slot.stuck`; None: none declared)."""
    if resources is None:
        return None
    slots = pool.slots
    held = [s.job.resources for s in slots if s.job is not None]
    held += [s.stuck.resources for s in slots if s.stuck is not None]
    return free_resources(resources, held)


def _soonest_timer(loop: WorkerLoop, now: float) -> float:
    """When the loop must look at its timers next (monotonic seconds)."""
    surplus = any(len(s.claims) > loop._free() for s in loop.peers.sessions.values())
    soonest = min(now + 1.0, loop.filled_at + SURPLUS_GRACE_S) if surplus else now + 1.0
    for session in loop.peers.sessions.values():
        if session.endpoint not in loop.peers.links:
            soonest = min(soonest, session.retry_at)
            continue
        if session.leases:
            soonest = min(soonest, session.next_beat_at)
        if session.claim_pause_until > now:
            soonest = min(soonest, session.claim_pause_until)
        deadline = session.soonest()
        if deadline is not None:
            soonest = min(soonest, deadline)
    for slot in loop.pool.slots:
        if slot.job is not None and slot.job.deadline is not None:
            soonest = min(soonest, slot.job.deadline)
    if loop.health is not None:
        soonest = min(soonest, loop.health.next_at)
    stuck = loop.pool.next_deadline()
    return soonest if stuck is None else min(soonest, stuck)


class WorkerLoop:
    """The running state of a :class:`~freelance_rz.Worker` (see the module docstring).

    Args:
        name: the worker's name, for logs.
        pool: its slots and job processes (started).
        peers: its table of producers (links made in it are polled here).
        wait_ms: the claim long-poll, milliseconds.
        interfaces: the IPv4 addresses mDNS runs on (to choose announced endpoints), or None.
        wake_r, events: the wake-up pipe and the queue other threads post events to
            (``("stop", None)``, ``("found", Announcement)``, ``("gone", name)``).
        stats: the worker's counts, kept up to date.
        clock: the monotonic clock, seconds.
        health: the health file to keep fresh (``--health-file``), or None.
        tasks, resources, labels: what it can run (its task modules; resource name ->
            amount, shared by its running jobs; label name -> value), said in every claim.
    """

    def __init__(
        self, *, name: str, pool: Pool, peers: Peers, wait_ms: int,
        interfaces: list[str] | None, wake_r: int, events: queue.SimpleQueue[tuple[str, Any]],
        stats: WorkerStats, clock: Callable[[], float], tasks: tuple[str, ...],
        resources: dict[str, float] | None = None, labels: dict[str, str] | None = None,
        health: HealthFile | None = None,
    ) -> None:
        self.name = name
        self.tasks = tasks
        self.resources = resources or None
        self.labels = labels or None
        self.pool = pool
        self.announced = False  # "worker started" was logged (once the pool was first ready)
        self.peers = peers
        self.wait_ms = wait_ms
        self.interfaces = interfaces
        self.wake_r = wake_r
        self.events = events
        self.stats = stats
        self.clock = clock
        self.rids = itertools.count(1)
        self.stopping = False
        self.stop_deadline = 0.0
        self.filled_at = 0.0  # when a slot was last filled (monotonic seconds)
        self.bad_messages = 0  # undecodable messages from producers, dropped
        self.bad_logged_at = 0.0
        self.health = health
        peers.hooks = self

    # --- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until a stop has finished (running jobs done, their results delivered)."""
        watched: tuple[Any, ...] = ()
        endpoints: dict[Any, str] = {}  # a link's socket -> its producer's endpoint
        check_at = 0.0  # next time to look at deadlines, heartbeats and reconnects
        pool = self.pool
        while True:
            # the poller is rebuilt only when links or job processes came or went
            now_watched = (pool.generation, *self.peers.links.values())
            if now_watched != watched:
                watched = now_watched
                poller = zmq.Poller()
                poller.register(self.wake_r, zmq.POLLIN)
                for fd in pool.procs:
                    poller.register(fd, zmq.POLLIN)
                endpoints = {link.sock: ep for ep, link in self.peers.links.items()}
                for sock in endpoints:
                    poller.register(sock, zmq.POLLIN)
            events = poller.poll(max(0, int((check_at - self.clock()) * 1000) + 1))
            now = self.clock()
            for item, _ in events:
                if item == self.wake_r:
                    self._drain_events(now)
                elif (proc := pool.procs.get(item)) is not None:
                    self._from_process(proc, now)
                elif item in endpoints:
                    self._drain_link(endpoints[item], now)
            if events:  # handling may have set new timers: look within TIMER_SLACK_S
                check_at = min(check_at, now + TIMER_SLACK_S)
            if now >= check_at:  # timers: not on every message; idle, sleep until the next
                self._enforce_time_limits(now)
                for session in list(self.peers.sessions.values()):
                    self.peers.check(session, now)
                self.peers.probe_dormant(now)
                if self.health is not None and self.health.due(now):
                    self.health.write(now, _health_info(self))
                check_at = _soonest_timer(self, now)
            self._reconcile_claims(now)
            if self.stopping and self._finished(now):
                return

    def _finished(self, now: float) -> bool:
        if any(slot.job is not None for slot in self.pool.slots):
            return False
        undelivered = sum(len(s.unacked) for s in self.peers.sessions.values())
        if not undelivered:
            return True
        if now > self.stop_deadline:
            log.error("stopping with %d result(s) undelivered: producers unreachable", undelivered)
            return True
        return False

    def _drain_events(self, now: float) -> None:
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                kind, value = self.events.get_nowait()
            except queue.Empty:
                return
            if kind == "stop":
                if not self.stopping:
                    running = sum(slot.job is not None for slot in self.pool.slots)
                    log.info("worker %s stopping: finishing %d running job(s)", self.name, running)
                self.stopping = True
                self.stop_deadline = now + STOP_DELIVERY_S
            elif kind == "found":
                self.peers.found(value, choose_endpoint(value.endpoints, self.interfaces), now)
            elif kind == "gone":
                for session in self.peers.gone(value):
                    self.beat(session, now)

    # --- what the peers ask of the loop -----------------------------------------------------

    def beat(self, session: Session, now: float) -> None:
        """Send a BEAT for the producer's leases (none: a question whether it is there), with
        the progress the running jobs reported since the last one."""
        progress = []
        for lease_id, index in session.leases.items():
            job = self._job(self.pool.slots[index])
            if job.progress is not None:
                progress.append((lease_id, *job.progress))
                job.progress = None
        self._request(session, w.Beat(
            rid=next(self.rids), leases=tuple(session.leases), progress=tuple(progress) or None,
        ), now)

    def resend(self, session: Session, now: float) -> None:
        """Send again every result the producer has not acknowledged."""
        for lease_id, outcome in list(session.unacked.values()):
            self._send_result(session, lease_id, outcome, None, now)

    def abort_jobs(self, session: Session) -> None:
        """Abort the jobs the worker runs for the producer."""
        for index in list(session.leases.values()):
            self._abort(self.pool.slots[index])

    def move_jobs(self, old: Session, new: Session) -> None:
        """The running jobs of ``old`` now belong to ``new`` (a restarted producer)."""
        for slot in self.pool.slots:
            if slot.job is not None and slot.job.endpoint == old.endpoint:
                slot.job.endpoint = new.endpoint

    def beat_lease_ms(self, session: Session) -> int:
        """The shortest lease the worker holds from the producer, in milliseconds."""
        return min(self._job(self.pool.slots[index]).lease_ms for index in session.leases.values())

    # --- requests ---------------------------------------------------------------------------

    def _request(self, session: Session, msg: w.Request, now: float, job_id: int = 0) -> None:
        """Send a request and expect its answer in time."""
        link = self.peers.links[session.endpoint]
        session.expect(msg, now, job_id)
        link.send(msg)

    def _claim(self) -> w.Claim:
        return w.Claim(rid=next(self.rids), wait_ms=self.wait_ms, tasks=self.tasks,
                       max_job=self.peers.max_payload, resources=_free_resources(self.resources, self.pool),
                       labels=self.labels)

    def _free(self) -> int:
        return self.pool.free_count()

    def _reconcile_claims(self, now: float) -> None:
        """Keep as many parked claims at each live producer as there are free slots.

        Surplus claims (a slot was just filled) are withdrawn only once the slot has stayed
        busy for SURPLUS_GRACE_S: short jobs end sooner, and withdrawing and renewing a claim
        at every other producer for each of them would cost more than the rare JOB that has
        to be declined meanwhile."""
        free = 0 if self.stopping else self._free()
        withdraw = now - self.filled_at >= SURPLUS_GRACE_S
        for session in self.peers.sessions.values():
            if session.endpoint not in self.peers.links or session.probing:
                continue
            if self.stopping and session.claims:
                for rid in list(session.claims):  # BYE drops them unanswered
                    session.withdraw(rid)
                self._request(session, w.Bye(rid=next(self.rids)), now)
                continue
            for _ in range(session.claims_missing(free, now)):
                self._request(session, self._claim(), now)
            if withdraw:
                for rid in session.surplus_claims(free):
                    session.withdraw(rid)
                    self._request(session, w.CancelClaim(rid=next(self.rids), claim_rid=rid), now)
            if self.resources is not None and session.claims:
                self._renew_claim(session, now)

    def _renew_claim(self, session: Session, now: float) -> None:
        """When the free resources changed since the producer's last claim from this worker,
        withdraw one parked claim and send a new one: the producer keeps what the worker's
        latest claim said, for all of its claims."""
        free = _free_resources(self.resources, self.pool)
        if session.claimed_free == free:
            return
        rid = min(session.claims)
        session.withdraw(rid)
        self._request(session, w.CancelClaim(rid=next(self.rids), claim_rid=rid), now)
        self._request(session, self._claim(), now)

    # --- replies ----------------------------------------------------------------------------

    def _drain_link(self, endpoint: str, now: float) -> None:
        session = self.peers.sessions[endpoint]
        while (link := self.peers.links.get(endpoint)) is not None:
            frames = link.recv()
            if frames is None:
                return
            try:
                msg = w.decode_reply(frames, self.peers.max_payload)
            except ProtocolError as exc:
                self.bad_messages += 1
                if now - self.bad_logged_at > 1.0:  # at most one line a second under a flood
                    self.bad_logged_at = now
                    log.warning("producer %s sent a bad message: %s (dropped; %d so far)",
                                session.label, clean(exc.message), self.bad_messages)
                continue
            if not session.answered:
                self.peers.first_answer(session, link, now)
            if session.unreachable_since is not None:
                log.info("producer %s reachable again", session.label)
            self._apply(session, session.on_reply(msg, now, self.wait_ms), now)

    def _apply(self, session: Session, effect: Effect, now: float) -> None:
        if effect.job is not None:
            self._run_job(session, effect.job, effect.solicited, now)
        for lease_id in effect.void:
            slot = self.pool.slots[session.leases[lease_id]]
            job = self._job(slot)
            log.warning("job %d was cancelled by its producer (or re-offered to another worker); "
                        "aborting it", job.job_id, extra=_fields(job, session))
            self._abort(slot)
        if effect.refused is not None:
            verb, message = effect.refused
            log.error("producer %s refused %s: %s", session.label, verb, clean(message))
        if effect.dropped is not None:
            log.error("result of job %d was refused and is dropped", effect.dropped)
        if effect.abandon is not None:
            log.error("producer %s at %s speaks another protocol version; not using it (this "
                      "worker speaks FRZ%d): %s", session.label, clean(session.endpoint),
                      w.VERSION, clean(effect.abandon))
            self.peers.abandon(session, now)

    def _run_job(self, session: Session, job: w.Job, solicited: bool, now: float) -> None:
        """Run a JOB in a free slot, or DECLINE it: no slot free, stopping, an answer to a
        claim this worker does not have outstanding (withdrawn, or never sent), a payload
        over this worker's limit (the DECLINE says the limit), or resources that are not
        free (claims to several producers raced; the DECLINE says what is free)."""
        slot = self.pool.free_slot()
        limit = self.peers.max_payload
        too_large = len(job.payload) > limit
        held = tuple(job.resources.items()) if job.resources else ()
        free = _free_resources(self.resources, self.pool) if held else None
        busy = bool(held) and not fits(held, free or {})
        if slot is None or self.stopping or not solicited or too_large or busy:
            if too_large:
                log.warning("job %d of producer %s takes %d bytes, over this worker's limit of %d "
                            "(--max-payload-bytes); declined", job.job_id, session.label,
                            len(job.payload), limit)
            self._request(session, w.Decline(
                rid=next(self.rids), job_id=job.job_id, lease_id=job.lease_id,
                max_job=limit if too_large else None, resources=(free or {}) if busy else None,
            ), now)
            return
        self.pool.run(slot, _running_job(session, job, held, now), job.payload)
        self.filled_at = now
        if not session.leases:
            session.next_beat_at = now + max(job.lease_ms / 4000, 0.02)
        session.leases[job.lease_id] = slot.index

    # --- results ----------------------------------------------------------------------------

    @staticmethod
    def _job(slot: Slot) -> RunningJob:
        assert slot.job is not None
        return slot.job

    def _abort(self, slot: Slot) -> None:
        """Stop the job running in ``slot`` (see :meth:`Pool.abort`) and forget its lease;
        its result, if any, is not sent."""
        job = self.pool.abort(slot, self.clock())
        if job is not None:
            session = self.peers.sessions.get(job.endpoint)
            if session is not None:
                session.leases.pop(job.lease_id, None)

    def _release(self, job: RunningJob, now: float) -> None:
        """Give a job back to its producer (DECLINE: offered again at once, same attempt):
        its process was replaced because another job in it ignored cancellation. A producer
        not reachable now re-offers it when the lease expires."""
        session = self.peers.sessions.get(job.endpoint)
        if session is None or session.leases.pop(job.lease_id, None) is None:
            return
        if job.endpoint in self.peers.links:
            self._request(session, w.Decline(rid=next(self.rids), job_id=job.job_id,
                                             lease_id=job.lease_id), now)

    def _enforce_time_limits(self, now: float) -> None:
        """Stop a job past its time limit (C8) and report it as JobTimeout; replace the
        processes of cancelled jobs that did not stop (their other jobs are released)."""
        for slot in self.pool.slots:
            job = slot.job
            if job is not None and job.deadline is not None and now >= job.deadline:
                limit_s = job.timeout_ms / 1000
                how = "killed" if self.pool.kind == "process" else "cancelled"
                log.warning("job %d ran past its time limit of %g s; %s", job.job_id, limit_s, how,
                            extra=_fields(job, self.peers.sessions.get(job.endpoint)))
                self._abort(slot)
                message = f"the job ran past its time limit of {limit_s:g} s and was {how}"
                error = pl.pack_error("JobTimeout", message, "")
                self._finished_job(job, Outcome(job.job_id, False, error), now)
        for job in self.pool.expire(now):
            self._release(job, now)

    def _from_process(self, proc: JobProcess, now: float) -> None:
        taken = self.pool.readable(proc)
        for job, outcome in taken.finished:
            self._job_ended(job, outcome, now)
        for job in taken.released:
            self._release(job, now)
        if self.pool.fatal is not None and not self.stopping:
            log.error("worker %s stopping: %s", self.name, self.pool.fatal)
            self.stopping = True
            self.stop_deadline = now + STOP_DELIVERY_S
        elif not self.announced and self.pool.ready:
            self.announced = True
            log.info("worker %s started: %d slot(s) in the %s pool, ready", self.name,
                     len(self.pool.slots), self.pool.kind)

    def _job_ended(self, job: RunningJob, outcome: Outcome, now: float) -> None:
        session = self.peers.sessions.get(job.endpoint)
        if session is not None:
            session.leases.pop(job.lease_id, None)
        if len(outcome.payload) > job.max_result:  # the producer would drop the connection
            message = (
                f"the result takes {len(outcome.payload)} bytes encoded, more than the "
                f"producer's limit of {job.max_result} (max_payload_bytes); return a path "
                "or URL to the data instead"
            )
            outcome = Outcome(outcome.job_id, False, pl.pack_error("ResultTooLarge", message, ""))
        self._finished_job(job, outcome, now)

    def _finished_job(self, job: RunningJob, outcome: Outcome, now: float) -> None:
        self.stats.jobs_run += 1
        if not outcome.ok:
            self.stats.jobs_failed += 1
        self.stats.count(job.task, "done" if outcome.ok else "crashed" if outcome.crashed else "failed")
        session = self.peers.sessions.get(job.endpoint)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("job %d %s", job.job_id, "done" if outcome.ok else "failed", extra=_fields(job, session))
        if session is None:  # its producer was given up on meanwhile
            return
        session.unacked[job.job_id] = (job.lease_id, outcome)
        if job.endpoint not in self.peers.links:
            return  # sent when the producer is reachable again
        claim = None if self.stopping or session.claim_pause_until > now else self._claim()
        self._send_result(session, job.lease_id, outcome, claim, now)

    def _send_result(self, session: Session, lease_id: int, outcome: Outcome,
                     claim: w.Claim | None, now: float) -> None:
        msg = w.Result(
            rid=next(self.rids), job_id=outcome.job_id, lease_id=lease_id, ok=outcome.ok,
            payload=outcome.payload, claim=claim, crashed=outcome.crashed or None,
        )
        self._request(session, msg, now, job_id=outcome.job_id)

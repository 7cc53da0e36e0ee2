"""Matching without sockets (DESIGN §8): requirements and capabilities (core/match.py), the
pending index by requirement signature (core/pending.py), and the offer engine handing each
claim only a job its worker can run, reporting the jobs no connected worker can run."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from freelance_rz.core import payload as pl
from freelance_rz.core import wire as w
from freelance_rz.core.fleet import WAITING_WARN_S
from freelance_rz.core.ledger import Ledger, needs_of
from freelance_rz.core.match import Capabilities, Needs, free_resources
from freelance_rz.core.offer import OfferEngine

BIG = w.DEFAULT_MAX_PAYLOAD


def caps(*modules: str, free=None, labels=None, max_job: int = BIG) -> Capabilities:
    return Capabilities(frozenset(modules), free or {}, labels or {}, max_job)


# --- requirements and capabilities ----------------------------------------------------------


def test_needs_are_one_signature_per_requirements():
    a = Needs.of("m.tasks:render", {"gpu": 1, "mem_gb": 8}, {"zone": "eu"})
    b = Needs.of("m.tasks:render", {"mem_gb": 8, "gpu": 1.0}, {"zone": "eu"})
    assert a == b and hash(a) == hash(b)
    assert a.module == "m.tasks"
    assert a.describe() == "gpu=1, mem_gb=8, label zone=eu"
    assert Needs.of("m:f", {"gpu": 0}) == Needs.of("m:f")  # a zero amount needs nothing
    assert Needs.of("m:f") != Needs.of("m:g")


@pytest.mark.parametrize("needs, worker, runs", [
    (Needs.of("m:f"), caps("m"), True),
    (Needs.of("m:f"), caps("n"), False),  # not among its task modules
    (Needs.of("m.sub:f"), caps("m"), False),  # modules match exactly, not by prefix
    (Needs.of("m:f", {"gpu": 1}), caps("m"), False),  # a resource it does not have
    (Needs.of("m:f", {"gpu": 1}), caps("m", free={"gpu": 0}), False),  # busy
    (Needs.of("m:f", {"gpu": 1}), caps("m", free={"gpu": 1}), True),
    (Needs.of("m:f", {"gpu": 0.3}), caps("m", free={"gpu": 0.1 + 0.2}), True),  # float slack
    (Needs.of("m:f", {"gpu": 1, "mem_gb": 9}), caps("m", free={"gpu": 2, "mem_gb": 8}), False),
    (Needs.of("m:f", labels={"zone": "eu"}), caps("m", labels={"zone": "us"}), False),
    (Needs.of("m:f", labels={"zone": "eu"}), caps("m"), False),
    (Needs.of("m:f", labels={"zone": "eu"}), caps("m", labels={"zone": "eu", "pool": "x"}), True),
])
def test_the_matching_rule(needs, worker, runs):
    assert worker.can_run(needs) is runs


def test_capabilities_of_workers_alike_are_one_class():
    one = caps("m", "n", free={"gpu": 1}, labels={"zone": "eu"})
    other = caps("n", "m", free={"gpu": 1.0}, labels={"zone": "eu"})
    assert one == other and len({one, other}) == 1
    busy = one.holding((("gpu", 1),))
    assert busy != one and busy.free == {"gpu": 0.0} and not busy.can_run(Needs.of("m:f", {"gpu": 1}))


def test_free_resources_are_recomputed_from_what_running_jobs_hold():
    total = {"gpu": 1, "mem_gb": 64}
    held = [(("gpu", 1), ("mem_gb", 16)), (("mem_gb", 0.1),), (("mem_gb", 0.2),)]
    free = free_resources(total, held)
    assert free["gpu"] == 0 and free["mem_gb"] == pytest.approx(47.7)
    assert free_resources(total, []) == total


def test_requirements_are_read_back_from_the_call_payload():
    payload = pl.pack_call("m:f", [1], {}, {"priority": 2, "resources": {"gpu": 1},
                                            "labels": {"zone": "eu"}})
    assert needs_of(payload) == Needs.of("m:f", {"gpu": 1}, {"zone": "eu"})
    assert needs_of(pl.pack_call("m:f", [], {})) == Needs.of("m:f")
    assert needs_of(b"\xc1junk").module == "?"  # unreadable: a task no worker runs


@pytest.mark.parametrize("options", [
    {"resources": {"gpu": -1}}, {"resources": {"gpu": float("nan")}}, {"resources": {"gpu": "1"}},
    {"resources": [1]}, {"resources": {"bad name": 1}}, {"labels": {"zone": 1}},
    {"labels": {"zone": "x" * 129}}, {"priority": 1.5}, {"timeout_ms": "1"},
])
def test_malformed_options_in_a_call_payload_are_refused(options):
    from freelance_rz.errors import ProtocolError

    payload = pl.pack_call("m:f", [], {}, options)
    with pytest.raises(ProtocolError):
        pl.unpack_call(payload)
    assert pl.unpack_call(pl.pack_call("m:f", [], {}, {"future_option": [1]}))[3] == {
        "future_option": [1]}  # a later version's option is ignored


# --- the pending index ----------------------------------------------------------------------


def ledger() -> Ledger:
    return Ledger(lease_s=10, max_attempts=3, rng=random.Random(1))


def submit(led: Ledger, job_id: int, task: str = "m:f", priority: int = 0, **needs) -> None:
    led.submit(job_id, pl.pack_call(task, [job_id], {}), priority=priority,
               needs=Needs.of(task, needs.get("resources"), needs.get("labels")))


def order(led: Ledger, worker: Capabilities) -> list[int]:
    out = []
    while (lease := led.claim(b"w", 0.0, worker)) is not None:
        out.append(lease.job_id)
    return out


def test_priority_then_fifo_across_signatures():
    led = ledger()
    submit(led, 1, "m:f")
    submit(led, 2, "n:f", resources={"gpu": 1})
    submit(led, 3, "m:f", priority=5)
    submit(led, 4, "o:f")  # nobody here runs o
    submit(led, 5, "n:f", priority=5)
    submit(led, 6, "m:f", labels={"zone": "eu"})
    submit(led, 7, "n:f")
    assert order(led, caps("m", "n", free={"gpu": 1}, labels={"zone": "eu"})) == [3, 5, 1, 2, 6, 7]
    assert led.pending == 1 and [n.task for n, _ in led.waiting()] == ["o:f"]


def test_a_claim_takes_only_what_its_worker_can_run_and_others_keep_their_place():
    led = ledger()
    for job_id in range(1, 7):
        submit(led, job_id, "gpu:f" if job_id % 2 else "cpu:f",
               resources={"gpu": 1} if job_id % 2 else None)
    assert order(led, caps("cpu")) == [2, 4, 6]
    assert led.claim(b"w", 0.0, caps("gpu")) is None  # no GPU free
    assert order(led, caps("gpu", free={"gpu": 1})) == [1, 3, 5]


def test_jobs_coming_back_go_to_the_head_of_their_signature_in_global_order():
    led = ledger()
    for job_id in (1, 2, 3):
        submit(led, job_id, "m:f")
    submit(led, 4, "n:f")
    first = led.claim(b"w", 0.0, caps("m", "n"))
    second = led.claim(b"w", 0.0, caps("m", "n"))
    assert (first.job_id, second.job_id) == (1, 2)
    led.release(b"w", second.job_id, second.lease_id)  # declined: back to the head
    led.release(b"w", first.job_id, first.lease_id)
    assert order(led, caps("m", "n")) == [1, 2, 3, 4]
    lease = led.claim(b"w", 0.0, None)
    assert lease is None  # everything is leased


def test_a_signature_with_no_pending_job_is_dropped():
    led = ledger()
    for job_id in range(1, 4):
        submit(led, job_id, f"m{job_id}:f", resources={"gpu": job_id})
    led.cancel(1)
    assert len(led.waiting()) == 2
    order(led, caps("m2", "m3", free={"gpu": 9}))
    assert led.waiting() == [] and len(led._pending) == 0
    for job_id in range(10, 80):  # past EMPTY_KEPT signatures left empty, they are dropped
        submit(led, job_id, f"x{job_id}:f")
    assert order(led, caps(*(f"x{i}" for i in range(10, 80)))) == list(range(10, 80))
    assert len(led._pending._queues) <= 64


@contextmanager
def queues_visited(led: Ledger, seen: Callable[[Any], Any]) -> Iterator[list[Any]]:
    """Inside the block, ``seen(queue)`` of each pending queue a claim looks at, in order
    (taken at the visit: a queue changes once a job is taken from it)."""
    visited: list[Any] = []
    real = type(led._pending)._candidates

    def counting(index, worker):
        for queue in real(index, worker):
            visited.append(seen(queue))
            yield queue
    type(led._pending)._candidates = counting
    try:
        yield visited
    finally:
        type(led._pending)._candidates = real


def test_claim_cost_follows_signatures_not_jobs():
    """100,000 pending jobs a worker cannot run cost its claim nothing: the claim looks at
    the signatures of its modules only (a scan would visit every job)."""
    led = ledger()
    for job_id in range(100_000):
        led.submit(job_id, b"", needs=Needs.of("big:f", {"gpu": 1}))
    led.submit(-1, b"", needs=Needs.of("m:f"))
    with queues_visited(led, lambda queue: queue.needs) as visited:
        assert led.claim(b"w", 0.0, caps("m")).job_id == -1
        assert led.claim(b"w", 0.0, caps("m", "big")) is None  # no GPU
    assert visited == [Needs.of("m:f")] * 2  # (its queue, emptied, is kept for the next job)


def test_deferred_jobs_cost_a_claim_nothing():
    """100,000 delayed jobs of the claimed task wait in a heap of due times, in no queue: the
    claim visits the one pending queue, and waking at a time before their due time takes
    none (a scan would visit each; issue 15's "a heap, not a scan")."""
    led = ledger()
    for job_id in range(100_000):
        led.submit(job_id, b"", needs=Needs.of("m:f"), due=3600.0)
    led.submit(-1, b"", needs=Needs.of("m:f"))
    with queues_visited(led, lambda queue: queue.live) as visited:
        assert led.claim(b"w", 0.0, caps("m")).job_id == -1
        assert led.claim(b"w", 0.0, caps("m")) is None
    assert visited in ([1], [1, 0])  # the pending job's queue (kept, emptied, for the next)
    assert led.wake(3599.0) == 0 and led.next_due() == 3600.0
    assert led.wake(3600.0) == 100_000


# --- the offer engine -----------------------------------------------------------------------


class Engine:
    """An offer engine and what it sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, w.Answer]] = []
        self.now = 0.0
        self.ledger = ledger()
        self.engine = OfferEngine(
            self.ledger, send=lambda identity, msg: self.sent.append((identity, msg)) is None,
            on_outcome=lambda *a: None, on_progress=lambda *a: None, max_payload=BIG,
            facts={"producer_id": "p"}, durable=False, wanted=lambda job_id: True, now=0.0,
        )
        self.rid = 0
        self.job_id = 0

    def claim(self, identity: bytes, *tasks: str, resources=None, labels=None, wait_ms=5000) -> int:
        self.rid += 1
        self.receive(identity, w.Claim(rid=self.rid, wait_ms=wait_ms, tasks=tasks,
                                       resources=resources, labels=labels))
        return self.rid

    def receive(self, identity: bytes, msg: w.Request) -> None:
        self.engine.receive([identity, *w.encode(msg)], self.now)

    def submit(self, task: str, priority: int = 0, resources=None, labels=None) -> int:
        self.job_id += 1
        options = {k: v for k, v in (("resources", resources), ("labels", labels)) if v}
        self.engine.submit(self.job_id, pl.pack_call(task, [self.job_id], {}, options or None),
                           max_attempts=None, priority=priority, timeout_ms=None,
                           needs=Needs.of(task, resources, labels))
        return self.job_id

    def tick(self, seconds: float = 0.0) -> None:
        self.now += seconds
        self.engine.tick(self.now)

    def jobs(self) -> list[tuple[bytes, int]]:
        out = [(identity, msg.job_id) for identity, msg in self.sent if isinstance(msg, w.Job)]
        self.sent.clear()
        return out


def test_a_parked_claim_is_answered_as_soon_as_a_matching_job_arrives():
    e = Engine()
    e.claim(b"cpu", "m")
    e.claim(b"gpu", "m", "n", resources={"gpu": 1})
    job = e.submit("n:f", resources={"gpu": 1})
    e.tick()
    assert e.jobs() == [(b"gpu", job)]  # the CPU worker, first in line, was passed over
    other = e.submit("m:f")
    e.tick()
    assert e.jobs() == [(b"cpu", other)]  # and kept its turn


def test_a_job_no_connected_worker_can_run_is_never_handed_out_and_is_reported(caplog):
    caplog.set_level(logging.WARNING, logger="freelance_rz.producer")
    e = Engine()
    e.claim(b"cpu", "m", labels={"zone": "us"})
    e.claim(b"gpu", "m", resources={"gpu": 1})
    for _ in range(12):
        e.submit("m:render", resources={"gpu": 2})
    e.submit("m:f", labels={"zone": "eu"})
    e.submit("n:f")
    for _ in range(20):
        e.tick(0.5)
    assert e.jobs() == []
    waiting = e.engine.status(e.now)["waiting"]
    assert [(x["task"], x["jobs"], x["missing"]) for x in waiting] == [
        ("m:render", 12, "no connected worker offers gpu=2"),
        ("m:f", 1, "no connected worker of module m carries label zone=eu"),
        ("n:f", 1, "no connected worker runs module n (its --tasks)"),
    ]
    assert waiting[0]["message"] == "12 jobs of m:render need gpu=2: no connected worker offers gpu=2"
    assert waiting[0]["resources"] == {"gpu": 2} and waiting[1]["labels"] == {"zone": "eu"}
    logged = [r.getMessage() for r in caplog.records if "waiting until such a worker" in r.getMessage()]
    assert len(logged) == 3, logged  # once per signature, though checked every second
    # a worker that can run them joins: they run, and nothing is reported any more
    e.claim(b"big", "m", "n", resources={"gpu": 2}, labels={"zone": "eu"})
    ran = []
    while e.sent:  # it runs each job it is handed, its RESULT carrying its next claim
        identity, msg = e.sent.pop(0)
        if isinstance(msg, w.Job):
            ran.append(msg.job_id)
            e.rid += 2
            e.receive(identity, w.Result(
                rid=e.rid, job_id=msg.job_id, lease_id=msg.lease_id, ok=True, payload=b"\xc0",
                claim=w.Claim(rid=e.rid + 1, wait_ms=5000, tasks=("m", "n"),
                              resources={"gpu": 2}, labels={"zone": "eu"})))
    assert sorted(ran) == list(range(1, 15))
    assert e.ledger.pending == 0 and e.engine.status(e.now)["waiting"] == []


def test_jobs_waiting_with_no_claim_seen_say_only_what_the_producer_knows(caplog):
    """No claim seen: the workers may all be busy (with another producer's jobs) or none may
    run. STATUS and the warning say so, not "no worker is connected" / "start workers"."""
    caplog.set_level(logging.WARNING, logger="freelance_rz.producer")
    e = Engine()
    e.submit("m:f")
    for _ in range(25):
        e.tick(0.5)
    [waiting] = e.engine.status(e.now)["waiting"]
    assert waiting["missing"] == ("no worker has claimed a job here lately: the group's workers may "
                                  "all be busy, or none is running")
    [warned] = [r.getMessage() for r in caplog.records if "job(s) waiting" in r.getMessage()]
    assert warned.startswith("1 job(s) waiting and no worker has claimed a job from producer p")
    assert "the group's workers may all be busy, or none is running; start workers" in warned


def test_a_busy_gpu_still_counts_as_a_gpu_for_the_report():
    e = Engine()
    e.claim(b"gpu", "m", resources={"gpu": 1})
    first = e.submit("m:f", resources={"gpu": 1})
    assert e.jobs() == [] and (e.tick() or True) and e.jobs() == [(b"gpu", first)]
    e.claim(b"gpu", "m", resources={"gpu": 0})  # its next slot's claim: the GPU is busy
    e.submit("m:f", resources={"gpu": 1})
    e.tick(WAITING_WARN_S + 1)
    assert e.jobs() == [] and e.engine.status(e.now)["waiting"] == []


def test_resources_handed_out_are_not_offered_again_to_the_same_worker():
    e = Engine()
    e.claim(b"w", "m", resources={"gpu": 1})
    e.claim(b"w", "m", resources={"gpu": 1})
    gpu_jobs = [e.submit("m:f", resources={"gpu": 1}) for _ in range(2)]
    cpu_job = e.submit("m:g")
    e.tick()
    assert e.jobs() == [(b"w", gpu_jobs[0]), (b"w", cpu_job)]  # one GPU, two slots


def test_a_decline_for_resources_corrects_the_view_and_the_job_goes_back_to_the_head():
    e = Engine()
    e.claim(b"w", "m", resources={"gpu": 1})
    e.claim(b"w", "m", resources={"gpu": 1})
    gpu = e.submit("m:f", resources={"gpu": 1})
    e.tick()
    (_, job), = [(i, m) for i, m in e.sent if isinstance(m, w.Job)]
    e.sent.clear()
    assert job.resources == {"gpu": 1}
    # its GPU went to another producer's job meanwhile: it declines, saying none is free
    e.receive(b"w", w.Decline(rid=99, job_id=gpu, lease_id=job.lease_id, resources={"gpu": 0}))
    e.tick()
    assert e.jobs() == []  # not offered again to its parked claim
    cpu = e.submit("m:g")
    later = e.submit("m:f", resources={"gpu": 1})
    e.tick()
    assert e.jobs() == [(b"w", cpu)]
    e.claim(b"w", "m", resources={"gpu": 1})  # its GPU is free again
    assert e.jobs() == [(b"w", gpu)]  # the declined job, first: it went back to the head
    assert later in {j.job_id for j in e.ledger._jobs.values() if j.pending}


def test_a_claim_with_new_capabilities_lets_its_parked_claims_take_more():
    e = Engine()
    e.claim(b"w", "m", resources={"gpu": 0})
    jobs = [e.submit("m:f", resources={"gpu": 1}) for _ in range(2)]
    e.tick()
    assert e.jobs() == []
    e.claim(b"w", "m", resources={"gpu": 2})
    e.tick()
    assert sorted(job for _, job in e.jobs()) == jobs  # the new claim and the parked one


def test_dispatch_passes_over_workers_alike_once_one_took_nothing():
    e = Engine()
    for i in range(50):
        e.claim(f"cpu{i}".encode(), "m")
    e.claim(b"gpu", "m", resources={"gpu": 1})
    offered = []
    real = e.ledger.claim

    def counting(worker, now, worker_caps=None):
        offered.append(worker)
        return real(worker, now, worker_caps)
    e.ledger.claim = counting
    job = e.submit("m:f", resources={"gpu": 1})
    e.tick()
    assert e.jobs() == [(b"gpu", job)]
    assert offered == [b"cpu0", b"gpu"]  # not 50 CPU workers asked one by one


def test_a_message_of_another_version_is_answered_in_its_own_framing():
    e = Engine()
    e.engine.receive([b"old", b"FRZ1", b"CLAIM", b"\x82\xa3rid\x01\xa7wait_ms\x00"], 0.0)
    (identity, msg), = e.sent
    assert identity == b"old" and isinstance(msg, w.VersionErr)
    assert w.encode(msg)[:2] == [b"FRZ1", b"ERR"]
    assert "version 1" in msg.message and "version 2 (FRZ2)" in msg.message
    e.sent.clear()
    e.claim(b"new", "m")
    e.submit("m:f")
    e.tick()
    assert e.jobs() == [(b"new", 1)]  # and it keeps serving


@pytest.mark.timeout(20)
def test_a_claim_from_a_worker_that_vanished_is_not_parked_and_dispatch_ends():
    """A CLAIM whose JOB cannot be sent (its worker vanished right after sending it): the
    worker is forgotten, its claim is not parked, and later dispatches end (found by the
    lab's chaos run: a producer's I/O thread spun in _dispatch)."""
    e = Engine()
    gone = {b"ghost"}
    e.engine._send_reply = lambda identity, msg: identity not in gone and e.sent.append((identity, msg)) is None
    e.submit("m:f")
    e.claim(b"ghost", "m")  # its JOB cannot be sent: the job goes back, the ghost is forgotten
    assert not e.engine.parked.has(b"ghost") and b"ghost" not in e.engine.fleet.caps
    e.claim(b"live", "n")  # parked: it cannot run m
    e.submit("m:g")
    e.tick()  # must end
    e.claim(b"runner", "m")
    e.claim(b"runner", "m")
    assert [job for _, job in e.jobs()] == [1, 2]  # the one given back first, at the head

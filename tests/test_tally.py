"""The producer's per-task tally (pure: times are numbers we pass), the payload's task peek,
and the I/O thread's reporter (running jobs, retry of a recent failure). The tally's
agreement with the ledger under every sequence of events is checked by the offer engine's
state machine (tests/test_offer_engine.py)."""

from __future__ import annotations

import random

from freelance_rz.core import payload as pl
from freelance_rz.core.ledger import Ledger
from freelance_rz.core.tally import BUCKETS_S, FAILURES_KEPT, MAX_TASKS, OTHER_TASK, TRACEBACK_CHARS, Tally
from freelance_rz.producer.journal import TallyTap
from freelance_rz.producer.report import Reporter


class Clock:
    now = 1000.0


def fed_ledger() -> tuple[Ledger, Tally, Clock]:
    clock = Clock()
    ledger = Ledger(lease_s=10.0, max_attempts=2, rng=random.Random(1))
    tally = Tally()
    ledger.journal = TallyTap(ledger.journal, tally, clock)  # type: ignore[arg-type]
    return ledger, tally, clock


def test_peek_task_reads_the_name_without_decoding_the_call():
    assert pl.peek_task(pl.pack_call("app.tasks:resize", (1, "x" * 100_000), {"w": 2})) == "app.tasks:resize"
    assert pl.peek_task(pl.pack_call("m:" + "f" * 200, (), {}, {"priority": 3})) == "m:" + "f" * 200
    assert pl.peek_task(pl.pack_call("m:" + "f" * 300, (), {})) == "?"  # str 16: not peeked
    for junk in (b"", b"\x93", b"\x00abc", b"\x93\x01", pl.pack_value([1, 2, 3])):
        assert pl.peek_task(junk) == "?"


def test_wait_and_run_times_land_in_their_buckets():
    ledger, tally, clock = fed_ledger()
    ledger.submit(1, pl.pack_call("m:slow", [], {}))
    clock.now += 0.003  # waited 3 ms
    lease = ledger.claim(b"w", clock.now)
    assert lease is not None
    clock.now += 2.0  # ran 2 s
    ledger.resolve(b"w", 1, lease.lease_id, True, pl.pack_value(None))
    entry = tally.report(clock.now)["tasks"][0]
    assert entry["task"] == "m:slow" and entry["done"] == 1 and entry["pending"] == entry["leased"] == 0
    assert entry["wait_counts"][BUCKETS_S.index(0.005)] == 1
    assert entry["run_counts"][BUCKETS_S.index(2.5)] == 1
    assert abs(entry["run_sum_s"] - 2.0) < 1e-6 and abs(entry["wait_sum_s"] - 0.003) < 1e-6
    assert len(entry["wait_counts"]) == len(BUCKETS_S) + 1


def test_failures_keep_the_traceback_and_dead_letters_their_reason():
    ledger, tally, clock = fed_ledger()
    ledger.submit(1, pl.pack_call("m:boom", [1], {}))
    ledger.submit(2, pl.pack_call("m:crash", [2], {}))
    first = ledger.claim(b"NAME-abc", clock.now)
    assert first is not None and first.job_id == 1
    trace = "Traceback (most recent call last):\n" + "  frame\n" * 1000 + "ValueError: bad input\n"
    ledger.resolve(b"NAME-abc", 1, first.lease_id, False, pl.pack_error("ValueError", "bad input", trace))
    for _ in range(2):  # two lost leases: dead-lettered
        lease = ledger.claim(b"w", clock.now)
        assert lease is not None
        clock.now += 11
        ledger.expire(clock.now)
    tally.explain(2, "the job's process died: was killed by signal SIGKILL")
    failures = tally.report(clock.now)["failures"]
    assert [f["job_id"] for f in failures] == [2, 1]  # newest first
    dead, failed = failures
    assert dead["kind"] == "dead" and dead["type"] == "JobLost" and "SIGKILL" in dead["message"]
    assert dead["attempt"] == 2
    assert failed["kind"] == "failed" and failed["type"] == "ValueError" and failed["message"] == "bad input"
    assert failed["traceback"].endswith("ValueError: bad input\n") and len(failed["traceback"]) == TRACEBACK_CHARS
    assert failed["worker"].startswith("NAME-")
    counts = {t["task"]: t for t in tally.report(clock.now)["tasks"]}
    assert counts["m:crash"]["retried"] == 1 and counts["m:crash"]["dead"] == 1


def test_what_is_kept_is_bounded():
    ledger, tally, clock = fed_ledger()
    for job_id in range(1, MAX_TASKS + 11):
        ledger.submit(job_id, pl.pack_call(f"m:t{job_id}", [], {}))
        ledger.cancel(job_id)
    assert len(tally.tasks) == MAX_TASKS + 1 and tally.tasks[OTHER_TASK].counts["cancelled"] == 10
    for job_id in range(10_000, 10_000 + FAILURES_KEPT + 5):
        ledger.submit(job_id, pl.pack_call("m:f", [], {}))
        ledger.refuse(job_id, pl.pack_error("JobTooLarge", "too large", ""))
    assert len(tally.report(clock.now)["failures"]) == FAILURES_KEPT
    assert len(tally.report(clock.now)["tasks"]) == 100 and tally.report(clock.now)["tasks_total"] == MAX_TASKS + 1


def test_reporter_lists_running_jobs_and_retries_a_failure_with_its_options():
    ledger, tally, clock = fed_ledger()
    call = pl.pack_call("m:f", [7], {}, {"priority": 5, "timeout_ms": 1500})
    ledger.submit(1, call, priority=5, timeout_ms=1500)
    ledger.submit(2, pl.pack_call("m:g", [], {}))
    lease = ledger.claim(b"NAME-x", clock.now)
    assert lease is not None
    ledger.report(b"NAME-x", lease.lease_id, (3, 10, "resizing"))
    resubmitted = []

    def resubmit(payload: bytes, priority: int, timeout_ms: int | None) -> int:
        resubmitted.append((payload, priority, timeout_ms))
        return 99

    reporter = Reporter(ledger, tally, clock, lambda: 4, resubmit)  # type: ignore[arg-type]
    clock.now += 1.5
    info = reporter.report(0.0, detail=True)
    assert info["connections"] == 4 and reporter.report(0.0, detail=False) == {"connections": 4}
    [running] = info["running"]
    assert running["job_id"] == 1 and running["task"] == "m:f" and running["running_s"] == 1.5
    assert (running["done"], running["total"], running["message"]) == (3, 10, "resizing")
    assert reporter.retry(1, 0.0) is None  # running, not failed
    ledger.resolve(b"NAME-x", 1, lease.lease_id, False, pl.pack_error("E", "m", "t"))
    assert reporter.retry(1, 0.0) == 99
    assert resubmitted == [(call, 5, 1500)]

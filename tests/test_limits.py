"""Concurrency and rate limits per task (DESIGN §9): the pure limits, the ledger passing over
a task at its limit, and over real sockets a limit of 2 running with 4 workers (measured from
the jobs' own records), a rate limit, and other tasks running meanwhile."""

from __future__ import annotations

import time

import pytest

import rztasks
from freelance_rz.core.ledger import Ledger
from freelance_rz.core.limits import Limits
from freelance_rz.core.match import Needs


def test_max_running_closes_and_reopens_a_task():
    limits = Limits()
    limits.change("m:f", 2, None, 0.0, running=1)
    assert limits.closed(0.0) == set()
    limits.started("m:f", 0.0)
    assert limits.closed(0.0) == {"m:f"}
    limits.ended("m:f")
    assert limits.closed(0.0) == set() and limits.reopened
    limits.started("m:other", 0.0)  # an unlimited task costs nothing
    limits.change("m:f", None, None, 0.0, running=0)
    assert not limits.active


def test_a_rate_is_a_token_bucket():
    limits = Limits()
    limits.change("m:f", None, 2.0, 10.0, running=0)  # 2 a second, bursts of 2
    limits.started("m:f", 10.0)
    limits.started("m:f", 10.0)
    assert limits.closed(10.0) == {"m:f"}
    assert limits.next_open() == pytest.approx(10.5)
    assert limits.closed(10.49) == {"m:f"} and limits.closed(10.5) == set()
    slow = Limits()
    slow.change("m:g", None, 0.5, 0.0, running=0)  # one every 2 s, bursts of 1
    slow.started("m:g", 0.0)
    assert slow.closed(1.9) == {"m:g"} and slow.closed(2.0) == set()


def test_a_claim_gets_another_job_while_a_task_is_at_its_limit():
    ledger = Ledger(lease_s=10.0, max_attempts=3)
    for job_id, task in [(1, "m:api"), (2, "m:api"), (3, "m:other"), (4, "m:api")]:
        ledger.submit(job_id, b"", needs=Needs.of(task))
    ledger.limit("m:api", 1, None, 0.0)
    first = ledger.claim("w", 0.0)
    assert first.job_id == 1
    assert ledger.claim("w", 0.0).job_id == 3  # job 2 waits: m:api runs its one job
    assert ledger.claim("w", 0.0) is None
    assert ledger.resolve("w", 1, first.lease_id, True)
    assert ledger.claim("w", 0.0).job_id == 2
    assert ledger.limits.peaks == {"m:api": 1}
    report = ledger.limits.report({"m:api": 1})
    assert report == [{"task": "m:api", "max_running": 1, "per_s": None, "running": 1,
                       "closed": True, "held": 1}]


# --- over real sockets -------------------------------------------------------------------------


def spans(path) -> list[tuple[float, float, str]]:
    out = []
    for line in path.read_text().splitlines():
        start, end, worker = line.split()
        out.append((float(start), float(end), worker))
    return out


def most_at_once(records: list[tuple[float, float, str]]) -> int:
    """The most runs that overlapped, from their start and end times."""
    events = sorted([(s, 1) for s, _, _ in records] + [(e, -1) for _, e, _ in records])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


@pytest.mark.timeout(120)
def test_a_limit_of_two_running_holds_across_four_workers(make_producer, start_worker, tmp_path):
    producer = make_producer(announce=False)
    producer.limit(rztasks.span, max_running=2)
    for n in range(4):  # one slot each: the limit, not a worker's slots, is what holds
        start_worker(f"w{n}", "--slots", "1", connect=producer.endpoint)
    log, other = tmp_path / "limited", tmp_path / "other"
    limited = [producer.submit(rztasks.span, str(log), 0.4) for _ in range(10)]
    deadline = time.monotonic() + 60
    while not producer.status()["limits"][0]["closed"]:  # two of them run
        assert time.monotonic() < deadline
        time.sleep(0.02)
    status = producer.status()
    assert status["limits"][0]["running"] == 2 and status["limits"][0]["held"] >= 1
    assert status["waiting"] == []  # held by a limit, not "no worker can run it"
    others = [producer.submit(rztasks.mark, str(other)) for _ in range(6)]  # not held up
    for future in others:
        future.result(timeout=30)
    assert not all(f.done() for f in limited)  # the others ran meanwhile
    for future in limited:
        future.result(timeout=60)
    records = spans(log)
    assert len(records) == 10
    assert most_at_once(records) == 2  # never more than the limit, and the limit was used
    assert len({worker for _, _, worker in records}) >= 2  # on several workers


@pytest.mark.timeout(120)
def test_a_rate_limit_spaces_the_starts(make_producer, start_worker, tmp_path):
    producer = make_producer(announce=False)
    producer.limit("rztasks:span", per_s=4.0)
    for n in range(3):
        start_worker(f"w{n}", "--slots", "2", connect=producer.endpoint)
    assert producer.submit(rztasks.add, 1, 1).result(timeout=30) == 2  # workers are up
    log = tmp_path / "rated"
    futures = [producer.submit(rztasks.span, str(log)) for _ in range(12)]
    for future in futures:
        future.result(timeout=60)
    starts = sorted(start for start, _, _ in spans(log))
    # a bucket of 4, then 4 a second: 12 starts take at least 2 s; any 1 s holds at most 8
    assert starts[-1] - starts[0] >= 2.0 - 0.05
    assert all(sum(1 for t in starts if s <= t < s + 1.0) <= 8 for s in starts)
    with pytest.raises(ValueError, match="max_running"):
        producer.limit("rztasks:span", max_running=0)
    with pytest.raises(ValueError, match="per_s"):
        producer.limit("rztasks:span", per_s=-1)

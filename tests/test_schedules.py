"""Periodic jobs over real sockets with real worker processes (DESIGN §9): an every-1-s
schedule over a few seconds, overlap=False, pause/resume/remove, and a durable restart that
fires a missed slot once and never a slot twice. When slots fall is tested without sockets,
clock injected, in tests/test_schedule.py."""

from __future__ import annotations

import time

import pytest

import rztasks
from conftest import GROUP
from freelance_rz import Producer

pytestmark = pytest.mark.timeout(90)


def starts(path) -> list[float]:
    return [float(line.split()[0]) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_every_second_over_a_few_seconds_then_pause_resume_remove(make_producer, start_worker, tmp_path):
    producer = make_producer(announce=False)
    start_worker("w1", connect=producer.endpoint)
    log = tmp_path / "runs"
    made = time.time()  # (its first slot is one second after schedule() was called)
    handle = producer.schedule(rztasks.span, str(log), every_s=1.0)
    wait_for(lambda: len(starts(log)) >= 4, 30, "4 runs")
    runs, elapsed = starts(log), time.time() - made
    assert runs[0] >= made + 1.0 - 0.05  # the first slot is every_s after it was made
    assert len(runs) <= elapsed + 0.05  # one run a slot, never more (a late run stays late)
    assert handle.info()["last"] == pytest.approx(made + len(runs) * 1.0, abs=1.1)
    handle.pause()
    paused_at = len(starts(log))
    time.sleep(2.2)
    assert len(starts(log)) <= paused_at + 1  # at most one already on its way
    handle.resume()
    wait_for(lambda: len(starts(log)) >= paused_at + 2, 30, "runs after resume")
    info = handle.info()
    assert info["runs"] >= 5 and not info["paused"] and info["every_s"] == 1.0
    handle.remove()
    assert handle.info() is None
    settled = len(starts(log))
    time.sleep(1.5)
    assert len(starts(log)) <= settled + 1


def test_overlap_false_skips_runs_while_the_last_one_runs(make_producer, start_worker, tmp_path):
    producer = make_producer(announce=False)
    start_worker("w1", "--slots", "4", connect=producer.endpoint)
    log = tmp_path / "runs"
    handle = producer.schedule(rztasks.span, str(log), 2.5, every_s=1.0, overlap=False)
    wait_for(lambda: len(starts(log)) >= 2, 40, "2 runs")
    records = [tuple(map(float, line.split()[:2])) for line in log.read_text().splitlines()]
    assert records[1][0] >= records[0][1] - 0.05  # never two at once
    assert handle.info()["skipped"] >= 1
    handle.remove()


def submitted(producer, task="rztasks:span") -> int:
    """Jobs of ``task`` this producer submitted (restored jobs are not counted)."""
    tasks = producer.status(detail=True)["tasks"]
    return next((t["submitted"] for t in tasks if t["task"] == task), 0)


def test_a_restart_fires_a_missed_slot_once_and_no_slot_twice(tmp_path, start_worker):
    store, log = tmp_path / "jobs.sqlite", tmp_path / "runs"
    first = Producer(GROUP, interfaces=["127.0.0.1"], store=store, announce=False).start()
    start_worker("w1", connect=first.endpoint)
    handle = first.schedule(rztasks.span, str(log), every_s=1.0, name="tick")
    wait_for(lambda: len(starts(log)) >= 2, 30, "2 runs")
    last = handle.info()["last"]
    first.close()
    time.sleep(3.5)  # three slots pass while it is down
    again = Producer(GROUP, interfaces=["127.0.0.1"], store=store, announce=False).start()
    try:
        # the kept schedule fires at start, once for the three missed slots, for the latest
        wait_for(lambda: submitted(again) >= 1, 10, "the missed slot's run")
        kept = again.schedule(rztasks.span, str(log), every_s=1.0, name="tick")  # declared again
        assert kept.id == handle.id
        info = kept.info()
        assert info["last"] >= last + 3.0 and submitted(again) == 1
        wait_for(lambda: submitted(again) >= 3, 10, "two more slots")
        fired = kept.info()["last"]
        assert 1.5 <= fired - info["last"] <= 2.5 and submitted(again) == 3  # each slot once
        start_worker("w2", connect=again.endpoint)
        wait_for(lambda: again.status()["pending"] == 0 and again.status()["leased"] == 0, 30,
                 "every run done")  # runs kept from before the restart too: nothing lost
        kept.remove()
    finally:
        again.close()


def test_overlap_false_holds_across_a_restart(tmp_path, start_worker):
    """A run is still going when the producer restarts on its store (same port: the worker
    keeps its job and hands it to the new process). The kept schedule fires at start and
    the app declares it again: neither starts a run beside the one still going (the store
    keeps each schedule's latest job; a fresh user's find: without it two ran at once)."""
    store, log = tmp_path / "jobs.sqlite", tmp_path / "runs"
    first = Producer(GROUP, interfaces=["127.0.0.1"], store=store, announce=False).start()
    port = int(first.endpoint.rsplit(":", 1)[1])
    start_worker("w1", "--slots", "2", connect=first.endpoint)
    first.schedule(rztasks.span, str(log), 4.0, every_s=1.0, overlap=False, name="slow")
    wait_for(lambda: first.status()["leased"] == 1, 30, "the first run started")
    first.close()
    again = Producer(GROUP, interfaces=["127.0.0.1"], store=store, announce=False, port=port).start()
    try:
        kept = again.schedule(rztasks.span, str(log), 4.0, every_s=1.0, overlap=False, name="slow")
        wait_for(lambda: len(starts(log)) >= 2, 40, "a second run after the first one ended")
        kept.remove()
        runs = sorted(tuple(map(float, line.split()[:2])) for line in log.read_text().splitlines())
        for (_, ended), (started, _) in zip(runs, runs[1:], strict=False):
            assert started >= ended - 0.05, runs  # never two at once
        assert kept.info() is None
    finally:
        again.close()

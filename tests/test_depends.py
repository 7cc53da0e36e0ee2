"""Dependencies between jobs (DESIGN §9), over real sockets with real worker processes: a
Future passed as an argument is replaced by its result, ``options(after=...)`` orders, a
failed or cancelled dependency fails its whole chain at once, a Future of another producer is
refused at submit, and the edges survive a durable restart."""

from __future__ import annotations


import pytest

import rztasks
from conftest import GROUP
from freelance_rz import DependencyFailed, JobFailed, Producer

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def producer(make_producer, start_worker):
    producer = make_producer(announce=False)
    start_worker("w1", "--slots", "3", connect=producer.endpoint)
    return producer


def test_a_diamond_runs_each_job_once_with_its_dependencies_results(producer, tmp_path):
    top = producer.submit(rztasks.add, 1, 2)
    left = producer.submit(rztasks.add, top, 10)
    right = producer.submit(rztasks.add, top, 100)
    bottom = producer.submit(rztasks.echo, [left, right], k={"x": left, "top": top})
    assert bottom.result(timeout=30) == {"args": [[13, 103]], "kwargs": {"k": {"x": 13, "top": 3}}}
    assert (top.result(), left.result(), right.result()) == (3, 13, 103)
    status = producer.status(detail=True)
    assert (status["done"], status["failed"], status["blocked"]) == (4, 0, 0)


def test_after_orders_without_passing_data(producer, tmp_path):
    log = tmp_path / "order"
    first = producer.submit(rztasks.mark, str(log), 0.5)
    second = producer.options(after=[first]).submit(rztasks.mark, str(log), 0.0)
    assert producer.status()["blocked"] == 1
    second.result(timeout=30)
    assert first.done()
    assert len(log.read_text().splitlines()) == 2  # it ran after the first had finished
    # a Future of a job that already succeeded: its result goes in at once
    assert producer.submit(rztasks.add, first, "!").result(timeout=30) == "w1!"


def test_a_failed_dependency_fails_its_chain_at_once(producer):
    bad = producer.submit(rztasks.fail, "no such page")
    middle = producer.submit(rztasks.add, bad, 1)
    end = producer.submit(rztasks.add, middle, 1)
    beside = producer.options(after=[bad]).submit(rztasks.add, 1, 1)
    with pytest.raises(JobFailed):
        bad.result(timeout=30)
    with pytest.raises(DependencyFailed) as info:
        middle.result(timeout=5)
    assert info.value.dependency == bad.job_id and info.value.remote_type == "DependencyFailed"
    assert f"job {bad.job_id} (rztasks:fail), which it depends on, failed: ValueError: no such page" \
        in str(info.value)
    with pytest.raises(DependencyFailed) as info:
        end.result(timeout=5)
    assert info.value.dependency == middle.job_id
    with pytest.raises(DependencyFailed):
        beside.result(timeout=5)
    assert producer.status()["failed"] == 4


def test_a_cancelled_dependency_fails_its_dependents(producer):
    waiting = producer.options(delay_s=60).submit(rztasks.add, 1, 1)
    after = producer.submit(rztasks.add, waiting, 1)
    assert waiting.cancel()
    with pytest.raises(DependencyFailed, match="was cancelled"):
        after.result(timeout=10)
    done_already = producer.submit(rztasks.add, waiting, 2)  # cancelled before this submit
    with pytest.raises(DependencyFailed):
        done_already.result(timeout=10)


def test_a_future_of_another_producer_is_refused_at_submit(make_producer):
    one, other = make_producer(announce=False), make_producer(announce=False)
    theirs = one.options(delay_s=60).submit(rztasks.add, 1, 1)
    with pytest.raises(ValueError, match="another producer"):
        other.submit(rztasks.add, theirs, 1)
    with pytest.raises(ValueError, match="another producer"):
        other.submit(rztasks.echo, {"deep": [theirs]})
    with pytest.raises(ValueError, match="another producer"):
        other.options(after=[theirs]).submit(rztasks.add, 1, 1)
    with pytest.raises(TypeError, match="after must be a list of Futures"):
        other.options(after=[42])
    assert other.status()["pending"] + other.status()["blocked"] == 0
    theirs.cancel()


def test_dependency_edges_survive_a_restart(tmp_path, start_worker):
    store, log = tmp_path / "jobs.sqlite", tmp_path / "runs"
    first = Producer(GROUP, interfaces=["127.0.0.1"], store=store, announce=False).start()
    top = first.options(delay_s=1.0).submit(rztasks.mark, str(log))
    middle = first.submit(rztasks.add, top, "+m")
    end = first.options(after=[middle]).submit(rztasks.echo, middle)
    assert first.status()["blocked"] == 2
    first.close()
    again = Producer(GROUP, interfaces=["127.0.0.1"], store=store, announce=False).start()
    try:
        assert again.status()["blocked"] == 2 and again.status()["deferred"] == 1
        start_worker("w2", connect=again.endpoint)
        assert again.get(end.job_id).result(timeout=30) == {"args": ["w2+m"], "kwargs": {}}
        assert again.get(middle.job_id).result(timeout=5) == "w2+m"
        assert len(log.read_text().splitlines()) == 1  # each ran once
    finally:
        again.close()

"""Prometheus metrics over real sockets: a producer's endpoint scraped over HTTP shows what
its ``status()`` says (pending before any worker, a running job, then every outcome by task,
with wait and run histograms), and a worker's endpoint shows its slots and the jobs it ran."""

from __future__ import annotations

import socket
import time
import urllib.request

import pytest

pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

pytestmark = pytest.mark.timeout(90)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a metrics endpoint: (name, sorted labels) -> value."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text) for sample in family.samples
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def job_counts(samples, task: str) -> dict[str, float]:
    return {dict(labels)["outcome"]: value for (name, labels), value in samples.items()
            if name == "freelance_rz_jobs_total" and dict(labels)["task"] == task}


def test_producer_metrics_match_status_and_worker_metrics_count_its_jobs(make_producer, start_worker):
    producer = make_producer(announce=False, metrics_port=0)
    assert producer.metrics_url is not None and producer.metrics_url.startswith("http://127.0.0.1:")
    adds = [producer.submit("rztasks:add", i, 1) for i in range(6)]
    fails = [producer.submit("rztasks:fail", f"no {i}") for i in range(2)]
    samples, status = scrape(producer.metrics_url), producer.status(detail=True)
    assert samples[("freelance_rz_jobs_pending", ())] == status["pending"] == 8
    assert job_counts(samples, "rztasks:add")["submitted"] == 6

    port = free_port()
    start_worker("m1", "--slots", "1", "--metrics-port", f"127.0.0.1:{port}", connect=producer.endpoint)
    assert [f.result(timeout=30) for f in adds] == list(range(1, 7))
    for future in fails:
        assert future.exception(timeout=30) is not None
    slow = producer.submit("rztasks:steps", 20, 0.1)  # runs ~2 s: leased while we look
    wait_for(lambda: producer.status()["leased"] == 1)

    samples, status = scrape(producer.metrics_url), producer.status(detail=True)
    assert samples[("freelance_rz_jobs_leased", ())] == status["leased"] == 1
    assert samples[("freelance_rz_jobs_pending", ())] == status["pending"] == 0
    assert samples[("freelance_rz_workers", ())] == status["workers"] == 1
    by_task = {entry["task"]: entry for entry in status["tasks"]}
    for task in ("rztasks:add", "rztasks:fail"):
        counts = job_counts(samples, task)
        for outcome in ("submitted", "done", "failed", "retried", "dead", "cancelled"):
            assert counts[outcome] == by_task[task][outcome], (task, outcome)
        runs = samples[("freelance_rz_run_seconds_count", (("task", task),))]
        waits = samples[("freelance_rz_queue_wait_seconds_count", (("task", task),))]
        assert runs == waits == (6 if task == "rztasks:add" else 2)
    assert sum(job_counts(samples, t)["done"] for t in by_task) == status["done"] == 6
    assert sum(job_counts(samples, t)["failed"] for t in by_task) == status["failed"] == 2

    worker = f"http://127.0.0.1:{port}/metrics"
    samples = scrape(worker)
    assert samples[("freelance_rz_worker_slots", (("state", "busy"),))] == 1
    assert samples[("freelance_rz_worker_jobs_total", (("outcome", "done"), ("task", "rztasks:add")))] == 6
    assert samples[("freelance_rz_worker_jobs_total", (("outcome", "failed"), ("task", "rztasks:fail")))] == 2
    assert samples[("freelance_rz_worker_producers", ())] == 1
    slow.result(timeout=30)
    wait_for(lambda: scrape(worker)[("freelance_rz_worker_slots", (("state", "free"),))] == 1)


def test_metrics_endpoint_ends_with_the_producer(make_producer):
    producer = make_producer(announce=False, metrics_port=0)
    url = producer.metrics_url
    assert url is not None
    assert ("freelance_rz_jobs_pending", ()) in scrape(url)
    producer.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=5)

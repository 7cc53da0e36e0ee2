"""Hostile mDNS (issue 11, findings 1-3): announcements anyone on the network can send. None
of them may crash a worker or freelance-status, exhaust its file descriptors, hand a
producer's leases or results to someone else, or cut a worker off from a producer that
answers. Every attack is real mDNS on loopback, from a process of its own (rzmdns.py)."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

import pytest

import rztasks
from conftest import GROUP, TESTS_DIR, WorkerProcess
from freelance_rz import Producer
from freelance_rz.discovery import parse_announcement
from hostile_kit import FakeProducer, MdnsForger, fd_count, txt, wait_until

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("endpoint", [
    "tcp://nohostport", "tcp://127.0.0.1:0", "tcp://127.0.0.1:99999", "tcp://999.1.1.1:5",
    "tcp://0.0.0.0:5555", "tcp://224.0.0.251:5353", "tcp://a b:5", "tcp://host:5\n",
    "ipc:///tmp/x", "tcp://" + "a" * 300 + ":5",
])
def test_an_announcement_with_a_bad_endpoint_is_malformed(endpoint):
    props = {k.encode(): v.encode() for k, v in txt("p1", "g", endpoint).items()}
    assert parse_announcement("p1._x._tcp.local.", props) is None
    props[b"ep"] = f"{endpoint},tcp://127.0.0.1:5555".encode()  # the good one is kept
    assert parse_announcement("p1._x._tcp.local.", props).endpoints == ("tcp://127.0.0.1:5555",)


@pytest.mark.parametrize("field, value", [
    ("id", ""), ("id", "x" * 65), ("id", "a\x1b[2Jb"), ("sk", "k/../k"), ("g", ""), ("g", "g" * 64),
    ("pk", "short"), ("pk", "\x00" * 40),
])
def test_an_announcement_with_a_bad_field_is_malformed(field, value):
    props = {k.encode(): v.encode() for k, v in txt("p1", "g", "tcp://127.0.0.1:5").items()}
    props[field.encode()] = value.encode()
    assert parse_announcement("p1._x._tcp.local.", props) is None


def status_discover(*extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "import sys; from freelance_rz.cli import status_main; sys.exit(status_main())",
         "--discover", "--group", GROUP, "--interface", "127.0.0.1", "--json", "--wait", "3", *extra],
        capture_output=True, text=True, timeout=60, cwd=TESTS_DIR,
    )


def test_malformed_endpoints_crash_no_worker_and_no_status(make_producer, start_worker, tmp_path):
    """Finding 1: TXT ep=tcp://nohostport passed the prefix check and its connect raised
    ZMQError in every --discover worker (exit 1) and in freelance-status --discover."""
    bad = ["tcp://nohostport", "tcp://127.0.0.1:99999", "tcp://[zz::1]:5", "tcp://a b:5"]
    with MdnsForger(tmp_path, [(f"bad{i}", txt(f"bad{i}", GROUP, ep)) for i, ep in enumerate(bad)]):
        worker = start_worker("w1")
        producer = make_producer()
        assert producer.submit(rztasks.add, 1, 2).result(timeout=30) == 3
        status = status_discover()
        assert status.returncode == 0, status.stderr
        assert [row["producer_id"] for row in json.loads(status.stdout)] == [producer.producer_id]
        time.sleep(1.0)
        assert worker.proc.poll() is None, worker.log()
        assert producer.submit(rztasks.add, 2, 2).result(timeout=15) == 4


@pytest.fixture
def limited_worker(tmp_path):
    """Start a worker whose open-file limit (soft and hard) is 1024, as on many hosts."""
    started: list[WorkerProcess] = []

    def start(label: str, *extra: str) -> WorkerProcess:
        args = ["--discover", "--interface", "127.0.0.1", "--tasks", "rztasks", "--group", GROUP,
                "--name", label, *extra]
        worker = WorkerProcess.__new__(WorkerProcess)
        worker.label, worker.log_path = label, tmp_path / f"{label}.log"
        worker._log = open(worker.log_path, "wb")
        worker.proc = subprocess.Popen(
            [sys.executable, "-m", "freelance_rz.cli", *args], cwd=TESTS_DIR,
            stdout=worker._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024)),
        )
        worker.started_at = time.time()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill()
        print(f"--- log of {worker.label} ---\n{worker.log()}")


def test_an_mdns_flood_leaves_the_worker_serving_with_bounded_descriptors(make_producer, limited_worker, tmp_path):
    """Finding 2: 400 fake producers announced; the worker added 342 of them (three ZeroMQ
    sockets each) and died with 'Too many open files'. Now it keeps a bounded number, a real
    producer announced after the flood is still served, and its descriptors stay bounded."""
    flood = [(f"fake{i}", txt(f"fake{i}", GROUP, f"tcp://127.0.0.1:{21000 + i}")) for i in range(400)]
    worker = limited_worker("w1")
    wait_until(lambda: "started" in worker.log(), 30, "the worker started")
    with MdnsForger(tmp_path, flood):
        time.sleep(4.0)  # the whole flood is heard, and its endpoints found unanswering
        peak = fd_count(worker.pid)
        producer = make_producer()
        assert producer.submit(rztasks.add, 20, 22).result(timeout=45) == 42
        for _ in range(10):
            peak = max(peak, fd_count(worker.pid))
            time.sleep(0.3)
        print(f"worker descriptors with 400 fake producers announced: peak {peak} (limit 1024)")
        assert worker.proc.poll() is None, worker.log()
        assert peak < 1000
        assert "Too many open files" not in worker.log()
        assert producer.submit(rztasks.add, 1, 1).result(timeout=15) == 2


@pytest.mark.parametrize("secure", [False, True])
def test_a_forged_store_key_gets_no_leases_and_no_results(make_producer, start_worker, tmp_path, secure):
    """Finding 3a: an announcement with a durable producer's store key (and CURVE key) and the
    attacker's endpoint made the worker hand it the producer's leases and unacknowledged
    results. Now nothing moves while the real producer answers: its job completes there."""
    from test_security import Keys

    keys = Keys(tmp_path / "keys")
    settings, worker_args = {}, ()
    if secure:
        settings = {"secret_key": keys.pair("prod"), "authorized_workers": keys.trust("prod-auth", "w1")}
        worker_args = ("--key", str(keys.pair("w1")), "--trust", str(keys.trust("w1-trust", "prod")))
    producer = make_producer(store=str(tmp_path / "jobs.sqlite"), **settings)
    worker = start_worker("w1", "--slots", "1", *worker_args)
    future = producer.submit(rztasks.whoami, 3.0)
    wait_until(lambda: producer.status()["leased"] == 1, 30, "the job never started")
    with FakeProducer() as fake:
        forged = txt("forged1", GROUP, fake.endpoint, sk=producer.store_key)
        if secure:
            forged["pk"] = producer._curve.keys.public.decode()
        with MdnsForger(tmp_path, [("forged1", forged)]):
            assert future.result(timeout=30)["worker"] == "w1"
            time.sleep(1.0)
        assert "Result" not in fake.verbs() and "Beat" not in fake.verbs(), fake.verbs()
    assert "restarted as" not in worker.log()
    assert producer.status()["done"] == 1


def test_forged_goodbyes_do_not_cut_off_a_producer_that_answers(make_producer, start_worker, tmp_path):
    """Finding 3b: a forged mDNS goodbye every 2 s dropped a still-answering producer again
    and again (throughput 97 jobs/10 s fell to 42 jobs/20 s). Liveness never comes from
    mDNS: now a goodbye makes the worker ask, and an answer keeps it serving."""
    producer = make_producer()
    worker = start_worker("w1", "--slots", "1")
    assert producer.submit(rztasks.add, 0, 0).result(timeout=30) == 0
    name = f"{producer.producer_id}._freelance-rz._tcp.local."
    with MdnsForger(tmp_path, goodbye=[name], goodbye_every_s=1.0):
        finished, gaps, last = 0, [], time.monotonic()
        end = last + 10.0
        while time.monotonic() < end:
            producer.submit(rztasks.whoami, 0.05).result(timeout=30)
            now = time.monotonic()
            gaps.append(now - last)
            last, finished = now, finished + 1
    print(f"{finished} jobs of 50 ms in 10 s under forged goodbyes every second; longest gap "
          f"{max(gaps):.2f} s")
    assert max(gaps) < 2.5, gaps  # the old worker dropped it until the next announcement (10 s)
    assert "forgotten" not in worker.log() and "withdrew" not in worker.log()


def test_a_forged_instance_id_seen_first_does_not_hide_the_real_producer(start_worker, tmp_path):
    """Finding 3c: a fake announcement with the real producer's instance id and another
    endpoint, seen first, made the worker ignore the real one. Peers are endpoints now."""
    producer = Producer(GROUP, interfaces=["127.0.0.1"])
    try:
        forged = txt(producer.producer_id, GROUP, "tcp://127.0.0.1:9")
        with MdnsForger(tmp_path, [("forged-id", forged)]):
            worker = start_worker("w1")
            wait_until(lambda: "tcp://127.0.0.1:9" in worker.log(), 20, "the worker heard the forgery")
            producer.start()
            assert producer.submit(rztasks.add, 3, 4).result(timeout=30) == 7
    finally:
        producer.close()

"""Hostile bodies (issue 11, findings 4 and 12): a message body is decoded only within its
verb's size limit and a budget of maps and arrays, so 16 MiB of empty maps costs neither a
producer nor a worker memory or time; extension types are refused everywhere; a worker
declines a JOB for a claim it never sent. Real sockets on loopback."""

from __future__ import annotations

import gc
import os
import threading
import time

import msgpack
import pytest
import zmq

import rztasks
from freelance_rz import ProtocolError
from freelance_rz.core import wire as p
from freelance_rz.core import payload as pl
from hostile_kit import rss_kib, wait_until

pytestmark = pytest.mark.timeout(120)

SIXTEEN_MIB = 16 * 1024 * 1024


def empty_maps_body(size: int, **fields) -> bytes:
    """A msgpack map of ``fields`` plus an unknown field ``x``: arrays of empty maps, about
    ``size`` bytes in all (each empty map is one byte and ~64 bytes once decoded)."""
    inner = b"\xdd" + (65536).to_bytes(4, "big") + b"\x80" * 65536  # array32 of 65,536 {}
    count = size // len(inner)
    if count:
        x = b"\xdd" + count.to_bytes(4, "big") + inner * count
    else:
        x = b"\xdd" + (size - 64).to_bytes(4, "big") + b"\x80" * (size - 64)
    head = msgpack.packb(fields)
    return bytes([head[0] + 1]) + head[1:] + msgpack.packb("x") + x  # fixmap, one key more


def dealer(endpoint: str, identity: bytes = b"") -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if identity:
        sock.setsockopt(zmq.ROUTING_ID, identity)
    sock.connect(endpoint)
    return sock


def reply(sock: zmq.Socket, timeout_ms: int = 5000) -> p.Message:
    assert sock.poll(timeout_ms), "no reply"
    return p.decode_reply(sock.recv_multipart())


def test_a_16_mib_claim_of_empty_maps_costs_the_producer_nothing(make_producer):
    """Before: the producer went from 35 to 1,229 MiB and its I/O thread was blocked 3.8 s."""
    producer = make_producer()
    sock = dealer(producer.endpoint)
    try:
        body = empty_maps_body(SIXTEEN_MIB, rid=1, wait_ms=0)
        assert len(body) > 15 * 1024 * 1024
        gc.collect()
        before = rss_kib(os.getpid())  # the attack's own 16 MiB are counted out
        started = time.monotonic()
        sock.send_multipart([p.SIGNATURE, b"CLAIM", body])
        err = reply(sock)
        assert isinstance(err, p.Err) and err.code == p.E_MALFORMED and "over its limit" in err.message
        small = empty_maps_body(60 * 1024, rid=2, wait_ms=0)  # under the size limit: the budget
        sock.send_multipart([p.SIGNATURE, b"CLAIM", small])
        err = reply(sock)
        assert isinstance(err, p.Err) and err.code == p.E_MALFORMED
        assert producer.status(timeout_s=2)["bad_messages"] == 2
        answered_in = time.monotonic() - started
        del body
        gc.collect()
        grown = (rss_kib(os.getpid()) - before) / 1024
        print(f"producer: 16 MiB CLAIM of empty maps refused; RSS +{grown:.1f} MiB; "
              f"both answered within {answered_in:.2f} s")
        assert grown < 50
    finally:
        sock.close()


def test_a_rogue_producers_16_mib_nojob_costs_the_worker_nothing(start_worker):
    """Before: a worker decoded a 16 MiB NOJOB of empty maps whole (+1.2 GB)."""
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    worker = start_worker("w1", "--slots", "1", connect=f"tcp://127.0.0.1:{port}")
    try:
        assert router.poll(30000), "the worker never claimed"
        identity, *frames = router.recv_multipart()
        claim = p.decode_request(frames)
        time.sleep(0.5)
        before = rss_kib(worker.pid)
        body = empty_maps_body(SIXTEEN_MIB, rid=claim.rid)
        router.send_multipart([identity, p.SIGNATURE, b"NOJOB", body])
        wait_until(lambda: "bad message" in worker.log(), 20, "the worker never saw the NOJOB")
        grown = (rss_kib(worker.pid) - before) / 1024
        print(f"worker: 16 MiB NOJOB of empty maps dropped; RSS +{grown:.1f} MiB")
        assert grown < 50
        assert worker.proc.poll() is None
    finally:
        router.close()


def test_extension_types_are_refused_at_submit_and_in_results(make_producer):
    """Finding 12: msgpack ExtType and Timestamp values passed through, although
    security.md says no extension types are accepted."""
    producer = make_producer()
    for value in (msgpack.ExtType(5, b"x"), msgpack.Timestamp(1, 2)):
        with pytest.raises(TypeError, match="extension types"):
            producer.submit(rztasks.echo, value)
        with pytest.raises(TypeError, match="extension types"):
            pl.pack_value({"a": [value]})
    # a worker that answers with a Timestamp inside its result: the Future gets an error
    sock = dealer(producer.endpoint, b"rogue-1")
    try:
        future = producer.submit(rztasks.add, 1, 2)
        sock.send_multipart(p.encode(p.Claim(rid=1, wait_ms=5000, tasks=("rztasks",))))
        job = reply(sock)
        assert isinstance(job, p.Job)
        sneaky = msgpack.packb({"t": msgpack.Timestamp(1, 2)})
        sock.send_multipart(p.encode(p.Result(rid=2, job_id=job.job_id, lease_id=job.lease_id,
                                              ok=True, payload=sneaky)))
        assert isinstance(reply(sock), p.Ack)
        with pytest.raises(ProtocolError, match="not msgpack"):
            future.result(timeout=5)
    finally:
        sock.close()


def test_a_worker_declines_a_job_for_a_claim_it_never_sent(start_worker, tmp_path):
    """Finding 12: workers ran JOBs answering claims they never sent (protocol.md §7.2 says
    MUST DECLINE)."""
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    start_worker("w1", "--slots", "1", connect=f"tcp://127.0.0.1:{port}")
    marks = tmp_path / "ran"
    payload = pl.pack_call("rztasks:mark", [str(marks)], {})
    seen: list[p.Message] = []
    stop = threading.Event()
    try:
        assert router.poll(30000), "the worker never claimed"
        identity, *frames = router.recv_multipart()
        seen.append(p.decode_request(frames))
        router.send_multipart([identity, *p.encode(p.Job(
            rid=987654321, job_id=5, lease_id=77, attempt=1, lease_ms=1000, payload=payload,
        ))])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(isinstance(m, p.Decline) for m in seen):
            if router.poll(100):
                identity, *frames = router.recv_multipart()
                msg = p.decode_request(frames)
                seen.append(msg)
                if isinstance(msg, p.Decline):
                    router.send_multipart([identity, *p.encode(p.Ack(rid=msg.rid))])
        declines = [m for m in seen if isinstance(m, p.Decline)]
        assert [(d.job_id, d.lease_id) for d in declines] == [(5, 77)]
        time.sleep(0.5)
        assert not marks.exists()
    finally:
        stop.set()
        router.close()

"""Live fuzzing: 100,000 random and mutated messages at a running producer and at a running
worker. Neither may crash or grow without bound, and each still serves a normal job afterwards.
Seeded, so a failure replays."""

from __future__ import annotations

import os
import random
import time

import pytest
import zmq

import rztasks
from freelance_rz.core import wire as p
from freelance_rz.core import payload as pl

pytestmark = pytest.mark.timeout(180)

MESSAGES = 100_000
VERBS = [b"CLAIM", b"RESULT", b"BEAT", b"DECLINE", b"CANCEL_CLAIM", b"BYE", b"STATUS", b"JOB",
         b"NOJOB", b"ACK", b"BEAT_ACK", b"STATUS_REPLY", b"ERR", b"", b"\xff\xfe"]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def valid_samples(rng: random.Random) -> list[p.Message]:
    big = rng.getrandbits(63)
    return [
        p.Claim(rid=rng.getrandbits(63), wait_ms=rng.choice([0, 1, 10, 2**40]), tasks=("rztasks",)),
        p.Result(rid=1, job_id=rng.randint(0, 50), lease_id=big, ok=rng.random() < 0.5,
                 payload=rng.randbytes(rng.randint(0, 40)),
                 claim=p.Claim(rid=2, wait_ms=5, tasks=("rztasks",)) if rng.random() < 0.3 else None),
        p.Beat(rid=3, leases=tuple(rng.getrandbits(63) for _ in range(rng.randint(0, 300)))),
        p.Decline(rid=4, job_id=rng.randint(0, 50), lease_id=big),
        p.CancelClaim(rid=5, claim_rid=big),
        p.Bye(rid=6),
        p.Status(rid=7),
        p.Job(rid=8, job_id=rng.randint(0, 50), lease_id=big, attempt=1, lease_ms=rng.randint(0, 10**6),
              payload=rng.randbytes(rng.randint(0, 40)), timeout_ms=rng.choice([None, 0, 1, 10**9])),
        p.NoJob(rid=9),
        p.Ack(rid=rng.getrandbits(63)),
        p.BeatAck(rid=10, void=tuple(rng.getrandbits(63) for _ in range(rng.randint(0, 5)))),
        p.StatusReply(rid=11, info={"x": rng.random()}),
        p.Err(rid=None, code=rng.randint(0, 9), message="fuzz"),
    ]


def fuzz_frames(rng: random.Random) -> list[bytes]:
    """One hostile message: random frames, a mutated valid one, or a valid one out of place."""
    kind = rng.random()
    if kind < 0.2:
        return [rng.randbytes(rng.randint(0, 64)) for _ in range(rng.randint(1, 5))]
    frames = p.encode(rng.choice(valid_samples(rng)))
    if kind < 0.35:
        return frames  # valid, but forged ids or the wrong direction
    body = bytearray(frames[2])
    if kind < 0.55 and body:
        for _ in range(rng.randint(1, 4)):
            body[rng.randrange(len(body))] = rng.randrange(256)  # bit rot
    elif kind < 0.7:
        body = body[: rng.randint(0, len(body))]  # truncated
    elif kind < 0.8:
        body += rng.randbytes(rng.randint(1, 20))  # trailing junk
    elif kind < 0.9:
        frames[1] = rng.choice(VERBS)
    else:
        frames[0] = rng.choice([b"FRZ2", b"FRZ", b"", b"FRZ1\x00", rng.randbytes(4)])
    frames[2] = bytes(body)
    return frames


def test_fuzz_a_running_producer(make_producer, start_worker):
    producer = make_producer()
    rng = random.Random(20261129)
    before = rss_kib(os.getpid())
    ctx = zmq.Context.instance()
    socks = []
    for i in range(4):  # a few identities, so parked claims and leases spread
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTING_ID, f"fuzz-{i}".encode())
        sock.connect(producer.endpoint)
        socks.append(sock)
    try:
        for n in range(MESSAGES):
            sock = socks[n % 4]
            sock.send_multipart(fuzz_frames(rng))
            if n % 500 == 499:  # read the replies so nothing backs up
                for s in socks:
                    while s.poll(0):
                        s.recv_multipart()
        deadline = time.monotonic() + 30
        while producer.status(timeout_s=10)["bad_messages"] < MESSAGES // 3:
            assert time.monotonic() < deadline, producer.status()
            time.sleep(0.1)
    finally:
        for sock in socks:
            sock.close()
    status = producer.status()
    grown_mib = (rss_kib(os.getpid()) - before) / 1024
    print(f"producer fuzz: {MESSAGES} messages, {status['bad_messages']} answered with ERR, "
          f"RSS {before / 1024:.1f} MiB -> +{grown_mib:.1f} MiB")
    assert grown_mib < 64
    assert status["pending"] == 0 and status["leased"] == 0  # forged results changed nothing
    start_worker("w1")
    assert producer.submit(rztasks.add, 20, 22).result(timeout=20) == 42


def test_fuzz_a_running_worker(start_worker):
    """A fake producer answers the worker's claims with 100,000 hostile replies, then behaves
    and hands it one real job."""
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.RCVTIMEO, 10_000)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    rng = random.Random(7)
    try:
        worker = start_worker("w1", "--slots", "1", connect=f"tcp://127.0.0.1:{port}")
        identity, *frames = router.recv_multipart()  # its first request tells us who it is
        before = rss_kib(worker.pid)
        for n in range(MESSAGES):
            router.send_multipart([identity, *fuzz_frames(rng)])
            if n % 1000 == 999:
                while router.poll(0):
                    router.recv_multipart()  # its CLAIMs, BEATs, DECLINEs
        time.sleep(1.0)
        assert worker.proc.poll() is None, worker.log()[-3000:]
        grown_mib = (rss_kib(worker.pid) - before) / 1024
        print(f"worker fuzz: {MESSAGES} messages, RSS {before / 1024:.1f} MiB -> +{grown_mib:.1f} MiB")
        assert grown_mib < 64
        # now behave: answer its next CLAIM with a real job and expect the RESULT
        deadline = time.monotonic() + 60
        job_sent = False
        while True:
            # after the junk the worker may be backing off (up to 10 s) before it reconnects:
            # wait for its next request, however long that takes within the deadline
            assert time.monotonic() < deadline, "no RESULT for the real job"
            if not router.poll(500):
                continue
            identity, *frames = router.recv_multipart()
            msg = p.decode_request(frames)
            if isinstance(msg, p.Claim) and not job_sent:
                job = p.Job(rid=msg.rid, job_id=1, lease_id=4242, attempt=1, lease_ms=5000,
                            payload=pl.pack_call("rztasks:add", [2, 3], {}))
                router.send_multipart([identity, *p.encode(job)])
                job_sent = True
            elif isinstance(msg, p.Result) and msg.job_id == 1 and msg.lease_id == 4242:
                assert msg.ok and pl.unpack_value(msg.payload) == 5
                router.send_multipart([identity, *p.encode(p.Ack(rid=msg.rid))])
                break
            elif isinstance(msg, p.Beat):
                router.send_multipart([identity, *p.encode(p.BeatAck(rid=msg.rid, void=()))])
    finally:
        router.close()



def test_a_claim_flood_from_one_identity_is_capped_and_starves_no_one(make_producer, start_worker):
    from freelance_rz.core.parked import MAX_PARKED_PER_WORKER

    producer = make_producer(lease_s=10.0)  # the flooder's leases cannot expire in time
    flood = zmq.Context.instance().socket(zmq.DEALER)
    flood.setsockopt(zmq.LINGER, 0)
    flood.setsockopt(zmq.ROUTING_ID, b"flooder")
    flood.setsockopt(zmq.RCVTIMEO, 5000)
    flood.connect(producer.endpoint)
    try:
        for rid in range(1, 3001):
            flood.send_multipart(p.encode(p.Claim(rid=rid, wait_ms=60_000, tasks=("rztasks",))))
        nojob = sum(isinstance(p.decode_reply(flood.recv_multipart()), p.NoJob)
                    for _ in range(3000 - MAX_PARKED_PER_WORKER))
        assert nojob == 3000 - MAX_PARKED_PER_WORKER  # refused at once, not parked
        assert producer.status()["parked_claims"] == MAX_PARKED_PER_WORKER
        start_worker("w1")
        deadline = time.monotonic() + 20
        while producer.status()["parked_claims"] <= MAX_PARKED_PER_WORKER:  # w1 is waiting
            assert time.monotonic() < deadline, producer.status()
            time.sleep(0.05)
        # identities take turns: a job reaches w1 although 1,024 older claims are parked
        futures = [producer.submit(rztasks.whoami, 0.0) for _ in range(5)]
        deadline = time.monotonic() + 5
        while not any(f.done() for f in futures):
            assert time.monotonic() < deadline, producer.status()
            time.sleep(0.05)
    finally:
        flood.close()

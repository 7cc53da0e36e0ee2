"""Scale check M1, run in a process of its own (fresh heap, exact RSS): memory per pending job
with 1,000,000 small jobs pending, and claim rate with 10^6 vs 10^3 pending.

The jobs are of 10 task kinds (modules ``kind0`` to ``kind9``) with mixed requirements: a
third need ``gpu=1``, the kinds 0 and 5 the label ``zone=eu`` (20 requirement signatures);
every claim says it runs all 10 kinds with a GPU free and that label, so it can take any job
and the claim rate measures matching across the signatures.

``scale_pending.py producer OUT``: a real Producer (announce=False, loopback), jobs submitted
through ``Producer.submit`` (so a Future each), claims by a raw DEALER speaking the protocol:
rounds of 500 pipelined CLAIMs (timed) each followed by 500 DECLINEs (untimed, jobs go back to
the head), so the pending count stays put.
``scale_pending.py ledger OUT``: the pure Ledger alone (no Futures, no sockets).
``scale_pending.py delayed OUT``: a real Producer with 1,000 pending jobs, claim rate measured
before and after 1,000,000 more jobs were submitted with ``options(delay_s=3600)`` (DEFERRED:
a heap of due times, never scanned), so the ratio shows what waiting jobs cost the others;
each rate is the median of three measures.
Writes one JSON object to OUT.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import sys
import time

import common  # noqa: F401 - pins FREELANCE_RZ_INTERFACES
import zmq
from freelance_rz import Producer
from freelance_rz.core import wire as p
from freelance_rz.core import payload as pl
from freelance_rz.core.ledger import Ledger
from freelance_rz.core.match import Capabilities, Needs

N_BIG = 1_000_000
N_SMALL = 1_000
ROUNDS = 10
BATCH = 500
KINDS = [f"kind{k}" for k in range(10)]
CAPS = {"tasks": tuple(KINDS), "resources": {"gpu": 1}, "labels": {"zone": "eu"}}


def requirements(i: int) -> tuple[str, dict | None, dict | None]:
    """Job ``i``'s task and requirements (resources, labels)."""
    kind = i % 10
    return (f"kind{kind}:inc", {"gpu": 1} if i % 3 == 0 else None,
            {"zone": "eu"} if kind % 5 == 0 else None)


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def ledger_mode() -> dict:
    ledger = Ledger(lease_s=600, max_attempts=3)
    jobs = []  # not counted: payloads and requirements as a producer's submit makes them
    for i in range(N_BIG):
        task, resources, labels = requirements(i)
        jobs.append((pl.pack_call(task, (i,), {}), Needs.of(task, resources, labels)))
    gc.collect()
    before = rss()
    for i in range(N_SMALL):
        ledger.submit(i, jobs[i][0], needs=jobs[i][1])
    rate_small = ledger_claim_rate(ledger)
    t = time.perf_counter()
    for i in range(N_SMALL, N_BIG):
        ledger.submit(i, jobs[i][0], needs=jobs[i][1])
    submit_rate = (N_BIG - N_SMALL) / (time.perf_counter() - t)
    gc.collect()
    after = rss()
    rate_big = ledger_claim_rate(ledger)
    return {"bytes_per_job": (after - before) / N_BIG, "claims_per_s_1e3": rate_small,
            "claims_per_s_1e6": rate_big, "submits_per_s": submit_rate}


def ledger_claim_rate(ledger: Ledger) -> float:
    claimed = 0
    elapsed = 0.0
    caps = Capabilities(frozenset(KINDS), CAPS["resources"], CAPS["labels"], 2**26)
    for r in range(ROUNDS + 1):  # round 0 warms up, untimed
        t = time.perf_counter()
        leases = [ledger.claim(b"w", t, caps) for _ in range(BATCH)]
        elapsed += time.perf_counter() - t
        for lease in leases:
            ledger.release(b"w", lease.job_id, lease.lease_id)
        if r == 0:
            elapsed = 0.0
        else:
            claimed += BATCH
    return claimed / elapsed


class Dealer:
    def __init__(self, endpoint: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.rid = 0

    def send(self, msg) -> None:
        self.sock.send_multipart(p.encode(msg))

    def recv(self):
        return p.decode_reply(self.sock.recv_multipart())

    def next_rid(self) -> int:
        self.rid += 1
        return self.rid

    def status(self) -> dict:
        self.send(p.Status(rid=self.next_rid()))
        while True:
            msg = self.recv()
            if isinstance(msg, p.StatusReply):
                return msg.info

    def claim_rate(self) -> float:
        claimed = 0
        elapsed = 0.0
        for r in range(ROUNDS + 1):  # round 0 warms up, untimed
            t = time.perf_counter()
            for _ in range(BATCH):
                self.send(p.Claim(rid=self.next_rid(), wait_ms=0, **CAPS))
            jobs = [self.recv() for _ in range(BATCH)]
            elapsed += time.perf_counter() - t
            assert all(isinstance(j, p.Job) for j in jobs), jobs[:3]
            for j in jobs:
                self.send(p.Decline(rid=self.next_rid(), job_id=j.job_id, lease_id=j.lease_id))
            for _ in jobs:
                self.recv()
            if r == 0:
                elapsed = 0.0
            else:
                claimed += BATCH
        return claimed / elapsed


def median_rate(dealer: Dealer, times: int = 3) -> float:
    """The median of ``times`` claim-rate measures: one measure is about a second, and one
    garbage collection or a neighbour's burst in it moves it by half."""
    return statistics.median(dealer.claim_rate() for _ in range(times))


class Stuck(Exception):
    pass


def wait_pending(dealer: Dealer, n: int, timeout: float = 60.0, key: str = "pending") -> None:
    deadline = time.monotonic() + timeout
    while (pending := dealer.status()[key]) < n:
        if time.monotonic() > deadline:
            raise Stuck(f"producer ingested {pending} of {n} submitted jobs; "
                        f"no progress for {timeout} s (the rest never reached its I/O thread)")
        time.sleep(0.05)


def producer_mode() -> dict:
    producer = Producer("bench-scale", interfaces=["127.0.0.1"], announce=False, lease_s=600).start()
    dealer = Dealer(producer.endpoint)
    futures = []
    options = {}  # one JobOptions per kind of requirements, made once
    submits = []
    for i in range(N_BIG):
        task, resources, labels = requirements(i)
        key = (resources is not None, labels is not None)
        if key not in options:
            options[key] = producer.options(resources=resources, labels=labels)
        submits.append((options[key].submit, task))
    for i in range(N_SMALL):
        submit, task = submits[i]
        futures.append(submit(task, i))
    wait_pending(dealer, N_SMALL)
    rate_small = dealer.claim_rate()
    gc.collect()
    before = rss()
    t = time.perf_counter()
    for i in range(N_SMALL, N_BIG):
        submit, task = submits[i]
        futures.append(submit(task, i))
    wait_pending(dealer, N_BIG)
    submit_rate = (N_BIG - N_SMALL) / (time.perf_counter() - t)
    gc.collect()
    after = rss()
    rate_big = dealer.claim_rate()
    # Does close() come back with this many pending jobs? (cancels 10^6 Futures)
    t = time.perf_counter()
    producer.close(timeout_s=20)
    close_s = time.perf_counter() - t
    alive = producer._started and producer._io.is_alive()
    return {"bytes_per_job": (after - before) / (N_BIG - N_SMALL), "claims_per_s_1e3": rate_small,
            "claims_per_s_1e6": rate_big, "submits_per_s": submit_rate,
            "close_s": close_s, "close_hung": alive}


def delayed_mode() -> dict:
    producer = Producer("bench-scale", interfaces=["127.0.0.1"], announce=False, lease_s=600).start()
    dealer = Dealer(producer.endpoint)
    futures = []
    for i in range(N_SMALL):
        task, resources, labels = requirements(i)
        futures.append(producer.options(resources=resources, labels=labels).submit(task, i))
    wait_pending(dealer, N_SMALL)
    rate_small = median_rate(dealer)
    later = producer.options(delay_s=3600)
    gc.collect()
    before = rss()
    t = time.perf_counter()
    for i in range(N_BIG):
        futures.append(later.submit("kind1:inc", i))
    wait_pending(dealer, N_BIG, key="deferred")
    submit_rate = N_BIG / (time.perf_counter() - t)
    gc.collect()
    after = rss()
    rate_big = median_rate(dealer)
    producer.close(timeout_s=20)
    return {"bytes_per_job": (after - before) / N_BIG, "claims_per_s_1e3": rate_small,
            "claims_per_s_1e6": rate_big, "submits_per_s": submit_rate}


def main() -> None:
    mode, out = sys.argv[1], sys.argv[2]
    try:
        result = {"ledger": ledger_mode, "delayed": delayed_mode}.get(mode, producer_mode)()
    except Stuck as exc:
        result = {"error": str(exc)}
    with open(out, "w") as f:
        json.dump(result, f)
    os._exit(0)  # do not wait on a producer thread that may be stuck


if __name__ == "__main__":
    main()

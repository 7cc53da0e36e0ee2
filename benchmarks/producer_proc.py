"""freelance_rz producers in a process of their own (so one can be SIGKILLed, or so idle
extra producers do not share the measuring process's GIL). Discovery pinned to loopback.

``producer_proc.py idle --group G --count K --ready F``: K idle announced producers.
``producer_proc.py run --group G --jobs-n N --seconds S --tag A --workers w1,w2 --ready F
--go F --out F``: warm up until every named worker ran a job here, write F (producer id),
wait for the go file (a wall-clock start time), submit N sleep jobs, write the outcome.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from concurrent.futures import wait
from pathlib import Path

import common  # noqa: F401 - pins FREELANCE_RZ_INTERFACES
from common import add_s5_producer_args
from freelance_rz import Producer

LOOPBACK = ["127.0.0.1"]


def write_atomic(path: str, text: str) -> None:
    Path(path + ".tmp").write_text(text)
    os.rename(path + ".tmp", path)


def idle(args: argparse.Namespace) -> None:
    producers = [Producer(args.group, interfaces=LOOPBACK) for _ in range(args.count)]
    threads = [threading.Thread(target=p.start) for p in producers]  # mDNS probing in parallel
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    write_atomic(args.ready, json.dumps([p.producer_id for p in producers]))
    while True:
        time.sleep(3600)


def run(args: argparse.Namespace) -> None:
    producer = Producer(args.group, interfaces=LOOPBACK).start()
    common.warm_up(producer, args.workers.split(","))
    write_atomic(args.ready, json.dumps({"producer_id": producer.producer_id}))
    while not os.path.exists(args.go):
        time.sleep(0.005)
    go = float(Path(args.go).read_text())
    time.sleep(max(0.0, go - time.time()))
    done_at: list[float] = []
    t0 = time.time()
    futures = []
    for i in range(args.jobs_n):
        f = producer.submit("benchtasks:sleep_job", f"{args.tag}{i}", args.seconds)
        f.add_done_callback(lambda _f: done_at.append(time.time()))
        futures.append(f)
    finished, _ = wait(futures, timeout=120)
    ok = sum(1 for f in finished if f.exception() is None)
    write_atomic(args.out, json.dumps(
        {"first_submit": t0, "last_result": max(done_at, default=t0), "done": ok}))
    producer.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["idle", "run"])
    ap.add_argument("--group", required=True)
    ap.add_argument("--count", type=int, default=1)
    add_s5_producer_args(ap, ready_required=True)
    args = ap.parse_args()
    idle(args) if args.mode == "idle" else run(args)


if __name__ == "__main__":
    main()

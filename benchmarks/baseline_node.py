"""The naive baseline, plain pyzmq: what freelance_rz replaces.

* ``BaselineProducer`` binds a PUSH socket (jobs, round-robin into each worker's mailbox as
  soon as they are sent) and a PULL socket (results). Used in-process by run.py, or as a
  process: ``baseline_node.py producer ...`` (S5, where a producer gets SIGKILLed).
* ``baseline_node.py worker --jobs EP... --results EP...``: one PULL socket connected to every
  producer's PUSH (its mailbox: default RCVHWM 1000, fair-queued across producers), one PUSH
  per producer for results; runs the benchtasks function inline, one job at a time.
* ``baseline_node.py rep``: a REP echo server for raw REQ/REP round trips on loopback.

Messages are msgpack: job ``[producer_index, job_id, task, args]``, result
``[job_id, worker, value]``, hello ``[-1, worker, None]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import msgpack
import zmq
from common import add_s5_producer_args

LOOPBACK = "127.0.0.1"


class BaselineProducer:
    """PUSH jobs, PULL results; results are timestamped (perf_counter) by a receiver thread."""

    def __init__(self, index: int = 0) -> None:
        self.index = index
        ctx = zmq.Context.instance()
        self.push = ctx.socket(zmq.PUSH)
        self.push.setsockopt(zmq.LINGER, 0)
        self.push_port = self.push.bind_to_random_port(f"tcp://{LOOPBACK}")
        self.pull = ctx.socket(zmq.PULL)
        self.pull.setsockopt(zmq.LINGER, 0)
        self.pull_port = self.pull.bind_to_random_port(f"tcp://{LOOPBACK}")
        self.jobs_ep = f"tcp://{LOOPBACK}:{self.push_port}"
        self.results_ep = f"tcp://{LOOPBACK}:{self.pull_port}"
        self.results: dict[int, tuple[float, str, object]] = {}
        self.submitted: dict[int, float] = {}
        self.hellos: set[str] = set()
        self.last_result = 0.0
        self.cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._recv, daemon=True)
        self._thread.start()

    def _recv(self) -> None:
        poller = zmq.Poller()
        poller.register(self.pull, zmq.POLLIN)
        while not self._stop:
            if not poller.poll(100):
                continue
            while True:
                try:
                    raw = self.pull.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                now = time.perf_counter()
                job_id, worker, value = msgpack.unpackb(raw)
                with self.cond:
                    if job_id == -1:
                        self.hellos.add(worker)
                    elif job_id not in self.results:
                        self.results[job_id] = (now, worker, value)
                        self.last_result = now
                    self.cond.notify_all()

    def wait_hellos(self, names, timeout: float = 30.0) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: set(names) <= self.hellos, timeout):
                raise TimeoutError(f"baseline workers {set(names) - self.hellos} never said hello")
        time.sleep(0.3)  # their PULL connections to our PUSH complete (no way to observe it)

    def send(self, job_id: int, task: str, args: list) -> None:
        self.submitted[job_id] = time.perf_counter()
        self.push.send(msgpack.packb([self.index, job_id, task, args]))

    def wait_results(self, n: int, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.results) >= n, timeout)

    def wait_quiet(self, n: int, quiet_s: float, timeout: float) -> None:
        """Until n results, or no new result for ``quiet_s`` (the rest are lost), or timeout."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            with self.cond:
                if len(self.results) >= n:
                    return
                last = max(self.last_result, max(self.submitted.values(), default=0.0))
            if time.perf_counter() - last > quiet_s:
                return
            time.sleep(0.05)

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.push.close(0)
        self.pull.close(0)


def worker_main(name: str, jobs: list[str], results: list[str]) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import benchtasks

    ctx = zmq.Context.instance()
    pull = ctx.socket(zmq.PULL)
    for ep in jobs:
        pull.connect(ep)
    outs = []
    for ep in results:
        s = ctx.socket(zmq.PUSH)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(ep)
        s.send(msgpack.packb([-1, name, None]))
        outs.append(s)
    while True:
        index, job_id, task, args = msgpack.unpackb(pull.recv())
        value = getattr(benchtasks, task)(*args)
        outs[index].send(msgpack.packb([job_id, name, value]))


def rep_main(port_file: str) -> None:
    sock = zmq.Context.instance().socket(zmq.REP)
    port = sock.bind_to_random_port(f"tcp://{LOOPBACK}")
    Path(port_file).write_text(str(port))
    while True:
        sock.send(sock.recv())


def producer_main(args: argparse.Namespace) -> None:
    """S5: one producer process; pushes ``--jobs-n`` sleep jobs at the go time, writes
    {first_submit, last_result, done} (wall clock) to --out when all are back."""
    prod = BaselineProducer(args.index)
    Path(args.ready + ".tmp").write_text(json.dumps({"jobs": prod.jobs_ep, "results": prod.results_ep}))
    os.rename(args.ready + ".tmp", args.ready)
    prod.wait_hellos(args.workers.split(","), timeout=60)
    Path(args.ready + ".ok").write_text("ok")
    while not os.path.exists(args.go):
        time.sleep(0.005)
    go = float(Path(args.go).read_text())
    time.sleep(max(0.0, go - time.time()))
    offset = time.time() - time.perf_counter()
    t0 = time.perf_counter()
    for i in range(args.jobs_n):
        prod.send(i, "sleep_job", [f"{args.tag}{i}", args.seconds])
    prod.wait_results(args.jobs_n, timeout=120)
    out = {"first_submit": t0 + offset, "last_result": prod.last_result + offset,
           "done": len(prod.results)}
    Path(args.out).write_text(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["worker", "rep", "producer"])
    ap.add_argument("--name", default="bw")
    ap.add_argument("--jobs", nargs="*", default=[])
    ap.add_argument("--results", nargs="*", default=[])
    ap.add_argument("--port-file")
    ap.add_argument("--index", type=int, default=0)
    add_s5_producer_args(ap)
    args = ap.parse_args()
    if args.mode == "worker":
        worker_main(args.name, args.jobs, args.results)
    elif args.mode == "rep":
        rep_main(args.port_file)
    else:
        producer_main(args)


if __name__ == "__main__":
    main()

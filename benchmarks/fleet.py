"""S8 fleet scale (DESIGN §6), the processes of its runs. ``run.py --scenarios S8`` starts
them; each is killed by process group when its run ends. Everything stays on loopback.

``fleet.py producer --workers N --endpoint-file F --out F``: one Producer in this process
(its memory is this process's), waiting for N parked simulated workers; then it measures
its memory per connected worker, its CPU while they wait, submit -> first job and submit ->
result latency (one job at a time), and claims answered per second (a burst of jobs: each
result carries the worker's next claim), and writes them as JSON.

``fleet.py sims --endpoint E --count M --tag T``: M simulated workers, one DEALER each (own
routing id, real sockets, the real codec), each parking one claim, answering a JOB at once
with a RESULT (its value: the monotonic time the JOB arrived, so the producer can tell
submit -> first job) that carries its next claim, and claiming again after each NOJOB.

``fleet.py producers --group G --count C --file F --ready F``: C idle producers, announced
by the lines they write into the endpoints file F (no mDNS), for a worker polling them.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402,F401 - pins FREELANCE_RZ_INTERFACES
import zmq  # noqa: E402

from freelance_rz import Producer  # noqa: E402
from freelance_rz.core import payload as pl  # noqa: E402
from freelance_rz.core import wire as w  # noqa: E402

LOOP = ["127.0.0.1"]
WAIT_MS = 1000  # the simulated workers' long-poll, as a real worker's default
LATENCY_SAMPLES, LATENCY_GAP_S = 200, 0.005
BURST_JOBS = 20_000  # jobs submitted at once for the claims/s figure
IDLE_WINDOW_S = 3.0


def rss_kib(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_s() -> float:
    times = os.times()
    return times.user + times.system


def write_atomic(path: str, text: str) -> None:
    Path(path + ".tmp").write_text(text)
    os.replace(path + ".tmp", path)


# --- the producer side ------------------------------------------------------------------------


def producer(args: argparse.Namespace) -> None:
    prod = Producer(f"fleet-{os.getpid()}", interfaces=LOOP, announce=False,
                    max_connections=args.workers + 256).start()
    try:
        time.sleep(0.5)
        rss_before = rss_kib()
        write_atomic(args.endpoint_file, prod.endpoint)
        started = time.monotonic()
        while prod.status()["parked_claims"] < args.workers:
            if time.monotonic() - started > 120:
                raise RuntimeError(f"only {prod.status()['parked_claims']} of {args.workers} parked")
            time.sleep(0.05)
        connected_s = time.monotonic() - started
        time.sleep(2.0)  # every claim renewed at least once
        rss_after = rss_kib()
        cpu0, t0 = cpu_s(), time.monotonic()
        time.sleep(IDLE_WINDOW_S)
        idle_cpu = 100.0 * (cpu_s() - cpu0) / (time.monotonic() - t0)
        first_job, result = [], []
        for i in range(LATENCY_SAMPLES + 20):
            time.sleep(LATENCY_GAP_S)
            sent = time.monotonic()
            arrived = prod.submit("fleet:noop", i).result(10)
            if i >= 20:
                first_job.append(arrived - sent)
                result.append(time.monotonic() - sent)
        t = time.monotonic()
        futures = [prod.submit("fleet:noop", i) for i in range(BURST_JOBS)]
        for future in futures:
            future.result(120)
        claims_per_s = BURST_JOBS / (time.monotonic() - t)
        write_atomic(args.out, json.dumps({
            "workers": args.workers, "connected_s": connected_s,
            "rss_before_kib": rss_before, "rss_after_kib": rss_after,
            "kib_per_worker": (rss_after - rss_before) / args.workers, "idle_cpu_pct": idle_cpu,
            "first_job_s": first_job, "result_s": result, "claims_per_s": claims_per_s,
        }))
    finally:
        prod.close(timeout_s=5)


# --- simulated workers ------------------------------------------------------------------------


class Sim:
    """One simulated worker: a DEALER with a routing id of its own."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, name: str) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.ROUTING_ID, f"{name}-{secrets.token_hex(8)}".encode())
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.rid = 0

    def _rid(self) -> int:
        self.rid += 1
        return self.rid

    def claim(self) -> w.Claim:
        return w.Claim(rid=self._rid(), wait_ms=WAIT_MS, tasks=("fleet",), max_job=w.DEFAULT_MAX_PAYLOAD)

    def send(self, msg: w.Request) -> None:
        self.sock.send_multipart(w.encode(msg))

    def on_reply(self) -> None:
        msg = w.decode_reply(self.sock.recv_multipart())
        if isinstance(msg, w.Job):
            self.send(w.Result(rid=self._rid(), job_id=msg.job_id, lease_id=msg.lease_id, ok=True,
                               payload=pl.pack_value(time.monotonic()), claim=self.claim()))
        elif isinstance(msg, w.NoJob):
            self.send(self.claim())
        elif isinstance(msg, w.Err):
            print(f"ERR {msg}", flush=True)


def sims(args: argparse.Namespace) -> None:
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    fleet = [Sim(ctx, args.endpoint, f"{args.tag}-{i}") for i in range(args.count)]
    poller = zmq.Poller()
    by_sock = {}
    for sim in fleet:
        poller.register(sim.sock, zmq.POLLIN)
        by_sock[sim.sock] = sim
        sim.send(sim.claim())
    while True:
        for sock, _ in poller.poll(1000):
            by_sock[sock].on_reply()


# --- idle producers for one worker to poll ----------------------------------------------------


def producers(args: argparse.Namespace) -> None:
    made = [Producer(args.group, interfaces=LOOP, announce=False, endpoints_file=args.file).start()
            for _ in range(args.count)]
    write_atomic(args.ready, json.dumps([p.endpoint for p in made]))
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    while True:
        time.sleep(3600)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["producer", "sims", "producers"])
    ap.add_argument("--workers", type=int)
    ap.add_argument("--endpoint-file")
    ap.add_argument("--out")
    ap.add_argument("--endpoint")
    ap.add_argument("--count", type=int)
    ap.add_argument("--tag", default="sim")
    ap.add_argument("--group")
    ap.add_argument("--file")
    ap.add_argument("--ready")
    args = ap.parse_args()
    {"producer": producer, "sims": sims, "producers": producers}[args.mode](args)


if __name__ == "__main__":
    main()

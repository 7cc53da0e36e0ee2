#!/usr/bin/env python
"""freelance_rz benchmarks: the scenarios of DESIGN §6 beside a naive pyzmq baseline, same run.

    python benchmarks/run.py [--scenarios S1,S2,...] [--repeat N] [--json PATH]

Scenarios: S1-S7 (DESIGN §6; S1 and S6 also for the thread and asyncio pools), M1 (1,000,000
pending jobs of 10 task kinds with mixed requirements: memory per job, claim rate at 10^6 vs
10^3 pending), P20 (one worker polling 20 producers, S6 latency), W50 (50 worker processes on
one producer, S6 latency; ~20 s), MX (S1 and S6 with Prometheus metrics on ÷ off, same run:
producer and workers serving /metrics, scraped every 0.25 s), IO (1,000 jobs of ``await
asyncio.sleep(0.1)`` on one worker with 200 slots, asyncio pool beside process pool). All run
by default (about 5 minutes with --repeat 1). S7's comparison column is the same jobs on a
uniform fleet (every worker runs every kind), not the PUSH/PULL baseline. S8 (fleet scale: one
producer with 500 simulated parked workers, one worker polling 100 producers, each against its
10x smaller run; benchmarks/fleet.py; about 2 minutes) runs when named: --scenarios S8.

The baseline is what freelance_rz replaces: a PUSH socket spreading jobs round-robin into
worker processes' mailboxes (PULL), results back over PUSH/PULL, tasks run inline; plus raw
REQ/REP round trips on loopback (the floor of one request per job). Every figure is the median
of ``--repeat`` runs (default 1, so the default set takes a few minutes on 2 cores; the
issue's budget is 10). Workers run with cwd = benchmarks/ and ``--slots 1``; everything is on
loopback: producers bind 127.0.0.1 and announce there, workers use ``--interface 127.0.0.1``,
and FREELANCE_RZ_INTERFACES=127.0.0.1 is set for every process started. Every child runs in a
session of its own and is killed by process group when its scenario ends.
Worker logs and task execution logs are kept in a temporary directory printed at the end.
"""

from __future__ import annotations

import argparse
import compileall
import json
import math
import operator
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from concurrent.futures import wait
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402 - pins FREELANCE_RZ_INTERFACES before freelance_rz is used
import zmq  # noqa: E402
from baseline_node import BaselineProducer  # noqa: E402
from common import (  # noqa: E402
    BENCH_DIR, kill, kill_these, percentile, spawn, start_baseline_worker, start_worker,
    wait_for, warm_up,
)
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from freelance_rz import Producer  # noqa: E402

LOOP = ["127.0.0.1"]
PY = sys.executable
DEFAULT_SCENARIOS = ["S1", "S2", "S3", "S4", "S5", "S6", "S7", "M1", "P20", "W50", "MX", "IO"]
ALL_SCENARIOS = [*DEFAULT_SCENARIOS, "S8"]
OPS = {"<=": operator.le, ">=": operator.ge, "==": operator.eq}


@dataclass
class Row:
    scenario: str
    metric: str
    frz: float | None
    base: float | None
    target: str = ""
    check: tuple[str, str, float] | None = None  # (value: "frz" | "ratio", op, bound)
    ratio: float | None = None
    runs: list[float | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.ratio is None and _num(self.frz) and _num(self.base) and self.base:
            self.ratio = self.frz / self.base

    @property
    def passed(self) -> bool | None:
        if self.check is None:
            return None
        which, op, bound = self.check
        value = self.frz if which == "frz" else self.ratio
        if not _num(value):
            return False
        return OPS[op](value, bound)


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))


def new_group(tag: str) -> str:
    return f"bench-{tag}-{uuid.uuid4().hex[:6]}"


class Run:
    """Per-scenario scratch: a directory for logs, and the children to kill at the end."""

    def __init__(self, root: Path, name: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root))
        self.procs: list[subprocess.Popen] = []
        self.producers: list = []

    def worker(self, name: str, group: str, **kw) -> subprocess.Popen:
        proc = start_worker(name, group, self.dir, **kw)
        self.procs.append(proc)
        return proc

    def bworker(self, name: str, jobs: list[str], results: list[str], **kw) -> subprocess.Popen:
        proc = start_baseline_worker(name, self.dir, jobs, results, **kw)
        self.procs.append(proc)
        return proc

    def spawn(self, args: list[str], name: str) -> subprocess.Popen:
        proc = spawn(args, self.dir / f"{name}.log")
        self.procs.append(proc)
        return proc

    def producer(self, group: str, **kw) -> Producer:
        prod = Producer(group, interfaces=LOOP, **kw)
        self.producers.append(prod)
        return prod

    def bproducer(self, index: int = 0) -> BaselineProducer:
        prod = BaselineProducer(index)
        self.producers.append(prod)
        return prod

    def close(self) -> None:
        kill_these(self.procs)
        for prod in self.producers:
            try:
                if isinstance(prod, Producer):
                    prod.close(timeout_s=5)
                else:
                    prod.close()
            except Exception:  # noqa: BLE001 - cleanup goes on
                traceback.print_exc()


def exec_records(path: Path) -> list[tuple[str, str, float]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        key, worker, t = line.split()
        out.append((key, worker, float(t)))
    return out


def sleep_until(t_perf: float) -> None:
    time.sleep(max(0.0, t_perf - time.perf_counter()))


def submit_timed(prod: Producer, task: str, args_list: list[tuple]) -> tuple[list, list, list]:
    """Submit jobs; return futures, submit times and a list filled with completion times."""
    futures, sent, done = [], [], [None] * len(args_list)
    for i, args in enumerate(args_list):
        sent.append(time.perf_counter())
        f = prod.submit(task, *args)
        f.add_done_callback(lambda _f, i=i: done.__setitem__(i, time.perf_counter()))
        futures.append(f)
    return futures, sent, done


# --- S1: throughput -------------------------------------------------------------------------

S1_JOBS = 5000


def reqrep_rate(run: Run, n: int = 10000) -> float:
    port_file = run.dir / "rep.port"
    run.spawn([PY, str(BENCH_DIR / "baseline_node.py"), "rep", "--port-file", str(port_file)], "rep")
    wait_for(port_file.exists, 20, "the REP server")
    time.sleep(0.05)
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{port_file.read_text()}")
    body = b"x" * 48  # about the size of a CLAIM / small JOB body
    try:
        for _ in range(500):
            sock.send(body)
            sock.recv()
        t = time.perf_counter()
        for _ in range(n):
            sock.send(body)
            sock.recv()
        return n / (time.perf_counter() - t)
    finally:
        sock.close(0)


CPU_ROLES = ("producer", "worker", "job process")
OTHER_POOLS = ["thread", "asyncio"]  # S1 and S6 run on these too (--pools)


@dataclass
class S1Result:
    """An S1 run: jobs/s, and per job the CPU (µs) and wake-ups of each role's processes."""

    rate: float
    cpu_us: dict[str, float] = field(default_factory=dict)
    wakeups: dict[str, float] = field(default_factory=dict)


def _trivial(pool: str) -> str:
    """The trivial job (x -> x + 1) for ``pool``: a coroutine on the asyncio pool."""
    return "benchtasks:ainc" if pool == "asyncio" else "benchtasks:inc"


def _s1_frz(run: Run, tag: str, pool: str = "process", metrics: bool = False, **producer_kw) -> S1Result:
    """S1 on freelance_rz: jobs/s over S1_JOBS trivial jobs, two warmed-up workers (of
    ``pool``); CPU and wake-ups per job of the producer's process, the workers and their job
    processes. With ``metrics``, the producer and both workers serve /metrics, scraped every
    SCRAPE_EVERY_S."""
    group = new_group(tag)
    prod = run.producer(group, **producer_kw, **({"metrics_port": 0} if metrics else {}))
    ports = [free_port(), free_port()] if metrics else []
    extra = ("--pool", pool) if pool != "process" else ()  # the default (older versions: none)
    workers = [
        run.worker(f"{tag}-w{i + 1}", group,
                   extra=(*extra, *(("--metrics-port", f"127.0.0.1:{port}") if port else ())))
        for i, port in enumerate(ports or [None, None])
    ]
    prod.start()
    warm_up(prod, [f"{tag}-w1", f"{tag}-w2"])
    task = _trivial(pool)
    for f in [prod.submit(task, i) for i in range(200)]:
        f.result(10)
    scraper = Scraper([prod.metrics_url, *(f"http://127.0.0.1:{p}/metrics" for p in ports)]) if metrics else None
    roles = common.role_pids(workers)
    before = common.cpu_by_role(roles)
    t0 = time.perf_counter()
    futures = [prod.submit(task, i) for i in range(S1_JOBS)]
    wait(futures, timeout=60)
    t1 = time.perf_counter()
    after = common.cpu_by_role(roles)
    if scraper is not None:
        scraper.finish()
    assert all(f.result(0) == i + 1 for i, f in enumerate(futures))
    prod.close(timeout_s=5)
    return S1Result(
        S1_JOBS / (t1 - t0),
        {r: 1e6 * (after[r][0] - before[r][0]) / S1_JOBS for r in CPU_ROLES},
        {r: (after[r][1] - before[r][1]) / S1_JOBS for r in CPU_ROLES},
    )


SCRAPE_EVERY_S = 0.25  # Prometheus scrapes every 15 s by default: this is 60 times harsher


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


SCRAPER = """
import signal, sys, time, urllib.request
scrapes = 0
def done(*_):
    print(scrapes, flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, done)
while True:
    time.sleep(float(sys.argv[1]))
    for url in sys.argv[2:]:
        with urllib.request.urlopen(url, timeout=5) as response:
            scrapes += b"freelance_rz_" in response.read()
"""


class Scraper:
    """Scrapes metrics endpoints every SCRAPE_EVERY_S from a process of its own, as
    Prometheus would (more often), until :meth:`finish`, which returns how many scrapes
    worked."""

    def __init__(self, urls: list[str]) -> None:
        self.proc = subprocess.Popen([PY, "-c", SCRAPER, str(SCRAPE_EVERY_S), *urls],
                                     stdout=subprocess.PIPE, text=True, start_new_session=True)

    def finish(self) -> int:
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=10)
        self.scrapes = int(out.strip() or 0)
        return self.scrapes


def s1(root: Path) -> list[Row]:
    run = Run(root, "S1")
    try:
        rt = reqrep_rate(run)
        measured = _s1_frz(run, "s1")
        frz = measured.rate
        durable = _s1_frz(run, "s1d", store=run.dir / "s1-jobs.sqlite").rate
        pools = {pool: _s1_frz(run, f"s1{pool[0]}", pool) for pool in OTHER_POOLS}
        # baseline PUSH/PULL
        bp = run.bproducer()
        run.bworker("bw1", [bp.jobs_ep], [bp.results_ep])
        run.bworker("bw2", [bp.jobs_ep], [bp.results_ep])
        bp.wait_hellos(["bw1", "bw2"])
        for i in range(200):
            bp.send(-2 - i, "inc", [i])
        bp.wait_results(200, 20)
        bp.results.clear()
        t0 = time.perf_counter()
        for i in range(S1_JOBS):
            bp.send(i, "inc", [i])
        if not bp.wait_results(S1_JOBS, 60):
            raise RuntimeError("baseline S1: results missing")
        base = S1_JOBS / (bp.last_result - t0)
    finally:
        run.close()
    return [
        Row("S1", "throughput, 5,000 trivial jobs (jobs/s)", frz, base),
        Row("S1", "jobs/s ÷ raw REQ/REP round trips/s (baseline col.)", frz, rt,
            "ratio ≥ 0.80", ("ratio", ">=", 0.8)),
        *[Row("S1", f"--pool {pool}: jobs/s ÷ REQ/REP (baseline col.)", m.rate, rt)
          for pool, m in pools.items()],
        Row("S1", "with store= (sqlite WAL) ÷ in memory (baseline col.)", durable, frz,
            "ratio ≥ 0.50", ("ratio", ">=", 0.5)),
        *[Row("S1", f"CPU per job: {role} (µs, its threads included)", measured.cpu_us[role], None)
          for role in CPU_ROLES],
        Row("S1", "CPU per job: all (µs)", sum(measured.cpu_us.values()), None),
        *[Row("S1", f"wake-ups per job: {role}", measured.wakeups[role], None)
          for role in CPU_ROLES],
        *[Row("S1", f"--pool {pool}: CPU per job, {role} (µs)", m.cpu_us[role], None)
          for pool, m in pools.items() for role in CPU_ROLES],
    ]


# --- S2: late joiner ------------------------------------------------------------------------

S2_JOBS, S2_DUR, S2_LATE = 240, 0.025, 1.0
S2_IDEAL = S2_LATE + (S2_JOBS * S2_DUR - 2 * S2_LATE) / 3  # 2.333 s


def s2(root: Path) -> list[Row]:
    run = Run(root, "S2")
    try:
        group = new_group("s2")
        exec_log = run.dir / "exec.log"
        prod = run.producer(group)
        run.worker("w1", group, exec_log=exec_log)
        run.worker("w2", group, exec_log=exec_log)
        prod.start()
        warm_up(prod, ["w1", "w2"])
        t0 = time.perf_counter()
        futures, _, done = submit_timed(
            prod, "benchtasks:sleep_job", [(f"j{i}", S2_DUR) for i in range(S2_JOBS)])
        sleep_until(t0 + S2_LATE)
        late = run.worker("w3", group, exec_log=exec_log)
        wait(futures, timeout=60)
        results = [f.result(0) for f in futures]
        frz_makespan = max(done) - t0
        frz_late_jobs = results.count("w3")
        late_starts = [t for key, w, t in exec_records(exec_log) if w == "w3"]
        frz_first = (min(late_starts) - late.launched_at) if late_starts else None

        bp = run.bproducer()
        run.bworker("bw1", [bp.jobs_ep], [bp.results_ep])
        run.bworker("bw2", [bp.jobs_ep], [bp.results_ep])
        bp.wait_hellos(["bw1", "bw2"])
        t0 = time.perf_counter()
        for i in range(S2_JOBS):
            bp.send(i, "sleep_job", [f"b{i}", S2_DUR])
        sleep_until(t0 + S2_LATE)
        run.bworker("bw3", [bp.jobs_ep], [bp.results_ep])
        bp.wait_results(S2_JOBS, 30)
        base_makespan = bp.last_result - t0
        base_late_jobs = sum(1 for _, w, _ in bp.results.values() if w == "bw3")
    finally:
        run.close()
    return [
        Row("S2", "makespan ÷ ideal (2.333 s)", frz_makespan / S2_IDEAL, base_makespan / S2_IDEAL,
            "≤ 1.05", ("frz", "<=", 1.05)),
        Row("S2", "makespan (s)", frz_makespan, base_makespan),
        Row("S2", "jobs run by the late worker (of 240)", frz_late_jobs, base_late_jobs),
        Row("S2", "late worker: launch → first job start (s)", frz_first, None,
            "≤ 0.3", ("frz", "<=", 0.3)),
    ]


# --- S3: head-of-line -----------------------------------------------------------------------

S3_SHORT, S3_SHORT_S, S3_LONG_S = 100, 0.010, 2.0


def s3(root: Path) -> list[Row]:
    run = Run(root, "S3")
    try:
        group = new_group("s3")
        prod = run.producer(group)
        run.worker("w1", group)
        run.worker("w2", group)
        prod.start()
        warm_up(prod, ["w1", "w2"])
        jobs = [("long", S3_LONG_S)] + [(f"s{i}", S3_SHORT_S) for i in range(S3_SHORT)]
        futures, sent, done = submit_timed(prod, "benchtasks:sleep_job", jobs)
        wait(futures, timeout=60)
        for f in futures:
            f.result(0)
        frz = [done[i] - sent[i] for i in range(1, len(jobs))]

        bp = run.bproducer()
        run.bworker("bw1", [bp.jobs_ep], [bp.results_ep])
        run.bworker("bw2", [bp.jobs_ep], [bp.results_ep])
        bp.wait_hellos(["bw1", "bw2"])
        for i, (key, s) in enumerate(jobs):
            bp.send(i, "sleep_job", [key, s])
        bp.wait_results(len(jobs), 30)
        base = [bp.results[i][0] - bp.submitted[i] for i in range(1, len(jobs))]
    finally:
        run.close()
    return [
        Row("S3", "short jobs latency p50 (s)", percentile(frz, 50), percentile(base, 50)),
        Row("S3", "short jobs latency p99 (s)", percentile(frz, 99), percentile(base, 99),
            "≤ 1.05", ("frz", "<=", 1.05)),
        Row("S3", "short jobs latency max (s)", max(frz), max(base)),
    ]


# --- S4: worker crash -----------------------------------------------------------------------

S4_JOBS, S4_DUR, S4_KILL = 200, 0.020, 0.5


def s4(root: Path) -> list[Row]:
    run = Run(root, "S4")
    try:
        group = new_group("s4")
        exec_log = run.dir / "exec.log"
        prod = run.producer(group)
        run.worker("w1", group, exec_log=exec_log)
        victim = run.worker("w2", group, exec_log=exec_log)
        prod.start()
        warm_up(prod, ["w1", "w2"])
        t0 = time.perf_counter()
        futures, _, done = submit_timed(
            prod, "benchtasks:sleep_job", [(f"j{i}", S4_DUR) for i in range(S4_JOBS)])
        sleep_until(t0 + S4_KILL)
        kill(victim)  # SIGKILL, whole process group (worker and its job process)
        wait(futures, timeout=30)
        frz_done = sum(1 for f in futures if f.done() and f.exception(0) is None)
        frz_makespan = max(d for d in done if d is not None) - t0
        recs = [k for k, _, _ in exec_records(exec_log)]
        frz_dup = len(recs) - len(set(recs))
        frz_by_victim = sum(1 for _, w, _ in exec_records(exec_log) if w == "w2")

        bexec = run.dir / "bexec.log"
        bp = run.bproducer()
        run.bworker("bw1", [bp.jobs_ep], [bp.results_ep], exec_log=bexec)
        bvictim = run.bworker("bw2", [bp.jobs_ep], [bp.results_ep], exec_log=bexec)
        bp.wait_hellos(["bw1", "bw2"])
        t0 = time.perf_counter()
        for i in range(S4_JOBS):
            bp.send(i, "sleep_job", [f"b{i}", S4_DUR])
        sleep_until(t0 + S4_KILL)
        kill(bvictim)
        bp.wait_quiet(S4_JOBS, quiet_s=1.5, timeout=30)
        base_done = len(bp.results)
        base_makespan = bp.last_result - t0
        recs = [k for k, _, _ in exec_records(bexec)]
        base_dup = len(recs) - len(set(recs))
    finally:
        run.close()
    return [
        Row("S4", "jobs completed (of 200)", frz_done, base_done),
        Row("S4", "jobs lost", S4_JOBS - frz_done, S4_JOBS - base_done, "= 0", ("frz", "==", 0)),
        Row("S4", "duplicate executions (killed worker had 1 slot)", frz_dup, base_dup,
            "≤ 1", ("frz", "<=", 1)),
        Row("S4", "makespan (s) (baseline: until the last surviving result)", frz_makespan,
            base_makespan),
        Row("S4", "executions started on the killed worker", frz_by_victim, None),
    ]


# --- S5: producer loss ----------------------------------------------------------------------

S5_JOBS, S5_DUR, S5_KILL = 200, 0.020, 0.5


def _wait_file(path: Path, timeout: float, procs: list[subprocess.Popen]) -> None:
    def ready() -> bool:
        if path.exists():
            return True
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args[:4]} exited with {proc.returncode}; see {proc.log_path}")
        return path.exists()
    wait_for(ready, timeout, str(path))


def s5_frz(root: Path, with_a: bool) -> dict:
    run = Run(root, "S5-frz" + ("" if with_a else "-noA"))
    try:
        group = new_group("s5")
        exec_log = run.dir / "exec.log"
        names = ["A", "B"] if with_a else ["B"]
        procs = {}
        for tag in names:
            procs[tag] = run.spawn(
                [PY, str(BENCH_DIR / "producer_proc.py"), "run", "--group", group,
                 "--workers", "w1,w2", "--jobs-n", str(S5_JOBS), "--seconds", str(S5_DUR),
                 "--tag", tag, "--ready", str(run.dir / f"{tag}.ready"),
                 "--go", str(run.dir / "go"), "--out", str(run.dir / f"{tag}.out")], f"prod{tag}")
        workers = [run.worker(n, group, exec_log=exec_log) for n in ("w1", "w2")]
        for tag in names:
            _wait_file(run.dir / f"{tag}.ready", 90, list(procs.values()))
        go = time.time() + 0.3
        (run.dir / "go.tmp").write_text(repr(go))
        os.rename(run.dir / "go.tmp", run.dir / "go")
        out: dict = {}
        if with_a:
            a_id = json.loads((run.dir / "A.ready").read_text())["producer_id"]
            time.sleep(max(0.0, go + S5_KILL - time.time()))
            kill_wall = time.time()
            kill(procs["A"])
            detect = []
            _wait_file(run.dir / "B.out", 60, [procs["B"]])
            time.sleep(max(0.0, kill_wall + 2.0 - time.time()))  # let every worker log it
            for w in workers:
                times = [common.log_time(line) for line in common.log_lines(w)
                         if f"producer {a_id} unreachable" in line]
                times = [t for t in times if t is not None and t >= kill_wall - 0.002]
                detect.append(min(times) - kill_wall if times else None)
            out["detect"] = None if None in detect else max(detect)
            out["a_exec"] = sum(1 for k, _, _ in exec_records(exec_log) if k.startswith("A"))
        else:
            _wait_file(run.dir / "B.out", 60, [procs["B"]])
        b = json.loads((run.dir / "B.out").read_text())
        out["makespan"] = b["last_result"] - b["first_submit"]
        out["lost"] = S5_JOBS - b["done"]
        return out
    finally:
        run.close()


def s5_base(root: Path, with_a: bool) -> dict:
    run = Run(root, "S5-base" + ("" if with_a else "-noA"))
    try:
        names = ["A", "B"] if with_a else ["B"]
        procs = {}
        for index, tag in enumerate(names):
            procs[tag] = run.spawn(
                [PY, str(BENCH_DIR / "baseline_node.py"), "producer", "--index", str(index),
                 "--workers", "bw1,bw2", "--jobs-n", str(S5_JOBS), "--seconds", str(S5_DUR),
                 "--tag", tag, "--ready", str(run.dir / f"{tag}.ready"),
                 "--go", str(run.dir / "go"), "--out", str(run.dir / f"{tag}.out")], f"bprod{tag}")
        eps = []
        for tag in names:
            _wait_file(run.dir / f"{tag}.ready", 30, list(procs.values()))
            eps.append(json.loads((run.dir / f"{tag}.ready").read_text()))
        for n in ("bw1", "bw2"):
            run.bworker(n, [e["jobs"] for e in eps], [e["results"] for e in eps])
        for tag in names:
            _wait_file(run.dir / f"{tag}.ready.ok", 30, list(procs.values()))
        go = time.time() + 0.3
        (run.dir / "go.tmp").write_text(repr(go))
        os.rename(run.dir / "go.tmp", run.dir / "go")
        if with_a:
            time.sleep(max(0.0, go + S5_KILL - time.time()))
            kill(procs["A"])
        _wait_file(run.dir / "B.out", 60, [procs["B"]])
        b = json.loads((run.dir / "B.out").read_text())
        return {"makespan": b["last_result"] - b["first_submit"], "lost": S5_JOBS - b["done"]}
    finally:
        run.close()


def s5(root: Path) -> list[Row]:
    frz_a, frz_noa = s5_frz(root, True), s5_frz(root, False)
    base_a, base_noa = s5_base(root, True), s5_base(root, False)
    conserving = (frz_a["a_exec"] + S5_JOBS) * S5_DUR / 2
    return [
        Row("S5", "workers stop waiting on killed A (s, slowest worker)", frz_a["detect"], None,
            "≤ 1.5", ("frz", "<=", 1.5)),
        Row("S5", "B makespan ÷ same run without A", frz_a["makespan"] / frz_noa["makespan"],
            base_a["makespan"] / base_noa["makespan"], "≤ 1.10", ("frz", "<=", 1.10)),
        Row("S5", "B makespan, A killed at 0.5 s (s)", frz_a["makespan"], base_a["makespan"]),
        Row("S5", "B makespan, no A (s)", frz_noa["makespan"], base_noa["makespan"]),
        Row("S5", "B makespan ÷ work-conserving ideal (A's executed jobs counted)",
            frz_a["makespan"] / conserving, None),
        Row("S5", "B jobs lost", frz_a["lost"], base_a["lost"], "= 0", ("frz", "==", 0)),
    ]


# --- S6: idle latency (and the scale checks P20, W50 built on it) ---------------------------

S6_SAMPLES, S6_GAP_S, CPU_WINDOW_S = 300, 0.005, 3.0


def frz_latencies(prod: Producer, n: int = S6_SAMPLES, task: str = "benchtasks:inc") -> list[float]:
    """Submit one trivial job at a time to a parked idle worker; seconds submit → result."""
    for i in range(30):
        prod.submit(task, i).result(5)
    out = []
    for i in range(n):
        time.sleep(S6_GAP_S)  # the worker is idle and parked again before each job
        t = time.perf_counter()
        prod.submit(task, i).result(5)
        out.append(time.perf_counter() - t)
    return out


def base_latencies(bp: BaselineProducer, n: int = S6_SAMPLES) -> list[float]:
    out = []
    first = 10_000_000 + len(bp.submitted)  # fresh job ids on every call
    for i in range(n + 30):
        time.sleep(S6_GAP_S)
        job_id = first + i
        t = time.perf_counter()
        bp.send(job_id, "inc", [i])
        with bp.cond:
            bp.cond.wait_for(lambda job_id=job_id: job_id in bp.results, 5)
        if i >= 30:
            out.append(bp.results[job_id][0] - t)
    return out


def add_idle_producers(run: Run, group: str, count: int, worker: subprocess.Popen,
                       expect: int, tag: str) -> None:
    ready = run.dir / f"idle-{tag}.ready"
    proc = run.spawn([PY, str(BENCH_DIR / "producer_proc.py"), "idle", "--group", group,
                      "--count", str(count), "--ready", str(ready)], f"idle-{tag}")
    _wait_file(ready, 60, [proc])
    wait_for(lambda: common.producers_found(worker) >= expect, 60,
             f"the worker to find {expect} producers")
    time.sleep(1.5)  # every peer connected and holding a parked claim


def s6(root: Path) -> list[Row]:
    run = Run(root, "S6")
    try:
        group = new_group("s6")
        prod = run.producer(group)
        w1 = run.worker("w1", group)
        prod.start()
        warm_up(prod, ["w1"])
        lat1 = frz_latencies(prod)
        time.sleep(0.5)
        cpu1 = common.idle_cpu_percent(w1, CPU_WINDOW_S)
        add_idle_producers(run, group, 9, w1, 10, "9")
        lat10 = frz_latencies(prod)
        time.sleep(0.5)
        cpu10 = common.idle_cpu_percent(w1, CPU_WINDOW_S)
        by_pool = {pool: _s6_pool(run, pool) for pool in OTHER_POOLS}

        bps = [run.bproducer(0)] + [run.bproducer(0) for _ in range(9)]
        bw = run.bworker("bw1", [bps[0].jobs_ep], [bps[0].results_ep])
        bps[0].wait_hellos(["bw1"])
        blat1 = base_latencies(bps[0])
        time.sleep(0.5)
        bcpu = common.idle_cpu_percent(bw, CPU_WINDOW_S)
        kill_these([bw])
        run.bworker("bw10", [b.jobs_ep for b in bps], [bps[0].results_ep])
        bps[0].wait_hellos(["bw10"])
        blat10 = base_latencies(bps[0])
    finally:
        run.close()
    ms = 1000.0
    p = percentile
    return [
        Row("S6", "submit→result p50, 1 producer (ms)", p(lat1, 50) * ms, p(blat1, 50) * ms,
            "≤ 0.5", ("frz", "<=", 0.5)),
        Row("S6", "submit→result p99, 1 producer (ms)", p(lat1, 99) * ms, p(blat1, 99) * ms,
            "≤ 2.0", ("frz", "<=", 2.0)),
        Row("S6", "submit→result p50, 10 producers (ms)", p(lat10, 50) * ms, p(blat10, 50) * ms),
        Row("S6", "submit→result p99, 10 producers (ms)", p(lat10, 99) * ms, p(blat10, 99) * ms),
        Row("S6", "p50 10 producers ÷ 1 producer", p(lat10, 50) / p(lat1, 50),
            p(blat10, 50) / p(blat1, 50), "≤ 1.5", ("frz", "<=", 1.5)),
        Row("S6", "p99 10 producers ÷ 1 producer", p(lat10, 99) / p(lat1, 99),
            p(blat10, 99) / p(blat1, 99), "≤ 1.5", ("frz", "<=", 1.5)),
        Row("S6", "idle worker CPU, 1 producer (% of a core)", cpu1, bcpu, "≤ 1", ("frz", "<=", 1.0)),
        Row("S6", "idle worker CPU, 10 producers (% of a core)", cpu10, None, "≤ 1",
            ("frz", "<=", 1.0)),
        *[Row("S6", f"--pool {pool}: submit→result p50, 1 producer (ms)", p(lat, 50) * ms, None,
              *(("≤ 0.3", ("frz", "<=", 0.3)) if pool == "thread" else ()))
          for pool, lat in by_pool.items()],
        *[Row("S6", f"--pool {pool}: submit→result p99, 1 producer (ms)", p(lat, 99) * ms, None)
          for pool, lat in by_pool.items()],
    ]


# --- MX: metrics on ÷ off (S1 throughput, S6 latency), same run ----------------------------

MX_PAIRS = 4  # off/on pairs, interleaved and in alternating order, so drifting load on the
# host and one run's teardown hit both alike


def mx(root: Path) -> list[Row]:
    run = Run(root, "MX")
    try:
        s1_off, s1_on = [], []
        for i in range(MX_PAIRS):
            for metrics in (False, True) if i % 2 == 0 else (True, False):
                time.sleep(0.5)  # the previous run's processes gone
                (s1_on if metrics else s1_off).append(_s1_frz(run, f"mx{i}{int(metrics)}", metrics=metrics).rate)
        lat_off: list[float] = []
        lat_on: list[float] = []
        for i in range(MX_PAIRS):
            for metrics, into in ((False, lat_off), (True, lat_on))[:: 1 if i % 2 == 0 else -1]:
                time.sleep(0.5)
                group = new_group(f"mx6{i}{int(metrics)}")
                port = free_port()
                prod = run.producer(group, **({"metrics_port": 0} if metrics else {}))
                extra = ("--metrics-port", f"127.0.0.1:{port}") if metrics else ()
                run.worker(f"mx6-{i}-{int(metrics)}", group, extra=extra)
                prod.start()
                warm_up(prod, [f"mx6-{i}-{int(metrics)}"])
                scraper = Scraper([prod.metrics_url, f"http://127.0.0.1:{port}/metrics"]) if metrics else None
                into.extend(frz_latencies(prod))
                if scraper is not None:
                    scraper.finish()
                    assert scraper.scrapes > 0
                prod.close(timeout_s=5)
    finally:
        run.close()
    ms, p = 1000.0, percentile
    on, off = statistics.median(s1_on), statistics.median(s1_off)
    print(f"MX S1 jobs/s, metrics off: {[round(x) for x in s1_off]}, on: {[round(x) for x in s1_on]}")
    return [
        Row("MX", "S1 jobs/s, metrics on (baseline col.: off)", on, off, "ratio ≥ 0.95",
            ("ratio", ">=", 0.95)),
        Row("MX", "S6 p50 ms, metrics on (baseline col.: off)", p(lat_on, 50) * ms, p(lat_off, 50) * ms,
            "ratio ≤ 1.05", ("ratio", "<=", 1.05)),
        Row("MX", "S6 p99 ms, metrics on (baseline col.: off)", p(lat_on, 99) * ms, p(lat_off, 99) * ms),
    ]


def _s6_pool(run: Run, pool: str) -> list[float]:
    """S6 latencies (1 producer) with a worker of ``pool``, its own producer and group."""
    group = new_group(f"s6{pool[0]}")
    prod = run.producer(group)
    run.worker(f"{pool}-w1", group, extra=("--pool", pool))
    prod.start()
    warm_up(prod, [f"{pool}-w1"])
    try:
        return frz_latencies(prod, task=_trivial(pool))
    finally:
        prod.close(timeout_s=5)


def p20(root: Path) -> list[Row]:
    run = Run(root, "P20")
    try:
        group = new_group("p20")
        prod = run.producer(group)
        w1 = run.worker("w1", group)
        prod.start()
        warm_up(prod, ["w1"])
        lat1 = frz_latencies(prod)
        add_idle_producers(run, group, 19, w1, 20, "19")
        lat20 = frz_latencies(prod)
        time.sleep(0.5)
        cpu20 = common.idle_cpu_percent(w1, CPU_WINDOW_S)
    finally:
        run.close()
    return [
        *_scale_latency_rows("1 worker polling 20 producers", "20 producers", "1 producer",
                             lat20, lat1),
        Row("SCALE", "20 producers: idle worker CPU (% of a core)", cpu20, None),
    ]


def _scale_latency_rows(setup: str, short: str, base: str, lat: list[float],
                        lat1: list[float]) -> list[Row]:
    """S6 p50/p99 under a scale setup, and each as a ratio to the 1-peer run (target ≤ 2)."""
    ms, p = 1000.0, percentile
    return [
        Row("SCALE", f"{setup}: S6 p50 (ms)", p(lat, 50) * ms, None),
        Row("SCALE", f"{setup}: S6 p99 (ms)", p(lat, 99) * ms, None),
        Row("SCALE", f"{short}: S6 p50 ÷ {base}", p(lat, 50) / p(lat1, 50), None,
            "≤ 2", ("frz", "<=", 2.0)),
        Row("SCALE", f"{short}: S6 p99 ÷ {base}", p(lat, 99) / p(lat1, 99), None,
            "≤ 2", ("frz", "<=", 2.0)),
    ]


W50_WORKERS = 50


def w50(root: Path) -> list[Row]:
    run = Run(root, "W50")
    try:
        group = new_group("w50")
        prod = run.producer(group)
        run.worker("w1", group)
        prod.start()
        warm_up(prod, ["w1"])
        lat1 = frz_latencies(prod)
        t = time.perf_counter()
        for i in range(2, W50_WORKERS + 1):
            run.worker(f"w{i}", group)
        dealer = common.Dealer(prod.endpoint)
        try:
            wait_for(lambda: dealer.status()["workers"] >= W50_WORKERS, 240,
                     f"{W50_WORKERS} workers at the producer", interval=0.5)
        finally:
            dealer.close()
        startup = time.perf_counter() - t
        time.sleep(3.0)  # every worker parked, start-up CPU settled
        lat50 = frz_latencies(prod)
    finally:
        run.close()
    return [
        *_scale_latency_rows("50 workers on 1 producer", "50 workers", "1 worker", lat50, lat1),
        Row("SCALE", "50 workers: time until all connected (s)", startup, None),
    ]


# --- S7: mixed fleet -------------------------------------------------------------------------

S7_PER_KIND, S7_DUR = 100, 0.020
S7_KINDS = ("kind_a", "kind_b", "kind_gpu")  # kind_gpu's jobs need gpu=1
S7_IDEAL = S7_PER_KIND * S7_DUR  # 2.0 s: 300 jobs of 20 ms on 3 one-slot workers, 100 each
S7_MIXED = {  # worker -> (--tasks, extra arguments): each CPU worker runs one kind
    "wa": (("kind_a",), ()),
    "wb": (("kind_b",), ()),
    "wg": (S7_KINDS, ("--resources", "gpu=1")),
}
S7_UNIFORM = {name: (S7_KINDS, ("--resources", "gpu=1")) for name in ("u1", "u2", "u3")}


def _s7_warm_up(prod: Producer, names: list[str], timeout: float = 60.0) -> None:
    """Run warm-up jobs of every kind until each named worker has run one."""
    gpu = prod.options(resources={"gpu": 1})
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while not set(names) <= seen:
        if time.monotonic() > deadline:
            raise TimeoutError(f"workers {sorted(set(names) - seen)} never took a job")
        futures = [(gpu if kind == "kind_gpu" else prod).submit(f"{kind}:whoami", 0.05)
                   for kind in S7_KINDS]
        seen.update(f.result(timeout=max(1.0, deadline - time.monotonic())) for f in futures)


def _s7_fleet(run: Run, tag: str, workers: dict) -> dict:
    """S7_PER_KIND jobs of each kind, interleaved, on ``workers``: makespan, failures."""
    group = new_group(tag)
    prod = run.producer(group)
    for name, (tasks, extra) in workers.items():
        run.worker(name, group, exec_log=run.dir / f"{tag}-exec.log", tasks=tasks, extra=extra)
    prod.start()
    _s7_warm_up(prod, list(workers))
    gpu = prod.options(resources={"gpu": 1})
    done: list[float | None] = [None] * (3 * S7_PER_KIND)
    futures = []
    t0 = time.perf_counter()
    for i in range(S7_PER_KIND):
        for kind in S7_KINDS:
            n = len(futures)
            f = (gpu if kind == "kind_gpu" else prod).submit(f"{kind}:job", f"{kind}{i}", S7_DUR)
            f.add_done_callback(lambda _f, n=n: done.__setitem__(n, time.perf_counter()))
            futures.append(f)
    wait(futures, timeout=60)
    errors = [f.exception(0) if f.done() else TimeoutError() for f in futures]
    mismatch = sum(1 for e in errors if getattr(e, "remote_type", None) == "TaskNotAllowed")
    gpu_jobs = [f.result(0) for f, e in zip(futures[2::3], errors[2::3], strict=True) if e is None]
    prod.close(timeout_s=5)
    return {"makespan": max(d for d in done if d is not None) - t0, "mismatch": mismatch,
            "failed": sum(e is not None for e in errors), "gpu_on": gpu_jobs}


def s7(root: Path) -> list[Row]:
    run = Run(root, "S7")
    try:
        mixed = _s7_fleet(run, "s7m", S7_MIXED)
        uniform = _s7_fleet(run, "s7u", S7_UNIFORM)
    finally:
        run.close()
    return [
        Row("S7", "jobs failed for a capability mismatch (of 300; base col.: uniform fleet)",
            mixed["mismatch"], uniform["mismatch"], "= 0", ("frz", "==", 0)),
        Row("S7", "jobs failed, any reason (of 300)", mixed["failed"], uniform["failed"],
            "= 0", ("frz", "==", 0)),
        Row("S7", "makespan ÷ ideal (2.0 s); base col.: the same jobs, uniform fleet",
            mixed["makespan"] / S7_IDEAL, uniform["makespan"] / S7_IDEAL),
        Row("S7", "makespan (s)", mixed["makespan"], uniform["makespan"]),
        Row("S7", "GPU jobs run by the GPU worker wg (of 100)",
            sum(1 for worker in mixed["gpu_on"] if worker == "wg"), None),
    ]


# --- M1: a million pending jobs -------------------------------------------------------------


def m1(root: Path) -> list[Row]:
    run = Run(root, "M1")
    out = {}
    try:
        for mode in ("producer", "ledger", "delayed"):
            path = run.dir / f"{mode}.json"
            proc = run.spawn([PY, str(BENCH_DIR / "scale_pending.py"), mode, str(path)], f"m1-{mode}")
            proc.wait(240)
            if not path.exists():
                raise RuntimeError(f"scale_pending {mode} failed; see {proc.log_path}")
            out[mode] = json.loads(path.read_text())
    finally:
        run.close()
    prod, led, later = out["producer"], out["ledger"], out["delayed"]
    delayed = [Row("SCALE", f"10^6 delayed jobs (delay_s): FAILED: {later['error']}", None, None)]
    if "error" not in later:
        delayed = [
            Row("SCALE", "claims/s with 10^6 delayed jobs waiting ÷ without (Producer, 10^3 "
                "pending)", later["claims_per_s_1e6"] / later["claims_per_s_1e3"], None, "≥ 0.80",
                ("frz", ">=", 0.8)),
            Row("SCALE", "10^6 delayed: bytes per job (Producer: Future + ledger + heap)",
                later["bytes_per_job"], None),
            Row("SCALE", "Producer.submit rate of delayed jobs while filling to 10^6 (jobs/s)",
                later["submits_per_s"], None),
        ]
    if "error" in prod:
        return [
            Row("SCALE", f"10^6 pending, Producer: FAILED: {prod['error']}", None, None,
                "≤ 1024 B/job", ("frz", "<=", 1024)),
            Row("SCALE", "10^6 pending: bytes per job (Ledger alone)", led["bytes_per_job"], None),
            Row("SCALE", "claims/s at 10^6 ÷ at 10^3 (Ledger alone)",
                led["claims_per_s_1e6"] / led["claims_per_s_1e3"], None, "≥ 0.80",
                ("frz", ">=", 0.8)),
            *delayed,
        ]
    return [
        Row("SCALE", "10^6 pending: bytes per job (Producer: Future + ledger)",
            prod["bytes_per_job"], None, "≤ 1024", ("frz", "<=", 1024)),
        Row("SCALE", "10^6 pending: bytes per job (Ledger alone)", led["bytes_per_job"], None),
        Row("SCALE", "claims/s at 10^6 pending ÷ at 10^3 (Producer, raw DEALER; 10 task "
            "kinds, mixed requirements)",
            prod["claims_per_s_1e6"] / prod["claims_per_s_1e3"], None, "≥ 0.80",
            ("frz", ">=", 0.8)),
        Row("SCALE", "claims/s at 10^6 pending (Producer, pipelined CLAIMs)",
            prod["claims_per_s_1e6"], None),
        Row("SCALE", "claims/s at 10^6 ÷ at 10^3 (Ledger alone)",
            led["claims_per_s_1e6"] / led["claims_per_s_1e3"], None),
        Row("SCALE", "Producer.submit rate while filling to 10^6 (jobs/s)", prod["submits_per_s"], None),
        *delayed,
    ]


# --- S8: fleet scale (benchmarks/fleet.py) --------------------------------------------------

S8_SIM_PROCS = 5  # processes the simulated workers are spread over
S8_PRODUCERS_PER_PROC = 50  # idle producers per process on the worker side


def _s8_producer_side(run: Run, workers: int) -> dict:
    """One producer (its own process) with ``workers`` simulated parked workers."""
    out, ep = run.dir / f"producer-{workers}.json", run.dir / f"endpoint-{workers}"
    proc = run.spawn([PY, str(BENCH_DIR / "fleet.py"), "producer", "--workers", str(workers),
                      "--endpoint-file", str(ep), "--out", str(out)], f"fleet-producer-{workers}")
    _wait_file(ep, 30, [proc])
    counts = [workers // S8_SIM_PROCS + (k < workers % S8_SIM_PROCS) for k in range(S8_SIM_PROCS)]
    sims = [run.spawn([PY, str(BENCH_DIR / "fleet.py"), "sims", "--endpoint", ep.read_text(),
                       "--count", str(n), "--tag", f"w{workers}-{k}"], f"fleet-sims-{workers}-{k}")
            for k, n in enumerate(counts) if n]
    _wait_file(out, 300, [proc, *sims])
    kill_these([proc, *sims])
    return json.loads(out.read_text())


def _s8_worker_side(run: Run, producers: int) -> dict:
    """One real worker polling ``producers`` producers listed in an endpoints file (one of
    them, in this process, measures S6 latency through the worker)."""
    group, path = new_group(f"s8p{producers}"), run.dir / f"producers-{producers}.txt"
    prod = run.producer(group, announce=False, endpoints_file=path)
    prod.start()
    idle, left, k = [], producers - 1, 0
    while left > 0:
        n, ready = min(left, S8_PRODUCERS_PER_PROC), run.dir / f"idle-{producers}-{k}.ready"
        idle.append((run.spawn([PY, str(BENCH_DIR / "fleet.py"), "producers", "--group", group,
                                "--count", str(n), "--file", str(path), "--ready", str(ready)],
                               f"fleet-idle-{producers}-{k}"), ready))
        left, k = left - n, k + 1
    for proc, ready in idle:
        _wait_file(ready, 120, [proc])
    t = time.perf_counter()
    worker = run.spawn([PY, "-m", "freelance_rz.cli", "--connect-file", str(path), "--group", group,
                        "--tasks", "benchtasks", "--slots", "1", "--name", f"s8w{producers}"],
                       f"s8-worker-{producers}")
    wait_for(lambda: common.producers_found(worker) >= producers, 120, f"{producers} producers found")
    found_s = time.perf_counter() - t
    time.sleep(2.0)  # every producer answered and holds a parked claim
    lat = frz_latencies(prod)
    time.sleep(0.5)
    cpu = common.idle_cpu_percent(worker, CPU_WINDOW_S)
    with open(f"/proc/{worker.pid}/status") as status:
        rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    kill_these([worker, *(proc for proc, _ in idle)])
    return {"found_s": found_s, "lat": lat, "cpu": cpu, "rss_mib": rss / 1024}


def s8(root: Path) -> list[Row]:
    run = Run(root, "S8")
    try:
        big, small = _s8_producer_side(run, 500), _s8_producer_side(run, 50)
        many, few = _s8_worker_side(run, 100), _s8_worker_side(run, 10)
    finally:
        run.close()
    ms, p = 1000.0, percentile
    side = "1 producer, 500 parked workers (baseline col.: 50)"
    poll = "1 worker polling 100 producers (baseline col.: 10)"
    return [
        Row("S8", f"{side}: claims answered/s (burst of 20,000 jobs)", big["claims_per_s"],
            small["claims_per_s"], "ratio ≥ 0.5", ("ratio", ">=", 0.5)),
        Row("S8", f"{side}: submit→first job p50 (ms)", p(big["first_job_s"], 50) * ms,
            p(small["first_job_s"], 50) * ms, "ratio ≤ 2", ("ratio", "<=", 2.0)),
        Row("S8", f"{side}: submit→first job p99 (ms)", p(big["first_job_s"], 99) * ms,
            p(small["first_job_s"], 99) * ms),
        Row("S8", f"{side}: submit→result p50 (ms)", p(big["result_s"], 50) * ms,
            p(small["result_s"], 50) * ms),
        Row("S8", f"{side}: producer memory per connected worker (KiB)", big["kib_per_worker"],
            small["kib_per_worker"], "ratio ≤ 1.5", ("ratio", "<=", 1.5)),
        Row("S8", f"{side}: producer CPU, all parked, no jobs (% of a core)", big["idle_cpu_pct"],
            small["idle_cpu_pct"]),
        Row("S8", f"{side}: all connected and parked after (s)", big["connected_s"], small["connected_s"]),
        Row("S8", f"{poll}: idle worker CPU (% of a core)", many["cpu"], few["cpu"]),
        Row("S8", f"{poll}: submit→result p50 (ms)", p(many["lat"], 50) * ms, p(few["lat"], 50) * ms,
            "ratio ≤ 2", ("ratio", "<=", 2.0)),
        Row("S8", f"{poll}: submit→result p99 (ms)", p(many["lat"], 99) * ms, p(few["lat"], 99) * ms),
        Row("S8", f"{poll}: worker RSS (MiB)", many["rss_mib"], few["rss_mib"]),
        Row("S8", f"{poll}: all producers found after (s)", many["found_s"], few["found_s"]),
    ]


# --- IO: I/O-bound jobs on one worker ------------------------------------------------------

IO_JOBS, IO_SLEEP_S, IO_SLOTS = 1000, 0.1, 200
IO_IDEAL = IO_JOBS / IO_SLOTS * IO_SLEEP_S  # 0.5 s


def _io_makespan(run: Run, pool: str) -> tuple[float, float, float]:
    """Seconds from the first submit to the last result of IO_JOBS jobs of ``await
    asyncio.sleep(0.1)`` on one worker with ``--pool pool --slots 200`` (all of its job
    processes ready first); seconds from its launch until ready; MiB resident in the worker
    and its child processes."""
    group = new_group(f"io{pool[0]}")
    prod = run.producer(group)
    worker = run.worker(f"io-{pool}", group, slots=IO_SLOTS, extra=("--pool", pool))
    prod.start()
    wait_for(lambda: any(" started: " in line for line in common.log_lines(worker)), 300,
             f"the {pool} pool's {IO_SLOTS} slots")
    # the started line's own time (prod.start() above takes a while: not counted)
    started = next(line for line in common.log_lines(worker) if " started: " in line)
    ready_s = (common.log_time(started) or time.time()) - worker.launched_at
    warm_up(prod, [f"io-{pool}"])
    rss = sum(common.rss_mib(pid) for pid in [worker.pid, *common.children_of(worker.pid)])
    t0 = time.perf_counter()
    futures = [prod.submit("benchtasks:asleep", IO_SLEEP_S) for _ in range(IO_JOBS)]
    wait(futures, timeout=120)
    t1 = time.perf_counter()
    assert all(f.result(0) == IO_SLEEP_S for f in futures)
    prod.close(timeout_s=5)
    return t1 - t0, ready_s, rss


def io(root: Path) -> list[Row]:
    run = Run(root, "IO")
    try:
        asyncio_s, asyncio_ready, asyncio_rss = _io_makespan(run, "asyncio")
        process_s, process_ready, process_rss = _io_makespan(run, "process")
    finally:
        run.close()
    return [
        Row("IO", "1,000 × await sleep(0.1), --slots 200: makespan ÷ ideal 0.5 s (baseline col.: "
            "--pool process)", asyncio_s / IO_IDEAL, process_s / IO_IDEAL, "≤ 1.2", ("frz", "<=", 1.2)),
        Row("IO", "makespan (s), --pool asyncio (baseline col.: --pool process)", asyncio_s, process_s),
        Row("IO", "launch → 200 slots ready (s), --pool asyncio (baseline col.: process)",
            asyncio_ready, process_ready),
        Row("IO", "resident memory, worker + job processes (MiB), asyncio (baseline col.: process)",
            asyncio_rss, process_rss),
    ]


SCENARIOS = {"S1": s1, "S2": s2, "S3": s3, "S4": s4, "S5": s5, "S6": s6, "S7": s7, "M1": m1,
             "P20": p20, "W50": w50, "S8": s8, "MX": mx, "IO": io}


# --- aggregation and output -----------------------------------------------------------------


def _median(values):
    nums = [v for v in values if _num(v)]
    if not nums:
        return None
    return statistics.median(nums)


def aggregate(runs: list[list[Row]]) -> list[Row]:
    out = []
    for rows in zip(*runs, strict=True):
        first = rows[0]
        agg = Row(first.scenario, first.metric, _median([r.frz for r in rows]),
                  _median([r.base for r in rows]), first.target, first.check,
                  ratio=_median([r.ratio for r in rows]), runs=[r.frz for r in rows])
        out.append(agg)
    return out


def fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) < 1e6 and abs(v) >= 1):
        return f"{int(v):,}"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def render(console: Console, rows: list[Row], repeat: int) -> None:
    table = Table(title=f"freelance_rz vs naive pyzmq baseline (median of {repeat} run(s))")
    for col, justify in (("scenario", "left"), ("metric", "left"), ("freelance_rz", "right"),
                         ("baseline", "right"), ("ratio", "right"), ("target", "left"),
                         ("pass", "center")):
        table.add_column(col, justify=justify)
    for r in rows:
        verdict = {True: "[green]pass[/]", False: "[red]FAIL[/]", None: ""}[r.passed]
        table.add_row(r.scenario, r.metric, fmt(r.frz), fmt(r.base), fmt(r.ratio), r.target, verdict)
    console.print(table)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenarios", default=",".join(DEFAULT_SCENARIOS),
                    help=f"comma-separated, of {','.join(ALL_SCENARIOS)} (default: all)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per scenario; medians reported")
    ap.add_argument("--json", metavar="PATH", help="write one JSON object per table row here")
    ap.add_argument("--pools", default="process,thread,asyncio",
                    help="pools S1 and S6 run on (default: all three; 'process' alone also "
                    "runs a version without --pool, e.g. PYTHONPATH=OLD/src)")
    args = ap.parse_args()
    OTHER_POOLS[:] = [p for p in args.pools.split(",") if p.strip() and p != "process"]
    names = [s.strip().upper() for s in args.scenarios.split(",") if s.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario(s) {unknown}; choose from {ALL_SCENARIOS}")

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    # An installed package has its bytecode compiled (pip does it); this checkout is an editable
    # install and PYTHONDONTWRITEBYTECODE may be set, so every process started would compile
    # the package again: compile it once, as an installed one is.
    compileall.compile_dir(str(BENCH_DIR.parent / "src" / "freelance_rz"), quiet=1)
    compileall.compile_file(str(BENCH_DIR / "benchtasks.py"), quiet=1)
    console = Console(width=None if sys.stdout.isatty() else 150)
    root = Path(tempfile.mkdtemp(prefix="frz-bench-"))
    started = time.perf_counter()
    all_rows: list[Row] = []
    try:
        for name in names:
            runs = []
            for i in range(args.repeat):
                t = time.perf_counter()
                try:
                    runs.append(SCENARIOS[name](root))
                except Exception as exc:  # noqa: BLE001 - report it, go on with the rest
                    console.print(f"[red]{name} run {i + 1} failed:[/] {exc!r}")
                    traceback.print_exc()
                console.print(f"{name} run {i + 1}/{args.repeat}: {time.perf_counter() - t:.1f} s")
            if runs:
                all_rows += aggregate(runs)
            else:
                all_rows.append(Row(name, "scenario failed (see above)", None, None, "runs",
                                    ("frz", "==", 0)))
    finally:
        common.kill_all()
    elapsed = time.perf_counter() - started
    render(console, all_rows, args.repeat)
    failed = [r for r in all_rows if r.passed is False]
    console.print(f"total {elapsed:.0f} s; {sum(r.passed is True for r in all_rows)} targets met, "
                  f"{len(failed)} missed; logs in {root}")
    if args.json:
        with open(args.json, "w") as f:
            for r in all_rows:
                f.write(json.dumps({
                    "scenario": r.scenario, "metric": r.metric, "freelance_rz": r.frz,
                    "baseline": r.base, "ratio": r.ratio, "target": r.target, "pass": r.passed,
                    "repeat": args.repeat, "freelance_rz_runs": r.runs,
                }, ensure_ascii=False) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

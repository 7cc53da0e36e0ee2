#!/usr/bin/env python
"""Instructions per job on each hop, counted by valgrind's callgrind: a figure the other
engineers' load on this machine does not move (CPU time does), for comparing two versions.

    python benchmarks/callgrind_s1.py [--src DIR] [--pool process|thread|asyncio] [--jobs N] [--task T]

One producer process (an embedded Producer, submitting ``--jobs`` trivial jobs one after the
other) and one worker (``--connect``, ``--slots 1``) with its job process run under
``valgrind --tool=callgrind``; the counters are zeroed after a warm-up and dumped after the
jobs. Printed: user-space instructions per job of the producer's process, the worker's
process and its job process. ``--src`` runs another checkout's ``src`` (e.g. main's) with
the same harness. Needs valgrind (apt-get install valgrind); everything stays on loopback.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent

PRODUCER = r"""
import os, sys, time
from concurrent.futures import wait
from freelance_rz import Producer
out, jobs, task = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def mark(name): open(os.path.join(out, name), "w").close()
def until(name):
    while not os.path.exists(os.path.join(out, name)): time.sleep(0.05)
with Producer("callgrind", interfaces=["127.0.0.1"], announce=False) as p:
    open(os.path.join(out, "endpoint.tmp"), "w").write(p.endpoint)
    os.rename(os.path.join(out, "endpoint.tmp"), os.path.join(out, "endpoint"))
    for i in range(50): p.submit(task, i).result(600)
    mark("warm"); until("measure")
    for i in range(jobs): p.submit(task, i).result(600)
    mark("done"); until("exit")
"""


def valgrind(out: Path, name: str) -> list[str]:
    return ["valgrind", "--tool=callgrind", "--trace-children=yes", "-q",
            f"--callgrind-out-file={out}/{name}.%p"]


def control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], capture_output=True, check=False)


def totals(out: Path, name: str) -> dict[int, int]:
    """pid -> instructions in the last dump of each process named ``name``."""
    found: dict[int, int] = {}
    for path in glob.glob(f"{out}/{name}.*"):
        match = re.fullmatch(rf"{name}\.(\d+)\.(\d+)", os.path.basename(path))
        if match is None:
            continue
        text = Path(path).read_text(errors="replace")
        total = re.search(r"^summary: (\d+)", text, re.M)
        if total:
            found[int(match[1])] = max(found.get(int(match[1]), 0), int(total[1]))
    return found


def wait_file(path: Path, timeout: float, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {path.name} after {timeout} s")
        if any(proc.poll() is not None for proc in procs):
            raise RuntimeError(f"a process exited before {path.name}")
        time.sleep(0.1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", default=str(BENCH_DIR.parent / "src"))
    ap.add_argument("--pool", default=None, help="worker --pool (omit for versions without it)")
    ap.add_argument("--jobs", type=int, default=500)
    ap.add_argument("--task", default="benchtasks:inc", help="the trivial job (asyncio pool: benchtasks:ainc)")
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed")
    out = Path(tempfile.mkdtemp(prefix="frz-callgrind-"))
    env = dict(os.environ, PYTHONPATH=f"{args.src}:{BENCH_DIR}", FREELANCE_RZ_INTERFACES="127.0.0.1",
               RZ_WORKER="w1")
    procs = []
    try:
        procs.append(subprocess.Popen(
            [*valgrind(out, "producer"), sys.executable, "-c", PRODUCER, str(out), str(args.jobs),
             args.task],
            cwd=BENCH_DIR, env=env, start_new_session=True))
        wait_file(out / "endpoint", 300, procs)
        pool = ["--pool", args.pool] if args.pool else []
        procs.append(subprocess.Popen(
            [*valgrind(out, "worker"), sys.executable, "-m", "freelance_rz.cli", "--connect",
             (out / "endpoint").read_text(), "--tasks", "benchtasks", "--slots", "1", *pool,
             "--log-level", "WARNING"], cwd=BENCH_DIR, env=env, start_new_session=True))
        wait_file(out / "warm", 900, procs)
        time.sleep(2)
        control("-z")
        (out / "measure").touch()
        wait_file(out / "done", 3600, procs)
        control("-d")
        time.sleep(3)
        (out / "exit").touch()
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, 9)
            except ProcessLookupError:
                pass
            proc.wait()
    producer, worker = totals(out, "producer"), totals(out, "worker")
    main_pid = procs[1].pid
    job = {pid: n for pid, n in worker.items() if pid != main_pid}  # and the reaper, idle
    print(f"src {args.src}, pool {args.pool or 'default'}, {args.jobs} jobs; dumps in {out}")
    print(f"  producer process   {max(producer.values()) / args.jobs:10,.0f} instructions/job")
    print(f"  worker process     {worker.get(main_pid, 0) / args.jobs:10,.0f} instructions/job")
    print(f"  job process(es)    {max(job.values(), default=0) / args.jobs:10,.0f} instructions/job "
          f"(the busiest of {len(job)}, the reaper among them)")


if __name__ == "__main__":
    main()

"""Profile the hot paths with py-spy (``pip install py-spy``): S1-style throughput or
S6-style idle latency, sampling the producer's process and one worker (with its job process).

    python benchmarks/profile.py [s1|s6] [--pool process|thread|asyncio] [--seconds 8] [--out DIR]

Samples only threads holding the GIL (``--gil``: Python CPU, not waiting). Writes collapsed stacks (``*.txt``, py-spy ``--format raw``) per process and prints the
functions with the most samples (self and inclusive) for each.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from freelance_rz import Producer  # noqa: E402

PY_SPY = str(Path(sys.executable).with_name("py-spy"))


def record(pid: int, out: Path, seconds: float, subprocesses: bool) -> subprocess.Popen:
    args = [PY_SPY, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "500",
            "--format", "raw", "--output", str(out), "--nonblocking", "--threads", "--gil"]
    if subprocesses:
        args.append("--subprocesses")
    return common.spawn(args, out.with_suffix(".log"))


def summarize(path: Path, top: int = 15) -> None:
    selfc: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        n = int(n)
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += n
        selfc[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    print(f"\n== {path.name}: {total} samples")
    print("-- self")
    for f, n in selfc.most_common(top):
        print(f"{100 * n / total:5.1f}%  {f}")
    print("-- inclusive")
    for f, n in incl.most_common(top + 10):
        print(f"{100 * n / total:5.1f}%  {f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["s1", "s6"], nargs="?", default="s1")
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--pool", default="process", choices=["process", "thread", "asyncio"])
    ap.add_argument("--out")
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="frz-profile-"))
    out.mkdir(parents=True, exist_ok=True)
    group = f"bench-prof-{os.getpid()}"
    producer = Producer(group, interfaces=["127.0.0.1"])
    procs = []
    try:
        names = ["w1", "w2"] if args.mode == "s1" else ["w1"]
        workers = [common.start_worker(n, group, out, extra=("--pool", args.pool)) for n in names]
        procs += workers
        producer.start()
        common.warm_up(producer, names)
        spies = [record(os.getpid(), out / "producer.txt", args.seconds, False),
                 record(workers[0].pid, out / "worker.txt", args.seconds, True)]
        procs += spies
        time.sleep(1.0)
        end = time.monotonic() + args.seconds - 1.5
        n = 0
        while time.monotonic() < end:
            if args.mode == "s1":
                fs = [producer.submit("benchtasks:inc", i) for i in range(2000)]
                for f in fs:
                    f.result(30)
                n += len(fs)
            else:
                time.sleep(0.005)
                producer.submit("benchtasks:inc", 1).result(5)
                n += 1
        for spy in spies:
            spy.wait(60)
        print(f"{n} jobs while sampling; stacks in {out}")
        for name in ("producer.txt", "worker.txt"):
            if (out / name).exists():
                summarize(out / name)
    finally:
        common.kill_these(procs)
        producer.close(timeout_s=5)


if __name__ == "__main__":
    main()

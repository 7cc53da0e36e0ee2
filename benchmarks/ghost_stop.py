#!/usr/bin/env python
"""How long an idle worker with ghost producers takes to stop on SIGTERM (issue 12, item 4).

    unshare --net -- bash -c "ip link set lo up && python benchmarks/ghost_stop.py [--src DIR] [--ghosts N] [--repeat K]"

Ghosts are mDNS PTR records whose SRV/TXT are gone (what a SIGKILLed producer leaves in the
caches), announced with forged goodbyes every second by the test suite's mDNS forger on
loopback. ``--src`` runs the worker from another checkout's ``src`` (an older commit, to
compare); a worker still running 60 s after SIGTERM is reported as ``inf``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "hostile"), str(ROOT / "tests")]
os.environ["FREELANCE_RZ_INTERFACES"] = "127.0.0.1"

from hostile_kit import MdnsForger  # noqa: E402


def stop_time(src: Path, ghosts: int, tmp: Path, i: int) -> float:
    """Start an idle worker, let it hear ``ghosts`` ghost producers for 3 s, SIGTERM it and
    return the seconds until it exited (inf past 60 s)."""
    env = dict(os.environ, PYTHONPATH=str(src))
    log = tmp / f"worker-{ghosts}-{i}.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "freelance_rz.cli", "--discover", "--interface", "127.0.0.1",
             "--tasks", "rztasks", "--group", f"ghost-bench-{os.getpid()}", "--name", "w1"],
            cwd=ROOT / "tests", env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while b"started" not in log.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.05)
        with MdnsForger(tmp, ghosts=[f"ghost{k}" for k in range(ghosts)], goodbye_every_s=1.0):
            time.sleep(3.0)
            started = time.monotonic()
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(60)
            except subprocess.TimeoutExpired:
                return float("inf")
            return time.monotonic() - started
    finally:
        try:
            os.killpg(worker.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        worker.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, default=ROOT / "src", help="the src directory to run")
    ap.add_argument("--ghosts", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="frz-ghosts-") as tmp:
        times = [stop_time(args.src, args.ghosts, Path(tmp), i) for i in range(args.repeat)]
    print(f"{args.src}: {args.ghosts} ghost producers: stopped "
          + ", ".join(f"{t:.2f}" for t in times) + " s after SIGTERM")


if __name__ == "__main__":
    main()

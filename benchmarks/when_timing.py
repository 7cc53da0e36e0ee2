"""Issue 15's figures: when jobs run against when they were planned to (DESIGN §9).

    python benchmarks/when_timing.py [--json PATH]

One producer (loopback, announced) and 4 workers of one slot each. Measures, from the start
times the jobs record themselves (``time.time()`` in the job process):

* retries: 20 jobs that fail twice with ConnectionRefusedError under
  ``options(retry_on=ConnectionError, backoff_s=0.5, jitter=False)``: each run's start minus
  (the previous run's start + its planned backoff, 0.5 s then 1.0 s);
* delays: 20 jobs with ``delay_s=0.5`` and 20 with ``at=now + 0.5 s``: start minus due time;
* a limit: 40 jobs of 0.1 s under ``producer.limit(task, max_running=2)``: the most running at
  once (from their start and end records), against the limit;
* a schedule: ``producer.schedule(task, every_s=0.5)`` for 10 s: each run's start minus its
  slot (slots are ``last - k * every_s``, from the schedule's ``info()``).

Timing errors include everything between the due time and the job's first line: the
producer's turn, the JOB on loopback, the worker handing it to its job process.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import tempfile
import time
from pathlib import Path

import common
from freelance_rz import Producer

GROUP = "bench-when"


def pct(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {"p50_ms": round(statistics.median(values) * 1000, 1), "max_ms": round(values[-1] * 1000, 1),
            "min_ms": round(values[0] * 1000, 1), "n": len(values)}


def runs(path: Path) -> list[list[float]]:
    return [[float(x) for x in line.split()] for line in path.read_text().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-when-"))
    out: dict[str, object] = {}
    with Producer(GROUP, interfaces=[common.LOOPBACK]) as producer:
        workers = [common.start_worker(f"w{n}", GROUP, tmp) for n in range(4)]
        try:
            producer.submit("benchtasks:inc", 1).result(timeout=60)  # the workers are up
            retry = producer.options(retry_on=ConnectionError, max_retries=3, backoff_s=0.5, jitter=False)
            paths = [tmp / f"retry-{n}" for n in range(20)]
            for f in [retry.submit("benchtasks:when_flaky", str(p), 2) for p in paths]:
                f.result(timeout=60)
            errors = []
            for p in paths:
                (a,), (b,), (c,) = runs(p)
                errors += [b - a - 0.5, c - b - 1.0]
            out["retry_error"] = pct(errors)
            delayed = []
            for n in range(20):
                path = tmp / f"delay-{n}"
                delayed.append((path, time.time() + 0.5, producer.options(delay_s=0.5).submit(
                    "benchtasks:when_span", str(path))))
                at = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=0.5)
                path = tmp / f"at-{n}"
                delayed.append((path, at.timestamp(), producer.options(at=at).submit(
                    "benchtasks:when_span", str(path))))
                time.sleep(0.05)
            for _, _, f in delayed:
                f.result(timeout=60)
            out["delay_error"] = pct([runs(path)[0][0] - due for path, due, _ in delayed])
            producer.limit("benchtasks:when_span", max_running=2)
            path = tmp / "limited"
            for f in [producer.submit("benchtasks:when_span", str(path), 0.1) for _ in range(40)]:
                f.result(timeout=60)
            events = sorted([(s, 1) for s, _ in runs(path)] + [(e, -1) for _, e in runs(path)])
            running = peak = 0
            for _, step in events:
                running += step
                peak = max(peak, running)
            out["limit"] = {"max_running": 2, "most_at_once": peak, "jobs": len(runs(path))}
            path = tmp / "scheduled"
            handle = producer.schedule("benchtasks:when_span", str(path), every_s=0.5)
            time.sleep(10.2)
            handle.pause()
            last = handle.info()["last"]
            time.sleep(0.5)  # the last run lands
            out["schedule_error"] = pct([(start - last) % 0.5 for start, _ in runs(path)])
        finally:
            for worker in workers:
                common.kill(worker)
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out))


if __name__ == "__main__":
    main()

"""A lab producer peer: an application embedding a :class:`~freelance_rz.Producer` that
submits its scenario's jobs on schedule and records every step of every job.

Run by the lab runner as ``python -m freelance_rz.lab.producer_peer RUN_DIR NAME GENERATION``
inside its host (the environment names the events file, the peer and the host, and pins
discovery to the host's address). It reads its settings from ``RUN_DIR/scenario.json``,
waits for ``RUN_DIR/go`` (the run's time zero, written by the runner once every peer is
ready), submits each batch at its ``at_s``, writes ``drained`` once every Future it holds is
resolved, and serves until SIGTERM, then closes the producer and exits 0.

A producer with ``store = true`` keeps its jobs across a restart: the new process takes the
Futures of the jobs the old one submitted and had not seen resolved (``Producer.get``) and
submits only the jobs not yet submitted, under the same keys. Without a store a restarted
producer is a new application: it submits all its jobs again, under keys ``NAME#GEN/N``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from types import FrameType
from typing import Any

from freelance_rz import JobEvent, JobOptions, Producer

from .records import ENV_EVENTS, ENV_HOST, append, read

TASK_MODULE = "freelance_rz.lab.tasks"
GO_FILE = "go"  # written by the runner: the run's time zero (time.time(), seconds)


def worker_name(identity: str | None) -> str | None:
    """A worker's peer name from its identity ``NAME-xxxxxxxx``."""
    if identity is None:
        return None
    return identity.rsplit("-", 1)[0] if "-" in identity else identity


class ProducerPeer:
    """The producer peer's state: its settings, its Producer, and the Futures it awaits."""

    def __init__(self, run_dir: Path, name: str, generation: int) -> None:
        self.run_dir = run_dir
        self.name = name
        self.generation = generation
        scenario = json.loads((run_dir / "scenario.json").read_text())
        self.spec: dict[str, Any] = next(p for p in scenario["producers"] if p["name"] == name)
        self.group: str = scenario["run_group"]
        self.events_path = os.environ.get(ENV_EVENTS) or str(run_dir / "events.jsonl")
        self.host = os.environ.get(ENV_HOST, self.spec["host"])
        durable = bool(self.spec["store"])
        self.key_prefix = name if durable or generation == 1 else f"{name}#{generation}"
        self.store = str(run_dir / f"{name}.sqlite") if durable else None
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self.unresolved = 0
        self.all_submitted = False
        self.drained_written = False

    def record(self, kind: str, **fields: Any) -> None:
        append(self.events_path, kind, peer=self.name, host=self.host, pid=os.getpid(), **fields)

    def on_event(self, event: JobEvent) -> None:
        """Producer(on_event=...): one record per step of a job's life (on the I/O thread)."""
        fields: dict[str, Any] = {"job_id": event.job_id}
        if event.worker is not None:
            fields["worker"] = worker_name(event.worker)
        if event.attempt is not None:
            fields["attempt"] = event.attempt
        self.record(event.kind, t=event.at, **fields)

    def watch(self, future: Future[Any], job_id: int) -> None:
        """Count ``future`` as awaited; record ``resolved`` once it is done."""
        with self._lock:
            self.unresolved += 1
        future.add_done_callback(lambda f: self._resolved(f, job_id))

    def _resolved(self, future: Future[Any], job_id: int) -> None:
        if future.cancelled():
            outcome = "CancelledError"
        else:
            exc = future.exception()
            outcome = "ok" if exc is None else type(exc).__name__
        self.record("resolved", job_id=job_id, outcome=outcome)
        with self._lock:
            self.unresolved -= 1
        self._check_drained()

    def _check_drained(self) -> None:
        with self._lock:
            if not self.all_submitted or self.unresolved or self.drained_written:
                return
            self.drained_written = True
        self.record("drained", generation=self.generation)

    def earlier(self) -> tuple[dict[str, int], set[int]]:
        """For a durable restart: keys already submitted (key -> job id) and the job ids
        whose Futures were already resolved, from this peer's earlier records."""
        submitted: dict[str, int] = {}
        resolved: set[int] = set()
        if self.store is None:
            return submitted, resolved
        for rec in read(self.events_path):
            if rec.get("peer") != self.name:
                continue
            if rec["kind"] == "job_key":
                submitted[rec["key"]] = rec["job_id"]
            elif rec["kind"] == "resolved":
                resolved.add(rec["job_id"])
        return submitted, resolved

    def wait_for_go(self) -> float | None:
        """The run's time zero (seconds, wall clock), or None when stopped before it."""
        path = self.run_dir / GO_FILE
        while not self.stop.is_set():
            try:
                return float(path.read_text())
            except (FileNotFoundError, ValueError):
                self.stop.wait(0.01)
        return None

    def run(self) -> int:
        submitted, resolved = self.earlier()
        producer = Producer(
            self.group, lease_s=self.spec["lease_s"], max_attempts=self.spec["max_attempts"],
            store=self.store, on_event=self.on_event,
        )
        try:
            producer.start()
            self.record(
                "producer_ready", producer_id=producer.producer_id, endpoints=producer.endpoints,
                store=self.store is not None, store_key=producer.store_key, generation=self.generation,
            )
            for key, job_id in submitted.items():
                if job_id in resolved:
                    continue
                try:
                    self.watch(producer.get(job_id), job_id)
                except KeyError:
                    self.record("missing", job_id=job_id, key=key)
            t0 = self.wait_for_go()
            if t0 is not None:
                self.submit_all(producer, t0, submitted)
            while not self.stop.wait(0.5):
                pass
        finally:
            self.record("closing", generation=self.generation)
            producer.close()
        return 0

    def submit_all(self, producer: Producer, t0: float, skip: dict[str, int]) -> None:
        """Submit every job at its time: each batch starts at its own ``at_s`` and spreads its
        submits over ``spread_s`` (batches may overlap); keys number the jobs in batch order."""
        plan: list[tuple[float, str, dict[str, Any], JobOptions]] = []
        n = 0
        for batch in self.spec["jobs"]:
            count = batch["count"]
            options = producer.options(
                timeout_s=batch["timeout_s"], max_attempts=batch["max_attempts"],
                priority=batch["priority"] or 0,
            )
            for i in range(count):
                key = f"{self.key_prefix}/{n}"
                n += 1
                if key not in skip:
                    plan.append((t0 + batch["at_s"] + batch["spread_s"] * i / count, key, batch, options))
        plan.sort(key=lambda item: item[0])  # stable: same time, batch order
        for due, key, batch, options in plan:
            delay = due - time.time()
            if delay > 0 and self.stop.wait(delay):
                return
            if self.stop.is_set():
                return
            future = options.submit(f"{TASK_MODULE}:{batch['task']}", key, batch["seconds"])
            self.record("job_key", job_id=future.job_id, key=key)
            self.watch(future, future.job_id)
        with self._lock:
            self.all_submitted = True
        self._check_drained()


def main(argv: list[str] | None = None) -> int:
    """``python -m freelance_rz.lab.producer_peer RUN_DIR NAME GENERATION``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print("usage: python -m freelance_rz.lab.producer_peer RUN_DIR NAME GENERATION", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    peer = ProducerPeer(Path(args[0]), args[1], int(args[2]))

    def on_signal(signum: int, frame: FrameType | None) -> None:
        peer.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return peer.run()


if __name__ == "__main__":
    sys.exit(main())

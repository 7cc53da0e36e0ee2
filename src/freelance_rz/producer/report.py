"""The STATUS entries a producer's I/O thread adds to the offer engine's (open connections;
with ``detail``, the tally's per-task counts and histograms, running jobs and recent
failures), and the ADMIN retry of a recent failure. Runs on the I/O thread only."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..core.ledger import Ledger
from ..core.payload import job_options
from ..core.tally import RUNNING_IN_STATUS, Tally
from ..core.text import worker_label
from .journal import Wall


class Reporter:
    """What the I/O thread knows for STATUS and ADMIN, beside the offer engine.

    Args:
        ledger: the producer's job table (running jobs' worker, attempt and progress).
        tally: the producer's tally (per-task counts, running order, failures).
        wall: the wall-clock time of the I/O thread's turn.
        connections: ``connections()``, the offer socket's open connections now.
        resubmit: ``resubmit(call, priority, timeout_ms)`` submits a job again and returns
            its id (the I/O thread's own submit).
    """

    def __init__(
        self, ledger: Ledger, tally: Tally, wall: Wall, connections: Callable[[], int],
        resubmit: Callable[[bytes, int, int | None], int],
    ) -> None:
        self.ledger = ledger
        self.tally = tally
        self.wall = wall
        self.connections = connections
        self.resubmit = resubmit

    def report(self, now: float, detail: bool) -> dict[str, Any]:
        """STATUS entries: ``connections``; with ``detail`` also the tally's report and
        ``running`` (at most RUNNING_IN_STATUS jobs, longest running first)."""
        info: dict[str, Any] = {"connections": self.connections()}
        if detail:
            info.update(self.tally.report(self.wall.now))
            info["running"] = self.running()
        return info

    def running(self) -> list[dict[str, Any]]:
        """The running jobs: id, task, worker, attempt, seconds running, progress if any."""
        out = []
        for job_id, task, since in self.tally.running_since(RUNNING_IN_STATUS):
            job = self.ledger.job(job_id)
            if job is None or job.worker is None:
                continue
            entry: dict[str, Any] = {
                "job_id": job_id, "task": task, "worker": worker_label(job.worker),  # type: ignore[arg-type]
                "attempt": job.attempt, "running_s": round(self.wall.now - since, 3),
            }
            if job.progress is not None:
                entry["done"], entry["total"], entry["message"] = job.progress
            out.append(entry)
        return out

    def retry(self, job_id: int, now: float) -> int | None:
        """Submit a recent failure or dead letter again, as a new job with the same call and
        options; returns the new job's id, or None when ``job_id`` is no recent failure."""
        failure = self.tally.failure(job_id)
        if failure is None:
            return None
        options = job_options(failure.call)
        return self.resubmit(failure.call, options.get("priority", 0), options.get("timeout_ms"))

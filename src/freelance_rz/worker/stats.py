"""What a worker did (its own module: the worker's API object makes one before it imports
ZeroMQ and its poll loop)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class WorkerStats:
    """What a worker did: counts of jobs and producers."""

    jobs_run: int = 0
    jobs_failed: int = 0
    producers_found: int = 0


__all__ = ["WorkerStats"]

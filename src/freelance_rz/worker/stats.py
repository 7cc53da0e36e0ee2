"""What a worker did (its own module: the worker's API object makes one before it imports
ZeroMQ and its poll loop)."""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_TASKS = 1000  # tasks counted apart in WorkerStats.by_task; further ones as "(other)"


@dataclass
class WorkerStats:
    """What a worker did: counts of jobs and producers, and jobs by (task, outcome), the
    outcome ``done``, ``failed`` or ``crashed`` (its process died)."""

    jobs_run: int = 0
    jobs_failed: int = 0
    producers_found: int = 0
    by_task: dict[tuple[str, str], int] = field(default_factory=dict)

    def count(self, task: str, outcome: str) -> None:
        """One more job of ``task`` ended with ``outcome``."""
        key = (task, outcome)
        if key not in self.by_task and len(self.by_task) >= MAX_TASKS * 3:
            key = ("(other)", outcome)
        self.by_task[key] = self.by_task.get(key, 0) + 1


__all__ = ["MAX_TASKS", "WorkerStats"]

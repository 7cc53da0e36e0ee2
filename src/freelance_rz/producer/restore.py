"""A durable producer's restart: the jobs its store kept go back into its ledger and tally.

Job options (priority, time limit, retry policy) come from each job's call, where
:class:`~freelance_rz.JobOptions` put them at submit. A job deferred until a wall-clock time
(a delay, a retry's backoff) is converted to this process's monotonic clock here, once (the
ledger makes a job whose due time passed while the producer was down pending at once). A job
leased when the producer died stays leased to its worker for one lease period (see
docs/protocol.md §7), so a worker still running it goes on.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable
from typing import Any

from ..core.ledger import JobState, Ledger
from ..core.match import Needs
from ..core.payload import call_needs, peek_task
from ..core.retry import RetryPolicy
from ..core.tally import Tally
from .future import JobFuture
from .journal import Wall
from .depends import classify, classify_stored
from .store import Restored, StoredResult

log = logging.getLogger("freelance_rz.producer")


def restore_jobs(restored: Restored, ledger: Ledger, tally: Tally, wall: Wall, now: float,
                 new_future: Callable[[int], JobFuture],
                 result: Callable[[int], StoredResult | None]) -> dict[int, JobFuture]:
    """Put the live jobs of ``restored`` into ``ledger`` and ``tally``, in job id order (a
    job's dependencies are restored before it): leased ones stay leased to their worker for
    one lease period from ``now`` (monotonic seconds; see
    :meth:`~freelance_rz.core.ledger.Ledger.restore`), the others come back pending, deferred
    or blocked (their waits are journaled again, which changes nothing stored). Returns a
    Future per job, made by ``new_future(job_id)``. ``result(job_id)``: a finished job's
    stored result (what a job restored with dependencies needs of those that finished)."""
    futures: dict[int, JobFuture] = {}
    for job in heapq.merge(restored.pending, restored.leased, key=lambda job: job.job_id):
        task, options = call_needs(job.payload)
        deps, values, failed = classify_stored(job.deps, ledger.__contains__, result)
        futures[job.job_id] = new_future(job.job_id)
        tally.add(job.job_id, peek_task(job.payload), job.payload, wall.now, restored=True)
        ledger.restore(
            job.job_id, job.payload, attempt=job.attempt, max_attempts=job.max_attempts,
            leases=dict(job.leases), priority=options.get("priority", 0),
            timeout_ms=options.get("timeout_ms"), lease_id=job.lease_id, now=now,
            due=None if job.due is None else wall.monotonic(job.due), retries=job.retries,
            retry=RetryPolicy.from_wire(options.get("retry")),
            needs=Needs.of(task, options.get("resources"), options.get("labels")),
            deps=deps, values=values, failed=failed,
        )
        if job.lease_id is not None:
            tally.lease(job.job_id, job.leases[job.lease_id], job.attempt, wall.now)
    log.info("store: %d job(s) restored, %d leased, %d deferred, %d blocked",
             len(futures), len(restored.leased), ledger.counts[JobState.DEFERRED],
             ledger.counts[JobState.BLOCKED])
    return futures


def waits_for(futures: tuple[JobFuture, ...], ledger: Ledger) -> dict[str, Any]:
    """The keyword arguments of :meth:`~freelance_rz.core.offer.OfferEngine.submit` for a job
    that depends on ``futures`` (none: an empty dict, the common case)."""
    if not futures:
        return {}
    deps, values, failed = classify(futures, ledger.__contains__)
    return {"deps": deps, "values": values, "failed": failed}

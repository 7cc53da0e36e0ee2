"""A durable producer's restart: the jobs its store kept go back into its ledger and tally.

Job options (priority, time limit, retry policy) come from each job's call, where
:class:`~freelance_rz.JobOptions` put them at submit. A job deferred until a wall-clock time
(a delay, a retry's backoff) is converted to this process's monotonic clock here, once: a due
time that passed while the producer was down makes the job pending at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..core.ledger import Ledger
from ..core.match import Needs
from ..core.payload import call_needs, peek_task
from ..core.retry import RetryPolicy
from ..core.tally import Tally
from .future import JobFuture
from .journal import Wall
from .depends import classify
from .depends import classify_stored
from .store import Restored, StoredResult

log = logging.getLogger("freelance_rz.producer")


def restore_jobs(restored: Restored, ledger: Ledger, tally: Tally, wall: Wall,
                 new_future: Callable[[int], JobFuture],
                 result: Callable[[int], StoredResult | None]) -> dict[int, JobFuture]:
    """Put the live jobs of ``restored`` into ``ledger`` and ``tally`` (their waits are
    journaled again, which changes nothing stored); returns a Future per job, made by
    ``new_future(job_id)``. ``result(job_id)``: a finished job's stored result (what a job
    restored with dependencies needs of those that finished)."""
    futures: dict[int, JobFuture] = {}
    deferred = 0
    for job in restored.pending:
        task, options = call_needs(job.payload)
        due = None if job.due is None or job.due <= wall.now else wall.monotonic(job.due)
        deps, values, failed = classify_stored(job.deps, ledger.__contains__, result)
        futures[job.job_id] = new_future(job.job_id)
        tally.add(job.job_id, peek_task(job.payload), job.payload, wall.now, restored=True)
        ledger.restore(
            job.job_id, job.payload, attempt=job.attempt, max_attempts=job.max_attempts,
            leases=dict(job.leases), priority=options.get("priority", 0),
            timeout_ms=options.get("timeout_ms"), due=due, retries=job.retries,
            retry=RetryPolicy.from_wire(options.get("retry")),
            needs=Needs.of(task, options.get("resources"), options.get("labels")),
            deps=deps, values=values, failed=failed,
        )
        deferred += due is not None
    log.info("store: %d job(s) restored (%d deferred), %d dead-lettered",
             len(restored.pending), deferred, len(restored.dead))
    return futures


def waits_for(futures: tuple[JobFuture, ...], ledger: Ledger) -> dict[str, Any]:
    """The keyword arguments of :meth:`~freelance_rz.core.offer.OfferEngine.submit` for a job
    that depends on ``futures`` (none: an empty dict, the common case)."""
    if not futures:
        return {}
    deps, values, failed = classify(futures, ledger.__contains__)
    return {"deps": deps, "values": values, "failed": failed}

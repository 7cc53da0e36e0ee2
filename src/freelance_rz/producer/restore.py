"""A durable producer's restart: the jobs its store kept go back into its ledger and tally.

Job options (priority, time limit, retry policy) come from each job's call, where
:class:`~freelance_rz.JobOptions` put them at submit. A job deferred until a wall-clock time
(a delay, a retry's backoff) is converted to this process's monotonic clock here, once: a due
time that passed while the producer was down makes the job pending at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..core.ledger import Ledger
from ..core.payload import job_options, peek_task
from ..core.retry import RetryPolicy
from ..core.tally import Tally
from .future import JobFuture
from .journal import Wall
from .store import Restored

log = logging.getLogger("freelance_rz.producer")


def restore_jobs(restored: Restored, ledger: Ledger, tally: Tally, wall: Wall,
                 new_future: Callable[[int], JobFuture]) -> dict[int, JobFuture]:
    """Put the live jobs of ``restored`` into ``ledger`` and ``tally`` (without journaling:
    they are in the store already); returns a Future per job, made by ``new_future(job_id)``."""
    futures: dict[int, JobFuture] = {}
    deferred = 0
    for job in restored.pending:
        options = job_options(job.payload)
        due = None if job.due is None or job.due <= wall.now else wall.monotonic(job.due)
        ledger.restore(
            job.job_id, job.payload, attempt=job.attempt, max_attempts=job.max_attempts,
            leases=dict(job.leases), priority=options.get("priority", 0),
            timeout_ms=options.get("timeout_ms"), due=due, retries=job.retries,
            retry=RetryPolicy.from_wire(options.get("retry")),
        )
        futures[job.job_id] = new_future(job.job_id)
        tally.add(job.job_id, peek_task(job.payload), job.payload, wall.now, restored=True)
        if due is not None:
            tally.defer(job.job_id, wall.now, retried=False)
            deferred += 1
    log.info("store: %d job(s) restored (%d deferred), %d dead-lettered",
             len(restored.pending), deferred, len(restored.dead))
    return futures

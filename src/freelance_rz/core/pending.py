"""The producer's pending jobs, indexed by requirement signature: which pending job a claim is
offered. Pure. Used by the :class:`~.ledger.Ledger` (a job's state lives there; this is
where its PENDING jobs wait, in order).

Theory of operation
-------------------
Pending jobs wait in one queue per requirement signature (:class:`~.match.Needs`: task,
resources, labels), each queue one FIFO per priority (higher priorities first). Every entry
carries a sequence number: a job joining at the tail takes the next of an increasing count,
a job coming back to the head (declined, undeliverable, lost its lease) the next of a
decreasing one, so comparing sequence numbers across queues gives the order a single queue
would have. A claim is offered the best head, by priority then sequence, among the queues
whose signature its worker can run (:meth:`PendingIndex.take`): the cost of a claim grows
with the number of signatures it can run (a few), never with the number of pending jobs.
Which signatures a worker can run is remembered per capabilities until a signature comes or
goes, so a claim like the last one does not check them again.
Jobs that stop being pending while queued (cancelled, resolved by a late result, refused)
are skipped when they reach a head. A signature with no pending job left is emptied and kept
for its next job (a producer that hands out jobs as they come empties and refills its queue
for every job); once more than EMPTY_KEPT are empty, they are dropped. So memory is bounded by
pending jobs, live signatures and EMPTY_KEPT.

:meth:`PendingIndex._candidates` is the one place that decides which pending jobs may be
offered to a claim. A rule of *when* a job may run (a due time, dependencies, a task's
concurrency or rate limit: DESIGN §9) joins there, by filtering the signatures a worker can
run (that list is cached; a gate that changes with time must be applied after it), or keeps
a job out of the index until it may run.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable
from typing import Protocol

from .match import Capabilities, Needs

RUNS_CACHED = 256  # capabilities whose runnable signatures are remembered, at most
EMPTY_KEPT = 64  # signatures with no pending job kept for their next job, at most


class Entry(Protocol):
    """What the index needs of a job record (the ledger's ``_Job``)."""

    job_id: int
    needs: Needs
    seq: int
    priority: int
    payload: bytes

    @property
    def pending(self) -> bool: ...


class _Queue:
    """One signature's pending jobs: a FIFO per priority, and those priorities, highest
    first. ``live``: how many of its entries are still pending."""

    __slots__ = ("needs", "levels", "priorities", "live")

    def __init__(self, needs: Needs) -> None:
        self.needs = needs
        self.levels: dict[int, deque[Entry]] = {}
        self.priorities: list[int] = []  # negated, ascending
        self.live = 0

    def level(self, priority: int) -> deque[Entry]:
        level = self.levels.get(priority)
        if level is None:
            level = self.levels[priority] = deque()
            bisect.insort(self.priorities, -priority)
        return level

    def head(self) -> Entry | None:
        """The first pending entry (highest priority, then lowest sequence), skipping (and
        dropping) entries that are no longer pending."""
        priorities = self.priorities
        while priorities:
            level = self.levels[-priorities[0]]
            while level and not level[0].pending:
                level.popleft()
            if level:
                return level[0]
            del self.levels[-priorities.pop(0)]
        return None


class PendingIndex:
    """Pending jobs by requirement signature (see the module docstring)."""

    def __init__(self) -> None:
        self._queues: dict[Needs, _Queue] = {}
        self._by_module: dict[str, dict[Needs, _Queue]] = {}  # module -> its signatures
        # capabilities -> the queues of the signatures they can run; cleared when one comes
        # or goes (a fleet has few kinds of workers; bounded by RUNS_CACHED all the same)
        self._runs: dict[Capabilities, list[_Queue]] = {}
        self._tail = 0  # sequence of the last job added at a tail
        self._head = 0  # sequence of the last job put back at a head
        self._empty = 0  # queues kept with no pending job

    def __len__(self) -> int:
        """Number of signatures with pending jobs."""
        return len(self._queues) - self._empty

    def push(self, job: Entry, head: bool = False) -> None:
        """Queue a pending job: at the tail of its signature's and priority's FIFO, or at the
        head (``head``: a job coming back). Interns ``job.needs`` (jobs of one signature
        share one object)."""
        queue = self._queues.get(job.needs)
        if queue is None:
            queue = self._queues[job.needs] = _Queue(job.needs)
            self._by_module.setdefault(job.needs.module, {})[job.needs] = queue
            self._runs.clear()
        elif not queue.live:
            self._empty -= 1
        job.needs = queue.needs
        level = queue.level(job.priority)
        if head:
            self._head -= 1
            job.seq = self._head
            level.appendleft(job)
        else:
            self._tail += 1
            job.seq = self._tail
            level.append(job)
        queue.live += 1

    def leave(self, job: Entry) -> None:
        """A queued job stopped being pending other than by :meth:`take` (cancelled,
        resolved, refused): its entry is skipped when it reaches a head."""
        self._taken(self._queues[job.needs])

    def _emptied(self, queue: _Queue) -> None:
        """``queue`` has no pending job left: its entries (all stale) go; it is kept for its
        signature's next job, or, past EMPTY_KEPT empty queues, they are all dropped."""
        queue.levels.clear()
        queue.priorities.clear()
        self._empty += 1
        if self._empty > EMPTY_KEPT:
            for empty in [q for q in self._queues.values() if not q.live]:
                self._drop(empty)
            self._empty = 0

    def _drop(self, queue: _Queue) -> None:
        self._runs.clear()
        del self._queues[queue.needs]
        module = self._by_module[queue.needs.module]
        del module[queue.needs]
        if not module:
            del self._by_module[queue.needs.module]

    def _candidates(self, caps: Capabilities | None) -> Iterable[_Queue]:
        """The queues whose jobs may be offered to a claim of a worker with ``caps`` (None:
        any job, for tools and tests): those of the signatures it can run. The one place
        that decides it (see the module docstring)."""
        if caps is None:
            return self._queues.values()
        runs = self._runs.get(caps)
        if runs is None:
            if len(self._runs) >= RUNS_CACHED:
                self._runs.clear()
            runs = self._runs[caps] = self._runnable(caps)
        return runs

    def _runnable(self, caps: Capabilities) -> list[_Queue]:
        by_module, modules = self._by_module, caps.modules
        if len(modules) <= len(by_module):
            found = [by_module[module] for module in modules if module in by_module]
        else:
            found = [queues for module, queues in by_module.items() if module in modules]
        return [queue for queues in found for needs, queue in queues.items() if caps.fits(needs)]

    def take(self, caps: Capabilities | None, closed: set[str] | None = None) -> Entry | None:
        """Remove and return the pending job a claim of a worker with ``caps`` is offered:
        the best head (priority, then sequence) among the signatures it can run, whose
        payload is at most ``caps.max_job`` bytes (a larger head keeps its place and the
        first fitting job behind it is taken, looking at O(position) entries), and whose task
        is not in ``closed`` (tasks at their limit, :mod:`.limits`). None when there is none."""
        best: Entry | None = None
        best_key = (0, 0)
        best_queue: _Queue | None = None
        for queue in self._candidates(caps):
            if closed and queue.needs.task in closed:
                continue
            job = queue.head()
            if job is None:
                continue
            key = (queue.priorities[0], job.seq)
            if best is None or key < best_key:
                best, best_key, best_queue = job, key, queue
        if best is None or best_queue is None:
            return None
        if caps is not None and len(best.payload) > caps.max_job:
            return self._take_fitting(caps, closed)
        best_queue.levels[best.priority].popleft()
        self._taken(best_queue)
        return best

    def _take_fitting(self, caps: Capabilities, closed: set[str] | None) -> Entry | None:
        """:meth:`take` when the best head is larger than the worker takes."""
        best: tuple[tuple[int, int], _Queue, int] | None = None
        for queue in self._candidates(caps):
            if closed and queue.needs.task in closed:
                continue
            for negated in queue.priorities:
                found = _first_fitting(queue.levels[-negated], caps.max_job)
                if found is not None:
                    key = (negated, queue.levels[-negated][found].seq)
                    if best is None or key < best[0]:
                        best = (key, queue, found)
                    break
        if best is None:
            return None
        (negated, _), queue, index = best
        level = queue.levels[-negated]
        job = level[index]
        del level[index]
        self._taken(queue)
        return job

    def _taken(self, queue: _Queue) -> None:
        queue.live -= 1
        if not queue.live:
            self._emptied(queue)

    def too_large(self, max_payload: int, limit: int = 100) -> list[Entry]:
        """Pending jobs larger than ``max_payload`` bytes at the head of each signature's and
        priority's FIFO (those a claim limited to it passes over), at most ``limit``."""
        out: list[Entry] = []
        for queue in self._queues.values():
            for negated in queue.priorities:
                for job in queue.levels[-negated]:
                    if not job.pending:
                        continue
                    if len(job.payload) <= max_payload:
                        break
                    out.append(job)
                    if len(out) >= limit:
                        return out
        return out

    def signatures(self) -> list[tuple[Needs, int]]:
        """Every signature with pending jobs, and how many."""
        return [(needs, queue.live) for needs, queue in self._queues.items() if queue.live]


def _first_fitting(level: deque[Entry], max_payload: int) -> int | None:
    for index, job in enumerate(level):
        if job.pending and len(job.payload) <= max_payload:
            return index
    return None

"""A worker's pool: its slots and the job processes that run them (``--pool``).

Theory of operation
-------------------
Slots are grouped in *lanes*, each served by one *active* job process at a time: the
``process`` pool has a lane per slot (a process runs one job at a time), the ``thread`` and
``asyncio`` pools one lane of all slots (one process runs up to ``--slots`` jobs at once). A
slot is free when it runs nothing and its lane's active process is ready, so no job ever
waits on a cold process: claims go out only for free slots.

Recycling (``--max-jobs-per-process``, ``--max-memory-per-process``) never stops a job: a
process handed its last allowed job, or found over the memory limit after a job, *retires*:
a replacement starts at once and becomes the lane's active process (it warms while the old
one finishes), and the retired process is closed when its last job has ended.

Stopping a job early (its time limit, or its producer cancelled it): in the ``process`` pool
its process is killed and replaced. In the ``thread`` and ``asyncio`` pools the job process
is asked to cancel it (see :mod:`freelance_rz.worker.runners`), and the slot stays busy
until the job has stopped; a job still running CANCEL_GRACE_S later (a thread that ignores
cancellation: one blocked in C, one that swallows the exception) gets its whole process
replaced, and the other jobs that process ran are *released*: the worker DECLINEs them, so
their producers offer them again at once, with the same attempt.

A process that dies running one job ends it as crashed (a lost attempt at its producer,
offered again up to its ``max_attempts``). One that dies running several cannot say which of
them killed it: they are all released (offered again at once, same attempt), and the pool
runs its next jobs one at a time (:attr:`Pool.solo`, as many as died together), so the job
that kills a process is soon caught alone and charged, and the others never are.

A process that cannot set itself up (a task module or ``--init`` fails) makes the pool
:attr:`Pool.fatal`: the worker stops and reports the error.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from dataclasses import dataclass, field

from ..core import payload as pl
from ..core.session import Outcome
from .slots import Died, JobProcess, Reaper, RunningJob, Slot, Stuck

log = logging.getLogger("freelance_rz.runner")

CANCEL_GRACE_S = 1.0  # a cancelled job on a thread must stop within this, or its process is replaced


@dataclass
class _Lane:
    """Slots served by one active job process at a time; retired ones finish their jobs.
    ``idle``: its slots that run nothing (in order; kept by :meth:`Pool._settle`)."""

    slots: list[Slot]
    active: JobProcess | None = None
    retiring: list[JobProcess] = field(default_factory=list)
    idle: dict[Slot, None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.idle = dict.fromkeys(self.slots)


@dataclass
class Taken:
    """What a job process's messages mean for the worker: jobs that ended (with their
    outcomes) and jobs released (their process was replaced; to DECLINE)."""

    finished: list[tuple[RunningJob, Outcome]] = field(default_factory=list)
    released: list[RunningJob] = field(default_factory=list)


class Pool:
    """A worker's slots and job processes (see the module docstring).

    Args:
        kind: ``"process"``, ``"thread"`` or ``"asyncio"``.
        slots: how many jobs run at once (>= 1).
        setup: what each job process sets itself up with.
        max_jobs: jobs a process runs before it is replaced, or None.
        max_memory_bytes: resident memory over which a process is replaced after a job, or None.
        reaper: told the process groups of job processes.
    """

    def __init__(self, kind: str, slots: int, setup: pl.Setup, *, max_jobs: int | None = None,
                 max_memory_bytes: int | None = None, reaper: Reaper | None = None) -> None:
        self.kind = kind
        self.setup = setup
        self.max_jobs = max_jobs
        self.max_memory_bytes = max_memory_bytes
        self._reaper = reaper
        per_lane = 1 if kind == "process" else slots
        self.slots = [Slot(index, index // per_lane) for index in range(slots)]
        self.lanes = [_Lane(self.slots[i:i + per_lane]) for i in range(0, slots, per_lane)]
        self.fatal: str | None = None  # why a job process could not be set up
        self.generation = 0  # changes whenever processes come or go
        self.procs: dict[int, JobProcess] = {}  # pipe descriptor -> process, every live one
        self._run_ids = itertools.count(1)
        self._free: int | None = None  # free slots, cached until something changes
        self.solo = 0  # jobs still to run one at a time (after a process died running several)
        self.restarts = 0  # job processes started after the first ones (replacements, recycling)

    # --- processes -------------------------------------------------------------------------

    def start(self, fork: bool = False) -> None:
        """Start every lane's job process (it is ready later). ``fork``: fork them from this
        process (see :meth:`JobProcess.start`; only while it runs a single thread, checked
        here); their replacements are always fresh interpreters. Raises OSError."""
        fork = fork and hasattr(os, "fork") and threading.active_count() == 1
        for index, lane in enumerate(self.lanes):
            lane.active = self._spawn(index, fork)
        self.restarts = 0

    def _spawn(self, lane: int, fork: bool = False) -> JobProcess:
        self.restarts += 1
        proc = JobProcess(self.setup, self._reaper)
        proc.lane = lane
        proc.start(fork)
        self.procs[proc.fd] = proc
        self._changed()
        return proc

    def _changed(self) -> None:
        self.generation += 1
        self._free = None

    def _close(self, proc: JobProcess) -> str:
        self.procs.pop(proc.fd, None)
        self._changed()
        return proc.close()

    def _lane_of(self, proc: JobProcess) -> _Lane:
        return self.lanes[proc.lane]

    def _retire(self, proc: JobProcess, why: str) -> None:
        """Replace ``proc`` as its lane's active process; close it once its jobs ended."""
        lane = self._lane_of(proc)
        if lane.active is not proc:
            return
        log.info("job process %d %s; replaced", proc.pid, why)
        lane.retiring.append(proc)
        lane.active = None if self.fatal else self._spawn(proc.lane)
        self._close_if_idle(proc)

    def _close_if_idle(self, proc: JobProcess) -> None:
        if self.procs.get(proc.fd) is not proc:  # closed already
            return
        lane = self._lane_of(proc)
        if proc in lane.retiring and not proc.running:
            lane.retiring.remove(proc)
            self._close(proc)

    def _kill(self, proc: JobProcess) -> list[RunningJob]:
        """Kill ``proc`` now and replace it if it was active: the jobs it ran (slots of
        cancelled runs are free again)."""
        lane = self._lane_of(proc)
        self._close(proc)
        if lane.active is proc:
            lane.active = None if self.fatal else self._spawn(proc.lane)
        else:
            lane.retiring.remove(proc)
        return self._forget_runs(proc)

    def _forget_runs(self, proc: JobProcess) -> list[RunningJob]:
        jobs = []
        for slot in proc.running.values():
            if slot.job is not None and slot.job.proc is proc:
                jobs.append(slot.job)
                slot.job = None
            if slot.stuck is not None and slot.stuck.proc is proc:
                slot.stuck = None
            self._settle(slot)
        proc.running.clear()
        self._free = None
        return jobs

    def close(self) -> None:
        """Kill every job process. Safe to call twice."""
        for proc in list(self.procs.values()):
            self._close(proc)
        for lane in self.lanes:
            lane.active, lane.retiring = None, []

    @property
    def ready(self) -> bool:
        """Every lane's active process is ready."""
        return all(lane.active is not None and lane.active.ready for lane in self.lanes)

    # --- slots -----------------------------------------------------------------------------

    def free_count(self) -> int:
        """How many slots could take a job now."""
        if self._free is None:
            self._free = sum(self._lane_free(lane) for lane in self.lanes)
        return self._free

    def _lane_free(self, lane: _Lane) -> int:
        """Free slots of ``lane``: idle slots while its active process is ready; while the
        pool runs jobs one at a time (:attr:`solo`), one when the whole lane is idle."""
        if lane.active is None or not lane.active.ready:
            return 0
        if self.solo:
            return 1 if len(lane.idle) == len(lane.slots) else 0
        return len(lane.idle)

    def free_slot(self) -> Slot | None:
        """A slot that could take a job now, or None."""
        if self.free_count() == 0:
            return None
        for lane in self.lanes:
            if self._lane_free(lane):
                return next(iter(lane.idle))
        return None

    def _settle(self, slot: Slot) -> None:
        """Book whether ``slot`` is idle, after its job or stuck run changed."""
        idle = self.lanes[slot.lane].idle
        if slot.job is None and slot.stuck is None:
            idle[slot] = None
        else:
            idle.pop(slot, None)

    def run(self, slot: Slot, job: RunningJob, payload: bytes) -> None:
        """Start ``job`` (call payload ``payload``) in the free ``slot``."""
        proc = self.lanes[slot.lane].active
        assert proc is not None and slot.job is None
        job.run_id, job.proc = next(self._run_ids), proc
        slot.job = job
        self._settle(slot)
        proc.running[job.run_id] = slot
        proc.run(job.run_id, payload, job.traceparent, job.job_id)
        if self._free:
            self._free -= 1
        if self.max_jobs is not None and proc.jobs >= self.max_jobs:
            self._retire(proc, f"was handed its {proc.jobs} jobs (--max-jobs-per-process)")

    def abort(self, slot: Slot, now: float) -> RunningJob | None:
        """Stop the job ``slot`` runs (its outcome will be dropped). Returns that job."""
        job, slot.job = slot.job, None
        if job is None or job.proc is None:
            self._settle(slot)
            return job
        self._free = None
        if self.kind == "process":  # one job per process: kill it
            job.proc.running.pop(job.run_id, None)
            self._kill(job.proc)
        else:
            slot.stuck = Stuck(job.run_id, job.proc, now + CANCEL_GRACE_S, job.resources)
            job.proc.cancel(job.run_id)
        self._settle(slot)
        return job

    def expire(self, now: float) -> list[RunningJob]:
        """Replace the processes of cancelled jobs still running past their grace: the
        other jobs they ran, released."""
        released: list[RunningJob] = []
        for slot in self.slots:
            stuck = slot.stuck
            if stuck is None or now < stuck.deadline:
                continue
            pid = stuck.proc.pid
            others = self._kill(stuck.proc)
            log.warning("a cancelled job ignored cancellation for %g s: its job process %d was "
                        "replaced; %d other job(s) it ran are offered again", CANCEL_GRACE_S,
                        pid, len(others))
            released += others
        return released

    def next_deadline(self) -> float | None:
        """When :meth:`expire` has work next (monotonic seconds), or None."""
        return min((slot.stuck.deadline for slot in self.slots if slot.stuck is not None), default=None)

    # --- messages ----------------------------------------------------------------------------

    def readable(self, proc: JobProcess) -> Taken:
        """Read what ``proc`` sent (its pipe is readable) and say what it means."""
        taken = Taken()
        msgs = proc.take()
        if isinstance(msgs, Died):
            self._died(proc, msgs, taken)
            return taken
        for msg in msgs:
            if isinstance(msg, pl.Finished):
                self._finished(proc, msg, taken)
            elif isinstance(msg, pl.Progress):
                slot = proc.running.get(msg.run_id)
                if slot is not None and slot.job is not None and slot.job.run_id == msg.run_id:
                    slot.job.progress = (msg.done, msg.total, msg.message)
            elif isinstance(msg, pl.Ready):
                proc.ready = True
                self._free = None
            elif isinstance(msg, pl.StartFailed):
                self._failed(proc, f"job process could not start: {msg.message}")
        if msgs:
            self._after_jobs(proc)
        return taken

    def _finished(self, proc: JobProcess, msg: pl.Finished, taken: Taken) -> None:
        slot = proc.running.pop(msg.run_id, None)
        if slot is None:
            return
        job = slot.job
        if job is not None and job.run_id == msg.run_id:
            slot.job = None
            if self.solo:
                self.solo -= 1
                self._free = None  # what is free changes with it
            taken.finished.append((job, Outcome(job.job_id, msg.ok, msg.payload)))
        elif slot.stuck is not None and slot.stuck.run_id == msg.run_id:
            slot.stuck = None  # the cancelled run has stopped: the slot is free again
        else:
            return
        self._settle(slot)
        active = self.lanes[slot.lane].active
        if self._free is not None and not self.solo and active is not None and active.ready:
            self._free += 1  # the slot is free again (counted without a scan of the slots)
        else:
            self._free = None

    def _after_jobs(self, proc: JobProcess) -> None:
        """Recycle ``proc`` when over its memory limit; close it when retired and idle."""
        lane = self._lane_of(proc)
        if lane.active is proc and self.max_memory_bytes is None:
            return  # the common case: nothing to check
        if self.procs.get(proc.fd) is not proc:  # closed already
            return
        if lane.active is proc and self.max_memory_bytes is not None and proc.ready:
            rss = proc.rss_bytes()
            if rss is not None and rss > self.max_memory_bytes:
                self._retire(proc, f"uses {rss / 2**20:.0f} MiB (--max-memory-per-process "
                             f"{self.max_memory_bytes / 2**20:g})")
        self._close_if_idle(proc)

    def _died(self, proc: JobProcess, died: Died, taken: Taken) -> None:
        if not proc.ready:
            self._failed(proc, f"job process {died.how} while starting")
            return
        lane = self._lane_of(proc)
        self.procs.pop(proc.fd, None)
        self._changed()
        if lane.active is proc:
            lane.active = None if self.fatal else self._spawn(proc.lane)
        else:
            lane.retiring.remove(proc)
        jobs = self._forget_runs(proc)
        if len(jobs) > 1:  # which one killed it cannot be told
            log.warning("job process %s running %d jobs; replaced: they are offered again, and "
                        "the next %d jobs run one at a time", died.how, len(jobs), len(jobs))
            self.solo = max(self.solo, len(jobs))
            taken.released += jobs
        elif jobs:
            log.warning("job %d: job process %s; replaced", jobs[0].job_id, died.how,
                        extra={"job_id": jobs[0].job_id, "task": jobs[0].task})
            self.solo = max(0, self.solo - 1)
            error = pl.pack_error("JobProcessDied", f"the job's process {died.how}", "")
            taken.finished.append((jobs[0], Outcome(jobs[0].job_id, False, error, crashed=True)))
        else:
            log.warning("idle job process %s; replaced", died.how)

    def _failed(self, proc: JobProcess, message: str) -> None:
        """A job process could not be set up: the pool is fatal, the process closed."""
        log.error("%s", message)
        self.fatal = self.fatal or message
        lane = self._lane_of(proc)
        self._close(proc)
        if lane.active is proc:
            lane.active = None
        else:
            lane.retiring.remove(proc)


__all__ = ["CANCEL_GRACE_S", "Pool", "Taken"]

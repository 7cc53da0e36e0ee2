"""The producer's view of its workers: what each can run, and the jobs none of them can. Pure.

What a worker can run is known per routing id from its latest claim (:meth:`Fleet.learn`): its
task modules, free resources, labels and largest job. A job handed to it with resources takes
them from that view (:meth:`Fleet.handed`) until its next claim says what is free, so its other
parked claims are not offered what it no longer has; a DECLINE that says what is free corrects
it (claims to several producers can race).

A job waits, never fails, when no worker the producer hears from can run it (DESIGN §8); it
runs as soon as such a worker claims. Meanwhile the producer says so: STATUS lists each such
requirement signature with its count and what is missing (:meth:`Fleet.waiting`), and the
producer logs it once per signature (:meth:`Fleet.warn`). Here a worker is judged by what it can
run at most: its task modules, its labels and the most of each resource it ever said it had
free (its claims say what is free *now*; a busy GPU is still a GPU). This module holds the one
wording of it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from . import wire as w
from .match import SLACK, Capabilities, Needs
from .text import clean

log = logging.getLogger("freelance_rz.producer")

NO_WORKER_WARN_S = 10.0  # jobs waiting this long with no word from any worker: say so, once
WAITING_IN_STATUS = 50  # requirement signatures STATUS lists, at most
WAITING_WARN_S = 5.0  # a signature no connected worker could run this long is logged (once)
# What the producer knows when no worker has claimed lately: a worker busy with other jobs
# (another producer's) does not claim here either, so "no worker is connected" may be false.
NO_CLAIM = ("no worker has claimed a job here lately: the group's workers may all be busy, "
            "or none is running")


@dataclass(frozen=True, slots=True)
class Waiting:
    """``jobs`` pending jobs of requirements ``needs`` that no connected worker can run, and
    why (``missing``: what no connected worker offers)."""

    needs: Needs
    jobs: int
    missing: str

    @property
    def message(self) -> str:
        """E.g. ``12 jobs of myapp.tasks:render need gpu=1: no connected worker offers
        gpu=1``."""
        wanted, many = self.needs.describe(), self.jobs != 1
        need = f" need{'' if many else 's'} {wanted}" if wanted else ""
        return f"{self.jobs} job{'s' if many else ''} of {self.needs.task}{need}: {self.missing}"

    def as_status(self) -> dict[str, object]:
        """Its STATUS entry (docs/protocol.md, STATUS_REPLY ``waiting``)."""
        return {
            "task": self.needs.task, "resources": dict(self.needs.resources),
            "labels": dict(self.needs.labels), "jobs": self.jobs, "missing": self.missing,
            "message": self.message,
        }


def missing(needs: Needs, fleet: Iterable[Capabilities]) -> str | None:
    """What no worker of ``fleet`` (each at most what it can run) offers for ``needs``, in
    words; None when one of them can run it."""
    workers = list(fleet)
    if not workers:
        return NO_CLAIM
    if any(worker.can_run(needs) for worker in workers):
        return None
    running = [w for w in workers if needs.module in w.modules]
    if not running:
        return f"no connected worker runs module {needs.module} (its --tasks)"
    labelled = [w for w in running if all(w.labels.get(k) == v for k, v in needs.labels)]
    if not labelled:
        labels = ", ".join(f"{name}={value}" for name, value in needs.labels)
        return f"no connected worker of module {needs.module} carries label {labels}"
    short = [
        f"{name}={amount:g}" for name, amount in needs.resources
        if max(w.free.get(name, 0.0) for w in labelled) + SLACK < amount
    ]
    where = " with those labels" if needs.labels else ""
    if short:
        return f"no connected worker{where} offers {', '.join(short)}"
    return f"no connected worker{where} offers {needs.describe()} at once"


def unrunnable(signatures: Iterable[tuple[Needs, int]], fleet: Iterable[Capabilities]) -> list[Waiting]:
    """The signatures (with their pending counts) that no worker of ``fleet`` can run, most
    jobs first."""
    workers = set(fleet)  # workers alike are asked once
    out = []
    for needs, jobs in signatures:
        why = missing(needs, workers)
        if why is not None:
            out.append(Waiting(needs, jobs, why))
    out.sort(key=lambda waiting: (-waiting.jobs, waiting.needs.task))
    return out


class Fleet:
    """What the producer knows of the workers it hears from (see the module docstring).

    Attributes:
        caps: routing id -> what the worker can run now (its latest claim, less what was
            handed to it since).
        capacity: routing id -> the most of each resource it ever said it had free.
    """

    def __init__(self, now: float) -> None:
        self.caps: dict[bytes, Capabilities] = {}
        self.capacity: dict[bytes, dict[str, float]] = {}
        self._said: dict[bytes, w.Claim] = {}  # the claim its caps are (while nothing changed them)
        self._unrunnable_since: dict[Needs, float] = {}
        self._warned: set[Needs] = set()  # signatures logged (until they can run again)
        self._check_at = now
        self.last_heard = now  # when any worker last sent anything
        self._idle_warned = False

    def learn(self, identity: bytes, claim: w.Claim) -> bool:
        """What the claiming worker can run now (one that does not say its ``max_job``
        takes what its MAXMSGSIZE lets through). True when it changed from what was known."""
        said = self._said.get(identity)
        if (said is not None and said.tasks is claim.tasks and said.max_job == claim.max_job
                and said.resources == claim.resources and said.labels == claim.labels):
            return False  # as its last claim said (the common case; the codec returns one
            # tuple for equal lists of modules)
        self._said[identity] = claim
        before = self.caps.get(identity)
        max_job = w.DEFAULT_MAX_PAYLOAD if claim.max_job is None else claim.max_job
        free, labels = claim.resources or {}, claim.labels or {}
        caps = self.caps[identity] = Capabilities(frozenset(claim.tasks), free, labels, max_job)
        if free:
            most = self.capacity.setdefault(identity, {})
            for name, amount in free.items():
                if amount > most.get(name, -1.0):
                    most[name] = amount
        return before is not None and before != caps

    def handed(self, identity: bytes, resources: tuple[tuple[str, float], ...]) -> None:
        """A job holding ``resources`` was handed to the worker."""
        caps = self.caps.get(identity)
        if caps is not None and resources:
            self.caps[identity] = caps.holding(resources)
            self._said.pop(identity, None)

    def declined(self, identity: bytes, msg: w.Decline) -> None:
        """The worker declined a JOB, saying what it has free or the largest job it takes."""
        caps = self.caps.get(identity)
        if caps is not None and msg.resources is not None:
            caps = self.caps[identity] = caps.with_free(msg.resources)
        if caps is not None and msg.max_job is not None:
            self.caps[identity] = caps.with_max_job(msg.max_job)
        self._said.pop(identity, None)

    def forget(self, identity: bytes) -> None:
        self.caps.pop(identity, None)
        self.capacity.pop(identity, None)
        self._said.pop(identity, None)

    def largest_job(self, default: int) -> int:
        """The largest job payload any known worker takes, in bytes (``default``: none known)."""
        return max((caps.max_job for caps in self.caps.values()), default=default)

    def waiting(self, signatures: Iterable[tuple[Needs, int]]) -> list[Waiting]:
        """Of ``signatures`` (requirements of pending jobs, with counts), those no known
        worker can run, each worker taken at the most it ever had free."""
        fleet = [Capabilities(caps.modules, self.capacity.get(identity, caps.free), caps.labels,
                              caps.max_job) for identity, caps in self.caps.items()]
        return unrunnable(signatures, fleet)

    def warn_unserved(self, now: float, pending: int, facts: dict[str, Any]) -> None:
        """Say once (until a worker speaks again) that ``pending`` jobs wait and no worker has
        said anything for NO_WORKER_WARN_S: its workers all busy (with another producer's
        jobs), a wrong group, or no worker started (``facts``: the producer's id, group and
        endpoints, for the message). Silence cannot tell these apart, so the message names
        each."""
        if not pending or now - self.last_heard < NO_WORKER_WARN_S:
            self._idle_warned = False
            return
        if self._idle_warned:
            return
        self._idle_warned = True
        group, endpoints = facts.get("group"), facts.get("endpoints") or ["ENDPOINT"]
        log.warning(
            "%d job(s) waiting and no worker has claimed a job from producer %s (group %r) for "
            "%.0f s: the group's workers may all be busy, or none is running; start workers of "
            "this group, e.g. `freelance-worker --discover --group %s --tasks MODULE`, or "
            "`--connect %s`", pending, facts.get("producer_id"), group,
            now - self.last_heard, group, endpoints[0],
        )

    def warn(self, now: float, pending: Callable[[], list[tuple[Needs, int]]],
             producer_id: object) -> None:
        """Once a second: log, once per requirement signature, jobs that no known worker
        could run for WAITING_WARN_S (``pending()``: the signatures of pending jobs and their
        counts). While no worker claims at all, the producer says that instead."""
        if now < self._check_at:
            return
        self._check_at = now + 1.0
        signatures = pending() if self.caps else []
        if not signatures:
            self._unrunnable_since.clear()
            return
        found = {waiting.needs: waiting for waiting in self.waiting(signatures)}
        since = {needs: self._unrunnable_since.get(needs, now) for needs in found}
        self._unrunnable_since = since
        self._warned.intersection_update(found)
        for needs, waiting in found.items():
            if needs not in self._warned and now - since[needs] >= WAITING_WARN_S:
                self._warned.add(needs)
                log.warning("%s; waiting until such a worker claims (producer %s)",
                            clean(waiting.message, 400), producer_id)

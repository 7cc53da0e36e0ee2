"""Jobs that no connected worker can run: found and worded, one place for the wording. Pure.

A job waits, never fails, when no worker that the producer hears from can run it (DESIGN §8);
it runs as soon as such a worker claims. Meanwhile the producer says so: STATUS lists each
such requirement signature with its count and what is missing (:func:`unrunnable`), and the
producer logs it once per signature (:class:`~.offer.OfferEngine`). A worker is judged by what
it can run at most: its task modules, its labels and the most of each resource it ever said
it had free (its claims say what is free *now*; a busy GPU is still a GPU).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .match import SLACK, Capabilities, Needs

WAITING_IN_STATUS = 50  # requirement signatures STATUS lists, at most
WAITING_WARN_S = 5.0  # a signature no connected worker could run this long is logged (once)


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
        wanted = self.needs.describe()
        need = f" need {wanted}" if wanted else ""
        return f"{self.jobs} job{'s' if self.jobs != 1 else ''} of {self.needs.task}{need}: {self.missing}"

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
        return "no worker is connected"
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

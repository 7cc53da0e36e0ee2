"""What a job needs and what a worker can run: requirements, capabilities, the matching rule
and its limits, written once. Pure.

Theory of operation
-------------------
A job's requirements (:class:`Needs`) are its task (and so the task's module), the resources
it holds on a worker while it runs (``{"gpu": 1}``: numbers) and the labels its worker must
carry (``{"zone": "eu"}``: strings). A CLAIM says what its worker can run
(:class:`Capabilities`): its task modules (its ``--tasks``), its resources free now and its
labels. A worker can run a job when (:meth:`Capabilities.can_run`):

* the job's module is one of the worker's task modules,
* every resource the job needs is free on the worker in at least that amount, and
* every label the job names is carried by the worker with that value.

Jobs with equal requirements share one requirement *signature* (one :class:`Needs` object,
interned by the pending index, :mod:`.pending`): the producer's pending jobs are indexed by
it, so a claim looks at the few signatures its worker can run, never at the jobs. The design
is DESIGN §8; resources as numbers held while a job runs are Dask's and Ray's worker
resources, labels are Celery's queues or Kubernetes' node selectors turned into a property of
the claim.

The wire limits of every field (how many modules a claim lists, how long a name is, how large
an amount) live here too, so the codec (:mod:`.wire`), the argument checks of the API
(:mod:`.check`) and the payload's options (:mod:`.payload`) apply the same ones.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: a Python module name (dotted identifiers): a task's module, a worker's ``--tasks``
MODULE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
MODULE_MAX_CHARS = 200  # characters of one module name in a CLAIM
MAX_MODULES = 256  # task modules one CLAIM may list
#: a resource or label name: a letter or ``_``, then letters, digits, ``_``, ``.``, ``-``
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
MAX_RESOURCES = 32  # resources one worker declares, or one job needs, at most
MAX_LABELS = 32  # labels one worker carries, or one job names, at most
LABEL_VALUE_MAX_CHARS = 128  # characters of one label value
MAX_AMOUNT = 1e15  # the largest amount of a resource (a finite number >= 0)
SLACK = 1e-9  # amounts are floats: 0.1 + 0.2 of a resource still fits in 0.3

Pairs = tuple[tuple[str, Any], ...]


def _pairs(values: Mapping[str, Any] | None) -> Pairs:
    return tuple(sorted(values.items())) if values else ()


@dataclass(frozen=True, slots=True)
class Needs:
    """A job's requirements: its requirement signature.

    Attributes:
        task: ``"module:function"``.
        module: the task's module, which the worker must have among its task modules.
        resources: ``(name, amount)`` pairs sorted by name, amounts > 0 (a zero amount needs
            nothing and is left out); held on the worker while the job runs.
        labels: ``(name, value)`` pairs sorted by name; the worker must carry each.

    Build it with :meth:`of`; equal requirements make equal (and equally hashed) objects.
    """

    task: str
    module: str
    resources: tuple[tuple[str, float], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    _hash: int = field(default=0, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.task, self.resources, self.labels)))

    def __hash__(self) -> int:
        return self._hash

    @classmethod
    def of(cls, task: str, resources: Mapping[str, float] | None = None,
           labels: Mapping[str, str] | None = None) -> Needs:
        """The requirements of a job of ``task`` (its options already checked: see
        :func:`check_resources` and :func:`check_labels`)."""
        return cls(task, task.partition(":")[0],
                   _pairs({k: v for k, v in resources.items() if v} if resources else None),
                   _pairs(labels))

    def describe(self) -> str:
        """E.g. ``gpu=1, mem_gb=8, label zone=eu``; ``""`` when it needs only its task."""
        parts = [f"{name}={amount:g}" for name, amount in self.resources]
        parts += [f"label {name}={value}" for name, value in self.labels]
        return ", ".join(parts)


class Capabilities:
    """What a worker can run, as its latest CLAIM said (the producer's view of it).

    Args:
        modules: its task modules.
        free: resource name -> amount free now (a resource it does not name is 0).
        labels: label name -> value.
        max_job: the largest job payload it takes, in bytes.

    Equal capabilities compare and hash equal: workers that can run the same jobs form one
    class, which the producer asks once (see :meth:`~.offer.OfferEngine._dispatch`).
    """

    __slots__ = ("modules", "free", "labels", "max_job", "_hash")

    def __init__(self, modules: frozenset[str], free: Mapping[str, float],
                 labels: Mapping[str, str], max_job: int) -> None:
        self.modules = modules
        self.free = free
        self.labels = labels
        self.max_job = max_job
        self._hash = hash((modules, _pairs(free), _pairs(labels), max_job))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Capabilities) and self._hash == other._hash
            and self.modules == other.modules and self.free == other.free
            and self.labels == other.labels and self.max_job == other.max_job
        )

    def __repr__(self) -> str:
        return (f"Capabilities(modules={sorted(self.modules)}, free={dict(self.free)}, "
                f"labels={dict(self.labels)}, max_job={self.max_job})")

    def can_run(self, needs: Needs) -> bool:
        """The matching rule (see the module docstring); payload size aside (``max_job``)."""
        return needs.module in self.modules and self.fits(needs)

    def fits(self, needs: Needs) -> bool:
        """The job's resources are free here and its labels carried (its module aside)."""
        free, labels = self.free, self.labels
        for name, amount in needs.resources:
            if free.get(name, 0.0) + SLACK < amount:
                return False
        for name, value in needs.labels:
            if labels.get(name) != value:
                return False
        return True

    def holding(self, resources: Iterable[tuple[str, float]]) -> Capabilities:
        """These capabilities once a job holding ``resources`` has been handed to the worker."""
        free = dict(self.free)
        for name, amount in resources:
            free[name] = max(0.0, free.get(name, 0.0) - amount)
        return Capabilities(self.modules, free, self.labels, self.max_job)

    def with_free(self, free: Mapping[str, float]) -> Capabilities:
        """These capabilities with ``free`` resources (a DECLINE said what is free now)."""
        return Capabilities(self.modules, free, self.labels, self.max_job)

    def with_max_job(self, max_job: int) -> Capabilities:
        return Capabilities(self.modules, self.free, self.labels, max_job)


def free_resources(total: Mapping[str, float], held: Iterable[Iterable[tuple[str, float]]]
                   ) -> dict[str, float]:
    """What a worker with ``total`` resources has free while its running jobs hold ``held``
    (one ``(name, amount)`` list per job): recomputed from scratch, so floats never drift."""
    free = dict(total)
    for resources in held:
        for name, amount in resources:
            free[name] = free.get(name, 0.0) - amount
    return {name: max(0.0, amount) for name, amount in free.items()}


def fits(resources: Iterable[tuple[str, float]], free: Mapping[str, float]) -> bool:
    """``resources`` are all free in ``free`` (the worker's check of a JOB)."""
    return all(free.get(name, 0.0) + SLACK >= amount for name, amount in resources)


# --- the limits, as the wire checks them (a msgpack value from a peer) ----------------------


_CHECKED_MODULES: dict[tuple[Any, ...], tuple[str, ...]] = {}  # lists of modules seen valid


def wire_modules(value: Any) -> tuple[str, ...]:
    """A CLAIM's ``tasks``: 1 to MAX_MODULES module names. Raises ValueError. (A worker
    sends the same list in every claim: lists found valid are remembered, up to 256, and the
    same tuple is returned for them.)"""
    if type(value) is not list or not 1 <= len(value) <= MAX_MODULES:
        raise ValueError(f"must be an array of 1 to {MAX_MODULES} module names")
    key = tuple(value)
    try:  # only strs equal strs: a tuple found here holds the same, valid, names
        checked = _CHECKED_MODULES.get(key)
    except TypeError:  # an unhashable element (an array, a map)
        checked = None
    if checked is not None:
        return checked
    for module in key:
        if type(module) is not str or len(module) > MODULE_MAX_CHARS or not MODULE_RE.fullmatch(module):
            raise ValueError(f"must hold module names (dotted Python names of at most "
                             f"{MODULE_MAX_CHARS} characters)")
    if len(_CHECKED_MODULES) >= 256:
        _CHECKED_MODULES.clear()
    _CHECKED_MODULES[key] = key
    return key


def _wire_names(value: Any, most: int, what: str) -> dict[str, Any]:
    if type(value) is not dict or len(value) > most:
        raise ValueError(f"must be a map of at most {most} {what}")
    for name in value:
        if type(name) is not str or not NAME_RE.fullmatch(name):
            raise ValueError("has a bad name (names are 1 to 64 of A-Z a-z 0-9 _ . -, "
                             "starting with a letter or _)")
    return value


def wire_resources(value: Any) -> dict[str, float]:
    """``resources`` (CLAIM, JOB, DECLINE): a map of at most MAX_RESOURCES names to finite
    numbers from 0 to MAX_AMOUNT. Raises ValueError."""
    value = _wire_names(value, MAX_RESOURCES, "resources")
    for amount in value.values():
        if type(amount) not in (int, float) or not 0 <= amount <= MAX_AMOUNT:  # NaN fails too
            raise ValueError(f"must map names to numbers from 0 to {MAX_AMOUNT:g}")
    return value  # type: ignore[no-any-return]


def wire_labels(value: Any) -> dict[str, str]:
    """A CLAIM's ``labels``: a map of at most MAX_LABELS names to strings of at most
    LABEL_VALUE_MAX_CHARS characters. Raises ValueError."""
    value = _wire_names(value, MAX_LABELS, "labels")
    for text in value.values():
        if type(text) is not str or len(text) > LABEL_VALUE_MAX_CHARS:
            raise ValueError(f"must map names to strings of at most {LABEL_VALUE_MAX_CHARS} "
                             "characters")
    return value  # type: ignore[no-any-return]


def valid_amount(amount: Any) -> bool:
    """A resource amount: an int or float (not a bool), finite, 0 to MAX_AMOUNT."""
    return (type(amount) in (int, float) and math.isfinite(amount)
            and 0 <= amount <= MAX_AMOUNT)

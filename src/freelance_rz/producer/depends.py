"""Dependencies between jobs, on the producer's side: a Future of one of its jobs passed as an
argument (or in ``options(after=[...])``) makes the new job wait for it.

At submit, :func:`reference` turns each such Future in the arguments into a reference (the
payload codec's :data:`~freelance_rz.core.payload.REF_EXT`: msgpack calls it only for values
it cannot encode, so arguments without Futures cost nothing more); the ledger replaces the
references by the results before the job is offered, so a worker never sees one. On the I/O
thread, :func:`classify` sorts the Futures a job depends on (a Future is resolved there, so
what it says agrees with the ledger): jobs still live, results already in, or one that failed.
After a restart, :func:`classify_stored` does the same from the store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any


from ..core import payload as pl
from .future import JobFuture
from .store import StoredResult

#: what became of a dependency that did not succeed, by its stored state
_ENDED = {"failed": "failed", "dead": "was dead-lettered", "cancelled": "was cancelled"}


def reference(owner: object, deps: list[JobFuture], foreign: list[JobFuture]) -> Callable[[Any], Any]:
    """msgpack's ``default`` hook for a job's arguments: a :class:`JobFuture` of ``owner``'s
    (its ``cancel`` posts to ``owner``) becomes a reference and is added to ``deps``; one of
    another producer is added to ``foreign`` (the caller raises); anything else is refused as
    msgpack refuses it."""

    def to_id(obj: Any) -> int | None:
        if not isinstance(obj, JobFuture):
            return None
        (deps if owns(owner, obj) else foreign).append(obj)
        return obj.job_id

    return pl.References(to_id)


def owns(owner: object, future: JobFuture) -> bool:
    """Whether ``future`` is of a job of ``owner`` (the producer its cancel posts to)."""
    return getattr(future._on_cancel, "__self__", None) is owner


def classify(futures: Iterable[JobFuture], live: Callable[[int], bool],
             ) -> tuple[tuple[int, ...], dict[int, bytes], tuple[int, str] | None]:
    """The dependencies of a job being submitted: ids of live jobs it waits for, the results
    of those that succeeded (job id -> value payload), and ``(job id, what became of it)`` of
    one that did not (the job then fails at once), or None."""
    deps, values = [], {}
    for future in futures:
        if not future.done():
            if live(future.job_id):
                deps.append(future.job_id)
                continue
            return (), {}, (future.job_id, "is not a live job of this producer")
        if future.cancelled():
            return (), {}, (future.job_id, "was cancelled")
        error = future.exception()
        if error is not None:
            return (), {}, (future.job_id, f"failed: {error}"[:300])
        values[future.job_id] = pl.pack_value(future.result())
    return tuple(deps), values, None


def classify_stored(deps: tuple[int, ...], live: Callable[[int], bool],
                    result: Callable[[int], StoredResult | None],
                    ) -> tuple[tuple[int, ...], dict[int, bytes], tuple[int, str] | None]:
    """:func:`classify` for a job restored from the store, whose dependencies are ids: a live
    one (restored before it: a dependency's id is lower) is waited for, a finished one is
    read from the store's results."""
    waiting, values = [], {}
    for dep in deps:
        if live(dep):
            waiting.append(dep)
            continue
        found = result(dep)
        if found is None:
            return (), {}, (dep, "has no result in the store (purged by retention?)")
        if found.state != "done":
            return (), {}, (dep, _ENDED.get(found.state, found.state))
        values[dep] = found.payload
    return tuple(waiting), values, None


def depends_on(options: Any) -> tuple[JobFuture, ...]:
    """``options(after=...)``, checked: an iterable of :class:`JobFuture` (or None).

    Raises:
        TypeError: something else.
    """
    if options is None:
        return ()
    futures = tuple(options) if isinstance(options, Iterable) else (options,)
    for future in futures:
        if not isinstance(future, JobFuture):
            raise TypeError(f"after must be a list of Futures returned by submit, got {future!r}")
    return futures


__all__ = ["classify", "classify_stored", "depends_on", "owns", "reference"]

"""Claims that wait for a job (long-polls), on the producer. Pure.

A worker parks one claim per free slot; a claim waits until a job comes (the offer engine
takes the next one, :meth:`ParkedClaims.next_claim`) or its ``wait_ms`` passes
(:meth:`ParkedClaims.expired`). Jobs go to the worker identities in turn (each one's oldest
claim), so one busy client cannot starve the others; an identity passed over (it can run none
of the pending jobs) keeps its turn. Memory is bounded: MAX_PARKED_PER_WORKER claims per
identity and MAX_PARKED in all.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

MAX_PARKED_PER_WORKER = 1024  # parked claims per worker identity (a worker needs one a slot)
MAX_PARKED = 16384  # parked claims in all; past it the identity with the most loses its oldest


class ParkedClaims:
    """Claims waiting for a job (long-polls), expired through a heap. Jobs go to the worker
    identities in turn (each one's oldest claim), and each identity may park at most
    MAX_PARKED_PER_WORKER claims: a flood of CLAIMs from one identity is answered NOJOB at
    once, neither growing the producer nor starving the other workers (a real worker parks
    one claim per free slot)."""

    def __init__(self) -> None:
        self._order: dict[tuple[bytes, int], float] = {}  # (identity, rid) -> expires_at
        # identity -> its parked rids, oldest first; identities in the order they are served
        self._by_worker: dict[bytes, dict[int, None]] = {}
        self._heap: list[tuple[float, bytes, int]] = []  # may hold removed claims: skipped

    def __len__(self) -> int:
        return len(self._order)

    def count(self, identity: bytes) -> int:
        """Claims ``identity`` has parked (its free slots waiting here)."""
        return len(self._by_worker.get(identity, ()))

    def keys(self) -> list[tuple[bytes, int]]:
        return list(self._order)

    def park(
        self, identity: bytes, rid: int, expires_at: float
    ) -> tuple[bool, tuple[bytes, int] | None]:
        """Park a claim. Returns whether it was parked (not when the identity already has
        MAX_PARKED_PER_WORKER parked, or when MAX_PARKED are parked and it has the most), and
        the claim shed to make room (the oldest of the identity with the most, which gets
        NOJOB), if any."""
        rids = self._by_worker.get(identity, {})
        if len(rids) >= MAX_PARKED_PER_WORKER or (identity, rid) in self._order:
            return False, None
        shed = None
        if len(self._order) >= MAX_PARKED:
            top = max(self._by_worker, key=lambda other: len(self._by_worker[other]))
            if len(self._by_worker[top]) <= len(rids) + 1:
                return False, None
            shed = (top, next(iter(self._by_worker[top])))
            self.remove(*shed)
        rids = self._by_worker.setdefault(identity, rids)
        rids[rid] = None
        self._order[(identity, rid)] = expires_at
        heapq.heappush(self._heap, (expires_at, identity, rid))
        if len(self._heap) > 2 * len(self._order) + 1024:  # churn left stale entries: compact
            self._heap = [(t, i, r) for (i, r), t in self._order.items()]
            heapq.heapify(self._heap)
        return True, shed

    def remove(self, identity: bytes, rid: int) -> bool:
        if self._order.pop((identity, rid), None) is None:
            return False
        rids = self._by_worker[identity]
        del rids[rid]
        if not rids:
            del self._by_worker[identity]
        return True

    def drop_worker(self, identity: bytes) -> None:
        for rid in self._by_worker.pop(identity, ()):
            del self._order[(identity, rid)]

    def next_claim(self, skip: Callable[[bytes], bool]) -> tuple[bytes, int] | None:
        """The oldest claim of the first identity in turn for which ``skip(identity)`` is
        False, or None; it stays parked until :meth:`served`."""
        for identity, rids in self._by_worker.items():
            if not skip(identity):
                return identity, next(iter(rids))
        return None

    def served(self, identity: bytes, rid: int) -> None:
        """A parked claim was answered with a job: remove it; its identity goes to the back
        of the line."""
        if self.remove(identity, rid) and identity in self._by_worker:
            self._by_worker[identity] = self._by_worker.pop(identity)

    def identities(self) -> int:
        """Number of identities with parked claims."""
        return len(self._by_worker)

    def has(self, identity: bytes) -> bool:
        """``identity`` has a claim parked."""
        return identity in self._by_worker

    def expired(self, now: float) -> list[tuple[bytes, int]]:
        """Remove and return the claims whose wait is over."""
        out = []
        while self._heap and self._heap[0][0] <= now:
            _, identity, rid = heapq.heappop(self._heap)
            if self._order.get((identity, rid), now + 1) <= now and self.remove(identity, rid):
                out.append((identity, rid))
        return out

    def next_expiry(self) -> float | None:
        return self._heap[0][0] if self._heap else None

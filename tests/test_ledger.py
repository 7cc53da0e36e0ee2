"""Tests of the producer's job ledger (pure: the clock is a number we move by hand)."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
from hypothesis import assume, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from freelance_rz.core.payload import pack_exception
from freelance_rz.producer.depends import classify_stored
from freelance_rz.producer.store import StoredResult
from freelance_rz.core.retry import DEFAULT_MAX_RETRIES
from freelance_rz.errors import Retry
from freelance_rz.core.ledger import (
    TERMINAL,
    TRANSITIONS,
    Expired,
    JobState,
    Lease,
    Ledger,
    LedgerError,
)

P, L, D, F, X, C = (
    JobState.PENDING,
    JobState.LEASED,
    JobState.DONE,
    JobState.FAILED,
    JobState.DEAD,
    JobState.CANCELLED,
)
W = JobState.DEFERRED
B = JobState.BLOCKED
LEASE_S = 10.0


@pytest.fixture
def ledger() -> Ledger:
    return Ledger(lease_s=LEASE_S, max_attempts=3)


def counts(ledger: Ledger) -> dict[JobState, int]:
    """The non-zero counters, for compact assertions."""
    return {state: n for state, n in ledger.counts.items() if n}


def claim_ok(ledger: Ledger, worker: str, now: float) -> Lease:
    lease = ledger.claim(worker, now)
    assert lease is not None
    return lease


# --- the transition table ---------------------------------------------------------------


def test_transition_table_is_exactly_the_documented_one():
    assert TRANSITIONS == {
        (None, "submit"): P,
        (P, "claim"): L,
        (None, "resume"): L,
        (L, "beat"): L,
        (L, "release"): P,
        (L, "expire"): P,
        (L, "exhaust"): X,
        (L, "succeed"): D,
        (L, "fail"): F,
        (P, "succeed"): D,
        (P, "fail"): F,
        (P, "cancel"): C,
        (L, "cancel"): C,
        (None, "defer"): W,
        (W, "due"): P,
        (L, "retry"): W,
        (P, "retry"): W,
        (W, "retry"): W,
        (W, "succeed"): D,
        (W, "fail"): F,
        (W, "cancel"): C,
        (None, "block"): B,
        (B, "unblock"): P,
        (B, "defer"): W,
        (B, "fail"): F,
        (B, "cancel"): C,
    }
    assert TERMINAL == {D, F, X, C}


@pytest.mark.parametrize("state", sorted(TERMINAL, key=lambda s: s.value))
def test_no_event_leaves_a_terminal_state(state):
    events = {event for _, event in TRANSITIONS}
    for event in events:
        assert (state, event) not in TRANSITIONS


@pytest.mark.parametrize(
    "state, event",
    [(D, "claim"), (P, "beat"), (P, "release"), (P, "expire"), (P, "exhaust"), (L, "claim"),
     (None, "claim"), (P, "submit"), (C, "cancel"), (P, "resume"), (L, "resume"),
     (W, "resume"), (B, "resume"), (W, "claim"), (W, "beat"), (W, "expire"), (P, "due"),
     (L, "due"), (W, "release")],
)
def test_illegal_pairs_have_no_entry(state, event):
    assert (state, event) not in TRANSITIONS


def test_illegal_transition_raises_ledger_error(ledger):
    # No public method can provoke an illegal transition, so use the private hook once.
    ledger.submit(1, b"x")
    job = ledger._jobs[1]
    with pytest.raises(LedgerError, match="'beat'"):
        ledger._move(job, "beat")  # PENDING --beat--> is not allowed
    assert ledger.state(1) is P
    assert counts(ledger) == {P: 1}


# --- constructor and submit -------------------------------------------------------------


@pytest.mark.parametrize("lease_s", [0, -1, -0.5, math.nan])
def test_constructor_rejects_bad_lease_s(lease_s):
    with pytest.raises(ValueError, match="lease_s"):
        Ledger(lease_s=lease_s, max_attempts=1)


@pytest.mark.parametrize("max_attempts", [0, -1])
def test_constructor_rejects_bad_max_attempts(max_attempts):
    with pytest.raises(ValueError, match="max_attempts"):
        Ledger(lease_s=1.0, max_attempts=max_attempts)


def test_constructor_arguments_are_keyword_only():
    with pytest.raises(TypeError):
        Ledger(1.0, 1)  # type: ignore[misc]


def test_new_ledger_is_empty(ledger):
    assert len(ledger) == 0
    assert ledger.pending == 0
    assert ledger.next_deadline() is None
    assert ledger.claim("w", 0.0) is None
    assert ledger.expire(1e9) == []
    assert counts(ledger) == {}
    assert set(ledger.counts) == set(JobState)
    assert ledger.state(1) is None
    assert 1 not in ledger


def test_submit_makes_a_pending_job(ledger):
    ledger.submit(7, b"payload")
    assert 7 in ledger
    assert ledger.state(7) is P
    assert ledger.attempt(7) == 1
    assert len(ledger) == 1
    assert ledger.pending == 1
    assert counts(ledger) == {P: 1}


def test_submit_duplicate_live_id_is_refused(ledger):
    ledger.submit(1, b"a")
    with pytest.raises(ValueError, match="already"):
        ledger.submit(1, b"b")
    claim_ok(ledger, "w", 0.0)
    with pytest.raises(ValueError, match="already"):
        ledger.submit(1, b"b")
    assert counts(ledger) == {L: 1}


@pytest.mark.parametrize("max_attempts", [0, -3])
def test_submit_rejects_bad_max_attempts(ledger, max_attempts):
    with pytest.raises(ValueError, match="max_attempts"):
        ledger.submit(1, b"a", max_attempts=max_attempts)
    assert 1 not in ledger
    assert counts(ledger) == {}


def test_attempt_of_unknown_job_raises_key_error(ledger):
    with pytest.raises(KeyError):
        ledger.attempt(99)


# --- claim -------------------------------------------------------------------------------


def test_claim_is_fifo_and_returns_a_lease(ledger):
    for job_id in (3, 1, 2):
        ledger.submit(job_id, f"p{job_id}".encode())
    leases = [claim_ok(ledger, "w", 5.0) for _ in range(3)]
    assert [lease.job_id for lease in leases] == [3, 1, 2]
    assert [lease.payload for lease in leases] == [b"p3", b"p1", b"p2"]
    assert all(lease.attempt == 1 for lease in leases)
    assert all(lease.deadline == 5.0 + LEASE_S for lease in leases)
    assert len({lease.lease_id for lease in leases}) == 3
    assert all(0 <= lease.lease_id < 2**63 for lease in leases)
    assert ledger.claim("w", 5.0) is None
    assert ledger.state(3) is L
    assert counts(ledger) == {L: 3}
    assert ledger.pending == 0
    assert len(ledger) == 3


def test_claim_skips_cancelled_jobs(ledger):
    for job_id in (1, 2, 3):
        ledger.submit(job_id, b"")
    ledger.cancel(1)
    ledger.cancel(2)
    assert claim_ok(ledger, "w", 0.0).job_id == 3
    assert ledger.claim("w", 0.0) is None


def test_leases_of(ledger):
    for job_id in (1, 2, 3):
        ledger.submit(job_id, b"")
    a1 = claim_ok(ledger, "a", 0.0)
    b2 = claim_ok(ledger, "b", 0.0)
    a3 = claim_ok(ledger, "a", 0.0)
    assert sorted(ledger.leases_of("a")) == sorted([a1.lease_id, a3.lease_id])
    assert ledger.leases_of("b") == [b2.lease_id]
    assert ledger.leases_of("nobody") == []


# --- beat ---------------------------------------------------------------------------------


def test_beat_extends_the_lease_past_its_original_deadline(ledger):
    ledger.submit(1, b"")
    lease = claim_ok(ledger, "w", 0.0)
    assert ledger.beat("w", [lease.lease_id], 8.0) == []
    assert ledger.state(1) is L
    # The original deadline (10) passes: the job is not expired.
    assert ledger.expire(12.0) == []
    assert ledger.state(1) is L
    assert ledger.beat("w", [lease.lease_id], 17.0) == []
    assert ledger.expire(26.0) == []
    assert ledger.state(1) is L
    # next_deadline may be early, never late.
    assert ledger.next_deadline() <= 27.0
    # Without further beats it expires at the last extended deadline.
    assert ledger.expire(26.99) == []
    assert [e.job_id for e in ledger.expire(27.0)] == [1]


def test_beat_reports_void_leases(ledger):
    for job_id in range(1, 6):
        ledger.submit(job_id, b"")
    live = claim_ok(ledger, "w", 0.0)  # job 1
    other = claim_ok(ledger, "other", 0.0)  # job 2
    first = {job_id: claim_ok(ledger, "w", 0.0) for job_id in (3, 4, 5)}
    ledger.beat("w", [live.lease_id], 5.0)
    ledger.beat("other", [other.lease_id], 5.0)
    expired = ledger.expire(LEASE_S)  # 1 and 2 were beaten, 3, 4, 5 were not
    assert sorted(e.job_id for e in expired) == [3, 4, 5]
    # 3, 4, 5 are back at the head: lease them again, then cancel 4 and resolve 5.
    second = {}
    for _ in range(3):
        lease = claim_ok(ledger, "w", LEASE_S)
        second[lease.job_id] = lease
    assert sorted(second) == [3, 4, 5]
    assert ledger.cancel(4) is L
    assert ledger.resolve("w", 5, second[5].lease_id, True)
    unknown = 12345
    ids = [
        live.lease_id,  # live: extended
        second[3].lease_id,  # live: extended
        other.lease_id,  # held by another worker
        first[3].lease_id,  # expired
        second[4].lease_id,  # cancelled
        second[5].lease_id,  # resolved
        unknown,
    ]
    assert ledger.beat("w", ids, 11.0) == ids[2:]  # in the order given
    assert ledger.state(2) is L  # another worker's beat on it changed nothing
    assert [e.job_id for e in ledger.expire(15.0)] == [2]  # other's lease was not extended
    assert ledger.expire(20.99) == []
    assert sorted(e.job_id for e in ledger.expire(21.0)) == [1, 3]


def test_beat_by_the_wrong_worker_does_not_extend(ledger):
    ledger.submit(1, b"")
    lease = claim_ok(ledger, "w", 0.0)
    assert ledger.beat("thief", [lease.lease_id], 9.0) == [lease.lease_id]
    assert [e.job_id for e in ledger.expire(LEASE_S)] == [1]


def test_beat_with_no_leases(ledger):
    assert ledger.beat("w", [], 0.0) == []
    assert ledger.beat("w", iter(()), 0.0) == []


# --- release -----------------------------------------------------------------------------


def test_release_puts_the_job_at_the_head_with_the_same_attempt(ledger):
    for job_id in (1, 2, 3):
        ledger.submit(job_id, b"")
    claim_ok(ledger, "w", 0.0)  # job 1
    lease2 = claim_ok(ledger, "w", 0.0)
    assert lease2.job_id == 2
    assert ledger.release("w", 2, lease2.lease_id) is True
    assert ledger.state(2) is P
    assert ledger.attempt(2) == 1
    assert ledger.leases_of("w") != [] and lease2.lease_id not in ledger.leases_of("w")
    again = claim_ok(ledger, "x", 1.0)
    assert again.job_id == 2  # ahead of job 3
    assert again.attempt == 1
    assert again.lease_id != lease2.lease_id
    assert claim_ok(ledger, "x", 1.0).job_id == 3


def test_release_voids_the_lease(ledger):
    ledger.submit(1, b"")
    lease = claim_ok(ledger, "w", 0.0)
    assert ledger.release("w", 1, lease.lease_id)
    assert ledger.beat("w", [lease.lease_id], 1.0) == [lease.lease_id]
    assert ledger.release("w", 1, lease.lease_id) is False
    # The job never ran under a released lease: a result from it is refused.
    assert ledger.resolve("w", 1, lease.lease_id, True) is False
    assert ledger.state(1) is P
    # A released lease does not expire later either.
    assert ledger.expire(100.0) == []
    assert ledger.state(1) is P


def test_release_with_a_void_lease_changes_nothing(ledger):
    ledger.submit(1, b"")
    ledger.submit(2, b"")
    lease = claim_ok(ledger, "w", 0.0)
    lease2 = claim_ok(ledger, "w", 0.0)
    assert ledger.release("other", 1, lease.lease_id) is False  # wrong worker
    assert ledger.release("w", 1, 999) is False  # forged lease
    assert ledger.release("w", 2, lease.lease_id) is False  # lease of another job
    assert ledger.release("w", 3, lease.lease_id) is False  # unknown job
    assert ledger.state(1) is L and ledger.state(2) is L
    assert sorted(ledger.leases_of("w")) == sorted([lease.lease_id, lease2.lease_id])
    assert counts(ledger) == {L: 2}


# --- expire and dead letters --------------------------------------------------------------


def test_expire_requeues_at_the_head_with_attempt_plus_one(ledger):
    ledger.submit(1, b"one")
    ledger.submit(2, b"two")
    lease = claim_ok(ledger, "w", 0.0)
    assert ledger.next_deadline() == LEASE_S
    assert ledger.expire(LEASE_S - 0.001) == []
    assert ledger.expire(LEASE_S) == [Expired(1, lease.lease_id, attempt=1, dead=False)]
    assert ledger.state(1) is P
    assert ledger.attempt(1) == 2
    assert ledger.leases_of("w") == []
    again = claim_ok(ledger, "v", 11.0)
    assert (again.job_id, again.attempt, again.payload) == (1, 2, b"one")
    assert again.lease_id != lease.lease_id
    assert ledger.beat("w", [lease.lease_id], 11.0) == [lease.lease_id]
    assert counts(ledger) == {L: 1, P: 1}


def test_max_attempts_then_dead_letter(ledger):
    ledger.submit(1, b"")
    now = 0.0
    for attempt in (1, 2):
        lease = claim_ok(ledger, "w", now)
        assert lease.attempt == attempt
        now += LEASE_S
        assert ledger.expire(now) == [Expired(1, lease.lease_id, attempt, dead=False)]
    lease = claim_ok(ledger, "w", now)
    assert lease.attempt == 3
    now += LEASE_S
    assert ledger.expire(now) == [Expired(1, lease.lease_id, 3, dead=True)]
    assert ledger.state(1) is None
    assert 1 not in ledger
    assert ledger.claim("w", now) is None
    assert counts(ledger) == {X: 1}
    assert ledger.resolve("w", 1, lease.lease_id, True) is False  # too late
    assert ledger.cancel(1) is None


@pytest.mark.parametrize("override", [1, 2, 5])
def test_per_job_max_attempts_override(override):
    ledger = Ledger(lease_s=1.0, max_attempts=3)
    ledger.submit(1, b"", max_attempts=override)
    ledger.submit(2, b"")  # default: 3
    now = 0.0
    dead: dict[int, int] = {}
    for _ in range(10):
        for _ in range(2):
            ledger.claim("w", now)
        now += 1.0
        for expired in ledger.expire(now):
            if expired.dead:
                dead[expired.job_id] = expired.attempt
    assert dead == {1: override, 2: 3}
    assert counts(ledger) == {X: 2}


def test_max_attempts_one_dead_letters_at_first_expiry():
    ledger = Ledger(lease_s=1.0, max_attempts=1)
    ledger.submit(1, b"")
    lease = claim_ok(ledger, "w", 0.0)
    assert ledger.expire(1.0) == [Expired(1, lease.lease_id, 1, dead=True)]


def test_expire_handles_several_leases_and_leaves_the_rest(ledger):
    for job_id in (1, 2, 3):
        ledger.submit(job_id, b"")
    claim_ok(ledger, "w", 0.0)
    claim_ok(ledger, "w", 1.0)
    claim_ok(ledger, "w", 5.0)
    assert ledger.next_deadline() == 10.0
    assert sorted(e.job_id for e in ledger.expire(11.0)) == [1, 2]
    assert ledger.state(3) is L
    assert ledger.next_deadline() == 15.0
    assert counts(ledger) == {P: 2, L: 1}


def test_expire_skips_resolved_released_and_cancelled(ledger):
    for job_id in (1, 2, 3):
        ledger.submit(job_id, b"")
    a = claim_ok(ledger, "w", 0.0)
    b = claim_ok(ledger, "w", 0.0)
    claim_ok(ledger, "w", 0.0)
    assert ledger.resolve("w", 1, a.lease_id, False)
    assert ledger.release("w", 2, b.lease_id)
    assert ledger.cancel(3) is L
    assert ledger.expire(100.0) == []
    assert ledger.next_deadline() is None
    assert counts(ledger) == {F: 1, P: 1, C: 1}


def test_next_deadline_is_none_after_everything_expired(ledger):
    ledger.submit(1, b"")
    claim_ok(ledger, "w", 0.0)
    ledger.expire(LEASE_S)
    assert ledger.next_deadline() is None


# --- resolve -----------------------------------------------------------------------------


@pytest.mark.parametrize("ok, state", [(True, D), (False, F)])
def test_resolve_first_result_wins(ledger, ok, state):
    ledger.submit(1, b"")
    lease = claim_ok(ledger, "w", 0.0)
    assert ledger.resolve("w", 1, lease.lease_id, ok) is True
    assert ledger.state(1) is None
    assert 1 not in ledger
    assert len(ledger) == 0
    assert counts(ledger) == {state: 1}
    assert ledger.leases_of("w") == []
    # A duplicate (either outcome) is stale: False and no change.
    assert ledger.resolve("w", 1, lease.lease_id, ok) is False
    assert ledger.resolve("w", 1, lease.lease_id, not ok) is False
    assert counts(ledger) == {state: 1}
    assert ledger.beat("w", [lease.lease_id], 1.0) == [lease.lease_id]


def test_result_from_an_expired_lease_is_accepted_while_pending(ledger):
    ledger.submit(1, b"")
    ledger.submit(2, b"")
    old = claim_ok(ledger, "slow", 0.0)
    ledger.expire(LEASE_S)
    assert ledger.state(1) is P
    assert ledger.resolve("slow", 1, old.lease_id, True) is True
    assert ledger.state(1) is None
    assert counts(ledger) == {D: 1, P: 1}
    assert claim_ok(ledger, "w", 11.0).job_id == 2  # job 1 is not offered again
    assert ledger.claim("w", 11.0) is None


def test_result_from_an_expired_lease_voids_the_current_lease(ledger):
    ledger.submit(1, b"")
    old = claim_ok(ledger, "slow", 0.0)
    ledger.expire(LEASE_S)
    new = claim_ok(ledger, "fast", LEASE_S)
    assert new.attempt == 2
    assert ledger.resolve("slow", 1, old.lease_id, True) is True
    assert counts(ledger) == {D: 1}
    assert ledger.leases_of("fast") == []
    assert ledger.beat("fast", [new.lease_id], 11.0) == [new.lease_id]
    assert ledger.resolve("fast", 1, new.lease_id, True) is False  # second result dropped
    assert ledger.expire(1000.0) == []
    assert counts(ledger) == {D: 1}


def test_result_from_the_current_lease_beats_a_later_one_from_the_old(ledger):
    ledger.submit(1, b"")
    old = claim_ok(ledger, "slow", 0.0)
    ledger.expire(LEASE_S)
    new = claim_ok(ledger, "fast", LEASE_S)
    assert ledger.resolve("fast", 1, new.lease_id, False) is True
    assert ledger.resolve("slow", 1, old.lease_id, True) is False
    assert counts(ledger) == {F: 1}


def test_forged_or_misdirected_results_change_nothing(ledger):
    ledger.submit(1, b"")
    ledger.submit(2, b"")
    lease1 = claim_ok(ledger, "w", 0.0)
    lease2 = claim_ok(ledger, "w", 0.0)
    before = counts(ledger)
    assert ledger.resolve("w", 1, 424242, True) is False  # forged lease id
    assert ledger.resolve("thief", 1, lease1.lease_id, True) is False  # right id, other worker
    assert ledger.resolve("w", 1, lease2.lease_id, True) is False  # lease of another job
    assert ledger.resolve("w", 3, lease1.lease_id, True) is False  # unknown job
    assert counts(ledger) == before
    assert ledger.state(1) is L
    assert ledger.leases_of("w") != []
    assert ledger.beat("w", [lease1.lease_id, lease2.lease_id], 1.0) == []
    assert ledger.resolve("w", 1, lease1.lease_id, True) is True


def test_old_lease_from_a_different_worker_is_refused(ledger):
    ledger.submit(1, b"")
    old = claim_ok(ledger, "slow", 0.0)
    ledger.expire(LEASE_S)
    claim_ok(ledger, "fast", LEASE_S)
    assert ledger.resolve("fast", 1, old.lease_id, True) is False
    assert ledger.state(1) is L


# --- cancel ------------------------------------------------------------------------------


def test_cancel_pending_job(ledger):
    ledger.submit(1, b"")
    ledger.submit(2, b"")
    assert ledger.cancel(1) is P
    assert ledger.state(1) is None
    assert 1 not in ledger
    assert counts(ledger) == {P: 1, C: 1}
    assert ledger.pending == 1
    assert len(ledger) == 1
    assert claim_ok(ledger, "w", 0.0).job_id == 2
    assert ledger.cancel(1) is None


def test_cancel_leased_job_voids_its_lease(ledger):
    ledger.submit(1, b"")
    lease = claim_ok(ledger, "w", 0.0)
    assert ledger.cancel(1) is L
    assert counts(ledger) == {C: 1}
    assert ledger.leases_of("w") == []
    assert ledger.beat("w", [lease.lease_id], 1.0) == [lease.lease_id]
    assert ledger.resolve("w", 1, lease.lease_id, True) is False
    assert ledger.release("w", 1, lease.lease_id) is False
    assert ledger.expire(100.0) == []
    assert counts(ledger) == {C: 1}


def test_cancel_unknown_or_terminal_job(ledger):
    assert ledger.cancel(5) is None
    ledger.submit(5, b"")
    lease = claim_ok(ledger, "w", 0.0)
    ledger.resolve("w", 5, lease.lease_id, True)
    assert ledger.cancel(5) is None
    assert counts(ledger) == {D: 1}


def test_cancel_of_a_requeued_job(ledger):
    ledger.submit(1, b"")
    old = claim_ok(ledger, "w", 0.0)
    ledger.expire(LEASE_S)
    assert ledger.cancel(1) is P
    assert ledger.resolve("w", 1, old.lease_id, True) is False  # too late
    assert ledger.claim("w", 11.0) is None
    assert counts(ledger) == {C: 1}


# --- job id reuse after a job left the ledger --------------------------------------------


def test_a_finished_job_id_may_be_submitted_again(ledger):
    ledger.submit(1, b"first")
    lease = claim_ok(ledger, "w", 0.0)
    ledger.resolve("w", 1, lease.lease_id, True)
    ledger.submit(1, b"second")
    again = claim_ok(ledger, "w", 1.0)
    assert (again.job_id, again.payload, again.attempt) == (1, b"second", 1)
    # The old incarnation's lease is not valid for the new one.
    assert ledger.resolve("w", 1, lease.lease_id, True) is False
    assert counts(ledger) == {D: 1, L: 1}


def test_resubmitted_id_goes_to_the_tail(ledger):
    ledger.submit(1, b"")
    ledger.submit(2, b"")
    ledger.cancel(1)
    ledger.submit(1, b"again")  # allowed: id 1 is no longer live
    assert [claim_ok(ledger, "w", 0.0).job_id for _ in range(2)] == [2, 1]


# --- the state machine ------------------------------------------------------------------

WORKERS = ("w0", "w1", "w2")
MAX_ATTEMPTS = 3
FORGED = st.integers(min_value=0, max_value=2**63 - 1)
MAX_ATTEMPTS_ARG = st.none() | st.integers(1, 4)
PAYLOAD = st.binary(max_size=4)
DELAY = st.sampled_from([0.0, 0.5, 4.0, 12.0])
RETRY_IN = st.sampled_from([0.0, 1.0, 9.5])


def retry_error(in_s: float) -> bytes:
    """The error payload of a task that raised Retry(in_s=...), as a worker sends it."""
    return pack_exception(Retry(in_s=in_s), "")


class TableJournal:
    """The journal as a durable store keeps it (see producer/store.py): per live job its
    payload, attempt, max attempts, current lease id (None: not leased), the leases on
    record (given-back ones forgotten), its retries, due time (kept when it passes, as the
    store does) and the jobs it waits for; finished jobs leave, their results stay."""

    def __init__(self) -> None:
        self.jobs: dict[int, dict] = {}
        self.results: dict[int, StoredResult] = {}

    def add(self, job_id, payload, max_attempts):
        self.jobs[job_id] = {"payload": payload, "attempt": 1, "max_attempts": max_attempts,
                             "lease_id": None, "leases": {}, "retries": 0, "due": None,
                             "deps": ()}

    def defer(self, job_id, due, retries, lease_id=None):
        row = self.jobs[job_id]
        row["lease_id"], row["retries"], row["due"] = None, retries, due
        row["leases"].pop(lease_id, None)

    def ready(self, job_id):
        pass  # the store keeps the due time that passed

    def block(self, job_id, deps, due=None):
        row = self.jobs[job_id]
        row["deps"], row["due"] = tuple(deps), due

    def unblock(self, job_id, payload):
        row = self.jobs[job_id]
        row["deps"], row["payload"] = (), payload

    def lease(self, job_id, lease_id, worker, attempt):
        row = self.jobs[job_id]
        row["attempt"], row["lease_id"] = attempt, lease_id
        row["leases"][lease_id] = worker

    def release(self, job_id, lease_id):
        row = self.jobs[job_id]
        row["lease_id"] = None
        del row["leases"][lease_id]

    def requeue(self, job_id, attempt):
        row = self.jobs[job_id]
        row["attempt"], row["lease_id"] = attempt, None

    def finish(self, job_id, state, payload):
        del self.jobs[job_id]
        self.results[job_id] = StoredResult(job_id, state, payload, 0.0)


def restored(journal: TableJournal, now: float, seed: int) -> Ledger:
    """A new ledger that restores ``journal``'s jobs at ``now``, in job id order, as a
    restarted durable producer does (producer/restore.py): dependencies are classified by
    what the journal holds of them (live, or their results)."""
    ledger = Ledger(lease_s=LEASE_S, max_attempts=MAX_ATTEMPTS, rng=random.Random(seed),
                    journal=journal)
    for job_id, row in sorted(journal.jobs.items()):
        deps, values, failed = classify_stored(row["deps"], ledger.__contains__, journal.results.get)
        assert failed is None  # a dependency that failed failed its dependents at once
        ledger.restore(job_id, row["payload"], attempt=row["attempt"],
                       max_attempts=row["max_attempts"], leases=dict(row["leases"]),
                       lease_id=row["lease_id"], now=now, due=row["due"],
                       retries=row["retries"], deps=deps, values=values)
    return ledger


class LedgerMachine(RuleBasedStateMachine):
    """Drives a Ledger with random events and checks it against a simple model.

    The model: per job its state (live or terminal, updated from return values that are
    checked against expectations), its attempt, its current lease, and the leases issued for
    it that a result may still come under. The pending queue is a list of groups: submit adds
    a group at the tail, release and each expire() call add one at the head; a claim must
    return a job of the first non-empty group.
    """

    def __init__(self):
        super().__init__()
        # Lease ids come from the OS's CSPRNG by default; a seeded one here, so that a failing
        # run replays identically while hypothesis shrinks it (ties in the deadline heap are
        # broken by lease id).
        self.journal = TableJournal()  # what a durable store holds, as the ledger told it
        self.ledger = Ledger(lease_s=LEASE_S, max_attempts=MAX_ATTEMPTS, rng=random.Random(0),
                             journal=self.journal)
        self.restarts = 0
        self.earlier: Counter[JobState] = Counter()  # terminal counts of earlier processes
        self.now = 0.0
        self.next_id = 0
        self.state: dict[int, JobState] = {}  # every submitted job -> model state
        self.attempt: dict[int, int] = {}
        self.max_attempts: dict[int, int] = {}
        self.payload: dict[int, bytes] = {}
        self.queue: list[list[int]] = []
        self.current: dict[int, tuple[int, str, float]] = {}  # job -> (lease, worker, deadline)
        self.valid: dict[int, dict[int, str]] = {}  # job -> leases a result is accepted from
        self.all_leases: dict[int, tuple[int, str]] = {}  # every lease id -> (job, worker)
        self.resolved: Counter[int] = Counter()
        self.due: dict[int, tuple[float, int]] = {}  # deferred job -> (due, order of deferral)
        self.deferrals = 0
        self.retries: Counter[int] = Counter()
        self.deps: dict[int, list[int]] = {}  # BLOCKED job -> the jobs it waits for

    # --- helpers

    def live(self, job_id: int) -> bool:
        return self.state[job_id] in (P, L, W, B)

    def settle(self):
        """The model's dependencies: a blocked job whose dependency ended otherwise than done
        fails (and so on down the chain); one whose dependencies all succeeded is pending, at
        the tail (those unblocked by one step in any order)."""
        unblocked = []
        changed = True
        while changed:
            changed = False
            for job_id, deps in list(self.deps.items()):
                if any(self.state[d] in (F, X, C) for d in deps):
                    del self.deps[job_id]
                    self.state[job_id] = F
                    self.resolved[job_id] += 1
                    changed = True
                elif all(self.state[d] is D for d in deps):
                    del self.deps[job_id]
                    self.state[job_id] = P
                    unblocked.append(job_id)
                    changed = True
        if unblocked:
            self.queue.append(unblocked)
        reported = [job_id for job_id, _ in self.ledger.dependency_failures]
        self.ledger.dependency_failures.clear()
        assert all(self.state[j] is F for j in reported) and len(set(reported)) == len(reported)

    def defer(self, job_id: int, due: float) -> None:
        self.state[job_id] = W
        self.due[job_id] = (due, self.deferrals)
        self.deferrals += 1

    def dequeue(self, job_id: int) -> None:
        for group in self.queue:
            if job_id in group:
                group.remove(job_id)
        self.queue = [group for group in self.queue if group]

    def pick_lease(self, data, kind: str) -> tuple[int, int]:
        """(job_id, lease_id) for a "real" (current), "stale" (any issued) or "forged" lease."""
        if kind == "real" and self.current:
            job_id = data.draw(st.sampled_from(list(self.current)))
            return job_id, self.current[job_id][0]
        if kind in ("real", "stale") and self.all_leases:
            lease_id = data.draw(st.sampled_from(list(self.all_leases)))
            return self.all_leases[lease_id][0], lease_id
        lease_id = data.draw(FORGED)
        assume(lease_id not in self.all_leases)
        job_id = data.draw(st.integers(0, self.next_id))
        return job_id, lease_id

    # --- rules

    @initialize(jobs=st.lists(st.tuples(MAX_ATTEMPTS_ARG, PAYLOAD), max_size=6))
    def initial_jobs(self, jobs):
        for max_attempts, payload in jobs:
            self.submit(max_attempts, payload)

    @rule(max_attempts=MAX_ATTEMPTS_ARG, payload=PAYLOAD)
    def submit(self, max_attempts, payload):
        job_id = self.next_id
        self.next_id += 1
        self.ledger.submit(job_id, payload, max_attempts=max_attempts)
        self.state[job_id] = P
        self.attempt[job_id] = 1
        self.max_attempts[job_id] = max_attempts or MAX_ATTEMPTS
        self.payload[job_id] = payload
        self.valid[job_id] = {}
        self.queue.append([job_id])

    @rule(max_attempts=MAX_ATTEMPTS_ARG, payload=PAYLOAD, delay=DELAY)
    def submit_later(self, max_attempts, payload, delay):
        """A job submitted with a delay: DEFERRED until wake() at or after its due time."""
        job_id = self.next_id
        self.next_id += 1
        self.ledger.submit(job_id, payload, max_attempts=max_attempts, due=self.now + delay)
        self.attempt[job_id] = 1
        self.max_attempts[job_id] = max_attempts or MAX_ATTEMPTS
        self.payload[job_id] = payload
        self.valid[job_id] = {}
        self.defer(job_id, self.now + delay)

    @precondition(lambda self: any(self.live(j) for j in self.state))
    @rule(data=st.data(), payload=PAYLOAD)
    def submit_after(self, data, payload):
        """A job that waits for one or two live jobs to succeed (BLOCKED until then)."""
        live = [j for j in self.state if self.live(j)]
        deps = data.draw(st.lists(st.sampled_from(live), min_size=1, max_size=2, unique=True))
        job_id = self.next_id
        self.next_id += 1
        self.ledger.submit(job_id, payload, deps=deps)
        self.state[job_id] = B
        self.attempt[job_id] = 1
        self.max_attempts[job_id] = MAX_ATTEMPTS
        self.payload[job_id] = payload
        self.valid[job_id] = {}
        self.deps[job_id] = deps

    @rule()
    def wake(self):
        """Due jobs become pending, at the tail, in due order (ties: in order of deferral)."""
        due = sorted((when, job_id) for job_id, when in self.due.items() if when[0] <= self.now)
        assert self.ledger.wake(self.now) == len(due)
        for _, job_id in due:
            del self.due[job_id]
            self.state[job_id] = P
            self.queue.append([job_id])

    @precondition(lambda self: self.current)
    @rule(data=st.data(), in_s=RETRY_IN)
    def fail_and_retry(self, data, in_s):
        """The holder of a current lease reports that its task raised Retry(in_s): the job
        waits in_s seconds, as long as its retries (3 by default) allow; then it fails."""
        job_id = data.draw(st.sampled_from(list(self.current)))
        lease_id, worker, _ = self.current.pop(job_id)
        assert self.ledger.resolve(worker, job_id, lease_id, False, retry_error(in_s), now=self.now)
        if self.retries[job_id] < DEFAULT_MAX_RETRIES:
            self.retries[job_id] += 1
            del self.valid[job_id][lease_id]  # the same result again is stale
            self.defer(job_id, self.now + in_s)
            assert self.ledger.job(job_id).retries == self.retries[job_id]
        else:
            self.resolved[job_id] += 1
            self.state[job_id] = F
        self.settle()

    @rule(workers=st.lists(st.sampled_from(WORKERS), min_size=1, max_size=3))
    def claim(self, workers):
        for worker in workers:
            self.claim_one(worker)

    def claim_one(self, worker):
        lease = self.ledger.claim(worker, self.now)
        if not self.queue:
            assert lease is None
            return
        assert lease is not None
        assert lease.job_id in self.queue[0], (lease.job_id, self.queue)
        assert self.state[lease.job_id] is P
        assert lease.attempt == self.attempt[lease.job_id]
        assert lease.payload == self.payload[lease.job_id]
        assert lease.deadline == self.now + LEASE_S
        assert lease.lease_id not in self.all_leases
        self.dequeue(lease.job_id)
        self.state[lease.job_id] = L
        self.current[lease.job_id] = (lease.lease_id, worker, lease.deadline)
        self.valid[lease.job_id][lease.lease_id] = worker
        self.all_leases[lease.lease_id] = (lease.job_id, worker)

    @rule(worker=st.sampled_from(WORKERS), data=st.data())
    def beat(self, worker, data):
        kinds = data.draw(st.lists(st.sampled_from(["real", "stale", "forged"]), max_size=4))
        lease_ids = [self.pick_lease(data, kind)[1] for kind in kinds]
        held = {lease: job for job, (lease, w, _) in self.current.items() if w == worker}
        expected_void = [lease for lease in lease_ids if lease not in held]
        assert self.ledger.beat(worker, lease_ids, self.now) == expected_void
        for lease in lease_ids:
            if lease in held:
                job_id = held[lease]
                self.current[job_id] = (lease, worker, self.now + LEASE_S)

    @rule(worker=st.sampled_from(WORKERS))
    def heartbeat(self, worker):
        """A well-behaved worker beats every lease it holds: none is void."""
        held = [lease for lease, w, _ in self.current.values() if w == worker]
        assert self.ledger.beat(worker, held, self.now) == []
        for job_id, (lease, w, _) in list(self.current.items()):
            if w == worker:
                self.current[job_id] = (lease, w, self.now + LEASE_S)

    @precondition(lambda self: self.current)
    @rule(data=st.data())
    def decline(self, data):
        """The holder of a current lease releases it (the common, valid case)."""
        job_id = data.draw(st.sampled_from(list(self.current)))
        lease_id, worker, _ = self.current[job_id]
        assert self.ledger.release(worker, job_id, lease_id) is True
        del self.current[job_id]
        del self.valid[job_id][lease_id]
        self.state[job_id] = P
        self.queue.insert(0, [job_id])

    @precondition(lambda self: self.current)
    @rule(data=st.data(), ok=st.booleans())
    def finish(self, data, ok):
        """The holder of a current lease delivers its result (the common, valid case)."""
        job_id = data.draw(st.sampled_from(list(self.current)))
        lease_id, worker, _ = self.current.pop(job_id)
        assert self.ledger.resolve(worker, job_id, lease_id, ok) is True
        assert self.resolved[job_id] == 0
        self.resolved[job_id] += 1
        self.state[job_id] = D if ok else F
        self.settle()

    @rule(worker=st.sampled_from(WORKERS), kind=st.sampled_from(["real", "stale", "forged"]),
          data=st.data())
    def release(self, worker, kind, data):
        job_id, lease_id = self.pick_lease(data, kind)
        expected = job_id in self.current and self.current[job_id][:2] == (lease_id, worker)
        assert self.ledger.release(worker, job_id, lease_id) is expected
        if expected:
            del self.current[job_id]
            del self.valid[job_id][lease_id]
            self.state[job_id] = P
            self.queue.insert(0, [job_id])

    @rule(worker=st.sampled_from(WORKERS), kind=st.sampled_from(["real", "stale", "forged"]),
          ok=st.booleans(), data=st.data())
    def resolve(self, worker, kind, ok, data):
        job_id, lease_id = self.pick_lease(data, kind)
        if kind == "real" and job_id in self.current and data.draw(st.booleans()):
            worker = self.current[job_id][1]  # mostly the holder, sometimes anyone
        expected = (
            job_id in self.state
            and self.live(job_id)
            and self.valid[job_id].get(lease_id) == worker
        )
        result = self.ledger.resolve(worker, job_id, lease_id, ok)
        assert result is expected
        if result:
            assert self.resolved[job_id] == 0  # every job resolves at most once
            self.resolved[job_id] += 1
            self.state[job_id] = D if ok else F
            self.current.pop(job_id, None)
            self.due.pop(job_id, None)
            self.dequeue(job_id)
        self.settle()

    @precondition(lambda self: self.next_id > 0)
    @rule(data=st.data())
    def cancel(self, data):
        job_id = data.draw(st.integers(0, self.next_id - 1))
        was = self.state[job_id]
        assert self.ledger.cancel(job_id) is (was if self.live(job_id) else None)
        if was in (P, L, W, B):
            self.state[job_id] = C
            self.current.pop(job_id, None)
            self.due.pop(job_id, None)
            self.deps.pop(job_id, None)
            self.dequeue(job_id)
        self.settle()

    @rule()
    def restart(self):
        """The producer dies and a new one restores the journal (a durable restart), every
        job in job id order, as producer/restore.py does: leased ones stay leased to the same
        worker under the same lease and attempt, with a deadline one lease from now; deferred
        ones keep their due time and retries (one whose due time passed is pending); blocked
        ones wait for the same jobs, with the results of those that succeeded; the rest are
        queued again by job id."""
        self.restarts += 1
        self.earlier.update({s: n for s, n in self.ledger.counts.items() if s in TERMINAL})
        self.ledger = restored(self.journal, self.now, self.restarts)
        assert set(self.journal.jobs) == {j for j in self.state if self.live(j)}  # none vanishes
        for job_id, (lease_id, worker, _) in self.current.items():
            assert self.journal.jobs[job_id]["lease_id"] == lease_id
            self.current[job_id] = (lease_id, worker, self.now + LEASE_S)
        for job_id in self.state:
            if self.live(job_id):
                assert self.journal.jobs[job_id]["leases"] == self.valid[job_id]
                assert self.journal.jobs[job_id]["retries"] == self.retries[job_id]
                assert set(self.journal.jobs[job_id]["deps"]) == set(self.deps.get(job_id, ()))
        for job_id, (due, _) in sorted(self.due.items()):  # due times: heap order by job id
            if due <= self.now:
                del self.due[job_id]
                self.state[job_id] = P
            else:
                self.defer(job_id, due)
        self.queue = [[job_id] for job_id in sorted(self.state) if self.state[job_id] is P]

    @rule(dt=st.sampled_from([0.5, 4.0, 9.5, 10.0, 15.0]))
    def advance(self, dt):
        self.now += dt

    @precondition(lambda self: self.current)
    @rule(expire=st.booleans())
    def to_next_deadline(self, expire):
        """Move the clock exactly onto the earliest live deadline (expire() must then take it),
        as when the worker holding it dies."""
        self.now = max(self.now, min(deadline for _, _, deadline in self.current.values()))
        if expire:
            self.expire()

    @rule()
    def expire(self):
        out = self.ledger.expire(self.now)
        due = {job: lease for job, (lease, _, deadline) in self.current.items()
               if deadline <= self.now}
        assert {(e.job_id, e.lease_id) for e in out} == set(due.items())
        assert len(out) == len(due)
        requeued = []
        for e in out:
            assert e.attempt == self.attempt[e.job_id]
            assert e.dead is (e.attempt >= self.max_attempts[e.job_id])
            del self.current[e.job_id]
            if e.dead:
                self.state[e.job_id] = X
            else:
                self.state[e.job_id] = P
                self.attempt[e.job_id] += 1
                requeued.append(e.job_id)
        if requeued:
            self.queue.insert(0, requeued)
        self.settle()

    # --- invariants

    @invariant()
    def every_job_in_exactly_one_state(self):
        for job_id, state in self.state.items():
            if state in TERMINAL:
                assert self.ledger.state(job_id) is None
                assert job_id not in self.ledger
            else:
                assert self.ledger.state(job_id) is state
                assert job_id in self.ledger
                assert self.ledger.attempt(job_id) == self.attempt[job_id]

    @invariant()
    def counts_add_up(self):
        expected = Counter(self.state.values())
        counts = Counter(self.ledger.counts) + self.earlier  # a restart keeps the live jobs
        assert {s: n for s, n in counts.items() if n} == dict(expected)
        assert sum(counts.values()) == self.next_id  # no job vanishes
        live = expected[P] + expected[L] + expected[W] + expected[B]
        assert len(self.ledger) == live
        assert self.ledger.pending == expected[P]
        assert sum(len(group) for group in self.queue) == expected[P]

    @invariant()
    def one_lease_per_job_and_disjoint_workers(self):
        seen: dict[int, str] = {}
        for worker in WORKERS:
            for lease_id in self.ledger.leases_of(worker):
                assert lease_id not in seen, "lease held by two workers"
                seen[lease_id] = worker
        expected = {lease: worker for lease, worker, _ in self.current.values()}
        assert seen == expected
        jobs = [self.all_leases[lease][0] for lease in seen]
        assert len(jobs) == len(set(jobs)), "a job leased twice"
        assert all(self.state[job] is L for job in jobs)

    @invariant()
    def no_deferred_job_offered_before_its_time(self):
        """Every deferred job of the model is DEFERRED in the ledger (so claim() never hands
        it out: claim_one checks each lease against the model's pending queue), and the
        ledger's next due time is never later than the earliest of them."""
        assert self.ledger.counts[W] == len(self.due)
        for job_id in self.due:
            assert self.ledger.state(job_id) is W
        if self.due:
            nd = self.ledger.next_due()
            assert nd is not None and nd <= min(when for when, _ in self.due.values())

    @invariant()
    def resolved_at_most_once(self):
        assert all(n <= 1 for n in self.resolved.values())

    @invariant()
    def next_deadline_never_late(self):
        if self.current:
            earliest = min(deadline for _, _, deadline in self.current.values())
            nd = self.ledger.next_deadline()
            assert nd is not None and nd <= earliest


TestLedgerMachine = LedgerMachine.TestCase
TestLedgerMachine.settings = settings(
    max_examples=200, stateful_step_count=50, deadline=None
)


def test_restore_keeps_attempt_and_accepts_a_result_under_an_earlier_lease():
    ledger = Ledger(lease_s=1.0, max_attempts=3)
    ledger.submit(1, b"first")
    ledger.restore(7, b"restored", attempt=2, max_attempts=3, leases={555: "w-old"})
    assert ledger.state(7) is JobState.PENDING and ledger.attempt(7) == 2
    assert ledger.claim("w", 0.0).job_id == 1  # restored jobs go to the tail
    lease = ledger.claim("w", 0.0)
    assert (lease.job_id, lease.attempt) == (7, 2)
    assert not ledger.resolve("w-other", 7, 555, True)  # the lease was not issued to it
    assert ledger.resolve("w-old", 7, 555, True)  # a result from the earlier run counts once
    assert not ledger.resolve("w-old", 7, 555, True)
    assert ledger.beat("w", [lease.lease_id], 0.5) == [lease.lease_id]  # the new lease is void


def test_a_restored_pending_job_is_not_taken_back_by_a_beat_under_an_old_lease():
    """A job that was pending when the producer died lost its earlier leases before the
    restart: a beat under one is void (as it was before the restart), a result counts once."""
    ledger = Ledger(lease_s=1.0, max_attempts=3)
    ledger.restore(7, b"a", attempt=2, max_attempts=3, leases={555: "w-old"})
    assert ledger.beat("w-old", [555], 0.0) == [555]
    assert ledger.state(7) is JobState.PENDING
    assert ledger.claim("w", 0.0).job_id == 7
    assert ledger.resolve("w-old", 7, 555, True)


def test_a_restored_leased_job_stays_leased_and_a_beat_renews_it():
    """A job leased when the producer died stays leased to the same worker under the same
    lease for one lease period from the restart: not offered again meanwhile; the worker's
    beat renews it and its result is accepted once."""
    ledger = Ledger(lease_s=1.0, max_attempts=3)
    ledger.restore(7, b"a", attempt=2, max_attempts=3, leases={554: "w-old", 555: "w-old"},
                   lease_id=555, now=100.0)
    assert ledger.state(7) is L and ledger.attempt(7) == 2 and ledger.pending == 0
    assert counts(ledger) == {L: 1}
    assert ledger.job_of("w-old", 555) == 7 and ledger.leases_of("w-old") == [555]
    assert ledger.next_deadline() == 101.0
    assert ledger.claim("w", 100.0) is None  # not offered again
    assert ledger.beat("w-other", [555], 100.5) == [555]  # not its lease
    assert ledger.beat("w-old", [554, 555], 100.5) == [554]  # only the current lease lives
    assert ledger.expire(101.2) == []  # renewed to 101.5
    assert ledger.resolve("w-old", 7, 555, True)
    assert not ledger.resolve("w-old", 7, 555, True)
    assert counts(ledger) == {D: 1}


@pytest.mark.parametrize("max_attempts, dead", [(3, False), (2, True)])
def test_a_restored_lease_without_a_beat_expires_one_lease_after_the_restart(max_attempts, dead):
    """No beat: the ordinary expiry, one lease period after the restart, journaled."""
    events = []

    class Recorder:
        def __getattr__(self, name):
            return lambda *args: events.append((name, *args))

    ledger = Ledger(lease_s=1.0, max_attempts=3, journal=Recorder())
    ledger.restore(7, b"a", attempt=2, max_attempts=max_attempts, leases={555: "w-old"},
                   lease_id=555, now=100.0)
    assert events == []  # the journal holds it as restored
    assert ledger.expire(100.99) == []
    (lost,) = ledger.expire(101.0)
    assert (lost.job_id, lost.lease_id, lost.attempt, lost.dead) == (7, 555, 2, dead)
    if dead:
        assert events == [("finish", 7, "dead", b"")] and ledger.state(7) is None
    else:
        assert events == [("requeue", 7, 3)] and ledger.state(7) is P
        lease = ledger.claim("w", 101.0)
        assert (lease.job_id, lease.attempt) == (7, 3)
    assert ledger.beat("w-old", [555], 101.0) == [555]


def test_restore_refuses_bad_arguments():
    ledger = Ledger(lease_s=1.0, max_attempts=3)
    with pytest.raises(ValueError):
        ledger.restore(1, b"", attempt=0, max_attempts=3, leases={})
    ledger.submit(2, b"")
    with pytest.raises(ValueError):
        ledger.restore(2, b"", attempt=1, max_attempts=3, leases={})
    with pytest.raises(ValueError, match="lease_id"):
        ledger.restore(3, b"", attempt=1, max_attempts=3, leases={5: "w"}, lease_id=6)
    assert 3 not in ledger


def test_postpone_moves_live_lease_deadlines():
    ledger = Ledger(lease_s=1.0, max_attempts=1)
    ledger.submit(1, b"")
    ledger.claim("w", 0.0)
    ledger.postpone(5.0)
    assert ledger.expire(5.9) == []  # would have expired at 1.0
    assert [e.job_id for e in ledger.expire(6.0)] == [1]


def test_higher_priority_first_fifo_within_a_priority_and_requeue_at_its_head():
    ledger = Ledger(lease_s=1.0, max_attempts=3)
    for job_id, priority in [(1, 0), (2, 5), (3, 0), (4, 5), (5, -1)]:
        ledger.submit(job_id, b"", priority=priority)
    first = ledger.claim("w", 0.0)
    assert first.job_id == 2
    ledger.expire(2.0)  # 2 is back at the head of priority 5
    assert [ledger.claim("w", 2.0).job_id for _ in range(5)] == [2, 4, 1, 3, 5]
    assert ledger.claim("w", 2.0) is None


def test_lose_counts_a_lost_attempt_like_an_expiry():
    ledger = Ledger(lease_s=10.0, max_attempts=2)
    ledger.submit(1, b"")
    first = ledger.claim("w", 0.0)
    assert ledger.lose("other", 1, first.lease_id) is None  # not its lease
    lost = ledger.lose("w", 1, first.lease_id)
    assert (lost.attempt, lost.dead) == (1, False) and ledger.state(1) is JobState.PENDING
    second = ledger.claim("w", 0.0)
    assert second.attempt == 2
    assert ledger.lose("w", 1, second.lease_id).dead and ledger.state(1) is None
    assert ledger.counts[JobState.DEAD] == 1


# --- dependencies (BLOCKED) ---------------------------------------------------------------------


def call_with_refs(*job_ids: int) -> bytes:
    """A call whose arguments are references to the results of ``job_ids``."""
    from freelance_rz.core import payload as pl

    class Result:  # stands for a Future of job ``job_id`` (the producer's JobFuture)
        def __init__(self, job_id: int) -> None:
            self.job_id = job_id

    refs = pl.References(lambda obj: obj.job_id if isinstance(obj, Result) else None)
    return pl.pack_call("m:f", [{"x": Result(j)} for j in job_ids], {}, default=refs)


def test_a_diamond_unblocks_once_both_sides_succeeded_with_their_results():
    from freelance_rz.core import payload as pl

    ledger = Ledger(lease_s=10.0, max_attempts=3)
    ledger.submit(1, b"top")
    ledger.submit(2, call_with_refs(1), deps=[1])
    ledger.submit(3, call_with_refs(1), deps=[1])
    ledger.submit(4, call_with_refs(2, 3), deps=[2, 3])
    assert [ledger.state(j) for j in (2, 3, 4)] == [B, B, B] and ledger.pending == 1
    top = claim_ok(ledger, "w", 0.0)
    assert ledger.claim("w", 0.0) is None  # nothing else may run yet
    assert ledger.resolve("w", 1, top.lease_id, True, pl.pack_value(10))
    assert ledger.state(2) is P and ledger.state(3) is P and ledger.state(4) is B
    left, right = claim_ok(ledger, "w", 0.0), claim_ok(ledger, "w", 0.0)
    assert pl.unpack_call(left.payload)[1] == [{"x": 10}]  # the reference became the result
    ledger.resolve("w", left.job_id, left.lease_id, True, pl.pack_value("a"))
    assert ledger.state(4) is B
    ledger.resolve("w", right.job_id, right.lease_id, True, pl.pack_value("b"))
    bottom = claim_ok(ledger, "w", 0.0)
    assert pl.unpack_call(bottom.payload)[1] == [{"x": "a"}, {"x": "b"}]
    assert ledger.unblocked == 3 and ledger.dependency_failures == []


def test_a_failed_dependency_fails_its_whole_chain_at_once():
    from freelance_rz.core import payload as pl

    ledger = Ledger(lease_s=10.0, max_attempts=3)
    ledger.submit(1, pl.pack_call("m:fetch", [], {}))
    ledger.submit(2, b"mid", deps=[1])
    ledger.submit(3, b"end", deps=[2])
    ledger.submit(4, b"other", deps=[1], due=100.0)
    lease = claim_ok(ledger, "w", 0.0)
    ledger.resolve("w", 1, lease.lease_id, False, pl.pack_error("ValueError", "no page", ""))
    failed = dict(ledger.dependency_failures)
    assert set(failed) == {2, 3, 4} and len(ledger) == 0
    assert pl.unpack_error(failed[2])[0] == "DependencyFailed"
    assert "job 1 (m:fetch), which it depends on, failed: ValueError: no page" in pl.unpack_error(failed[2])[1]
    assert pl.error_dependency(failed[3]) == 2  # the chain names the job just before it
    assert counts(ledger) == {F: 4}


def test_a_cancelled_dependency_and_one_known_to_have_failed():
    ledger = Ledger(lease_s=10.0, max_attempts=3)
    ledger.submit(1, b"a")
    ledger.submit(2, b"b", deps=[1])
    ledger.cancel(1)
    assert [j for j, _ in ledger.dependency_failures] == [2]
    ledger.submit(3, b"c", failed=(9, "was cancelled"))
    assert [j for j, _ in ledger.dependency_failures] == [2, 3] and 3 not in ledger
    with pytest.raises(ValueError, match="not live"):
        ledger.submit(4, b"d", deps=[77])


def test_a_blocked_job_with_a_due_time_waits_for_both():
    ledger = Ledger(lease_s=10.0, max_attempts=3)
    ledger.submit(1, b"a")
    ledger.submit(2, b"b", deps=[1], due=50.0)
    lease = claim_ok(ledger, "w", 0.0)
    ledger.resolve("w", 1, lease.lease_id, True, b"\x01")
    assert ledger.state(2) is W and ledger.wake(49.0) == 0 and ledger.wake(50.0) == 1
    assert ledger.state(2) is P


def test_a_restart_keeps_what_a_blocked_job_waits_for_and_the_results_it_has():
    """A job submitted when one of its dependencies had succeeded already and one had not,
    with a due time: the journal holds both dependencies and the due time, so after a restart
    (two, here) it still waits for both, then gets both results."""
    from freelance_rz.core import payload as pl

    journal = TableJournal()
    ledger = Ledger(lease_s=LEASE_S, max_attempts=3, journal=journal)
    ledger.submit(1, b"one")
    ledger.submit(2, b"two")
    first = claim_ok(ledger, "w", 0.0)
    assert ledger.resolve("w", 1, first.lease_id, True, pl.pack_value("a"))
    ledger.submit(3, call_with_refs(1, 2), deps=[2], values={1: pl.pack_value("a")}, due=50.0)
    for seed in range(2):
        ledger = restored(journal, now=1.0, seed=seed)
        assert ledger.state(2) is P and ledger.state(3) is B
    second = claim_ok(ledger, "w", 1.0)
    assert ledger.resolve("w", 2, second.lease_id, True, pl.pack_value("b"))
    assert ledger.state(3) is W and ledger.wake(49.0) == 0 and ledger.wake(50.0) == 1
    assert pl.unpack_call(claim_ok(ledger, "w", 50.0).payload)[1] == [{"x": "a"}, {"x": "b"}]


def test_a_retried_result_resent_after_a_restart_is_stale():
    """The lease whose task error was retried is forgotten in the journal, as in the ledger:
    the same result sent again to a restarted producer (its ack was lost) changes nothing,
    even once the job runs again under a new lease."""
    journal = TableJournal()
    ledger = Ledger(lease_s=LEASE_S, max_attempts=3, journal=journal)
    ledger.submit(1, b"one")
    first = claim_ok(ledger, "w", 0.0)
    assert ledger.resolve("w", 1, first.lease_id, False, retry_error(1.0), now=0.0)
    ledger = restored(journal, now=2.0, seed=1)
    assert ledger.state(1) is P
    again = claim_ok(ledger, "w2", 2.0)
    assert not ledger.resolve("w", 1, first.lease_id, False, retry_error(1.0), now=2.5)
    assert ledger.state(1) is L and ledger.job_of("w2", again.lease_id) == 1

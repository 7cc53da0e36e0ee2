"""A worker's table of producers (:class:`freelance_rz.worker.peers.Peers`) with real
DEALER links on loopback but no producer behind them: the rules for handing a durable
producer's work to its restarted process, driven step by step."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import zmq

from freelance_rz.core.session import Session
from freelance_rz.worker.peers import Peers


class Hooks:
    """Records what the table asks of the worker's loop."""

    def __init__(self) -> None:
        self.beats: list[str] = []
        self.moved: list[tuple[str, str]] = []

    def beat(self, session: Session, now: float) -> None:
        self.beats.append(session.endpoint)

    def resend(self, session: Session, now: float) -> None:
        pass

    def abort_jobs(self, session: Session) -> None:
        raise AssertionError(f"jobs of {session.endpoint} aborted")

    def move_jobs(self, old: Session, new: Session) -> None:
        self.moved.append((old.endpoint, new.endpoint))

    def beat_lease_ms(self, session: Session) -> int:
        return 1000


@pytest.fixture
def peers():
    ctx = zmq.Context()
    table = Peers(ctx, b"w1", 1 << 20, None, frozenset(), give_up_s=60.0,
                  stats=SimpleNamespace(producers_found=0))
    table.hooks = Hooks()
    yield table
    table.close()
    for session in table.dormant.values():
        table.drop(session)
    ctx.term()


# Nothing listens on these ports: ZeroMQ connects in the background and keeps retrying.
OLD, NEW = "tcp://127.0.0.1:9", "tcp://127.0.0.1:7"


def _old_producer_stopped_answering(peers: Peers) -> Session:
    old = Session(OLD, discovered=True, producer_id="first", store_key="store-1")
    peers.add(old, 0.0)
    old.answered = True
    old.leases[41] = 0  # a job running in slot 0 under lease 41
    peers.unreachable(old, 1.0, "no answer to BEAT")
    assert OLD not in peers.links and old.unreachable_since == 1.0
    return old


@pytest.mark.parametrize("retrying", [False, True], ids=["link-closed", "link-retrying"])
def test_the_restarted_process_takes_the_running_jobs_at_its_first_answer(peers, retrying):
    """The old endpoint may be in the middle of a retry (its link open again, backoff)
    when the new process answers: the work moves at that answer, not at the next retry's
    deadline, because the restarted producer keeps the restored leases for one lease
    period only (the CI failure of 2026-12-06: moved 1.5 s late, the job ran elsewhere)."""
    old = _old_producer_stopped_answering(peers)
    if retrying:
        peers.connect(old, old.retry_at)
        assert OLD in peers.links and old.unreachable_since is not None
    new = Session(NEW, discovered=True, producer_id="second", store_key="store-1")
    peers.add(new, 2.0)
    assert peers.hooks.beats[-1] == NEW  # asked at once: a busy worker sends no claim
    peers.first_answer(new, peers.links[NEW], 2.1)
    assert peers.hooks.moved == [(OLD, NEW)]
    assert new.leases == {41: 0} and not old.leases
    assert OLD not in peers.sessions and OLD not in peers.links and OLD in peers.dormant


def test_a_producer_with_another_store_key_takes_nothing(peers):
    old = _old_producer_stopped_answering(peers)
    peers.connect(old, old.retry_at)
    other = Session(NEW, discovered=True, producer_id="other", store_key="store-2")
    peers.add(other, 2.0)
    assert NEW not in peers.hooks.beats  # not awaited: nothing is asked of it
    peers.first_answer(other, peers.links[NEW], 2.1)
    assert peers.hooks.moved == [] and old.leases == {41: 0} and OLD in peers.sessions


def test_nothing_moves_while_the_old_process_answers(peers):
    """An announcement with the same store key (forgeable) takes nothing from a producer
    that still answers."""
    old = Session(OLD, discovered=True, producer_id="first", store_key="store-1")
    peers.add(old, 0.0)
    old.answered = True
    old.leases[41] = 0
    forged = Session(NEW, discovered=True, producer_id="forged", store_key="store-1")
    peers.add(forged, 1.0)
    peers.first_answer(forged, peers.links[NEW], 1.1)
    assert peers.hooks.moved == [] and old.leases == {41: 0}

"""What README and docs/api.md promise about arguments, results and job processes."""

from __future__ import annotations

import collections
import enum

import pytest

import rztasks
from freelance_rz import JobLost
from freelance_rz.core import payload as pl

pytestmark = pytest.mark.timeout(90)


class Colour(enum.IntEnum):
    RED = 1


Point = collections.namedtuple("Point", "x y")


@pytest.mark.parametrize("sent, received", [
    (None, None), (True, True), (1.5, 1.5), ("é", "é"), (b"\xff", b"\xff"),
    (-(2**63), -(2**63)), (2**64 - 1, 2**64 - 1),
    (bytearray(b"ab"), b"ab"), (memoryview(b"ab"), b"ab"),
    ((1, (2, 3)), [1, [2, 3]]),
    ({None: 1, True: 2, 3: 3, 4.5: 4, "s": 5, b"b": 6}, {None: 1, True: 2, 3: 3, 4.5: 4, "s": 5, b"b": 6}),
    (Colour.RED, 1), (Point(1, 2), [1, 2]), (collections.OrderedDict(a=1), {"a": 1}),
])
def test_the_documented_types_travel(sent, received):
    task, args, kwargs, _ = pl.unpack_call(pl.pack_call("m:f", (sent,), {"k": sent}))
    assert args == [received] and kwargs == {"k": received}
    assert type(args[0]) is type(received)


@pytest.mark.parametrize("value", [
    2**64, -(2**63) - 1, {(1, 2): 3}, {1, 2}, frozenset(), object(),
    __import__("datetime").date(2026, 1, 1), __import__("decimal").Decimal(1),
])
def test_nothing_else_travels(value):
    with pytest.raises(TypeError, match="msgpack-encodable"):
        pl.pack_call("m:f", (value,), {})


def test_a_slot_reuses_its_job_process_until_it_crashes(make_producer, start_worker):
    """Module-level state carries over between the jobs of one slot; a crash gives the slot
    a fresh process with fresh state."""
    producer = make_producer(max_attempts=1)
    start_worker("w1", "--slots", "1")
    first = producer.submit(rztasks.count_calls).result(timeout=20)
    second = producer.submit(rztasks.count_calls).result(timeout=10)
    assert second == {"pid": first["pid"], "calls": first["calls"] + 1}
    with pytest.raises(JobLost, match="process"):  # its process died
        producer.submit(rztasks.crash).result(timeout=20)
    fresh = producer.submit(rztasks.count_calls).result(timeout=20)
    assert fresh["pid"] != first["pid"] and fresh["calls"] == 1

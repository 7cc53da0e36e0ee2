"""Every option and constructor argument is checked where it is given: a wrong type raises
TypeError, a value out of range ValueError, and the message names the argument, what it must
be and the value given. Pure: constructing a Producer starts no thread and opens no socket, a
Worker only looks its task modules up."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from freelance_rz import Producer, Worker, report_progress
from freelance_rz.core import payload as pl

INF, NAN = math.inf, math.nan


def check_message(exc: BaseException, name: str, value: object) -> None:
    text = str(exc)
    assert text.startswith(f"{name} must be "), text
    assert f"got {value!r}"[:60] in text or "got the element" in text, text
    if isinstance(exc, TypeError) and "got the element" not in text:
        assert f"({type(value).__name__})" in text, text
    assert "not supported between" not in text


@pytest.fixture
def producer():
    made = Producer("args-test", interfaces=["127.0.0.1"], announce=False)
    yield made
    made.close()


PRODUCER_BAD = [
    (TypeError, "group", 5),
    (TypeError, "group", None),
    (ValueError, "group", ""),
    (ValueError, "group", "g" * 64),
    (TypeError, "interfaces", "127.0.0.1"),
    (TypeError, "interfaces", [127]),
    (TypeError, "port", "5555"),
    (TypeError, "port", 5555.0),
    (TypeError, "port", True),
    (ValueError, "port", -1),
    (ValueError, "port", 65536),
    (TypeError, "lease_s", "1"),
    (TypeError, "lease_s", True),
    (TypeError, "lease_s", None),
    (ValueError, "lease_s", 0.1),
    (ValueError, "lease_s", NAN),
    (ValueError, "lease_s", INF),
    (ValueError, "lease_s", 1e10),
    (TypeError, "max_attempts", 2.5),
    (TypeError, "max_attempts", True),
    (TypeError, "max_attempts", "3"),
    (ValueError, "max_attempts", 0),
    (ValueError, "max_attempts", 2**63),
    (TypeError, "announce", None),
    (TypeError, "announce", 1),
    (TypeError, "store", 5),
    (TypeError, "retention_s", "1"),
    (TypeError, "retention_s", True),
    (ValueError, "retention_s", -1),
    (ValueError, "retention_s", NAN),
    (ValueError, "retention_s", INF),
    (TypeError, "retention_count", 1.5),
    (TypeError, "retention_count", True),
    (ValueError, "retention_count", -1),
    (TypeError, "max_payload_bytes", 1.5),
    (TypeError, "max_payload_bytes", "1000"),
    (ValueError, "max_payload_bytes", 0),
    (ValueError, "max_payload_bytes", 2**63),
    (TypeError, "on_event", 5),
    (TypeError, "secret_key", 5),
    (TypeError, "authorized_workers", 5),
    (TypeError, "max_connections", 1.5),
    (TypeError, "max_connections", True),
    (ValueError, "max_connections", 0),
]


@pytest.mark.parametrize("kind, name, value", PRODUCER_BAD)
def test_producer_refuses(kind, name, value):
    kwargs = {"interfaces": ["127.0.0.1"], name: value}
    with pytest.raises(kind) as info:
        Producer(**kwargs)
    assert type(info.value) is kind
    check_message(info.value, name, value)


@pytest.mark.parametrize("kwargs", [
    {"lease_s": 1}, {"lease_s": 0.2}, {"lease_s": 3600.0}, {"port": 0}, {"port": 65535},
    {"group": "g" * 63}, {"max_attempts": 1}, {"announce": False}, {"retention_s": None},
    {"retention_s": 0}, {"retention_count": None}, {"retention_count": 0},
    {"max_payload_bytes": 1}, {"on_event": print}, {"interfaces": ("127.0.0.1",)},
])
def test_producer_takes_what_it_always_took(kwargs):
    Producer(**{"interfaces": ["127.0.0.1"], **kwargs}).close()


def test_producer_defaults_are_unchanged():
    producer = Producer(interfaces=["127.0.0.1"])
    try:
        assert producer.group == "default" and producer.port == 0 and producer.announce is True
        assert producer._io.ledger.lease_s == 1.0 and producer._io.ledger.max_attempts == 3
        assert producer.max_payload_bytes == 64 * 1024 * 1024
    finally:
        producer.close()


OPTIONS_BAD = [
    (TypeError, "timeout_s", "x"),
    (TypeError, "timeout_s", True),
    (ValueError, "timeout_s", 0),
    (ValueError, "timeout_s", -1),
    (ValueError, "timeout_s", NAN),
    (ValueError, "timeout_s", INF),
    (ValueError, "timeout_s", 1e10),
    (TypeError, "max_attempts", 2.5),
    (TypeError, "max_attempts", True),
    (ValueError, "max_attempts", 0),
    (TypeError, "priority", 1.5),
    (TypeError, "priority", "1"),
    (TypeError, "priority", True),
    (TypeError, "priority", None),
    (ValueError, "priority", 10**30),
    (ValueError, "priority", 2**63),
    (ValueError, "priority", -(2**63) - 1),
]


@pytest.mark.parametrize("kind, name, value", OPTIONS_BAD)
def test_options_refuse(producer, kind, name, value):
    with pytest.raises(kind) as info:
        producer.options(**{name: value})
    assert type(info.value) is kind
    check_message(info.value, name, value)


@pytest.mark.parametrize("kwargs", [
    {"timeout_s": 0.001}, {"timeout_s": 30}, {"timeout_s": None}, {"max_attempts": None},
    {"max_attempts": 1}, {"priority": 2**63 - 1}, {"priority": -(2**63)}, {"priority": 0},
])
def test_options_take_what_they_always_took_and_it_encodes(producer, kwargs):
    """Every value options() takes also travels: priority's range is msgpack's signed 64 bits."""
    options = producer.options(**kwargs)
    pl.pack_call("rztasks:add", (1, 2), {}, options.wire)


@pytest.mark.parametrize("method", ["status", "get"])
@pytest.mark.parametrize("kind, value", [(TypeError, "5"), (TypeError, True), (ValueError, -1), (ValueError, NAN)])
def test_status_and_get_timeouts(producer, method, kind, value):
    args = (1,) if method == "get" else ()
    with pytest.raises(kind) as info:
        getattr(producer, method)(*args, timeout_s=value)
    check_message(info.value, "timeout_s", value)
    assert not producer._started  # refused before anything started


@pytest.mark.parametrize("kind, value", [(TypeError, "1"), (TypeError, 1.0), (ValueError, 0)])
def test_get_job_id(producer, kind, value):
    with pytest.raises(kind) as info:
        producer.get(value)
    check_message(info.value, "job_id", value)
    assert not producer._started


WORKER_BAD = [
    (TypeError, "tasks", "rztasks"),
    (TypeError, "tasks", None),
    (TypeError, "tasks", [5]),
    (TypeError, "discover", None),
    (TypeError, "connect", "tcp://127.0.0.1:9"),
    (TypeError, "group", 5),
    (ValueError, "group", ""),
    (ValueError, "group", "g" * 64),
    (TypeError, "slots", 2.5),
    (TypeError, "slots", "2"),
    (TypeError, "slots", True),
    (ValueError, "slots", 0),
    (TypeError, "interfaces", "127.0.0.1"),
    (TypeError, "name", 5),
    (ValueError, "name", "n" * 201),
    (TypeError, "wait_ms", 1.5),
    (TypeError, "wait_ms", "1000"),
    (ValueError, "wait_ms", 0),
    (TypeError, "give_up_s", "60"),
    (TypeError, "give_up_s", True),
    (ValueError, "give_up_s", 0),
    (ValueError, "give_up_s", NAN),
    (ValueError, "give_up_s", -INF),
    (TypeError, "key", 5),
    (TypeError, "trust", 5),
    (TypeError, "max_payload_bytes", 1.5),
    (ValueError, "max_payload_bytes", 0),
]


def _worker(**kwargs) -> Worker:
    return Worker(**{"tasks": ["rztasks"], "connect": ["tcp://127.0.0.1:9"], **kwargs})


@pytest.mark.parametrize("kind, name, value", WORKER_BAD)
def test_worker_refuses(kind, name, value):
    with pytest.raises(kind) as info:
        _worker(**{name: value})
    assert type(info.value) is kind
    check_message(info.value, name, value)


@pytest.mark.parametrize("kwargs", [
    {"give_up_s": INF}, {"give_up_s": 0.5}, {"tasks": ("rztasks",)}, {"slots": None},
    {"slots": 1}, {"name": "w1"}, {"wait_ms": 1}, {"connect": ("tcp://127.0.0.1:9",)},
    {"key": None, "trust": None}, {"interfaces": ["127.0.0.1"]},
])
def test_worker_takes_what_it_always_took(kwargs):
    _worker(**kwargs)


def test_worker_lists_a_module_given_twice_once():
    """`--tasks X --tasks X` (and ["a", "b", "a"]) are taken once each, in order."""
    assert _worker(tasks=["rztasks", "rztasks"]).tasks == ["rztasks"]
    assert _worker(tasks=["rztasks", "rzdurable", "rztasks"]).tasks == ["rztasks", "rzdurable"]


@pytest.mark.parametrize("kind, name, args", [
    (TypeError, "done", ("3",)),
    (TypeError, "done", (True,)),
    (TypeError, "total", (1, "10")),
    (TypeError, "message", (1, 10, 5)),
    (ValueError, "done", (-1,)),
    (ValueError, "done", (NAN,)),
    (ValueError, "done", (10**30,)),
    (ValueError, "total", (1, INF)),
    (ValueError, "total", (1, -10)),
])
def test_report_progress_refuses(kind, name, args):
    """Checked outside a worker too, so a task's mistake shows in a plain test of it."""
    with pytest.raises(kind) as info:
        report_progress(*args)
    value = args[("done", "total", "message").index(name)]
    check_message(info.value, name, value)


def test_report_progress_takes_what_it_always_took():
    report_progress(3, 10, "resizing")
    report_progress(0.5)
    report_progress(1, None)
    report_progress(0, 0)


def test_a_path_is_a_path(tmp_path: Path):
    producer = Producer(interfaces=["127.0.0.1"], store=tmp_path / "jobs.sqlite")
    producer.close()

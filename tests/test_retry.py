"""The retry rule of task errors (core/retry.py) and the error payload it reads. Pure."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from freelance_rz.core import payload as pl
from freelance_rz.core.retry import (
    MAX_ERROR_TYPES,
    RemoteError,
    RetryPolicy,
    backoff,
    matches,
    retry_in,
)
from freelance_rz.errors import Retry


class Deep(ConnectionRefusedError):
    pass


def error_of(exc: BaseException) -> RemoteError:
    error = pl.remote_error(pl.pack_exception(exc, "tb"))
    assert error is not None
    return error


def test_an_error_payload_names_the_class_and_its_bases():
    error = error_of(Deep("no"))
    assert error.type == "Deep"
    assert error.types == (f"{__name__}:Deep", "builtins:ConnectionRefusedError",
                           "builtins:ConnectionError", "builtins:OSError", "builtins:Exception",
                           "builtins:BaseException")
    assert pl.unpack_error(pl.pack_exception(Deep("no"), "tb")) == ("Deep", "no", "tb")
    assert error_of(Retry(in_s=2.5)).retry_in_s == 2.5 and error_of(Retry()).retry_in_s is None


def test_the_names_are_bounded():
    deep: type[Exception] = Exception
    for n in range(40):
        deep = type(f"E{n}", (deep,), {})
    assert len(error_of(deep()).types) == MAX_ERROR_TYPES


def test_matching_by_a_base_or_by_name_from_an_old_worker():
    on = frozenset({"builtins:ConnectionError", "myapp.errors:Busy"})
    assert matches(on, error_of(Deep()))
    assert not matches(on, error_of(ValueError()))
    assert matches(on, RemoteError("Busy"))  # no types: the class name alone
    assert not matches(on, RemoteError("ValueError"))


def test_backoff_doubles_up_to_the_cap_and_jitter_keeps_the_upper_half():
    policy = RetryPolicy(backoff_s=1.0, backoff_max_s=5.0, jitter=False)
    assert [backoff(policy, n, 0.5) for n in (1, 2, 3, 4, 100)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    jittered = RetryPolicy(backoff_s=1.0, backoff_max_s=5.0)
    assert backoff(jittered, 2, 0.0) == 1.0 and backoff(jittered, 2, 0.999) == pytest.approx(2.0, abs=0.01)


def test_retry_in_follows_the_policy_and_its_count():
    policy = RetryPolicy(frozenset({"builtins:OSError"}), max_retries=2, backoff_s=1.0, jitter=False)
    assert retry_in(policy, 0, error_of(OSError()), 0.5) == 1.0
    assert retry_in(policy, 1, error_of(OSError()), 0.5) == 2.0
    assert retry_in(policy, 2, error_of(OSError()), 0.5) is None  # spent
    assert retry_in(policy, 0, error_of(KeyError()), 0.5) is None  # not named
    assert retry_in(None, 0, error_of(OSError()), 0.5) is None  # no policy: final
    assert retry_in(None, 0, error_of(Retry(in_s=7)), 0.5) == 7  # Retry needs none
    assert retry_in(None, 3, error_of(Retry(in_s=7)), 0.5) is None  # 3 by default
    assert retry_in(policy, 0, error_of(Retry()), 0.0) == 1.0  # its own delay, else the backoff


@given(st.frozensets(st.from_regex(r"[a-z]{1,5}:[A-Z][a-z]{0,5}", fullmatch=True), max_size=5),
       st.integers(0, 100), st.integers(0, 10**6), st.integers(0, 10**6), st.booleans())
def test_a_policy_survives_the_wire(on, most, base_ms, top_ms, jitter):
    policy = RetryPolicy(on, most, base_ms / 1000, top_ms / 1000, jitter)
    assert RetryPolicy.from_wire(policy.wire()) == policy


@pytest.mark.parametrize("value", [None, 3, {"on": "x"}, {"max": -1}, {"on": [1]},
                                   {"backoff_ms": 1.5}])
def test_a_malformed_policy_reads_as_none(value):
    assert RetryPolicy.from_wire(value) is None


def test_retry_refuses_a_bad_delay():
    with pytest.raises(ValueError, match="in_s"):
        Retry(in_s=-1)
    with pytest.raises(TypeError, match="in_s"):  # the wrong type is a TypeError, as everywhere
        Retry(in_s="10")
    assert pl.remote_error(b"\xc1") is None


def test_only_the_producers_own_references_pass_at_submit():
    """An ExtType or Timestamp among a job's arguments is refused, even one shaped like a
    reference, also beside real references (hostile finding 12 stays fixed)."""
    import msgpack

    class Ref:
        pass

    mine = Ref()
    for bad in (msgpack.ExtType(5, b"x"), msgpack.Timestamp(1, 2), pl.ref(3)):
        for args in ([bad], [bad, mine]):
            with pytest.raises(TypeError, match="extension types"):
                pl.pack_call("m:f", args, {}, default=pl.References(lambda o: 7 if o is mine else None))
    with pytest.raises(TypeError, match="not Futures"):  # its result could be a list: no key
        pl.pack_call("m:f", [{mine: 1}], {}, default=pl.References(lambda o: 7 if o is mine else None))
    packed = pl.pack_call("m:f", [mine, {"x": [mine]}], {}, default=pl.References(lambda o: 7 if o is mine else None))
    assert pl.unpack_call(pl.substitute(packed, {7: pl.pack_value(42)}))[1] == [42, {"x": [42]}]

"""Tests of the wire protocol: frames, verbs, codec, validation and the payload helpers."""

from __future__ import annotations

import dataclasses
import math

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freelance_rz.core import wire as p

from freelance_rz.core import payload as pl
from freelance_rz.errors import FreelanceError, ProtocolError
from freelance_rz.core.wire import (
    E_INVALID,
    E_MALFORMED,
    E_UNKNOWN_VERB,
    E_VERSION,
    MAX_UINT,
    SIGNATURE,
    Ack,
    Admin,
    Beat,
    BeatAck,
    Bye,
    CancelClaim,
    Claim,
    Decline,
    Err,
    Job,
    NoJob,
    Result,
    Status,
    StatusReply,
    VersionErr,
    decode_reply,
    decode_request,
    encode,
)

REQUESTS = [
    Claim(rid=1, wait_ms=5000, tasks=("m",)),
    Result(rid=2, job_id=10, lease_id=2**63 - 1, ok=True, payload=b"\x01"),
    Result(rid=3, job_id=10, lease_id=7, ok=False, payload=b"", claim=Claim(rid=4, wait_ms=0, tasks=("m",))),
    Beat(rid=5, leases=(1, 2, MAX_UINT)),
    Beat(rid=6, leases=()),
    Decline(rid=7, job_id=1, lease_id=2),
    CancelClaim(rid=8, claim_rid=1),
    Bye(rid=9),
    Status(rid=0),
    Status(rid=1, detail=True),
    Admin(rid=10, token="t" * 256, action="cancel", job_id=MAX_UINT),
]
REPLIES = [
    Job(rid=1, job_id=2, lease_id=3, attempt=1, lease_ms=1000, payload=b"\x93\xa1a\x90\x80"),
    Job(rid=1, job_id=2, lease_id=3, attempt=1, lease_ms=1000, payload=b"",
        traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01", resources={"gpu": 1.0}),
    NoJob(rid=2),
    Ack(rid=3),
    BeatAck(rid=4, void=(5, 6)),
    BeatAck(rid=4, void=()),
    StatusReply(rid=5, info={"pending": 3, "workers": ["a", "b"], "version": "0.1.0",
                             "nested": {"x": None, "y": 1.5, "z": b"raw", "t": True}}),
    StatusReply(rid=5, info={}),
    Err(rid=6, code=E_INVALID, message="bad field"),
    Err(rid=None, code=E_MALFORMED, message=""),
    Err(rid=MAX_UINT, code=0, message="ünïcødé ✓"),
]
REQUEST_VERBS = [b"CLAIM", b"RESULT", b"BEAT", b"DECLINE", b"CANCEL_CLAIM", b"BYE", b"STATUS", b"ADMIN"]
REPLY_VERBS = [b"JOB", b"NOJOB", b"ACK", b"BEAT_ACK", b"STATUS_REPLY", b"ERR"]

# A valid body for each verb, used to build frames by hand.
OPTIONAL_FIELDS = {"claim", "resources", "labels", "detail", "traceparent"}  # may be absent
VALID_BODIES: dict[bytes, dict] = {
    b"CLAIM": {"rid": 11, "wait_ms": 100, "tasks": ["m", "pkg.sub_2"], "resources": {"gpu": 1},
               "labels": {"zone": "eu"}},
    b"RESULT": {"rid": 11, "job_id": 1, "lease_id": 2, "ok": True, "payload": b"x",
                "claim": {"rid": 12, "wait_ms": 0, "tasks": ["m"]}},
    b"BEAT": {"rid": 11, "leases": [1, 2]},
    b"DECLINE": {"rid": 11, "job_id": 1, "lease_id": 2, "resources": {"gpu": 0.5, "mem_gb": 0}},
    b"CANCEL_CLAIM": {"rid": 11, "claim_rid": 3},
    b"BYE": {"rid": 11},
    b"STATUS": {"rid": 11, "detail": True},
    b"ADMIN": {"rid": 11, "token": "secret", "action": "retry", "job_id": 3},
    b"JOB": {"rid": 11, "job_id": 1, "lease_id": 2, "attempt": 1, "lease_ms": 1000,
             "payload": b"x", "resources": {"gpu": 1}, "traceparent": "00-ab-cd-01"},
    b"NOJOB": {"rid": 11},
    b"ACK": {"rid": 11},
    b"BEAT_ACK": {"rid": 11, "void": [3]},
    b"STATUS_REPLY": {"rid": 11, "info": {"a": 1}},
    b"ERR": {"rid": 11, "code": 4, "message": "m"},
}


def decoder(verb: bytes):
    return decode_request if verb in REQUEST_VERBS else decode_reply


def frames(verb: bytes, body, signature: bytes = SIGNATURE) -> list[bytes]:
    raw = body if isinstance(body, bytes) else msgpack.packb(body, use_bin_type=True)
    return [signature, verb, raw]


def decode_error(fn, frame_list) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        fn(frame_list)
    return info.value


# --- round trips -------------------------------------------------------------------------


def test_verb_tables_cover_every_message_class():
    assert {type(m) for m in REQUESTS} == {Claim, Result, Beat, Decline, CancelClaim, Bye, Status, Admin}
    assert {type(m) for m in REPLIES} == {Job, NoJob, Ack, BeatAck, StatusReply, Err}


@pytest.mark.parametrize("msg", REQUESTS, ids=repr)
def test_request_round_trip(msg):
    out = encode(msg)
    assert len(out) == 3 and out[0] == SIGNATURE
    assert all(type(frame) is bytes for frame in out)
    assert decode_request(out) == msg


@pytest.mark.parametrize("msg", REPLIES, ids=repr)
def test_reply_round_trip(msg):
    assert decode_reply(encode(msg)) == msg


@pytest.mark.parametrize(
    "msg, verb",
    [(Claim(rid=0, wait_ms=0, tasks=("m",)), b"CLAIM"), (Result(rid=0, job_id=0, lease_id=0, ok=True,
      payload=b""), b"RESULT"), (Beat(rid=0, leases=()), b"BEAT"),
     (Decline(rid=0, job_id=0, lease_id=0), b"DECLINE"),
     (CancelClaim(rid=0, claim_rid=0), b"CANCEL_CLAIM"), (Bye(rid=0), b"BYE"),
     (Status(rid=0), b"STATUS"), (Admin(rid=0, token="", action="", job_id=0), b"ADMIN"), (Job(rid=0, job_id=0, lease_id=0, attempt=1, lease_ms=0,
      payload=b""), b"JOB"), (NoJob(rid=0), b"NOJOB"), (Ack(rid=0), b"ACK"),
     (BeatAck(rid=0, void=()), b"BEAT_ACK"), (StatusReply(rid=0, info={}), b"STATUS_REPLY"),
     (Err(rid=0, code=1, message=""), b"ERR")],
)
def test_encode_uses_the_verb_frame(msg, verb):
    assert encode(msg)[1] == verb


def test_result_without_claim_decodes_with_claim_none():
    body = dict(VALID_BODIES[b"RESULT"])
    del body["claim"]
    msg = decode_request(frames(b"RESULT", body))
    assert msg == Result(rid=11, job_id=1, lease_id=2, ok=True, payload=b"x", claim=None)
    body["claim"] = None  # explicit nil is the same
    assert decode_request(frames(b"RESULT", body)) == msg


def test_result_with_claim_carries_it():
    msg = decode_request(frames(b"RESULT", VALID_BODIES[b"RESULT"]))
    assert msg.claim == Claim(rid=12, wait_ms=0, tasks=("m",))


def test_encode_rejects_foreign_objects():
    with pytest.raises(KeyError):
        encode(object())  # type: ignore[arg-type]


def test_protocol_error_is_a_freelance_error():
    exc = ProtocolError(E_INVALID, "x", 5)
    assert isinstance(exc, FreelanceError)
    assert (exc.code, exc.message, exc.rid, str(exc)) == (E_INVALID, "x", 5, "x")


# --- direction ---------------------------------------------------------------------------


@pytest.mark.parametrize("msg", REQUESTS, ids=repr)
def test_request_verbs_are_refused_as_replies(msg):
    exc = decode_error(decode_reply, encode(msg))
    assert exc.code == E_UNKNOWN_VERB
    assert exc.rid == msg.rid


@pytest.mark.parametrize("msg", REPLIES, ids=repr)
def test_reply_verbs_are_refused_as_requests(msg):
    exc = decode_error(decode_request, encode(msg))
    assert exc.code == E_UNKNOWN_VERB
    assert exc.rid == msg.rid


@pytest.mark.parametrize("verb", [b"", b"FOO", b"claim", b"CLAIM ", b"\xff\xfe", b"X" * 1000])
@pytest.mark.parametrize("decode", [decode_request, decode_reply])
def test_unknown_verbs(decode, verb):
    exc = decode_error(decode, frames(verb, {"rid": 42}))
    assert exc.code == E_UNKNOWN_VERB
    assert exc.rid == 42
    assert len(exc.message) < 200  # a huge verb is not echoed whole


# --- framing, signature, body ------------------------------------------------------------


@pytest.mark.parametrize("decode", [decode_request, decode_reply])
@pytest.mark.parametrize("count", [0, 1, 2, 4, 5])
def test_wrong_frame_count(decode, count):
    good = frames(b"STATUS", {"rid": 1})
    bad = (good + [b"extra", b"more"])[:count] if count > 3 else good[:count]
    exc = decode_error(decode, bad)
    assert exc.code == E_MALFORMED
    assert exc.rid is None


def test_routing_id_frame_must_be_stripped():
    exc = decode_error(decode_request, [b"\x00\x80\x00\x00\x29"] + encode(Bye(rid=1)))
    assert exc.code == E_MALFORMED


@pytest.mark.parametrize("signature", [b"", b"XYZ1", b"frz1", b"FR", b"\x00\x00\x00\x00", b"ZRF1"])
@pytest.mark.parametrize("decode", [decode_request, decode_reply])
def test_bad_signature(decode, signature):
    exc = decode_error(decode, frames(b"STATUS", {"rid": 1}, signature=signature))
    assert exc.code == E_MALFORMED


@pytest.mark.parametrize("signature", [b"FRZ1", b"FRZ0", b"FRZ9", b"FRZ\xff"])
@pytest.mark.parametrize("decode", [decode_request, decode_reply])
def test_other_version(decode, signature):
    exc = decode_error(decode, frames(b"STATUS", {"rid": 1}, signature=signature))
    assert exc.code == E_VERSION
    assert exc.rid is None
    # the error names both versions
    assert f"version {signature[3:].decode('ascii', 'backslashreplace')}" in exc.message
    assert "version 2 (FRZ2)" in exc.message


def test_version_error_is_framed_in_the_peers_version():
    """A version error goes out in the asker's framing (every version keeps the ERR layout),
    and an ERR of another version is the one reply of it that is read."""
    frames_out = encode(VersionErr(signature=b"FRZ1", message="speaks FRZ2"))
    assert frames_out[:2] == [b"FRZ1", b"ERR"]
    assert msgpack.unpackb(frames_out[2]) == {"rid": None, "code": E_VERSION, "message": "speaks FRZ2"}
    assert decode_reply(frames_out) == Err(rid=None, code=E_VERSION, message="speaks FRZ2")
    assert decode_reply([b"FRZ9", b"ERR", frames_out[2]]).code == E_VERSION
    assert decode_error(decode_reply, [b"FRZ1", b"NOJOB", msgpack.packb({"rid": 1})]).code == E_VERSION
    assert decode_error(decode_request, [b"FRZ1", b"ERR", frames_out[2]]).code == E_VERSION


@pytest.mark.parametrize(
    "raw",
    [b"", b"\xc1", b"\x81\xa3rid", b"\x82\xa3rid\x01", b"\xdf\xff\xff\xff\xff",
     msgpack.packb({"rid": 1}) + b"\x00", b"\x81\xa2\xff\xfe\x01"],
    ids=["empty", "never-used-byte", "truncated", "truncated-map", "huge-map-header",
         "trailing-bytes", "non-utf8-key"],
)
@pytest.mark.parametrize("decode", [decode_request, decode_reply])
def test_body_that_is_not_msgpack(decode, raw):
    exc = decode_error(decode, [SIGNATURE, b"STATUS", raw])
    assert exc.code == E_MALFORMED
    assert exc.rid is None


def test_non_utf8_string_value():
    # ERR with "message" = a str header over invalid UTF-8
    raw = (b"\x83" + msgpack.packb("rid") + msgpack.packb(1) + msgpack.packb("code")
           + msgpack.packb(4) + msgpack.packb("message") + b"\xa2\xff\xfe")
    exc = decode_error(decode_reply, [SIGNATURE, b"ERR", raw])
    assert exc.code == E_MALFORMED


def test_map_with_integer_keys_is_malformed():
    exc = decode_error(decode_request, frames(b"STATUS", {1: 2, "rid": 3}))
    assert exc.code == E_MALFORMED


@pytest.mark.parametrize("body", [[1, 2], 1, None, "rid", b"rid", True, 1.5, []])
@pytest.mark.parametrize("decode", [decode_request, decode_reply])
def test_body_that_is_not_a_map(decode, body):
    exc = decode_error(decode, frames(b"STATUS", body))
    assert exc.code == E_MALFORMED
    assert exc.rid is None


# --- fields ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "verb, field",
    [(verb, field) for verb, body in VALID_BODIES.items() for field in body
     if field not in OPTIONAL_FIELDS],
)
def test_missing_field(verb, field):
    body = dict(VALID_BODIES[verb])
    del body[field]
    exc = decode_error(decoder(verb), frames(verb, body))
    assert exc.code == E_INVALID
    assert field in exc.message
    assert exc.rid == (None if field == "rid" else 11)


def test_err_rid_must_be_present_even_though_it_may_be_nil():
    exc = decode_error(decode_reply, frames(b"ERR", {"code": 1, "message": "m"}))
    assert exc.code == E_INVALID
    assert exc.rid is None


BAD_UINTS = [-1, -(2**63), 2**63, 2**64 - 1, 1.0, 0.0, math.inf, "1", b"1", True, False,
             None, [1], {"a": 1}]
BAD_VALUES: dict[str, list] = {
    "payload": ["x", 1, None, [b"x"], True, {"a": b"x"}],
    "ok": [1, 0, "true", None, b"\x01", 1.0],
    "message": [b"m", 1, None, ["m"], True],
    "leases": [5, "x", b"\x01\x02", None, {"a": 1}, [1, -1], [True], [1.0], [2**63], [None],
               [[1]]],
    "info": [[1], "x", b"x", None, 1, True],
    "claim": ["x", 1, [1, 2], True, b"", {"rid": 1}, {"wait_ms": 1},
              {"rid": 1, "wait_ms": -1}, {"rid": 1, "wait_ms": True}, {"rid": "1", "wait_ms": 1},
              {"rid": 1, "wait_ms": 1}, {"rid": 1, "wait_ms": 1, "tasks": "m"},
              {"rid": 1, "wait_ms": 1, "tasks": ["m"], "resources": {"gpu": -1}}],
    # what a worker can run (FRZ2): bounded counts, lengths and amounts, never NaN or inf
    "tasks": ["m", None, [], ["m"] * 257, [1], [""], ["a b"], ["m:f"], ["x" * 201], {"m": 1},
              [b"m"], [["m"]], [None]],
    "resources": [[], "gpu=1", 1, {"gpu": -1}, {"gpu": -0.001}, {"gpu": math.nan},
                  {"gpu": math.inf}, {"gpu": -math.inf}, {"gpu": "1"}, {"gpu": True},
                  {"gpu": None}, {"gpu": [1]}, {"": 1}, {"1x": 1}, {"a b": 1}, {"x" * 65: 1},
                  {f"r{i}": 1 for i in range(33)}, {"gpu": 1e16}, {b"gpu": 1}],
    "labels": [[], "zone=eu", 1, {"zone": 1}, {"zone": None}, {"zone": b"eu"},
               {"zone": "x" * 129}, {"": "a"}, {"9": "a"}, {f"l{i}": "a" for i in range(33)},
               {b"zone": "eu"}],
}
BAD_VALUES["void"] = BAD_VALUES["leases"]
# issue 17's fields: bounded strings (token 256, action 16, traceparent 128 characters), a bool
BAD_VALUES["token"] = [None, 1, b"secret", ["t"], "t" * 257, True]
BAD_VALUES["action"] = [None, 1, b"cancel", "x" * 17, {"a": 1}]
BAD_VALUES["traceparent"] = [1, b"00-ab", "0" * 129, ["00"], True]
BAD_VALUES["detail"] = [1, 0, "true", b"\x01", [True]]
FIELD_CASES = []
for _verb, _body in VALID_BODIES.items():
    for _field in _body:
        for _bad in BAD_VALUES.get(_field, BAD_UINTS):
            if _verb == b"ERR" and _field == "rid" and _bad is None:
                continue  # ERR's rid may be nil
            FIELD_CASES.append((_verb, _field, _bad))


@pytest.mark.parametrize("verb, field, bad", FIELD_CASES)
def test_wrong_type_or_range_per_field(verb, field, bad):
    body = dict(VALID_BODIES[verb])
    body[field] = bad
    exc = decode_error(decoder(verb), frames(verb, body))
    assert exc.code == E_INVALID
    assert field in exc.message or (field == "claim" and "CLAIM" in exc.message)
    # The rid is kept on the error whenever it is itself readable.
    assert exc.rid == (None if field == "rid" else 11)


@pytest.mark.parametrize("verb", list(VALID_BODIES))
def test_uint_bounds(verb):
    body = dict(VALID_BODIES[verb])
    body["rid"] = MAX_UINT
    msg = decoder(verb)(frames(verb, body))
    assert msg.rid == MAX_UINT
    body["rid"] = MAX_UINT + 1
    assert decode_error(decoder(verb), frames(verb, body)).code == E_INVALID
    body["rid"] = 0
    assert decoder(verb)(frames(verb, body)).rid == 0


def test_bools_are_not_ints_anywhere():
    for verb, body in VALID_BODIES.items():
        for field, value in body.items():
            if type(value) is int:
                bad = dict(body, **{field: True})
                assert decode_error(decoder(verb), frames(verb, bad)).code == E_INVALID


def test_err_rid_may_be_nil():
    assert decode_reply(frames(b"ERR", {"rid": None, "code": 1, "message": "m"})) == Err(
        rid=None, code=1, message="m"
    )


@pytest.mark.parametrize("verb", list(VALID_BODIES))
def test_extra_fields_are_ignored(verb):
    body = dict(VALID_BODIES[verb])
    plain = decoder(verb)(frames(verb, body))
    body.update({"zz_future": [1, {"x": b"y"}], "extra": None, "note": "hi"})
    assert decoder(verb)(frames(verb, body)) == plain


def test_extra_fields_inside_a_carried_claim_are_ignored():
    body = dict(VALID_BODIES[b"RESULT"], claim={"rid": 12, "wait_ms": 0, "tasks": ["m"], "x": [1]})
    assert decode_request(frames(b"RESULT", body)).claim == Claim(rid=12, wait_ms=0, tasks=("m",))


def test_bytes_keys_are_tolerated_but_do_not_name_fields():
    # msgpack bin keys are allowed by the unpacker; they never match a str field name
    exc = decode_error(decode_request, frames(b"BYE", {b"rid": 1}))
    assert exc.code == E_INVALID
    assert exc.rid is None


# --- hypothesis: every valid message round-trips -----------------------------------------

uints = st.integers(min_value=0, max_value=MAX_UINT)
uint_tuples = st.lists(uints, max_size=5).map(tuple)
msgpack_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=10)
    | st.binary(max_size=10)
)
info_values = st.recursive(
    msgpack_leaves,
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=10,
)
names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.-]{0,10}", fullmatch=True)
modules = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}(\.[A-Za-z_][A-Za-z0-9_]{0,8}){0,2}", fullmatch=True)
amounts = st.integers(0, 10**6) | st.floats(0, 1e15, allow_nan=False)
resource_maps = st.none() | st.dictionaries(names, amounts, max_size=4)
claims = st.builds(
    Claim, rid=uints, wait_ms=uints, tasks=st.lists(modules, min_size=1, max_size=4).map(tuple),
    max_job=st.none() | uints, resources=resource_maps,
    labels=st.none() | st.dictionaries(names, st.text(max_size=20), max_size=4),
)
requests = st.one_of(
    claims,
    st.builds(Result, rid=uints, job_id=uints, lease_id=uints, ok=st.booleans(),
              payload=st.binary(max_size=32), claim=st.none() | claims),
    st.builds(Beat, rid=uints, leases=uint_tuples),
    st.builds(Decline, rid=uints, job_id=uints, lease_id=uints, resources=resource_maps),
    st.builds(CancelClaim, rid=uints, claim_rid=uints),
    st.builds(Bye, rid=uints),
    st.builds(Status, rid=uints),
)
replies = st.one_of(
    st.builds(Job, rid=uints, job_id=uints, lease_id=uints, attempt=uints, lease_ms=uints,
              payload=st.binary(max_size=32), resources=resource_maps),
    st.builds(NoJob, rid=uints),
    st.builds(Ack, rid=uints),
    st.builds(BeatAck, rid=uints, void=uint_tuples),
    st.builds(StatusReply, rid=uints,
              info=st.dictionaries(st.text(max_size=8), info_values, max_size=4)),
    st.builds(Err, rid=st.none() | uints, code=uints, message=st.text(max_size=40)),
)


@given(requests)
def test_any_request_round_trips(msg):
    assert decode_request(encode(msg)) == msg


@given(replies)
def test_any_reply_round_trips(msg):
    assert decode_reply(encode(msg)) == msg


# --- hypothesis: decoders only ever raise ProtocolError ----------------------------------

ALL_VERBS = REQUEST_VERBS + REPLY_VERBS
any_frames = st.lists(st.binary(max_size=40), max_size=5)
framed_junk = st.builds(
    lambda sig, verb, body: [sig, verb, body],
    st.sampled_from([SIGNATURE, b"FRZ2", b"FRZ", b"FRZ1\x00"]) | st.binary(max_size=5),
    st.sampled_from(ALL_VERBS) | st.binary(max_size=12),
    st.binary(max_size=64),
)
# well-formed msgpack maps with the real field names and arbitrary values
FIELD_NAMES = sorted({f for body in VALID_BODIES.values() for f in body})
junk_values = st.recursive(
    msgpack_leaves,
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=5) | st.sampled_from(FIELD_NAMES), children, max_size=3),
    max_leaves=8,
)
field_junk = st.builds(
    lambda verb, body: frames(verb, body),
    st.sampled_from(ALL_VERBS),
    st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=4), junk_values,
                    max_size=8),
)


def only_protocol_errors(frame_list):
    for decode in (decode_request, decode_reply):
        try:
            msg = decode(frame_list)
        except ProtocolError as exc:
            assert exc.code in (E_MALFORMED, E_VERSION, E_UNKNOWN_VERB, E_INVALID)
            assert exc.rid is None or (type(exc.rid) is int and 0 <= exc.rid <= MAX_UINT)
        else:
            # whatever was accepted is a well-formed message that re-encodes to itself
            assert type(msg) in p._VERB_OF
            assert decode(encode(msg)) == msg


FUZZ = settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(any_frames)
def test_arbitrary_frames_only_raise_protocol_error(frame_list):
    only_protocol_errors(frame_list)


@FUZZ
@given(framed_junk)
def test_arbitrary_bodies_only_raise_protocol_error(frame_list):
    only_protocol_errors(frame_list)


@FUZZ
@given(field_junk)
def test_arbitrary_field_values_only_raise_protocol_error(frame_list):
    only_protocol_errors(frame_list)


@FUZZ
@given(requests | replies, st.data())
def test_mutated_valid_frames_only_raise_protocol_error(msg, data):
    sig, verb, body = encode(msg)
    how = data.draw(st.sampled_from(["truncate", "flip", "splice", "non-utf8", "drop-frame"]))
    if how == "truncate":
        body = body[: data.draw(st.integers(0, max(0, len(body) - 1)))]
    elif how == "flip":
        i = data.draw(st.integers(0, len(body) - 1))
        bit = data.draw(st.integers(0, 7))
        body = body[:i] + bytes([body[i] ^ (1 << bit)]) + body[i + 1:]
    elif how == "splice":
        i = data.draw(st.integers(0, len(body)))
        body = body[:i] + data.draw(st.binary(min_size=1, max_size=8)) + body[i:]
    elif how == "non-utf8":
        # overwrite the bytes of the first str key/value with invalid UTF-8
        i = data.draw(st.integers(0, len(body) - 1))
        body = body[:i] + b"\xff\xfe\xc0" + body[i + 3:]
    else:
        only_protocol_errors([sig, verb])
        return
    only_protocol_errors([sig, verb, body])


# --- payload helpers ---------------------------------------------------------------------


def test_call_round_trip():
    payload = pl.pack_call("mod:f", (1, "a", b"b", None, 1.5, [1, 2], {"k": "v"}), {"x": (1,)})
    assert type(payload) is bytes
    assert pl.unpack_call(payload) == (
        "mod:f", [1, "a", b"b", None, 1.5, [1, 2], {"k": "v"}], {"x": [1]}, {}
    )
    assert pl.unpack_call(pl.pack_call("m:f", [], {})) == ("m:f", [], {}, {})
    with_options = pl.pack_call("m:f", [], {}, {"timeout_ms": 500, "priority": -2})
    assert pl.unpack_call(with_options) == ("m:f", [], {}, {"timeout_ms": 500, "priority": -2})


@pytest.mark.parametrize(
    "args, kwargs",
    [((object(),), {}), ((), {"x": object()}), (({1, 2},), {}), ((2**64,), {}),
     ((-(2**63) - 1,), {}), ((lambda: 0,), {})],
)
def test_pack_call_rejects_unencodable_arguments(args, kwargs):
    with pytest.raises(TypeError, match="msgpack"):
        pl.pack_call("m:f", args, kwargs)


def test_pack_call_type_error_names_the_type():
    with pytest.raises(TypeError, match="object"):
        pl.pack_call("m:f", (object(),), {})


@pytest.mark.parametrize(
    "payload",
    [b"", b"\xc1", b"\x93\xa1a", msgpack.packb(["m:f", [], {}]) + b"\x00",
     msgpack.packb({"task": "m:f"}), msgpack.packb(["m:f", []]), msgpack.packb(["m:f", [], {}, 1]),
     msgpack.packb([1, [], {}]), msgpack.packb([b"m:f", [], {}]), msgpack.packb(["m:f", {}, {}]),
     msgpack.packb(["m:f", [], []]), msgpack.packb(["m:f", [], {b"k": 1}]),
     msgpack.packb(["m:f", [], {1: 1}]), msgpack.packb("m:f")],
)
def test_unpack_call_rejects_malformed_payloads(payload):
    with pytest.raises(ProtocolError) as info:
        pl.unpack_call(payload)
    assert info.value.code == E_INVALID


def test_call_with_int_keyed_dict_argument_round_trips():
    payload = pl.pack_call("m:f", ({1: "a", 2: "b"},), {})  # packs fine
    assert pl.unpack_call(payload) == ("m:f", [{1: "a", 2: "b"}], {}, {})


@pytest.mark.parametrize(
    "value", [None, True, 0, -1, 2**64 - 1, 1.5, "s", b"b", [1, [2]], {"a": {"b": [None]}},
              {1: "int keys are fine in results"}]
)
def test_value_round_trip(value):
    assert pl.unpack_value(pl.pack_value(value)) == value


def test_value_tuples_come_back_as_lists():
    assert pl.unpack_value(pl.pack_value((1, (2, 3)))) == [1, [2, 3]]


@pytest.mark.parametrize("value", [object(), {1, 2}, 2**64, [object()], {"a": object()}])
def test_pack_value_rejects_unencodable(value):
    with pytest.raises(TypeError):
        pl.pack_value(value)


@pytest.mark.parametrize("payload", [b"", b"\xc1", b"\x92\x01", msgpack.packb(1) + b"\x01"])
def test_unpack_value_rejects_malformed(payload):
    with pytest.raises(ProtocolError) as info:
        pl.unpack_value(payload)
    assert info.value.code == E_INVALID


def test_error_round_trip():
    payload = pl.pack_error("ValueError", "bad ✓", "Traceback (most recent call last):\n...")
    assert pl.unpack_error(payload) == (
        "ValueError", "bad ✓", "Traceback (most recent call last):\n..."
    )
    assert pl.unpack_error(pl.pack_error("E", "", "")) == ("E", "", "")


def test_unpack_error_ignores_extra_keys():
    payload = msgpack.packb({"type": "T", "message": "m", "traceback": "", "extra": 1})
    assert pl.unpack_error(payload) == ("T", "m", "")


@pytest.mark.parametrize(
    "payload",
    [b"", b"\xc1", msgpack.packb(["T", "m", ""]), msgpack.packb("T"),
     msgpack.packb({"type": "T", "message": "m"}),
     msgpack.packb({"type": "T", "message": "m", "traceback": None}),
     msgpack.packb({"type": b"T", "message": "m", "traceback": ""}),
     msgpack.packb({"type": "T", "message": 1, "traceback": ""}), msgpack.packb({})],
)
def test_unpack_error_rejects_malformed(payload):
    with pytest.raises(ProtocolError) as info:
        pl.unpack_error(payload)
    assert info.value.code == E_INVALID


@given(st.text(), st.lists(info_values, max_size=4),
       st.dictionaries(st.text(max_size=8), info_values, max_size=4))
def test_any_call_with_str_keyed_maps_round_trips(task, args, kwargs):
    assert pl.unpack_call(pl.pack_call(task, args, kwargs)) == (task, args, kwargs, {})


@given(info_values)
def test_any_value_round_trips(value):
    assert pl.unpack_value(pl.pack_value(value)) == value


@given(st.text(), st.text(), st.text())
def test_any_error_round_trips(type_name, message, traceback):
    assert pl.unpack_error(pl.pack_error(type_name, message, traceback)) == (
        type_name, message, traceback
    )


@given(st.binary(max_size=64))
def test_payload_decoders_only_raise_protocol_error(payload):
    for unpack in (pl.unpack_call, pl.unpack_value, pl.unpack_error):
        try:
            unpack(payload)
        except ProtocolError as exc:
            assert exc.code == E_INVALID


def test_messages_are_frozen():
    msg = Ack(rid=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.rid = 2  # type: ignore[misc]


def test_tuple_dict_keys_are_refused_at_encoding():
    """msgpack would encode them as arrays that no Python peer can decode."""
    with pytest.raises(TypeError, match="dict keys"):
        pl.pack_call("m:f", ({(1, 2): "a"},), {})
    with pytest.raises(TypeError, match="dict keys"):
        pl.pack_value({(1, 2): "b"})
    assert pl.unpack_value(pl.pack_value({1: "int keys", None: "are fine"})) == {1: "int keys", None: "are fine"}

"""Wire protocol of freelance_rz: frames, verbs, codec and validation. Pure: no sockets.

Theory of operation
-------------------
A worker holds one DEALER socket per producer; a producer holds one ROUTER "offer" socket.
Every message is three ZeroMQ frames (the ROUTER adds the peer's routing id in front)::

    frame 0  signature  b"FRZ2"  ("FRZ" + protocol version as an ASCII digit)
    frame 1  verb       ASCII, e.g. b"CLAIM"
    frame 2  body       a msgpack map with short string keys

Every request carries a request id ``rid`` (unsigned int chosen by the sender); every reply
echoes it, so one DEALER can have many requests outstanding (zguide ch. 4, "freelance"
pattern, with request ids instead of REQ lock-step). Job arguments and results travel as
opaque msgpack ``payload`` bytes: the producer encodes them once at ``submit`` and the worker
hands them to its job process without decoding them.

``decode_request`` (producer side) and ``decode_reply`` (worker side) validate every field
and raise :class:`ProtocolError` carrying an error code and, where it could be read, the rid
so the receiver can answer with :class:`Err`. Unknown extra fields are ignored: a newer
minor revision may add optional fields; anything else needs a new version digit. A message of
another version is refused with ERR 2 in *that* version's framing (:class:`VersionErr`: the ERR
layout never changes), so an older or newer peer reads why; of another version's replies only
ERR is read. The full specification is docs/protocol.md.

Version 2 (FRZ2) added what a worker can run to CLAIM (``tasks``, ``resources``, ``labels``;
``tasks`` required) and what a job holds to JOB and DECLINE (``resources``): DESIGN §8.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass
from typing import Any

import msgpack

from ..errors import ProtocolError
from .match import wire_labels, wire_modules, wire_resources

VERSION = 2
SIGNATURE = b"FRZ2"

#: Largest unsigned value accepted in integer fields (ids fit in a signed 64-bit int).
MAX_UINT = 2**63 - 1

# Error codes carried by ERR (documented in docs/protocol.md, section "Errors").
E_MALFORMED = 1  #: wrong frame count or undecodable body
E_VERSION = 2  #: signature/version not spoken here
E_UNKNOWN_VERB = 3  #: verb not defined, or not valid in this direction
E_INVALID = 4  #: a field missing or of the wrong type or range
E_DENIED = 5  #: an ADMIN request this producer does not allow (no token set, or a wrong one)

TRACEPARENT_MAX = 128  #: characters of a JOB's ``traceparent`` (W3C version 00 takes 55)
TOKEN_MAX = 256  #: characters of an ADMIN request's ``token``


@dataclass(frozen=True, kw_only=True, slots=True)
class Claim:
    """Worker -> producer: give me one job for one free slot; park up to ``wait_ms`` ms.
    What the worker can run: ``tasks``, its task modules (``--tasks``); ``resources``, what
    it has free now (name -> amount; None: none declared); ``labels`` (name -> value); and
    ``max_job``, the largest job payload it takes, in bytes (its ``--max-payload-bytes``).
    The producer hands it only a job it can run (:mod:`.match`)."""

    rid: int
    wait_ms: int
    tasks: tuple[str, ...]
    max_job: int | None = None
    resources: dict[str, float] | None = None
    labels: dict[str, str] | None = None


DEFAULT_MAX_PAYLOAD = 64 * 1024 * 1024  # bytes of a job's or a result's payload, by default
FRAME_OVERHEAD = 64 * 1024  # bytes a body adds around its payload, at most (for MAXMSGSIZE)


@dataclass(frozen=True, kw_only=True, slots=True)
class Job:
    """Producer -> worker: the answer to a claim. ``lease_ms``: heartbeat within this many ms.
    ``ack``: the rid of a RESULT that carried this claim; the JOB acknowledges it too, so a
    busy worker spends one message each way per job."""

    rid: int
    job_id: int
    lease_id: int
    attempt: int
    lease_ms: int
    payload: bytes
    ack: int | None = None
    timeout_ms: int | None = None  # the job's time limit on the worker, if it has one
    max_result: int | None = None  # largest result payload the producer takes, when not 64 MiB
    traceparent: str | None = None  # W3C trace context of the job's span on the producer
    resources: dict[str, float] | None = None  # what the job holds on the worker while it runs


@dataclass(frozen=True, kw_only=True, slots=True)
class NoJob:
    """Producer -> worker: a claim's ``wait_ms`` passed (or it was dropped) with no job."""

    rid: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Result:
    """Worker -> producer: outcome of a lease. ``payload`` is msgpack of the value when ``ok``,
    else of ``{"type", "message", "traceback"}``. ``claim`` optionally carries the next claim
    so one round trip both delivers a result and asks for the next job."""

    rid: int
    job_id: int
    lease_id: int
    ok: bool
    payload: bytes
    claim: Claim | None = None
    crashed: bool | None = None  # the job's process died: a lost attempt, not a task error


@dataclass(frozen=True, kw_only=True, slots=True)
class Ack:
    """Producer -> worker: request ``rid`` was taken (RESULT, DECLINE, CANCEL_CLAIM, BYE)."""

    rid: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Beat:
    """Worker -> producer: heartbeat extending the leases named (ids). ``progress``: what
    running jobs reported since the last BEAT, as ``(lease_id, done, total, message)``."""

    rid: int
    leases: tuple[int, ...]
    progress: tuple[tuple[int, float, float | None, str], ...] | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class BeatAck:
    """Producer -> worker: leases of the BEAT that are void (cancelled, expired, unknown)."""

    rid: int
    void: tuple[int, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class Decline:
    """Worker -> producer: a JOB the worker cannot take now; it returns to the queue head.
    ``max_job``: set when the job's payload is larger than this worker takes (its limit, in
    bytes). ``resources``: set when the job's resources are not free (what is free now)."""

    rid: int
    job_id: int
    lease_id: int
    max_job: int | None = None
    resources: dict[str, float] | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class CancelClaim:
    """Worker -> producer: drop the parked claim ``claim_rid`` (no answer will be sent to it)."""

    rid: int
    claim_rid: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Bye:
    """Worker -> producer: drop all my parked claims; I am leaving (my leases stay valid)."""

    rid: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Status:
    """Anyone -> producer: report counts. ``detail``: also per-task counts and histograms,
    running jobs and recent failures (see docs/protocol.md)."""

    rid: int
    detail: bool | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Admin:
    """Anyone -> producer: an operator's action on a job, ``action`` ``"cancel"`` (a live
    job) or ``"retry"`` (a recent failure or dead letter, submitted again as a new job),
    allowed only with the producer's admin ``token``. Answered by ACK or ERR."""

    rid: int
    token: str
    action: str
    job_id: int


@dataclass(frozen=True, kw_only=True, slots=True)
class StatusReply:
    """Producer -> asker: ``info`` is a map of counts and facts (see docs/protocol.md)."""

    rid: int
    info: dict[str, Any]


@dataclass(frozen=True, kw_only=True, slots=True)
class Err:
    """Reply to a malformed or unsupported message. ``rid`` is None when it could not be read."""

    rid: int | None
    code: int
    message: str


@dataclass(frozen=True, kw_only=True, slots=True)
class VersionErr:
    """Producer -> a peer of another protocol version: ERR 2 (rid nil), framed in the
    peer's own ``signature`` so that it can read it (every version keeps the ERR layout)."""

    signature: bytes
    message: str


Request = Claim | Result | Beat | Decline | CancelClaim | Bye | Status | Admin
Reply = Job | NoJob | Ack | BeatAck | StatusReply | Err  # as a worker decodes them
Answer = Reply | VersionErr  # what a producer sends
Message = Request | Reply | VersionErr

# verb <-> class; each class's fields are validated by the checks in _FIELD_CHECKS.
_REQUESTS: dict[bytes, type] = {
    b"CLAIM": Claim,
    b"RESULT": Result,
    b"BEAT": Beat,
    b"DECLINE": Decline,
    b"CANCEL_CLAIM": CancelClaim,
    b"BYE": Bye,
    b"STATUS": Status,
    b"ADMIN": Admin,
}
_REPLIES: dict[bytes, type] = {
    b"JOB": Job,
    b"NOJOB": NoJob,
    b"ACK": Ack,
    b"BEAT_ACK": BeatAck,
    b"STATUS_REPLY": StatusReply,
    b"ERR": Err,
}
_VERB_OF: dict[type, bytes] = {cls: verb for verb, cls in (_REQUESTS | _REPLIES).items()}


def _uint(value: Any) -> int:
    if not is_id(value, 0):
        raise ValueError("must be an unsigned integer below 2**63")
    return value  # type: ignore[no-any-return]


def is_id(value: Any, least: int = 1) -> bool:
    """Whether ``value`` is an int the wire takes in an id field (``job_id``, ``rid``, ...):
    ``least`` to :data:`MAX_UINT` (booleans are not). For callers that take an id from a
    user (the dashboard's actions) and must refuse it before it is encoded."""
    return type(value) is int and least <= value <= MAX_UINT


def _bool(value: Any) -> bool:
    if type(value) is not bool:
        raise ValueError("must be a boolean")
    return value


def _bytes(value: Any) -> bytes:
    if type(value) is not bytes:
        raise ValueError("must be binary (msgpack bin)")
    return value


def _str(value: Any) -> str:
    if type(value) is not str:
        raise ValueError("must be a string")
    return value


def _uint_list(value: Any) -> tuple[int, ...]:
    if type(value) is not list:
        raise ValueError("must be an array of unsigned integers")
    return tuple(_uint(v) for v in value)


def _number(value: Any) -> float:
    if type(value) not in (int, float):
        raise ValueError("must be a number")
    return value  # type: ignore[no-any-return]


def _progress(value: Any) -> tuple[tuple[int, float, float | None, str], ...]:
    if type(value) is not list:
        raise ValueError("must be an array of [lease_id, done, total, message]")
    out = []
    for entry in value:
        if type(entry) is not list or len(entry) != 4:
            raise ValueError("entries must be [lease_id, done, total, message]")
        lease_id, done, total, message = entry
        out.append((
            _uint(lease_id), _number(done), None if total is None else _number(total),
            _str(message),
        ))
    return tuple(out)


def _short_str(limit: int) -> Any:
    def check(value: Any) -> str:
        if type(value) is not str or len(value) > limit:
            raise ValueError(f"must be a string of at most {limit} characters")
        return value

    return check


def _map(value: Any) -> dict[str, Any]:
    if type(value) is not dict:
        raise ValueError("must be a map")
    return value


def _claim(value: Any) -> Claim:
    return _build(Claim, _map(value))  # type: ignore[no-any-return]


# Field name -> check (returns the validated value or raises ValueError).
_FIELD_CHECKS: dict[str, Any] = {
    "rid": _uint,
    "wait_ms": _uint,
    "job_id": _uint,
    "lease_id": _uint,
    "attempt": _uint,
    "lease_ms": _uint,
    "payload": _bytes,
    "ok": _bool,
    "claim": _claim,
    "ack": _uint,
    "timeout_ms": _uint,
    "max_result": _uint,
    "crashed": _bool,
    "progress": _progress,
    "leases": _uint_list,
    "void": _uint_list,
    "claim_rid": _uint,
    "max_job": _uint,
    "tasks": wire_modules,
    "resources": wire_resources,
    "labels": wire_labels,
    "info": _map,
    "detail": _bool,
    "traceparent": _short_str(TRACEPARENT_MAX),
    "token": _short_str(TOKEN_MAX),
    "action": _short_str(16),
    "code": _uint,
    "message": _str,
}
_FIELDS: dict[type, tuple[dataclasses.Field[Any], ...]] = {
    cls: dataclasses.fields(cls) for cls in _VERB_OF
}
_NAMES: dict[type, tuple[str, ...]] = {cls: tuple(f.name for f in fields) for cls, fields in _FIELDS.items()}
_OPTIONAL: dict[type, frozenset[str]] = {  # fields that may be absent (their default is None)
    cls: frozenset(f.name for f in fields if f.default is None) for cls, fields in _FIELDS.items()
}
# per class, each field as the decoder reads it: (name, required, nil allowed, check)
_SPECS: dict[type, tuple[tuple[str, bool, bool, Any], ...]] = {
    cls: tuple(
        (f.name, f.default is dataclasses.MISSING,
         f.default is None or (cls is Err and f.name == "rid"), _FIELD_CHECKS[f.name])
        for f in fields
    )
    for cls, fields in _FIELDS.items()
}


_ABSENT = object()


def _build(cls: type, body: dict[str, Any]) -> Any:
    kwargs: dict[str, Any] = {}
    for name, required, nil_ok, check in _SPECS[cls]:
        value = body.get(name, _ABSENT)
        if value is _ABSENT:
            if not required:
                continue
            raise ProtocolError(E_INVALID, f"{_VERB_OF[cls].decode()}: missing field {name!r}")
        if value is None and nil_ok:
            kwargs[name] = None  # an optional field sent as nil
            continue
        try:
            kwargs[name] = check(value)
        except ValueError as exc:
            raise ProtocolError(
                E_INVALID, f"{_VERB_OF[cls].decode()}: field {name!r} {exc}"
            ) from None
    return cls(**kwargs)


def _body(msg: Any) -> dict[str, Any]:
    """A message's fields as a body: OPTIONAL fields that are unset (None) are left out;
    tuples go as msgpack arrays; a carried claim as a map."""
    cls = type(msg)
    optional = _OPTIONAL[cls]
    body = {}
    for name in _NAMES[cls]:
        value = getattr(msg, name)
        if value is None:
            if name in optional:
                continue
        elif type(value) is Claim:
            value = _body(value)
        body[name] = value
    return body


def encode(msg: Message) -> list[bytes]:
    """Encode a message into its three frames ``[signature, verb, body]``.

    Raises:
        KeyError: ``msg`` is not one of this module's message classes.
    """
    if type(msg) is VersionErr:
        body = {"rid": None, "code": E_VERSION, "message": msg.message}
        return [msg.signature, b"ERR", msgpack.packb(body, use_bin_type=True)]
    return [SIGNATURE, _VERB_OF[type(msg)], msgpack.packb(_body(msg), use_bin_type=True)]


# --- limits on what a body may cost before and while it is decoded ------------------------
#
# A msgpack byte can become a Python object of 50-100 bytes (an empty map is one byte), so a
# body is checked twice: its size against its verb's limit before decoding, and the number of
# maps and arrays built while decoding against a budget. Bodies hold scalars, a few small
# maps and id arrays; job and result payloads are one opaque bin field, decoded only by
# the ends that use them (see the payload codecs below).

CONTROL_MAX_BYTES = 64 * 1024  #: bytes of a body without a payload (CLAIM, ACK, ERR, ...)
LIST_MAX_BYTES = 1024 * 1024  #: bytes of a BEAT or BEAT_ACK (lease id lists, progress)
STATUS_MAX_BYTES = 4 * 1024 * 1024  #: bytes of a STATUS_REPLY (producers send < 1 MiB)
BODY_MAX_CONTAINERS = 4096  #: maps and arrays one body may hold (a BEAT: one per lease)
STATUS_MAX_CONTAINERS = 65536  #: ... a STATUS_REPLY (a map per worker, per running job)
BODY_MAX_ARRAY = 65536  #: elements of one array in a body (lease ids)
BODY_MAX_MAP = 1024  #: entries of one map in a body
PAYLOAD_VERBS = frozenset({b"RESULT", b"JOB"})  # bodies carrying a payload of up to max_payload
_LIST_VERBS = frozenset({b"BEAT", b"BEAT_ACK"})


class _Budget:
    """Counts the maps and arrays msgpack builds (its object and list hooks); raises once
    more than ``limit`` were built, so a body of empty maps cannot grow memory 100-fold."""

    __slots__ = ("left",)

    def __init__(self, limit: int) -> None:
        self.left = limit

    def __call__(self, value: Any) -> Any:
        self.left -= 1
        if self.left < 0:
            raise ValueError("too many maps and arrays")
        return value


def _body_limit(verb: bytes, max_payload: int) -> int:
    if verb in PAYLOAD_VERBS:
        return max_payload + FRAME_OVERHEAD
    if verb in _LIST_VERBS:
        return LIST_MAX_BYTES
    if verb == b"STATUS_REPLY":
        return STATUS_MAX_BYTES
    return CONTROL_MAX_BYTES


def _decode(frames: list[bytes], table: dict[bytes, type], max_payload: int) -> Any:
    if len(frames) != 3:
        raise ProtocolError(E_MALFORMED, f"expected 3 frames, got {len(frames)}")
    signature, verb, raw = frames
    if signature != SIGNATURE:
        if len(signature) != 4 or signature[:3] != SIGNATURE[:3]:
            raise ProtocolError(E_MALFORMED, "bad signature frame")
        if table is not _REPLIES or verb != b"ERR":  # another version: only its ERR is read
            raise version_error(signature)
    limit = _body_limit(verb, max_payload)
    if len(raw) > limit:
        raise ProtocolError(
            E_MALFORMED, f"{verb[:32]!r} body of {len(raw)} bytes is over its limit of {limit}"
        )
    containers = STATUS_MAX_CONTAINERS if verb == b"STATUS_REPLY" else BODY_MAX_CONTAINERS
    # every map and array takes at least a byte: a body no longer than the budget needs no count
    hooks = {} if len(raw) <= containers else dict.fromkeys(("object_hook", "list_hook"), _Budget(containers))
    try:
        body = msgpack.unpackb(
            raw, raw=False, strict_map_key=True, max_ext_len=0, max_array_len=BODY_MAX_ARRAY,
            max_map_len=BODY_MAX_MAP, **hooks,
        )
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise ProtocolError(E_MALFORMED, f"body is not msgpack: {exc.__class__.__name__}") from None
    if type(body) is not dict:
        raise ProtocolError(E_MALFORMED, "body is not a msgpack map")
    rid = body.get("rid")
    rid = rid if type(rid) is int and 0 <= rid <= MAX_UINT else None
    cls = table.get(verb)
    if cls is None:
        raise ProtocolError(E_UNKNOWN_VERB, f"unknown or misdirected verb {verb[:32]!r}", rid)
    try:
        return _build(cls, body)
    except ProtocolError as exc:
        exc.rid = rid
        raise


def version_error(signature: bytes) -> ProtocolError:
    """The ERR 2 for a message framed in ``signature`` (``FRZ`` + another version), naming
    both versions (answer it with :class:`VersionErr`, in the peer's framing)."""
    return ProtocolError(
        E_VERSION,
        f"protocol version {clean_signature(signature[3:])} (signature "
        f"{clean_signature(signature)}) is not spoken here; this side speaks version {VERSION} "
        f"({SIGNATURE.decode()}): run the same freelance_rz protocol version on producers and "
        "workers",
    )


def clean_signature(signature: bytes) -> str:
    """A signature frame as printable ASCII (``FRZ1``; other bytes as ``\\xNN``)."""
    return "".join(chr(b) if 32 < b < 127 else f"\\x{b:02x}" for b in signature[:8])


def decode_request(frames: list[bytes], max_payload: int = DEFAULT_MAX_PAYLOAD) -> Request:
    """Decode and validate a worker -> producer message (frames without the routing id).

    Args:
        frames: the message's frames.
        max_payload: the largest payload, in bytes, a RESULT may carry (the producer's
            ``max_payload_bytes``); every other verb has a fixed size limit.

    Raises:
        ProtocolError: bad frame count, signature, version, size, msgpack, verb or field; its
            ``code`` is one of the ``E_*`` constants and ``rid`` the request id if readable.
    """
    return _decode(frames, _REQUESTS, max_payload)  # type: ignore[no-any-return]


def decode_reply(frames: list[bytes], max_payload: int = DEFAULT_MAX_PAYLOAD) -> Reply:
    """Decode and validate a producer -> worker message (``max_payload``: the largest JOB
    payload taken, in bytes). Raises :class:`ProtocolError`."""
    return _decode(frames, _REPLIES, max_payload)  # type: ignore[no-any-return]


_HOST_RE = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
)
_ENDPOINT_RE = re.compile(r"tcp://(?P<host>\[[0-9A-Fa-f:.]+\]|[^:/\[\]]+):(?P<port>[0-9]{1,5})")


def parse_endpoint(endpoint: object) -> tuple[str, int]:
    """Check a producer endpoint ``tcp://HOST:PORT`` and split it into ``(host, port)``.

    HOST is an IPv4 address (not 0.0.0.0, multicast or broadcast), a bracketed IPv6 address
    or a DNS name (RFC 1123 labels, at most 253 characters); PORT is 1 to 65535. Used for
    endpoints from mDNS (a peer's word) and from the command line alike.

    Raises:
        ValueError: anything else, with the reason.
    """
    if not isinstance(endpoint, str):
        raise ValueError(f"endpoint must be a string, got {type(endpoint).__name__}")
    match = _ENDPOINT_RE.fullmatch(endpoint)
    if match is None:
        raise ValueError("expected tcp://HOST:PORT")
    host, port = match["host"], int(match["port"])
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is not in 1..65535")
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"{host} is not an IPv6 address") from None
        return host, port
    if re.fullmatch(r"[0-9.]+", host):
        try:
            address = ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv4 address") from None
        if address.is_unspecified or address.is_multicast or address == ipaddress.IPv4Address(
            "255.255.255.255"
        ):
            raise ValueError(f"{host} cannot be connected to")
        return host, port
    if len(host) > 253 or not _HOST_RE.fullmatch(host):
        raise ValueError(f"{host[:64]!r} is not a host name")
    return host, port

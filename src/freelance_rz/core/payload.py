"""The payload codecs: what travels inside the wire protocol's opaque ``payload`` fields (a
job's call, a result's value or error), and the worker's pipe to its job processes. Pure.

Payloads are msgpack of plain values only: no extension types (``ExtType``, ``Timestamp``),
no tuple dict keys (msgpack writes them as arrays, which no Python peer can read back), and
nothing is ever unpickled. The producer encodes a call once at ``submit``; the worker passes
it to a job process without decoding it; the job process decodes it and encodes the result.

The job-process pipe (a stream socket between a worker and each of its job processes) carries
frames: an 8-byte little-endian length, then the body, whose first byte says what it is.
``RUN`` is a worker-local run id (8 bytes, little-endian), never the producer's job id: a
worker runs jobs of several producers, whose job ids may collide::

    worker -> job process   b"S" + msgpack {modules, init, pool, slots, path}   set-up (first frame)
                            b"J" + RUN + call payload        run this job
                            b"T" + RUN + JOB + n + traceparent + call payload   run it traced
                            b"C" + RUN                       cancel it (thread and asyncio pools)
    job process -> worker   b"R"                             ready: set up, waits for jobs
                            b"E" + UTF-8 text                set-up failed (it exits)
                            b"P" + RUN + msgpack [done, total, message]   report_progress()
                            b"V" + RUN + value payload       the job returned
                            b"X" + RUN + error payload       the job raised, or was cancelled

``b"T"`` runs a job whose JOB carried a W3C ``traceparent`` (the ``tracing`` extra, see
:mod:`freelance_rz.tracing`): ``JOB`` is the producer's job id (8 bytes, little-endian, for the
span's attributes), ``n`` one byte, the length of the ASCII ``traceparent`` that follows.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import msgpack

from ..errors import ProtocolError
from .match import LABEL_VALUE_MAX_CHARS, MAX_LABELS, MAX_RESOURCES, NAME_RE, valid_amount
from .retry import MAX_ERROR_TYPES, MAX_TYPE_CHARS, RemoteError
from .wire import E_INVALID


_SCALARS = frozenset({int, float, str, bytes, bool, type(None)})


#: msgpack extension type of a reference "the result of job N" (N: 8 bytes, big-endian,
#: signed) in a call the producer holds; it replaces each one by the job's result before the
#: call leaves it (:func:`substitute`), so a worker never sees one (it refuses extension types)
REF_EXT = 1


def ref(job_id: int) -> msgpack.ExtType:
    """The reference to the result of job ``job_id``, for :func:`pack_call`'s ``default``."""
    return msgpack.ExtType(REF_EXT, job_id.to_bytes(8, "big", signed=True))


def _ref_hook(code: int, data: bytes) -> Any:
    if code != REF_EXT or len(data) != 8:
        raise ValueError(f"unknown extension type {code}")
    return _Ref(int.from_bytes(data, "big", signed=True))


@dataclass(frozen=True, slots=True)
class _Ref:
    job_id: int


def _pack_checked(value: Any, what: str, default: Any = None) -> bytes:
    """msgpack ``value`` and check it decodes again: msgpack encodes tuple dict keys as
    arrays, which no Python peer can decode (unhashable), so they are refused here.
    ``default``: msgpack's hook for other types (references, see :data:`REF_EXT`)."""
    try:
        packed: bytes = msgpack.packb(value, use_bin_type=True, default=default)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"{what} must be msgpack-encodable: {exc}") from None
    if type(value) in _SCALARS:  # nothing in it that cannot decode again
        return packed
    try:
        try:
            _unpack_payload(packed)  # no extension type: the common case, checked as ever
        except Exception:
            if not getattr(default, "count", 0):
                raise
            _only_references(packed, default.count)
    except Exception:
        raise TypeError(
            f"{what} must be msgpack-encodable: dict keys must be str, bytes, int, float, "
            "bool or None (not tuples, not Futures), and extension types (msgpack.ExtType, Timestamp) "
            "are not accepted"
        ) from None
    return packed


class References:
    """msgpack's ``default`` hook for :func:`pack_call` that turns the objects ``to_id``
    names (``to_id(obj)``: a job id, or None for anything else, refused as msgpack refuses
    it) into references (:func:`ref`); ``count``: how many it made."""

    def __init__(self, to_id: Any) -> None:
        self.to_id = to_id
        self.count = 0

    def __call__(self, obj: Any) -> Any:
        job_id = self.to_id(obj)
        if job_id is None:
            raise TypeError(f"can not serialize {type(obj).__name__!r} object")
        self.count += 1
        return ref(job_id)


def _only_references(packed: bytes, made: int) -> None:
    """Raise ValueError unless the only extension values in ``packed`` are the ``made``
    references the producer made: an ExtType or a Timestamp among the arguments (even one
    that looks like a reference) is refused, as in any payload."""
    seen = []

    def hook(code: int, data: bytes) -> Any:
        _ref_hook(code, data)
        seen.append(code)
        return []  # unhashable: a Future as a dict key is refused (its result may be a list)

    plain = msgpack.unpackb(packed, raw=False, strict_map_key=False, ext_hook=hook)
    if len(seen) != made:
        raise ValueError("an extension value among the arguments")
    _unpack_payload(msgpack.packb(plain, use_bin_type=True))  # a Timestamp left: refused


def _unpack_payload(payload: bytes) -> Any:
    """Decode a job or result payload: plain msgpack values only (no extension types, so
    no ``ExtType`` or ``Timestamp``). Raises msgpack's errors or ValueError."""
    return msgpack.unpackb(payload, raw=False, strict_map_key=False, max_ext_len=0)


def pack_call(
    task: str,
    args: tuple[Any, ...] | list[Any],
    kwargs: dict[str, Any],
    options: dict[str, Any] | None = None,
    default: Any = None,
) -> bytes:
    """Encode a call ``[task, args, kwargs]``, or ``[task, args, kwargs, options]`` when the
    job has options (``timeout_ms``, ``priority``: ints; ``resources``: a map of names to
    numbers; ``labels``: a map of names to strings), kept with the job so that a durable
    producer restores them. ``default``: msgpack's hook for values it cannot encode (the
    producer's: a Future of one of its jobs becomes a reference, :func:`ref`).

    Raises:
        TypeError: an argument msgpack cannot encode (the message names the type), or a
            dict key no peer could decode (a tuple).
    """
    call = [task, list(args), kwargs] if not options else [task, list(args), kwargs, options]
    return _pack_checked(call, "job arguments", default)


def substitute(payload: bytes, values: dict[int, bytes]) -> bytes:
    """The call ``payload`` with each reference (:data:`REF_EXT`) replaced by the value of
    that job's result (``values``: job id -> value payload).

    A payload that is not a call this codec reads is returned as it is (a worker refuses it,
    as it refuses any such job).

    Raises:
        ProtocolError: a value payload that cannot be decoded (its message names the job).
    """
    used = []

    def hook(code: int, data: bytes) -> Any:
        job_id = _ref_hook(code, data).job_id
        used.append(job_id)
        try:
            return unpack_value(values[job_id])
        except ProtocolError as exc:
            raise ProtocolError(exc.code, f"the result of job {job_id}: {exc.message}") from None

    try:
        call = msgpack.unpackb(payload, raw=False, strict_map_key=False, ext_hook=hook)
    except ProtocolError:
        raise
    except Exception:
        return payload
    if not used:  # no reference (ordering only): the call stays byte for byte
        return payload
    packed: bytes = msgpack.packb(call, use_bin_type=True)
    return packed


def call_needs(payload: bytes) -> tuple[str, dict[str, Any]]:
    """The task and options of a call the producer holds, references allowed (for a job
    restored before its dependencies finished); ``("?", {})`` when it cannot be read."""
    try:
        call = msgpack.unpackb(payload, raw=False, strict_map_key=False, ext_hook=_ref_hook)
        return call[0], call[3] if len(call) == 4 and type(call[3]) is dict else {}
    except Exception:
        return "?", {}


def unpack_call(payload: bytes) -> tuple[str, list[Any], dict[str, Any], dict[str, Any]]:
    """Decode a call payload into ``(task, args, kwargs, options)``.

    Raises:
        ProtocolError: (E_INVALID) when malformed.
    """
    try:
        call = _unpack_payload(payload)
    except Exception as exc:
        raise ProtocolError(
            E_INVALID, f"job payload is not msgpack: {exc.__class__.__name__}"
        ) from None
    if (
        type(call) is not list
        or len(call) not in (3, 4)
        or type(call[0]) is not str
        or type(call[1]) is not list
        or type(call[2]) is not dict
        or not all(type(k) is str for k in call[2])
        or (len(call) == 4 and not _valid_options(call[3]))
    ):
        raise ProtocolError(
            E_INVALID,
            "job payload must be [task: str, args: array, kwargs: map (, options: map)]",
        )
    return call[0], call[1], call[2], call[3] if len(call) == 4 else {}


_TASK_NAMES: dict[bytes, str] = {}  # a task name's bytes -> the one str for it (bounded below)


def peek_task(payload: bytes) -> str:
    """The task name of a call payload, read from its first bytes without decoding the rest
    (metrics and STATUS label jobs with it on the hot path): ``"?"`` when the payload does not
    start as a call does (or its name is over 255 bytes). Each name is one shared str."""
    if len(payload) < 2 or payload[0] not in (0x93, 0x94):  # fixarray of 3 or 4
        return "?"
    head = payload[1]
    if 0xA0 <= head <= 0xBF:  # fixstr
        raw = payload[2:2 + head - 0xA0]
    elif head == 0xD9 and len(payload) > 2:  # str 8
        raw = payload[3:3 + payload[2]]
    else:
        return "?"
    name = _TASK_NAMES.get(raw)
    if name is None:
        name = raw.decode("utf-8", errors="replace")
        if len(_TASK_NAMES) >= 4096:
            _TASK_NAMES.clear()
        _TASK_NAMES[raw] = name
    return name


def job_options(payload: bytes) -> dict[str, Any]:
    """The options a job's call carries (``timeout_ms``, ``priority``, ``resources``,
    ``labels``), or ``{}`` for a call without options or one that cannot be read."""
    try:
        return unpack_call(payload)[3]
    except ProtocolError:
        return {}


def _valid_options(options: Any) -> bool:
    """Options: a map with str keys; the known ones of their types (``timeout_ms`` and
    ``priority`` ints, ``resources`` a map of names to amounts, ``labels`` a map of names to
    strings); others are ignored (a later version's)."""
    if type(options) is not dict or not all(type(k) is str for k in options):
        return False
    if any(type(options.get(key, 0)) is not int for key in ("timeout_ms", "priority")):
        return False
    resources, labels = options.get("resources", {}), options.get("labels", {})
    return (
        _named(resources, MAX_RESOURCES) and all(valid_amount(v) for v in resources.values())
        and _named(labels, MAX_LABELS)
        and all(type(v) is str and len(v) <= LABEL_VALUE_MAX_CHARS for v in labels.values())
    )


def _named(value: Any, most: int) -> bool:
    return type(value) is dict and len(value) <= most and all(
        type(k) is str and NAME_RE.fullmatch(k) for k in value
    )


def pack_value(value: Any) -> bytes:
    """Encode a task's return value. Raises TypeError when msgpack cannot encode it (or
    the decoding side could not: tuple dict keys)."""
    return _pack_checked(value, "task result")


def unpack_value(payload: bytes) -> Any:
    """Decode a result value. Raises :class:`ProtocolError` (E_INVALID) when malformed or
    holding an extension type."""
    try:
        return _unpack_payload(payload)
    except Exception as exc:
        raise ProtocolError(
            E_INVALID, f"result payload is not msgpack: {exc.__class__.__name__}"
        ) from None


def pack_error(
    type_name: str, message: str, traceback: str, types: list[str] | None = None,
    retry_in_ms: int | None = None, dependency: int | None = None,
) -> bytes:
    """Encode a remote error ``{"type", "message", "traceback"}``, with ``types`` (the
    qualified names of its class and bases), ``retry_in_ms`` (a raised Retry's delay) and
    ``dependency`` (the job whose failure failed this one, the producer's own) when given."""
    error: dict[str, Any] = {"type": type_name, "message": message, "traceback": traceback}
    if dependency is not None:
        error["dependency"] = dependency
    if types:
        error["types"] = types
    if retry_in_ms is not None:
        error["retry_in_ms"] = retry_in_ms
    packed: bytes = msgpack.packb(error, use_bin_type=True)
    return packed


def error_types(exc: BaseException) -> list[str]:
    """The qualified names (``module:qualname``) of ``exc``'s class and bases, most derived
    first, at most MAX_ERROR_TYPES of them (``object`` left out, names over MAX_TYPE_CHARS
    skipped): what a retry policy's ``retry_on`` is matched against."""
    return [
        name for name in (f"{cls.__module__}:{cls.__qualname__}" for cls in type(exc).__mro__[:-1])
        if len(name) <= MAX_TYPE_CHARS
    ][:MAX_ERROR_TYPES]


def retry_in_ms(exc: BaseException) -> int | None:
    """A raised :class:`~freelance_rz.Retry`'s ``in_s`` in whole milliseconds, or None (not
    a Retry, no delay asked, or one out of range)."""
    in_s = getattr(exc, "retry_in_s", None)
    return round(in_s * 1000) if isinstance(in_s, (int, float)) and 0 <= in_s < 1e12 else None


def pack_exception(exc: BaseException, traceback: str) -> bytes:
    """Encode an exception a task raised: its class name, message and ``traceback``, its
    :func:`error_types` and :func:`retry_in_ms`. (A worker's job process packs with the same
    parts, each guarded against a hostile exception: ``worker/runners.py``.)"""
    return pack_error(type(exc).__name__, str(exc), traceback, error_types(exc), retry_in_ms(exc))


def error_dependency(payload: bytes) -> int | None:
    """The ``dependency`` of an error payload (a DependencyFailed), or None."""
    try:
        found = _unpack_payload(payload).get("dependency")
    except Exception:
        return None
    return found if type(found) is int else None


def remote_error(payload: bytes) -> RemoteError | None:
    """What the retry rule reads of an error payload, or None when it cannot be read."""
    try:
        err = _unpack_payload(payload)
    except Exception:
        return None
    if type(err) is not dict or type(err.get("type")) is not str:
        return None
    types, in_ms = err.get("types"), err.get("retry_in_ms")
    names = tuple(t for t in types[:MAX_ERROR_TYPES] if type(t) is str) if type(types) is list else ()
    return RemoteError(err["type"], names, in_ms / 1000 if type(in_ms) is int and in_ms >= 0 else None)


def unpack_error(payload: bytes) -> tuple[str, str, str]:
    """Decode a remote error into ``(type, message, traceback)``.

    Raises:
        ProtocolError: (E_INVALID) the payload is not such a map of strings.
    """
    err = unpack_value(payload)
    if type(err) is not dict or not all(
        type(err.get(key)) is str for key in ("type", "message", "traceback")
    ):
        raise ProtocolError(E_INVALID, "error payload must be a map of type, message, traceback")
    return err["type"], err["message"], err["traceback"]


# --- the job-process pipe ------------------------------------------------------------------

_LENGTH = struct.Struct("<Q")  # a frame's length prefix
_RUN = struct.Struct("<Q")  # a run id
_TRACED = struct.Struct("<QQB")  # a traced run: run id, the producer's job id, traceparent length
FRAME_HEADER = _LENGTH.size
POOLS = ("process", "thread", "asyncio")  # the execution pools; the first is the default


@dataclass(frozen=True, slots=True)
class Setup:
    """What a job process needs before its first job: the task modules (the allowlist), the
    ``--init`` function (``"module:function"`` or None), the pool (one of :data:`POOLS`), the
    jobs it runs at once (``slots``) and the worker's ``sys.path``."""

    modules: list[str]
    init: str | None = None
    pool: str = POOLS[0]
    slots: int = 1
    path: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Run:
    """Run the call ``payload`` (a call payload, as the producer encoded it) as run ``run_id``;
    with a ``traceparent`` (the JOB carried one), in a span whose parent it is, ``job_id``
    (the producer's) among its attributes."""

    run_id: int
    payload: bytes
    traceparent: str | None = None
    job_id: int = 0


@dataclass(frozen=True, slots=True)
class Cancel:
    """Stop run ``run_id`` (its time limit passed, or its producer cancelled it)."""

    run_id: int


@dataclass(frozen=True, slots=True)
class Ready:
    """A job process is set up (task modules imported, ``--init`` run) and waits for jobs."""


@dataclass(frozen=True, slots=True)
class StartFailed:
    """A job process could not be set up; ``message`` says why (it exits)."""

    message: str


@dataclass(frozen=True, slots=True)
class Progress:
    """Run ``run_id`` called :func:`~freelance_rz.report_progress`."""

    run_id: int
    done: float
    total: float | None
    message: str


@dataclass(frozen=True, slots=True)
class Finished:
    """Run ``run_id`` ended: ``ok`` with a value payload, else with an error payload."""

    run_id: int
    ok: bool
    payload: bytes


ToJobProcess = Setup | Run | Cancel
FromJobProcess = Ready | StartFailed | Progress | Finished


def frame(body: bytes) -> bytes:
    """``body`` with its length prefix, as written to the pipe."""
    return _LENGTH.pack(len(body)) + body


def encode_run(run_id: int, payload: bytes, traceparent: str | None = None, job_id: int = 0) -> bytes:
    """The frame of :class:`Run` (the hot path: no dataclass made). With a ``traceparent``
    (the JOB carried one; at most 255 ASCII characters), the job runs in a span whose parent
    it is, with the producer's ``job_id`` among the span's attributes."""
    if traceparent is None:
        return _LENGTH.pack(len(payload) + 9) + b"J" + _RUN.pack(run_id) + payload
    context = traceparent.encode("ascii", errors="replace")[:255]
    return frame(b"T" + _TRACED.pack(run_id, job_id, len(context)) + context + payload)


def encode_finished(run_id: int, ok: bool, payload: bytes) -> bytes:
    """The frame of :class:`Finished` (the hot path: no dataclass made)."""
    return _LENGTH.pack(len(payload) + 9) + (b"V" if ok else b"X") + _RUN.pack(run_id) + payload


def decode_run(body: bytes) -> tuple[int, bytes]:
    """The run id and call payload of a ``b"J"`` :class:`Run` frame's body (the hot path: no
    dataclass made)."""
    return _RUN.unpack_from(body, 1)[0], body[9:]


def _decode_traced(body: bytes) -> Run:
    run_id, job_id, size = _TRACED.unpack_from(body, 1)
    start = 1 + _TRACED.size
    return Run(run_id, body[start + size:], body[start:start + size].decode("ascii"), job_id)


def encode_to_job_process(msg: ToJobProcess) -> bytes:
    """Worker -> job process: the frame of ``msg``."""
    if isinstance(msg, Run):
        return encode_run(msg.run_id, msg.payload, msg.traceparent, msg.job_id)
    if isinstance(msg, Cancel):
        return frame(b"C" + _RUN.pack(msg.run_id))
    packed: bytes = msgpack.packb(
        {"modules": msg.modules, "init": msg.init, "pool": msg.pool, "slots": msg.slots,
         "path": msg.path}, use_bin_type=True,
    )
    return frame(b"S" + packed)


def decode_to_job_process(body: bytes) -> ToJobProcess:
    """The job process's side of :func:`encode_to_job_process` (a frame's body). Its own
    worker writes these, so a malformed one is a bug: ValueError."""
    kind = body[:1]
    if kind == b"J":
        return Run(_RUN.unpack_from(body, 1)[0], body[9:])
    if kind == b"T":
        return _decode_traced(body)
    if kind == b"C":
        return Cancel(_RUN.unpack_from(body, 1)[0])
    if kind == b"S":
        setup = msgpack.unpackb(body[1:], raw=False)
        return Setup(setup["modules"], setup["init"], setup["pool"], setup["slots"], setup["path"])
    raise ValueError(f"unknown message to a job process {kind!r}")


def encode_from_job_process(msg: FromJobProcess) -> bytes:
    """Job process -> worker: the frame of ``msg``."""
    if isinstance(msg, Finished):
        return encode_finished(msg.run_id, msg.ok, msg.payload)
    if isinstance(msg, Progress):
        packed: bytes = msgpack.packb([msg.done, msg.total, msg.message])
        return frame(b"P" + _RUN.pack(msg.run_id) + packed)
    if isinstance(msg, StartFailed):
        return frame(b"E" + msg.message.encode(errors="replace"))
    return frame(b"R")


def decode_from_job_process(body: bytes) -> FromJobProcess:
    """The worker's side of :func:`encode_from_job_process` (a frame's body). Its own job
    processes write these, so a malformed one is a bug: ValueError."""
    kind = body[:1]
    if kind == b"V" or kind == b"X":
        return Finished(_RUN.unpack_from(body, 1)[0], kind == b"V", body[9:])
    if kind == b"P":
        done, total, message = msgpack.unpackb(body[9:])
        return Progress(_RUN.unpack_from(body, 1)[0], done, total, message)
    if kind == b"E":
        return StartFailed(body[1:].decode(errors="replace"))
    if kind == b"R":
        return Ready()
    raise ValueError(f"unknown job-process message {kind!r}")


class FrameReader:
    """Splits the bytes read from a pipe into frame bodies, however the reads cut them.

    ``feed(data)`` returns the bodies completed by ``data`` (usually exactly one, returned
    without a copy when ``data`` is one whole frame); :attr:`wanted` is how many more bytes
    the frame in progress needs (0 when none is), so a reader can ask for a large body in
    one read.
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    @property
    def wanted(self) -> int:
        buf = self._buf
        if len(buf) < FRAME_HEADER:
            return 0
        return FRAME_HEADER + int(_LENGTH.unpack_from(buf)[0]) - len(buf)

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        if not buf and len(data) >= FRAME_HEADER:  # the common case: one whole frame
            if len(data) == FRAME_HEADER + _LENGTH.unpack_from(data)[0]:
                return [data[FRAME_HEADER:]]
        buf += data
        bodies = []
        while len(buf) >= FRAME_HEADER:
            end = FRAME_HEADER + _LENGTH.unpack_from(buf)[0]
            if len(buf) < end:
                break
            bodies.append(bytes(buf[FRAME_HEADER:end]))
            del buf[:end]
        return bodies

"""Ask producers how they are doing (the STATUS verb), for ``freelance-status`` and scripts.

A STATUS_REPLY comes from the network: :func:`read_info` checks the type of every field
``freelance-status`` shows before anything is rendered, so a malformed reply is reported as
such and never breaks the others. Its strings are still the peer's own (they may hold escape
sequences or megabytes): pass them through :func:`freelance_rz.core.text.clean` before showing.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import zmq

from .core import wire as p
from .core.text import clean
from ._sockets import send_frames
from .discovery import Announcement, Browser, choose_endpoint
from .errors import ProtocolError
from .security import (
    HANDSHAKE_EVENTS,
    KeyPair,
    describe_handshake_failure,
    greeting_mechanism,
    last_described,
    make_curve_client,
    probe_server_key,
)
from .sources import Source, read_once

#: bytes: the largest STATUS_REPLY taken (the codec's limit for that verb); libzmq drops the
#: connection of a larger one. A producer keeps its replies well under 1 MiB.
STATUS_MAX_BYTES = p.STATUS_MAX_BYTES
#: what the socket monitor reports, to explain a producer that did not answer
_WATCHED_EVENTS = (HANDSHAKE_EVENTS | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_CONNECTED
                   | zmq.EVENT_DISCONNECTED)

#: the counts of a STATUS_REPLY ``info`` map: non-negative ints when present.
COUNT_FIELDS = ("pending", "deferred", "blocked", "retried", "leased", "done", "failed", "dead", "cancelled", "workers",
                "finished_last_min", "parked_claims", "bad_messages")


@dataclass(frozen=True, slots=True, kw_only=True)
class RunningJob:
    """One entry of a STATUS_REPLY's ``progress`` list, type-checked. Strings are raw.

    Attributes:
        job_id: the producer's id of the job.
        worker: the routing id (name) of the worker running it.
        done, total: progress so far, and its end (None when unknown), in the task's units.
        message: the task's progress message ("" when none).
    """

    job_id: int
    worker: str
    done: float
    total: float | None
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class WaitingJobs:
    """One entry of a STATUS_REPLY's ``waiting`` list: pending jobs of one requirement
    signature that no connected worker can run, type-checked. Strings are raw.

    Attributes:
        task: their task, ``"module:function"``.
        jobs: how many.
        message: the producer's sentence, e.g. ``12 jobs of myapp.tasks:render need gpu=1:
            no connected worker offers gpu=1``.
    """

    task: str
    jobs: int
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ProducerInfo:
    """The fields of a STATUS_REPLY ``info`` map that are shown, type-checked (see
    :func:`read_info`). Strings are the peer's raw text; fields the reply lacks are None.

    Attributes:
        producer_id: the producer's instance id.
        group: its group.
        counts: :data:`COUNT_FIELDS` name -> int >= 0 or None.
        uptime_s: seconds since it started.
        progress: the running jobs that reported progress.
        waiting: the pending jobs no connected worker can run, by requirements.
    """

    producer_id: str
    group: str | None
    counts: Mapping[str, int | None]
    uptime_s: float | None
    progress: tuple[RunningJob, ...]
    waiting: tuple[WaitingJobs, ...] = ()


def _text(info: Mapping[str, Any], key: str) -> str:
    value = info.get(key)
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string, got {_kind(value)}")
    return value


def _optional_text(info: Mapping[str, Any], key: str) -> str | None:
    return None if info.get(key) is None else _text(info, key)


def _count(info: Mapping[str, Any], key: str) -> int | None:
    value = info.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key} must be an int >= 0, got {_kind(value)}")
    return value


def _finite(info: Mapping[str, Any], key: str) -> float:
    value = info.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number, got {_kind(value)}")
    return float(value)


def _optional_finite(info: Mapping[str, Any], key: str) -> float | None:
    return None if info.get(key) is None else _finite(info, key)


def _kind(value: object) -> str:
    """A value's type for an error message, with a short, safe sample of scalars."""
    if value is None:
        return "nothing"
    if isinstance(value, (bool, int, float)):
        return f"{type(value).__name__} {value!r}"[:60]
    return type(value).__name__


def read_info(info: Mapping[str, Any]) -> ProducerInfo:
    """Check and pick the shown fields of a STATUS_REPLY ``info`` map (one place for the
    rules, used by the producers' table and the running jobs' view).

    Args:
        info: the map as received (any msgpack values); unknown fields are ignored.

    Returns:
        The fields, typed; absent optional fields are None (``progress``: empty).

    Raises:
        ValueError: a field has the wrong type or is missing: ``producer_id`` (required
            string), ``group`` (string), the :data:`COUNT_FIELDS` (ints >= 0), ``uptime_s``
            (finite number), ``progress`` (a list of maps, each with ``job_id`` int >= 0,
            ``worker`` string, ``done`` finite number, ``total`` finite number or nil,
            ``message`` string or nil), ``waiting`` (a list of maps, each with ``task`` and
            ``message`` strings and ``jobs`` int >= 0). The message names the field.
    """
    if not isinstance(info, Mapping):
        raise ValueError(f"info must be a map, got {_kind(info)}")
    producer_id = _text(info, "producer_id")
    raw_progress = info.get("progress", [])
    if not isinstance(raw_progress, (list, tuple)):
        raise ValueError(f"progress must be a list, got {_kind(raw_progress)}")
    progress = []
    for i, entry in enumerate(raw_progress):
        if not isinstance(entry, Mapping):
            raise ValueError(f"progress[{i}] must be a map, got {_kind(entry)}")
        try:
            job_id = _count(entry, "job_id")
            if job_id is None:
                raise ValueError("job_id is missing")
            progress.append(RunningJob(
                job_id=job_id, worker=_text(entry, "worker"), done=_finite(entry, "done"),
                total=_optional_finite(entry, "total"),
                message=_optional_text(entry, "message") or "",
            ))
        except ValueError as exc:
            raise ValueError(f"progress[{i}].{exc}") from None
    return ProducerInfo(
        producer_id=producer_id,
        group=_optional_text(info, "group"),
        counts={key: _count(info, key) for key in COUNT_FIELDS},
        uptime_s=_optional_finite(info, "uptime_s"),
        progress=tuple(progress),
        waiting=_waiting(info.get("waiting", [])),
    )


def _waiting(raw: Any) -> tuple[WaitingJobs, ...]:
    """A STATUS_REPLY's ``waiting`` list, checked. Raises ValueError naming the entry."""
    if not isinstance(raw, (list, tuple)):
        raise ValueError(f"waiting must be a list, got {_kind(raw)}")
    out = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, Mapping):
            raise ValueError(f"waiting[{i}] must be a map, got {_kind(entry)}")
        try:
            jobs = _count(entry, "jobs")
            if jobs is None:
                raise ValueError("jobs is missing")
            out.append(WaitingJobs(task=_text(entry, "task"), jobs=jobs,
                                   message=_text(entry, "message")))
        except ValueError as exc:
            raise ValueError(f"waiting[{i}].{exc}") from None
    return tuple(out)


def query_status(
    endpoints: Sequence[str], timeout_s: float = 1.0, *, keys: KeyPair | None = None,
    server_keys: Sequence[bytes | None] = (), detail: bool = False,
) -> list[dict[str, Any]]:
    """STATUS of each producer endpoint, asked in parallel.

    Args:
        endpoints: producer endpoints, e.g. ``["tcp://127.0.0.1:5555"]``.
        timeout_s: seconds to wait for the answers.
        detail: ask for the detailed reply (per-task counts, running jobs, failures); a
            producer that predates it answers the short one.
        keys, server_keys: for producers that require CURVE: this client's key pair (its
            public key must be in their ``authorized_workers``) and each endpoint's producer
            public key, in order (None for a producer without CURVE).

    Returns one map per endpoint, in order: the producer's STATUS_REPLY ``info`` plus
    ``endpoint``; or ``{"endpoint": ..., "error": "..."}`` when it did not answer within
    ``timeout_s`` seconds or answered nonsense. The error says what the connection did (from
    the socket's monitor, see :func:`explain_silence`): nothing accepted it, it was
    handshaken but no answer came (a busy producer, or a reply over
    :data:`STATUS_MAX_BYTES` refused), or the CURVE handshake failed and why; an endpoint
    libzmq cannot connect to at all (e.g. ``tcp://nohostport``) is such a row too.

    Raises:
        zmq.ZMQError: sockets cannot be made (e.g. too many open files).
    """
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    poller = zmq.Poller()
    opened: list[tuple[zmq.Socket[bytes], zmq.Socket[bytes]]] = []  # (DEALER, its monitor)
    answers: dict[int, dict[str, Any]] = {}  # endpoint index -> info or error
    asking: dict[zmq.Socket[bytes], int] = {}  # DEALER -> endpoint index, until answered
    try:
        for i, endpoint in enumerate(endpoints):
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.MAXMSGSIZE, STATUS_MAX_BYTES)
            server_key = server_keys[i] if i < len(server_keys) else None
            if keys is not None and server_key is not None:
                make_curve_client(sock, keys, server_key)
            opened.append((sock, sock.get_monitor_socket(_WATCHED_EVENTS)))
            try:
                sock.connect(endpoint)
            except zmq.ZMQError as exc:  # one bad endpoint is a row, never the end
                answers[i] = {"error": f"cannot connect to this endpoint: {exc.strerror}"}
                continue
            send_frames(sock, p.encode(p.Status(rid=1, detail=detail or None)))
            poller.register(sock, zmq.POLLIN)
            asking[sock] = i
        deadline = time.monotonic() + timeout_s
        while asking:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                break
            for sock, _ in poller.poll(left_ms):
                i = asking.pop(sock)
                poller.unregister(sock)
                try:
                    reply = p.decode_reply(sock.recv_multipart())
                    if isinstance(reply, p.Err):  # e.g. it speaks another protocol version
                        raise ProtocolError(reply.code, f"refused: {reply.message}")
                    if not isinstance(reply, p.StatusReply):
                        raise ProtocolError(p.E_UNKNOWN_VERB, f"unexpected {type(reply).__name__}")
                    answers[i] = dict(reply.info)
                except ProtocolError as exc:
                    answers[i] = {"error": f"bad reply: {exc.message}"}
        monitors = dict(opened)
        for sock, i in asking.items():
            events = _drain(monitors[sock])
            mechanism = _dropped_handshake_mechanism(endpoints[i], events)
            answers[i] = {"error": explain_silence(events, keys, timeout_s, mechanism)}
    finally:
        for sock, monitor in opened:
            sock.disable_monitor()
            monitor.close()
            sock.close()
    return [{**answers[i], "endpoint": endpoint} for i, endpoint in enumerate(endpoints)]


def send_admin(
    endpoint: str, token: str, action: str, job_id: int, timeout_s: float = 2.0, *,
    keys: KeyPair | None = None, server_key: bytes | None = None,
) -> str | None:
    """Ask a producer to ``cancel`` a live job or ``retry`` a recent failure (the ADMIN verb,
    allowed by the producer's ``admin_token``).

    Returns:
        None when the producer did it, else why not (its ERR message, or that it did not
        answer within ``timeout_s`` seconds).

    Raises:
        ValueError: ``job_id`` is not an int from 1 to :data:`~freelance_rz.core.wire.MAX_UINT`.
        zmq.ZMQError: a socket cannot be made.
    """
    if not p.is_id(job_id):
        raise ValueError(f"job_id must be an integer from 1 to {p.MAX_UINT}")
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, p.CONTROL_MAX_BYTES)
    try:
        if keys is not None and server_key is not None:
            make_curve_client(sock, keys, server_key)
        try:
            sock.connect(endpoint)
        except zmq.ZMQError as exc:
            return f"cannot connect to {endpoint}: {exc.strerror}"
        send_frames(sock, p.encode(p.Admin(rid=1, token=token, action=action, job_id=job_id)))
        if not sock.poll(int(timeout_s * 1000)):
            return f"no answer from {endpoint} within {timeout_s:g} s"
        try:
            reply = p.decode_reply(sock.recv_multipart())
        except ProtocolError as exc:
            return f"bad reply: {exc.message}"
        if isinstance(reply, p.Ack):
            return None
        if isinstance(reply, p.Err):
            return clean(reply.message)
        return f"unexpected {type(reply).__name__}"
    finally:
        sock.close()


def _drain(monitor: zmq.Socket[bytes]) -> list[int]:
    """The events a socket monitor holds now, oldest first."""
    from zmq.utils.monitor import recv_monitor_message

    events = []
    while True:
        try:
            events.append(int(recv_monitor_message(monitor, zmq.NOBLOCK)["event"]))
        except zmq.Again:
            return events


def _dropped_handshake_mechanism(endpoint: str, events: Sequence[int]) -> str | None:
    """When the only handshake failures seen were dropped connections (NO_DETAIL: a producer
    that stopped, or one whose mechanism differs and whose close outran its greeting), the
    mechanism its greeting names (:func:`~freelance_rz.security.greeting_mechanism`, 1 s at
    most); None otherwise."""
    failures = {e for e in events if e & HANDSHAKE_EVENTS}
    if failures != {zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL}:
        return None
    try:
        host, port = p.parse_endpoint(endpoint)
    except ValueError:
        return None
    return greeting_mechanism(host.strip("[]"), port, 1.0)


def explain_silence(
    events: Sequence[int], keys: KeyPair | None, timeout_s: float, mechanism: str | None = None,
) -> str:
    """Why a producer did not answer STATUS, from its connection's monitor ``events``
    (oldest first) in words an operator can act on.

    Args:
        events: ``zmq.EVENT_*`` values seen while waiting.
        keys: this command's CURVE key pair, None without ``--key``.
        timeout_s: how long it waited, seconds (for the message).
        mechanism: the security mechanism the producer's ZMTP greeting names (``"CURVE"``,
            ``"NULL"``), when it was asked after a dropped handshake; None if unknown.
    """
    failures = [e for e in events if e & HANDSHAKE_EVENTS]
    mismatch = mechanism is not None and mechanism != ("NULL" if keys is None else "CURVE")
    if failures and mismatch:
        return str(describe_handshake_failure(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, keys, "this command"))
    if failures:  # the CURVE cases: wrong key, no key, a producer without CURVE
        described = last_described(failures, keys, "this command")
        if described is not None:
            return described
    limit = f"{STATUS_MAX_BYTES / 2**20:g} MiB"
    handshaken = [i for i, e in enumerate(events) if e == zmq.EVENT_HANDSHAKE_SUCCEEDED]
    if handshaken:
        if zmq.EVENT_DISCONNECTED in events[handshaken[-1]:]:
            return (f"connected and handshaken, then the connection closed with no answer: a reply "
                    f"over {limit} is refused that way (or the producer stopped)")
        return (f"connected and handshaken, but no answer within {timeout_s:g} s (the producer "
                f"is busy, or its reply was over {limit} and was refused)")
    if failures:  # the connection dropped during the handshake
        return ("connected, then the connection closed during the ZeroMQ handshake (the producer "
                "stopped, or it is not a freelance_rz producer)")
    if zmq.EVENT_CONNECTED in events:
        return (f"connected, but no ZeroMQ handshake within {timeout_s:g} s (is it a "
                "freelance_rz producer?)")
    return (f"could not connect within {timeout_s:g} s (nothing accepts connections there, or "
            "it is unreachable)")


def vet_producers(
    found: Sequence[tuple[str, bytes | None]], keys: KeyPair | None,
    trusted: frozenset[bytes] | None,
) -> tuple[list[tuple[str, bytes | None]], list[dict[str, Any]]]:
    """Split announced producers ``(endpoint, public key or None)`` into those this client
    can talk to with its CURVE settings, and rows (``endpoint``, ``error``) saying why not
    for the others, as a worker with the same settings would refuse them."""
    usable, refused = [], []
    for endpoint, public_key in found:
        if keys is None and public_key is not None:
            refused.append({"endpoint": endpoint, "error": "requires CURVE keys: give --key and --trust"})
        elif keys is not None and public_key is None:
            refused.append({"endpoint": endpoint, "error": "has no CURVE key (this command has --key)"})
        elif trusted is not None and public_key not in trusted:
            refused.append({"endpoint": endpoint, "error": "its public key is not in --trust"})
        else:
            usable.append((endpoint, public_key))
    return usable, refused


def connect_targets(
    endpoints: Sequence[str], keys: KeyPair | None, trusted: Mapping[bytes, str] | None,
) -> tuple[list[tuple[str, bytes | None]], list[dict[str, Any]]]:
    """``--connect`` endpoints as ``(endpoint, CURVE key or None)`` to ask, in order, and
    rows (``endpoint``, ``error``) for those that cannot be asked.

    A name stands for each of its IPv4 addresses (resolved now); an endpoint that is not
    ``tcp://HOST:PORT`` is kept as given (its row says libzmq cannot use it). With CURVE,
    the key is the one trusted key, or, with several, the one a handshake shows the
    producer holds (:func:`~freelance_rz.security.probe_server_key`)."""
    from .sources import is_address, resolve_host

    targets: list[tuple[str, bytes | None]] = []
    rows: list[dict[str, Any]] = []
    for endpoint in endpoints:
        try:
            host, port = p.parse_endpoint(endpoint)
        except ValueError:
            targets.append((endpoint, _only_key(trusted)))
            continue
        addresses: tuple[str, ...] | None = (host,) if is_address(host) else resolve_host(host)
        if not addresses:
            why = "cannot resolve the name now" if addresses is None else "the name has no IPv4 address"
            rows.append({"endpoint": endpoint, "error": why})
        for address in addresses or ():
            target = endpoint if address == host else f"tcp://{address}:{port}"
            key, why = server_key_for(target, keys, trusted)
            if why:
                rows.append({"endpoint": target, "error": why})
            else:
                targets.append((target, key))
    return targets, rows


def _only_key(trusted: Mapping[bytes, str] | None) -> bytes | None:
    return next(iter(trusted)) if trusted and len(trusted) == 1 else None


def server_key_for(endpoint: str, keys: KeyPair | None,
                   trusted: Mapping[bytes, str] | None) -> tuple[bytes | None, str]:
    """The CURVE key to ask ``endpoint`` with when its source names none: None without
    CURVE, the one trusted key, or the one a probe finds; ``(None, why)`` when none is."""
    if keys is None or not trusted:
        return None, ""
    if len(trusted) == 1:
        return _only_key(trusted), ""
    key, why = probe_server_key(zmq.Context.instance(), endpoint, keys, list(trusted), 1.0)
    return key, "" if key is not None else f"CURVE key not found: {why}"


def source_producers(
    sources: Sequence[Source], keys: KeyPair | None, trusted: Mapping[bytes, str] | None,
) -> tuple[list[tuple[str, bytes | None]], list[dict[str, Any]]]:
    """The producers DNS-SD services and endpoints files name now, as
    ``(endpoint, CURVE key or None)``, and rows for those whose key could not be found."""
    found: list[tuple[str, bytes | None]] = []
    rows: list[dict[str, Any]] = []
    for announcement in read_once(sources, None):
        endpoint, key = announcement.endpoints[0], announcement.public_key
        if key is None and keys is not None:
            key, why = server_key_for(endpoint, keys, trusted)
            if why:
                rows.append({"endpoint": endpoint, "error": why})
                continue
        found.append((endpoint, key))
    return found, rows


def check_line(rows: Sequence[Mapping[str, Any]]) -> tuple[bool, str]:
    """``freelance-status --check``: healthy when there is a producer and every one gave a
    well-formed STATUS_REPLY; the one line saying so, or naming the first problem."""
    problems = []
    for row in rows:
        why = row.get("error")
        if why is None:
            try:
                read_info(row)
            except ValueError as exc:
                why = f"malformed reply: {exc}"
        if why is not None:
            problems.append(clean(f"{row.get('endpoint', '?')}: {why}", 300))
    if not rows:
        return False, "unhealthy: no producer found"
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return False, f"unhealthy: {len(rows) - len(problems)} of {len(rows)} producer(s) answered; " \
                      f"{problems[0]}{more}"
    names = ", ".join(clean(row.get("producer_id", "?"), 40) for row in rows[:5])
    return True, f"ok: {len(rows)} producer(s) answered ({names}{', ...' if len(rows) > 5 else ''})"


class ProducerFinder:
    """Keeps the endpoints of the producers of one group seen on mDNS (a thin layer over
    :class:`~freelance_rz.discovery.Browser`). Use as a context manager."""

    def __init__(self, group: str, interfaces: list[str] | None) -> None:
        self._lock = threading.Lock()
        self._found: dict[str, Announcement] = {}
        self._interfaces = interfaces
        self._browser = Browser(group, interfaces, self._on_found, self._on_gone)

    def __enter__(self) -> ProducerFinder:
        self._browser.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._browser.close()

    def _on_found(self, announcement: Announcement) -> None:
        with self._lock:
            self._found[announcement.name] = announcement

    def _on_gone(self, name: str) -> None:
        with self._lock:
            self._found.pop(name, None)

    def endpoints(self) -> list[str]:
        """One endpoint per producer announced now, sorted."""
        return [endpoint for endpoint, _ in self.producers()]

    def producers(self) -> list[tuple[str, bytes | None]]:
        """``(endpoint, CURVE public key or None)`` per producer announced now, sorted."""
        with self._lock:
            found = list(self._found.values())
        return sorted((choose_endpoint(a.endpoints, self._interfaces), a.public_key) for a in found)

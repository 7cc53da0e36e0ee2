"""Ask producers how they are doing (the STATUS verb), for ``freelance-status`` and scripts.

A STATUS_REPLY comes from the network: :func:`read_info` checks the type of every field
``freelance-status`` shows before anything is rendered, so a malformed reply is reported as
such and never breaks the others. Its strings are still the peer's own (they may hold escape
sequences or megabytes): pass them through :func:`freelance_rz._text.clean` before showing.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import zmq

from . import protocol as p
from ._sockets import send_frames
from .discovery import Announcement, Browser, choose_endpoint
from .errors import ProtocolError
from .security import HANDSHAKE_EVENTS, KeyPair, handshake_failure, make_curve_client

STATUS_MAX_BYTES = 16 * 1024 * 1024  # a STATUS_REPLY is a few KiB; anything this big is hostile

#: the counts of a STATUS_REPLY ``info`` map: non-negative ints when present.
COUNT_FIELDS = ("pending", "leased", "done", "failed", "dead", "cancelled", "workers",
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
class ProducerInfo:
    """The fields of a STATUS_REPLY ``info`` map that are shown, type-checked (see
    :func:`read_info`). Strings are the peer's raw text; fields the reply lacks are None.

    Attributes:
        producer_id: the producer's instance id.
        group: its group.
        counts: :data:`COUNT_FIELDS` name -> int >= 0 or None.
        uptime_s: seconds since it started.
        progress: the running jobs that reported progress.
    """

    producer_id: str
    group: str | None
    counts: Mapping[str, int | None]
    uptime_s: float | None
    progress: tuple[RunningJob, ...]


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
            ``message`` string or nil). The message names the field.
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
    )


def query_status(
    endpoints: Sequence[str], timeout_s: float = 1.0, *, keys: KeyPair | None = None,
    server_keys: Sequence[bytes | None] = (),
) -> list[dict[str, Any]]:
    """STATUS of each producer endpoint, asked in parallel.

    Args:
        endpoints: producer endpoints, e.g. ``["tcp://127.0.0.1:5555"]``.
        timeout_s: seconds to wait for the answers.
        keys, server_keys: for producers that require CURVE: this client's key pair (its
            public key must be in their ``authorized_workers``) and each endpoint's producer
            public key, in order (None for a producer without CURVE).

    Returns one map per endpoint, in order: the producer's STATUS_REPLY ``info`` plus
    ``endpoint``; or ``{"endpoint": ..., "error": "..."}`` when it did not answer within
    ``timeout_s`` seconds or answered nonsense.
    """
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    poller = zmq.Poller()
    socks = []
    monitors: list[zmq.Socket[bytes]] = []  # to explain a refused CURVE handshake
    for i, endpoint in enumerate(endpoints):
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, STATUS_MAX_BYTES)
        server_key = server_keys[i] if i < len(server_keys) else None
        if keys is not None and server_key is not None:
            make_curve_client(sock, keys, server_key)
        monitors.append(sock.get_monitor_socket(HANDSHAKE_EVENTS))
        sock.connect(endpoint)
        send_frames(sock, p.encode(p.Status(rid=1)))
        poller.register(sock, zmq.POLLIN)
        socks.append(sock)
    answers: dict[zmq.Socket[bytes], dict[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(answers) < len(socks):
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                break
            for sock, _ in poller.poll(left_ms):
                try:
                    reply = p.decode_reply(sock.recv_multipart())
                    if not isinstance(reply, p.StatusReply):
                        raise ProtocolError(p.E_UNKNOWN_VERB, f"unexpected {type(reply).__name__}")
                    answers[sock] = dict(reply.info)
                except ProtocolError as exc:
                    answers[sock] = {"error": f"bad reply: {exc.message}"}
                poller.unregister(sock)
        for sock, monitor in zip(socks, monitors, strict=True):
            failed = None if sock in answers else handshake_failure(monitor, keys, "this command")
            if failed is not None:
                answers[sock] = {"error": failed}
    finally:
        for sock, monitor in zip(socks, monitors, strict=True):
            sock.disable_monitor()
            monitor.close()
            sock.close()
    return [
        {**answers.get(sock, {"error": f"no answer within {timeout_s:g} s"}), "endpoint": endpoint}
        for sock, endpoint in zip(socks, endpoints, strict=True)
    ]


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

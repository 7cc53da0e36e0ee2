"""Ask producers how they are doing (the STATUS verb), for ``freelance-status`` and scripts."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import zmq

from . import protocol as p
from ._sockets import send_frames
from .discovery import Announcement, Browser, choose_endpoint
from .errors import ProtocolError
from .security import HANDSHAKE_EVENTS, KeyPair, handshake_failure, make_curve_client

STATUS_MAX_BYTES = 16 * 1024 * 1024  # a STATUS_REPLY is a few KiB; anything this big is hostile


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

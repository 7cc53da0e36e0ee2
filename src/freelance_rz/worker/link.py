"""One DEALER socket from a worker to one producer (the I/O half of a
:class:`~freelance_rz.core.session.Session`), with the socket monitor that explains a failed
handshake until the producer first answers."""

from __future__ import annotations

import zmq

from .._sockets import recv_frames, send_frames, set_keepalive
from ..core import wire as w
from ..security import HANDSHAKE_EVENTS, KeyPair, handshake_failure, make_curve_client


class Link:
    """A connected DEALER to ``endpoint``.

    Args:
        ctx: the ZeroMQ context.
        endpoint: ``tcp://HOST:PORT``.
        identity: the worker's routing id (a secret; see docs/protocol.md §3.1).
        max_payload: the largest job payload taken, in bytes (``MAXMSGSIZE`` is that plus the
            body's overhead).
        keys, server_key: this worker's CURVE key pair and the producer's public key, for a
            CURVE connection; None for a plain one.

    Raises:
        zmq.ZMQError, ValueError: the socket could not be made or connected (a malformed
            endpoint, no file descriptors left); nothing is left open then.
    """

    def __init__(
        self, ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, identity: bytes,
        max_payload: int, keys: KeyPair | None, server_key: bytes | None,
    ) -> None:
        sock = ctx.socket(zmq.DEALER)
        monitor = None
        try:
            if keys is not None and server_key is not None:
                make_curve_client(sock, keys, server_key)
            monitor = sock.get_monitor_socket(HANDSHAKE_EVENTS)
            sock.setsockopt(zmq.ROUTING_ID, identity)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RECONNECT_IVL, 100)
            set_keepalive(sock)
            sock.setsockopt(zmq.MAXMSGSIZE, max_payload + w.FRAME_OVERHEAD)
            sock.connect(endpoint)
        except BaseException:
            if monitor is not None:
                sock.disable_monitor()
                monitor.close(0)
            sock.close(0)
            raise
        self.sock: zmq.Socket[bytes] = sock
        self._monitor: zmq.Socket[bytes] | None = monitor

    def send(self, msg: w.Request) -> None:
        """Send a request without blocking (a full send queue: the reply deadline notices)."""
        try:
            send_frames(self.sock, w.encode(msg))
        except zmq.Again:
            pass

    def recv(self) -> list[bytes] | None:
        """The next message's frames, or None when none is waiting."""
        return recv_frames(self.sock)

    def handshake_failure(self, keys: KeyPair | None) -> str | None:
        """Why the last handshake failed, in words an operator can act on, or None."""
        return None if self._monitor is None else handshake_failure(self._monitor, keys)

    def handshaken(self) -> None:
        """The producer answered: its handshake works, the monitor is no longer needed."""
        if self._monitor is not None:
            self.sock.disable_monitor()
            self._monitor.close(0)
            self._monitor = None

    def close(self) -> None:
        self.handshaken()
        self.sock.close(0)

"""Small ZeroMQ helpers shared by the producer and the worker shells."""

from __future__ import annotations

from collections.abc import Sequence

import zmq

_MORE = int(zmq.SNDMORE | zmq.NOBLOCK)  # plain ints: pyzmq's flag enums cost on a hot path
_LAST = int(zmq.NOBLOCK)


def send_frames(sock: zmq.Socket[bytes], frames: Sequence[bytes]) -> None:
    """Send one multipart message without blocking.

    Raises:
        zmq.Again: the send queue is full (or, on a ROUTER, nothing is connected yet).
        zmq.ZMQError: e.g. EHOSTUNREACH from a ROUTER_MANDATORY socket whose peer is gone.
    """
    send = sock.send
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        send(frame, _LAST if i == last else _MORE)

"""Small ZeroMQ helpers shared by the producer and the worker shells."""

from __future__ import annotations

from collections.abc import Sequence

import zmq

_MORE = int(zmq.SNDMORE | zmq.NOBLOCK)  # plain ints: pyzmq's flag enums cost on a hot path
_LAST = int(zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


def recv_frames(sock: zmq.Socket[bytes]) -> list[bytes] | None:
    """The next message's frames without blocking, or None when none is waiting.

    Cheaper than ``recv_multipart(NOBLOCK)`` on the hot path: the socket's EVENTS say whether
    a message waits (a receive on an empty socket raises, and the exception costs more than
    the question), and each frame says whether more follow (no ``RCVMORE`` query per frame).
    """
    if not int(sock.get(_EVENTS)) & _POLLIN:
        return None
    frames = []
    try:
        while True:
            frame = sock.recv(_LAST, copy=False)
            frames.append(frame.bytes)
            if not frame.more:
                return frames
    except zmq.Again:  # cannot happen once EVENTS said POLLIN: a message arrives whole
        return frames or None


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


KEEPALIVE_IDLE_S = 5  # TCP keepalive: first probe after this many idle seconds,
KEEPALIVE_INTVL_S = 1  # then one a second,
KEEPALIVE_CNT = 3  # and the connection is dropped after this many unanswered (~8 s in all)


def set_keepalive(sock: zmq.Socket[bytes]) -> None:
    """Let the kernel find half-open connections (a peer whose host vanished): TCP keepalive,
    about 8 s. Not ZMTP heartbeats (``HEARTBEAT_IVL``): in libzmq 4.3.5 a heartbeat timer on
    a connection whose input was stopped at its high-water mark, once that peer disconnects,
    aborts the whole process (``Assertion failed: !_io_error``, stream_engine_base.cpp; a
    claim flood from a peer that then disconnects did it every time here). Liveness comes
    from the freelance conversation anyway (docs/protocol.md §7)."""
    sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
    sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, KEEPALIVE_IDLE_S)
    sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, KEEPALIVE_INTVL_S)
    sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, KEEPALIVE_CNT)

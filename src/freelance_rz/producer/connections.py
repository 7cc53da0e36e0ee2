"""The offer socket's open connections, followed from its monitor, and the newest ones shut
past ``max_connections`` (moved out of :mod:`freelance_rz.producer.thread` unchanged)."""

from __future__ import annotations

import logging
import os
import socket

import zmq

log = logging.getLogger("freelance_rz.producer")


class Connections:
    """Open connections to the offer socket, by descriptor, oldest first (``accepted``)."""

    def __init__(self) -> None:
        self.accepted: dict[int, None] = {}
        self.shed_logged_at = -3600.0

    def count(self, monitor: zmq.Socket[bytes], limit: int, port: int, now: float) -> None:
        """Follow the offer socket's open connections (its monitor's ACCEPTED and
        DISCONNECTED events); past ``limit`` (max_connections), close the newest ones at once."""
        from zmq.utils.monitor import recv_monitor_message

        while True:
            try:
                event = recv_monitor_message(monitor, zmq.NOBLOCK)
            except zmq.Again:
                break
            if event["event"] == zmq.EVENT_ACCEPTED:
                self.accepted[event["value"]] = None
            else:
                self.accepted.pop(event["value"], None)
        if len(self.accepted) <= limit:
            return
        shed = 0
        for fd in list(self.accepted)[limit:]:
            shed += _shut_connection(fd, port)
            del self.accepted[fd]  # its DISCONNECTED event follows; never shut it twice
        if now - self.shed_logged_at > 10.0:
            self.shed_logged_at = now
            log.warning(
                "offer socket: more than %d connections open (max_connections): closed the "
                "%d newest. A fleet this large needs a higher max_connections and open-file "
                "limit (ulimit -n); otherwise this is a flood of connections", limit, shed,
            )


def _shut_connection(fd: int, port: int) -> int:
    """Shut down the TCP connection libzmq holds as ``fd`` (libzmq then closes it as if the
    peer had gone), after checking on a duplicate of the descriptor that it still is a
    connection to our offer ``port`` (a descriptor number can be reused once libzmq closed
    it). Returns 1 if it was shut down, else 0."""
    try:
        conn = socket.socket(fileno=os.dup(fd))
    except OSError:
        return 0
    try:
        if conn.type == socket.SOCK_STREAM and conn.getsockname()[1] == port:
            conn.shutdown(socket.SHUT_RDWR)
            return 1
    except OSError:
        pass
    finally:
        conn.close()
    return 0

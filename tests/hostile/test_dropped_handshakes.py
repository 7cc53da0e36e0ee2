"""A producer killed while a worker's handshake was under way: libzmq reports
HANDSHAKE_FAILED_NO_DETAIL (EPIPE or ECONNRESET), the very event it also reports to a CURVE
client holding the wrong server key. Without keys it was still explained as "the producer
probably requires CURVE keys" and logged as an error, sending an operator after keys when the
producer had only stopped (found running the suite under load, where handshakes are slow).
Now, without keys, a dropped handshake is an unanswering producer; with keys it names both
causes. Real sockets on loopback: a TCP server that accepts and closes."""

from __future__ import annotations

import socket
import threading

import pytest
import zmq

from conftest import WorkerProcess
from freelance_rz.security import describe_handshake_failure
from hostile_kit import wait_until
from test_status_hints import rows_of, run_status

pytestmark = pytest.mark.timeout(60)


class DroppingServer:
    """Accepts TCP connections and closes each once it has read the peer's greeting."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.endpoint = f"tcp://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.recv(64)
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def dropping():
    server = DroppingServer()
    yield server
    server.close()


def test_no_detail_without_keys_is_no_setting():
    assert describe_handshake_failure(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, None) is None
    assert describe_handshake_failure(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, None) is not None


def test_a_worker_does_not_blame_keys_for_a_dropped_handshake(dropping, start_worker):
    worker: WorkerProcess = start_worker("w1", connect=dropping.endpoint)
    wait_until(lambda: "unreachable" in worker.log() or "does not answer" in worker.log()
               or "CURVE" in worker.log(), 30, "the worker never gave up on it")
    assert dropping.accepted >= 1
    assert "CURVE" not in worker.log() and "ERROR" not in worker.log(), worker.log()


def test_freelance_status_says_the_connection_closed(dropping):
    [row] = rows_of(run_status("--connect", dropping.endpoint))
    assert row["error"].startswith("connected, then the connection closed during the ZeroMQ "
                                   "handshake"), row
    assert "--key" not in row["error"]

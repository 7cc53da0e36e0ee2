"""A producer killed while a worker's handshake was under way: libzmq reports
HANDSHAKE_FAILED_NO_DETAIL (EPIPE or ECONNRESET), the very event it also reports to a CURVE
client holding the wrong server key. Without keys it was still explained as "the producer
probably requires CURVE keys" and logged as an error, sending an operator after keys when the
producer had only stopped (found running the suite under load, where handshakes are slow).
Now, without keys, a dropped handshake is an unanswering producer; with keys it names both
causes. Real sockets on loopback: a TCP server that accepts and closes.

The other side of the same event: a CURVE producer refusing a client without keys closes the
connection, and when that close resets it before the client read the producer's greeting, the
client too sees HANDSHAKE_FAILED_NO_DETAIL, not a mechanism mismatch (CI saw it on every try).
Only the producer's ZMTP greeting tells the two apart: freelance-status and a --connect worker
read it (security.greeting_mechanism) and still name the keys."""

from __future__ import annotations

import socket
import threading

import pytest
import zmq

from conftest import WorkerProcess
from freelance_rz.security import describe_handshake_failure, greeting_mechanism
from freelance_rz.status import explain_silence
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
            threading.Thread(target=self._talk_to, args=(conn,), daemon=True).start()

    def _talk_to(self, conn: socket.socket) -> None:
        try:
            self._talk(conn)
        except ConnectionError:  # the client gave up first (libzmq resets and reconnects)
            pass

    @staticmethod
    def _talk(conn: socket.socket) -> None:
        with conn:
            conn.recv(64)

    def close(self) -> None:
        self.sock.close()


class ResettingCurveServer(DroppingServer):
    """Behaves as a CURVE producer whose close outran its greeting: a libzmq client (which
    sends the rest of its greeting once it has the server's major version) has its connection
    reset mid-greeting; a client that sends only signature and version (a greeting probe) is
    sent the whole CURVE greeting and a clean close."""

    @staticmethod
    def _talk(conn: socket.socket) -> None:
        greeting = b"\xff" + bytes(7) + b"\x01\x7f\x03\x01" + b"CURVE".ljust(20, b"\0") + bytes(32)
        with conn:
            conn.sendall(greeting[:11])
            conn.settimeout(5)
            got = b""
            while len(got) < 11:
                chunk = conn.recv(11 - len(got))
                if not chunk:
                    return
                got += chunk
            conn.settimeout(0.3)
            try:
                more = conn.recv(64)
            except TimeoutError:
                more = b""
            if more:  # a libzmq client: reset, as the refusing producer's close did
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                return
            conn.sendall(greeting[11:])


@pytest.fixture
def resetting():
    server = ResettingCurveServer()
    yield server
    server.close()


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


def test_the_greeting_names_the_mechanism(dropping):
    ctx = zmq.Context.instance()
    public, secret = zmq.curve_keypair()
    with ctx.socket(zmq.ROUTER) as curve, ctx.socket(zmq.ROUTER) as plain:
        curve.curve_server, curve.curve_secretkey, curve.curve_publickey = True, secret, public
        curve_port = curve.bind_to_random_port("tcp://127.0.0.1")
        plain_port = plain.bind_to_random_port("tcp://127.0.0.1")
        assert greeting_mechanism("127.0.0.1", curve_port, 5) == "CURVE"
        assert greeting_mechanism("127.0.0.1", plain_port, 5) == "NULL"
    port = int(dropping.endpoint.rsplit(":", 1)[1])
    assert greeting_mechanism("127.0.0.1", port, 5) is None  # closed before greeting
    with socket.socket() as silent:  # accepts, never speaks
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        assert greeting_mechanism("127.0.0.1", silent.getsockname()[1], 0.3) is None
    with socket.socket() as gone:
        gone.bind(("127.0.0.1", 0))
        free_port = gone.getsockname()[1]
    assert greeting_mechanism("127.0.0.1", free_port, 5) is None  # refused: no exception


def test_explain_silence_uses_the_greeting():
    dropped = [zmq.EVENT_CONNECTED, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL]
    assert "probably requires CURVE keys" in explain_silence(dropped, None, 1, "CURVE")
    assert explain_silence(dropped, None, 1, None).startswith("connected, then the connection closed")
    assert explain_silence(dropped, None, 1, "NULL").startswith("connected, then the connection closed")


def test_a_reset_from_a_curve_producer_still_names_the_keys(resetting):
    [row] = rows_of(run_status("--connect", resetting.endpoint))
    assert "probably requires CURVE keys" in row["error"] and "--key" in row["error"], row


def test_a_connect_worker_still_names_the_keys_after_a_reset(resetting, start_worker):
    worker: WorkerProcess = start_worker("w1", connect=resetting.endpoint)
    wait_until(lambda: "probably requires CURVE keys" in worker.log(), 30,
               "the worker never named the keys")
    assert resetting.accepted >= 2  # its own connection, then the greeting probe

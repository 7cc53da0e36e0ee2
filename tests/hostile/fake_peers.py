"""A fake producer for the hostile status tests: a ROUTER on 127.0.0.1, owned by a thread of
its own, answering every STATUS as told (hostile info, a huge reply, or nothing at all)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import msgpack
import zmq

from freelance_rz.core import wire as p
from freelance_rz.errors import ProtocolError


def status_reply(info: Any, rid: int) -> list[bytes]:
    """The frames of a STATUS_REPLY carrying ``info`` as is (any msgpack value: the fake
    producer does not check what it sends)."""
    return [p.SIGNATURE, b"STATUS_REPLY", msgpack.packb({"rid": rid, "info": info}, use_bin_type=True)]


class FakeProducer:
    """Answers each STATUS request with ``reply(rid)`` (None: no answer). ``endpoint`` is
    where it listens; ``asked`` counts the STATUS requests seen. Close it with :meth:`close`.

    ``server_secret``: a CURVE secret key to be a CURVE server with (no ZAP: any client key)."""

    def __init__(self, reply: Callable[[int], list[bytes] | None],
                 server_secret: bytes | None = None) -> None:
        self._reply = reply
        self._server_secret = server_secret
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.asked = 0
        self.endpoint = ""
        self._thread = threading.Thread(target=self._run, name="fake-producer", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fake producer did not bind")

    def _run(self) -> None:
        ctx: zmq.Context = zmq.Context()
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        if self._server_secret is not None:
            sock.curve_secretkey = self._server_secret
            sock.curve_publickey = zmq.curve_public(self._server_secret)
            sock.curve_server = True
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self._ready.set()
        try:
            while not self._stop.is_set():
                if not sock.poll(50):
                    continue
                identity, *frames = sock.recv_multipart()
                try:
                    request = p.decode_request(frames)
                except ProtocolError:
                    continue
                if not isinstance(request, p.Status):
                    continue
                self.asked += 1
                answer = self._reply(request.rid)
                if answer is not None:
                    sock.send_multipart([identity, *answer])
        finally:
            sock.close()
            ctx.term()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


def answering(info: Any) -> Callable[[int], list[bytes]]:
    """A reply function: every STATUS gets a STATUS_REPLY with ``info``."""
    return lambda rid: status_reply(info, rid)

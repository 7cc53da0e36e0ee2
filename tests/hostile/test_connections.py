"""Descriptor exhaustion (issue 11, finding 6): 1,100 idle TCP connections to the offer socket
made the embedding application's own open() fail with EMFILE, and idle connections that never
handshake lived about 30 s. Now the offer socket keeps at most max_connections (half the
open-file limit by default: it closes the newest beyond that as soon as they are accepted),
closes unhandshaken connections after HANDSHAKE_IVL (5 s), and a worker connected before the
flood is served throughout."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from conftest import GROUP, TESTS_DIR
from hostile_kit import HERE, wait_until

pytestmark = pytest.mark.timeout(120)

FLOOD = """
import socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
held = []
for _ in range(1100):
    try:
        held.append(socket.create_connection((host, port), timeout=2))
    except OSError:
        pass
print(len(held), flush=True)
time.sleep(600)
"""


class App:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "rzapp.py"), GROUP], cwd=TESTS_DIR, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True,
        )
        self.info = json.loads(self.proc.stdout.readline())

    def ask(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def test_a_connection_flood_cannot_exhaust_the_applications_descriptors(start_worker):
    app = App()
    flood = None
    try:
        endpoint = app.info["endpoint"]
        assert app.info["max_connections"] == 512
        start_worker("w1", "--slots", "1", connect=endpoint)
        assert app.ask("job") == {"result": 3}
        host, port = endpoint.removeprefix("tcp://").split(":")
        flood = subprocess.Popen([sys.executable, "-c", FLOOD, host, port], text=True,
                                 stdout=subprocess.PIPE, start_new_session=True)
        held = int(flood.stdout.readline())
        during = app.ask("status")
        opened = app.ask("open 200")
        print(f"flood held {held} of 1,100 connections; the app had {during['connections']} "
              f"open ({opened['fds']} descriptors with 200 files), opened {opened['opened']} of 200")
        assert opened["error"] is None and opened["opened"] == 200
        assert during["connections"] <= 512
        assert app.ask("job") == {"result": 3}  # the worker connected before is still served
        # the flood's connections never handshake: closed after HANDSHAKE_IVL
        wait_until(lambda: app.ask("status")["connections"] < 50, 30, "idle connections lived on")
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    finally:
        if flood is not None:
            flood.kill()
            flood.wait(10)
        app.close()

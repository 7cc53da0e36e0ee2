"""Issue 11 #8 (status side): when a producer does not answer STATUS, ``freelance-status``
says what the connection did, from its socket monitor, instead of "needs --key" for every
silence: nothing accepted the connection; it was handshaken but no answer came (busy, or a
reply over STATUS_MAX_BYTES = 4 MiB, which libzmq refuses by dropping the connection); it
connected but no ZeroMQ handshake came; or the CURVE handshake failed (the only case that
mentions keys). An endpoint libzmq cannot parse is a row of its own, not a crash.

Before the fix every silence of a producer without keys ended in "no answer within 1 s (a
producer that requires CURVE keys needs --key and --trust)", replies up to 16 MiB were taken,
and ``tcp://nohostport`` crashed the command with a ZMQError traceback.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import zmq
from fake_peers import FakeProducer, answering

from freelance_rz.security import generate_keypair
from freelance_rz.status import STATUS_MAX_BYTES, query_status

GOOD = {"producer_id": "good-producer", "group": "g", "pending": 0, "leased": 0, "done": 1,
        "failed": 0, "dead": 0, "workers": 0, "finished_last_min": 1, "uptime_s": 1.0,
        "progress": []}


@pytest.fixture
def fakes():
    made: list[FakeProducer] = []

    def start(reply, **kwargs) -> FakeProducer:
        producer = FakeProducer(reply, **kwargs)
        made.append(producer)
        return producer

    yield start
    for producer in made:
        producer.close()


def run_status(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "import sys; from freelance_rz.cli import status_main; "
         "sys.exit(status_main())", *args, "--json"],
        capture_output=True, text=True, timeout=60,
    )


def rows_of(shown: subprocess.CompletedProcess[str]) -> list[dict]:
    assert "Traceback" not in shown.stderr, shown.stderr
    return json.loads(shown.stdout)


def test_the_limit_is_4_mib():
    assert STATUS_MAX_BYTES == 4 * 1024 * 1024


@pytest.mark.parametrize("mib", [5, 17])
def test_a_reply_over_the_limit_is_explained_not_blamed_on_keys(fakes, mib):
    big = fakes(answering({**GOOD, "note": "x" * (mib * 2**20)}))
    good = fakes(answering(GOOD))
    shown = run_status("--connect", big.endpoint, good.endpoint)
    rows = rows_of(shown)
    assert shown.returncode == 1
    assert rows[1]["producer_id"] == "good-producer"
    error = rows[0]["error"]
    print(f"{mib} MiB reply: {error}")
    assert error.startswith("connected and handshaken"), error
    assert "over 4 MiB" in error and "--key" not in error and "CURVE" not in error
    assert big.asked >= 1  # it was asked, and it answered: the answer was refused


def test_a_reply_under_the_limit_is_taken(fakes):
    fat = fakes(answering({**GOOD, "note": "x" * (3 * 2**20)}))
    shown = run_status("--connect", fat.endpoint)
    assert shown.returncode == 0, shown.stdout
    assert rows_of(shown)[0]["producer_id"] == "good-producer"


def test_a_producer_that_never_answers(fakes):
    silent = fakes(lambda rid: None)
    shown = run_status("--connect", silent.endpoint)
    [row] = rows_of(shown)
    assert shown.returncode == 1
    assert row["error"].startswith("connected and handshaken, but no answer within 1 s"), row
    assert "busy" in row["error"] and "--key" not in row["error"]


def test_nothing_listening(fakes):
    with socket.socket() as probe:  # a port nothing listens on (this test's namespace)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    shown = run_status("--connect", f"tcp://127.0.0.1:{port}")
    [row] = rows_of(shown)
    assert shown.returncode == 1
    assert row["error"].startswith("could not connect within 1 s"), row
    assert "--key" not in row["error"]


def test_a_tcp_server_that_is_not_zeromq():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        shown = run_status("--connect", f"tcp://127.0.0.1:{server.getsockname()[1]}")
    [row] = rows_of(shown)
    assert shown.returncode == 1
    assert row["error"].startswith("connected, but no ZeroMQ handshake"), row


def test_an_endpoint_libzmq_cannot_parse_is_a_row(fakes):
    """Given to query_status, it is a row and the others still answer; typed on the command
    line, it is a usage error naming it (as freelance-worker says)."""
    good = fakes(answering(GOOD))
    rows = query_status(["tcp://nohostport", good.endpoint], 5.0)
    assert rows[0]["error"].startswith("cannot connect to this endpoint"), rows[0]
    assert rows[1]["producer_id"] == "good-producer"
    shown = run_status("--connect", "tcp://nohostport", good.endpoint)
    assert shown.returncode == 2
    assert "--connect 'tcp://nohostport': expected tcp://HOST:PORT" in shown.stderr, shown.stderr


def test_curve_cases_still_name_the_keys(fakes, tmp_path):
    public, secret = zmq.curve_keypair()
    secure = fakes(answering(GOOD), server_secret=secret)
    keyless = rows_of(run_status("--connect", secure.endpoint))[0]["error"]
    assert "probably requires CURVE keys" in keyless and "--key" in keyless, keyless
    # with keys, but trusting another key than the producer's: the handshake fails
    generate_keypair(tmp_path / "mine", "ops")
    generate_keypair(tmp_path / "other", "someone")
    trust = tmp_path / "trust"
    trust.mkdir()
    os.replace(tmp_path / "other" / "someone.key", trust / "someone.key")
    wrong = run_status("--connect", secure.endpoint, "--key",
                       str(tmp_path / "mine" / "ops.key_secret"), "--trust", str(trust))
    error = rows_of(wrong)[0]["error"]
    assert wrong.returncode == 1
    assert error.startswith("the CURVE handshake failed"), error


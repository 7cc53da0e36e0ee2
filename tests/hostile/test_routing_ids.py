"""Routing-id hijack (issue 11, finding 5): a client that connected with a victim worker's
routing id received the JOB answering the victim's claim, and its forged RESULT resolved the
Future; STATUS gave away full routing ids, which were guessable (HOST-PID-hex); lease ids
came from random.Random. Now ids are 128-bit secrets never shown, and with CURVE a routing id
is bound to its key and never handed over. Real sockets and CURVE on loopback."""

from __future__ import annotations

import json
import logging
import re
import secrets
import threading
import time

import pytest
import zmq

import rztasks
from freelance_rz import Worker
from freelance_rz.core import wire as p
from freelance_rz.core.ledger import Ledger
from freelance_rz.security import load_keypair, make_curve_client
from hostile_kit import wait_until
from test_security import Keys

pytestmark = pytest.mark.timeout(90)


class InProcessWorker:
    """A Worker running in a thread of the test (so the test knows its routing id)."""

    def __init__(self, **kwargs) -> None:
        self.worker = Worker(["rztasks"], slots=1, name="victim", **kwargs)
        self.thread = threading.Thread(target=self.worker.run, daemon=True)

    def __enter__(self) -> Worker:
        self.thread.start()
        return self.worker

    def __exit__(self, *exc: object) -> None:
        self.worker.stop()
        self.thread.join(20)
        assert not self.thread.is_alive()


def test_status_and_events_never_show_a_routing_id(make_producer):
    events = []
    producer = make_producer(on_event=events.append)
    with InProcessWorker(connect=[producer.endpoint]) as worker:
        assert producer.submit(rztasks.add, 1, 1).result(timeout=30) == 2
        status = producer.status()
    secret = worker.identity.decode()
    assert re.fullmatch(r"victim-[0-9a-f]{32}", secret)  # 128 random bits after the name
    label = status["worker_list"][0]["id"]
    assert re.fullmatch(r"victim-[0-9a-f]{8}", label) and label != secret
    assert secret not in json.dumps(status)
    assert [e.worker for e in events if e.kind == "leased"] == [label]


def test_lease_ids_come_from_the_operating_systems_csprng():
    ledger = Ledger(lease_s=1.0, max_attempts=1)
    assert isinstance(ledger._rng, secrets.SystemRandom)
    ledger.submit(1, b"x")
    ledger.submit(2, b"y")
    first, second = ledger.claim("w", 0.0), ledger.claim("w", 0.0)
    assert first.lease_id != second.lease_id


def curve_dealer(keys: Keys, name: str, server_public: bytes, identity: bytes, endpoint: str):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    make_curve_client(sock, load_keypair(keys.pair(name)), server_public)
    sock.setsockopt(zmq.ROUTING_ID, identity)
    sock.connect(endpoint)
    return sock


def test_an_authorised_key_cannot_take_another_workers_routing_id(make_producer, tmp_path):
    """With CURVE, an operator's key (authorised, e.g. for freelance-status) that connects
    with a victim's routing id gets neither the victim's jobs nor, once the victim is gone,
    anything under that id: the id is bound to the victim's key."""
    keys = Keys(tmp_path / "keys")
    producer = make_producer(secret_key=keys.pair("prod"),
                             authorized_workers=keys.trust("auth", "victim", "ops"))
    server_public = producer._curve.keys.public
    with InProcessWorker(connect=[producer.endpoint], key=keys.pair("victim"),
                         trust=keys.trust("victim-trust", "prod")) as worker:
        wait_until(lambda: producer.status()["parked_claims"] >= 1, 30, "the victim never claimed")
        thief = curve_dealer(keys, "ops", server_public, worker.identity, producer.endpoint)
        try:
            time.sleep(0.5)  # the thief's connection is up (or refused)
            thief.send_multipart(p.encode(p.Claim(rid=1, wait_ms=3000, tasks=("rztasks",))))
            futures = [producer.submit(rztasks.add, i, i) for i in range(5)]
            assert [f.result(timeout=30) for f in futures] == [0, 2, 4, 6, 8]
            assert not thief.poll(1000), "the thief got a reply meant for the victim"
        finally:
            thief.close()
    # the victim has left: its id is still bound to its key
    thief = curve_dealer(keys, "ops", server_public, worker.identity, producer.endpoint)
    try:
        thief.send_multipart(p.encode(p.Claim(rid=2, wait_ms=0, tasks=("rztasks",))))
        assert thief.poll(5000), "no answer"
        err = p.decode_reply(thief.recv_multipart())
        assert isinstance(err, p.Err) and "belongs to another client key" in err.message
    finally:
        thief.close()


def test_a_bad_message_from_an_anonymous_peer_is_logged_with_a_printable_name(make_producer, caplog):
    """A peer with ZeroMQ's own routing id (5 binary bytes, e.g. a status client) that sends
    a job id past the wire's limit: the producer's warning names it ``peer-xxxxxxxx``, never
    with its raw bytes; send_admin refuses such a job id before it is sent."""
    from freelance_rz.status import send_admin

    producer = make_producer(admin_token="admin-token-0123456789")
    with pytest.raises(ValueError, match="job_id must be an integer from 1 to 9223372036854775807"):
        send_admin(producer.endpoint, "admin-token-0123456789", "cancel", 2**63)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(producer.endpoint)
    try:
        with caplog.at_level(logging.WARNING, "freelance_rz"):
            sock.send_multipart(p.encode(p.Admin(rid=1, token="x" * 20, action="cancel", job_id=2**63)))
            assert sock.poll(10_000), "no ERR for the bad job id"
            assert isinstance(p.decode_reply(sock.recv_multipart()), p.Err)
            wait_until(lambda: any("bad message from" in r.getMessage() for r in caplog.records), 10,
                       "the producer never logged the bad message")
    finally:
        sock.close()
    [line] = [r.getMessage() for r in caplog.records if "bad message from" in r.getMessage()]
    assert re.match(r"bad message from peer-[0-9a-f]{8}: ", line), line
    assert line.isprintable() and "\ufffd" not in line, line

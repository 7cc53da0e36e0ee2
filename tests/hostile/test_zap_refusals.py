"""Issue 11 #11 (ZAP memory and warnings): a flood of CURVE clients with random keys that the
producer refuses costs it bounded memory (the last 256 refused keys) and bounded logging (at
most one warning line per second, the others summed up in "N more clients refused in the last
S s"), and every refused client is still accounted for in those lines.

Before the fix every refused key was kept in a set and got a warning line of its own: 2,000
random keys -> about 2,000 entries and 2,000 lines.
"""

from __future__ import annotations

import logging
import re
import time

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from freelance_rz.security import (
    ZAP_REMEMBERED_KEYS,
    CurveServer,
    _ZapLog,
    generate_keypair,
    load_keypair,
)

CLIENTS = 2_000
BATCH = 100  # clients connecting at once
SUMMARY = re.compile(r"^(\d+) more clients refused in the last [0-9.]+ s")


@pytest.fixture
def secured_router(tmp_path):
    """A ROUTER served by CurveServer on a context of its own, as a producer's offer socket
    is; yields (endpoint, server public key, CurveServer); everything closed after."""
    generate_keypair(tmp_path / "keys", "producer")
    generate_keypair(tmp_path / "authorized", "worker")
    keys = load_keypair(tmp_path / "keys" / "producer.key_secret")
    ctx: zmq.Context = zmq.Context()
    curve = CurveServer(keys, tmp_path / "authorized")
    curve.start(ctx)
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    curve.secure(router)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    try:
        yield f"tcp://127.0.0.1:{port}", keys.public, curve
    finally:
        router.close()
        curve.stop()
        ctx.term()


def refuse_clients(endpoint: str, server_key: bytes, count: int) -> int:
    """Connect ``count`` CURVE clients, each with a fresh random key, ``BATCH`` at a time;
    returns how many saw the producer refuse their key (EVENT_HANDSHAKE_FAILED_AUTH)."""
    ctx: zmq.Context = zmq.Context()
    refused = 0
    try:
        for start in range(0, count, BATCH):
            batch = []
            for _ in range(min(BATCH, count - start)):
                sock = ctx.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.RECONNECT_IVL, 60_000)  # one handshake per client
                public, secret = zmq.curve_keypair()
                sock.curve_publickey, sock.curve_secretkey = public, secret
                sock.curve_serverkey = server_key
                monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
                sock.connect(endpoint)
                batch.append((sock, monitor))
            for _, monitor in batch:
                if monitor.poll(20_000):
                    recv_monitor_message(monitor)
                    refused += 1
            for sock, monitor in batch:
                sock.disable_monitor()
                monitor.close()
                sock.close()
    finally:
        ctx.term()
    return refused


def refusal_lines(caplog) -> tuple[int, int, int]:
    """(warning lines, clients named one by one, clients counted in summary lines)."""
    lines = [r.getMessage() for r in caplog.records
             if r.name == "freelance_rz.security" and r.levelno == logging.WARNING]
    single = sum(1 for line in lines if line.startswith("refused a client: "))
    summed = sum(int(m.group(1)) for line in lines if (m := SUMMARY.match(line)))
    return len(lines), single, summed


def test_two_thousand_refused_keys_cost_bounded_memory_and_lines(secured_router, caplog):
    endpoint, server_key, curve = secured_router
    caplog.set_level(logging.WARNING, logger="freelance_rz.security")
    started = time.monotonic()
    refused = refuse_clients(endpoint, server_key, CLIENTS)
    elapsed = time.monotonic() - started
    assert refused == CLIENTS
    remembered = curve.zap_log.remembered
    curve.stop()  # writes the last summary line
    lines, single, summed = refusal_lines(caplog)
    print(f"{CLIENTS} refused keys in {elapsed:.1f} s: {lines} warning lines "
          f"({single} naming a key, {summed} clients in summaries), {remembered} keys remembered")
    # at most one line per second, plus the first one and the final summary
    assert lines <= elapsed / 1.0 + 3, lines
    assert single + summed == CLIENTS  # every refused client is accounted for
    assert remembered == ZAP_REMEMBERED_KEYS


def test_a_client_retrying_with_one_key_is_warned_about_once(secured_router, caplog):
    endpoint, server_key, curve = secured_router
    caplog.set_level(logging.WARNING, logger="freelance_rz.security")
    public, secret = zmq.curve_keypair()
    ctx: zmq.Context = zmq.Context()
    try:
        for _ in range(10):  # a misconfigured worker restarted again and again
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.curve_publickey, sock.curve_secretkey = public, secret
            sock.curve_serverkey = server_key
            monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
            sock.connect(endpoint)
            try:
                assert monitor.poll(20_000), "the producer never refused the key"
                recv_monitor_message(monitor)
            finally:
                sock.disable_monitor()
                monitor.close()
                sock.close()
    finally:
        ctx.term()
    curve.stop()
    lines, single, summed = refusal_lines(caplog)
    assert (lines, single, summed) == (1, 1, 0)
    assert public.decode() in caplog.text


def test_zap_strings_are_cleaned_and_bounded(caplog):
    now = [100.0]
    zap = _ZapLog(clock=lambda: now[0])
    caplog.set_level(logging.DEBUG)
    zap.debug("DENIED (CURVE) domain=%s client_key=%s", b"\x1b]0;owned\x07", b"K" * 5000)
    zap.error("Invalid ZAP message: %r %s", b"x", "\x1b[2J")
    zap.info("identity %s", "\u202eevil")
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    assert max(len(r.getMessage()) for r in caplog.records) < 500


def test_refusals_within_a_second_are_summed_up_in_the_next_line(caplog):
    now = [100.0]
    zap = _ZapLog(clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="freelance_rz.security")
    for i in range(5):  # within one second
        zap.debug("DENIED (CURVE) domain=%s client_key=%s", "*", f"key{i}")
        now[0] += 0.1
    now[0] = 101.5
    zap.debug("DENIED (CURVE) domain=%s client_key=%s", "*", "key5")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith("refused a client: DENIED (CURVE) domain=* client_key=key0")
    assert lines[1].startswith("5 more clients refused in the last 1.5 s")
    zap.flush()
    assert len(caplog.records) == 2  # nothing held back any more

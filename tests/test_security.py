"""CURVE security over real sockets and real mDNS on loopback: key files, authorised and
unauthorised workers, trusted and untrusted producers, and mixed settings that must fail loudly."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

import rztasks
from conftest import GROUP
from freelance_rz import JobFailed, JobTooLarge, Producer, Worker
from freelance_rz.core import wire as p
from freelance_rz.cli import keys_main
from freelance_rz.discovery import parse_announcement
from freelance_rz.security import generate_keypair, load_keypair, load_public_keys

pytestmark = pytest.mark.timeout(90)


class Keys:
    """A key directory with one pair per name, and helpers to build trust directories."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def pair(self, name: str) -> Path:
        secret = self.root / f"{name}.key_secret"
        if not secret.exists():
            generate_keypair(self.root, name)
        return secret

    def trust(self, label: str, *names: str) -> Path:
        directory = self.root / f"trust-{label}"
        directory.mkdir()
        for name in names:
            self.pair(name)
            shutil.copy(self.root / f"{name}.key", directory)
        return directory


@pytest.fixture
def keys(tmp_path) -> Keys:
    return Keys(tmp_path / "keys")


def wait_for_log(worker, text: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in worker.log():
        assert time.monotonic() < deadline, f"{worker.label} never logged {text!r}:\n{worker.log()}"
        time.sleep(0.05)


# --- key files and settings ---------------------------------------------------------------------


def test_generate_writes_a_pair_zmq_auth_reads_with_a_private_secret(tmp_path):
    public, secret = generate_keypair(tmp_path / "k", "host1")
    assert (public.name, secret.name) == ("host1.key", "host1.key_secret")
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o700
    pair = load_keypair(secret)
    assert zmq.auth.load_certificate(public) == (pair.public, None)
    assert load_keypair(public) == pair  # the public path finds its secret neighbour
    assert load_public_keys(tmp_path / "k") == {pair.public}
    assert sorted(f.name for f in (tmp_path / "k").iterdir()) == ["host1.key", "host1.key_secret"]
    # (no scratch directory left behind)
    with pytest.raises(FileExistsError):
        generate_keypair(tmp_path / "k", "host1")  # never overwrites a key
    for bad in ("", "../x", ".hidden"):
        with pytest.raises(ValueError):
            generate_keypair(tmp_path / "k", bad)


def test_freelance_keys_cli(tmp_path, capsys):
    assert keys_main(["generate", "w1", "--dir", str(tmp_path)]) == 0
    assert "w1.key_secret" in capsys.readouterr().out
    assert keys_main(["generate", "w1", "--dir", str(tmp_path)]) == 2
    assert "exists" in capsys.readouterr().err


def test_bad_key_settings_are_clear_errors(tmp_path, keys):
    secret = keys.pair("a")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="secret_key needs authorized_workers"):
        Producer(GROUP, secret_key=secret)
    with pytest.raises(ValueError, match="authorized_workers needs secret_key"):
        Producer(GROUP, authorized_workers=empty)
    with pytest.raises(ValueError, match="holds no public key"):
        Producer(GROUP, secret_key=secret, authorized_workers=empty)
    only_public = tmp_path / "public-only"
    only_public.mkdir()
    shutil.copy(keys.root / "a.key", only_public)
    with pytest.raises(ValueError, match="holds only a public key"):
        Producer(GROUP, secret_key=only_public / "a.key", authorized_workers=keys.trust("x", "b"))
    with pytest.raises(ValueError, match="cannot read a key pair"):
        Worker(["rztasks"], discover=True, key=tmp_path / "missing", trust=keys.trust("y", "a"))
    with pytest.raises(ValueError, match="^key needs trust"):
        Worker(["rztasks"], discover=True, key=secret)
    two = keys.trust("two", "a", "b")  # several keys with --connect: the producer's is probed
    assert Worker(["rztasks"], connect=["tcp://127.0.0.1:9"], key=secret, trust=two).connect


def test_announcement_carries_a_z85_public_key():
    base = {b"v": str(p.VERSION).encode(), b"id": b"x", b"g": b"g", b"ep": b"tcp://127.0.0.1:1"}
    key = zmq.curve_keypair()[0]
    assert parse_announcement("n", {**base, b"pk": key}).public_key == key
    assert parse_announcement("n", base).public_key is None
    assert parse_announcement("n", {**base, b"pk": b"short"}) is None
    assert parse_announcement("n", {**base, b"pk": b"\xff" * 40}) is None


# --- over real sockets ----------------------------------------------------------------------------


def secure_producer(make_producer, keys: Keys, name: str, *workers: str) -> Producer:
    return make_producer(
        secret_key=keys.pair(name), authorized_workers=keys.trust(f"{name}-workers", *workers)
    )


def test_authorised_worker_runs_jobs_and_an_unauthorised_one_cannot_claim(
    make_producer, start_worker, keys, caplog
):
    caplog.set_level("WARNING", logger="freelance_rz.security")
    producer = secure_producer(make_producer, keys, "prod", "good")
    rogue = start_worker(
        "rogue", "--key", str(keys.pair("rogue")), "--trust", str(keys.trust("rogue", "prod"))
    )
    future = producer.submit(rztasks.whoami)
    wait_for_log(rogue, f"refused this worker's key: copy {keys.root / 'rogue.key'} into", 10)
    assert not future.done() and producer.status()["leased"] == 0
    start_worker("good", "--key", str(keys.pair("good")), "--trust", str(keys.trust("good", "prod")))
    assert future.result(timeout=15)["worker"] == "good"
    assert "rogue" not in {w["id"].split("-")[0] for w in producer.status()["worker_list"]}
    rogue_key = load_keypair(keys.pair("rogue")).public.decode()
    refusals = [r.getMessage() for r in caplog.records if "refused a client" in r.getMessage()]
    assert len(refusals) == 1 and rogue_key in refusals[0]  # once, however often it retries


def test_plain_client_gets_nothing_from_a_secure_producer(make_producer, keys):
    producer = secure_producer(make_producer, keys, "prod", "good")
    producer.submit(rztasks.add, 1, 1)
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(producer.endpoint)
        sock.send_multipart(p.encode(p.Claim(rid=1, wait_ms=100, tasks=("rztasks",))))
        assert sock.poll(1500) == 0  # no handshake, no message
    finally:
        sock.close()
    assert producer.status()["pending"] == 1


def test_worker_serves_only_trusted_producers(make_producer, start_worker, keys):
    trusted = secure_producer(make_producer, keys, "trusted", "w1")
    untrusted = secure_producer(make_producer, keys, "untrusted", "w1")
    plain = make_producer()
    worker = start_worker(
        "w1", "--key", str(keys.pair("w1")), "--trust", str(keys.trust("w1", "trusted"))
    )
    assert trusted.submit(rztasks.add, 2, 3).result(timeout=15) == 5
    stranded = [untrusted.submit(rztasks.add, 1, 1), plain.submit(rztasks.add, 1, 1)]
    wait_for_log(worker, f"ignoring producer {untrusted.producer_id}", 10)
    wait_for_log(worker, f"ignoring producer {plain.producer_id}", 10)
    assert "is not in --trust" in worker.log() and "has no CURVE key" in worker.log()
    time.sleep(0.5)
    assert not any(f.done() for f in stranded)


def test_mixed_settings_fail_loudly(make_producer, start_worker, keys):
    secure = secure_producer(make_producer, keys, "prod", "w")
    secure.submit(rztasks.add, 1, 1)
    discovering = start_worker("plain")
    wait_for_log(discovering, "it requires CURVE keys; start the worker with --key and --trust", 10)
    connecting = start_worker("plain2", connect=secure.endpoint)
    wait_for_log(connecting, "the producer probably requires CURVE keys", 10)
    wrong_key = start_worker(  # trusts another key for this endpoint
        "wrongkey", "--key", str(keys.pair("w")), "--trust", str(keys.trust("other", "other")),
        connect=secure.endpoint,
    )
    wait_for_log(wrong_key, "the CURVE handshake failed", 10)
    assert secure.status()["pending"] == 1


def test_freelance_status_with_keys(make_producer, start_worker, keys):
    producer = secure_producer(make_producer, keys, "prod", "ops")
    ops = ["--key", str(keys.pair("ops")), "--trust", str(keys.trust("ops", "prod"))]

    def status(*args):
        return subprocess.run(
            [sys.executable, "-c", "import sys; from freelance_rz.cli import status_main; "
             "sys.exit(status_main())", *args, "--json"],
            capture_output=True, text=True, timeout=30,
        )

    found = status("--discover", "--group", GROUP, "--wait", "3", *ops)
    assert found.returncode == 0, found.stderr
    assert [row["producer_id"] for row in json.loads(found.stdout)] == [producer.producer_id]
    assert status("--connect", producer.endpoint, *ops).returncode == 0
    keyless = status("--connect", producer.endpoint)  # no key: said so
    assert keyless.returncode == 1 and "probably requires CURVE keys" in keyless.stdout
    stranger = ["--key", str(keys.pair("stranger")), "--trust", str(keys.trust("stranger", "prod"))]
    refused = status("--connect", producer.endpoint, *stranger)
    assert refused.returncode == 1
    assert f"refused this command's key: copy {keys.root / 'stranger.key'}" in refused.stdout


# --- size limits ----------------------------------------------------------------------------------


def test_result_over_the_producers_limit_fails_the_job_and_the_worker_goes_on(
    make_producer, start_worker
):
    producer = make_producer(max_payload_bytes=100_000)
    start_worker("w1")
    with pytest.raises(JobFailed) as info:
        producer.submit(rztasks.blob, 200_000).result(timeout=15)
    assert info.value.remote_type == "ResultTooLarge"
    assert "more than the producer's limit of 100000" in info.value.remote_message
    assert len(producer.submit(rztasks.blob, 50_000).result(timeout=15)) == 50_000


def test_oversized_frame_drops_its_connection_not_the_producer(make_producer, start_worker):
    producer = make_producer(max_payload_bytes=100_000)
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(producer.endpoint)
        sock.send_multipart([b"FRZ1", b"CLAIM", b"\0" * 1_000_000])  # ERR if it got through
        sock.send_multipart(p.encode(p.Status(rid=2)))  # the DEALER sends it on a new connection
        replies = []
        while sock.poll(1500):
            replies.append(p.decode_reply(sock.recv_multipart()))
        assert [type(r) for r in replies] == [p.StatusReply]
    finally:
        sock.close()
    start_worker("w1")
    assert producer.submit(rztasks.add, 1, 2).result(timeout=15) == 3


def test_worker_drops_a_job_over_its_limit_and_survives(make_producer, start_worker):
    """A job over every connected worker's --max-payload-bytes fails with JobTooLarge naming
    both limits (issue 12: before, the worker's MAXMSGSIZE dropped it and it was lost)."""
    producer = make_producer(max_attempts=1)
    worker = start_worker("w1", "--max-payload-bytes", "100000")
    with pytest.raises(JobTooLarge, match=r"takes 5000\d\d bytes .* at most 100000 .* up to 67108864"):
        producer.submit(rztasks.echo, b"x" * 500_000).result(timeout=30)
    assert producer.submit(rztasks.add, 2, 2).result(timeout=15) == 4
    assert worker.proc.poll() is None


def test_freelance_status_says_why_it_skips_a_producer():
    from freelance_rz.security import KeyPair
    from freelance_rz.status import vet_producers

    mine, other = zmq.curve_keypair()[0], zmq.curve_keypair()[0]
    found = [("tcp://a:1", None), ("tcp://b:1", mine), ("tcp://c:1", other)]
    usable, refused = vet_producers(found, None, None)
    assert usable == [("tcp://a:1", None)]
    assert [r["error"] for r in refused] == ["requires CURVE keys: give --key and --trust"] * 2
    usable, refused = vet_producers(found, KeyPair(b"p", b"s"), frozenset({mine}))
    assert usable == [("tcp://b:1", mine)]
    assert [(r["endpoint"], r["error"]) for r in refused] == [
        ("tcp://a:1", "has no CURVE key (this command has --key)"),
        ("tcp://c:1", "its public key is not in --trust"),
    ]

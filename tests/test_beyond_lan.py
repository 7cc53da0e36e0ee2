"""Beyond one LAN (issue 18), over real sockets on loopback with real worker processes: a
``--connect`` name, the endpoints file (producers writing their own lines, a line that comes
back after its producer was forgotten), CURVE with several trusted keys, ``advertise`` behind
a port relay, the worker's health file and ``freelance-status --check``, and DNS-SD against
a real DNS server (dnsmasq on loopback). The two-subnet run is tests/test_lab_beyond.py."""

from __future__ import annotations

import logging
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

import rztasks
from conftest import GROUP, LOOPBACK
from freelance_rz import Producer
from freelance_rz.core.wire import VERSION
from freelance_rz.endpointsfile import parse_text
from freelance_rz.lab import dnsmasq
from freelance_rz.lab.dnsmasq import DnsServer, Instance, Zone
from freelance_rz.security import generate_keypair, load_keypair

pytestmark = pytest.mark.timeout(120)


def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_status(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "import sys; from freelance_rz.cli import status_main; "
         "sys.exit(status_main())", *args],
        capture_output=True, text=True, timeout=60,
    )


# --- names ------------------------------------------------------------------------------------


def test_a_connect_name_is_resolved_to_its_addresses(make_producer, start_worker):
    producer = make_producer(announce=False)
    port = producer.endpoint.rsplit(":", 1)[1]
    worker = start_worker("w1", "--slots", "1", connect=f"tcp://localhost:{port}")
    assert producer.submit(rztasks.add, 2, 3).result(30) == 5
    log = worker.log()
    assert "--connect: localhost resolves to 127.0.0.1" in log, log
    assert f"producer tcp://127.0.0.1:{port} at tcp://127.0.0.1:{port}" in log, log


# --- the endpoints file -----------------------------------------------------------------------


def test_producers_list_themselves_in_a_file_and_workers_follow_it(make_producer, start_worker, tmp_path):
    """Producers add their own lines and remove them on close; the worker serves each one
    listed, forgets one whose line left once it stops answering, and logs a bad line once."""
    path = tmp_path / "producers.txt"
    p1 = make_producer(announce=False, endpoints_file=path)
    [line] = parse_text(path.read_text())[0]
    assert line.endpoints == (p1.endpoint,) and line.producer_id == p1.producer_id
    assert line.group == GROUP and line.version == VERSION and line.public_key is None
    worker = start_worker("w1", "--slots", "1", "--resolve-every-s", "1",
                          source=["--connect-file", str(path)])
    assert p1.submit(rztasks.add, 1, 1).result(30) == 2
    p2 = make_producer(announce=False, endpoints_file=path)
    assert p2.submit(rztasks.add, 2, 2).result(30) == 4  # a line added: used
    with open(path, "a") as f:
        f.write("tcp://127.0.0.1:99999 this line is bad\n")
    p2.close()  # its line leaves the file, and it stops answering
    assert [a.endpoints[0] for a in parse_text(path.read_text())[0]] == [p1.endpoint]
    wait_for(lambda: f"at {p2.endpoint} forgotten: it withdrew its announcement" in worker.log(), 20,
             "the worker did not forget the closed producer")
    for _ in range(3):  # read again: the bad line is not logged again
        path.touch()
        time.sleep(1.2)
    assert worker.log().count("is not an endpoint") == 1, worker.log()
    assert p1.submit(rztasks.add, 3, 3).result(30) == 6


def test_a_line_back_after_its_producer_was_forgotten_is_used_at_once(start_worker, tmp_path):
    """A hand-written line without an id: its producer stops, is forgotten (--give-up-s 2),
    its line is removed; a new producer at that endpoint with the line back is served at once,
    not after the minute a forgotten producer waits to be asked again."""
    path = tmp_path / "producers.txt"
    port = free_tcp_port()
    line = f"tcp://127.0.0.1:{port}\n"
    path.write_text(line)
    first = Producer(GROUP, interfaces=LOOPBACK, port=port, announce=False).start()
    worker = start_worker("w1", "--slots", "1", "--give-up-s", "2", "--resolve-every-s", "1",
                          source=["--connect-file", str(path)])
    try:
        assert first.submit(rztasks.add, 1, 2).result(30) == 3
    finally:
        first.close()
    wait_for(lambda: "forgotten: it stopped answering" in worker.log(), 30, "never forgotten")
    path.write_text("")
    time.sleep(1.5)  # the worker reads the file without the line
    second = Producer(GROUP, interfaces=LOOPBACK, port=port, announce=False).start()
    try:
        path.write_text(line)
        started = time.monotonic()
        assert second.submit(rztasks.add, 2, 2).result(20) == 4
        print(f"served {time.monotonic() - started:.2f} s after its line came back")
    finally:
        second.close()


# --- CURVE with several trusted keys ----------------------------------------------------------


def test_several_trusted_keys_the_producers_is_found_by_a_handshake(make_producer, start_worker, tmp_path):
    keys = tmp_path / "keys"
    for name in ("p1", "p2", "other", "w1"):
        generate_keypair(keys, name)
    authorized, trust = tmp_path / "authorized", tmp_path / "trust"
    authorized.mkdir()
    trust.mkdir()
    shutil.copy(keys / "w1.key", authorized)
    for name in ("p1", "p2", "other"):
        shutil.copy(keys / f"{name}.key", trust)
    p1 = make_producer(announce=False, secret_key=keys / "p1.key_secret", authorized_workers=authorized)
    p2 = make_producer(announce=False, secret_key=keys / "p2.key_secret", authorized_workers=authorized)
    path = tmp_path / "producers.txt"
    path.write_text(f"{p2.endpoint}\n")  # a line that names no key
    worker = start_worker("w1", "--slots", "1", "--key", str(keys / "w1.key_secret"), "--trust", str(trust),
                          source=["--connect", p1.endpoint, "--connect-file", str(path)])
    assert p1.submit(rztasks.add, 1, 1).result(30) == 2
    assert p2.submit(rztasks.add, 2, 2).result(30) == 4
    log = worker.log()
    for name, producer in (("p1", p1), ("p2", p2)):
        assert (f"producer at {producer.endpoint} holds the CURVE key of {name}.key (one of 3 in "
                "--trust)") in log, log
    # freelance-status finds the keys the same way
    shown = run_status("--connect", p1.endpoint, p2.endpoint, "--key", str(keys / "w1.key_secret"),
                       "--trust", str(trust), "--check")
    assert shown.returncode == 0 and shown.stdout.startswith("ok: 2 producer(s) answered"), shown
    # a line naming a key that is not trusted is refused, as an mDNS announcement would be
    stranger = load_keypair(keys / "w1.key_secret").public.decode()
    p3 = make_producer(announce=False, secret_key=keys / "p1.key_secret", authorized_workers=authorized)
    path.write_text(f"{p2.endpoint}\n{p3.endpoint} pk={stranger}\n")
    wait_for(lambda: f"ignoring producer {p3.endpoint}" in worker.log(), 20, "not refused")
    assert "its public key is not in --trust" in worker.log()


# --- advertise ---------------------------------------------------------------------------------


class Relay:
    """A TCP port relay (a NAT's port forward, a container's published port): connections
    to ``port`` are carried to ``target``. Counts them."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.accepted = 0
        self.sockets: list[socket.socket] = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            self.accepted += 1
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.closed = True
        self.server.close()
        for sock in self.sockets:
            sock.close()


def test_a_producer_advertises_the_address_workers_reach_it_at(start_worker, tmp_path):
    """The producer binds one port and announces another (on mDNS and in the file) that a
    relay forwards to it: workers connect to the announced one, and jobs flow through it."""
    bound = free_tcp_port()
    relay = Relay(bound)
    path = tmp_path / "producers.txt"
    producer = Producer(GROUP, interfaces=LOOPBACK, port=bound, advertise=f"127.0.0.1:{relay.port}",
                        endpoints_file=path).start()
    try:
        assert producer.endpoint == f"tcp://127.0.0.1:{bound}"
        assert producer.advertise == f"tcp://127.0.0.1:{relay.port}"
        assert parse_text(path.read_text())[0][0].endpoints == (producer.advertise,)
        worker = start_worker("w1", "--slots", "1")  # mDNS on loopback
        assert producer.submit(rztasks.add, 4, 4).result(30) == 8
        assert f"at tcp://127.0.0.1:{relay.port}" in worker.log() and relay.accepted >= 1
    finally:
        producer.close()
        relay.close()
    with pytest.raises(ValueError, match="advertise must be 'HOST:PORT'"):
        Producer(GROUP, advertise="no-port")
    with pytest.raises(ValueError, match="advertise must be 'HOST:PORT'"):
        Producer(GROUP, advertise="10.0.0.1:0")


# --- health -----------------------------------------------------------------------------------


def test_health_checks_for_probes(make_producer, start_worker, tmp_path):
    producer = make_producer(announce=False)
    ok = run_status("--check", "--connect", producer.endpoint)
    assert ok.returncode == 0 and ok.stdout.startswith("ok: 1 producer(s) answered"), ok
    assert ok.stdout.count("\n") == 1
    health = tmp_path / "w1.health"
    worker = start_worker("w1", "--slots", "2", "--health-file", str(health), connect=producer.endpoint)
    assert producer.submit(rztasks.add, 1, 1).result(30) == 2
    wait_for(lambda: "1 job(s) run" in run_status("--check", "--health-file", str(health)).stdout, 10,
             "the health file never said the job was run")
    fresh = run_status("--check", "--health-file", str(health))
    assert fresh.returncode == 0, fresh
    assert fresh.stdout.startswith("ok: worker w1: 1 of 1 producer(s) answering, 0 of 2 slot(s) busy")
    worker.signal_group(signal.SIGSTOP)  # a stuck worker: its file goes stale
    try:
        time.sleep(2.0)
        stale = run_status("--check", "--health-file", str(health), "--max-age-s", "1")
        assert stale.returncode == 1 and "not updated for" in stale.stdout, stale
    finally:
        worker.signal_group(signal.SIGCONT)
    worker.signal_group(signal.SIGTERM)
    worker.wait(20)
    gone = run_status("--check", "--health-file", str(health))
    assert gone.returncode == 1 and gone.stdout.startswith("unhealthy: no health file"), gone
    producer.close()
    down = run_status("--check", "--connect", producer.endpoint)
    assert down.returncode == 1 and "unhealthy: 0 of 1 producer(s) answered" in down.stdout, down
    assert "could not connect" in down.stdout


@pytest.mark.parametrize("content", [
    b"not json", b"\xff\xfe", b"[1, 2]", b'{"time": "soon"}', b'{"time": 1e999}',
    b'{"time": ' + b"9" * 400 + b"}", b"[" * 60_000, b"",
])
def test_a_bad_health_file_is_unhealthy_with_a_reason(tmp_path, content):
    """Whatever the file holds, --check answers one line and exit code 1 (it crashed with
    UnboundLocalError on a file that is not JSON)."""
    health = tmp_path / "w1.health"
    health.write_bytes(content)
    bad = run_status("--check", "--health-file", str(health))
    assert bad.returncode == 1, bad
    assert bad.stdout == f"unhealthy: {health} is not a worker's health file\n", bad
    assert bad.stderr == "", bad


# --- DNS-SD against a real DNS server ---------------------------------------------------------


@pytest.fixture
def dns_server(tmp_path):
    ok, reason = dnsmasq.available()
    if not ok:
        pytest.skip(reason)
    servers: list[DnsServer] = []

    def start(zone: Zone) -> DnsServer:
        server = dnsmasq.start_on_free_port("127.0.0.1", zone, tmp_path)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def test_dns_sd_reads_ptr_srv_txt_and_skips_what_is_malformed(dns_server, caplog):
    from freelance_rz.dnssd import DnsSdSource

    service = "_freelance-rz._tcp.rz.test"
    good = (f"v={VERSION}", "id=p1", f"g={GROUP}")
    zone = Zone("rz.test", service, names={"h1.rz.test": ["127.0.0.1"], "h2.rz.test": ["127.0.0.2"]},
                instances=[Instance("p1", "h1.rz.test", 5555, good),
                           Instance("p2", "h2.rz.test", 5556, (f"v={VERSION}", "id=p2", "g=other")),
                           Instance("bad", "h1.rz.test", 5557, (f"v={VERSION}", "id=no good", f"g={GROUP}")),
                           Instance("lost", "nowhere.rz.test", 5558, good)])
    server = dns_server(zone)
    source = DnsSdSource(service, GROUP, nameservers=["127.0.0.1"], port=server.port)
    with caplog.at_level(logging.WARNING, "freelance_rz.sources"):
        for _ in range(3):
            found = source.read()
    assert found is not None and list(found) == [f"p1.{service}."]
    assert found[f"p1.{service}."].endpoints == ("tcp://127.0.0.1:5555",)
    assert found[f"p1.{service}."].producer_id == "p1"  # p2: another group, skipped quietly
    warned = sorted(r.message for r in caplog.records)
    assert len(warned) == 2 and "bad." in warned[0] and "lost." in warned[1], warned
    assert DnsSdSource("_nothing._tcp.rz.test", GROUP, nameservers=["127.0.0.1"],
                       port=server.port).read() == {}  # NXDOMAIN: an answer, no producer
    server.stop()
    caplog.clear()
    with caplog.at_level(logging.WARNING, "freelance_rz.sources"):
        quiet = DnsSdSource(service, GROUP, nameservers=["127.0.0.1"], port=server.port, lifetime_s=0.3)
        assert quiet.read() is None and quiet.read() is None  # no answer: it cannot tell
    assert sum("no answer from DNS" in r.message for r in caplog.records) == 1


def test_status_reads_the_same_sources(make_producer, tmp_path):
    path = tmp_path / "producers.txt"
    make_producer(announce=False, endpoints_file=path)
    make_producer(announce=False, endpoints_file=path)
    shown = run_status("--connect-file", str(path), "--group", GROUP, "--json")
    assert shown.returncode == 0, shown
    assert shown.stdout.count('"producer_id"') == 2
    empty = tmp_path / "empty.txt"
    empty.write_text("# nobody yet\n")
    none = run_status("--connect-file", str(empty), "--group", GROUP)
    assert none.returncode == 1 and "no producer of group" in none.stderr


def test_a_key_probe_backs_off_only_when_no_key_matched():
    """Nothing answering (a producer not up yet) is probed again at the next read; a
    producer that answered with no trusted key, after a growing pause."""
    import zmq

    from freelance_rz.security import KeyPair
    from freelance_rz.sources import KeyFinder

    public, secret = zmq.curve_keypair()
    trusted = {zmq.curve_keypair()[0]: "a.key", zmq.curve_keypair()[0]: "b.key"}
    finder = KeyFinder(zmq.Context.instance(), KeyPair(public, secret), trusted, every_s=1.0)
    down = f"tcp://127.0.0.1:{free_tcp_port()}"
    plain = zmq.Context.instance().socket(zmq.ROUTER)  # a producer without CURVE
    try:
        plain_ep = f"tcp://127.0.0.1:{plain.bind_to_random_port('tcp://127.0.0.1')}"
        for _ in range(3):
            for endpoint in (down, plain_ep):
                pause, _ = finder._failed.get(endpoint, (0.0, 0.0))
                finder._failed[endpoint] = (pause, 0.0)  # due now
                assert finder.key_for(endpoint) is None
        assert finder._failed[down][0] == 1.0  # the resolve interval, every time
        assert finder._failed[plain_ep][0] == 4.0  # 1, 2, 4: growing
    finally:
        plain.close(0)

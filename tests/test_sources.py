"""Sources of producers beyond mDNS (issue 18), without sockets: endpoints file lines, DNS-SD
records, re-resolved names and what a source thread posts. Everything a source yields is
checked as strictly as an mDNS TXT record, and nothing malformed raises (Hypothesis)."""

from __future__ import annotations

import logging
import multiprocessing
import time

import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from freelance_rz.core.wire import VERSION
from freelance_rz.discovery import Announcement, parse_announcement, parse_entries
from freelance_rz.dnssd import DnsSdSource, check_service, instance_announcement, txt_entries
from freelance_rz.endpointsfile import add_entry, format_line, parse_line, parse_text, remove_entry
from freelance_rz.sources import ConnectSource, FileSource, Names, SourceThread, per_address

KEY = zmq.curve_keypair()[0].decode()
HASH_KEY = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]y#7"  # 40 Z85 characters, one of them '#'


# --- the endpoints file -----------------------------------------------------------------------


def test_a_file_line_names_an_endpoint_and_optionally_its_entries():
    bare = parse_line("tcp://10.0.0.5:5555")
    assert isinstance(bare, Announcement)
    assert bare.endpoints == ("tcp://10.0.0.5:5555",) and bare.producer_id is None
    assert bare.public_key is None and bare.group == "" and bare.version == VERSION
    assert bare.source == "file" and bare.name == "file:tcp://10.0.0.5:5555"
    full = parse_line(f"  tcp://producers.example.org:5555  id=p1 g=thumbs sk=store-1 pk={HASH_KEY}"
                      "  # the first producer")
    assert isinstance(full, Announcement)
    assert (full.producer_id, full.group, full.store_key) == ("p1", "thumbs", "store-1")
    assert full.public_key == HASH_KEY.encode()  # a '#' inside a key is no comment
    assert parse_line("tcp://10.0.0.5:5555 colour=red").endpoints  # unknown entries: ignored
    assert parse_line("") is None and parse_line("   # only a comment") is None


@pytest.mark.parametrize("line, why", [
    ("10.0.0.5:5555", "is not an endpoint"),
    ("tcp://10.0.0.5:0", "is not an endpoint"),
    ("tcp://999.0.0.1:5555", "is not an endpoint"),
    ("tcp://10.0.0.5:5555 pk", "is not key=value"),
    ("tcp://10.0.0.5:5555 pk=short", "an entry is malformed"),
    ("tcp://10.0.0.5:5555 id=has/slash", "an entry is malformed"),
    ("tcp://10.0.0.5:5555 v=two", "an entry is malformed"),
    ("tcp://10.0.0.5:5555 g=" + "x" * 64, "an entry is malformed"),
    ("tcp://10.0.0.5:5555 id=" + "x" * 2000, "longer than"),
])
def test_a_malformed_file_line_says_why(line, why):
    parsed = parse_line(line)
    assert isinstance(parsed, str) and why in parsed, parsed


def test_a_file_is_read_line_by_line_and_bad_lines_are_reported():
    text = "tcp://10.0.0.5:5555\nnonsense\n\ntcp://10.0.0.5:5555 id=dup\ntcp://10.0.0.6:5555 pk=x\n"
    entries, problems = parse_text(text)
    assert [a.endpoints[0] for a in entries] == ["tcp://10.0.0.5:5555"]
    assert entries[0].producer_id is None  # the first line of an endpoint wins
    assert [(n, why.split()[0]) for n, _, why in problems] == [(2, "'nonsense'"), (5, "an")]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_no_file_content_raises(text):
    entries, problems = parse_text(text)
    for announcement in entries:
        assert announcement.endpoints and announcement.source == "file"


def test_a_producer_line_is_added_replaced_and_removed(tmp_path):
    path = tmp_path / "producers.txt"
    path.write_text("# fleet\ntcp://10.0.0.9:5555\n")
    line = add_entry(path, "tcp://10.0.0.5:5555", {"id": "p1", "g": "g", "sk": None, "pk": KEY})
    assert line == f"tcp://10.0.0.5:5555 id=p1 g=g pk={KEY}"
    add_entry(path, "tcp://10.0.0.5:5555", {"id": "p2"})  # a new process at that endpoint
    assert path.read_text() == "# fleet\ntcp://10.0.0.9:5555\ntcp://10.0.0.5:5555 id=p2\n"
    remove_entry(path, "tcp://10.0.0.5:5555")
    assert path.read_text() == "# fleet\ntcp://10.0.0.9:5555\n"
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["producers.txt", "producers.txt.lock"]
    remove_entry(tmp_path / "missing.txt", "tcp://10.0.0.5:5555")  # nothing to remove: no file
    assert not (tmp_path / "missing.txt").exists()
    with pytest.raises(ValueError, match="entry"):
        format_line("tcp://10.0.0.5:5555", {"pk": "not a key"})


def _add_many(path: str, first: int) -> None:
    for i in range(first, first + 25):
        add_entry(path, f"tcp://10.0.{i // 250}.{i % 250 + 1}:5555", {"id": f"p{i}"})


def test_producers_writing_at_once_lose_no_line(tmp_path):
    """Four processes add 25 lines each to one file at the same time: under the lock, with
    the rename, every line is there in the end and a reader never sees a torn file."""
    path = tmp_path / "producers.txt"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_add_many, args=(str(path), 25 * k)) for k in range(4)]
    for proc in procs:
        proc.start()
    seen_problems = 0
    while any(proc.is_alive() for proc in procs):
        if path.exists():
            seen_problems += len(parse_text(path.read_text())[1])
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0
    entries, problems = parse_text(path.read_text())
    assert len(entries) == 100 and not problems and seen_problems == 0


# --- DNS-SD records ---------------------------------------------------------------------------


INSTANCE = "p1._freelance-rz._tcp.example.org."
TXT = [f"v={VERSION}".encode(), b"id=p1", b"g=thumbs", f"pk={KEY}".encode()]


def test_an_instance_is_its_srv_target_addresses_and_its_txt_entries():
    srv = [(10, 0, 5556, "backup.example.org."), (0, 5, 5555, "host1.example.org.")]
    addresses = {"host1.example.org.": ["10.0.0.5", "10.0.0.6"], "backup.example.org.": ["10.0.0.7"]}
    found = instance_announcement(INSTANCE, srv, TXT + [b"ep=tcp://6.6.6.6:1"], addresses)
    assert isinstance(found, Announcement)
    assert found.endpoints == ("tcp://10.0.0.5:5555", "tcp://10.0.0.6:5555", "tcp://10.0.0.7:5556")
    assert (found.producer_id, found.group, found.public_key) == ("p1", "thumbs", KEY.encode())
    assert found.source == "dns-sd" and found.name == INSTANCE


@pytest.mark.parametrize("srv, txt, addresses, why", [
    ([], TXT, {}, "no SRV record"),
    ([(0, 0, 5555, "h.")], TXT, {}, "no IPv4 address"),
    ([(0, 0, 5555, ".")], TXT, {".": ["10.0.0.5"]}, "no IPv4 address"),
    ([(0, 0, 5555, "h.")], [b"\xff"], {"h.": ["10.0.0.5"]}, "not UTF-8"),
    ([(0, 0, 5555, "h.")], [b"v=1", b"g=x"], {"h.": ["10.0.0.5"]}, "missing or malformed"),
    ([(0, 0, 5555, "h.")], [*TXT[:3], b"pk=short"], {"h.": ["10.0.0.5"]}, "missing or malformed"),
    ([(0, 0, 5555, "h.")], [b"v=1", b"id=a b", b"g=x"], {"h.": ["10.0.0.5"]}, "missing or malformed"),
])
def test_a_malformed_instance_says_why(srv, txt, addresses, why):
    found = instance_announcement(INSTANCE, srv, txt, addresses)
    assert isinstance(found, str) and why in found, found


def test_txt_entries_follow_rfc_6763():
    assert txt_entries([b"ID=a", b"id=b", b"flag", b"=x", b"g="]) == {"id": "a", "g": ""}
    assert txt_entries([b"\xff"]) is None


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(-1, 70000), st.integers(-1, 70000), st.integers(-1, 70000),
                       st.sampled_from(["h.", ".", "", "x."])), max_size=5),
    st.lists(st.binary(max_size=80), max_size=8),
    st.dictionaries(st.sampled_from(["h.", "x."]), st.lists(st.sampled_from(
        ["10.0.0.5", "999.1.1.1", "0.0.0.0", "::1", "x"]), max_size=3)),
)
def test_no_dns_record_raises(srv, txt, addresses):
    found = instance_announcement(INSTANCE, srv, txt, addresses)
    assert isinstance(found, (str, Announcement))


def test_mdns_txt_keeps_its_rules():
    """The TXT rules, now shared (parse_entries), still refuse what they refused."""
    base = {b"v": b"1", b"id": b"x", b"g": b"g", b"ep": b"tcp://127.0.0.1:1"}
    assert parse_announcement("n", base) is not None
    for key, bad in ((b"id", b""), (b"g", b""), (b"g", b"x" * 64), (b"v", b"one"), (b"sk", b"a/b")):
        assert parse_announcement("n", {**base, key: bad}) is None, (key, bad)
    assert parse_announcement("n", {**base, b"g": b"\xff"}) is None
    assert parse_entries("n", {"ep": "tcp://127.0.0.1:1"}) is None  # mDNS needs id, g, v


def test_a_service_must_be_a_dns_name():
    assert check_service("_freelance-rz._tcp.example.org") == "_freelance-rz._tcp.example.org."
    for bad in ("", ".", "a..b", "x" * 64 + ".org"):
        with pytest.raises(ValueError, match="--discover-dns"):
            DnsSdSource(bad, "g")


# --- names and what a source thread posts ----------------------------------------------------


class FakeResolver:
    """Answers as a resolver would: addresses, () for no such name, None for no answer."""

    def __init__(self) -> None:
        self.answers: dict[str, tuple[str, ...] | None] = {}
        self.asked: list[str] = []

    def __call__(self, host: str) -> tuple[str, ...] | None:
        self.asked.append(host)
        return self.answers.get(host, ())


def test_a_name_is_every_address_and_a_resolver_failure_changes_nothing(caplog):
    resolver = FakeResolver()
    source = ConnectSource(["tcp://producers.svc:5555", "tcp://10.0.0.9:5555"], resolve=resolver)
    resolver.answers["producers.svc"] = ("10.0.0.1", "10.0.0.2")
    first = source.read()
    assert first is not None and sorted(first) == [
        "tcp://producers.svc:5555@10.0.0.1", "tcp://producers.svc:5555@10.0.0.2"]
    assert {a.endpoints for a in first.values()} == {("tcp://10.0.0.1:5555",), ("tcp://10.0.0.2:5555",)}
    assert all(a.source == "connect" and a.producer_id is None for a in first.values())
    assert resolver.asked == ["producers.svc"]  # an address is never resolved
    resolver.answers["producers.svc"] = None  # the DNS server does not answer
    with caplog.at_level(logging.WARNING, "freelance_rz.sources"):
        assert source.read() == first and source.read() == first
    assert sum("cannot resolve producers.svc" in r.message for r in caplog.records) == 1
    resolver.answers["producers.svc"] = ()  # NXDOMAIN: an answer, no producer
    assert source.read() == {}
    static = ConnectSource(["tcp://10.0.0.9:5555"], static=True, resolve=resolver).read()
    assert static is not None and [a.source for a in static.values()] == ["static"]


def test_per_address_keeps_the_entries_of_a_file_line():
    resolver = FakeResolver()
    resolver.answers["p.example"] = ("10.0.0.3",)
    line = parse_line(f"tcp://p.example:7 id=p3 pk={KEY}")
    assert isinstance(line, Announcement)
    [(name, found)] = per_address(line, Names(resolver)).items()
    assert name == "file:tcp://p.example:7@10.0.0.3" and found.endpoints == ("tcp://10.0.0.3:7",)
    assert (found.producer_id, found.public_key, found.source) == ("p3", KEY.encode(), "file")


def test_a_file_source_skips_other_groups_and_logs_each_bad_line_once(tmp_path, caplog):
    path = tmp_path / "eps"
    source = FileSource(path, "mine", resolve=FakeResolver())
    assert source.read() == {}  # no file yet: no producer
    path.write_text(f"tcp://10.0.0.1:1 g=mine\ntcp://10.0.0.2:1 g=theirs\ntcp://10.0.0.3:1 v={VERSION + 1}\n"
                    "garbage\ntcp://10.0.0.4:1\n")
    assert source.changed()
    with caplog.at_level(logging.INFO, "freelance_rz.sources"):
        for _ in range(3):
            found = source.read()
    assert not source.changed()
    assert found is not None and sorted(found) == ["file:tcp://10.0.0.1:1", "file:tcp://10.0.0.4:1"]
    warned = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2 and "line 4" in warned[0] and "version" in warned[1], warned


class ListSource:
    label = "test"

    def __init__(self) -> None:
        self.now: dict[str, Announcement] | None = {}

    def read(self) -> dict[str, Announcement] | None:
        return self.now

    def changed(self) -> bool:
        return False


def announcement(name: str, endpoint: str) -> Announcement:
    return Announcement(name, None, "", VERSION, (endpoint,), source="connect")


def test_a_source_thread_posts_every_announcement_and_each_name_that_left():
    source, posted = ListSource(), []
    thread = SourceThread(source, lambda a: posted.append(("found", a.name)),
                          lambda n: posted.append(("gone", n)), every_s=10.0, keys=None)
    a, b = announcement("a", "tcp://10.0.0.1:1"), announcement("b", "tcp://10.0.0.2:1")
    thread.publish({"a": a, "b": b})
    thread.publish({"a": a})
    thread.publish({"a": a, "b": b})
    assert posted == [("found", "a"), ("found", "b"), ("found", "a"), ("gone", "b"),
                      ("found", "a"), ("found", "b")]
    thread.close()  # never started: returns at once
    thread.publish({})
    assert posted[-1] == ("found", "b")  # nothing is posted after close


def test_a_source_read_that_cannot_tell_posts_nothing(tmp_path):
    source, posted = ListSource(), []
    source.now = {"a": announcement("a", "tcp://10.0.0.1:1")}
    thread = SourceThread(source, lambda a: posted.append(a.name), lambda n: posted.append("-" + n),
                          every_s=0.05, keys=None)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not posted and time.monotonic() < deadline:
            time.sleep(0.01)
        source.now = None  # e.g. a DNS timeout
        time.sleep(0.3)
        assert posted and set(posted) == {"a"}  # never "gone" for a source that could not tell
    finally:
        thread.close()

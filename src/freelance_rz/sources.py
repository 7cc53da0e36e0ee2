"""Where producers are found beyond one LAN (DESIGN §11): host names resolved and re-resolved,
DNS-SD over unicast DNS (:mod:`freelance_rz.dnssd`) and an endpoints file
(:mod:`freelance_rz.endpointsfile`).

mDNS stops at the subnet, at Docker bridges and at Kubernetes pod networks; ordinary DNS and
a shared file do not. Every source here is a hint, exactly as mDNS is: it yields
:class:`~freelance_rz.discovery.Announcement`\\ s, which a worker's peer table takes by the
same rules as mDNS announcements (:mod:`freelance_rz.worker.peers`: a peer is an endpoint,
nothing is replaced or dropped on a source's word alone while it answers, at most
``max_producers`` are kept). Liveness comes from the ZeroMQ conversation, never from DNS TTLs
or from the file.

Theory of operation
-------------------
- A :class:`Source` reads what it says now: ``{name: Announcement}``, one announcement per
  producer address (a name within its source, e.g. ``tcp://producers:5555@10.1.2.3``), or
  None when it cannot tell (a DNS timeout, an unreadable file), which changes nothing. A name
  that does not exist (NXDOMAIN) is an answer: no address.
- A :class:`SourceThread` reads its source every ``every_s`` seconds (``--resolve-every-s``,
  default :data:`RESOLVE_EVERY_S`) and at once when :meth:`Source.changed` says so (a file's
  size, time or inode, looked at every :data:`POLL_S`). With CURVE, an announcement that
  names no key gets the key of the producer found at its endpoint (:class:`KeyFinder`).
  Then it posts ``found`` for every announcement read (new, changed or the same: a refresh,
  as mDNS re-browsing does) and ``gone`` for each name no longer there (a hint, like an mDNS
  goodbye: the worker asks the producer, and forgets it only if it stops answering).
"""

from __future__ import annotations

import collections
import ipaddress
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import zmq

from .core.text import clean
from .core.wire import VERSION, parse_endpoint
from .discovery import Announcement
from .endpointsfile import MAX_FILE_BYTES, parse_text
from .security import NO_KEY_MATCHED, KeyPair, probe_server_key

log = logging.getLogger("freelance_rz.sources")

RESOLVE_EVERY_S = 10.0  # names, DNS-SD and the file's names are read again this often (seconds)
POLL_S = 1.0  # a file source's stat is looked at this often (seconds)
MAX_ADDRESSES = 256  # addresses taken from one name (a worker keeps at most 256 producers anyway)
PROBE_TIMEOUT_S = 1.0  # a CURVE key probe waits this long for a handshake (one round trip if up)
PROBE_RETRY_MAX_S = 300.0  # an endpoint whose key was not found is probed again after a pause
MAX_LOGGED = 256  # distinct problems remembered so each is logged once

#: Announcement.source of the sources here
CONNECT, STATIC, FILE, DNS_SD = "connect", "static", "file", "dns-sd"


class Source(Protocol):
    """A source of producers (see the module docstring)."""

    label: str  # for logs, e.g. "--connect tcp://producers:5555"

    def read(self) -> dict[str, Announcement] | None:
        """What the source says now, by name, or None when it cannot tell."""
        ...

    def changed(self) -> bool:
        """Whether it should be read before its time (cheap; called every POLL_S)."""
        ...


class OnceLog:
    """Logs each distinct problem once (the last MAX_LOGGED remembered): a malformed DNS
    record or file line costs one line, not one per read."""

    def __init__(self) -> None:
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()

    def __call__(self, level: int, message: str) -> None:
        if message in self._seen:
            self._seen.move_to_end(message)
            return
        self._seen[message] = None
        while len(self._seen) > MAX_LOGGED:
            self._seen.popitem(last=False)
        log.log(level, "%s", message)

    def clear(self, prefix: str) -> None:
        """Forget the problems starting with ``prefix`` (they were fixed: log them again if
        they come back)."""
        for message in [m for m in self._seen if m.startswith(prefix)]:
            del self._seen[message]


# --- names ------------------------------------------------------------------------------------


def is_address(host: str) -> bool:
    """Whether ``host`` (of a ``tcp://HOST:PORT``) is an IP address rather than a name."""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


_NO_SUCH_NAME = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


def resolve_host(host: str) -> tuple[str, ...] | None:
    """The IPv4 addresses of ``host`` (sorted, at most MAX_ADDRESSES), through the system's
    resolver (``getaddrinfo``: /etc/hosts, DNS with the search domains of resolv.conf, so a
    Kubernetes Service's short name works); ``()`` when the name does not exist or has no
    IPv4 address; None when the resolver could not tell (a timeout, no DNS server)."""
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return () if exc.errno in _NO_SUCH_NAME else None
    except (UnicodeError, OSError):
        return None
    found = {str(info[4][0]) for info in infos}
    return tuple(sorted(found, key=ipaddress.IPv4Address)[:MAX_ADDRESSES])


class Names:
    """Resolves host names, remembering each name's last answer, so that a resolver that
    cannot tell (None) changes nothing, and logging when a name's addresses change.

    Args:
        resolve: ``host -> addresses | () | None`` (default :func:`resolve_host`).
        what: how logs name the option the names come from.
    """

    def __init__(self, resolve: Callable[[str], tuple[str, ...] | None] = resolve_host,
                 what: str = "--connect") -> None:
        self._resolve = resolve
        self._last: dict[str, tuple[str, ...]] = {}
        self._what = what
        self._once = OnceLog()

    def addresses(self, host: str) -> tuple[str, ...]:
        """``host``'s addresses now (an IP address is its own)."""
        if is_address(host):
            return (host,)
        found = self._resolve(host)
        last = self._last.get(host)
        if found is None:
            self._once(logging.WARNING, f"{self._what}: cannot resolve {clean(host)} now; "
                       f"keeping its last {len(last or ())} address(es)")
            return last or ()
        self._once.clear(f"{self._what}: cannot resolve {clean(host)} ")
        if found != last:
            log.info("%s: %s resolves to %s", self._what, clean(host),
                     ", ".join(found) if found else "no address (yet)")
        self._last[host] = found
        return found

    def keep_only(self, hosts: set[str]) -> None:
        """Forget the names no longer asked for (bounded memory)."""
        for host in [h for h in self._last if h not in hosts]:
            del self._last[host]


def per_address(announcement: Announcement, names: Names) -> dict[str, Announcement]:
    """One announcement per address of its (first) endpoint's host, named
    ``NAME@ADDRESS``; the announcement itself when the host is an address."""
    endpoint = announcement.endpoints[0]
    host, port = parse_endpoint(endpoint)
    if is_address(host):
        return {announcement.name: replace(announcement, endpoints=(endpoint,))}
    return {
        f"{announcement.name}@{address}": replace(
            announcement, name=f"{announcement.name}@{address}",
            endpoints=(f"tcp://{address}:{port}",),
        )
        for address in names.addresses(host)
    }


class ConnectSource:
    """``--connect`` endpoints: each name resolved to all its addresses, each address a
    producer (``tcp://producers.myapp.svc:5555`` with three addresses is three producers).

    Args:
        endpoints: ``tcp://HOST:PORT`` strings, checked by the caller.
        static: the IP-address endpoints are static producers (never forgotten), given
            here only so their CURVE key is probed (``source`` :data:`STATIC`); else they
            are left out (the worker adds them itself).
        resolve: as for :class:`Names`.
    """

    def __init__(self, endpoints: Sequence[str], *, static: bool = False,
                 resolve: Callable[[str], tuple[str, ...] | None] = resolve_host) -> None:
        self._endpoints = [
            ep for ep in endpoints if static or not is_address(parse_endpoint(ep)[0])
        ]
        self.label = "--connect " + " ".join(self._endpoints)
        self._names = Names(resolve)

    def read(self) -> dict[str, Announcement] | None:
        out: dict[str, Announcement] = {}
        for endpoint in self._endpoints:
            static = is_address(parse_endpoint(endpoint)[0])
            base = Announcement(endpoint, None, "", VERSION, (endpoint,),
                                source=STATIC if static else CONNECT)
            out.update(per_address(base, self._names))
        return out

    def changed(self) -> bool:
        return False


class FileSource:
    """An endpoints file (:mod:`freelance_rz.endpointsfile`), read again when it changes
    (its inode, size or modification time) and every ``every_s`` for the names in it.

    Args:
        path: the file; missing means no producer yet.
        group: entries naming another group (``g=``) or protocol version (``v=``) are
            skipped.
        resolve: as for :class:`Names`.
    """

    def __init__(self, path: str | os.PathLike[str], group: str, *,
                 resolve: Callable[[str], tuple[str, ...] | None] = resolve_host) -> None:
        self.path = Path(path)
        self.group = group
        self.label = f"--connect-file {self.path}"
        self._names = Names(resolve, self.label)
        self._seen: tuple[int, int, int] | None = None
        self._once = OnceLog()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def changed(self) -> bool:
        return self._stat() != self._seen

    def read(self) -> dict[str, Announcement] | None:
        self._seen = self._stat()
        try:
            with open(self.path, "rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            self._once(logging.INFO, f"{self.label}: no such file yet; looking again every {POLL_S:g} s")
            return {}
        except OSError as exc:
            self._once(logging.WARNING, f"{self.label}: cannot read it now: {exc}")
            return None
        self._once.clear(f"{self.label}: no such file")
        if len(data) > MAX_FILE_BYTES:
            self._once(logging.WARNING, f"{self.label}: larger than {MAX_FILE_BYTES} bytes; "
                       "only the lines before that are read")
        entries, problems = parse_text(data[:MAX_FILE_BYTES].decode("utf-8", errors="replace"))
        for number, line, why in problems:
            self._once(logging.WARNING, f"{self.label} line {number}: {why}; skipped: {clean(line, 120)}")
        out: dict[str, Announcement] = {}
        hosts = set()
        for announcement in entries:
            if announcement.group and announcement.group != self.group:
                log.debug("%s: skipping %s of group %r", self.label, announcement.endpoints[0],
                          clean(announcement.group))
                continue
            if announcement.version != VERSION:
                self._once(logging.WARNING, f"{self.label}: skipping {announcement.endpoints[0]}: "
                           f"protocol version {announcement.version}, this side speaks {VERSION}")
                continue
            hosts.add(parse_endpoint(announcement.endpoints[0])[0])
            out.update(per_address(announcement, self._names))
        self._names.keep_only(hosts)
        return out


# --- CURVE keys -------------------------------------------------------------------------------


class KeyFinder:
    """The CURVE key of a producer whose source names none (a ``--connect`` name, a file
    line without ``pk=``): the one trusted key if ``--trust`` holds one, else the trusted key
    a probe finds the producer holds (:func:`~freelance_rz.security.probe_server_key`),
    logged, and kept for its endpoint. An endpoint where no trusted key matched is probed
    again after a pause (the resolve interval, doubling up to PROBE_RETRY_MAX_S); one where
    nothing answered, at the next read.

    Args:
        ctx: the ZeroMQ context probes use.
        keys: this worker's key pair.
        trusted: the trusted keys -> their file names (for logs).
        every_s: the first pause after a failed probe, seconds.
    """

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], keys: KeyPair,
                 trusted: dict[bytes, str], every_s: float) -> None:
        self._ctx = ctx
        self._keys = keys
        self._trusted = trusted
        self._every_s = every_s
        self._found: dict[str, bytes] = {}
        self._failed: dict[str, tuple[float, float]] = {}  # endpoint -> (pause, next try)
        self._once = OnceLog()

    def key_for(self, endpoint: str) -> bytes | None:
        """The key to use for ``endpoint``, or None (not found yet)."""
        if len(self._trusted) == 1:
            return next(iter(self._trusted))
        if endpoint in self._found:
            return self._found[endpoint]
        now = time.monotonic()
        pause, next_try = self._failed.get(endpoint, (0.0, 0.0))
        if now < next_try:
            return None
        key, why = probe_server_key(self._ctx, endpoint, self._keys, list(self._trusted), PROBE_TIMEOUT_S)
        if key is None:
            # no key matched: ask again later and later; nothing answered (not up yet, or
            # gone): ask again at the next read, so a producer that starts is found in time
            grow = why.startswith(NO_KEY_MATCHED)
            pause = min(max(pause * 2, self._every_s), PROBE_RETRY_MAX_S) if grow else self._every_s
            self._failed[endpoint] = (pause, time.monotonic() + pause)
            self._once(logging.WARNING, f"producer at {clean(endpoint)}: CURVE key not found: {why}; "
                       "probing again later")
            return None
        self._failed.pop(endpoint, None)
        self._found[endpoint] = key
        log.info("producer at %s holds the CURVE key of %s (one of %d in --trust)", clean(endpoint),
                 self._trusted[key], len(self._trusted))
        return key

    def keep_only(self, endpoints: set[str]) -> None:
        """Forget the endpoints no longer in the source (a new producer there is probed)."""
        for table in (self._found, self._failed):
            for endpoint in [e for e in table if e not in endpoints]:
                del table[endpoint]


# --- the thread -------------------------------------------------------------------------------


class SourceThread:
    """Reads one source on a thread of its own and posts what it says (see the module
    docstring). Callbacks must only hand the event over (e.g. put it on a queue);
    none runs after :meth:`close` returns.

    Args:
        source: the source.
        on_found: called with each :class:`Announcement` read.
        on_gone: called with the name of each announcement no longer there.
        every_s: seconds between reads (``--resolve-every-s``).
        keys: finds CURVE keys for announcements without one (None without CURVE).
    """

    def __init__(self, source: Source, on_found: Callable[[Announcement], None],
                 on_gone: Callable[[str], None], every_s: float, keys: KeyFinder | None) -> None:
        self.source = source
        self._on_found = on_found
        self._on_gone = on_gone
        self._every_s = every_s
        self._keys = keys
        self._shown: dict[str, Announcement] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="freelance-source", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout_s: float = 1.0) -> None:
        """Stop; a read blocked in the resolver is left to end on its own (daemon thread)."""
        with self._lock:
            self._closed.set()
        if self._thread.ident is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        next_read = 0.0
        while not self._closed.is_set():
            now = time.monotonic()
            if now >= next_read or self.source.changed():
                next_read = now + self._every_s
                try:
                    snapshot = self.source.read()
                except Exception:  # never the end of discovery: log, try again next time
                    log.exception("%s: reading failed", self.source.label)
                    snapshot = None
                if snapshot is not None:
                    self.publish(snapshot)
            self._closed.wait(max(0.0, min(POLL_S, next_read - time.monotonic())))

    def publish(self, snapshot: dict[str, Announcement]) -> None:
        """Post ``found`` for each announcement (with its CURVE key filled in), ``gone`` for
        each name shown before and not now."""
        shown: dict[str, Announcement] = {}
        for name, announcement in snapshot.items():
            if self._closed.is_set():
                return
            if self._keys is not None and announcement.public_key is None:
                key = self._keys.key_for(announcement.endpoints[0])
                if key is None:
                    continue
                announcement = replace(announcement, public_key=key)
            shown[name] = announcement
        if self._keys is not None:
            self._keys.keep_only({a.endpoints[0] for a in snapshot.values()})
        with self._lock:
            if self._closed.is_set():
                return
            for announcement in shown.values():
                self._on_found(announcement)
            for name in self._shown.keys() - shown.keys():
                self._on_gone(name)
        self._shown = shown


def read_once(sources: Sequence[Source], keys: KeyFinder | None) -> list[Announcement]:
    """Every announcement the sources give now, each once, with CURVE keys filled in as a
    worker would (for ``freelance-status``); announcements whose key was not found are left
    out, with a warning."""
    out: dict[str, Announcement] = {}
    for source in sources:
        for announcement in (source.read() or {}).values():
            if keys is not None and announcement.public_key is None:
                key = keys.key_for(announcement.endpoints[0])
                if key is None:
                    continue
                announcement = replace(announcement, public_key=key)
            out.setdefault(announcement.endpoints[0], announcement)
    return list(out.values())


__all__ = [
    "CONNECT", "DNS_SD", "FILE", "RESOLVE_EVERY_S", "STATIC", "ConnectSource", "FileSource",
    "KeyFinder", "Names", "Source", "SourceThread", "is_address", "read_once", "resolve_host",
]

"""Announce and browse producers over mDNS / DNS-SD (RFC 6762, RFC 6763). The only zeroconf import.

A producer registers ``<instance>._freelance-rz._tcp.local.`` with TXT entries ``v`` (protocol
version), ``id`` (producer instance id, fresh per start), ``g`` (group), ``ep`` (its
comma-separated ZeroMQ endpoints) and optionally ``sk`` (a durable producer's store key) and
``pk`` (a secure producer's CURVE public key). Workers browse for that type and hand each
announcement to a callback. mDNS is only a hint: python-zeroconf keeps a crashed peer's records
until their TTL runs out, so liveness is judged by the ZeroMQ conversation, never here.

Where mDNS may go is set by ``interfaces`` (IPv4 addresses); when None, the environment
variable ``FREELANCE_RZ_INTERFACES`` (comma-separated) decides, else every interface.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import ipaddress
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from zeroconf import (
    DNSQuestionType,
    InterfaceChoice,
    IPVersion,
    ServiceBrowser,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)

from zeroconf.asyncio import AsyncServiceInfo

from .core.text import clean
from .core.wire import VERSION, parse_endpoint

log = logging.getLogger("freelance_rz.discovery")

SERVICE_TYPE = "_freelance-rz._tcp.local."
ENV_INTERFACES = "FREELANCE_RZ_INTERFACES"
RESOLVE_TIMEOUT_MS = 1500  # how long to wait for a service's SRV/TXT that is not in the cache
RESOLVE_RETRY_S = 10.0  # a service that could not be resolved is tried again after this...
RESOLVE_RETRY_MAX_S = 300.0  # ...doubling each time up to this
MAX_WANTED = 4096  # names waiting to be resolved, and names remembered as unresolvable
# python-zeroconf queries 4 times in the first 14 s, then only to refresh records it knows, so a
# producer whose announcements were lost (its link was down) would stay unknown. A new query
# series this often (with known answers: known producers stay silent) finds it.
REBROWSE_S = 10.0


def resolve_interfaces(interfaces: Sequence[str] | None) -> list[str] | None:
    """The IPv4 addresses to use, or None for all interfaces.

    ``interfaces`` wins; when None, ``$FREELANCE_RZ_INTERFACES`` (comma-separated) is read.

    Raises:
        ValueError: an entry is not an IPv4 address, or the list is empty.
    """
    if isinstance(interfaces, str):
        raise ValueError(f"interfaces must be a list of IPv4 addresses, e.g. [{interfaces!r}]")
    source = "interface"
    if interfaces is None:
        env = os.environ.get(ENV_INTERFACES, "").strip()
        if not env:
            return None
        interfaces = [part.strip() for part in env.split(",") if part.strip()]
        source = f"${ENV_INTERFACES} entry"
    result = []
    for address in interfaces:
        try:
            result.append(str(ipaddress.IPv4Address(address)))
        except ValueError:
            raise ValueError(f"{source} {address!r} is not an IPv4 address") from None
    if not result:
        raise ValueError("interfaces must name at least one IPv4 address (or be None for all)")
    return result


def _zeroconf(interfaces: list[str] | None) -> Zeroconf:
    try:
        return Zeroconf(
            interfaces=InterfaceChoice.All if interfaces is None else interfaces,
            ip_version=IPVersion.V4Only,
        )
    except OSError as exc:
        where = "all interfaces" if interfaces is None else ", ".join(interfaces)
        raise OSError(
            exc.errno, f"cannot start mDNS on {where} (is each one an address of this host?): "
            f"{exc.strerror or exc}"
        ) from None


MDNS = "mdns"  # Announcement.source of mDNS announcements


@dataclass(frozen=True, slots=True)
class Announcement:
    """A producer seen by a source: on mDNS, or by one of :mod:`freelance_rz.sources`
    (a re-resolved name, DNS-SD over unicast DNS, an endpoints file).

    ``name`` is unique within its source (on mDNS and DNS-SD the instance name, on mDNS
    unique per start); ``producer_id`` is None when the source does not say it (a name, a
    file line without ``id=``); ``store_key`` is set for a durable producer and survives
    its restarts; ``public_key`` (Z85) for a producer that requires CURVE; ``source`` says
    which source saw it (:data:`MDNS`, or a name from :mod:`freelance_rz.sources`)."""

    name: str
    producer_id: str | None
    group: str
    version: int
    endpoints: tuple[str, ...]
    store_key: str | None = None
    public_key: bytes | None = None
    source: str = MDNS


class Announcer:
    """Registers one producer on mDNS until :meth:`close` (which sends a goodbye).

    Args:
        producer_id: the producer's instance id (also the DNS-SD instance label).
        group: the producer's group.
        endpoints: its ZeroMQ endpoints, e.g. ``["tcp://127.0.0.1:5555"]``.
        interfaces: IPv4 addresses to announce on, or None (see :func:`resolve_interfaces`).
        store_key: a durable producer's store key (TXT ``sk``), the same across restarts, so
            workers hand results of the old process to the new one.
        public_key: a secure producer's CURVE public key, Z85 (TXT ``pk``).
        advertised: the endpoints put in TXT ``ep`` instead of ``endpoints`` (a producer
            behind NAT or in a container, ``Producer(advertise=...)``); the mDNS address
            records still name the bound addresses.
    """

    def __init__(
        self,
        producer_id: str,
        group: str,
        endpoints: Sequence[str],
        interfaces: list[str] | None,
        store_key: str | None = None,
        public_key: bytes | None = None,
        advertised: Sequence[str] | None = None,
    ) -> None:
        self._interfaces = interfaces
        host, port = _host_port(endpoints[0])
        properties = {
            "v": str(VERSION), "id": producer_id, "g": group, "ep": ",".join(advertised or endpoints),
        }
        if store_key is not None:
            properties["sk"] = store_key
        if public_key is not None:
            properties["pk"] = public_key.decode("ascii")
        addresses = interfaces or [host]
        self._info = ServiceInfo(
            SERVICE_TYPE,
            f"{producer_id}.{SERVICE_TYPE}",
            port=port,
            addresses=[socket.inet_aton(a) for a in addresses if a != "0.0.0.0"],
            properties=properties,
            server=f"{producer_id}.local.",
        )
        self._zc: Zeroconf | None = None

    def start(self) -> None:
        """Register (blocks for mDNS probing, about 1.5 s). Raises OSError on socket errors."""
        self._zc = _zeroconf(self._interfaces)
        try:
            self._zc.register_service(self._info)
        except BaseException:
            self._zc.close()
            self._zc = None
            raise

    def close(self) -> None:
        """Unregister (goodbye packet) and close. Safe to call twice."""
        zc, self._zc = self._zc, None
        if zc is None:
            return
        try:
            zc.unregister_service(self._info)
        except Exception:  # a goodbye is best effort: peers find out through ZeroMQ anyway
            log.debug("mDNS goodbye failed", exc_info=True)
        zc.close()


def _host_port(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
    return host, int(port)


class Browser:
    """Browses mDNS for producers of one group and reports them to callbacks.

    Callbacks run on a thread of the browser's own and must only hand the event over (e.g.
    put it on a queue): ``on_found(Announcement)`` for a new or updated producer,
    ``on_gone(name)`` when its records were withdrawn. Announcements of another group or
    protocol version are skipped (logged at debug level); malformed ones are dropped with a
    rate-limited warning.

    Nothing here blocks zeroconf's own threads: a service whose records are not all in the
    cache (its PTR outlived its SRV/TXT: a ghost of a producer that died) is resolved on a
    resolver thread, and one that cannot be resolved is tried again only after a growing
    pause (RESOLVE_RETRY_S up to RESOLVE_RETRY_MAX_S), so ghosts cost neither log lines nor
    time, and :meth:`close` returns at once.
    """

    def __init__(
        self,
        group: str,
        interfaces: list[str] | None,
        on_found: Callable[[Announcement], None],
        on_gone: Callable[[str], None],
    ) -> None:
        self.group = group
        self._interfaces = interfaces
        self._on_found = on_found
        self._on_gone = on_gone
        self._zc: Zeroconf | None = None
        self._browser: ServiceBrowser | None = None
        self._closed = threading.Event()
        self._rebrowser: threading.Thread | None = None
        self._resolver: threading.Thread | None = None
        self._lock = threading.Lock()
        self._wanted: dict[str, None] = {}  # names to resolve, in arrival order
        self._wake = threading.Event()
        # name -> (failures so far, monotonic time before which it is not tried again)
        self._failed: collections.OrderedDict[str, tuple[int, float]] = collections.OrderedDict()
        self._warned_at = 0.0
        self._version_warned_at = -3600.0
        self._inflight: concurrent.futures.Future[bool] | None = None  # the resolver's request

    def start(self) -> None:
        """Start browsing (returns at once). Raises OSError on socket errors."""
        self._zc = _zeroconf(self._interfaces)
        self._browser = self._new_browser(self._zc)
        self._rebrowser = threading.Thread(
            target=self._rebrowse, name="freelance-rebrowse", daemon=True
        )
        self._rebrowser.start()
        self._resolver = threading.Thread(
            target=self._resolve_loop, name="freelance-resolve", daemon=True
        )
        self._resolver.start()

    def _new_browser(self, zc: Zeroconf) -> ServiceBrowser:
        # QM (multicast replies): a QU query's unicast reply goes to port 5353 on this host,
        # which every zeroconf socket here shares, so it can land in another process and the
        # producer is only found by the next query a second later (C2 needs < 1 s).
        return ServiceBrowser(
            zc, SERVICE_TYPE, handlers=[self._handle], question_type=DNSQuestionType.QM
        )

    def _rebrowse(self) -> None:
        """Start a new query series every REBROWSE_S (see there); announcements already
        known come again to ``on_found``, which callers treat as updates."""
        while not self._closed.wait(REBROWSE_S):
            zc, old = self._zc, self._browser
            if zc is None or old is None:
                return
            self._browser = self._new_browser(zc)
            old.cancel()

    def close(self) -> None:
        """Stop browsing; no callback runs after this returns. Safe to call twice."""
        with self._lock:
            self._closed.set()
            if self._inflight is not None:
                self._inflight.cancel()
        self._wake.set()
        if self._rebrowser is not None:
            self._rebrowser.join()
        browser, self._browser = self._browser, None
        zc, self._zc = self._zc, None
        if browser is not None:
            browser.cancel()
        if zc is not None:
            zc.close()

    def _handle(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if self._closed.is_set():
            return
        if state_change is ServiceStateChange.Removed:
            self._on_gone(name)
            return
        with self._lock:
            self._wanted[name] = None
            while len(self._wanted) > MAX_WANTED:  # a flood of names: keep the newest
                self._wanted.pop(next(iter(self._wanted)))
        self._wake.set()

    def _resolve_loop(self) -> None:
        while not self._closed.is_set():
            self._wake.wait()
            with self._lock:
                names, self._wanted = list(self._wanted), {}
                self._wake.clear()
            for name in names:
                if self._closed.is_set():
                    return
                self._resolve(name)

    def _request(self, zc: Zeroconf, info: AsyncServiceInfo) -> bool:
        """Ask the network for a service's records (up to RESOLVE_TIMEOUT_MS), as a task on
        zeroconf's loop that :meth:`close` cancels: zeroconf waits for its loop's tasks when
        it closes."""
        assert zc.loop is not None
        with self._lock:
            if self._closed.is_set():
                return False
            self._inflight = asyncio.run_coroutine_threadsafe(
                info.async_request(zc, RESOLVE_TIMEOUT_MS), zc.loop
            )
        try:
            return bool(self._inflight.result(RESOLVE_TIMEOUT_MS / 1000 + 1.0))
        except (concurrent.futures.CancelledError, concurrent.futures.TimeoutError):
            return False

    def _resolve(self, name: str) -> None:
        zc = self._zc
        now = time.monotonic()
        failed = self._failed.get(name)
        if zc is None or (failed is not None and now < failed[1]):
            return
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        try:
            found = info.load_from_cache(zc) or self._request(zc, info)
        except Exception:  # zeroconf closed under us, or a record it could not use
            log.debug("mDNS: resolving %s failed", clean(name), exc_info=True)
            found = False
        if self._closed.is_set():
            return
        if not found:
            failures = 1 if failed is None else failed[0] + 1
            pause = min(RESOLVE_RETRY_S * 2 ** (failures - 1), RESOLVE_RETRY_MAX_S)
            self._failed[name] = (failures, time.monotonic() + pause)
            self._failed.move_to_end(name)
            while len(self._failed) > MAX_WANTED:
                self._failed.popitem(last=False)
            log.debug("mDNS: could not resolve %s (%d time(s)); next try in %.0f s",
                      clean(name), failures, pause)
            return
        self._failed.pop(name, None)
        announcement = parse_announcement(name, info.properties)
        if announcement is None:
            if now - self._warned_at > 10.0:  # one line per 10 s under a flood
                self._warned_at = now
                log.warning("mDNS: ignoring malformed announcement %s", clean(name))
        elif announcement.group != self.group:
            log.debug("mDNS: skipping %s of group %r", clean(name), clean(announcement.group))
        elif announcement.version != VERSION:
            # said at most once a minute: a fleet half upgraded otherwise waits in silence
            level = logging.WARNING if now - self._version_warned_at > 60.0 else logging.DEBUG
            if level == logging.WARNING:
                self._version_warned_at = now
            log.log(
                level, "mDNS: ignoring producer %s: it speaks protocol version %d, this side "
                "version %d; run one freelance_rz protocol version on producers and workers",
                clean(name), announcement.version, VERSION,
            )
        else:
            self._on_found(announcement)


_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")  # producer ids and store keys
MAX_ENDPOINTS = 16  # endpoints one announcement may list


def parse_announcement(name: str, properties: dict[bytes, Any]) -> Announcement | None:
    """Parse mDNS TXT properties into an :class:`Announcement`; None when malformed.

    Every entry is checked, since anyone on the network can announce: ``id`` and ``sk`` are
    1 to 64 letters, digits, ``_`` or ``-``; ``g`` a group of 1 to 63 characters; ``ep``
    1 to MAX_ENDPOINTS endpoints each valid for :func:`~freelance_rz.core.wire.parse_endpoint`
    (invalid ones are dropped); ``pk`` 40 Z85 characters."""
    try:
        text = {
            k.decode(): v.decode() for k, v in properties.items() if isinstance(v, bytes)
        }
    except UnicodeError:
        return None
    return parse_entries(name, text)


def parse_entries(
    name: str, text: Mapping[str, str], *, source: str = MDNS, id_required: bool = True,
) -> Announcement | None:
    """Check announcement entries (TXT ``key=value`` pairs, as text) and make an
    :class:`Announcement`; None when malformed. One set of rules for every source: mDNS
    and DNS-SD TXT records, endpoints file lines (see :func:`parse_announcement`).

    Args:
        name: the announcement's name within its source.
        text: the entries: ``v`` (protocol version; required when ``id_required``, else
            this side's version when absent), ``id``, ``g``, ``ep``, ``sk``, ``pk``.
        source: the source's name, kept in :attr:`Announcement.source`.
        id_required: False for sources whose entries may leave out ``v``, ``id`` and
            ``g`` (an endpoints file line).
    """
    try:
        endpoints = []
        for endpoint in text["ep"].split(",")[:MAX_ENDPOINTS]:
            try:
                parse_endpoint(endpoint)
            except ValueError:
                continue
            endpoints.append(endpoint)
        producer_id = text["id"] if id_required else text.get("id")
        group, store_key = text["g"] if id_required else text.get("g", ""), text.get("sk") or None
        if (
            not endpoints
            or (producer_id is not None and not _ID_RE.fullmatch(producer_id))
            or len(group) > 63 or (id_required and not group)
            or (store_key is not None and not _ID_RE.fullmatch(store_key))
        ):
            return None
        public_key = text.get("pk", "").encode("ascii") or None
        if public_key is not None and (len(public_key) != 40 or not _Z85_RE.fullmatch(public_key)):
            return None
        version = int(text["v"]) if id_required or "v" in text else VERSION
        return Announcement(
            name, producer_id, group, version, tuple(endpoints), store_key, public_key, source
        )
    except (KeyError, ValueError, UnicodeError):
        return None


_Z85_RE = re.compile(rb"[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")


def local_networks() -> list[ipaddress.IPv4Interface]:
    """This host's IPv4 interface addresses with their prefixes (loopback included)."""
    import ifaddr  # a dependency of zeroconf

    return [
        ipaddress.IPv4Interface(f"{ip.ip}/{ip.network_prefix}")
        for adapter in ifaddr.get_adapters()
        for ip in adapter.ips
        if isinstance(ip.ip, str)
    ]


def choose_endpoint(endpoints: Sequence[str], interfaces: list[str] | None) -> str:
    """Pick the endpoint of an announcement that this host reaches best.

    Preference: an address of this host (same machine), then one on a network this host is
    on, then the first non-loopback one. ``interfaces`` (IPv4 addresses) narrows "this host"
    to those interfaces; None means all of them.
    """
    nets = local_networks()
    if interfaces is not None:
        nets = [net for net in nets if str(net.ip) in interfaces] or nets

    def rank(endpoint: str) -> int:
        try:
            address = ipaddress.IPv4Address(_host_port(endpoint)[0])
        except ValueError:
            return 4
        if any(address == net.ip for net in nets):
            return 0
        if any(address in net.network for net in nets):
            return 1
        return 3 if address.is_loopback else 2

    return min(endpoints, key=rank)

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

import ipaddress
import logging
import os
import socket
import threading
from collections.abc import Callable, Sequence
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

from .protocol import VERSION

log = logging.getLogger("freelance_rz.discovery")

SERVICE_TYPE = "_freelance-rz._tcp.local."
ENV_INTERFACES = "FREELANCE_RZ_INTERFACES"
RESOLVE_TIMEOUT_MS = 3000  # how long to wait for a service's SRV/TXT after its PTR appears
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


@dataclass(frozen=True, slots=True)
class Announcement:
    """A producer seen on mDNS. ``name`` is the DNS-SD instance name (unique per start);
    ``store_key`` is set for a durable producer and survives its restarts; ``public_key``
    (Z85) for a producer that requires CURVE."""

    name: str
    producer_id: str
    group: str
    version: int
    endpoints: tuple[str, ...]
    store_key: str | None = None
    public_key: bytes | None = None


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
    """

    def __init__(
        self,
        producer_id: str,
        group: str,
        endpoints: Sequence[str],
        interfaces: list[str] | None,
        store_key: str | None = None,
        public_key: bytes | None = None,
    ) -> None:
        self._interfaces = interfaces
        host, port = _host_port(endpoints[0])
        properties = {"v": str(VERSION), "id": producer_id, "g": group, "ep": ",".join(endpoints)}
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

    Callbacks run on zeroconf's browser thread and must only hand the event over (e.g. put it
    on a queue): ``on_found(Announcement)`` for a new or updated producer, ``on_gone(name)``
    when its records were withdrawn. Announcements of another group or protocol version are
    skipped (logged at debug level).
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

    def start(self) -> None:
        """Start browsing (returns at once). Raises OSError on socket errors."""
        self._zc = _zeroconf(self._interfaces)
        self._browser = self._new_browser(self._zc)
        self._rebrowser = threading.Thread(
            target=self._rebrowse, name="freelance-rebrowse", daemon=True
        )
        self._rebrowser.start()

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
        """Stop browsing. Safe to call twice."""
        self._closed.set()
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
        if state_change is ServiceStateChange.Removed:
            self._on_gone(name)
            return
        info = zeroconf.get_service_info(service_type, name, timeout=RESOLVE_TIMEOUT_MS)
        if info is None:
            log.debug("mDNS: could not resolve %s", name)
            return
        announcement = parse_announcement(name, info.properties)
        if announcement is None:
            log.warning("mDNS: ignoring malformed announcement %s", name)
        elif announcement.version != VERSION:
            log.warning(
                "mDNS: ignoring %s: protocol version %d, this worker speaks %d",
                name, announcement.version, VERSION,
            )
        elif announcement.group != self.group:
            log.debug("mDNS: skipping %s of group %r", name, announcement.group)
        else:
            self._on_found(announcement)


def parse_announcement(name: str, properties: dict[bytes, Any]) -> Announcement | None:
    """Parse TXT properties into an :class:`Announcement`; None when malformed."""
    try:
        text = {
            k.decode(): v.decode() for k, v in properties.items() if isinstance(v, bytes)
        }
        endpoints = tuple(ep for ep in text["ep"].split(",") if ep.startswith("tcp://"))
        if not endpoints or not text["id"]:
            return None
        public_key = text.get("pk", "").encode("ascii") or None
        if public_key is not None and len(public_key) != 40:  # Z85 of 32 bytes
            return None
        return Announcement(
            name, text["id"], text["g"], int(text["v"]), endpoints, text.get("sk") or None,
            public_key,
        )
    except (KeyError, ValueError, UnicodeError):
        return None


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

"""DNS-SD over unicast DNS (RFC 6763 §4-§6): producers listed in an ordinary DNS zone, for
workers that mDNS does not reach (``freelance-worker --discover-dns SERVICE``). The only
import of dnspython (``pip install 'freelance_rz[dns]'``).

A zone lists each producer as a DNS-SD instance of the service (``SERVICE`` is e.g.
``_freelance-rz._tcp.example.org``)::

    _freelance-rz._tcp.example.org.     PTR  p1._freelance-rz._tcp.example.org.
    p1._freelance-rz._tcp.example.org.  SRV  0 0 5555 host1.example.org.
    p1._freelance-rz._tcp.example.org.  TXT  "v=2" "id=p1" "g=thumbnails" "pk=..."
    host1.example.org.                  A    10.0.0.5

A read asks for the service's PTR records, then for each instance its SRV (host and port)
and TXT records and the SRV host's A records (from the answer's additional section when
the server sends them). The TXT entries are those of mDNS (``v``, ``id``, ``g``, and ``sk``
and ``pk`` when they apply; :func:`~freelance_rz.discovery.parse_entries` checks them by the
same rules); the endpoints come from SRV and A, so no ``ep`` entry is needed (one given is
replaced). An instance whose records are missing or malformed is logged once and skipped.

The PTR records are asked for at every read, so a producer added to or removed from the zone
is seen within one read; an instance already known is asked for again every
:data:`KNOWN_REFRESH_READS` reads (changes of its SRV, TXT or A records take that long), so a
read costs 1 query plus 3 for each new instance. No DNS cache is kept between reads: the
zone's TTLs do not delay what a worker sees. DNS says where producers may be; whether they
are there is for the ZeroMQ conversation to say.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from .core.text import clean
from .core.wire import VERSION
from .discovery import MAX_ENDPOINTS, Announcement, parse_entries
from .sources import DNS_SD, OnceLog

log = logging.getLogger("freelance_rz.sources")

SERVICE = "_freelance-rz._tcp"  # the service type; --discover-dns names it under a domain
LIFETIME_S = 2.0  # seconds one DNS query may take in all (retries included)
MAX_INSTANCES = 1024  # instances taken from one PTR answer
KNOWN_REFRESH_READS = 6  # a known instance's records are asked for again every this many reads


def _import_dns() -> Any:
    try:
        import dns.name
        import dns.rdatatype
        import dns.resolver
    except ImportError:
        raise ImportError("--discover-dns needs dnspython: pip install 'freelance_rz[dns]'") from None
    return dns


def check_service(service: str) -> str:
    """``service`` as an absolute DNS name (``_freelance-rz._tcp.example.org.``).

    Raises:
        ValueError: it is not a DNS name.
        ImportError: dnspython is not installed.
    """
    dns = _import_dns()
    if not isinstance(service, str) or not service.strip("."):
        raise ValueError(f"--discover-dns {service!r}: expected a DNS name, e.g. {SERVICE}.example.org")
    try:
        return str(dns.name.from_text(service).to_text())
    except dns.exception.DNSException as exc:
        raise ValueError(f"--discover-dns {service!r}: not a DNS name: {exc}") from None


def txt_entries(strings: Sequence[bytes]) -> dict[str, str] | None:
    """TXT character-strings as entries (RFC 6763 §6): ``key=value``, keys case-insensitive
    (kept lowercase), the first of a key winning; strings without ``=`` (boolean attributes)
    are ignored. None when a string is not UTF-8."""
    entries: dict[str, str] = {}
    for raw in strings:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
        key, sep, value = text.partition("=")
        if sep and key:
            entries.setdefault(key.lower(), value)
    return entries


def instance_announcement(
    instance: str, srv: Sequence[tuple[int, int, int, str]], txt: Sequence[bytes],
    addresses: Mapping[str, Sequence[str]],
) -> Announcement | str:
    """One instance's records as an :class:`Announcement` (source ``dns-sd``), or why not.

    Args:
        instance: its name (``p1._freelance-rz._tcp.example.org.``).
        srv: its SRV records as ``(priority, weight, port, target)``; lower priority first,
            higher weight first within one.
        txt: the character-strings of its TXT record(s).
        addresses: SRV target -> its IPv4 addresses.
    """
    endpoints: list[str] = []
    for _, _, port, target in sorted(srv, key=lambda r: (r[0], -r[1])):
        if target in (".", "") or not 0 < port < 65536:
            continue
        for address in addresses.get(target, ()):
            endpoint = f"tcp://{address}:{port}"
            if endpoint not in endpoints:
                endpoints.append(endpoint)
    if not srv:
        return "no SRV record"
    if not endpoints:
        return "its SRV target has no IPv4 address"
    entries = txt_entries(txt)
    if entries is None:
        return "its TXT record is not UTF-8"
    entries["ep"] = ",".join(endpoints[:MAX_ENDPOINTS])
    announcement = parse_entries(instance, entries, source=DNS_SD)
    if announcement is None:
        return ("its TXT entries are missing or malformed (v, id and g are required; id and sk: "
                "1 to 64 of A-Z a-z 0-9 _ -; g: 1 to 63 characters; pk: 40 Z85 characters)")
    return announcement


class DnsSdSource:
    """Reads the producers of one DNS-SD service from DNS (see the module docstring); a
    :class:`~freelance_rz.sources.Source`.

    Args:
        service: e.g. ``_freelance-rz._tcp.example.org``.
        group: instances of another group or protocol version are skipped (debug log).
        nameservers: DNS servers' IP addresses; None: the system's (resolv.conf).
        port: their port.
        lifetime_s: seconds one query may take.

    Raises:
        ValueError: ``service`` is not a DNS name.
        ImportError: dnspython is not installed.
    """

    def __init__(self, service: str, group: str, *, nameservers: Sequence[str] | None = None,
                 port: int = 53, lifetime_s: float = LIFETIME_S) -> None:
        self.service = check_service(service)
        self.group = group
        self.label = f"--discover-dns {self.service}"
        self._nameservers = None if nameservers is None else list(nameservers)
        self._port = port
        self._lifetime_s = lifetime_s
        self._known: dict[str, tuple[Announcement | None, int]] = {}  # instance -> (it, reads)
        self._once = OnceLog()

    def changed(self) -> bool:
        return False

    def _resolver(self) -> Any:
        dns = _import_dns()
        resolver = dns.resolver.Resolver(configure=self._nameservers is None)
        if self._nameservers is not None:
            resolver.nameservers = self._nameservers
        resolver.port = self._port
        resolver.lifetime = self._lifetime_s
        resolver.cache = None
        return resolver

    def _ask(self, resolver: Any, name: str, rdtype: str) -> Any | None:
        """The answer, None for no such record (NXDOMAIN, NODATA); raises
        ``dns.exception.DNSException`` when the server could not tell."""
        dns = _import_dns()
        try:
            return resolver.resolve(name, rdtype, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None

    def read(self) -> dict[str, Announcement] | None:
        dns = _import_dns()
        try:
            resolver = self._resolver()
            answer = self._ask(resolver, self.service, "PTR")
        except dns.exception.DNSException as exc:
            self._once(logging.WARNING, f"{self.label}: no answer from DNS now ({type(exc).__name__}); "
                       "keeping what it said before")
            log.debug("%s: %s", self.label, clean(str(exc), 300))
            return None
        self._once.clear(f"{self.label}: no answer")
        instances = [] if answer is None else [r.target.to_text() for r in answer][:MAX_INSTANCES]
        out: dict[str, Announcement] = {}
        for instance in instances:
            announcement = self._instance(resolver, instance)
            if announcement is not None:
                out[instance] = announcement
        self._known = {name: self._known[name] for name in instances if name in self._known}
        return out

    def _instance(self, resolver: Any, instance: str) -> Announcement | None:
        """The announcement of one instance (asked for again when new or every
        KNOWN_REFRESH_READS reads), filtered by group and version."""
        dns = _import_dns()
        known, reads = self._known.get(instance, (None, KNOWN_REFRESH_READS))
        if reads + 1 < KNOWN_REFRESH_READS:
            self._known[instance] = (known, reads + 1)
            return self._wanted(known)
        try:
            parsed = self._lookup(resolver, instance)
        except dns.exception.DNSException as exc:
            self._once(logging.WARNING, f"{self.label}: cannot read {clean(instance)} now "
                       f"({type(exc).__name__}); keeping what it said before")
            return self._wanted(known)
        if isinstance(parsed, str):
            self._once(logging.WARNING, f"{self.label}: skipping {clean(instance)}: {parsed}")
            self._known[instance] = (None, 0)
            return None
        self._known[instance] = (parsed, 0)
        return self._wanted(parsed)

    def _wanted(self, announcement: Announcement | None) -> Announcement | None:
        if announcement is None:
            return None
        if announcement.version != VERSION:
            log.debug("%s: skipping %s: protocol version %d, this side speaks %d", self.label,
                      clean(announcement.name), announcement.version, VERSION)
            return None
        if announcement.group != self.group:
            log.debug("%s: skipping %s of group %r", self.label, clean(announcement.name),
                      clean(announcement.group))
            return None
        return announcement

    def _lookup(self, resolver: Any, instance: str) -> Announcement | str:
        dns = _import_dns()
        srv_answer = self._ask(resolver, instance, "SRV")
        if srv_answer is None:
            return "no SRV record"
        srv = [(r.priority, r.weight, r.port, r.target.to_text()) for r in srv_answer][:MAX_ENDPOINTS]
        addresses: dict[str, list[str]] = {}
        for rrset in srv_answer.response.additional:  # the A records a server sends along
            if rrset.rdtype == dns.rdatatype.A:
                addresses.setdefault(rrset.name.to_text(), []).extend(r.address for r in rrset)
        for target in {t for _, _, _, t in srv if t not in addresses and t != "."}:
            a_answer = self._ask(resolver, target, "A")
            addresses[target] = [] if a_answer is None else [r.address for r in a_answer]
        txt_answer = self._ask(resolver, instance, "TXT")
        strings = [] if txt_answer is None else [s for r in txt_answer for s in r.strings]
        return instance_announcement(instance, srv, strings, addresses)


__all__ = ["SERVICE", "DnsSdSource", "check_service", "instance_announcement", "txt_entries"]

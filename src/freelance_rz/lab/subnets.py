"""Two subnets of virtual hosts joined by a router (DESIGN §11). Needs root.

Layout for a run with prefix ``rzlab-1234-1``, hosts pa1 (subnet a) and wb1 (subnet b)::

    rzlab-1234-1-sw   the switches: bridges bra and brb, and the bridge ends of every veth
    rzlab-1234-1-rt   the router: etha 198.18.1.254/24 (in bra), ethb 198.18.2.254/24 (in brb),
                      IPv4 forwarding on
    rzlab-1234-1-pa1  eth0 198.18.1.11/24, default route via 198.18.1.254
    rzlab-1234-1-wb1  eth0 198.18.2.11/24, default route via 198.18.2.254

Unicast crosses the router; multicast does not (the router runs no multicast routing, and
mDNS is link-local anyway), so mDNS stops at each subnet as it does on a real network. Every
address is in 198.18.0.0/15, and nothing is added to the namespace the lab runs in.

A host can be given a DNS server: ``ip netns exec`` bind-mounts ``/etc/netns/NS/resolv.conf``
over ``/etc/resolv.conf`` for the programs it runs, so the system resolver (getaddrinfo) and
dnspython both ask that server, and only it. :meth:`TwoSubnets.destroy` deletes every
namespace and every ``/etc/netns/NS`` directory made, and never raises.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from .netns import _NS_PART_RE, NetnsError, _ip, list_namespaces

SUBNETS = {"a": "198.18.1", "b": "198.18.2"}  # /24 each, in the benchmarking range
ROUTER_HOST = 254  # the router's host number on each subnet
FIRST_HOST = 11  # hosts are numbered from here, in the order given
NETNS_ETC = Path("/etc/netns")


class TwoSubnets:
    """The virtual hosts of one run on two subnets joined by a router.

    Args:
        prefix: the start of every namespace name (``rzlab-PID-N``).
        hosts: host name -> subnet (``"a"`` or ``"b"``), in the order addresses are given.

    Raises:
        ValueError: a bad subnet, more than 200 hosts on one, or a prefix or host name that
            is not a plain name (letters, digits, ``-`` and ``_``).
    """

    def __init__(self, prefix: str, hosts: Mapping[str, str]) -> None:
        for what, value in (("prefix", prefix), *(("host", host) for host in hosts)):
            if not isinstance(value, str) or not _NS_PART_RE.fullmatch(value):
                raise ValueError(f"namespace {what} must be 1 to 40 letters, digits, '-' or '_', got {value!r}")
        for host, subnet in hosts.items():
            if subnet not in SUBNETS:
                raise ValueError(f"host {host}: subnet must be one of {sorted(SUBNETS)}, got {subnet!r}")
        self.prefix = prefix
        self.hosts = dict(hosts)
        self._addresses: dict[str, str] = {}
        for subnet, base in SUBNETS.items():
            members = [h for h, s in self.hosts.items() if s == subnet]
            if len(members) > 200:
                raise ValueError(f"at most 200 hosts on subnet {subnet}")
            for i, host in enumerate(members):
                self._addresses[host] = f"{base}.{FIRST_HOST + i}"
        self.switch_ns, self.router_ns = f"{prefix}-sw", f"{prefix}-rt"
        self.created: list[str] = []  # namespaces made, in order
        self.etc_dirs: list[Path] = []  # /etc/netns/NS directories made

    def ns(self, host: str) -> str:
        """The namespace of ``host``."""
        return f"{self.prefix}-{host}"

    def address(self, host: str) -> str:
        """The IPv4 address of ``host``'s eth0."""
        return self._addresses[host]

    @staticmethod
    def router(subnet: str) -> str:
        """The router's address on ``subnet``."""
        return f"{SUBNETS[subnet]}.{ROUTER_HOST}"

    def _add_ns(self, name: str) -> None:
        _ip("netns", "add", name)
        self.created.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def _veth(self, subnet: str, port: str, ns: str, dev: str) -> None:
        """A veth from the switch's bridge of ``subnet`` (end ``port``) to ``dev`` in ``ns``."""
        sw = self.switch_ns
        _ip("-n", sw, "link", "add", port, "type", "veth", "peer", "name", dev, "netns", ns)
        _ip("-n", sw, "link", "set", port, "master", f"br{subnet}")
        _ip("-n", sw, "link", "set", port, "up")

    def create(self) -> None:
        """Make the switch, the router and one namespace per host. Raises NetnsError (after
        deleting whatever it made)."""
        try:
            self._add_ns(self.switch_ns)
            for subnet in SUBNETS:
                _ip("-n", self.switch_ns, "link", "add", f"br{subnet}", "type", "bridge")
                _ip("-n", self.switch_ns, "link", "set", f"br{subnet}", "up")
            self._add_ns(self.router_ns)
            for subnet in SUBNETS:
                self._veth(subnet, f"r{subnet}", self.router_ns, f"eth{subnet}")
                _ip("-n", self.router_ns, "addr", "add", f"{self.router(subnet)}/24", "dev", f"eth{subnet}")
                _ip("-n", self.router_ns, "link", "set", f"eth{subnet}", "up")
            self._forwarding()
            for i, (host, subnet) in enumerate(self.hosts.items()):
                ns = self.ns(host)
                self._add_ns(ns)
                self._veth(subnet, f"v{i + 1}", ns, "eth0")
                _ip("-n", ns, "addr", "add", f"{self.address(host)}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
                _ip("-n", ns, "route", "add", "default", "via", self.router(subnet))
        except BaseException:
            self.destroy()
            raise

    def _forwarding(self) -> None:
        """IPv4 forwarding on in the router's namespace (its own /proc/sys/net)."""
        done = _ip("netns", "exec", self.router_ns, "sh", "-c",
                   "echo 1 > /proc/sys/net/ipv4/ip_forward && cat /proc/sys/net/ipv4/ip_forward")
        if done.stdout.strip() != "1":
            raise NetnsError(f"IPv4 forwarding could not be turned on in {self.router_ns}")

    def use_dns(self, hosts: Sequence[str], server: str) -> None:
        """Programs run on ``hosts`` (through :meth:`wrap`) ask the DNS server at ``server``
        and no other (``/etc/netns/NS/resolv.conf``)."""
        for host in hosts:
            directory = NETNS_ETC / self.ns(host)
            directory.mkdir(parents=True, exist_ok=True)
            self.etc_dirs.append(directory)
            (directory / "resolv.conf").write_text(f"nameserver {server}\noptions timeout:1 attempts:2\n")

    def wrap(self, host: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside ``host``'s namespace (``ip netns exec`` execs it: same pid)."""
        return ["ip", "netns", "exec", self.ns(host), *argv]

    def destroy(self) -> list[str]:
        """Delete every namespace and /etc/netns directory this made. Never raises; returns
        the namespaces that could not be deleted."""
        for directory in self.etc_dirs:
            shutil.rmtree(directory, ignore_errors=True)
        self.etc_dirs = [d for d in self.etc_dirs if d.exists()]
        failed = []
        for name in reversed(self.created):
            try:
                done = _ip("netns", "del", name, check=False)
                if done.returncode != 0 and name in list_namespaces():
                    failed.append(name)
            except NetnsError:
                failed.append(name)
        self.created = [name for name in self.created if name in failed]
        return failed

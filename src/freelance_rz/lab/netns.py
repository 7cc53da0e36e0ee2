"""Virtual hosts: Linux network namespaces joined by a bridge (DESIGN §7). Needs root.

Layout for a run with prefix ``rzlab-1234-1`` and hosts h1, h2::

    rzlab-1234-1-br   namespace holding the bridge br0 and the bridge ends v1, v2
    rzlab-1234-1-h1   eth0 198.18.0.1/24 (the other end of v1), lo
    rzlab-1234-1-h2   eth0 198.18.0.2/24 (the other end of v2), lo

Every veth pair is created inside the bridge's namespace with its host end moved straight
into the host's namespace, so nothing at all is added to the namespace the lab runs in.
A link is cut by setting the bridge end down: packets vanish, no RST, no goodbye.
Every namespace made is deleted by :meth:`Network.destroy`, which never raises.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Sequence

SUBNET = "198.18.0"  # the benchmarking range (RFC 2544), 198.18.0.0/15
BRIDGE = "br0"
IP_TIMEOUT_S = 10.0  # one `ip` command
_NS_PART_RE = re.compile(r"[A-Za-z0-9_-]{1,40}")  # a namespace prefix or host name, whole


class NetnsError(RuntimeError):
    """An ``ip`` command failed; the message has the command and its stderr."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = ["ip", *args]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=IP_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"{' '.join(cmd)}: {exc}") from exc
    if check and done.returncode != 0:
        raise NetnsError(f"{' '.join(cmd)}: {done.stderr.strip() or f'exit {done.returncode}'}")
    return done


def list_namespaces(prefix: str = "") -> list[str]:
    """Names in ``ip netns list`` that start with ``prefix``."""
    try:
        done = _ip("netns", "list", check=False)
    except NetnsError:
        return []
    names = [line.split()[0] for line in done.stdout.splitlines() if line.strip()]
    return [name for name in names if name.startswith(prefix)]


def available(prefix: str) -> tuple[bool, str]:
    """Whether namespaces can be made here: root, and ``ip netns add`` works (tried with a
    namespace ``PREFIX-probe`` that is deleted at once). Returns (ok, reason if not)."""
    if os.geteuid() != 0:
        return False, "network namespaces need root"
    probe = f"{prefix}-probe"
    try:
        _ip("netns", "add", probe)
    except NetnsError as exc:
        return False, f"ip netns add failed: {exc}"
    _ip("netns", "del", probe, check=False)
    return True, ""


class Network:
    """The virtual hosts of one run. :meth:`create` builds them (cleaning up what it made if
    a step fails), :meth:`destroy` deletes every namespace it made."""

    def __init__(self, prefix: str, hosts: Sequence[str]) -> None:
        """Args: ``prefix`` of every namespace name (``rzlab-PID-N``), ``hosts``: their names.

        Raises:
            ValueError: more than 250 hosts, or a prefix or host name that is not a plain
                name (letters, digits, '-' and '_', matched whole): they become namespace
                names, i.e. files in /run/netns, made as root.
        """
        if len(hosts) > 250:
            raise ValueError("at most 250 hosts")
        for what, value in (("prefix", prefix), *(("host", host) for host in hosts)):
            if not isinstance(value, str) or not _NS_PART_RE.fullmatch(value):
                raise ValueError(
                    f"namespace {what} must be 1 to 40 letters, digits, '-' or '_', got {value!r}"
                )
        self.prefix = prefix
        self.hosts = list(hosts)
        self.bridge_ns = f"{prefix}-br"
        self.created: list[str] = []  # namespaces made, in order

    def ns(self, host: str) -> str:
        """The namespace of ``host``."""
        return f"{self.prefix}-{host}"

    def address(self, host: str) -> str:
        """The IPv4 address of ``host``'s eth0."""
        return f"{SUBNET}.{self.hosts.index(host) + 1}"

    def bridge_port(self, host: str) -> str:
        """The bridge end of ``host``'s veth (in the bridge namespace)."""
        return f"v{self.hosts.index(host) + 1}"

    def _add_ns(self, name: str) -> None:
        _ip("netns", "add", name)
        self.created.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def create(self) -> None:
        """Make the bridge namespace and one namespace per host. Raises NetnsError (after
        deleting whatever it made)."""
        try:
            self._add_ns(self.bridge_ns)
            br = self.bridge_ns
            _ip("-n", br, "link", "add", BRIDGE, "type", "bridge")
            _ip("-n", br, "link", "set", BRIDGE, "up")
            for host in self.hosts:
                ns, port = self.ns(host), self.bridge_port(host)
                self._add_ns(ns)
                _ip("-n", br, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
                _ip("-n", br, "link", "set", port, "master", BRIDGE)
                _ip("-n", br, "link", "set", port, "up")
                _ip("-n", ns, "addr", "add", f"{self.address(host)}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
        except BaseException:
            self.destroy()
            raise

    def set_link(self, host: str, up: bool) -> None:
        """Cut (``up=False``) or restore ``host``'s link, at the bridge end."""
        _ip("-n", self.bridge_ns, "link", "set", self.bridge_port(host), "up" if up else "down")

    def wrap(self, host: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside ``host``'s namespace (``ip netns exec`` execs it: same pid)."""
        return ["ip", "netns", "exec", self.ns(host), *argv]

    def destroy(self) -> list[str]:
        """Delete every namespace this network made (hosts first, the bridge last). Never
        raises; returns the ones that could not be deleted."""
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

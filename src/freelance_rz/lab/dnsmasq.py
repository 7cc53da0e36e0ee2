"""A real DNS server for lab runs and tests: Debian's ``dnsmasq``, serving one zone of A,
PTR, SRV and TXT records (DNS-SD over unicast DNS, RFC 6763) and nothing else.

It never reaches anything outside the lab: no upstream servers (``no-resolv``, and
``local=/ZONE/`` answers NXDOMAIN for any other name in the zone instead of asking anyone),
no /etc/hosts (``no-hosts``), no /etc/dnsmasq.conf (the run's own ``conf-file`` only), no
DHCP, and it binds only the address it is given (``bind-interfaces``, ``listen-address``),
which is a lab namespace's address or loopback. It runs in the foreground as a child of
the lab (its pid kept), and :meth:`DnsServer.stop` kills it by that pid. A change of the zone
restarts it (dnsmasq re-reads SRV, TXT and PTR records only at start): a few milliseconds
without DNS, which the workers' sources ride out (a source that cannot tell changes nothing).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

START_TIMEOUT_S = 10.0  # waiting for dnsmasq to answer after it was started


def available() -> tuple[bool, str]:
    """Whether dnsmasq is installed here. Returns (ok, reason if not)."""
    if shutil.which("dnsmasq") is None and not os.path.exists("/usr/sbin/dnsmasq"):
        return False, "dnsmasq is not installed (apt-get install dnsmasq-base)"
    return True, ""


def _binary() -> str:
    return shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"


@dataclass(frozen=True)
class Instance:
    """One producer as a DNS-SD instance: ``INSTANCE.SERVICE`` with SRV (``host``,
    ``port``) and TXT (``txt``: ``key=value`` strings, as mDNS's)."""

    instance: str
    host: str
    port: int
    txt: tuple[str, ...]


@dataclass
class Zone:
    """The records served: ``names`` (host name -> IPv4 addresses; several make a name
    with several A records), DNS-SD ``instances`` of ``service``."""

    domain: str
    service: str
    names: dict[str, list[str]] = field(default_factory=dict)
    instances: list[Instance] = field(default_factory=list)

    def config(self) -> list[str]:
        """The zone as dnsmasq configuration lines."""
        lines = []
        for name, addresses in self.names.items():
            lines += [f"host-record={name},{address}" for address in addresses]
        for inst in self.instances:
            full = f"{inst.instance}.{self.service}"
            lines.append(f"ptr-record={self.service},{full}")
            lines.append(f"srv-host={full},{inst.host},{inst.port}")
            lines.append(f"txt-record={full}," + ",".join(f'"{entry}"' for entry in inst.txt))
        return lines


class DnsServer:
    """One dnsmasq process serving ``zone`` on ``address``:``port``.

    Args:
        address: the IPv4 address to bind (a lab namespace's, or 127.0.0.1).
        port: the UDP/TCP port (53 in a namespace; a free high port on loopback).
        zone: what to serve.
        workdir: where its configuration and log go.
        wrap: turns an argv into one run elsewhere (``Network.wrap`` for a namespace).
    """

    def __init__(self, address: str, port: int, zone: Zone, workdir: str | os.PathLike[str],
                 wrap: Sequence[str] = ()) -> None:
        self.address = address
        self.port = port
        self.zone = zone
        self.workdir = Path(workdir)
        self.wrap = list(wrap)
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def _write_config(self) -> Path:
        conf = self.workdir / "dnsmasq.conf"
        base = [
            "no-resolv", "no-hosts", "no-poll", "keep-in-foreground", "bind-interfaces",
            f"listen-address={self.address}", f"port={self.port}", f"local=/{self.zone.domain}/",
            "no-negcache", "local-ttl=0", "pid-file=", "log-queries",
            f"log-facility={self.workdir / 'dnsmasq.log'}",
            *([] if os.geteuid() != 0 else ["user=root"]),
        ]
        conf.write_text("\n".join([*base, *self.zone.config()]) + "\n")
        return conf

    def start(self) -> None:
        """Start dnsmasq and wait until it answers. Raises RuntimeError if it does not."""
        conf = self._write_config()
        argv = [*self.wrap, _binary(), f"--conf-file={conf}"]
        with open(self.workdir / "dnsmasq.err", "ab") as errors:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=errors, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = (self.workdir / "dnsmasq.err").read_text(errors="replace")[-500:]
                raise RuntimeError(f"dnsmasq ended at start (exit {self.proc.returncode}): {err}")
            if self._bound():
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"dnsmasq did not start within {START_TIMEOUT_S:g} s")

    def _bound(self) -> bool:
        """dnsmasq logs ``started`` once its sockets are bound."""
        try:
            return "started, version" in (self.workdir / "dnsmasq.log").read_text(errors="replace")
        except FileNotFoundError:
            return False

    def restart(self, zone: Zone) -> float:
        """Serve ``zone`` from now on (dnsmasq restarted). Returns the wall-clock time it
        answers the new zone."""
        self.zone = zone
        self.stop()
        (self.workdir / "dnsmasq.log").unlink(missing_ok=True)
        self.start()
        self.restarts += 1
        return time.time()

    def stop(self) -> None:
        """Kill dnsmasq by its process group (started here, its own session) and reap it.
        Safe to call twice."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass


def free_port(address: str = "127.0.0.1") -> int:
    """A port free on ``address`` now for both UDP and TCP (dnsmasq binds both), for dnsmasq
    on loopback. Another process may take it before dnsmasq does: :func:`start_on_free_port`
    tries again then."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((address, 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((address, port))
                except OSError:
                    continue
                return port
    raise OSError(f"no port free for both UDP and TCP on {address}")


def start_on_free_port(address: str, zone: Zone, workdir: str | os.PathLike[str],
                       attempts: int = 5) -> DnsServer:
    """A :class:`DnsServer` started on a free port of ``address`` (loopback), trying another
    port when the one chosen was taken meanwhile.

    Raises:
        RuntimeError: dnsmasq did not start, for another reason or ``attempts`` times.
    """
    for attempt in range(attempts):
        server = DnsServer(address, free_port(address), zone, workdir)
        try:
            server.start()
            return server
        except RuntimeError as exc:
            if "Address already in use" not in str(exc) or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


__all__ = ["DnsServer", "Instance", "Zone", "available", "free_port", "start_on_free_port"]

"""Beyond one LAN, on real network parts (issue 18, DESIGN §11): producers on one subnet,
workers on another, joined by a router that does not pass multicast, and a real DNS server.

Hosts (:mod:`freelance_rz.lab.subnets`; every address in 198.18.0.0/15)::

    subnet a  198.18.1.0/24   pa1 pa2 pa3: producers p1 p2 p3 (port 5555, mDNS on, each writes
                              its line into the run's endpoints file)
                              dns: dnsmasq on its address, port 53 (:mod:`.dnsmasq`)
                              wa: a worker with --discover (mDNS works within a subnet)
    subnet b  198.18.2.0/24   wb-mdns: --discover            (must find nothing)
                              wb-dnssd: --discover-dns _freelance-rz._tcp.rz.test
                              wb-name: --connect tcp://producers.rz.test:5555
                              wb-file: --connect-file RUN/producers.txt

Theory of operation
-------------------
1. **Setup.** Network; producers p1 and p2; dnsmasq serving ``producers.rz.test`` (one A
   record per producer) and a DNS-SD instance per producer (PTR, SRV, TXT with the
   producer's id and group, as mDNS would announce); every host asks only that server.
   Then the workers (``--resolve-every-s`` as given).
2. **Found.** Until wa, wb-dnssd, wb-name and wb-file each found p1 and p2; then a settle
   window (at least two resolve intervals, 4 s or more), after which wb-mdns must have found
   none and run no job. Then ``freelance-status --check`` runs on subnet b with each source
   (DNS-SD, the name, the file, mDNS): the first three see both producers, mDNS none.
3. **Add.** p3 starts (its file line appears when it is up), then goes into the zone
   (dnsmasq restarted with it). For each worker on b: seconds from its source's change (the
   zone restarted; for wb-file, p3's line seen in the file) to ``found`` p3, and to the first
   job of p3 it starts. Expect at most one resolve interval
   for DNS (plus a query), about a second for the file (``POLL_S``).
4. **Remove.** p2 leaves the zone and the file, then is SIGKILLed. For each worker on b:
   seconds from the kill until it stopped polling p2 (its first ``unreachable`` or
   ``forgotten`` record for p2: expect ≲ 1.5 s, C5) and until it forgot p2 (once p2 is out
   of its source and silent: expect at most about one resolve interval after the kill).
5. **Teardown**, always: SIGTERM, then SIGKILL, every process started here by process
   group; dnsmasq killed by its pid; every namespace and /etc/netns directory deleted.

Every process writes its records into ``events.jsonl`` (:mod:`.records`); the figures are
computed from them by :func:`measure`, which needs no network.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from ..core.wire import VERSION
from ..endpointsfile import remove_entry
from .dnsmasq import DnsServer, Instance, Zone
from .records import ENV_EVENTS, ENV_HOST, ENV_PEER, append, read
from .subnets import TwoSubnets

DOMAIN = "rz.test"  # a reserved top-level domain (RFC 6761): never a real zone
SERVICE = f"_freelance-rz._tcp.{DOMAIN}"
NAME = f"producers.{DOMAIN}"
PORT = 5555
PRODUCERS = {"p1": "pa1", "p2": "pa2", "p3": "pa3"}  # producer -> its host (subnet a)
WORKERS = {  # worker -> (host, subnet, how it finds producers)
    "wa": ("wa", "a", ["--discover"]),
    "wb-mdns": ("wb-mdns", "b", ["--discover"]),
    "wb-dnssd": ("wb-dnssd", "b", ["--discover-dns", SERVICE]),
    "wb-name": ("wb-name", "b", ["--connect", f"tcp://{NAME}:{PORT}"]),
    "wb-file": ("wb-file", "b", ["--connect-file", "{run}/producers.txt"]),
}
FINDERS_B = ("wb-dnssd", "wb-name", "wb-file")  # the workers on b that must find producers
WAIT_S = 30.0  # longest wait for any step
STOP_GRACE_S = 5.0  # teardown: SIGTERM, then SIGKILL after this
_RUNS = itertools.count(1)


class BeyondError(RuntimeError):
    """A step did not happen in time (the message says which); teardown has run."""


@dataclass
class BeyondReport:
    """What a run showed (seconds, wall clock, from its records); see :func:`measure`."""

    run_dir: str
    resolve_every_s: float
    found: dict[str, list[str]]  # worker -> producers it found
    jobs: dict[str, dict[str, int]]  # worker -> producer -> jobs it started
    add_found_s: dict[str, float | None]  # worker on b -> source change to found p3
    add_first_job_s: dict[str, float | None]  # worker on b -> source change to a job of p3
    remove_stopped_s: dict[str, float | None]  # worker on b -> kill of p2 to it stopped polling
    remove_forgotten_s: dict[str, float | None]  # worker on b -> kill of p2 to forgotten
    p2_jobs_after_kill: dict[str, int] = field(default_factory=dict)
    status_checks: dict[str, list[Any]] = field(default_factory=dict)  # source -> [exit code, line]
    leftover_namespaces: list[str] = field(default_factory=list)


@dataclass(eq=False)
class _Proc:
    name: str
    proc: subprocess.Popen[bytes]
    log: IO[bytes]


class BeyondRun:
    """One run into a new directory under ``out_dir`` (see the module docstring).

    Args:
        out_dir: parent of the run directory (made if missing).
        resolve_every_s: the workers' ``--resolve-every-s``.
        show: called with a line of progress (None: quiet).
    """

    def __init__(self, out_dir: str | os.PathLike[str], resolve_every_s: float = 2.0,
                 show: Callable[[str], None] | None = None) -> None:
        n = next(_RUNS)
        self.prefix = f"rzlab-{os.getpid()}-b{n}"
        self.group = f"beyond-{os.getpid()}-{n}"
        self.resolve_every_s = resolve_every_s
        self.show = show or (lambda line: None)
        self.run_dir = Path(out_dir).resolve() / f"beyond-lan-{time.strftime('%Y%m%d-%H%M%S')}-{n}"
        self.run_dir.mkdir(parents=True)
        self.events = self.run_dir / "events.jsonl"
        self.file = self.run_dir / "producers.txt"
        hosts = {host: "a" for host in PRODUCERS.values()}
        hosts["dns"] = "a"
        hosts.update({host: subnet for host, subnet, _ in WORKERS.values()})
        self.net = TwoSubnets(self.prefix, hosts)
        self.dns: DnsServer | None = None
        self.procs: dict[str, _Proc] = {}
        self.ids: dict[str, str] = {}  # producer -> its producer id
        self.status_checks: dict[str, list[Any]] = {}

    # --- processes ----------------------------------------------------------------------------

    def _spawn(self, name: str, host: str, argv: list[str]) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", FREELANCE_RZ_INTERFACES=self.net.address(host),
                   **{ENV_EVENTS: str(self.events), ENV_PEER: name, ENV_HOST: host})
        log = open(self.run_dir / f"{name}.log", "ab")
        proc = subprocess.Popen(self.net.wrap(host, argv), cwd=self.run_dir, env=env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs[name] = _Proc(name, proc, log)
        self._record("action", action="start", target=name, pid=proc.pid)

    def _producer(self, name: str) -> None:
        host = PRODUCERS[name]
        self._spawn(name, host, [sys.executable, "-m", "freelance_rz.lab.beyond_peer", name,
                                 self.net.address(host), str(PORT), self.group, str(self.file)])

    def _worker(self, name: str) -> None:
        host, _, how = WORKERS[name]
        how = [part.replace("{run}", str(self.run_dir)) for part in how]
        self._spawn(name, host, [
            sys.executable, "-m", "freelance_rz.lab.worker_peer", *how, "--tasks",
            "freelance_rz.lab.tasks", "--group", self.group, "--name", name, "--slots", "2",
            "--resolve-every-s", f"{self.resolve_every_s:g}", "--interface", self.net.address(host),
        ])

    def _signal(self, name: str, sig: int) -> None:
        try:
            os.killpg(self.procs[name].proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _record(self, kind: str, **fields: Any) -> float:
        now = time.time()
        append(self.events, kind, peer="lab", host="-", t=now, **fields)
        return now

    # --- the zone -----------------------------------------------------------------------------

    def _zone(self, producers: list[str]) -> Zone:
        zone = Zone(DOMAIN, SERVICE, names={NAME: [self.net.address(PRODUCERS[p]) for p in producers]})
        for p in producers:
            host = f"{PRODUCERS[p]}.{DOMAIN}"
            zone.names[host] = [self.net.address(PRODUCERS[p])]
            zone.instances.append(Instance(p, host, PORT, (f"v={VERSION}", f"id={self.ids[p]}", f"g={self.group}")))
        return zone

    # --- waiting ------------------------------------------------------------------------------

    def _wait(self, what: str, done: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
        deadline = time.monotonic() + WAIT_S
        while True:
            recs = read(self.events)
            if done(recs):
                return recs
            dead = [p.name for p in self.procs.values() if p.proc.poll() is not None
                    and p.name != "p2"]
            if dead or time.monotonic() > deadline:
                why = f"{', '.join(dead)} ended" if dead else f"not within {WAIT_S:g} s"
                raise BeyondError(f"{what}: {why}; see the logs in {self.run_dir}")
            time.sleep(0.02)

    def _ready(self, producer: str) -> Callable[[list[dict[str, Any]]], bool]:
        return lambda recs: any(r["kind"] == "producer_ready" and r["peer"] == producer for r in recs)

    def _found_all(self, workers: tuple[str, ...], producers: list[str]) -> Callable[[list[dict[str, Any]]], bool]:
        def done(recs: list[dict[str, Any]]) -> bool:
            found = _found(recs, self._endpoints())
            return all(set(producers) <= found.get(w, set()) for w in workers)
        return done

    def _endpoints(self) -> dict[str, str]:
        return {f"tcp://{self.net.address(host)}:{PORT}": p for p, host in PRODUCERS.items()}

    # --- the run ------------------------------------------------------------------------------

    def run(self) -> BeyondReport:
        """Run every step; always tears down. Raises BeyondError (a step not in time),
        netns.NetnsError (the network) or RuntimeError (dnsmasq)."""
        leftovers: list[str] = []
        try:
            self._setup()
            self._steps()
        finally:
            leftovers = self._teardown()
        report = measure(read(self.events), self._endpoints(), self.resolve_every_s, str(self.run_dir))
        report.leftover_namespaces = leftovers
        report.status_checks = self.status_checks
        (self.run_dir / "report.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
        return report

    def _setup(self) -> None:
        self.net.create()
        dns_address = self.net.address("dns")
        self.net.use_dns([h for h in self.net.hosts if h != "dns"], dns_address)
        self.show(f"network {self.prefix}: subnet a 198.18.1.0/24, b 198.18.2.0/24, router, DNS {dns_address}")
        for p in ("p1", "p2"):
            self._producer(p)
        recs = self._wait("p1 and p2 up", lambda r: self._ready("p1")(r) and self._ready("p2")(r))
        self.ids = {r["peer"]: r["producer_id"] for r in recs if r["kind"] == "producer_ready"}
        self.dns = DnsServer(dns_address, 53, self._zone(["p1", "p2"]), self.run_dir,
                             wrap=self.net.wrap("dns", []))
        self.dns.start()
        self._record("zone", producers=["p1", "p2"])
        for worker in WORKERS:
            self._worker(worker)

    def _steps(self) -> None:
        self._wait("every worker but wb-mdns found p1 and p2",
                   self._found_all(("wa", *FINDERS_B), ["p1", "p2"]))
        settle = max(4.0, 2 * self.resolve_every_s)
        self.show(f"found p1 and p2; watching wb-mdns for {settle:g} s")
        time.sleep(settle)
        self._record("settled")
        self.status_checks = self._status_checks()
        self._producer("p3")
        p3 = f"tcp://{self.net.address(PRODUCERS['p3'])}:{PORT}"
        self._wait("p3's line in the endpoints file", lambda recs: self._has_line(p3))
        self._record("file_line", target="p3")
        recs = self._wait("p3 up", self._ready("p3"))
        self.ids["p3"] = next(r["producer_id"] for r in recs if r["kind"] == "producer_ready" and r["peer"] == "p3")
        assert self.dns is not None
        self.dns.restart(self._zone(["p1", "p2", "p3"]))
        self._record("zone", producers=["p1", "p2", "p3"])
        self.show("p3 up and in the zone")
        self._wait("the workers on b found p3", self._found_all(FINDERS_B, ["p3"]))
        self.dns.restart(self._zone(["p1", "p3"]))
        remove_entry(self.file, f"tcp://{self.net.address(PRODUCERS['p2'])}:{PORT}")
        self._record("zone", producers=["p1", "p3"])
        self._signal("p2", signal.SIGKILL)
        self._record("action", action="sigkill", target="p2")
        self.show("p2 out of the zone and the file, and killed")
        self._wait("the workers on b forgot p2", lambda recs: all(
            any(r["kind"] == "forgotten" and r["peer"] == w and r.get("endpoint") in self._p2() for r in recs)
            for w in FINDERS_B))

    def _status_checks(self) -> dict[str, list[Any]]:
        """``freelance-status --check`` from a host on subnet b, with each source."""
        checks = {}
        for source, how in (("dns-sd", WORKERS["wb-dnssd"][2]), ("name", WORKERS["wb-name"][2]),
                            ("file", ["--connect-file", str(self.file)]), ("mdns", ["--discover"])):
            argv = [sys.executable, "-c", "import sys; from freelance_rz.cli import status_main; "
                    "sys.exit(status_main())", *how, "--group", self.group, "--check",
                    *(["--interface", self.net.address("wb-mdns")] if source == "mdns" else [])]
            done = subprocess.run(self.net.wrap("wb-mdns", argv), capture_output=True, text=True,
                                  timeout=60, cwd=self.run_dir, stdin=subprocess.DEVNULL)
            checks[source] = [done.returncode, (done.stdout.strip() or done.stderr.strip())[:300]]
        return checks

    def _has_line(self, endpoint: str) -> bool:
        try:
            return any(line.split()[:1] == [endpoint] for line in self.file.read_text().splitlines())
        except FileNotFoundError:
            return False

    def _p2(self) -> set[str]:
        return {f"tcp://{self.net.address(PRODUCERS['p2'])}:{PORT}"}

    def _teardown(self) -> list[str]:
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            for role in ("w", "p"):
                group = [p for p in self.procs.values() if p.name.startswith(role)]
                for p in group:
                    self._signal(p.name, signal.SIGTERM)
                deadline = time.monotonic() + STOP_GRACE_S
                for p in group:
                    try:
                        p.proc.wait(max(0.0, deadline - time.monotonic()))
                    except subprocess.TimeoutExpired:
                        pass
                    self._signal(p.name, signal.SIGKILL)
                    try:
                        p.proc.wait(10)
                    except subprocess.TimeoutExpired:
                        pass
                    p.log.close()
            if self.dns is not None:
                self.dns.stop()
            return self.net.destroy()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _found(recs: list[dict[str, Any]], endpoints: dict[str, str]) -> dict[str, set[str]]:
    """worker -> the producers it found (by endpoint)."""
    found: dict[str, set[str]] = {}
    for r in recs:
        if r["kind"] == "found" and r.get("endpoint") in endpoints:
            found.setdefault(r["peer"], set()).add(endpoints[r["endpoint"]])
    return found


def _first(recs: list[dict[str, Any]], after: float, match: Callable[[dict[str, Any]], bool]) -> float | None:
    times = [r["t"] for r in recs if r["t"] >= after and match(r)]
    return None if not times else round(min(times) - after, 3)


def _is(kind: str, worker: str, endpoint: str | None = None,
        key_prefix: str | None = None) -> Callable[[dict[str, Any]], bool]:
    """A record of ``kind`` by ``worker`` (about ``endpoint``, or of a job key starting so)."""
    def match(r: dict[str, Any]) -> bool:
        return (r["kind"] == kind and r["peer"] == worker
                and (endpoint is None or r.get("endpoint") == endpoint)
                and (key_prefix is None or str(r.get("key", "")).startswith(key_prefix)))
    return match


def _stopped(worker: str, endpoint: str, labels: set[str]) -> Callable[[dict[str, Any]], bool]:
    """The worker's first sign that it stopped polling the producer at ``endpoint`` (which it
    logs as one of ``labels``): unreachable, or forgotten."""
    def match(r: dict[str, Any]) -> bool:
        return r["peer"] == worker and (
            (r["kind"] == "unreachable" and r.get("producer_key") in labels)
            or (r["kind"] == "forgotten" and r.get("endpoint") == endpoint))
    return match


def measure(recs: list[dict[str, Any]], endpoints: dict[str, str], resolve_every_s: float,
            run_dir: str) -> BeyondReport:
    """The figures of a run from its records (pure).

    Args:
        recs: the run's records.
        endpoints: producer endpoint -> producer name.
        resolve_every_s: the workers' resolve interval (reported).
        run_dir: the run directory (reported).
    """
    ep = {name: endpoint for endpoint, name in endpoints.items()}
    jobs: dict[str, Counter[str]] = {}
    for r in recs:
        if r["kind"] == "started" and isinstance(r.get("key"), str):
            jobs.setdefault(r["peer"], Counter())[r["key"].split("-")[0]] += 1
    file_p3 = next((r["t"] for r in recs if r["kind"] == "file_line" and r.get("target") == "p3"), None)
    zone_p3 = next((r["t"] for r in recs if r["kind"] == "zone" and "p3" in r["producers"]), None)
    kill = next((r["t"] for r in recs if r["kind"] == "action" and r.get("action") == "sigkill"), None)
    report = BeyondReport(
        run_dir=run_dir, resolve_every_s=resolve_every_s,
        found={w: sorted(p) for w, p in _found(recs, endpoints).items()},
        jobs={w: dict(sorted(c.items())) for w, c in jobs.items()},
        add_found_s={}, add_first_job_s={}, remove_stopped_s={}, remove_forgotten_s={},
    )
    for w in FINDERS_B:
        change = file_p3 if w == "wb-file" else zone_p3
        if change is not None:
            report.add_found_s[w] = _first(recs, change, _is("found", w, ep["p3"]))
            report.add_first_job_s[w] = _first(recs, change, _is("started", w, key_prefix="p3-"))
        if kill is not None:
            labels = {r["producer_key"] for r in recs if _is("found", w, ep["p2"])(r)}
            report.remove_stopped_s[w] = _first(recs, kill, _stopped(w, ep["p2"], labels))
            report.remove_forgotten_s[w] = _first(recs, kill, _is("forgotten", w, ep["p2"]))
            report.p2_jobs_after_kill[w] = sum(
                1 for r in recs if r["t"] > kill and _is("started", w, key_prefix="p2-")(r))
    return report


def format_report(report: BeyondReport) -> str:
    """The figures as a few lines of text."""
    lines = [f"beyond one LAN (--resolve-every-s {report.resolve_every_s:g}): {report.run_dir}"]
    for worker in WORKERS:
        found = ", ".join(report.found.get(worker, [])) or "none"
        jobs = ", ".join(f"{p} {n}" for p, n in report.jobs.get(worker, {}).items()) or "none"
        lines.append(f"  {worker:9} found {found}; jobs run: {jobs}")
    for source, (code, line) in report.status_checks.items():
        lines.append(f"  freelance-status --check from subnet b, {source}: exit {code}: {line}")
    lines.append("  worker     add: found p3  first job   remove: stopped polling p2  forgot p2")

    def s(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f} s"

    for w in FINDERS_B:
        lines.append(f"  {w:9}  {s(report.add_found_s.get(w)):>13} {s(report.add_first_job_s.get(w)):>10}"
                     f"  {s(report.remove_stopped_s.get(w)):>27} {s(report.remove_forgotten_s.get(w)):>10}")
    return "\n".join(lines)


__all__ = ["BeyondError", "BeyondReport", "BeyondRun", "format_report", "measure"]

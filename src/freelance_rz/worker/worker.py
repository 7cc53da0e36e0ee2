"""Worker: finds producers, pulls one job per free slot, runs it, delivers the result.

The :class:`Worker` object checks its arguments and, in :meth:`Worker.run`, sets up what a
worker is made of, then runs its loop (:mod:`freelance_rz.worker.loop`) until stopped: the
job processes of its slots (:mod:`~freelance_rz.worker.slots`), the producers it knows with one
DEALER each (:mod:`~freelance_rz.worker.peers`, :mod:`~freelance_rz.worker.link`), each with its
protocol state (:mod:`freelance_rz.core.session`), and the mDNS browser when it discovers them.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import queue
import re
import resource
import secrets
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import zmq

from ..core import check as _check
from ..core import wire as w
from ..core.match import MAX_MODULES, MODULE_MAX_CHARS, MODULE_RE
from ..core.payload import POOLS, Setup
from ..core.session import DEFAULT_WAIT_MS, Session
from ..discovery import Browser, resolve_interfaces
from ..dnssd import DnsSdSource, check_service
from ..security import KeyPair, check_pair, load_keypair, trusted_key_files
from ..sources import (
    RESOLVE_EVERY_S,
    ConnectSource,
    FileSource,
    KeyFinder,
    Source,
    SourceThread,
    is_address,
)
from .health import HealthFile
from .pool import Pool
from .slots import Reaper
from .stats import WorkerStats

if TYPE_CHECKING:
    from .peers import Peers

log = logging.getLogger("freelance_rz.worker")

GIVE_UP_S = 60.0  # a producer unreachable this long: abort its jobs, forget it if discovered
NAME_MAX_BYTES = 200  # a worker's name, in UTF-8: it is part of its routing id (255 bytes at most)
_IDENTIFIERS = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
MAX_PAYLOAD_LIMIT = 2**62  # bytes: the largest max_payload_bytes (MAXMSGSIZE is an int64)


class Worker:
    """Pulls jobs from producers and runs them in its job processes (``pool``).

    Args:
        tasks: importable module names whose public functions may run (the allowlist).
        discover: browse mDNS for producers of ``group``.
        connect: producer endpoints, e.g. ``["tcp://10.0.0.5:5555"]``. An IP address is a
            static producer (never forgotten); a name (``tcp://producers.myapp.svc:5555``)
            is resolved to all its addresses, each a producer, and resolved again every
            ``resolve_every_s`` (a Kubernetes headless Service, a round-robin DNS name).
        discover_dns: DNS-SD services to browse over unicast DNS (RFC 6763), e.g.
            ``["_freelance-rz._tcp.example.org"]``: PTR, SRV and TXT records of an ordinary
            zone, with the TXT entries of mDNS (needs dnspython: the ``dns`` extra).
        connect_file: an endpoints file (:mod:`freelance_rz.endpointsfile`): one producer
            per line, read again when it changes.
        resolve_every_s: seconds between reads of names, DNS-SD services and the names in
            ``connect_file`` (default 10).
        health_file: a file the worker's loop rewrites every second, for container probes
            (``freelance-status --check --health-file PATH``); removed when it stops.
        group: producer group to serve.
        slots: jobs run at once (default: number of CPUs).
        interfaces: IPv4 addresses for mDNS (None: ``$FREELANCE_RZ_INTERFACES``, else all).
        name: a label for logs and the routing id (default: hostname and pid).
        wait_ms: claim long-poll in milliseconds.
        give_up_s: seconds a producer may stay unreachable before its running jobs are aborted,
            its undelivered results dropped and, if it was discovered, it is forgotten.
        key, trust: CURVE security (give both, or neither): the path of this worker's
            ``NAME.key_secret`` file, and a directory of the ``NAME.key`` public keys of the
            producers it may serve. Announcements without a key or with a key not in ``trust``
            are ignored with a warning. A producer whose source names no key (``connect``,
            a file line without ``pk=``) is served with the one key in ``trust``, or, when it
            holds several, with the one the producer is found to hold (a handshake is tried
            with each, logged). See :mod:`freelance_rz.security`.
        max_payload_bytes: largest job payload taken from a producer, in bytes (as the
            producers' ``max_payload_bytes``): claims say it, so producers never hand this
            worker a larger job (one larger than every worker takes fails with
            :class:`~freelance_rz.JobTooLarge`).
        metrics_port, metrics_host: serve Prometheus metrics at
            ``http://metrics_host:metrics_port/metrics`` while :meth:`run` runs (the
            ``metrics`` extra; docs/operations.md lists them). None: no endpoint.
        resources: what the worker has for its jobs to share, name -> amount, e.g.
            ``{"gpu": 1, "mem_gb": 64}`` (``--resources gpu=1,mem_gb=64``): a job that needs
            some (``producer.options(resources={"gpu": 1})``) holds them while it runs, so
            slots and resources both bound what runs at once. Claims say what is free.
        labels: labels jobs may ask for, name -> value, e.g. ``{"zone": "eu"}``
            (``--label zone=eu``).
        pool: how jobs run (:mod:`freelance_rz.worker.pool`): ``"process"`` (default: a job
            process per slot, one job at a time each), ``"thread"`` (one job process, a
            thread per slot) or ``"asyncio"`` (one job process, ``async def`` tasks
            concurrently on one event loop, plain functions in its threads). ``async def``
            tasks run in every pool.
        init: ``"module:function"`` called once in each job process before its first job
            (load a model, open a connection); it may be ``async def``. A failure stops the
            worker with the error.
        max_jobs_per_process: replace a job process once it was handed this many jobs
            (after the last one ends; None: never).
        max_memory_per_process_mib: replace a job process whose resident memory is over
            this many MiB after a job (Linux; None: never). Neither limit stops a running job.
        _cli: private (``freelance-worker``): messages name the command-line flags
            (``--tasks``, ``--connect``) instead of these arguments.

    Claims say what this worker can run (its ``tasks`` modules, free ``resources`` and
    ``labels``), and producers hand it only such jobs (DESIGN §8). A job cancelled in the
    thread or asyncio pool holds its resources until its run has stopped.

    :meth:`run` blocks until :meth:`stop` (callable from any thread or a signal handler).

    A module named twice in ``tasks`` is taken once. Ranges: ``slots`` >= 1, ``wait_ms`` >= 1,
    ``give_up_s`` > 0 (``float("inf")``: never), ``group`` 1 to 63 characters, ``name`` at most
    200 bytes in UTF-8, ``max_payload_bytes`` 1 to 2**62, ``resolve_every_s`` 0.1 to 3600;
    at most 256 ``tasks`` modules; at most 32 ``resources`` and 32 ``labels``, names of 1 to
    64 of ``A-Z a-z 0-9 _ . -`` (starting with a letter or ``_``), amounts finite numbers
    from 0 to 1e15, label values at most 128 characters; ``max_jobs_per_process`` >= 1,
    ``max_memory_per_process_mib`` > 0.

    Raises:
        TypeError: an argument of the wrong type, e.g. ``tasks="myapp.tasks"`` (a str, not a
            list of str), ``slots=2.5``, ``discover=None``; the message names the argument,
            what it must be and the value given.
        ValueError: an argument out of its range; no producer source, no task module, bad
            interfaces; only one of ``key`` and ``trust``, an unreadable key, or ``trust``
            without public keys; a ``discover_dns`` service that is not a DNS name; an
            unknown ``pool``; an ``init`` not of the form ``module:function``.
        ModuleNotFoundError: a ``tasks`` module or the ``init`` module cannot be found.
        ImportError: ``discover_dns`` without dnspython installed.
    """

    _pool_now: Pool | None = None  # run()'s, for metrics_snapshot()
    _peers: Peers | None = None
    # freelance-worker's process has imported no task module and started no thread when it
    # runs a worker: its first job processes may be forked from it (ready sooner).
    _fork_first = False

    def __init__(
        self,
        tasks: Sequence[str],
        *,
        discover: bool = False,
        connect: Sequence[str] = (),
        group: str = "default",
        slots: int | None = None,
        interfaces: list[str] | None = None,
        name: str | None = None,
        wait_ms: int = DEFAULT_WAIT_MS,
        give_up_s: float = GIVE_UP_S,
        key: str | os.PathLike[str] | None = None, trust: str | os.PathLike[str] | None = None,
        max_payload_bytes: int = w.DEFAULT_MAX_PAYLOAD,
        discover_dns: Sequence[str] = (), connect_file: str | os.PathLike[str] | None = None,
        resolve_every_s: float = RESOLVE_EVERY_S,
        health_file: str | os.PathLike[str] | None = None,
        metrics_port: int | None = None, metrics_host: str = "127.0.0.1",
        resources: Mapping[str, float] | None = None, labels: Mapping[str, str] | None = None,
        pool: str = POOLS[0], init: str | None = None,
        max_jobs_per_process: int | None = None, max_memory_per_process_mib: float | None = None,
        _cli: bool = False,
    ) -> None:
        tasks = list(dict.fromkeys(_check.strings("tasks", tasks, example="['myapp.tasks']")))
        self.discover = _check.boolean("discover", discover)
        endpoints: list[str] = _check.strings("connect", connect, example="['tcp://10.0.0.5:41234']")
        services: list[str] = _check.strings(
            "discover_dns", discover_dns, example="['_freelance-rz._tcp.example.org']"
        )
        self.connect_file = _check.path("connect_file", connect_file)
        self.resolve_every_s = _check.number("resolve_every_s", resolve_every_s, min_=0.1, max_=3600,
                                             unit="seconds")
        self.health_file = _check.path("health_file", health_file)
        self.group = _check.group(group)
        slots = _check.integer("slots", slots, min_=1, allow_none=True)
        interfaces = _check.strings("interfaces", interfaces, example="['192.168.1.20']", allow_none=True)
        name = _check.string("name", name, max_bytes=NAME_MAX_BYTES, allow_none=True)
        self.wait_ms = _check.integer("wait_ms", wait_ms, min_=1, max_=w.MAX_UINT, unit="milliseconds")
        self.give_up_s = _check.number("give_up_s", give_up_s, above=0, unit="seconds", allow_inf=True)
        key, trust = _check.path("key", key), _check.path("trust", trust)
        self.max_payload_bytes = _check.integer(
            "max_payload_bytes", max_payload_bytes, min_=1, max_=MAX_PAYLOAD_LIMIT, unit="bytes"
        )
        self._metrics_at = _check.metrics_address(metrics_port, metrics_host)
        self.metrics_url: str | None = None  # set by run() when serving metrics
        self.resources, self.labels = _capabilities(resources, labels)
        self.pool, self.init, self.max_jobs_per_process, self.max_memory_per_process_mib = (
            _pool_options(pool, init, max_jobs_per_process, max_memory_per_process_mib, _cli))
        _need_source(self.discover or bool(endpoints or services) or self.connect_file is not None)
        self.tasks = _task_modules(tasks, _cli)  # each module once, in the order given
        self.slots = (os.cpu_count() or 1) if slots is None else slots
        self.connect = _endpoints(endpoints, _cli)
        self.discover_dns = [check_service(service) for service in services]
        self._keys, self._trusted = _curve_keys(key, trust, _cli)
        self.interfaces = resolve_interfaces(interfaces)
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        # The routing id is a secret: with it, a client could take this worker's replies
        # (ROUTER_HANDOVER). 128 random bits; producers show only NAME-<hash> of it.
        self.identity = f"{self.name[:200]}-{secrets.token_hex(16)}".encode()
        self.stats = WorkerStats()
        self._events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = _wake_pipe()

    # --- control from other threads / signal handlers --------------------------------------

    def stop(self) -> None:
        """Graceful stop (C6): finish running jobs, deliver their results, claim nothing new.
        Safe from any thread and from signal handlers."""
        self._post("stop", None)

    def _post(self, kind: str, value: Any) -> None:
        self._events.put((kind, value))
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass  # the pipe is full (a wake-up is pending anyway) or closed (run ended)

    # --- running ---------------------------------------------------------------------------

    def run(self) -> WorkerStats:
        """Serve until stopped. Returns the :class:`WorkerStats`.

        Raises:
            RuntimeError: a job process could not be set up (a task module or the ``init``
                function failed); the worker stopped first (running jobs finished, their
                results delivered).
        """
        browser = None
        sources: list[SourceThread] = []
        reaper = Reaper()
        pool = self._pool_now = self._make_pool(reaper)
        peers = None
        metrics = None
        health = None if self.health_file is None else HealthFile(self.health_file)
        try:
            # Start-up order: the job processes and the mDNS browser start first, so they set
            # themselves up and find producers while the poll loop is imported.
            reaper.start()
            pool.start(fork=self._fork_first)
            browser = self._start_browser()
            from .loop import WorkerLoop
            from .peers import Peers

            peers = self._peers = Peers(
                zmq.Context.instance(), self.identity, self.max_payload_bytes, self._keys,
                frozenset(self._trusted), self.give_up_s, self.stats,
            )
            peers.max_producers = _max_producers()
            loop = WorkerLoop(
                name=self.name, pool=pool, peers=peers, wait_ms=self.wait_ms,
                interfaces=self.interfaces, wake_r=self._wake_r, events=self._events,
                stats=self.stats, clock=time.monotonic, tasks=tuple(self.tasks),
                resources=self.resources, labels=self.labels, health=health,
            )
            sources = self._sources()
            for source in sources:
                source.start()
            self._add_static_peers(peers)
            if self._metrics_at is not None:
                metrics = self._serve_metrics(*self._metrics_at)
            log.info("worker %s starting: %d slot(s) (%s pool), tasks %s%s, %s", self.name,
                     self.slots, self.pool, ", ".join(self.tasks),
                     _described(self.resources, self.labels), self._source_text())
            loop.run()
        finally:
            if metrics is not None:
                metrics.close()
            if browser is not None:
                browser.close()
            for source in sources:
                source.close()
            if peers is not None:
                peers.close()
            if health is not None:
                health.remove()
            pool.close()
            reaper.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
        if pool.fatal is not None:
            raise RuntimeError(pool.fatal)
        log.info(
            "worker %s stopped: %d producer(s) found, %d job(s) run, %d failed",
            self.name, self.stats.producers_found, self.stats.jobs_run, self.stats.jobs_failed,
        )
        return self.stats

    def _make_pool(self, reaper: Reaper) -> Pool:
        """This worker's pool (not started): its job processes are told ``reaper``."""
        memory = self.max_memory_per_process_mib
        return Pool(
            self.pool, self.slots,
            Setup(self.tasks, self.init, self.pool, self.slots, list(sys.path)),
            max_jobs=self.max_jobs_per_process,
            max_memory_bytes=None if memory is None else int(memory * 2**20), reaper=reaper,
        )

    def _start_browser(self) -> Browser | None:
        """With ``discover``, the started mDNS browser, posting what it finds to the loop."""
        if not self.discover:
            return None
        browser = Browser(self.group, self.interfaces, on_found=lambda a: self._post("found", a),
                          on_gone=lambda name: self._post("gone", name))
        browser.start()
        return browser

    def _add_static_peers(self, peers: Peers) -> None:
        """The ``connect`` addresses whose key is known (at most one trusted key): peers at
        once. Names, and addresses whose key must be probed, come from their source thread."""
        server_key = next(iter(self._trusted), None)
        for endpoint in self.connect:
            if is_address(w.parse_endpoint(endpoint)[0]) and len(self._trusted) <= 1:
                peers.add(Session(endpoint, discovered=False, server_key=server_key), time.monotonic())

    def _source_text(self) -> str:
        """Where this worker looks for producers, for its start line."""
        parts = [f"discovering group {self.group!r} on mDNS"] if self.discover else []
        parts += [f"DNS-SD {service}" for service in self.discover_dns]
        if self.connect_file is not None:
            parts.append(f"endpoints file {self.connect_file}")
        if self.connect:
            parts.append("producers " + ", ".join(self.connect))
        return "; ".join(parts)

    def _sources(self) -> list[SourceThread]:
        """The threads reading the sources other than mDNS: ``connect`` names (and, with
        several trusted keys, ``connect`` addresses, whose key is probed), ``discover_dns``,
        ``connect_file``; they post what they find as the mDNS browser does."""
        found: list[Source] = []
        if any(not is_address(w.parse_endpoint(ep)[0]) for ep in self.connect) or (
            self.connect and len(self._trusted) > 1
        ):
            found.append(ConnectSource(self.connect, static=len(self._trusted) > 1))
        for service in self.discover_dns:
            found.append(DnsSdSource(service, self.group))
        if self.connect_file is not None:
            found.append(FileSource(self.connect_file, self.group))
        return [
            SourceThread(
                source, on_found=lambda a: self._post("found", a),
                on_gone=lambda name: self._post("gone", name), every_s=self.resolve_every_s,
                keys=None if self._keys is None else KeyFinder(
                    zmq.Context.instance(), self._keys, self._trusted, self.resolve_every_s),
            )
            for source in found
        ]
    def _serve_metrics(self, host: str, port: int) -> Any:
        from ..metrics import MetricsServer, WorkerCollector

        server = MetricsServer(WorkerCollector(self.metrics_snapshot), host, port)
        self.metrics_url = server.url
        return server

    def metrics_snapshot(self) -> Any:
        """What the worker's metrics show now (a :class:`freelance_rz.metrics.WorkerSnapshot`;
        callable from any thread, while :meth:`run` runs). Needs the ``metrics`` extra."""
        from ..metrics import WorkerSnapshot

        slots = {"busy": 0, "free": 0, "starting": 0}
        pool = self._pool_now
        for lane in [] if pool is None else list(pool.lanes):
            active = lane.active
            ready = active is not None and active.ready
            for slot in lane.slots:  # a cancelled run not stopped yet keeps its slot busy
                busy = slot.job is not None or slot.stuck is not None
                slots["busy" if busy else "free" if ready else "starting"] += 1
        peers = self._peers
        return WorkerSnapshot(
            slots=slots, jobs=dict(self.stats.by_task),
            restarts=0 if pool is None else pool.restarts,
            producers=0 if peers is None else len(peers.links),
        )


def _described(resources: dict[str, float], labels: dict[str, str]) -> str:
    """``, resources gpu=1, labels zone=eu`` for the start-up line ("" when none)."""
    text = ""
    if resources:
        text += ", resources " + ",".join(f"{k}={v:g}" for k, v in resources.items())
    if labels:
        text += ", labels " + ",".join(f"{k}={v}" for k, v in labels.items())
    return text


def _capabilities(
    resources: Mapping[str, float] | None, labels: Mapping[str, str] | None,
) -> tuple[dict[str, float], dict[str, str]]:
    """A worker's ``resources`` and ``labels``, checked (empty when not given).
    Raises TypeError or ValueError (:func:`freelance_rz.core.check.resources`)."""
    return _check.resources("resources", resources) or {}, _check.labels("labels", labels) or {}


def _wake_pipe() -> tuple[int, int]:
    """A non-blocking pipe ``(read end, write end)``: a byte written wakes the loop."""
    read, write = os.pipe()
    os.set_blocking(read, False)
    os.set_blocking(write, False)
    return read, write


def _need_source(given: bool) -> None:
    """Raise ValueError unless a producer source was ``given`` (freelance-worker's parser
    checks its flags before)."""
    if not given:
        raise ValueError("a worker needs a producer source: discover=True, discover_dns=, "
                         "connect= or connect_file=")


def _named(argument: str, cli: bool) -> str:
    """How a message names an argument: its flag (``--connect-file``) for the command line,
    else the keyword argument (``connect_file``)."""
    return "--" + argument.replace("_", "-") if cli else argument


def _task_modules(modules: list[str], cli: bool) -> list[str]:
    """The task modules, each a module name a claim can carry and findable (checked before
    any job process imports them)."""
    tasks = _named("tasks", cli)
    if not modules:
        raise ValueError(f"a worker needs at least one {tasks} module")
    if len(modules) > MAX_MODULES:
        raise ValueError(f"a worker takes at most {MAX_MODULES} {tasks} modules, got {len(modules)}")
    for module in modules:
        if len(module) > MODULE_MAX_CHARS or not MODULE_RE.fullmatch(module):
            raise ValueError(f"{tasks} {module[:80]!r} is not a module name (dotted Python "
                             f"names of at most {MODULE_MAX_CHARS} characters)")
        _findable(module, tasks)
    return modules


def _pool_options(pool: str, init: str | None, max_jobs: int | None, max_memory_mib: float | None,
                  cli: bool = False) -> tuple[str, str | None, int | None, float | None]:
    """The ``pool``, ``init``, ``max_jobs_per_process`` and ``max_memory_per_process_mib``
    arguments, checked (see :class:`Worker`)."""
    pool = _check.string("pool", pool)
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {', '.join(POOLS)}; got {pool!r}")
    return (
        pool, _init(_check.string("init", init, allow_none=True), _named("init", cli)),
        _check.integer("max_jobs_per_process", max_jobs, min_=1, allow_none=True),
        _check.number("max_memory_per_process_mib", max_memory_mib, above=0, unit="MiB",
                      allow_none=True),
    )


def _init(init: str | None, option: str = "init") -> str | None:
    """The ``init`` function's name, checked: ``module:function``, the module findable."""
    if init is None:
        return None
    module, sep, func = init.partition(":")
    if not sep or not _IDENTIFIERS.fullmatch(module) or not func.isidentifier():
        raise ValueError(f"{option} {init!r} must be module:function, e.g. myapp.setup:load_model")
    _findable(module, option)
    return init


def _findable(module: str, option: str) -> None:
    """Raise ModuleNotFoundError when ``module`` cannot be found (nothing is imported)."""
    try:
        found = importlib.util.find_spec(module) is not None
    except ImportError:  # "a.b" where "a" is missing or not a package
        found = False
    except ValueError:  # an imported module whose __spec__ is None: it exists
        found = True
    if not found:
        raise ModuleNotFoundError(f"{option} module {module!r} not found", name=module)


def _endpoints(endpoints: list[str], cli: bool) -> list[str]:
    """The ``connect`` endpoints, each checked to be a ``tcp://HOST:PORT``."""
    for endpoint in endpoints:
        try:
            w.parse_endpoint(endpoint)
        except ValueError as exc:
            why = str(exc) if "tcp://HOST:PORT" in str(exc) else f"{exc} (expected tcp://HOST:PORT)"
            raise ValueError(f"{_named('connect', cli)} {endpoint[:200]!r}: {why}") from None
    return endpoints


def _curve_keys(
    key: str | os.PathLike[str] | None, trust: str | os.PathLike[str] | None, cli: bool,
) -> tuple[KeyPair | None, dict[bytes, str]]:
    """This worker's CURVE key pair and the producer keys it trusts, each with the name of
    its file (both or neither)."""
    check_pair(key, trust, (_named("key", cli), _named("trust", cli)))
    if key is None or trust is None:
        return None, {}
    return load_keypair(key), trusted_key_files(trust)


def _max_producers() -> int:
    """How many discovered producers the open-file limit allows (up to MAX_PRODUCERS)."""
    from .peers import FDS_PER_PRODUCER, MAX_PRODUCERS

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:  # up to 5 file descriptors a producer, 128 spare
        return MAX_PRODUCERS
    return min(MAX_PRODUCERS, max(8, (soft - 128) // FDS_PER_PRODUCER))


__all__ = ["GIVE_UP_S", "Worker", "WorkerStats"]

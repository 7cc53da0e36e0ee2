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
from collections.abc import Sequence
from typing import Any

from typing import TYPE_CHECKING

from ..core import check as _check
from ..core import wire as w
from ..core.payload import POOLS, Setup
from ..core.session import DEFAULT_WAIT_MS, Session
from ..discovery import Browser, resolve_interfaces
from .pool import Pool
from .slots import Reaper
from .stats import WorkerStats

if TYPE_CHECKING:
    from ..security import KeyPair

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
        connect: static producer endpoints, e.g. ``["tcp://10.0.0.5:5555"]``.
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
            are ignored with a warning. With ``connect``, ``trust`` must hold exactly one key
            (the producer's). See :mod:`freelance_rz.security`.
        max_payload_bytes: largest job payload taken from a producer, in bytes (as the
            producers' ``max_payload_bytes``): claims say it, so producers never hand this
            worker a larger job (one larger than every worker takes fails with
            :class:`~freelance_rz.JobTooLarge`).
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

    :meth:`run` blocks until :meth:`stop` (callable from any thread or a signal handler).

    A module named twice in ``tasks`` is taken once. Ranges: ``slots`` >= 1, ``wait_ms`` >= 1,
    ``give_up_s`` > 0 (``float("inf")``: never), ``group`` 1 to 63 characters, ``name`` at most
    200 bytes in UTF-8, ``max_payload_bytes`` 1 to 2**62, ``max_jobs_per_process`` >= 1,
    ``max_memory_per_process_mib`` > 0.

    Raises:
        TypeError: an argument of the wrong type, e.g. ``tasks="myapp.tasks"`` (a str, not a
            list of str), ``slots=2.5``, ``discover=None``; the message names the argument,
            what it must be and the value given.
        ValueError: an argument out of its range; no producer source, no task module, bad
            interfaces; only one of ``key`` and ``trust``, an unreadable key, or ``trust``
            without public keys; an unknown ``pool``; an ``init`` not of the form
            ``module:function``.
        ModuleNotFoundError: a ``tasks`` module or the ``init`` module cannot be found.
    """

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
        key: str | os.PathLike[str] | None = None,
        trust: str | os.PathLike[str] | None = None,
        max_payload_bytes: int = w.DEFAULT_MAX_PAYLOAD,
        pool: str = POOLS[0],
        init: str | None = None,
        max_jobs_per_process: int | None = None,
        max_memory_per_process_mib: float | None = None,
    ) -> None:
        tasks = list(dict.fromkeys(_check.strings("tasks", tasks, example="['myapp.tasks']")))
        self.discover = _check.boolean("discover", discover)
        endpoints: list[str] = _check.strings("connect", connect, example="['tcp://10.0.0.5:41234']")
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
        self.pool = _pool(pool)
        self.init = _init(_check.string("init", init, allow_none=True))
        self.max_jobs_per_process = _check.integer(
            "max_jobs_per_process", max_jobs_per_process, min_=1, allow_none=True
        )
        self.max_memory_per_process_mib = _check.number(
            "max_memory_per_process_mib", max_memory_per_process_mib, above=0, unit="MiB",
            allow_none=True,
        )
        if not self.discover and not endpoints:
            raise ValueError("a worker needs --discover or at least one --connect endpoint")
        self.tasks = _task_modules(tasks)  # each module once, in the order given
        self.slots = (os.cpu_count() or 1) if slots is None else slots
        self.connect = _endpoints(endpoints)
        self._keys, self._trusted = _curve_keys(key, trust, bool(endpoints))
        self.interfaces = resolve_interfaces(interfaces)
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        # The routing id is a secret: with it, a client could take this worker's replies
        # (ROUTER_HANDOVER). 128 random bits; producers show only NAME-<hash> of it.
        self.identity = f"{self.name[:200]}-{secrets.token_hex(16)}".encode()
        self.stats = WorkerStats()
        self._events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

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
        reaper = Reaper()
        memory = self.max_memory_per_process_mib
        pool = Pool(
            self.pool, self.slots,
            Setup(self.tasks, self.init, self.pool, self.slots, list(sys.path)),
            max_jobs=self.max_jobs_per_process,
            max_memory_bytes=None if memory is None else int(memory * 2**20), reaper=reaper,
        )
        peers = None
        try:
            # Start-up order: the job processes and the mDNS browser start first, so they set
            # themselves up and find producers while ZeroMQ and the poll loop are imported.
            reaper.start()
            pool.start(fork=self._fork_first)
            if self.discover:
                browser = Browser(
                    self.group, self.interfaces,
                    on_found=lambda a: self._post("found", a),
                    on_gone=lambda name: self._post("gone", name),
                )
                browser.start()
            import zmq

            from .loop import WorkerLoop
            from .peers import Peers

            peers = Peers(zmq.Context.instance(), self.identity, self.max_payload_bytes,
                          self._keys, self._trusted, self.give_up_s, self.stats)
            peers.max_producers = _max_producers()
            loop = WorkerLoop(
                name=self.name, pool=pool, peers=peers, wait_ms=self.wait_ms,
                interfaces=self.interfaces, wake_r=self._wake_r, events=self._events,
                stats=self.stats, clock=time.monotonic,
            )
            server_key = next(iter(self._trusted), None)
            for endpoint in self.connect:
                peers.add(Session(endpoint, discovered=False, server_key=server_key), time.monotonic())
            log.info(
                "worker %s starting: %d slot(s) (%s pool), tasks %s, %s", self.name, self.slots,
                self.pool, ", ".join(self.tasks),
                f"discovering group {self.group!r}" if self.discover else "static producers",
            )
            loop.run()
        finally:
            if browser is not None:
                browser.close()
            if peers is not None:
                peers.close()
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


def _task_modules(modules: list[str]) -> list[str]:
    """The task modules, each findable (checked before any job process imports them)."""
    if not modules:
        raise ValueError("a worker needs at least one --tasks module")
    for module in modules:
        _findable(module, "--tasks")
    return modules


def _pool(pool: str) -> str:
    """The ``pool`` argument, checked."""
    pool = _check.string("pool", pool)
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {', '.join(POOLS)}; got {pool!r}")
    return pool


def _init(init: str | None) -> str | None:
    """The ``init`` function's name, checked: ``module:function``, the module findable."""
    if init is None:
        return None
    module, sep, func = init.partition(":")
    if not sep or not _IDENTIFIERS.fullmatch(module) or not func.isidentifier():
        raise ValueError(f"--init {init!r} must be module:function, e.g. myapp.setup:load_model")
    _findable(module, "--init")
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


def _endpoints(endpoints: list[str]) -> list[str]:
    """The ``--connect`` endpoints, each checked to be a ``tcp://HOST:PORT``."""
    for endpoint in endpoints:
        try:
            w.parse_endpoint(endpoint)
        except ValueError as exc:
            raise ValueError(f"--connect {endpoint!r}: {exc} (expected tcp://HOST:PORT)") from None
    return endpoints


def _curve_keys(
    key: str | os.PathLike[str] | None, trust: str | os.PathLike[str] | None, connect: bool
) -> tuple[KeyPair | None, frozenset[bytes]]:
    """This worker's CURVE key pair and the producer keys it trusts (both or neither)."""
    if key is None and trust is None:
        return None, frozenset()
    from ..security import check_pair, load_keypair, load_public_keys  # ZeroMQ: only with CURVE

    check_pair(key, trust, ("--key", "--trust"))
    assert key is not None and trust is not None
    keys, trusted = load_keypair(key), load_public_keys(trust)
    if connect and len(trusted) != 1:
        raise ValueError(
            f"--connect with --key needs the producer's public key: --trust {trust} "
            f"must hold exactly one key, it holds {len(trusted)} (use --discover "
            "to serve several secure producers; they announce their keys)"
        )
    return keys, trusted


def _max_producers() -> int:
    """How many discovered producers the open-file limit allows (up to MAX_PRODUCERS)."""
    from .peers import FDS_PER_PRODUCER, MAX_PRODUCERS

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:  # up to 5 file descriptors a producer, 128 spare
        return MAX_PRODUCERS
    return min(MAX_PRODUCERS, max(8, (soft - 128) // FDS_PER_PRODUCER))


__all__ = ["GIVE_UP_S", "Worker", "WorkerStats"]

"""Runs a lab scenario: hosts, peer processes, the timeline, progress, and cleanup.

Theory of operation
-------------------
1. **Setup.** Make the run directory (``scenario.json`` with the resolved scenario, the mode,
   the run's own mDNS group and the hosts' addresses), the virtual hosts (network
   namespaces, :mod:`freelance_rz.lab.netns`, or loopback), and start every peer whose
   ``start_s`` is 0. Wait until each producer has announced itself (``producer_ready``) and
   each worker has found each of them (``found``).
2. **Time zero.** Write ``go`` (the producers start submitting, relative to it) and a ``go``
   record. Timeline events and later peers' ``start_s`` count from here.
3. **Loop** (every ``TICK_S``): fire due events, notice peers that ended (``peer_exit``),
   read the new records for the progress display, and stop at ``duration_s`` or, with
   ``end = "drained"``, once the timeline is over and every running producer has resolved
   all its jobs.
4. **Teardown**, always (``finally``, also on Ctrl-C or SIGTERM, which is turned into
   KeyboardInterrupt while a run is on): SIGTERM the workers, then the producers, SIGKILL
   the process groups still there after ``STOP_GRACE_S`` (at once on a second Ctrl-C), then
   delete every namespace made, with SIGINT and SIGTERM held back meanwhile.

Every peer is its own process in its own session (``start_new_session``), so a signal to
its process group reaches its job processes too; only processes started here are signalled,
by process group id.
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from . import netns
from .producer_peer import GO_FILE
from .records import ENV_EVENTS, ENV_HOST, ENV_PEER, append, read
from .scenario import (
    LINK_ACTIONS,
    Event,
    ProducerSpec,
    Scenario,
    ScenarioError,
    WorkerSpec,
    check_name,
    check_scenario_name,
)

TICK_S = 0.05  # main loop period (seconds)
READY_TIMEOUT_S = 30.0  # setup: longest wait for producers to announce and workers to find them
STOP_GRACE_S = 5.0  # teardown: SIGTERMed peers get this long before SIGKILL
TASK_MODULE = "freelance_rz.lab.tasks"
_RUNS = itertools.count(1)  # runs made by this process (prefixes and groups stay unique)


class LabError(RuntimeError):
    """A run that cannot start (e.g. link events without network namespaces)."""


def _check_names(scenario: Scenario) -> None:
    """Every name that becomes a path or a namespace name is valid, also in a
    :class:`Scenario` made without :mod:`~freelance_rz.lab.scenario`'s parser.

    Raises:
        LabError: naming the scenario and the bad name.
    """
    try:
        check_scenario_name(scenario.name, "name")
        for host in scenario.hosts:
            check_name(host, "host")
        peers: list[ProducerSpec | WorkerSpec] = [*scenario.producers, *scenario.workers]
        for peer in peers:
            check_name(peer.name, "peer name")
            check_name(peer.host, f"host of {peer.name}")
    except ScenarioError as exc:
        raise LabError(f"scenario {scenario.name!r}: {exc}") from None


@dataclass
class RunResult:
    """How a run went: its directory, mode and why it ended (``drained``, ``duration``,
    ``interrupted``), and the namespaces teardown could not delete (normally none)."""

    run_dir: Path
    mode: str
    ended: str
    elapsed_s: float
    leftover_namespaces: list[str] = field(default_factory=list)


@dataclass(eq=False)
class _Peer:
    """One peer of the scenario and its current process, if any."""

    spec: ProducerSpec | WorkerSpec
    role: str  # "producer" or "worker"
    address: str
    proc: subprocess.Popen[bytes] | None = None
    generation: int = 0  # processes started so far
    log: IO[bytes] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class _Progress:
    """Counts from the records, for the live display (fed incrementally)."""

    def __init__(self) -> None:
        self.by_producer: dict[str, Counter[str]] = {}
        self.started: Counter[str] = Counter()
        self.ready: dict[str, dict[str, Any]] = {}  # producer -> its latest producer_ready
        self.found: set[tuple[str, str]] = set()  # (worker, producer id)
        self.drained: set[int] = set()  # pids of producer processes that drained
        self.actions: list[str] = []

    def feed(self, rec: dict[str, Any], t0: float | None) -> None:
        kind, peer = rec.get("kind"), str(rec.get("peer"))
        if kind in ("job_key", "done", "failed", "dead", "cancelled", "requeued", "resolved"):
            self.by_producer.setdefault(peer, Counter())[str(kind)] += 1
        elif kind == "started":
            self.started[peer] += 1
        elif kind == "producer_ready":
            self.ready[peer] = rec
        elif kind == "found":
            self.found.add((peer, str(rec.get("producer_key"))))
        elif kind == "drained":
            self.drained.add(int(rec.get("pid", -1)))
        elif kind == "action":
            at = "" if t0 is None else f"{rec['t'] - t0:6.2f} s "
            self.actions.append(f"{at}{rec['action']} {rec['target']}{' (' + rec['note'] + ')' if rec.get('note') else ''}")


class LabRun:
    """One run of ``scenario`` into a new directory under ``out_dir``.

    Args:
        scenario: the validated scenario.
        out_dir: parent of the run directory (made if missing).
        loopback: run every peer on 127.0.0.1 even when network namespaces are available.
        console: where progress goes; None: no live display.
    """

    def __init__(self, scenario: Scenario, out_dir: str | os.PathLike[str], *, loopback: bool = False,
                 console: Console | None = None) -> None:
        _check_names(scenario)
        self.scenario = scenario
        self.out_dir = Path(out_dir)
        self.console = console
        n = next(_RUNS)
        self.prefix = f"rzlab-{os.getpid()}-{n}"
        self.group = f"{scenario.group}-{os.getpid()}-{n}"
        self.mode = "loopback"
        self.network: netns.Network | None = None
        self.note = ""
        if not loopback:
            ok, reason = netns.available(self.prefix)
            if ok:
                self.mode = "netns"
            else:
                self.note = f"no network namespaces ({reason}): running on loopback"
        if self.mode == "loopback" and scenario.link_events:
            first = scenario.link_events[0]
            raise LabError(
                f"scenario {scenario.name!r} has link events ({first.action} {first.target} at "
                f"{first.at_s:g} s, {len(scenario.link_events)} in all): they need network "
                "namespaces (root on Linux, without --loopback)"
            )
        self.run_dir = self._make_run_dir()
        self.events_path = self.run_dir / "events.jsonl"
        self.peers: dict[str, _Peer] = {}
        self.t0: float | None = None
        self.progress = _Progress()
        self._read_offset = 0
        self._partial = b""

    # --- public ------------------------------------------------------------------------------

    def run(self) -> RunResult:
        """Run the scenario to its end; always tears down. Returns how it went; Ctrl-C and
        SIGTERM end the run early (``ended == "interrupted"``), they are not re-raised."""
        started = time.monotonic()
        ended = "interrupted"
        leftovers: list[str] = []
        with _sigterm_as_interrupt():
            try:
                self._setup()
                ended = self._loop()
            except KeyboardInterrupt:
                ended = "interrupted"
            finally:
                leftovers = self._cleanup()
        return RunResult(self.run_dir, self.mode, ended, time.monotonic() - started, leftovers)

    # --- setup -----------------------------------------------------------------------------

    def _make_run_dir(self) -> Path:
        """A new directory ``NAME-STAMP[-i]`` directly inside ``out_dir`` (made if missing),
        as an absolute path: peers run with it as their working directory.

        Raises:
            LabError: the path would not be directly inside ``out_dir`` once resolved.
        """
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = self.out_dir.resolve()
        for i in itertools.count():
            path = out / f"{self.scenario.name}-{stamp}{'' if i == 0 else f'-{i}'}"
            if path.parent != out:  # the name is one component (checked in __init__ too)
                raise LabError(f"run directory {path} would not be inside --out {out}")
            out.mkdir(parents=True, exist_ok=True)
            try:
                path.mkdir()  # never follows a symlink of that name: FileExistsError
            except FileExistsError:
                continue
            if path.resolve().parent != out:  # pragma: no cover - defence in depth
                path.rmdir()
                raise LabError(f"run directory {path} resolves outside --out {out}")
            return path
        raise AssertionError("unreachable")

    def _setup(self) -> None:
        sc = self.scenario
        if self.mode == "netns":
            self.network = netns.Network(self.prefix, sc.hosts)
            self.network.create()
        addresses = {h: self.network.address(h) if self.network else "127.0.0.1" for h in sc.hosts}
        data = sc.to_dict()
        data.update(mode=self.mode, run_group=self.group, addresses=addresses, namespace_prefix=self.prefix)
        (self.run_dir / "scenario.json").write_text(json.dumps(data, indent=2) + "\n")
        for spec in sc.producers:
            self.peers[spec.name] = _Peer(spec, "producer", addresses[spec.host])
        for wspec in sc.workers:
            self.peers[wspec.name] = _Peer(wspec, "worker", addresses[wspec.host])
        self._show(f"{sc.name}: {self.mode} mode, run directory {self.run_dir}")
        if self.note:
            self._show(self.note)
        initial = [p for p in self.peers.values() if p.spec.start_s == 0]
        for peer in initial:
            self._start(peer)
        self._wait_ready(initial)
        self.t0 = time.time()
        (self.run_dir / GO_FILE).write_text(repr(self.t0))
        self._record("go", t=self.t0)

    def _wait_ready(self, initial: list[_Peer]) -> None:
        """Until every initial producer announced itself and every initial worker found each
        (at most READY_TIMEOUT_S; then the run goes on with a warning)."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        producers = [p for p in initial if p.role == "producer"]
        workers = [p for p in initial if p.role == "worker"]
        while True:
            self._read_records()
            ids = [self.progress.ready.get(p.name, {}).get("producer_id") for p in producers]
            missing = [p.name for p, pid in zip(producers, ids, strict=True) if pid is None]
            missing += [
                f"{w.name} -> {p.name}" for w in workers for p, pid in zip(producers, ids, strict=True)
                if pid is not None and (w.name, pid) not in self.progress.found
            ]
            if not missing:
                return
            dead = [p.name for p in initial if not p.running]
            if dead:
                raise LabError(f"peer(s) {', '.join(dead)} ended during setup; see their logs in {self.run_dir}")
            if time.monotonic() > deadline:
                self._show(f"[yellow]not ready after {READY_TIMEOUT_S:g} s: {', '.join(missing)}; going on[/]")
                return
            time.sleep(TICK_S)

    # --- peers -----------------------------------------------------------------------------

    def _argv(self, peer: _Peer) -> list[str]:
        if isinstance(peer.spec, ProducerSpec):
            return [sys.executable, "-m", "freelance_rz.lab.producer_peer", str(self.run_dir), peer.name,
                    str(peer.generation)]
        spec = peer.spec
        return [
            sys.executable, "-m", "freelance_rz.lab.worker_peer", "--discover", "--tasks", TASK_MODULE,
            "--group", self.group, "--name", spec.name, "--slots", str(spec.slots),
            "--interface", peer.address, "--give-up-s", f"{spec.give_up_s:g}",
        ]

    def _start(self, peer: _Peer) -> None:
        peer.generation += 1
        argv = self._argv(peer)
        if self.network is not None:
            argv = self.network.wrap(peer.spec.host, argv)
        env = dict(
            os.environ, PYTHONUNBUFFERED="1", FREELANCE_RZ_INTERFACES=peer.address,
            **{ENV_EVENTS: str(self.events_path), ENV_PEER: peer.name, ENV_HOST: peer.spec.host},
        )
        if peer.log is not None:
            peer.log.close()
        peer.log = open(self.run_dir / f"{peer.name}.log", "ab")
        peer.log.write(f"--- {peer.name} process {peer.generation}: {' '.join(argv)}\n".encode())
        peer.log.flush()
        peer.proc = subprocess.Popen(
            argv, cwd=self.run_dir, env=env, stdin=subprocess.DEVNULL, stdout=peer.log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        self._record("action", action="start", target=peer.name, pid=peer.proc.pid, generation=peer.generation)

    def _signal(self, peer: _Peer, sig: int) -> None:
        """Signal the peer's whole process group (the peer and its job processes)."""
        if peer.proc is None:
            return
        try:
            os.killpg(peer.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _reap(self, peer: _Peer) -> None:
        """Record the end of the peer's process once it has ended."""
        if peer.proc is not None and peer.proc.poll() is not None:
            self._record("peer_exit", target=peer.name, code=peer.proc.returncode, pid=peer.proc.pid)
            self._signal(peer, signal.SIGKILL)  # job processes it may have left behind
            peer.proc = None

    def _kill_now(self, peer: _Peer) -> None:
        self._signal(peer, signal.SIGKILL)
        if peer.proc is not None:
            try:
                peer.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self._reap(peer)

    # --- timeline ----------------------------------------------------------------------------

    def _timeline(self) -> list[Event]:
        late = [
            Event(at_s=p.spec.start_s, action="start", target=p.name, origin="start_s")
            for p in self.peers.values() if p.spec.start_s > 0
        ]
        return sorted([*self.scenario.events, *late], key=lambda e: e.at_s)

    def _fire(self, event: Event) -> None:
        if event.action in LINK_ACTIONS:
            host = self.scenario.host_of(event.target)
            assert self.network is not None  # refused in __init__ otherwise
            self._record("action", action=event.action, target=event.target, host_target=host)
            self.network.set_link(host, event.action == "link_up")
            return
        peer = self.peers[event.target]
        if event.action == "start":
            if peer.running:
                self._record("action", action="start", target=peer.name, note="already running")
            else:
                self._reap(peer)
                self._start(peer)
        elif event.action == "restart":
            self._record("action", action="restart", target=peer.name)
            self._kill_now(peer)
            self._start(peer)
        else:
            note: dict[str, Any] = {} if peer.running else {"note": "not running"}
            self._signal(peer, signal.SIGKILL if event.action == "sigkill" else signal.SIGTERM)
            # stamped once sent: what the peer did until then (a job it started) comes before
            self._record("action", action=event.action, target=peer.name, **note)

    def _loop(self) -> str:
        assert self.t0 is not None
        pending = self._timeline()
        sc = self.scenario
        with self._live() as live:
            while True:
                now = time.time() - self.t0
                while pending and pending[0].at_s <= now:
                    self._fire(pending.pop(0))
                for peer in self.peers.values():
                    if peer.proc is not None and not peer.running:
                        self._reap(peer)
                self._read_records()
                if live is not None:
                    live.update(self._view(now))
                if now >= sc.duration_s:
                    return "duration"
                if sc.end == "drained" and not pending and self._drained():
                    return "drained"
                time.sleep(TICK_S)

    def _drained(self) -> bool:
        """Every running producer has resolved all its jobs (a producer that is not running
        and will not start again has nothing left to wait for)."""
        return all(
            p.proc is not None and p.proc.pid in self.progress.drained
            for p in self.peers.values() if p.role == "producer" and p.running
        )

    # --- teardown ----------------------------------------------------------------------------

    def _cleanup(self) -> list[str]:
        """Stop every peer (gracefully first; a second Ctrl-C cuts that short), then, with
        SIGINT and SIGTERM held back so nothing interrupts it, SIGKILL what is left and delete
        the namespaces. Returns the namespaces that could not be deleted."""
        try:
            self._stop_gracefully()
        except KeyboardInterrupt:
            pass
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            for peer in self.peers.values():
                if peer.proc is not None:
                    self._kill_now(peer)
                if peer.log is not None:
                    peer.log.close()
                    peer.log = None
            return self.network.destroy() if self.network is not None else []
        finally:
            try:
                signal.pthread_sigmask(signal.SIG_SETMASK, held)
                time.sleep(0)  # a signal that came meanwhile is handled here, and ignored
            except KeyboardInterrupt:
                pass

    def _stop_gracefully(self) -> None:
        """SIGTERM the workers (they finish and deliver their running jobs), then the
        producers; each group gets STOP_GRACE_S seconds to end."""
        for role in ("worker", "producer"):
            group = [p for p in self.peers.values() if p.role == role and p.proc is not None]
            for peer in group:
                self._signal(peer, signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_S
            for peer in group:
                assert peer.proc is not None
                try:
                    peer.proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
                self._reap(peer)

    # --- records and display ---------------------------------------------------------------

    def _record(self, kind: str, t: float | None = None, **fields: Any) -> None:
        append(self.events_path, kind, peer="lab", host="-", t=t, **fields)

    def _read_records(self) -> None:
        """Feed the records appended since the last call to the progress counters."""
        try:
            with open(self.events_path, "rb") as f:
                f.seek(self._read_offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        self._read_offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                self.progress.feed(rec, self.t0)

    def _show(self, message: str) -> None:
        if self.console is not None:
            self.console.print(message, soft_wrap=True)  # a long run directory stays on its line

    @contextmanager
    def _live(self) -> Iterator[Live | None]:
        if self.console is None:
            yield None
            return
        with Live(console=self.console, refresh_per_second=4, transient=False) as live:
            yield live
        if not self.console.is_terminal:
            self.console.line()  # the last frame ends without a newline in a pipe

    def _view(self, now: float) -> Group:
        sc = self.scenario
        head = Text(f"{sc.name}  {now:5.1f} s / {sc.duration_s:g} s  ({self.mode})", style="bold")
        producers = Table(box=None, pad_edge=False)
        for col in ("producer", "state", "submitted", "done", "failed", "dead", "requeued", "resolved"):
            producers.add_column(col, justify="left" if col in ("producer", "state") else "right")
        for p in self.peers.values():
            if p.role != "producer":
                continue
            c = self.progress.by_producer.get(p.name, Counter())
            state = "up" if p.running else "down"
            if p.running and p.proc is not None and p.proc.pid in self.progress.drained:
                state = "drained"
            producers.add_row(p.name, state, *(str(c[k]) for k in ("job_key", "done", "failed", "dead",
                                                                      "requeued", "resolved")))
        workers = Text("workers: " + "  ".join(
            f"{p.name} {'up' if p.running else 'down'} ({self.progress.started[p.name]} run)"
            for p in self.peers.values() if p.role == "worker"
        ))
        actions = Text("\n".join(self.progress.actions[-4:]), style="dim")
        return Group(head, producers, workers, actions)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While a run is on, SIGTERM raises KeyboardInterrupt (as Ctrl-C does), so the run's
    ``finally`` cleans up. Only in the main thread (elsewhere signals cannot be set)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_scenario(scenario: Scenario, out_dir: str | os.PathLike[str] = "lab-runs", *, loopback: bool = False,
                 console: Console | None = None) -> RunResult:
    """Run ``scenario`` (see :class:`LabRun`); the run directory is made under ``out_dir``.

    Raises:
        LabError: the scenario cannot run in this mode (link events without namespaces), or
            a peer died during setup.
        netns.NetnsError: the virtual hosts could not be made.
    """
    return LabRun(scenario, out_dir, loopback=loopback, console=console).run()


def records(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a finished run (``events.jsonl``), in file order."""
    return read(Path(run_dir) / "events.jsonl")

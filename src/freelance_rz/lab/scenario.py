"""Lab scenarios: TOML in, validated frozen dataclasses out. Pure (no processes, no sockets).

A scenario declares hosts, producers (each with batches of jobs to submit), workers, a
timeline of events at given seconds, and optionally a ``[chaos]`` table that a seeded RNG
expands into more events (random worker SIGKILLs and restarts, link flaps). Every error names
the bad field, e.g. ``s4.toml: producers[0].jobs[1].count: must be an integer >= 1, got 0``.

Minimal example::

    name = "demo"
    duration_s = 30            # hard limit of the run (seconds)
    [[hosts]]
    name = "h1"
    [[producers]]
    name = "p1"
    host = "h1"
    jobs = [{ count = 100, task = "work", seconds = 0.02 }]
    [[workers]]
    name = "w1"
    host = "h1"
    [[events]]
    at_s = 0.5
    action = "sigkill"
    target = "w1"

Without ``[[hosts]]`` every peer gets a host of its own, named after it.
"""

from __future__ import annotations

import dataclasses
import difflib
import random
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: Functions of :mod:`freelance_rz.lab.tasks` a job batch may name.
TASKS = ("work", "spin", "crash")
#: Timeline actions: on peers (start, sigterm, sigkill, restart) or on hosts' links.
PEER_ACTIONS = ("start", "sigterm", "sigkill", "restart")
LINK_ACTIONS = ("link_down", "link_up")
ACTIONS = PEER_ACTIONS + LINK_ACTIONS
#: How a run ends: when every running producer has resolved all its jobs and the timeline is
#: over ("drained"), or only at ``duration_s`` ("duration").
ENDS = ("drained", "duration")
#: Host and peer names become file names in the run directory (``NAME.log``, ``NAME.sqlite``)
#: and network namespace names (the lab runs as root): a letter, then up to 15 letters, digits
#: or '_'. Always matched whole (``re.fullmatch``: ``$`` would let a trailing newline through).
NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,15}")
NAME_RULE = "a letter, then up to 15 letters, digits or '_'"
#: A scenario's name starts its run directory's name under ``--out``: one path component,
#: never ``.`` or ``..``, no separator.
SCENARIO_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
SCENARIO_NAME_RULE = "a letter or digit, then up to 63 letters, digits, '.', '-' or '_'"
GROUP_RE = re.compile(r"[A-Za-z0-9_-]{1,40}")
_REQUIRED: Any = object()


class ScenarioError(ValueError):
    """A scenario file that cannot be run; the message names the file and the bad field."""


def check_name(value: object, where: str) -> str:
    """``value`` if it is a valid host or peer name (:data:`NAME_RE`, matched whole).

    Args:
        value: the name as read.
        where: the field, for the message (e.g. ``workers[0].name``).

    Raises:
        ScenarioError: not a string, or not a valid name.
    """
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise ScenarioError(f"{where}: {NAME_RULE}; got {value!r}")
    return value


def check_scenario_name(value: object, where: str = "name") -> str:
    """``value`` if it can name a run directory: one plain path component
    (:data:`SCENARIO_NAME_RE`, matched whole), never absolute, ``.``, ``..`` or holding a
    path separator.

    Args:
        value: the name as read.
        where: the field, for the message.

    Raises:
        ScenarioError: not a string, or not a valid scenario name.
    """
    if not isinstance(value, str):
        raise ScenarioError(f"{where}: must be a string, got {value!r}")
    if value in {".", ".."} or any(sep in value for sep in ("/", "\\", "\0")):
        raise ScenarioError(
            f"{where}: must be a plain name, not a path (it names the run directory inside "
            f"--out); got {value!r}"
        )
    if not SCENARIO_NAME_RE.fullmatch(value):
        raise ScenarioError(f"{where}: {SCENARIO_NAME_RULE}; got {value!r}")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class JobBatch:
    """``count`` jobs of one lab task, submitted ``at_s`` seconds after the producer starts,
    spread evenly over ``spread_s`` seconds (0: all at once)."""

    count: int
    task: str = "work"
    seconds: float = 0.0  # how long each job runs (work: sleeps, spin: holds the GIL)
    at_s: float = 0.0
    spread_s: float = 0.0
    timeout_s: float | None = None  # per-job time limit (JobTimeout past it)
    max_attempts: int | None = None  # per-job; None: the producer's
    priority: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ProducerSpec:
    """A producer peer: an app embedding a Producer that submits ``jobs``."""

    name: str
    host: str
    start_s: float = 0.0
    lease_s: float = 1.0
    max_attempts: int = 3
    store: bool = False  # durable: a restart keeps its jobs (a SQLite file in the run dir)
    jobs: tuple[JobBatch, ...] = ()

    @property
    def job_count(self) -> int:
        return sum(batch.count for batch in self.jobs)


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSpec:
    """A worker peer: ``freelance-worker --discover`` with ``slots`` job processes."""

    name: str
    host: str
    start_s: float = 0.0
    slots: int = 1
    give_up_s: float = 60.0


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class Event:
    """A timeline event: ``action`` on ``target`` (a peer, or for link events a host or a
    peer standing for its host) at ``at_s`` seconds after the run starts."""

    at_s: float
    action: str
    target: str
    origin: str = "timeline"  # "timeline" (written in the file) or "chaos" (expanded)


@dataclass(frozen=True, slots=True, kw_only=True)
class Chaos:
    """Random faults, expanded into events by :func:`expand_chaos` with ``seed``."""

    seed: int = 1
    window_s: tuple[float, float] = (2.0, 40.0)  # faults start within this span (seconds)
    worker_kills: int = 0  # SIGKILLs of random running workers (whole process group)
    restart_after_s: tuple[float, float] = (1.0, 3.0)  # a killed worker starts again after
    link_flaps: int = 0  # link down, then up after flap_s
    flap_s: tuple[float, float] = (1.0, 3.0)
    flap_hosts: tuple[str, ...] = ()  # empty: every host


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """A validated scenario; ``events`` holds the timeline and the expanded chaos, sorted."""

    name: str
    description: str = ""
    duration_s: float = 60.0  # hard limit of the run
    end: str = "drained"
    group: str = "rzlab"
    hosts: tuple[str, ...] = ()
    producers: tuple[ProducerSpec, ...] = ()
    workers: tuple[WorkerSpec, ...] = ()
    events: tuple[Event, ...] = ()
    chaos: Chaos | None = None
    peer_names: tuple[str, ...] = field(default=(), repr=False)

    def peer(self, name: str) -> ProducerSpec | WorkerSpec:
        peers: list[ProducerSpec | WorkerSpec] = [*self.producers, *self.workers]
        for peer in peers:
            if peer.name == name:
                return peer
        raise KeyError(name)

    def host_of(self, target: str) -> str:
        """The host a link event means: ``target`` itself, or the host of peer ``target``."""
        return target if target in self.hosts else self.peer(target).host

    @property
    def link_events(self) -> tuple[Event, ...]:
        return tuple(e for e in self.events if e.action in LINK_ACTIONS)

    @property
    def jobs_total(self) -> int:
        return sum(p.job_count for p in self.producers)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (written as ``scenario.json`` in the run directory)."""
        data = dataclasses.asdict(self)
        data.pop("peer_names")
        return data


# --- loading -------------------------------------------------------------------------------


def builtin_names() -> list[str]:
    """Names of the scenarios shipped in ``freelance_rz/lab/scenarios/``."""
    folder = resources.files("freelance_rz.lab") / "scenarios"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def builtin_text(name: str) -> str:
    """The TOML text of built-in scenario ``name``. Raises ScenarioError if there is none."""
    if name not in builtin_names():
        raise ScenarioError(f"no built-in scenario {name!r} (built-ins: {', '.join(builtin_names())})")
    return (resources.files("freelance_rz.lab") / "scenarios" / f"{name}.toml").read_text("utf-8")


def load(source: str | Path, *, seed: int | None = None) -> Scenario:
    """Load a built-in scenario by name, or a TOML file by path; ``seed`` overrides the
    chaos seed. Raises ScenarioError (unreadable file, bad TOML, invalid field)."""
    text_source = str(source)
    if not Path(text_source).suffix and text_source in builtin_names():
        return loads(builtin_text(text_source), origin=f"{text_source}.toml", seed=seed)
    path = Path(text_source)
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise ScenarioError(
            f"{source}: not a built-in scenario ({', '.join(builtin_names())}) and not a "
            f"readable file: {exc.strerror}"
        ) from None
    return loads(text, origin=path.name, seed=seed, default_name=path.stem)


def loads(
    text: str, *, origin: str = "<scenario>", seed: int | None = None, default_name: str | None = None
) -> Scenario:
    """Parse and validate TOML text (``origin`` prefixes error messages)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{origin}: invalid TOML: {exc}") from None
    return parse(data, origin=origin, seed=seed, default_name=default_name)


def parse(
    data: dict[str, Any], *, origin: str = "<scenario>", seed: int | None = None,
    default_name: str | None = None,
) -> Scenario:
    """Validate a decoded TOML document into a :class:`Scenario`. Pure."""
    try:
        return _parse(_Table(data, ""), seed, default_name)
    except ScenarioError as exc:
        raise ScenarioError(f"{origin}: {exc}") from None


def _parse(top: _Table, seed: int | None, default_name: str | None) -> Scenario:
    """The steps of :func:`parse`, in the order the fields are read (the first bad one is the
    one an error names): the scenario's own fields, hosts, producers, workers, events, chaos."""
    name = _read_name(top, default_name)
    own = _read_fields(top, _SCENARIO_FIELDS, Scenario)
    duration_s = own["duration_s"]
    if not GROUP_RE.fullmatch(own["group"]):
        raise ScenarioError(f"group: letters, digits, '-' and '_' only, 1 to 40, got {own['group']!r}")
    names = _Names(_read_hosts(top))
    producers = [_read_producer(t, names, duration_s) for t in top.tables("producers")]
    if not producers:
        raise ScenarioError("producers: a scenario needs at least one [[producers]]")
    workers = [_read_worker(t, names, duration_s) for t in top.tables("workers")]
    if not workers:
        raise ScenarioError("workers: a scenario needs at least one [[workers]]")
    peer_names = tuple([p.name for p in producers] + [w.name for w in workers])
    events = [_read_event(t, peer_names, names.hosts, duration_s) for t in top.tables("events")]
    chaos = None
    if "chaos" in top.data:
        chaos = _read_chaos(top.table("chaos"), seed, names.hosts, duration_s)
        events.extend(expand_chaos(chaos, workers, duration_s))
    top.done()
    return Scenario(
        name=name, **own, hosts=tuple(names.hosts), producers=tuple(producers), workers=tuple(workers),
        events=tuple(sorted(events, key=lambda e: e.at_s)), chaos=chaos, peer_names=peer_names,
    )


def _read_name(top: _Table, default_name: str | None) -> str:
    """The scenario's ``name``, else ``default_name`` (the file's stem), checked."""
    given = "name" in top.data
    name: str = top.text("name", default_name or _REQUIRED)
    return check_scenario_name(name, "name" if given else "name (from the file name; add a name field)")


def _read_hosts(top: _Table) -> list[str]:
    """The names of ``[[hosts]]`` (or ``hosts = ["h1", ...]``), in order; may be empty."""
    hosts: list[str] = []
    for t in top.tables("hosts", ("name",)):
        hosts.append(t.name_field())
        t.done()
    return hosts


class _Names:
    """The hosts and the names taken so far: hosts and peers share one namespace. Without
    ``[[hosts]]`` (``implicit``), each peer's host is made when a peer first names it."""

    def __init__(self, hosts: list[str]) -> None:
        self.hosts = hosts
        self.implicit = not hosts
        self.owners: dict[str, str] = {}  # name -> the field that took it
        for i, host in enumerate(hosts):
            self.claim(host, f"hosts[{i}]")

    def claim(self, name: str, where: str) -> None:
        """Take ``name`` for the field ``where``. Raises ScenarioError if it is taken."""
        if name in self.owners:
            raise ScenarioError(f"{where}: name {name!r} is already used by {self.owners[name]}")
        self.owners[name] = where

    def host_field(self, t: _Table, peer_name: str) -> str:
        """The ``host`` of peer table ``t``: one of the hosts, or with implicit hosts any valid
        name (default: the peer's own), added to the hosts. Raises ScenarioError."""
        host: str
        if self.implicit:
            host = check_name(t.text("host", peer_name), t.where("host"))
            if host not in self.hosts:
                self.hosts.append(host)
            return host
        host = t.text("host")
        if host not in self.hosts:
            raise ScenarioError(f"{t.where('host')}: no host {host!r} (hosts: {', '.join(self.hosts)})")
        return host


def _read_batch(b: _Table) -> JobBatch:
    batch = JobBatch(**_read_fields(b, _BATCH_FIELDS, JobBatch))
    b.done()
    return batch


def _read_producer(t: _Table, names: _Names, duration_s: float) -> ProducerSpec:
    peer_name = t.name_field()
    names.claim(peer_name, t.path)
    batches = tuple(_read_batch(b) for b in t.tables("jobs"))
    host = names.host_field(t, peer_name)
    spec = ProducerSpec(name=peer_name, host=host, jobs=batches,
                        **_read_fields(t, _PRODUCER_FIELDS, ProducerSpec, duration_s))
    t.done()
    return spec


def _read_worker(t: _Table, names: _Names, duration_s: float) -> WorkerSpec:
    peer_name = t.name_field()
    names.claim(peer_name, t.path)
    host = names.host_field(t, peer_name)
    spec = WorkerSpec(name=peer_name, host=host, **_read_fields(t, _WORKER_FIELDS, WorkerSpec, duration_s))
    t.done()
    return spec


def _read_event(t: _Table, peer_names: tuple[str, ...], hosts: list[str], duration_s: float) -> Event:
    """A timeline event; a peer action needs a peer, a link action a host or a peer."""
    action = t.text("action", choices=ACTIONS)
    target = t.text("target")
    if action in PEER_ACTIONS and target not in peer_names:
        raise ScenarioError(
            f"{t.where('target')}: {action} needs a peer, no peer {target!r} "
            f"(peers: {', '.join(peer_names)})"
        )
    if action in LINK_ACTIONS and target not in peer_names and target not in hosts:
        raise ScenarioError(
            f"{t.where('target')}: {action} needs a host or a peer, no {target!r} "
            f"(hosts: {', '.join(hosts)})"
        )
    event = Event(at_s=t.number("at_s", low=0.0, high=duration_s), action=action, target=target)
    t.done()
    return event


def _read_chaos(c: _Table, seed: int | None, hosts: list[str], duration_s: float) -> Chaos:
    """The ``[chaos]`` table; ``seed`` (when not None) replaces the file's seed. Its defaults
    depend on the scenario (the window ends by ``duration_s``, flaps hit every host), so it
    is read field by field."""
    chaos = Chaos(
        seed=seed if seed is not None else c.integer("seed", 1),
        window_s=c.span("window_s", (2.0, min(40.0, duration_s)), high=duration_s),
        worker_kills=c.integer("worker_kills", 0, low=0),
        restart_after_s=c.span("restart_after_s", (1.0, 3.0)),
        link_flaps=c.integer("link_flaps", 0, low=0),
        flap_s=c.span("flap_s", (1.0, 3.0)),
        flap_hosts=tuple(c.str_list("flap_hosts", hosts)),
    )
    if seed is not None:
        c.data.pop("seed", None)
    c.done()
    for host in chaos.flap_hosts:
        if host not in hosts:
            raise ScenarioError(f"chaos.flap_hosts: no host {host!r} (hosts: {', '.join(hosts)})")
    return chaos


def expand_chaos(chaos: Chaos, workers: Iterable[WorkerSpec], duration_s: float) -> list[Event]:
    """Turn ``chaos`` into concrete events with ``random.Random(chaos.seed)``: each worker
    kill hits a worker that is up at that moment (started, not killed and not yet restarted)
    and is followed by a ``start`` of it ``restart_after_s`` later; each link flap is a
    ``link_down`` of a host without a flap in progress and a ``link_up`` ``flap_s`` later.
    Deterministic for a given seed. Times in seconds from the run's start."""
    rng = random.Random(chaos.seed)
    lo, hi = chaos.window_s
    events: list[Event] = []
    down_until: dict[str, float] = {w.name: w.start_s for w in workers}  # up from this time
    for at in sorted(rng.uniform(lo, hi) for _ in range(chaos.worker_kills)):
        up = sorted(name for name, since in down_until.items() if since <= at)
        if not up:
            continue
        victim = rng.choice(up)
        back = min(at + rng.uniform(*chaos.restart_after_s), duration_s)
        down_until[victim] = back
        events.append(Event(at_s=round(at, 3), action="sigkill", target=victim, origin="chaos"))
        events.append(Event(at_s=round(back, 3), action="start", target=victim, origin="chaos"))
    link_free: dict[str, float] = {host: 0.0 for host in chaos.flap_hosts}
    for at in sorted(rng.uniform(lo, hi) for _ in range(chaos.link_flaps)):
        free = sorted(host for host, since in link_free.items() if since <= at)
        if not free:
            continue
        host = rng.choice(free)
        back = min(at + rng.uniform(*chaos.flap_s), duration_s)
        link_free[host] = back
        events.append(Event(at_s=round(at, 3), action="link_down", target=host, origin="chaos"))
        events.append(Event(at_s=round(back, 3), action="link_up", target=host, origin="chaos"))
    return events


# --- field readers -------------------------------------------------------------------------


class _Table:
    """A TOML table being read: each getter removes its key, :meth:`done` rejects the rest."""

    def __init__(self, data: object, path: str) -> None:
        if not isinstance(data, dict):
            raise ScenarioError(f"{path}: must be a table, got {type(data).__name__}")
        self.data: dict[str, Any] = dict(data)
        self.path = path
        self.known: list[str] = []

    def where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def _take(self, key: str, default: Any) -> Any:
        self.known.append(key)
        if key in self.data:
            return self.data.pop(key)
        if default is _REQUIRED:
            close = difflib.get_close_matches(key, [k for k in self.data if isinstance(k, str)], n=1)
            hint = f" (is {close[0]!r} a misspelling of it?)" if close else ""
            raise ScenarioError(f"{self.where(key)}: required field missing{hint}")
        return default

    def text(self, key: str, default: Any = _REQUIRED, choices: Iterable[str] | None = None) -> Any:
        value = self._take(key, default)
        if value is default and default is not _REQUIRED:
            return value
        if not isinstance(value, str):
            raise ScenarioError(f"{self.where(key)}: must be a string, got {value!r}")
        if choices is not None and value not in choices:
            raise ScenarioError(f"{self.where(key)}: must be one of {', '.join(choices)}; got {value!r}")
        return value

    def name_field(self) -> str:
        return check_name(self.text("name"), self.where("name"))

    def number(self, key: str, default: Any = _REQUIRED, *, low: float | None = None,
              high: float | None = None) -> Any:
        value = self._take(key, default)
        if value is None and default is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ScenarioError(f"{self.where(key)}: must be a number (seconds), got {value!r}")
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = " and ".join(
                text for text in (low is not None and f">= {low:g}", high is not None and f"<= {high:g}")
                if text
            )
            raise ScenarioError(f"{self.where(key)}: must be {bounds}, got {value!r}")
        return float(value)

    def integer(self, key: str, default: Any = _REQUIRED, *, low: int | None = None,
            high: int | None = None) -> Any:
        value = self._take(key, default)
        if value is None and default is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ScenarioError(f"{self.where(key)}: must be an integer, got {value!r}")
        if low is not None and value < low:
            raise ScenarioError(f"{self.where(key)}: must be an integer >= {low}, got {value}")
        if high is not None and value > high:
            raise ScenarioError(f"{self.where(key)}: must be an integer <= {high}, got {value}")
        return value

    def flag(self, key: str, default: Any = _REQUIRED) -> Any:
        value = self._take(key, default)
        if not isinstance(value, bool):
            raise ScenarioError(f"{self.where(key)}: must be true or false, got {value!r}")
        return value

    def span(self, key: str, default: tuple[float, float], high: float | None = None) -> tuple[float, float]:
        value = self._take(key, default)
        if (
            not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            or not 0 <= value[0] <= value[1] or (high is not None and value[1] > high)
        ):
            limit = f" <= {high:g}" if high is not None else ""
            raise ScenarioError(f"{self.where(key)}: must be [low, high] seconds, 0 <= low <= high{limit}; got {value!r}")
        return (float(value[0]), float(value[1]))

    def str_list(self, key: str, default: list[str]) -> list[str]:
        value = self._take(key, default)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ScenarioError(f"{self.where(key)}: must be a list of strings, got {value!r}")
        return value

    def table(self, key: str) -> _Table:
        return _Table(self._take(key, {}), self.where(key))

    def tables(self, key: str, shorthand: tuple[str, ...] = ()) -> list[_Table]:
        value = self._take(key, [])
        if not isinstance(value, list):
            raise ScenarioError(f"{self.where(key)}: must be an array of tables ([[{key}]])")
        out = []
        for i, item in enumerate(value):
            if isinstance(item, str) and shorthand:  # hosts = ["h1", "h2"]
                item = {shorthand[0]: item}
            out.append(_Table(item, f"{self.where(key)}[{i}]"))
        return out

    def done(self) -> None:
        if self.data:
            key = sorted(self.data)[0]
            raise ScenarioError(f"{self.where(key)}: unknown field (known here: {', '.join(self.known)})")


# --- the fields of each table ----------------------------------------------------------------

#: Stands for the scenario's ``duration_s`` in a field's limits.
_DURATION: Any = object()


@dataclass(frozen=True, slots=True)
class _Field:
    """One field of a scenario table: its key (also the name of the dataclass field it fills;
    its default is that field's, none meaning required), the :class:`_Table` reader that
    checks it, and that reader's keyword arguments (``low``, ``high``, ``choices``)."""

    key: str
    reader: Callable[..., Any]
    limits: Mapping[str, Any] = field(default_factory=dict)


# Each table's fields in the order they are read: an error names the first bad one, and an
# unknown field's message lists the known ones in this order.
_SCENARIO_FIELDS = (  # after name (its default is the file name)
    _Field("description", _Table.text),
    _Field("duration_s", _Table.number, {"low": 0.5}),
    _Field("end", _Table.text, {"choices": ENDS}),
    _Field("group", _Table.text),
)
_BATCH_FIELDS = (
    _Field("count", _Table.integer, {"low": 1}),
    _Field("task", _Table.text, {"choices": TASKS}),
    _Field("seconds", _Table.number, {"low": 0.0}),
    _Field("at_s", _Table.number, {"low": 0.0}),
    _Field("spread_s", _Table.number, {"low": 0.0}),
    _Field("timeout_s", _Table.number, {"low": 0.001}),
    _Field("max_attempts", _Table.integer, {"low": 1}),
    _Field("priority", _Table.integer),
)
_PRODUCER_FIELDS = (  # after name, jobs and host
    _Field("start_s", _Table.number, {"low": 0.0, "high": _DURATION}),
    _Field("lease_s", _Table.number, {"low": 0.2}),
    _Field("max_attempts", _Table.integer, {"low": 1}),
    _Field("store", _Table.flag),
)
_WORKER_FIELDS = (  # after name and host
    _Field("start_s", _Table.number, {"low": 0.0, "high": _DURATION}),
    _Field("slots", _Table.integer, {"low": 1, "high": 64}),
    _Field("give_up_s", _Table.number, {"low": 0.1}),
)


def _read_fields(t: _Table, fields: Iterable[_Field], into: type, duration_s: float | None = None) -> dict[str, Any]:
    """Read ``fields`` of ``t`` in order into keyword arguments for the dataclass ``into``,
    with its defaults; ``duration_s`` replaces :data:`_DURATION` in limits. Raises
    ScenarioError (a field missing, of the wrong type or out of its limits)."""
    defaults = {f.name: f.default for f in dataclasses.fields(into)}
    out: dict[str, Any] = {}
    for f in fields:
        default = defaults[f.key]
        limits = {name: duration_s if value is _DURATION else value for name, value in f.limits.items()}
        out[f.key] = f.reader(t, f.key, _REQUIRED if default is dataclasses.MISSING else default, **limits)
    return out

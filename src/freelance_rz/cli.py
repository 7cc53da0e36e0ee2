"""Command-line entry points: parse arguments, set up logging, build the object, run it.

``freelance-worker`` is a thin argparse shell over :class:`freelance_rz.worker.worker.Worker` (the
shape of arq's ``cli.py``); ``freelance-status`` over :mod:`freelance_rz.status`, rendered with
rich.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

import zmq
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from .core.check import address
from .core.text import clean
from .logfmt import add_fixed_fields
from .logfmt import configure as configure_logging
from .core.wire import DEFAULT_MAX_PAYLOAD
from .status import ProducerInfo, read_info
from .sources import RESOLVE_EVERY_S
from .worker.health import DEFAULT_MAX_AGE_S
from .worker.worker import GIVE_UP_S, Worker

if TYPE_CHECKING:
    from .security import KeyPair


def _add_producer_source(parser: argparse.ArgumentParser) -> None:
    """--discover, --discover-dns, --connect, --connect-file (one or more), --group and
    --interface: which producers (both commands)."""
    source = parser.add_argument_group("where producers are (one or more)")
    source.add_argument(
        "--discover", action="store_true", help="find producers of --group over mDNS"
    )
    source.add_argument(
        "--connect", metavar="ENDPOINT", nargs="+", action="extend",
        help="producer endpoint(s), e.g. tcp://10.0.0.5:5555; a name "
        "(tcp://producers.myapp.svc:5555) stands for all its addresses, resolved again and again",
    )
    source.add_argument(
        "--discover-dns", metavar="SERVICE", action="append",
        help="find producers of --group by DNS-SD over unicast DNS (PTR, SRV, TXT), e.g. "
        "_freelance-rz._tcp.example.org (repeatable; needs the dns extra)",
    )
    source.add_argument(
        "--connect-file", metavar="PATH",
        help="a file of producer endpoints, one per line (optionally pk=KEY), read again when it "
        "changes; producers write theirs with Producer(endpoints_file=PATH)",
    )
    parser.add_argument("--group", default="default", help="producer group (default: %(default)s)")
    parser.add_argument(
        "--interface", metavar="IP", action="append",
        help="IPv4 address for mDNS (repeatable; default: $FREELANCE_RZ_INTERFACES or all)",
    )
    parser.add_argument(
        "--key", metavar="PATH",
        help="CURVE: this side's NAME.key_secret file (made by freelance-keys); needs --trust",
    )
    parser.add_argument(
        "--trust", metavar="DIR",
        help="CURVE: directory of the public keys (NAME.key) of the producers to trust",
    )


def _add_log_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-format", choices=["text", "json"], default="text",
        help="json: one JSON object per line (ts, level, logger, message, and job_id, task, "
        "producer, worker where known), for log shippers (default: %(default)s)",
    )


def worker_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="freelance-worker",
        description="Pull jobs from freelance_rz producers and run them, one per free slot.",
        epilog="Example: freelance-worker --discover --tasks myapp.tasks --slots 4",
    )
    _add_producer_source(parser)
    parser.add_argument(
        "--tasks", metavar="MODULE", action="append", required=True,
        help="module whose public functions may run (repeatable); the current directory "
        "is importable",
    )
    parser.add_argument(
        "--slots", type=int, default=None, help="jobs run at once (default: number of CPUs)"
    )
    parser.add_argument(
        "--name", help="worker name in logs (default: HOST-PID); producers show it as "
        "NAME-xxxxxxxx, the suffix telling apart workers of one name",
    )
    parser.add_argument(
        "--max-payload-bytes", type=int, default=DEFAULT_MAX_PAYLOAD, metavar="BYTES",
        help="largest job taken, as the producers' max_payload_bytes (default: %(default)s)",
    )
    parser.add_argument(
        "--resources", metavar="NAME=AMOUNT[,...]", action="append", default=[],
        help="what this worker's jobs share, e.g. gpu=1,mem_gb=64 (repeatable): a job that "
        "needs some (producer.options(resources=...)) holds them while it runs",
    )
    parser.add_argument(
        "--label", metavar="NAME=VALUE", action="append", default=[],
        help="a label jobs may ask for, e.g. zone=eu (repeatable; producer.options(labels=...))",
    )
    parser.add_argument(
        "--give-up-s", type=float, default=GIVE_UP_S, metavar="SECONDS",
        help="abort the running jobs of a producer unreachable this long, and forget it if it "
        "was discovered (default: %(default)s)",
    )
    parser.add_argument(
        "--resolve-every-s", type=float, default=RESOLVE_EVERY_S, metavar="SECONDS",
        help="read --connect names, --discover-dns and the names in --connect-file again this "
        "often (default: %(default)s)",
    )
    parser.add_argument(
        "--health-file", metavar="PATH",
        help="keep PATH fresh (rewritten every second) for container probes: "
        "freelance-status --check --health-file PATH",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper, help="default: %(default)s",
    )
    _add_log_format(parser)
    parser.add_argument(
        "--metrics-port", metavar="[HOST:]PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (HOST default 127.0.0.1; "
        "needs the metrics extra)",
    )
    return parser


def _pairs(texts: Sequence[str], option: str, example: str) -> dict[str, str]:
    """``NAME=VALUE`` items (comma-separated within one text when ``option`` is
    --resources) into a dict. Raises ValueError naming the option."""
    out: dict[str, str] = {}
    for text in texts:
        for item in text.split(",") if option == "--resources" else [text]:
            name, sep, value = item.partition("=")
            if not sep or not name.strip():
                raise ValueError(f"{option} {item!r}: expected NAME=VALUE, e.g. {option} {example}")
            if name.strip() in out:
                raise ValueError(f"{option}: {name.strip()!r} is given twice")
            out[name.strip()] = value.strip()
    return out


def parse_resources(texts: Sequence[str]) -> dict[str, float]:
    """``--resources gpu=1,mem_gb=64`` (repeatable) as ``{"gpu": 1.0, "mem_gb": 64.0}``
    (checked by :class:`Worker`). Raises ValueError on a malformed item or amount."""
    out = {}
    for name, value in _pairs(texts, "--resources", "gpu=1,mem_gb=64").items():
        try:
            out[name] = float(value)
        except ValueError:
            raise ValueError(f"--resources {name}={value!r}: the amount must be a number, "
                             "e.g. --resources gpu=1,mem_gb=64") from None
    return out


def parse_labels(texts: Sequence[str]) -> dict[str, str]:
    """``--label zone=eu --label pool=batch`` as ``{"zone": "eu", "pool": "batch"}``.
    Raises ValueError on a malformed item."""
    return _pairs(texts, "--label", "zone=eu")


def _raise_open_file_limit() -> None:
    """A worker keeps a socket per producer (and sockets per connection): take the open-file
    limit up to its hard limit, as servers do, so many producers never exhaust it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, 1 << 20), hard))
        except (ValueError, OSError):
            pass


def _has_source(args: argparse.Namespace) -> bool:
    return bool(args.discover or args.connect or args.discover_dns or args.connect_file)


_NO_SOURCE = "one of --discover, --discover-dns, --connect and --connect-file is required"


def worker_main(argv: Sequence[str] | None = None) -> int:
    """Run ``freelance-worker``. Returns the process exit code (0 after a graceful stop)."""
    parser = worker_parser()
    args = parser.parse_args(argv)
    if not _has_source(args):
        parser.error(_NO_SOURCE)
    configure_logging(args.log_level, args.log_format)
    _raise_open_file_limit()
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as with `python -m`: the current directory imports
    try:
        metrics_host, metrics_port = (
            ("127.0.0.1", None) if args.metrics_port is None else address("--metrics-port", args.metrics_port)
        )
        worker = Worker(
            args.tasks, discover=args.discover, connect=args.connect or (), group=args.group,
            slots=args.slots, interfaces=args.interface, name=args.name, give_up_s=args.give_up_s,
            key=args.key, trust=args.trust, max_payload_bytes=args.max_payload_bytes,
            discover_dns=args.discover_dns or (), connect_file=args.connect_file,
            resolve_every_s=args.resolve_every_s, health_file=args.health_file,
            metrics_port=metrics_port, metrics_host=metrics_host,
            resources=parse_resources(args.resources), labels=parse_labels(args.label),
        )
    except (ValueError, ImportError) as exc:
        print(f"freelance-worker: error: {exc}", file=sys.stderr)
        return 2
    add_fixed_fields({"worker": worker.name})

    stops = 0

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stops
        stops += 1
        if stops > 1:  # a second Ctrl-C: do not wait for running jobs
            raise KeyboardInterrupt
        worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        worker.run()
    except KeyboardInterrupt:
        print("freelance-worker: interrupted twice; running jobs abandoned", file=sys.stderr)
        return 130
    except (RuntimeError, OSError) as exc:  # e.g. a job process that cannot import its tasks,
        print(f"freelance-worker: error: {exc}", file=sys.stderr)  # an --interface not here
        return 1
    return 0


def status_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="freelance-status",
        description="Show what freelance_rz producers are doing (their STATUS).",
        epilog="Example: freelance-status --discover --group thumbnails --watch",
    )
    _add_producer_source(parser)
    parser.add_argument("--json", action="store_true", help="print JSON (one line per refresh)")
    parser.add_argument("--watch", action="store_true", help="refresh every --interval seconds")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds (default: %(default)s)")
    parser.add_argument(
        "--wait", type=float, default=2.0,
        help="with --discover, seconds to listen for announcements first (default: %(default)s)",
    )
    health = parser.add_argument_group("health check (for container probes)")
    health.add_argument(
        "--check", action="store_true",
        help="print one line and exit 0 when healthy: every producer found answered (and a "
        "worker's --health-file is fresh), else 1",
    )
    health.add_argument(
        "--health-file", metavar="PATH",
        help="with --check: the file a worker keeps fresh (freelance-worker --health-file)",
    )
    health.add_argument(
        "--max-age-s", type=float, default=DEFAULT_MAX_AGE_S, metavar="SECONDS",
        help="with --health-file: older than this is unhealthy (default: %(default)s)",
    )
    parser.add_argument(
        "--serve", metavar="[HOST:]PORT",
        help="serve a live web dashboard at http://HOST:PORT/ (HOST default 127.0.0.1; needs "
        "the dashboard extra), polling every --interval seconds, with Prometheus metrics at /metrics",
    )
    parser.add_argument(
        "--token-file", metavar="PATH",
        help="with --serve: a file holding the admin token (16+ characters, as the producers' "
        "admin_token); the page may then cancel jobs and retry failures. Default: read-only",
    )
    _add_log_format(parser)
    return parser


def _cell(value: object, style: str = "") -> Text:
    """A table cell of peer-provided text: cleaned (no control characters, cut), never markup."""
    return Text(clean(value), style=style)


# a STATUS row as received, its checked info (None when it has a problem), and the problem
_ReadRow = tuple[dict[str, Any], ProducerInfo | None, str]


def _read_rows(rows: list[dict[str, Any]]) -> list[_ReadRow]:
    """Each row with its checked info, or None and the problem: the error of a producer that
    did not answer, or ``malformed reply: ...`` for one whose reply has wrong types."""
    read: list[_ReadRow] = []
    for row in rows:
        if "error" in row:
            read.append((row, None, str(row["error"])))
            continue
        try:
            read.append((row, read_info(row), ""))
        except ValueError as exc:
            read.append((row, None, f"malformed reply: {exc}"))
    return read


def _status_view(rows: list[dict[str, Any]]) -> Group:
    """The producers' table, below it the jobs no connected worker can run, and the running
    jobs that reported progress."""
    read = _read_rows(rows)
    tables: list[Table] = [_status_table(read)]
    waiting = [(info, entry) for _, info, _ in read if info is not None for entry in info.waiting]
    if waiting:
        table = Table(title="waiting: jobs no connected worker can run")
        table.add_column("producer")
        table.add_column("jobs", justify="right")
        table.add_column("why", style="yellow")
        for info, entry in waiting:
            table.add_row(_cell(info.producer_id), str(entry.jobs), _cell(entry.message, "yellow"))
        tables.append(table)
    jobs = [(info, job) for _, info, _ in read if info is not None for job in info.progress]
    if not jobs:
        return Group(*tables)
    table = Table(title=f"running jobs with progress ({len(jobs)})")
    for column in ("producer", "job", "worker", "done", "message"):
        table.add_column(column)
    for info, job in jobs:
        done = f"{job.done:g}" + ("" if job.total is None else f" / {job.total:g}")
        table.add_row(_cell(info.producer_id), str(job.job_id), _cell(job.worker), done,
                      _cell(job.message))
    return Group(*tables, table)


_COUNT_COLUMNS = frozenset({"pending", "deferred", "blocked", "leased", "done", "failed", "retried", "dead", "workers",
                            "done/min", "up"})


def _status_title(read: list[_ReadRow]) -> str:
    """E.g. ``freelance_rz producers: 2 answered, 1 malformed, 1 unreachable``: only the
    producers that answered count as answered."""
    answered = sum(1 for _, info, _ in read if info is not None)
    malformed = sum(1 for _, _, problem in read if problem.startswith("malformed reply"))
    parts = [f"{answered} answered"]
    if malformed:
        parts.append(f"{malformed} malformed")
    if len(read) - answered - malformed:
        parts.append(f"{len(read) - answered - malformed} unreachable")
    return "freelance_rz producers: " + ", ".join(parts)


def _status_table(read: list[_ReadRow]) -> Table:
    """One row per producer; the ones that gave no usable answer say why in a ``problem``
    column of their own (shown only when there is one), with their counts left empty. The
    ``deferred``, ``blocked`` and ``retried`` columns show only when a producer has such jobs."""
    table = Table(title=_status_title(read))
    problems = any(problem for _, _, problem in read)
    later = [key for key in ("deferred", "blocked", "retried")
             if any(info is not None and info.counts.get(key) for _, info, _ in read)]
    keys = ("pending", *later, "leased", "done", "failed", "dead", "workers", "finished_last_min")
    for column in ("producer", "group", "endpoint", "pending", *later, "leased", "done", "failed",
                   "dead", "workers", "done/min", "up", *(("problem",) if problems else ())):
        table.add_column(column, justify="right" if column in _COUNT_COLUMNS else "left")
    for row, info, problem in read:
        endpoint = _cell(row.get("endpoint", "?"))
        if info is None:
            producer_id = row.get("producer_id")
            table.add_row(_cell(producer_id) if isinstance(producer_id, str) else "?", "",
                          endpoint, *[""] * (len(keys) + 1), _cell(problem, "red"))
            continue
        table.add_row(
            _cell(info.producer_id), _cell(info.group or ""), endpoint,
            *("" if info.counts[key] is None else str(info.counts[key]) for key in keys),
            "" if info.uptime_s is None else f"{info.uptime_s:.0f} s",
            *(("",) if problems else ()),
        )
    return table


def _jsonable(value: Any) -> Any:
    """``value`` (a decoded msgpack value) as JSON can hold it: bytes as text (invalid
    UTF-8 replaced), map keys as strings, anything else unknown as its ``str``. JSON escapes
    every control character, so what a producer sent is printed as it was, safely."""
    if isinstance(value, dict):
        return {
            (k if isinstance(k, str) else clean(k, 10_000) if isinstance(k, bytes) else str(k)):
            _jsonable(v) for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _json_rows(rows: list[dict[str, Any]]) -> str:
    """The rows as one JSON line; a row too deeply nested to convert becomes an error row."""
    out = []
    for row in rows:
        try:
            out.append(_jsonable(row))
        except RecursionError:
            out.append({"endpoint": _jsonable(row.get("endpoint")),
                        "error": "malformed reply: nested too deeply"})
    return json.dumps(out)


def _status_keys(args: argparse.Namespace) -> tuple[KeyPair | None, dict[bytes, str] | None]:
    """This side's CURVE key pair from ``--key`` and the public keys in ``--trust`` (each
    with its file's name); both None without ``--key``.

    Raises:
        ValueError: only one of the two given, a key file that is not one, or a directory
            without public keys.
        OSError: a key file or the directory cannot be read.
    """
    from .security import check_pair, load_keypair, trusted_key_files

    check_pair(args.key, args.trust, ("--key", "--trust"))
    if args.key is None:
        return None, None
    return load_keypair(args.key), trusted_key_files(args.trust)


def _status_source(
    args: argparse.Namespace, stack: ExitStack, keys: KeyPair | None, trusted: dict[bytes, str] | None,
    detail: bool = False, server_keys: dict[str, bytes | None] | None = None,
) -> Callable[[], list[dict[str, Any]]]:
    """A function asking the producers for their STATUS (rows as :func:`query_status` gives
    them; ``detail``: the detailed one): the ``--connect`` endpoints (a name: each of its
    addresses), in order, then the producers found by ``--discover`` (a producer finder is
    entered on ``stack`` and listens for ``--wait`` seconds first), ``--discover-dns`` and
    ``--connect-file``, with a row of its own (``endpoint``, ``error``) for each one these CURVE
    settings cannot talk to; each asked producer's public key is noted in ``server_keys``.
    Raises OSError or zmq.ZMQError (sockets), ValueError or ImportError (``--discover-dns``)."""
    from .discovery import resolve_interfaces
    from .dnssd import DnsSdSource
    from .sources import FileSource, Source
    from .status import ProducerFinder, connect_targets, query_status, source_producers, vet_producers

    others: list[Source] = [DnsSdSource(service, args.group) for service in args.discover_dns or ()]
    if args.connect_file is not None:
        others.append(FileSource(args.connect_file, args.group))
    finder = None
    if args.discover:
        finder = stack.enter_context(ProducerFinder(args.group, resolve_interfaces(args.interface)))
        time.sleep(args.wait)
    trusted_set = None if trusted is None else frozenset(trusted)

    def snapshot() -> list[dict[str, Any]]:
        targets, rows = connect_targets(args.connect or (), keys, trusted)
        found, key_rows = source_producers(others, keys, trusted)
        if finder is not None:
            found = finder.producers() + found
        asked = {endpoint for endpoint, _ in targets}
        usable, refused = vet_producers([f for f in found if f[0] not in asked], keys, trusted_set)
        targets += list(dict.fromkeys(usable))
        if server_keys is not None:
            server_keys.update(targets)
        endpoints, public_keys = [ep for ep, _ in targets], [pk for _, pk in targets]
        return (query_status(endpoints, keys=keys, server_keys=public_keys, detail=detail)
                + rows + key_rows + refused)

    return snapshot


def _watch_status(
    args: argparse.Namespace, console: Console, stack: ExitStack, rows: list[dict[str, Any]],
    snapshot: Callable[[], list[dict[str, Any]]],
) -> NoReturn:
    """Show ``rows``, then ``snapshot()`` every ``--interval`` seconds, until interrupted: a
    live table on a terminal; elsewhere (a pipe, a file) one table or JSON line per refresh."""
    from rich.live import Live

    live = None
    if not args.json and console.is_terminal:
        live = stack.enter_context(Live(_status_view(rows), console=console))
    while True:
        if live is not None:
            live.update(_status_view(rows))
        elif args.json:
            print(_json_rows(rows), flush=True)
        else:
            console.print(_status_view(rows))
            sys.stdout.flush()
        time.sleep(args.interval)
        rows = snapshot()


def status_main(argv: Sequence[str] | None = None) -> int:
    """Run ``freelance-status``. Returns the exit code: 0 when every producer answered with
    a well-formed STATUS_REPLY, 1 when one did not answer or answered a malformed one (with
    ``--json`` too) or the sources found none, 2 on bad arguments or key files. With
    ``--check``: one line, and 0 healthy or 1 not."""
    parser = status_parser()
    args = parser.parse_args(argv)
    if not _has_source(args) and not (args.check and args.health_file):
        parser.error(_NO_SOURCE + " (or --check --health-file)")
    if args.check and args.watch:
        parser.error("--check and --watch do not go together")
    if args.serve is None:
        configure_logging(logging.WARNING, args.log_format)
    else:
        configure_logging(logging.INFO, args.log_format, {"component": "dashboard"})
    console = Console(width=None if sys.stdout.isatty() else 160)  # no wrapping in pipes
    try:
        if args.check:
            return _check(args)
        keys, trusted = _status_keys(args)
        if args.serve is not None:
            return _serve_dashboard(args, keys, trusted)
        with ExitStack() as stack:
            snapshot = _status_source(args, stack, keys, trusted)
            rows = snapshot()
            none_found = not args.connect and not rows
            if none_found:
                within = f" within {args.wait:g} s (--wait)" if args.discover else ""
                print(f"freelance-status: no producer of group {args.group!r} found{within}",
                      file=sys.stderr)
            if args.watch:
                _watch_status(args, console, stack, rows, snapshot)
            if args.json:
                print(_json_rows(rows))
            else:
                console.print(_status_view(rows))
            return 1 if none_found or any(problem for _, _, problem in _read_rows(rows)) else 0
    except KeyboardInterrupt:
        return 0
    except (ValueError, ImportError, OSError, zmq.ZMQError) as exc:  # bad keys; sockets
        print(f"freelance-status: error: {exc}", file=sys.stderr)
        return 2


def _check(args: argparse.Namespace) -> int:
    """``--check``: print one line; 0 when healthy (a worker's health file fresh, every
    producer found answered), 1 when not."""
    from .status import check_line
    from .worker.health import check_health

    results = []
    if args.health_file is not None:
        results.append(check_health(args.health_file, args.max_age_s))
    if _has_source(args):
        keys, trusted = _status_keys(args)
        with ExitStack() as stack:
            results.append(check_line(_status_source(args, stack, keys, trusted)()))
    healthy = all(ok for ok, _ in results)
    print("; ".join(line for ok, line in results if healthy or not ok))
    return 0 if healthy else 1


def _serve_dashboard(args: argparse.Namespace, keys: KeyPair | None, trusted: dict[bytes, str] | None) -> int:
    """``--serve``: the live web dashboard, until SIGTERM or Ctrl-C. Raises ValueError (bad
    arguments, a token file that is not one), OSError, ImportError (no dashboard extra)."""
    from .status import send_admin

    try:
        from .dashboard import run
    except ImportError as exc:
        raise ImportError(f"--serve needs the dashboard extra: pip install 'freelance_rz[dashboard]' ({exc})") from None
    host, port = address("--serve", args.serve)
    token = _read_token(args.token_file) if args.token_file else None
    server_keys: dict[str, bytes | None] = {}  # each polled producer's key, noted by the poll

    def admin(endpoint: str, token: str, action: str, job_id: int) -> str | None:
        return send_admin(endpoint, token, action, job_id, keys=keys, server_key=server_keys.get(endpoint))

    def ready(url: str) -> None:
        print(f"freelance-status: dashboard at {url} ({'admin actions on' if token else 'read-only'})",
              flush=True)

    with ExitStack() as stack:
        poll = _status_source(args, stack, keys, trusted, detail=True, server_keys=server_keys)
        run(poll, admin, host=host, port=port, group=args.group, interval_s=args.interval,
            token=token, ready=ready)
    return 0


def _read_token(path: str) -> str:
    """The admin token in ``path`` (surrounding blanks dropped). Raises ValueError or OSError."""
    with open(path, encoding="utf-8") as file:
        token = file.read().strip()
    if not 16 <= len(token) <= 256:
        raise ValueError(f"--token-file {path}: the token must be 16 to 256 characters")
    return token


def keys_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="freelance-keys",
        description="Make CURVE key pairs for freelance_rz producers and workers.",
        epilog="Example: freelance-keys generate producer1 --dir keys  (then copy "
        "keys/producer1.key to each worker's --trust directory)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser(
        "generate", help="write NAME.key (public) and NAME.key_secret (mode 0600)"
    )
    generate.add_argument("name", help="file name of the pair, e.g. the host's name")
    generate.add_argument("--dir", default=".", help="directory to write to (default: .)")
    return parser


def keys_main(argv: Sequence[str] | None = None) -> int:
    """Run ``freelance-keys``. Returns the exit code (2 on a bad name or an existing key)."""
    args = keys_parser().parse_args(argv)
    from .security import generate_keypair

    try:
        public, secret = generate_keypair(args.dir, args.name)
    except (ValueError, OSError) as exc:
        print(f"freelance-keys: error: {exc}", file=sys.stderr)
        return 2
    print(f"public key: {public}  (share it: producers' authorized_workers, workers' --trust)")
    print(f"secret key: {secret}  (mode 0600; keep it on this host only)")
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())

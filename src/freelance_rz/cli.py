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
from typing import TYPE_CHECKING, Any, NoReturn, TypeAlias

from .core.payload import POOLS
from .core.text import clean
from .core.wire import DEFAULT_MAX_PAYLOAD
from .worker.worker import GIVE_UP_S, Worker

if TYPE_CHECKING:  # imported where used: a worker starts without rich or the status tool
    from rich.console import Console, Group
    from rich.table import Table
    from rich.text import Text

    from .security import KeyPair
    from .status import ProducerInfo


def _add_producer_source(parser: argparse.ArgumentParser) -> None:
    """--discover or --connect, --group and --interface: which producers (both commands)."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--discover", action="store_true", help="find producers of --group over mDNS"
    )
    source.add_argument(
        "--connect", metavar="ENDPOINT", nargs="+", action="extend",
        help="producer endpoint(s), e.g. tcp://10.0.0.5:5555",
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
        "--give-up-s", type=float, default=GIVE_UP_S, metavar="SECONDS",
        help="abort the running jobs of a producer unreachable this long, and forget it if it "
        "was discovered (default: %(default)s)",
    )
    parser.add_argument(
        "--pool", default=POOLS[0], choices=POOLS,
        help="how jobs run: a job process per slot (process), threads in one job process "
        "(thread), or async def tasks on one event loop in one job process (asyncio) "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--init", metavar="MODULE:FUNCTION",
        help="function run once in each job process before its first job (e.g. to load a "
        "model); a failure stops the worker",
    )
    parser.add_argument(
        "--max-jobs-per-process", type=int, metavar="N",
        help="replace a job process after it has run N jobs (default: never)",
    )
    parser.add_argument(
        "--max-memory-per-process", type=float, metavar="MiB",
        help="replace a job process whose resident memory is over MiB after a job "
        "(default: never)",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper, help="default: %(default)s",
    )
    return parser


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


def worker_main(argv: Sequence[str] | None = None) -> int:
    """Run ``freelance-worker``. Returns the process exit code (0 after a graceful stop)."""
    args = worker_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    _raise_open_file_limit()
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as with `python -m`: the current directory imports
    try:
        worker = Worker(
            args.tasks, discover=args.discover, connect=args.connect or (), group=args.group,
            slots=args.slots, interfaces=args.interface, name=args.name, give_up_s=args.give_up_s,
            key=args.key, trust=args.trust, max_payload_bytes=args.max_payload_bytes,
            pool=args.pool, init=args.init, max_jobs_per_process=args.max_jobs_per_process,
            max_memory_per_process_mib=args.max_memory_per_process,
        )
    except (ValueError, ImportError) as exc:
        print(f"freelance-worker: error: {exc}", file=sys.stderr)
        return 2

    stops = 0

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stops
        stops += 1
        if stops > 1:  # a second Ctrl-C: do not wait for running jobs
            raise KeyboardInterrupt
        worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker._fork_first = True  # this process runs no thread yet and imported no task module
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
    return parser


def _cell(value: object, style: str = "") -> Text:
    """A table cell of peer-provided text: cleaned (no control characters, cut), never markup."""
    from rich.text import Text

    return Text(clean(value), style=style)


# a STATUS row as received, its checked info (None when it has a problem), and the problem
_ReadRow: TypeAlias = "tuple[dict[str, Any], ProducerInfo | None, str]"


def _read_rows(rows: list[dict[str, Any]]) -> list[_ReadRow]:
    """Each row with its checked info, or None and the problem: the error of a producer that
    did not answer, or ``malformed reply: ...`` for one whose reply has wrong types."""
    read: list[_ReadRow] = []
    for row in rows:
        if "error" in row:
            read.append((row, None, str(row["error"])))
            continue
        try:
            read.append((row, _read_info(row), ""))
        except ValueError as exc:
            read.append((row, None, f"malformed reply: {exc}"))
    return read


def _read_info(row: dict[str, Any]) -> ProducerInfo:
    from .status import read_info

    return read_info(row)


def _status_view(rows: list[dict[str, Any]]) -> Group:
    """The producers' table, and below it the running jobs that reported progress."""
    from rich.console import Group
    from rich.table import Table

    read = _read_rows(rows)
    jobs = [(info, job) for _, info, _ in read if info is not None for job in info.progress]
    if not jobs:
        return Group(_status_table(read))
    table = Table(title=f"running jobs with progress ({len(jobs)})")
    for column in ("producer", "job", "worker", "done", "message"):
        table.add_column(column)
    for info, job in jobs:
        done = f"{job.done:g}" + ("" if job.total is None else f" / {job.total:g}")
        table.add_row(_cell(info.producer_id), str(job.job_id), _cell(job.worker), done,
                      _cell(job.message))
    return Group(_status_table(read), table)


_COUNT_COLUMNS = frozenset({"pending", "leased", "done", "failed", "dead", "workers", "done/min", "up"})


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
    column of their own (shown only when there is one), with their counts left empty."""
    from rich.table import Table

    table = Table(title=_status_title(read))
    problems = any(problem for _, _, problem in read)
    for column in ("producer", "group", "endpoint", "pending", "leased", "done", "failed",
                   "dead", "workers", "done/min", "up", *(("problem",) if problems else ())):
        table.add_column(column, justify="right" if column in _COUNT_COLUMNS else "left")
    for row, info, problem in read:
        endpoint = _cell(row.get("endpoint", "?"))
        if info is None:
            producer_id = row.get("producer_id")
            table.add_row(_cell(producer_id) if isinstance(producer_id, str) else "?", "",
                          endpoint, *[""] * 8, _cell(problem, "red"))
            continue
        table.add_row(
            _cell(info.producer_id), _cell(info.group or ""), endpoint,
            *("" if info.counts[key] is None else str(info.counts[key])
              for key in ("pending", "leased", "done", "failed", "dead", "workers",
                          "finished_last_min")),
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


def _status_keys(args: argparse.Namespace) -> tuple[KeyPair | None, frozenset[bytes] | None]:
    """This side's CURVE key pair from ``--key`` and the public keys in ``--trust``; both
    None without ``--key``.

    Raises:
        ValueError: only one of the two given, a key file that is not one, or ``--connect``
            with ``--key`` and not exactly one key in ``--trust`` (the producer's).
        OSError: a key file or the directory cannot be read.
    """
    from .security import check_pair, load_keypair, load_public_keys

    check_pair(args.key, args.trust, ("--key", "--trust"))
    if args.key is None:
        return None, None
    keys, trusted = load_keypair(args.key), load_public_keys(args.trust)
    if args.connect and len(trusted) != 1:
        raise ValueError("--connect with --key needs --trust to hold exactly one key "
                         "(the producer's)")
    return keys, trusted


def _status_source(
    args: argparse.Namespace, stack: ExitStack, keys: KeyPair | None, trusted: frozenset[bytes] | None,
) -> Callable[[], list[dict[str, Any]]]:
    """A function asking the producers for their STATUS (rows as :func:`query_status` gives
    them). With ``--discover``, a producer finder is entered on ``stack`` and listens for
    ``--wait`` seconds first; each call asks the producers found by then, with a row of its
    own (``endpoint``, ``error``) for each one these CURVE settings cannot talk to. Else it
    asks the ``--connect`` endpoints. Raises OSError or zmq.ZMQError (sockets)."""
    from .discovery import resolve_interfaces
    from .status import ProducerFinder, query_status, vet_producers

    if not args.discover:
        def connected() -> list[dict[str, Any]]:
            server_keys = [next(iter(trusted))] * len(args.connect) if trusted else []
            return query_status(args.connect, keys=keys, server_keys=server_keys)

        return connected
    finder = stack.enter_context(ProducerFinder(args.group, resolve_interfaces(args.interface)))
    time.sleep(args.wait)

    def discovered() -> list[dict[str, Any]]:
        usable, refused = vet_producers(finder.producers(), keys, trusted)
        endpoints, server_keys = [ep for ep, _ in usable], [pk for _, pk in usable]
        return query_status(endpoints, keys=keys, server_keys=server_keys) + refused

    return discovered


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
    ``--json`` too) or ``--discover`` found none, 2 on bad arguments or key files."""
    import zmq
    from rich.console import Console

    args = status_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    console = Console(width=None if sys.stdout.isatty() else 160)  # no wrapping in pipes
    try:
        keys, trusted = _status_keys(args)
        with ExitStack() as stack:
            snapshot = _status_source(args, stack, keys, trusted)
            rows = snapshot()
            none_found = args.discover and not rows
            if none_found:
                print(f"freelance-status: no producer of group {args.group!r} found within "
                      f"{args.wait:g} s (--wait)", file=sys.stderr)
            if args.watch:
                _watch_status(args, console, stack, rows, snapshot)
            if args.json:
                print(_json_rows(rows))
            else:
                console.print(_status_view(rows))
            return 1 if none_found or any(problem for _, _, problem in _read_rows(rows)) else 0
    except KeyboardInterrupt:
        return 0
    except (ValueError, OSError, zmq.ZMQError) as exc:  # bad keys; sockets cannot be made
        print(f"freelance-status: error: {exc}", file=sys.stderr)
        return 2


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

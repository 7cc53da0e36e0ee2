"""Command-line entry points: parse arguments, set up logging, build the object, run it.

``freelance-worker`` is a thin argparse shell over :class:`freelance_rz.worker.Worker` (the
shape of arq's ``cli.py``).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from .worker import GIVE_UP_S, Worker


def worker_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="freelance-worker",
        description="Pull jobs from freelance_rz producers and run them, one per free slot.",
        epilog="Example: freelance-worker --discover --tasks myapp.tasks --slots 4",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--discover", action="store_true", help="find producers of --group over mDNS"
    )
    source.add_argument(
        "--connect", metavar="ENDPOINT", nargs="+", action="extend",
        help="producer endpoint(s), e.g. tcp://10.0.0.5:5555",
    )
    parser.add_argument(
        "--tasks", metavar="MODULE", action="append", required=True,
        help="module whose public functions may run (repeatable); the current directory "
        "is importable",
    )
    parser.add_argument("--group", default="default", help="producer group (default: %(default)s)")
    parser.add_argument(
        "--slots", type=int, default=None, help="jobs run at once (default: number of CPUs)"
    )
    parser.add_argument(
        "--interface", metavar="IP", action="append",
        help="IPv4 address for mDNS (repeatable; default: $FREELANCE_RZ_INTERFACES or all)",
    )
    parser.add_argument("--name", help="worker name in logs (default: HOST-PID)")
    parser.add_argument(
        "--give-up-s", type=float, default=GIVE_UP_S, metavar="SECONDS",
        help="abort the running jobs of a producer unreachable this long, and forget it if it "
        "was discovered (default: %(default)s)",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper, help="default: %(default)s",
    )
    return parser


def worker_main(argv: Sequence[str] | None = None) -> int:
    """Run ``freelance-worker``. Returns the process exit code (0 after a graceful stop)."""
    args = worker_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as with `python -m`: the current directory imports
    try:
        worker = Worker(
            args.tasks, discover=args.discover, connect=args.connect or (), group=args.group,
            slots=args.slots, interfaces=args.interface, name=args.name, give_up_s=args.give_up_s,
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
    try:
        worker.run()
    except KeyboardInterrupt:
        print("freelance-worker: interrupted twice; running jobs abandoned", file=sys.stderr)
        return 130
    except (RuntimeError, OSError) as exc:  # e.g. a job process that cannot import its tasks,
        print(f"freelance-worker: error: {exc}", file=sys.stderr)  # an --interface not here
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())

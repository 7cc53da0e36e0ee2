"""A lab worker peer: the real ``freelance-worker`` (:func:`freelance_rz.cli.worker_main`)
with one logging handler added that turns the worker's own log lines about producers into
records: ``found`` ("producer X at ENDPOINT"), ``unreachable`` ("producer X unreachable
(...)"), ``reachable`` ("producer X reachable again") and ``forgotten`` ("producer X at
ENDPOINT forgotten: ..."), each with ``producer_key`` X (the producer id a discovered producer
announced, or its endpoint when its source names none) and the log record's own time;
``found`` and ``forgotten`` also with ``endpoint``.

Run as ``python -m freelance_rz.lab.worker_peer WORKER_ARGS...`` (the environment names the
events file, the peer and the host)."""

from __future__ import annotations

import logging
import sys

from freelance_rz.cli import worker_main

from .records import append_from_env

#: worker.py's log formats (logger "freelance_rz.worker") -> record kind
LOG_KINDS = {
    "producer %s at %s": "found",
    "producer %s unreachable (%s); retrying with backoff": "unreachable",
    "producer %s reachable again": "reachable",
    "producer %s at %s forgotten: %s": "forgotten",
}


class RecordHandler(logging.Handler):
    """Writes a record for each worker log line of :data:`LOG_KINDS`."""

    def emit(self, record: logging.LogRecord) -> None:
        kind = LOG_KINDS.get(str(record.msg))
        if kind is None or not isinstance(record.args, tuple) or not record.args:
            return
        try:
            extra = {"endpoint": str(record.args[1])} if kind in ("found", "forgotten") else {}
            append_from_env(kind, t=record.created, producer_key=str(record.args[0]), **extra)
        except OSError:
            self.handleError(record)


def main(argv: list[str] | None = None) -> int:
    """Run ``freelance-worker`` with ``argv``, recording what it logs about producers."""
    logging.getLogger("freelance_rz.worker").addHandler(RecordHandler(logging.INFO))
    return worker_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())

"""A producer of the beyond-one-LAN lab run (:mod:`freelance_rz.lab.beyond`): binds a fixed
port on its host's address, announces itself on mDNS there, writes its line into the shared
endpoints file, records ``producer_ready`` (its producer id and endpoint), then keeps
:data:`KEEP` jobs of ``freelance_rz.lab.tasks:work`` (keys ``NAME-1``, ``NAME-2``, ...)
pending until SIGTERM, so every worker that knows it is handed its jobs at once.

Run as ``python -m freelance_rz.lab.beyond_peer NAME ADDRESS PORT GROUP ENDPOINTS_FILE`` (the
environment names the events file, the peer and the host)."""

from __future__ import annotations

import signal
import sys
import threading
from concurrent.futures import Future
from types import FrameType

from freelance_rz import Producer

from .records import append_from_env

KEEP = 8  # jobs pending at any time
JOB_S = 0.02  # each job's sleep (seconds)
TOP_UP_S = 0.02  # how often the pending jobs are topped up (seconds)


def main(argv: list[str] | None = None) -> int:
    """Run the producer until SIGTERM (or SIGINT); returns the exit code."""
    name, address, port, group, endpoints_file = sys.argv[1:] if argv is None else argv
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    producer = Producer(group, interfaces=[address], port=int(port), endpoints_file=endpoints_file)
    producer.start()
    try:
        append_from_env("producer_ready", producer_id=producer.producer_id, endpoint=producer.endpoint)
        pending: set[Future[str]] = set()
        submitted = 0
        while not stop.wait(TOP_UP_S):
            pending = {f for f in pending if not f.done()}
            while len(pending) < KEEP:
                submitted += 1
                pending.add(producer.submit("freelance_rz.lab.tasks:work", f"{name}-{submitted}", JOB_S))
    finally:
        producer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

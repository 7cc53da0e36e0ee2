"""The producer application of the compose example (docs/deploy.md): a service that embeds a
``Producer`` and sends it work, here one batch of word counts every few seconds (the tasks of
examples/worker/tasks.py, named by string, so the app does not import them).

Its settings come from the environment, as a container's do:

- ``FREELANCE_GROUP``: the group (default ``examples``);
- ``FREELANCE_PORT``: the offer socket's fixed port (default 5555), the one the compose file
  publishes and the workers connect to;
- ``FREELANCE_ADVERTISE``: ``HOST:PORT`` workers outside this Docker host reach it at (the
  host's address and the published port); unset: the bound address;
- ``FREELANCE_ENDPOINTS_FILE``: an endpoints file on a volume other hosts' workers read
  (``freelance-worker --connect-file``); unset: none.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Mapping

from freelance_rz import Producer

BATCH = ["the quick brown fox", "pull when idle, and only then pull", "an old silent pond"]


def producer_from_env(env: Mapping[str, str]) -> Producer:
    """The producer the environment describes (not started)."""
    return Producer(
        env.get("FREELANCE_GROUP", "examples"),
        port=int(env.get("FREELANCE_PORT", "5555")),
        advertise=env.get("FREELANCE_ADVERTISE") or None,
        endpoints_file=env.get("FREELANCE_ENDPOINTS_FILE") or None,
        announce=False,  # mDNS does not cross Docker's bridge network
    )


def main() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    with producer_from_env(os.environ) as producer:
        print(f"producer {producer.producer_id} on {producer.endpoint}, advertised as "
              f"{producer.advertise or producer.endpoint}", flush=True)
        while not stop.wait(5.0):
            counts = list(producer.map("tasks:word_count", BATCH, timeout=60))
            print(f"word counts: {counts}", flush=True)


if __name__ == "__main__":
    main()

"""An application embedding a Producer, with an open-file limit of 1024 (soft and hard), as on
many hosts, driven over stdin for the hostile connection tests. Prints its endpoint, then
answers one JSON line per command: ``job`` (runs rztasks:add on a worker), ``open N`` (opens
N files, says how many opened), ``status``."""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile

resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))

from freelance_rz import Producer  # noqa: E402



def fd_count() -> int:
    """Open descriptors, or -1 when none is left to list them with (EMFILE)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


producer = Producer(sys.argv[1], interfaces=["127.0.0.1"], announce=False).start()
print(json.dumps({"endpoint": producer.endpoint, "max_connections": producer.max_connections}),
      flush=True)
for line in sys.stdin:
    command = line.split()
    if command[0] == "job":
        out = {"result": producer.submit("rztasks:add", 1, 2).result(timeout=30)}
    elif command[0] == "open":
        opened, error = [], None
        try:
            for _ in range(int(command[1])):
                opened.append(tempfile.TemporaryFile())
        except OSError as exc:
            error = str(exc)
        out = {"opened": len(opened), "error": error, "fds": fd_count()}
        for f in opened:
            f.close()
    else:
        status = producer.status()
        out = {"connections": status["connections"], "fds": fd_count()}
    print(json.dumps(out), flush=True)
producer.close()

"""The worker's reaper: kills what a dead worker's tasks left running.

Each job process is the leader of a process group of its own, and whatever a task starts is in
that group. ``PR_SET_PDEATHSIG`` kills a job process when its worker dies, but not the programs
its tasks started. This process is started by the worker in a session of its own (so neither
Ctrl-C nor a signal to the worker's group reaches it), reads lines from its stdin, a pipe whose
only writer is the worker:

- ``+PGID``: a job process group to watch; ``-PGID``: one the worker has retired itself.

When stdin reaches end of file (the worker exited or was killed), it SIGKILLs every group still
watched and exits. It imports only ``os``, ``sys`` and ``signal`` and runs no threads, so it
starts in milliseconds (``python -I -S``) and holds no resources worth mentioning.
"""

import os
import signal
import sys


def main() -> int:
    """Watch process groups until stdin closes, then SIGKILL them. Returns the exit code (0)."""
    own = os.getpgrp()
    groups: set[int] = set()
    pending = b""
    while True:
        chunk = os.read(0, 4096)
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            try:
                pgid = int(line[1:])
            except ValueError:
                continue
            if pgid <= 1 or pgid == own:
                continue
            if line[:1] == b"+":
                groups.add(pgid)
            elif line[:1] == b"-":
                groups.discard(pgid)
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:  # the group is gone already (or not ours to kill)
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Task module of the stdlib demo: workers run it with ``--tasks tasks``.

Only public functions defined here can run on a worker (the allowlist); the producer names the
task ``"tasks:compress_file"``.
"""

from __future__ import annotations

import hashlib
import os
import socket
import zlib

ZLIB_LEVEL = 6


def compress_file(path: str) -> dict[str, object]:
    """Read ``path``, compress it with zlib (level 6) and describe the result.

    Returns:
        ``{"path", "bytes_in", "bytes_out", "sha256" (hex digest of the original bytes),
        "worker"}``; ``worker`` is the label the demo gives each worker process
        (``$FREELANCE_DEMO_WORKER``, inherited by its job processes).

    Raises:
        OSError: the file cannot be read (the producer sees a ``JobFailed``).
    """
    with open(path, "rb") as f:
        data = f.read()
    return {
        "path": path,
        "bytes_in": len(data),
        "bytes_out": len(zlib.compress(data, ZLIB_LEVEL)),
        "sha256": hashlib.sha256(data).hexdigest(),
        "worker": _worker_label(),
    }


def _worker_label() -> str:
    label = os.environ.get("FREELANCE_DEMO_WORKER")
    if label:
        return label
    # a job process's parent is the worker process
    return f"{socket.gethostname()}-{os.getppid()}"

"""Task module of the stdlib demo: workers run it with ``--tasks tasks``.

Only public functions defined here can run on a worker (the allowlist); the producer names the
task ``"tasks:compress_file"``.
"""

from __future__ import annotations

import hashlib
import os
import socket
import zlib

from freelance_rz import report_progress

ZLIB_LEVEL = 6
CHUNK_BYTES = 256 * 1024  # files larger than one chunk report their progress per chunk


def compress_file(path: str) -> dict[str, object]:
    """Read ``path``, compress it with zlib (level 6) and describe the result.

    Returns:
        ``{"path", "bytes_in", "bytes_out", "sha256" (hex digest of the original bytes),
        "worker"}``; ``worker`` is the label the demo gives each worker process
        (``$FREELANCE_DEMO_WORKER``, inherited by its job processes).

    A file larger than ``CHUNK_BYTES`` is read chunk by chunk and reports its progress
    (bytes done of the file's size) with :func:`freelance_rz.report_progress`, which the
    producer's progress bar shows.

    Raises:
        OSError: the file cannot be read (the producer sees a ``JobFailed``).
    """
    total = os.path.getsize(path)
    digest, compressor = hashlib.sha256(), zlib.compressobj(ZLIB_LEVEL)
    bytes_in = bytes_out = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
            bytes_out += len(compressor.compress(chunk))
            bytes_in += len(chunk)
            if total > CHUNK_BYTES:
                report_progress(bytes_in, total, os.path.basename(path))
    bytes_out += len(compressor.flush())
    return {
        "path": path,
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "sha256": digest.hexdigest(),
        "worker": _worker_label(),
    }


def _worker_label() -> str:
    label = os.environ.get("FREELANCE_DEMO_WORKER")
    if label:
        return label
    # a job process's parent is the worker process
    return f"{socket.gethostname()}-{os.getppid()}"

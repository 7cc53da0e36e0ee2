"""The run's event records (``events.jsonl``): one JSON object per line, appended by every
process of a run. The format is described in RECORDS.md (kinds and fields)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

ENV_EVENTS = "FREELANCE_LAB_EVENTS"  # path of events.jsonl, set for every peer process
ENV_PEER = "FREELANCE_LAB_PEER"  # the peer's name
ENV_HOST = "FREELANCE_LAB_HOST"  # the peer's host name


def append(path: str | os.PathLike[str], kind: str, *, peer: str, host: str, t: float | None = None,
           **fields: Any) -> None:
    """Append one record to ``path`` with a single ``os.write`` on an O_APPEND descriptor, so
    lines of concurrent writers never interleave. ``t``: wall-clock seconds (default now)."""
    record = {"t": time.time() if t is None else t, "kind": kind, "peer": peer, "host": host, **fields}
    line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def append_from_env(kind: str, **fields: Any) -> None:
    """Append a record as the peer named in the environment (a no-op outside a lab run)."""
    path = os.environ.get(ENV_EVENTS)
    if path:
        append(path, kind, peer=os.environ.get(ENV_PEER, "?"), host=os.environ.get(ENV_HOST, "?"),
               **fields)


def read(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every complete record of ``path`` in file order (a torn last line is skipped)."""
    out = []
    try:
        text = Path(path).read_text("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out

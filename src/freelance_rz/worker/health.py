"""A worker's health file (``freelance-worker --health-file PATH``), for container probes.

The worker's loop rewrites the file every :data:`HEALTH_EVERY_S` seconds, atomically
(a temporary file renamed over it), with a small JSON map: the wall-clock ``time`` it was
written, the worker's ``name`` and ``pid``, its ``slots`` and how many are ``busy``, the
``producers`` it has links to and how many of them are ``answering``, ``jobs_run``,
``jobs_failed`` and whether it is ``stopping``. Since only the loop writes it, a file older
than a few intervals means a worker that is stuck or gone; ``freelance-status --check
--health-file PATH`` (:func:`check_health`) says so in one line and its exit code.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("freelance_rz.worker")

HEALTH_EVERY_S = 1.0  # the loop rewrites the file this often (seconds)
DEFAULT_MAX_AGE_S = 10.0  # freelance-status --check: a file older than this is unhealthy
MAX_HEALTH_BYTES = 64 * 1024  # a larger file is not a health file


class HealthFile:
    """The file one worker keeps fresh.

    Args:
        path: where to write it (its directory must exist).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.next_at = 0.0  # monotonic seconds of the next write
        self._failing = False

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def write(self, now: float, info: dict[str, Any]) -> None:
        """Write ``info`` with the wall-clock ``time`` (atomically). A write that fails is
        logged once (until one works again) and never stops the worker."""
        self.next_at = now + HEALTH_EVERY_S
        data = json.dumps({"time": time.time(), **info}, separators=(",", ":")).encode()
        try:
            fd, scratch = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.chmod(scratch, 0o644)
                os.replace(scratch, self.path)
            except BaseException:
                try:
                    os.unlink(scratch)
                except OSError:
                    pass
                raise
        except OSError as exc:
            if not self._failing:
                log.warning("cannot write the health file %s: %s (probes will find it stale)",
                            self.path, exc)
            self._failing = True
            return
        self._failing = False

    def remove(self) -> None:
        """Remove the file (the worker ended: a probe must not find it fresh)."""
        try:
            self.path.unlink()
        except OSError:
            pass


def check_health(path: str | os.PathLike[str], max_age_s: float = DEFAULT_MAX_AGE_S,
                 now: float | None = None) -> tuple[bool, str]:
    """Whether the worker that keeps ``path`` fresh is healthy, and one line saying why.

    Healthy means: the file exists, holds a health map, and was written less than
    ``max_age_s`` seconds ago (wall clock; ``now`` defaults to the current time).

    Returns:
        ``(True, "ok: worker NAME: ...")`` or ``(False, "unhealthy: ...")``.
    """
    now = time.time() if now is None else now
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_HEALTH_BYTES + 1)
    except FileNotFoundError:
        return False, f"unhealthy: no health file at {path} (the worker has not started, or ended)"
    except OSError as exc:
        return False, f"unhealthy: cannot read {path}: {exc.strerror or exc}"
    info: Any = None
    written = math.nan
    try:
        info = json.loads(data) if len(data) <= MAX_HEALTH_BYTES else None
        written = float(info["time"]) if isinstance(info, dict) else math.nan
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError):
        pass  # not JSON (or not UTF-8, too deep), no time, or not a number: said below
    if not isinstance(info, dict) or not math.isfinite(written):
        return False, f"unhealthy: {path} is not a worker's health file"
    age = now - written
    summary = (f"worker {str(info.get('name', '?'))[:80]}: {_int(info, 'answering')} of "
               f"{_int(info, 'producers')} producer(s) answering, {_int(info, 'busy')} of "
               f"{_int(info, 'slots')} slot(s) busy, {_int(info, 'jobs_run')} job(s) run")
    if info.get("stopping") is True:
        summary += ", stopping"
    if age > max_age_s:
        return False, f"unhealthy: {summary}; not updated for {age:.0f} s (stuck or stopped)"
    return True, f"ok: {summary}; updated {max(age, 0.0):.1f} s ago"


def _int(info: dict[str, Any], key: str) -> str:
    value = info.get(key)
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else "?"


__all__ = ["DEFAULT_MAX_AGE_S", "HEALTH_EVERY_S", "HealthFile", "check_health"]

"""freelance_rz: brokerless job distribution. Producers hold jobs; workers pull them.

Public API: :class:`Producer` (a ``concurrent.futures.Executor``), :class:`Worker`, and the
exceptions below. Everything else is private and may change.

The names are imported when first used (PEP 562): a worker's job process, which imports
only :func:`report_progress`'s module, does not pay for the producer, ZeroMQ or zeroconf.
"""

from __future__ import annotations

import importlib as _importlib
from typing import TYPE_CHECKING
from typing import Any as _Any

from . import _version
from .errors import (
    DependencyFailed,
    FreelanceError,
    JobFailed,
    JobLost,
    JobTimeout,
    JobTooLarge,
    ProducerClosed,
    ProtocolError,
    Retry,
    StoreError,
    TaskNotAllowed,
)

if TYPE_CHECKING:
    from .producer.api import JobEvent, JobFuture, JobOptions, JobProgress, Producer, ScheduleHandle
    from .worker.pipe import report_progress
    from .worker.worker import Worker, WorkerStats

__version__ = _version.__version__
"""The package version (PEP 440)."""

__docformat__ = "google"

# public name -> the module defining it, imported on first use
_LAZY = {
    "JobEvent": ".producer.api",
    "JobFuture": ".producer.api",
    "JobOptions": ".producer.api",
    "JobProgress": ".producer.api",
    "Producer": ".producer.api",
    "ScheduleHandle": ".producer.api",
    "Worker": ".worker.worker",
    "WorkerStats": ".worker.worker",
    "report_progress": ".worker.pipe",
}


def __getattr__(name: str) -> _Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "DependencyFailed",
    "FreelanceError",
    "JobFailed",
    "JobEvent",
    "JobFuture",
    "JobLost",
    "JobOptions",
    "JobProgress",
    "JobTimeout",
    "JobTooLarge",
    "Producer",
    "ProducerClosed",
    "ProtocolError",
    "Retry",
    "ScheduleHandle",
    "StoreError",
    "TaskNotAllowed",
    "Worker",
    "WorkerStats",
    "report_progress",
    "__version__",
]

"""freelance_rz: brokerless job distribution. Producers hold jobs; workers pull them.

Public API: :class:`Producer` (a ``concurrent.futures.Executor``), :class:`Worker`, and the
exceptions below. Everything else is private and may change.
"""

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
from .producer.api import JobEvent, JobFuture, JobOptions, JobProgress, Producer, ScheduleHandle
from .worker.slots import report_progress
from .worker.worker import Worker, WorkerStats

__version__ = _version.__version__
"""The package version (PEP 440)."""

__docformat__ = "google"

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

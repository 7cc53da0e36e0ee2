"""Log lines as log shippers expect them (``--log-format json``): one JSON object per line,
made by a :class:`logging.Formatter`, so the standard logging machinery (levels, handlers,
``extra=``) is all there is.

Each object has ``ts`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger`` and
``message``, plus the job fields a log call gave with ``extra=`` (``job_id``, ``task``,
``producer``, ``worker``, ``attempt``) and the fixed fields of the process (a worker's
``worker`` name, the dashboard's ``component``); an exception adds ``exc_info`` (its
traceback as text). Messages keep their text as it was logged: JSON escapes every control
character.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

#: record attributes copied into the object when a log call set them (``extra=``)
JOB_FIELDS = ("job_id", "task", "producer", "worker", "attempt", "endpoint")
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON (see the module docstring).

    Args:
        fixed: fields every line carries (e.g. ``{"worker": "gpu-7"}``); a record's own
            value of a field wins.
    """

    def __init__(self, fixed: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.fixed = dict(fixed or {})

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name, "message": record.getMessage(),
            **self.fixed,
        }
        for key in JOB_FIELDS:
            value = record.__dict__.get(key)
            if value is not None:
                line[key] = value
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure(level: str | int, log_format: str = "text", fixed: Mapping[str, Any] | None = None) -> None:
    """Set up the root logger for a command: ``log_format`` ``"text"`` (the default lines)
    or ``"json"`` (:class:`JsonFormatter` with ``fixed`` fields), on standard error.

    Raises:
        ValueError: an unknown ``log_format``.
    """
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {log_format!r}")
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(fixed) if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)


def add_fixed_fields(fields: Mapping[str, Any]) -> None:
    """Add ``fields`` to every line the root logger's JSON handlers write from now on (e.g. a
    worker's name, known once it is built)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler.formatter, JsonFormatter):
            handler.formatter.fixed.update(fields)

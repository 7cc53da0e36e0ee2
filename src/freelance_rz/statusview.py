"""What ``freelance-status`` prints: the producers' STATUS rows as rich tables (the
producers, the jobs no connected worker can run, the running jobs that reported progress) or
as one JSON line. Everything a peer sent is cleaned (tables) or escaped (JSON) before it is
shown. rich and the status reader are imported where used."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, TypeAlias

from .core.text import clean

if TYPE_CHECKING:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from .status import ProducerInfo


def _cell(value: object, style: str = "") -> Text:
    """A table cell of peer-provided text: cleaned (no control characters, cut), never markup."""
    from rich.text import Text

    return Text(clean(value), style=style)


# a STATUS row as received, its checked info (None when it has a problem), and the problem
_ReadRow: TypeAlias = "tuple[dict[str, Any], ProducerInfo | None, str]"


def read_rows(rows: list[dict[str, Any]]) -> list[_ReadRow]:
    """Each row with its checked info, or None and the problem: the error of a producer that
    did not answer, or ``malformed reply: ...`` for one whose reply has wrong types."""
    read: list[_ReadRow] = []
    for row in rows:
        if "error" in row:
            read.append((row, None, str(row["error"])))
            continue
        try:
            read.append((row, _read_info(row), ""))
        except ValueError as exc:
            read.append((row, None, f"malformed reply: {exc}"))
    return read


def _read_info(row: dict[str, Any]) -> ProducerInfo:
    from .status import read_info

    return read_info(row)


def status_view(rows: list[dict[str, Any]]) -> Group:
    """The producers' table, below it the jobs no connected worker can run, and the running
    jobs that reported progress."""
    from rich.console import Group
    from rich.table import Table

    read = read_rows(rows)
    tables: list[Table] = [_status_table(read)]
    waiting = [(info, entry) for _, info, _ in read if info is not None for entry in info.waiting]
    if waiting:
        table = Table(title="waiting: jobs no connected worker can run")
        table.add_column("producer")
        table.add_column("jobs", justify="right")
        table.add_column("why", style="yellow")
        for info, entry in waiting:
            table.add_row(_cell(info.producer_id), str(entry.jobs), _cell(entry.message, "yellow"))
        tables.append(table)
    jobs = [(info, job) for _, info, _ in read if info is not None for job in info.progress]
    if not jobs:
        return Group(*tables)
    table = Table(title=f"running jobs with progress ({len(jobs)})")
    for column in ("producer", "job", "worker", "done", "message"):
        table.add_column(column)
    for info, job in jobs:
        done = f"{job.done:g}" + ("" if job.total is None else f" / {job.total:g}")
        table.add_row(_cell(info.producer_id), str(job.job_id), _cell(job.worker), done,
                      _cell(job.message))
    return Group(*tables, table)


_COUNT_COLUMNS = frozenset({"pending", "deferred", "blocked", "leased", "done", "failed", "retried", "dead", "workers",
                            "done/min", "up"})


def _status_title(read: list[_ReadRow]) -> str:
    """E.g. ``freelance_rz producers: 2 answered, 1 malformed, 1 unreachable``: only the
    producers that answered count as answered."""
    answered = sum(1 for _, info, _ in read if info is not None)
    malformed = sum(1 for _, _, problem in read if problem.startswith("malformed reply"))
    parts = [f"{answered} answered"]
    if malformed:
        parts.append(f"{malformed} malformed")
    if len(read) - answered - malformed:
        parts.append(f"{len(read) - answered - malformed} unreachable")
    return "freelance_rz producers: " + ", ".join(parts)


def _status_table(read: list[_ReadRow]) -> Table:
    """One row per producer; the ones that gave no usable answer say why in a ``problem``
    column of their own (shown only when there is one), with their counts left empty. The
    ``deferred``, ``blocked`` and ``retried`` columns show only when a producer has such jobs."""
    from rich.table import Table

    table = Table(title=_status_title(read))
    problems = any(problem for _, _, problem in read)
    later = [key for key in ("deferred", "blocked", "retried")
             if any(info is not None and info.counts.get(key) for _, info, _ in read)]
    keys = ("pending", *later, "leased", "done", "failed", "dead", "workers", "finished_last_min")
    for column in ("producer", "group", "endpoint", "pending", *later, "leased", "done", "failed",
                   "dead", "workers", "done/min", "up", *(("problem",) if problems else ())):
        table.add_column(column, justify="right" if column in _COUNT_COLUMNS else "left")
    for row, info, problem in read:
        endpoint = _cell(row.get("endpoint", "?"))
        if info is None:
            producer_id = row.get("producer_id")
            table.add_row(_cell(producer_id) if isinstance(producer_id, str) else "?", "",
                          endpoint, *[""] * (len(keys) + 1), _cell(problem, "red"))
            continue
        table.add_row(
            _cell(info.producer_id), _cell(info.group or ""), endpoint,
            *("" if info.counts[key] is None else str(info.counts[key]) for key in keys),
            "" if info.uptime_s is None else f"{info.uptime_s:.0f} s",
            *(("",) if problems else ()),
        )
    return table


def _jsonable(value: Any) -> Any:
    """``value`` (a decoded msgpack value) as JSON can hold it: bytes as text (invalid
    UTF-8 replaced), map keys as strings, anything else unknown as its ``str``. JSON escapes
    every control character, so what a producer sent is printed as it was, safely."""
    if isinstance(value, dict):
        return {
            (k if isinstance(k, str) else clean(k, 10_000) if isinstance(k, bytes) else str(k)):
            _jsonable(v) for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def json_rows(rows: list[dict[str, Any]]) -> str:
    """The rows as one JSON line; a row too deeply nested to convert becomes an error row."""
    out = []
    for row in rows:
        try:
            out.append(_jsonable(row))
        except RecursionError:
            out.append({"endpoint": _jsonable(row.get("endpoint")),
                        "error": "malformed reply: nested too deeply"})
    return json.dumps(out)


__all__ = ["json_rows", "read_rows", "status_view"]

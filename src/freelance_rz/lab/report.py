"""The report of a lab run, computed from its event records only.

A run directory holds ``scenario.json`` and ``events.jsonl`` (format: the records contract,
kept beside the runner). :func:`compute_report` is a pure function of the scenario dict and
the list of records; :func:`build_report` reads the two files, :func:`write_outputs` writes
``report.json`` (and ``timeline.png`` when matplotlib is importable), and
:func:`format_report` renders a report for the terminal. Every time is in seconds.

This module is the files and the terminal; the computation is pure and lives below it:
:mod:`~freelance_rz.lab.tables` reads the records into jobs, executions and cuts (its
docstring is the theory of operation), :mod:`~freelance_rz.lab.analysis` turns those into the
report's numbers, and :mod:`~freelance_rz.lab.plot` draws the timeline from the same tables.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .analysis import compute_report
from .tables import Timeline, compute_timeline

__all__ = ["Timeline", "build_report", "compute_report", "compute_timeline", "format_report", "read_run", "write_outputs"]


# --------------------------------------------------------------------------- files and terminal


def read_run(run_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The scenario dict and the records of a run directory (lines that are not JSON objects
    are skipped)."""
    run_dir = Path(run_dir)
    scenario = json.loads((run_dir / "scenario.json").read_text())
    records = []
    events = run_dir / "events.jsonl"
    if events.exists():
        for line in events.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                records.append(rec)
    return scenario, records


def build_report(run_dir: str | Path) -> dict[str, Any]:
    """:func:`compute_report` of the run in ``run_dir`` (``scenario.json``, ``events.jsonl``)."""
    scenario, records = read_run(run_dir)
    return compute_report(scenario, records)


def write_outputs(run_dir: str | Path) -> dict[str, Any]:
    """Write ``report.json`` and, when matplotlib is importable, ``timeline.png`` into
    ``run_dir``; return the report (``timeline`` names the picture, or is None)."""
    run_dir = Path(run_dir)
    scenario, records = read_run(run_dir)
    report = compute_report(scenario, records)
    report["timeline"] = None
    try:
        from .plot import plot_timeline

        plot_timeline(scenario, records, run_dir / "timeline.png")
        report["timeline"] = "timeline.png"
    except ImportError:
        pass
    (run_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def format_report(report: dict[str, Any]) -> str:
    """The report as text tables for a terminal (rich, no colour codes)."""
    import io

    from rich.console import Console
    from rich.table import Table

    buffer = io.StringIO()
    console = Console(file=buffer, width=110, color_system=None, force_terminal=False)
    summary = Table(title=f"lab run: {report.get('scenario')} ({report.get('mode')})", show_header=False)
    summary.add_column("field")
    summary.add_column("value", justify="right")
    for name in (
        "jobs_submitted", "jobs_completed", "jobs_failed", "jobs_dead", "jobs_cancelled", "jobs_lost",
        "jobs_abandoned", "duplicate_executions", "duplicates_explained", "duplicates_after_crash",
        "duplicates_unexplained", "futures_resolved_more_than_once", "makespan_s",
    ):
        summary.add_row(name, _fmt(report.get(name)))
    latency = report.get("latency_s") or {}
    summary.add_row("latency_s p50 / p99 / max", " / ".join(_fmt(latency.get(q)) for q in ("p50", "p99", "max")))
    recovery = report.get("recovery") or {}
    summary.add_row("recovery C4 max_s (re-leased)", _fmt(recovery.get("c4_max_s")))
    summary.add_row("recovery C5 max_s (unreachable)", _fmt(recovery.get("c5_max_s")))
    console.print(summary)

    workers = Table(title="workers")
    for col in ("worker", "leased", "started", "finished", "cut_off"):
        workers.add_column(col, justify="left" if col == "worker" else "right")
    for name, row in (report.get("workers") or {}).items():
        workers.add_row(name, *(_fmt(row[c]) for c in ("leased", "started", "finished", "cut_off")))
    console.print(workers)

    cols = ("submitted", "completed", "failed", "dead", "cancelled", "lost", "abandoned", "makespan_s")
    producers = Table(title="producers")
    producers.add_column("producer")
    for col in cols:
        producers.add_column(col, justify="right")
    for name, row in (report.get("producers") or {}).items():
        producers.add_row(name, *(_fmt(row[c]) for c in cols))
    console.print(producers)

    for entry in recovery.get("c4") or []:
        jobs = ", ".join(f"{j['job']} {_fmt(j['re_leased_after_s'])} s" for j in entry["jobs"]) or "no job held"
        console.print(f"C4 {entry['action']} {entry['worker']} at {_fmt(entry['t_s'])} s: {jobs}")
    for entry in recovery.get("c5") or []:
        seen = ", ".join(f"{w} {_fmt(v)} s" for w, v in entry["workers"].items()) or "no worker up"
        console.print(f"C5 {entry['action']} {entry['producer']} at {_fmt(entry['t_s'])} s: {seen}")
    return buffer.getvalue()

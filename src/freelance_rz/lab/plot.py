"""The timeline picture of a lab run (matplotlib, Agg backend, imported lazily).

One lane per worker, one bar per execution of the lab task (``started`` → ``finished``),
coloured by the producer that submitted the job. An execution that never finished ends at
the moment its worker was cut off (sigkill, restart, link down) or at the end of the run,
and is drawn hatched with a red edge and a red cross at its end; a black dot marks the start
of an execution of a key that had already run (a duplicate execution). Timeline actions are vertical lines labelled with the
action and its target. Time is in seconds from the run's time zero (the runner's ``go``
record; peers start a little before it).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .tables import Execution, Timeline, compute_timeline

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["plot_timeline"]

ACTION_COLOURS = {
    "start": "tab:green",
    "sigterm": "tab:orange",
    "sigkill": "tab:red",
    "restart": "tab:purple",
    "link_down": "black",
    "link_up": "tab:gray",
}


def _rows(executions: list[Execution]) -> dict[str, list[tuple[int, Execution]]]:
    """Per worker, each execution with its row: the first row free at its start (interval
    packing), so a worker's concurrent executions (several slots) do not overlap."""
    out: dict[str, list[tuple[int, Execution]]] = defaultdict(list)
    ends: dict[str, list[float]] = defaultdict(list)  # per worker, per row: when it frees up
    for run in sorted(executions, key=lambda r: r.start):
        end = run.until(math.inf)
        rows = ends[run.worker]
        row = next((i for i, free_at in enumerate(rows) if free_at <= run.start), len(rows))
        if row == len(rows):
            rows.append(end)
        else:
            rows[row] = end
        out[run.worker].append((row, run))
    return out


def _grouped_actions(actions: list[dict[str, Any]], t0: float) -> list[tuple[float, str, str]]:
    """(seconds from t0, action, targets) with the same action at the same moment (within
    10 ms) merged into one marker, e.g. ``start p1 p2 w1``; actions before time zero (the
    peers started during setup) are one marker at 0."""
    grouped: list[tuple[float, str, str]] = []
    for action in actions:
        x, name, target = action["t"] - t0, str(action.get("action")), str(action.get("target"))
        if x < 0:  # peers started during setup, before time zero: one marker at 0
            x, name = 0.0, f"{name} (setup)"
        if grouped and grouped[-1][1] == name and abs(grouped[-1][0] - x) < 0.01:
            grouped[-1] = (grouped[-1][0], name, f"{grouped[-1][2]} {target}")
        else:
            grouped.append((x, name, target))
    return grouped


@dataclass
class _Layout:
    """Where each execution goes in the picture, x in seconds from time zero, y in lanes."""

    # broken_barh draws many bars of one style in one y band: (producer, cut, band) -> (x, width)
    bars: dict[tuple[str, bool, tuple[float, float]], list[tuple[float, float]]]
    cuts: list[tuple[float, float]]  # (x, y) of the end of each cut-off execution
    reruns: list[tuple[float, float]]  # (x, y) of the start of each execution of a key run before


def _layout(line: Timeline, t_end: float) -> _Layout:
    """The bars of ``line``'s executions: a lane per worker, split into thin rows when a worker
    runs several at once; an execution that never finished ends at ``Execution.until(t_end)``."""
    lane = {worker: i for i, worker in enumerate(line.workers)}
    out = _Layout(bars=defaultdict(list), cuts=[], reruns=[])
    seen: set[str] = set()
    rerun_ids: set[int] = set()
    for run in sorted(line.executions, key=lambda r: r.start):
        if run.key in seen:
            rerun_ids.add(id(run))
        seen.add(run.key)
    for worker, runs in _rows(line.executions).items():
        size = 0.8 / (max(row for row, _ in runs) + 1)  # several slots: a thin row per concurrent run
        for row, run in runs:
            cut = run.end is None
            end = run.until(t_end)
            width = max(end - run.start, 0.002)  # a visible sliver for very short jobs
            band = (lane[worker] - 0.4 + row * size, size * 0.9)
            out.bars[(run.producer or "", cut, band)].append((run.start - line.t0, width))
            if cut:  # a cross where it was cut off: visible even when the bar is a sliver
                out.cuts.append((run.start - line.t0 + width, band[0] + band[1] / 2))
            if id(run) in rerun_ids:
                out.reruns.append((run.start - line.t0, band[0] + band[1] / 2))
    return out


def _draw_executions(ax: Axes, layout: _Layout, colour: dict[str, Any]) -> None:
    """The bars, coloured by producer (cut-off ones hatched, red-edged), their crosses and dots."""
    for (producer, cut, band), xs in layout.bars.items():
        ax.broken_barh(
            xs, band, facecolors=colour.get(producer, "lightgray"),
            edgecolors="red" if cut else "white", linewidths=1.0 if cut else 0.3,
            hatch="///" if cut else None,
        )
    if layout.cuts:
        ax.plot([x for x, _ in layout.cuts], [y for _, y in layout.cuts], "x", color="red", markersize=7, mew=2)
    if layout.reruns:
        ax.plot([x for x, _ in layout.reruns], [y for _, y in layout.reruns], "o", color="black", markersize=4)


def _draw_actions(ax: Axes, markers: list[tuple[float, str, str]], top: float, label_rows: int) -> None:
    """A dashed vertical line per (grouped) action, labelled above the lanes in ``label_rows``
    staggered rows from ``top`` up."""
    for i, (x, name, targets) in enumerate(markers):
        col = ACTION_COLOURS.get(name, "tab:brown")
        ax.axvline(x, color=col, linestyle="--", linewidth=1)
        ax.text(x, top + 0.1 + 0.25 * (i % label_rows), f" {name} {targets}", fontsize=7, color=col,
                ha="left", va="bottom")


def _legend(ax: Axes, colour: dict[str, Any], producers: list[str]) -> None:
    """One patch per producer, then what a hatched bar, a cross and a dot mean."""
    from matplotlib.artist import Artist
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles: list[Artist] = [Patch(facecolor=colour[p], label=p) for p in producers]
    handles.append(Patch(facecolor="white", edgecolor="red", hatch="///", label="cut off (never finished)"))
    handles.append(Line2D([], [], marker="x", color="red", linestyle="none", mew=2, label="where it was cut off"))
    handles.append(Line2D([], [], marker="o", color="black", linestyle="none", markersize=4,
                          label="start of a re-run (duplicate execution)"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)


def plot_timeline(scenario: dict[str, Any], records: list[dict[str, Any]], path: str | Path) -> None:
    """Draw the run's timeline into the PNG file ``path`` (overwritten).

    Args:
        scenario: the run's scenario as a dict (as in ``scenario.json``; its ``name`` titles
            the picture).
        records: the run's event records, in any order (wall-clock ``t`` in seconds).
        path: where the PNG goes (its folder must exist).

    Raises:
        ImportError: matplotlib is not importable.
        OSError: ``path`` cannot be written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    line = compute_timeline(scenario, records)
    t0, t_end = line.t0, max(line.t_end, line.t0 + 0.1)
    palette = plt.get_cmap("tab10")
    colour = {p: palette(i % 10) for i, p in enumerate(line.producers)}

    markers = _grouped_actions(line.actions, t0)
    label_rows = min(8, max(3, len(markers) // 4))  # more actions: more rows of labels
    height = max(2.5, 0.6 * len(line.workers) + 0.9 + 0.18 * label_rows)
    fig, ax = plt.subplots(figsize=(12, height), dpi=100)
    _draw_executions(ax, _layout(line, t_end), colour)
    top = len(line.workers) - 0.5
    _draw_actions(ax, markers, top, label_rows)

    ax.set_yticks(range(len(line.workers)), line.workers)
    ax.set_ylim(-0.6, top + 0.3 + 0.25 * label_rows)
    ax.set_xlim(0, (t_end - t0) * 1.02)
    ax.set_xlabel("seconds from the run's time zero (go)")
    ax.set_ylabel("worker")
    ax.set_title(f"{scenario.get('name', 'lab run')}: executions by worker, coloured by producer")
    _legend(ax, colour, line.producers)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)

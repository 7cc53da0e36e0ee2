"""``freelance-lab``: run scripted experiments with producers and workers joining and leaving.

    freelance-lab list                       the built-in scenarios
    freelance-lab show NAME                  a built-in scenario's TOML (a start for your own)
    freelance-lab run NAME_OR_FILE [--out DIR] [--loopback] [--seed N]
    freelance-lab beyond-lan [--out DIR] [--resolve-every-s S]   two subnets, a router, dnsmasq

``run`` prints the report (``freelance_rz.lab.report``) and writes ``report.json`` (and
``timeline.png`` with matplotlib) into the run directory. Exit codes: 0 done, 1 the run
ended but the report could not be made, 2 bad scenario or arguments, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from .scenario import ScenarioError, builtin_names, builtin_text, load


def lab_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="freelance-lab",
        description="Run scripted freelance_rz experiments: producers and workers on virtual "
        "hosts (network namespaces as root, else loopback), a timeline of faults, a report.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a built-in scenario or a TOML file")
    run.add_argument("scenario", metavar="NAME_OR_FILE", help="built-in name (see 'list') or path to a .toml")
    run.add_argument("--out", default="lab-runs", type=Path,
                     help="directory for run directories (default: %(default)s)")
    run.add_argument("--loopback", action="store_true",
                     help="all peers on 127.0.0.1, even as root (link events are then refused)")
    run.add_argument("--seed", type=int, default=None, help="seed for the scenario's [chaos] events")
    beyond = sub.add_parser(
        "beyond-lan", help="producers on one subnet, workers on another behind a router, a real DNS "
        "server (dnsmasq): DNS-SD, re-resolved names and an endpoints file vs mDNS (root)")
    beyond.add_argument("--out", default="lab-runs", type=Path,
                        help="directory for run directories (default: %(default)s)")
    beyond.add_argument("--resolve-every-s", type=float, default=2.0,
                        help="the workers' --resolve-every-s (default: %(default)s)")
    sub.add_parser("list", help="list the built-in scenarios")
    show = sub.add_parser("show", help="print a built-in scenario's TOML")
    show.add_argument("name")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``freelance-lab``; returns the exit code."""
    args = lab_parser().parse_args(argv)
    console = Console()
    try:
        if args.command == "list":
            for name in builtin_names():
                scenario = load(name)
                print(f"{name:8} {scenario.description}")
            return 0
        if args.command == "show":
            print(builtin_text(args.name), end="")
            return 0
        if args.command == "beyond-lan":
            return _beyond_lan(args, console)
        scenario = load(args.scenario, seed=args.seed)
    except ScenarioError as exc:
        print(f"freelance-lab: error: {exc}", file=sys.stderr)
        return 2

    from .netns import NetnsError
    from .runner import LabError, run_scenario

    try:
        result = run_scenario(scenario, args.out, loopback=args.loopback, console=console)
    except (LabError, NetnsError) as exc:
        print(f"freelance-lab: error: {exc}", file=sys.stderr)
        return 2
    try:  # every process and namespace is gone by now; a Ctrl-C from here on only cuts the report
        console.print(f"run ended ({result.ended}) after {result.elapsed_s:.1f} s; records in "
                      f"{result.run_dir}", soft_wrap=True, markup=False, highlight=False)  # one line
        if result.leftover_namespaces:
            console.print(f"[red]could not delete namespaces: {', '.join(result.leftover_namespaces)}[/]")
        from . import report  # slow to import on a loaded machine: a third Ctrl-C landed here

        built = report.write_outputs(result.run_dir)
    except KeyboardInterrupt:  # e.g. Ctrl-C pressed again while matplotlib loads
        console.print(f"interrupted while writing the report; the records are in {result.run_dir}")
        return 130
    print(report.format_report(built))
    print(f"report: {result.run_dir / 'report.json'}")
    if (result.run_dir / "timeline.png").exists():
        print(f"timeline: {result.run_dir / 'timeline.png'}")
    return 130 if result.ended == "interrupted" else 0


def _beyond_lan(args: argparse.Namespace, console: Console) -> int:
    """``freelance-lab beyond-lan``: run :mod:`freelance_rz.lab.beyond`, print its figures."""
    from . import dnsmasq, netns
    from .beyond import BeyondError, BeyondRun, format_report

    for ok, reason in (netns.available(f"rzlab-{os.getpid()}-check"), dnsmasq.available()):
        if not ok:
            print(f"freelance-lab: error: beyond-lan cannot run here: {reason}", file=sys.stderr)
            return 2
    try:
        report = BeyondRun(args.out, args.resolve_every_s, show=console.print).run()
    except (BeyondError, netns.NetnsError, RuntimeError) as exc:
        print(f"freelance-lab: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(format_report(report))
    if report.leftover_namespaces:
        console.print(f"[red]could not delete namespaces: {', '.join(report.leftover_namespaces)}[/]")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""freelance-status's small things (issue 12 #8): ``--discover`` that finds no producer exits
1; a producer that did not answer says why in a column of its own (not in ``pending``) and is
not counted as found: the title reads e.g. "freelance_rz producers: 1 answered, 1 unreachable".
Real producers and real mDNS on loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from conftest import GROUP


def run_status(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "import sys; from freelance_rz.cli import status_main; "
         "sys.exit(status_main())", *args],
        capture_output=True, text=True, timeout=60,
    )


def closed_endpoint() -> str:
    with socket.socket() as probe:  # a port nothing listens on (in this test's namespace)
        probe.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.split("│")[1:-1]]


def test_discover_finding_no_producer_exits_1():
    group = f"nothere-{os.getpid()}"
    for extra in ([], ["--json"]):
        shown = run_status("--discover", "--group", group, "--interface", "127.0.0.1",
                           "--wait", "1", *extra)
        assert shown.returncode == 1, (extra, shown.stdout, shown.stderr)
        assert f"no producer of group {group!r} found within 1 s" in shown.stderr
    assert json.loads(shown.stdout) == []


def test_an_unreachable_producer_has_its_own_column_and_is_not_counted(make_producer):
    producer = make_producer()
    dead = closed_endpoint()
    shown = run_status("--connect", producer.endpoint, dead)
    assert shown.returncode == 1
    lines = shown.stdout.splitlines()
    assert "freelance_rz producers: 1 answered, 1 unreachable" in shown.stdout, shown.stdout
    header = cells(next(line for line in lines if "┃" in line).replace("┃", "│"))
    assert header[-1] == "problem" and header[3] == "pending"
    row = cells(next(line for line in lines if dead in line))
    assert row[header.index("pending")] == "" and all(c == "" for c in row[3:11]), row
    assert row[-1].startswith("could not connect")
    good = cells(next(line for line in lines if producer.producer_id in line))
    assert good[header.index("pending")] == "0" and good[-1] == ""


def test_no_problem_column_when_every_producer_answered(make_producer):
    producer = make_producer()
    shown = run_status("--discover", "--group", GROUP, "--interface", "127.0.0.1", "--wait", "3")
    assert shown.returncode == 0, shown.stderr
    assert "freelance_rz producers: 1 answered" in shown.stdout, shown.stdout
    assert "unreachable" not in shown.stdout and "problem" not in shown.stdout
    assert producer.producer_id in shown.stdout


def test_bad_arguments_say_what_is_wrong(tmp_path):
    """--wait and --interval out of range are usage errors naming the flag (one said "sleep
    length must be non-negative", the other failed after one table); a --connect port out of
    range says so, as the worker does (it said "could not connect"); a missing --connect-file
    is named (it only said no producer was found)."""
    live = closed_endpoint()
    for args, message in [
        (["--discover", "--wait", "-3"], "argument --wait: must be a number of seconds >= 0, got -3.0"),
        (["--connect", live, "--interval", "-1", "--watch"],
         "argument --interval: must be a number of seconds > 0, got -1.0"),
        (["--connect", live, "--interval", "soon"], "argument --interval: must be a number of seconds, got 'soon'"),
        (["--connect", "tcp://127.0.0.1:99999"], "--connect 'tcp://127.0.0.1:99999': port 99999 is not in 1..65535"),
    ]:
        shown = run_status(*args)
        assert shown.returncode == 2, (args, shown)
        assert f"freelance-status: error: {message}\n" in shown.stderr, (args, shown.stderr)
    missing = tmp_path / "nonexistent"
    shown = run_status("--connect-file", str(missing))
    assert shown.returncode == 1 and "--connect-file: no such file" in shown.stdout, shown
    shown = run_status("--connect-file", str(missing), "--json")
    assert shown.returncode == 1, shown
    assert json.loads(shown.stdout) == [{"endpoint": str(missing), "error": "--connect-file: no such file"}]
    check = run_status("--check", "--connect-file", str(missing))
    assert check.returncode == 1 and f"{missing}: --connect-file: no such file" in check.stdout, check

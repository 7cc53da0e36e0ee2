"""Issue 11 #7 (freelance-status rendering): what a producer says in its STATUS_REPLY never
controls the terminal and never crashes ``freelance-status``.

Every peer string shown (producer id, group, endpoint, worker ids, progress messages, error
texts) is cleaned of control characters and shown as plain text (``rich.text.Text``, never
markup); the info map is type-checked once (:func:`freelance_rz.status.read_info`) and a
malformed reply becomes a row "malformed reply: ..." while the other producers still show;
``--json`` prints what was received, which JSON escapes.

Before the fix: escape sequences (clear screen, set title) reached stdout, ``[/bold]`` in a
progress message crashed it with ``MarkupError``, and ``progress`` as a map, counts as strings
or a progress entry without ``done`` crashed it with ``AttributeError``/``KeyError``/``TypeError``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from fake_peers import FakeProducer, answering

from freelance_rz.cli import status_main

# control characters other than newline: what must never reach a pipe (C0, DEL, C1), plus
# the bidi overrides and zero-width marks that clean() replaces too
CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")
ESC = "\x1b"
HOSTILE = {  # valid types, hostile content
    "producer_id": f"{ESC}]0;pwned{chr(7)}{ESC}[2J[bold]evil[/bold]",
    "group": f"{ESC}[31mred\u202eevil",
    "pending": 1, "leased": 1, "done": 5, "failed": 0, "dead": 0, "workers": 1,
    "finished_last_min": 5, "uptime_s": 12.5,
    "worker_list": [{"id": f"w{ESC}[1A", "last_seen_s": 0.1, "running": 1}],
    "progress": [
        {"job_id": 7, "worker": f"w1{ESC}[1A{ESC}[2K", "done": 1, "total": 2,
         "message": f"[/bold] [red]closed[/red] {ESC}[2J{ESC}]0;title{chr(7)}"},
        {"job_id": 8, "worker": "w2", "done": 3, "total": None, "message": "A" * 10_000 + ESC + "[2J"},
    ],
    "note": "B" * 10_000,
}
GOOD = {"producer_id": "good-producer", "group": "g", "pending": 3, "leased": 0, "done": 9,
        "failed": 0, "dead": 0, "workers": 0, "finished_last_min": 9, "uptime_s": 3.0,
        "progress": []}
MALFORMED = {  # each crashed freelance-status before the fix; what the row must say
    "progress a map": ({**GOOD, "progress": {"job": 1}}, "progress must be a list"),
    "progress of strings": ({**GOOD, "progress": ["x"]}, "progress[0] must be a map"),
    "progress without done": ({**GOOD, "progress": [{"job_id": 1, "worker": "w", "message": "m"}]},
                              "progress[0].done must be a finite number"),
    "progress without job_id": ({**GOOD, "progress": [{"worker": "w", "done": 1}]},
                                "progress[0].job_id is missing"),
    "done a string": ({**GOOD, "progress": [{"job_id": 1, "worker": "w", "done": "1"}]},
                      "progress[0].done must be a finite number"),
    "message a map": ({**GOOD, "progress": [{"job_id": 1, "worker": "w", "done": 1, "message": {}}]},
                      "progress[0].message must be a string"),
    "count a string": ({**GOOD, "pending": "12"}, "pending must be an int >= 0"),
    "count a map": ({**GOOD, "done": {"a": 1}}, "done must be an int >= 0"),
    "count negative": ({**GOOD, "dead": -1}, "dead must be an int >= 0"),
    "uptime a string": ({**GOOD, "uptime_s": "long"}, "uptime_s must be a finite number"),
    "producer_id missing": ({k: v for k, v in GOOD.items() if k != "producer_id"},
                            "producer_id must be a string"),
    "producer_id bytes": ({**GOOD, "producer_id": b"\x1b[2J"}, "producer_id must be a string"),
    "group a list": ({**GOOD, "group": ["g"]}, "group must be a string"),
}


@pytest.fixture
def fake():
    """Start fake producers: ``fake(info)``; all closed at teardown."""
    made: list[FakeProducer] = []

    def start(info) -> FakeProducer:
        producer = FakeProducer(answering(info))
        made.append(producer)
        return producer

    yield start
    for producer in made:
        producer.close()


def run_status(*args: str) -> subprocess.CompletedProcess[str]:
    """The real ``freelance-status`` in a pipe (as a user would pipe it into less or a file)."""
    env = {k: v for k, v in os.environ.items() if k not in {"FORCE_COLOR", "TTY_COMPATIBLE", "COLUMNS"}}
    return subprocess.run(
        [sys.executable, "-c", "import sys; from freelance_rz.cli import status_main; "
         "sys.exit(status_main())", *args],
        capture_output=True, text=True, timeout=60, env=env, errors="replace",
    )


def compact(text: str) -> str:
    """``text`` without white space and table borders: a cell's text wrapped over lines
    reads as one string again (the other cells of a problem row are empty)."""
    return re.sub(r"[\s│┃]+", "", text)


def assert_clean(text: str) -> None:
    found = sorted(set(CONTROL.findall(text)))
    assert not found, f"control characters reached the output: {found!r}"
    assert "Traceback" not in text


def test_hostile_strings_are_shown_as_plain_text(fake):
    hostile, good = fake(HOSTILE), fake(GOOD)
    shown = run_status("--connect", hostile.endpoint, good.endpoint)
    assert_clean(shown.stdout)
    assert_clean(shown.stderr)
    assert shown.returncode == 0, shown.stderr
    assert "good-producer" in shown.stdout
    assert "[bold]evil[/bold]" in shown.stdout  # markup shown as the text it is
    assert "[/bold] [red]closed[/red]" in shown.stdout
    assert "running jobs with progress (2)" in shown.stdout
    assert "A" * 500 not in shown.stdout  # 10 KB strings are cut
    assert len(shown.stdout) < 20_000


def test_a_malformed_reply_is_a_row_and_the_others_still_show(fake):
    bad = [fake(info) for info, _ in MALFORMED.values()]
    good = fake(GOOD)
    shown = run_status("--connect", good.endpoint, *(b.endpoint for b in bad))
    assert_clean(shown.stdout)
    assert_clean(shown.stderr)
    assert shown.returncode == 1, (shown.stdout, shown.stderr)  # some producer gave no status
    assert "good-producer" in shown.stdout
    assert shown.stdout.count("malformed reply: ") == len(MALFORMED), shown.stdout


@pytest.mark.parametrize("case", list(MALFORMED))
def test_each_malformed_reply_says_what_is_wrong(fake, capsys, case):
    info, expected = MALFORMED[case]
    bad, good = fake(info), fake(HOSTILE)
    code = status_main(["--connect", bad.endpoint, good.endpoint])
    out, err = capsys.readouterr()
    assert code == 1
    assert_clean(out)
    assert f"malformed reply: {expected}" in out or compact(f"malformed reply: {expected}") in compact(out), out
    assert "running jobs with progress (2)" in out  # the good one's jobs still show


def test_hostile_strings_in_json_are_escaped_and_kept(fake):
    hostile = fake(HOSTILE)
    shown = run_status("--connect", hostile.endpoint, "--json")
    assert shown.returncode == 0, shown.stderr
    assert ESC not in shown.stdout and "\x07" not in shown.stdout
    [row] = json.loads(shown.stdout)
    assert row["producer_id"] == HOSTILE["producer_id"]  # printed as received
    assert row["progress"][1]["message"] == HOSTILE["progress"][1]["message"]


def test_json_of_values_json_has_no_form_for(fake, capsys):
    weird = fake({**GOOD, b"bytes-key": b"\x1b[2J\xff", "nested": {b"k": [b"v", 1.5]}})
    malformed = fake({**GOOD, "progress": {"job": 1}})
    code = status_main(["--connect", weird.endpoint, malformed.endpoint, "--json"])
    out, _ = capsys.readouterr()
    assert code == 1  # --json prints what was received; the exit code still says one was malformed
    rows = json.loads(out)
    assert rows[0]["bytes-key"] == "\x1b[2J\ufffd" and rows[0]["nested"] == {"k": ["v", 1.5]}
    assert rows[1]["progress"] == {"job": 1}
    assert ESC not in out

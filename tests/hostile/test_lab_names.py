"""Issue 11 #10 (lab names): the lab runs as root, and scenario names, host names and peer
names become paths (the run directory under ``--out``, ``NAME.log``, ``NAME.sqlite``) and
network namespace names (``/run/netns/PREFIX-HOST``). Every one is matched whole
(``re.fullmatch``, so no trailing newline), ``.``, ``..``, absolute paths and names holding a
separator are refused with an error naming the file and the field, and the run directory is
checked to be directly inside ``--out`` once resolved.

Before the fix a scenario ``name`` of ``/abs/path`` or ``../..`` put the run directory outside
``--out``, an implicit host name (a peer's ``host`` without ``[[hosts]]``) was not checked at
all (``../../x`` became a namespace path), and ``re.match(...$)`` accepted ``"w1\\n"``.
These tests need no root: nothing here makes a namespace or starts a peer.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from freelance_rz.lab import netns
from freelance_rz.lab.cli import main as lab_main
from freelance_rz.lab.runner import LabError, LabRun
from freelance_rz.lab.scenario import ScenarioError, load, loads

GOOD = """
name = "t"
duration_s = 20
hosts = ["h1", "h2"]
[[producers]]
name = "p1"
host = "h1"
jobs = [{ count = 3 }]
[[workers]]
name = "w1"
host = "h2"
"""

# the same scenario, each peer on a host of its own named by its `host` field (no [[hosts]])
IMPLICIT = """
name = "t"
[[producers]]
name = "p1"
host = "hp"
jobs = [{ count = 3 }]
[[workers]]
name = "w1"
host = "hw"
"""

ESCAPING_NAMES = ["/abs/path", "../..", "..", ".", "a/b", "a\\\\b", "runs/../../x", ".hidden",
                  "t\\n", "t\\u0000", " t", ""]


@pytest.mark.parametrize("bad", ESCAPING_NAMES)
def test_a_scenario_name_that_is_not_one_plain_component_is_refused(bad):
    text = GOOD.replace('name = "t"', f'name = "{bad}"', 1)
    with pytest.raises(ScenarioError) as caught:
        loads(text, origin="evil.toml")
    assert str(caught.value).startswith("evil.toml: name: "), caught.value


def test_a_scenario_named_after_a_bad_file_name_is_refused(tmp_path):
    path = tmp_path / "my run.toml"  # the name comes from the file's stem: "my run"
    path.write_text(GOOD.replace('name = "t"\n', ""))
    with pytest.raises(ScenarioError, match=r"^my run\.toml: name \(from the file name; add a name"):
        load(path)


@pytest.mark.parametrize("field, bad", [
    ("workers", "w1\\n"), ("workers", "w1/x"), ("producers", "p1\\n"), ("producers", ".."),
])
def test_peer_names_are_matched_whole(field, bad):
    old = 'name = "w1"' if field == "workers" else 'name = "p1"'
    with pytest.raises(ScenarioError, match=rf"^evil\.toml: {field}\[0\]\.name: a letter"):
        loads(GOOD.replace(old, f'name = "{bad}"'), origin="evil.toml")


def test_declared_host_names_are_matched_whole():
    text = GOOD.replace('hosts = ["h1", "h2"]', 'hosts = ["h1", "h2\\n"]')
    with pytest.raises(ScenarioError, match=r"^evil\.toml: hosts\[1\]\.name: a letter"):
        loads(text, origin="evil.toml")


@pytest.mark.parametrize("bad", ["../../etc/x", "hw\\n", "/run/netns/x", "a b", "x" * 17])
def test_implicit_host_names_are_checked_too(bad):
    assert loads(IMPLICIT).hosts == ("hp", "hw")
    with pytest.raises(ScenarioError, match=r"^evil\.toml: workers\[0\]\.host: a letter"):
        loads(IMPLICIT.replace('host = "hw"', f'host = "{bad}"'), origin="evil.toml")


def test_good_names_still_load():
    scenario = loads(GOOD.replace('name = "t"', 'name = "s4.retry-2_b"'))
    assert scenario.name == "s4.retry-2_b" and scenario.hosts == ("h1", "h2")


@pytest.mark.parametrize("bad", ["../escape", "ABSOLUTE", "..", "t\n"])
def test_a_run_of_a_hand_made_scenario_with_a_bad_name_is_refused(tmp_path, bad):
    """A Scenario built in code, not parsed, cannot escape --out either."""
    if bad == "ABSOLUTE":  # inside tmp_path, so that a failing run leaves nothing elsewhere
        bad = str(tmp_path / "escape")
    scenario = dataclasses.replace(loads(GOOD), name=bad)
    out = tmp_path / "out" / "runs"
    with pytest.raises(LabError, match="name"):
        LabRun(scenario, out, loopback=True)
    assert not (tmp_path / "out").exists()  # nothing made, inside --out or outside
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_hand_made_scenario_with_a_bad_host_is_refused(tmp_path):
    good = loads(GOOD)
    worker = dataclasses.replace(good.workers[0], host="../../x")
    scenario = dataclasses.replace(good, workers=(worker,), hosts=("h1", "../../x"))
    with pytest.raises(LabError, match=r"host"):
        LabRun(scenario, tmp_path / "runs", loopback=True)
    assert not (tmp_path / "runs").exists()


def test_the_run_directory_is_directly_inside_out_even_through_a_symlink(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    run = LabRun(loads(GOOD), tmp_path / "link" / "runs", loopback=True)  # makes only the dir
    assert run.run_dir.is_absolute() and run.run_dir.is_dir()
    assert run.run_dir.parent == (real / "runs").resolve()
    assert run.run_dir.name.startswith("t-")


def test_the_cli_refuses_an_escaping_name_naming_the_file_and_field(tmp_path, capsys):
    scenario = tmp_path / "evil.toml"
    scenario.write_text(GOOD.replace('name = "t"', 'name = "../../escaped"', 1))
    out = tmp_path / "a" / "b"
    code = lab_main(["run", str(scenario), "--out", str(out), "--loopback"])
    err = capsys.readouterr().err
    assert code == 2
    assert "evil.toml: name: must be a plain name, not a path" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.toml"]


@pytest.mark.parametrize("hosts", [["h1\n"], ["../x"], ["h1", "a/b"], [""]])
def test_namespace_names_are_checked_where_they_are_made(hosts):
    with pytest.raises(ValueError, match="namespace host"):
        netns.Network("rzlab-1-1", hosts)
    with pytest.raises(ValueError, match="namespace prefix"):
        netns.Network("rzlab/../x", ["h1"])
    assert netns.Network("rzlab-1-1", ["h1", "h_2"]).ns("h1") == "rzlab-1-1-h1"


def test_path_of_a_run_never_leaves_out(tmp_path):
    """The check in _make_run_dir itself (the last line of defence)."""
    run = LabRun(loads(GOOD), tmp_path / "runs", loopback=True)
    object.__setattr__(run, "scenario", dataclasses.replace(run.scenario, name="../x"))
    with pytest.raises(LabError, match="would not be inside --out"):
        run._make_run_dir()
    assert [p.name for p in tmp_path.iterdir()] == ["runs"]
    assert Path(run.run_dir).parent == (tmp_path / "runs").resolve()

"""The examples run as a user runs them, and the API reference builds with a docstring for
every public name.

Each example script runs as a subprocess with ``--spawn-workers 2`` (so it starts and stops
its own ``freelance-worker`` processes, in a group of its own) and mDNS pinned to loopback by
``FREELANCE_RZ_INTERFACES``, which conftest.py sets and the subprocess inherits. Its output
goes to files, not pipes, so a stray worker holding a pipe cannot hang the test. Afterwards
every worker the script said it started must be gone; one that is not is killed by its
process group and fails the test.
"""

from __future__ import annotations

import hashlib
import html
import importlib.util
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import GROUP, TESTS_DIR

REPO = TESTS_DIR.parent
EXAMPLES = REPO / "examples"
WORKER_DIR = EXAMPLES / "worker"
RUN_TIMEOUT_S = 90.0  # an example takes about 4 s; this is for a very slow machine

pytestmark = pytest.mark.timeout(150)


class ExampleRun:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr

    def __str__(self) -> str:
        return f"exit code {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def _alive_group_leader(pid: int) -> bool:
    """True when ``pid`` still leads its own process group (a worker we started)."""
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def run_example(script: Path, *args: str, tmp_path: Path) -> ExampleRun:
    """Run ``python SCRIPT ARGS`` from the script's directory, as a user would; clean up."""
    out_path, err_path = tmp_path / f"{script.stem}.out", tmp_path / f"{script.stem}.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, script.name, *args], cwd=script.parent, stdout=out, stderr=err,
            stdin=subprocess.DEVNULL, start_new_session=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
    try:
        try:
            proc.wait(RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _killpg(proc.pid, signal.SIGTERM)  # the script unwinds and stops its workers
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                _killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    finally:
        if proc.poll() is None:  # the test itself was interrupted
            _killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        stdout = out_path.read_text(errors="replace")
        stderr = err_path.read_text(errors="replace")
        # every worker the script started ("started worker w1 (pid 123, ...") must be gone
        leaked = []
        for pid in map(int, re.findall(r"started worker \S+ \(pid (\d+)", stdout)):
            if _alive_group_leader(pid):
                leaked.append(pid)
                _killpg(pid, signal.SIGKILL)
    run = ExampleRun(proc.returncode, stdout, stderr)
    assert not leaked, f"workers left running: {leaked}\n{run}"
    return run


@contextmanager
def two_workers(args: list[str], cwd: Path, tmp_path: Path) -> Iterator[None]:
    """Two ``freelance-worker ARGS`` started in ``cwd`` as a user would (logs in tmp_path).
    Leaving the block normally stops them with Ctrl-C (SIGINT), as the docs say, which must be
    a graceful stop (exit code 0); whatever still runs at the end is SIGKILLed."""
    workers: list[subprocess.Popen[bytes]] = []
    try:
        for n in (1, 2):
            with open(tmp_path / f"w{n}.log", "wb") as log:
                workers.append(subprocess.Popen(
                    [str(Path(sys.executable).parent / "freelance-worker"), *args],
                    cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, start_new_session=True,
                ))
        yield
        for worker in workers:
            _killpg(worker.pid, signal.SIGINT)
        for worker in workers:
            assert worker.wait(15) == 0
    finally:
        for worker in workers:
            if worker.poll() is None:
                _killpg(worker.pid, signal.SIGKILL)
                worker.wait()


def test_service_app(tmp_path):
    run = run_example(EXAMPLES / "service" / "app.py", "--spawn-workers", "2", tmp_path=tmp_path)
    assert run.returncode == 0, run
    assert run.stdout.count("started worker") == 2, run
    sha = {
        name: hashlib.sha256(text.encode()).hexdigest()[:12]
        for name, text in [
            ("haiku", "An old silent pond\nA frog jumps into the pond\nSplash! Silence again.\n"),
            ("todo", "buy milk\nbuy bread\nfix the bike\ncall the bank about the bike\n"),
        ]
    }
    assert (
        f"haiku.txt: 3 line(s), 13 words (top: pond x2, an x1), sha256 {sha['haiku']}"
        in run.stdout
    ), run
    assert f"todo.txt: 4 line(s), 13 words (top: the x3, buy x2), sha256 {sha['todo']}" in run.stdout
    assert "motto.txt: 1 line(s), 11 words (top: pull x3, do x1)" in run.stdout
    assert "batch: 3 lines, 14 words" in run.stdout
    assert "status: 9 jobs done, 0 failed" in run.stdout
    assert "did not stop" not in run.stdout  # the workers stopped on SIGTERM


def test_async_service_app(tmp_path):
    run = run_example(
        EXAMPLES / "service" / "async_app.py", "--spawn-workers", "2", tmp_path=tmp_path
    )
    assert run.returncode == 0, run
    answers = dict(re.findall(r"^(\{.*\}) -> (\{.*\})$", run.stdout, re.M))
    assert len(answers) == 7, run
    assert answers['{"op": "count", "text": "to be or not to be"}'] == (
        '{"status": 200, "words": 6, "top": [["to", 2], ["be", 2], ["or", 1]]}'
    )
    assert hashlib.sha256(b"hello").hexdigest() in answers['{"op": "checksum", "text": "hello"}']
    assert answers['{"op": "parse", "line": "Ada, 36"}'] == (
        '{"status": 200, "record": {"name": "Ada", "age": 36}}'
    )
    assert answers['{"op": "parse", "line": "Bob, thirty"}'] == (
        '{"status": 400, "error": "ValueError: age must be a whole number, got \'thirty\'"}'
    )
    assert answers['{"op": "sum", "n": 3}'] == '{"status": 200, "sum": 6}'
    assert answers['{"op": "sum", "n": 100}'].startswith('{"status": 504')
    assert answers['{"op": "reverse", "text": "abc"}'].startswith('{"status": 404')
    assert "did not stop" not in run.stdout


def test_client_tour(tmp_path):
    run = run_example(EXAMPLES / "client" / "client.py", "--spawn-workers", "2", tmp_path=tmp_path)
    assert run.returncode == 0, run
    expected = [
        f"sha256(b'hello world') = {hashlib.sha256(b'hello world').hexdigest()[:16]}...",
        "'Linus': ValueError: expected 'name,age', got 1 field(s) in 'Linus'",
        "'Ken, forty': ValueError: age must be a whole number, got 'forty'",
        "parsed 3: Ada, Grace, Margaret; failed 2",
        "remote traceback ends with: ValueError: ",
        "slow_sum(100) was stopped: the job ran past its time limit of 0.5 s",
        "cancelled: True",
        "done 4, failed 3, cancelled 1, pending 0;",
        "all steps as expected",
    ]
    for line in expected:
        assert line in run.stdout, f"{line!r} missing\n{run}"
    progress = re.search(r"running: (\d+) of 100 \(added \1\)", run.stdout)
    assert progress and 5 <= int(progress[1]) < 100, run
    assert "did not stop" not in run.stdout


def test_workers_as_the_worker_readme_says_then_an_app_without_spawn(tmp_path):
    """examples/worker/README.md's command (with this run's group instead of 'examples'),
    then examples/service/app.py next to those workers."""
    group = f"{GROUP}-readme"
    args = ["--discover", "--tasks", "tasks", "--group", group, "--interface", "127.0.0.1"]
    with two_workers(args, WORKER_DIR, tmp_path):
        run = run_example(EXAMPLES / "service" / "app.py", "--group", group, tmp_path=tmp_path)
        assert run.returncode == 0, run
        assert f"using your workers of group {group!r}" in run.stdout
        assert "batch: 3 lines, 14 words" in run.stdout
        assert "status: 9 jobs done, 0 failed" in run.stdout


def test_task_module_runs_locally():
    spec = importlib.util.spec_from_file_location("example_tasks", WORKER_DIR / "tasks.py")
    assert spec and spec.loader
    tasks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tasks)
    assert tasks.word_count("a b a\nc", top=1) == {"lines": 2, "words": 4, "top": [["a", 2]]}
    assert tasks.checksum(b"x", "md5") == hashlib.md5(b"x").hexdigest()
    assert tasks.parse_record(" Ada , 36") == {"name": "Ada", "age": 36}
    with pytest.raises(ValueError, match="whole number"):
        tasks.parse_record("Ada, old")
    assert tasks.slow_sum(4, 0) == 10  # report_progress does nothing outside a worker


# --- the API reference ---------------------------------------------------------------------


def _section(page: str, name: str) -> str:
    """The HTML of pdoc's ``<section id="NAME">`` for a module-level name."""
    start = page.find(f'<section id="{name}">')
    assert start >= 0, f"{name} is not in the generated API reference"
    end = page.find("<section id=", start + 1)
    return page[start: end if end >= 0 else len(page)]


def _own_docstring(section: str, name: str) -> str:
    """Text of the name's own docstring (a class's, not one of its members')."""
    member = section.find(f'id="{name}.')  # a class's members come after its docstring
    head = section if member < 0 else section[:member]
    match = re.search(r'<div class="docstring">(.*?)</div>', head, re.S)
    if match is None:
        return ""
    return html.unescape(re.sub(r"<[^>]+>", "", match[1])).strip()


@pytest.fixture(scope="module")
def api_reference(tmp_path_factory) -> str:
    pytest.importorskip("pdoc")
    out = tmp_path_factory.mktemp("api")
    subprocess.run(
        [sys.executable, "-m", "pdoc", "--docformat", "google", "-o", str(out), "freelance_rz"],
        check=True, timeout=120, capture_output=True,
    )
    return (out / "freelance_rz.html").read_text()


def _public_names() -> list[str]:
    import freelance_rz

    return list(freelance_rz.__all__)


@pytest.mark.parametrize("name", _public_names())
def test_api_reference_documents_every_public_name(api_reference, name):
    docstring = _own_docstring(_section(api_reference, name), name)
    assert docstring, f"{name} has no docstring in the API reference"


# --- the tutorial ----------------------------------------------------------------------------


def doc_blocks(text: str, marker: str) -> dict[str, str]:
    """The python blocks of a doc marked ``<!-- MARKER: NAME -->``, by NAME (the last block
    of a NAME that is marked twice)."""
    return dict(re.findall(rf"<!-- {marker}: (\S+) -->\n```python\n(.*?)```", text, re.S))


def test_tutorial_runs_as_written(tmp_path):
    """docs/tutorial.md's tasks.py and app.py (its group swapped for this run's), two workers
    started with its command, and the output it shows."""
    text = (REPO / "docs" / "tutorial.md").read_text()
    files = doc_blocks(text, "tutorial-file")
    assert {"tasks.py", "app.py"} <= set(files)
    group = f"{GROUP}-tutorial"
    assert 'group="tutorial"' in files["app.py"]
    (tmp_path / "tasks.py").write_text(files["tasks.py"])
    (tmp_path / "app.py").write_text(files["app.py"].replace('group="tutorial"', f"group={group!r}"))
    shown = re.search(r"It prints, .*?```text\n(.*?)```", text, re.S)
    assert shown
    command = "freelance-worker --discover --tasks tasks --group tutorial --slots 2"
    assert command in text
    args = command.split()[1:]
    args[args.index("tutorial")] = group
    with two_workers(args, tmp_path, tmp_path):
        run = run_example(tmp_path / "app.py", tmp_path=tmp_path)
        assert run.returncode == 0, run
        for line in shown[1].splitlines():
            if line.startswith("producer on tcp://127.0.0.1:"):
                assert line.split(":")[0] in run.stdout, run
            elif line.startswith("job 13 dead-lettered"):  # the producer's log, on stderr
                assert line in run.stderr, run
            else:
                assert line in run.stdout, f"{line!r} missing\n{run}"


def test_tutorial_sections_on_when_a_job_runs_run_as_written(tmp_path):
    """Sections 11-15 of docs/tutorial.md (retries, delays, dependencies, limits, schedules):
    tasks.py with what they add to it, two workers started with the tutorial's command, each
    script run as written (its group swapped for this run's), and what its comments promise."""
    text = (REPO / "docs" / "tutorial.md").read_text()
    files = doc_blocks(text, "tutorial-file")
    added = re.findall(r"<!-- tutorial-add: tasks.py -->\n```python\n(.*?)```", text, re.S)
    scripts = ["retries.py", "later.py", "chains.py", "limits.py", "periodic.py"]
    assert set(scripts) <= set(files) and len(added) == 2
    group = f"{GROUP}-tutorial-when"
    (tmp_path / "tasks.py").write_text("\n\n".join([files["tasks.py"], *added]))
    for name in scripts:
        assert 'group="tutorial"' in files[name], name
        (tmp_path / name).write_text(files[name].replace('group="tutorial"', f"group={group!r}"))
    args = "--discover --tasks tasks --group tutorial --slots 2".split()
    args[args.index("tutorial")] = group
    out = {}
    with two_workers(args, tmp_path, tmp_path):
        for name in scripts:
            run = run_example(tmp_path / name, tmp_path=tmp_path)
            assert run.returncode == 0, run
            out[name] = run.stdout.splitlines()
    retries = out["retries.py"]
    assert retries[:2] == [str([n * 10 for n in range(10)]), "report done"], retries
    assert re.fullmatch(r"retried: \d+", retries[2]), retries
    assert retries[3:] in ([], ["gave up after 2 attempts: service busy for -1"]), retries
    assert out["later.py"] == ["2", "9"]
    assert out["chains.py"] == ["25", "25", "never ran: True"]
    assert out["limits.py"][-1] == "12250" and "call_service" in out["limits.py"][0]
    # "# 3" in the doc: slots at 1, 2 and 3 s, counted at 3.5 s; a loaded machine that holds
    # the producer's thread past a slot merges it with the next (missed slots fire once)
    assert out["periodic.py"] in (["3"], ["2"])

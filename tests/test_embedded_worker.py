"""A Worker embedded in a user's script, run as a user would: `python script.py`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TESTS_DIR

pytestmark = pytest.mark.timeout(90)

HEADER = f"""\
import sys, threading
sys.path.insert(0, {str(TESTS_DIR)!r})
from freelance_rz import Worker
"""


def run_script(path: Path, text: str) -> subprocess.CompletedProcess[str]:
    """Run ``text`` as the script ``path`` in a session of its own; kill it if it hangs."""
    path.write_text(HEADER + text)
    proc = subprocess.Popen(
        [sys.executable, str(path)], cwd=path.parent, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"the script hung:\n{err}") from None
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever it left behind
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_a_worker_started_without_the_main_guard_runs(tmp_path):
    """Job processes are fresh interpreters that never import the main script, so a script
    that starts a worker at module level (no `if __name__ == "__main__":`) runs it once:
    no job process starts a worker of its own or prints."""
    run = run_script(tmp_path / "unguarded.py", """\
worker = Worker(["rztasks"], connect=["tcp://127.0.0.1:9"], slots=2)
threading.Timer(3.0, worker.stop).start()
worker.run()
print("stopped")
""")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "stopped"


def test_a_worker_under_the_main_guard_runs(tmp_path):
    """The same script with the guard runs and stops; a Worker made at module level (not
    run) is fine."""
    run = run_script(tmp_path / "guarded.py", """\
worker = Worker(["rztasks"], connect=["tcp://127.0.0.1:9"], slots=2)
if __name__ == "__main__":
    threading.Timer(3.0, worker.stop).start()
    worker.run()
    print("stopped")
""")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "stopped"

"""Shared fixtures. Network tests run on loopback only: mDNS is pinned to 127.0.0.1 here, so a
test that forgets to pass interfaces still cannot reach a real network (DESIGN section 7)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

os.environ["FREELANCE_RZ_INTERFACES"] = "127.0.0.1"
# A suite started in the background by a non-interactive shell (`pytest &`, nohup, some CI
# runners) inherits SIGINT ignored, and so would every program it starts: the tests that
# interrupt a worker or freelance-status with Ctrl-C would then wait in vain. Restore it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

TESTS_DIR = Path(__file__).parent
LOOPBACK = ["127.0.0.1"]
# A group of this test run's own: a worker or producer of another run on the same loopback
# (a developer's shell, a second checkout) never trades jobs with ours.
GROUP = f"rz-test-{os.getpid()}"


class WorkerProcess:
    """A `freelance-worker` subprocess in its own process group, logging to a file."""

    def __init__(self, args: list[str], label: str, log_path: Path) -> None:
        env = dict(os.environ, RZ_WORKER=label, PYTHONUNBUFFERED="1")
        self.label = label
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "freelance_rz.cli", *args],
            cwd=TESTS_DIR, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        self.started_at = time.time()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        self.signal_group(signal.SIGKILL)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()


@pytest.fixture
def start_worker(tmp_path):
    """Start a worker: ``start_worker("w1", "--slots", "2")`` (``tasks``: its --tasks modules,
    rztasks by default); discovery on loopback by default, ``connect=ENDPOINT`` or
    ``source=[ARGS]`` (e.g. ``["--connect-file", PATH]``). Every worker's process group is
    SIGKILLed at teardown; logs go to tmp_path."""
    started: list[WorkerProcess] = []

    def start(label: str, *extra: str, connect: str | None = None,
              source: list[str] | None = None,
              tasks: tuple[str, ...] = ("rztasks",)) -> WorkerProcess:
        if source is None:
            source = ["--connect", connect] if connect else ["--discover", "--interface", "127.0.0.1"]
        modules = [arg for module in tasks for arg in ("--tasks", module)]
        args = [*source, *modules, "--group", GROUP, "--name", label, *extra]
        worker = WorkerProcess(args, label, tmp_path / f"{label}.log")
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill()
    for worker in started:
        print(f"--- log of {worker.label} ---\n{worker.log()}")


@pytest.fixture
def make_producer():
    """Start producers pinned to loopback; each is closed at teardown."""
    from freelance_rz import Producer

    made = []

    def make(**kwargs) -> Producer:
        kwargs.setdefault("interfaces", LOOPBACK)
        kwargs.setdefault("group", GROUP)
        producer = Producer(**kwargs).start()
        made.append(producer)
        return producer

    yield make
    for producer in made:
        producer.close()


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """Fail a test that leaves a producer I/O thread running."""
    yield
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        leaked = [t.name for t in threading.enumerate() if t.name.startswith("freelance-producer")]
        if not leaked:
            return
        time.sleep(0.05)
    pytest.fail(f"threads left running: {leaked}")

"""Compress every file of the Python standard library on pulling workers, one job per file.

An embedded :class:`freelance_rz.Producer` announces itself over mDNS (pinned to loopback);
two ``freelance-worker --discover`` processes find it and pull jobs, and a third one is
launched ``--late-delay`` seconds after the jobs start being submitted: it finds the producer
on its own and takes its share of what is left (DESIGN §1, fault 3: late joiners starve
under push; here they do not).

Run from the repository root::

    python examples/stdlib_demo/run_demo.py [--late-delay 1.0] [--slots 1] [--limit N] [--out DIR]

Exit code 0 when every file got exactly one result (a result or a task failure) and the late
worker ran at least one job; 1 otherwise. Workers' logs are written to the output directory.

Note: on some installs (pyenv, python.org builds) ``sysconfig.get_paths()["stdlib"]`` also
holds the base interpreter's ``site-packages``; its files are compressed too unless
``--stdlib-only`` is given.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import Future, as_completed
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from freelance_rz import JobFailed, JobFuture, Producer
from tasks import CHUNK_BYTES  # the demo's task module, next to this script

HERE = Path(__file__).resolve().parent
GROUP = "stdlib-demo"
TASK = "tasks:compress_file"  # the worker imports ``tasks`` from its cwd (HERE)
LOOPBACK = "127.0.0.1"
EARLY_WORKERS = ("w1", "w2")
LATE_WORKER = "w3-late"
STOP_TIMEOUT_S = 10.0  # SIGTERM, then SIGKILL of the process group after this long
READY_TIMEOUT_S = 30.0  # time the early workers have to find the producer
SITE_DIRS = {"site-packages", "dist-packages"}
SHOW_FAILURES = 5


# --- files ---------------------------------------------------------------------------------


def collect_files(root: str, skip_site_packages: bool = False) -> list[str]:
    """Every regular file under ``root``, recursively, sorted; no symlinks, no __pycache__
    (nor site-packages / dist-packages when ``skip_site_packages``)."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = [
            d for d in dirnames
            if d != "__pycache__"
            and not os.path.islink(os.path.join(dirpath, d))
            and not (skip_site_packages and d in SITE_DIRS)
        ]
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                if stat.S_ISREG(os.lstat(path).st_mode):  # lstat: a symlink is not regular
                    files.append(path)
            except OSError:
                files.append(path)  # vanished or unreadable: let the job report it
    files.sort()
    return files


# --- worker processes ----------------------------------------------------------------------


@dataclass
class WorkerProc:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    launched_at: float  # time.monotonic()
    late: bool = False
    exit_code: int | None = None
    killed: bool = False


def launch_worker(name: str, slots: int, out_dir: Path, late: bool = False) -> WorkerProc:
    """Start ``freelance-worker`` in its own session (process group), output to a log file."""
    log_path = out_dir / f"{name}.log"
    env = dict(os.environ, FREELANCE_RZ_INTERFACES=LOOPBACK, FREELANCE_DEMO_WORKER=name)
    cmd = [
        sys.executable, "-m", "freelance_rz.cli", "--discover", "--group", GROUP,
        "--tasks", "tasks", "--interface", LOOPBACK, "--slots", str(slots), "--name", name,
    ]
    with open(log_path, "wb") as log_file:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            cmd, cwd=HERE, env=env, stdin=subprocess.DEVNULL, stdout=log_file,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
    return WorkerProc(name, proc, log_path, time.monotonic(), late=late)


def wait_connected(workers: list[WorkerProc], producer_id: str, timeout_s: float) -> None:
    """Wait until each worker has logged that it connected to the producer.

    Raises:
        RuntimeError: a worker exited, or did not connect in time.
    """
    needle = f"producer {producer_id} at ".encode()
    deadline = time.monotonic() + timeout_s
    pending = list(workers)
    while pending:
        for worker in list(pending):
            if worker.proc.poll() is not None:
                raise RuntimeError(
                    f"worker {worker.name} exited with code {worker.proc.returncode} before "
                    f"connecting; see {worker.log_path}"
                )
            if needle in worker.log_path.read_bytes():
                pending.remove(worker)
        if pending and time.monotonic() > deadline:
            names = ", ".join(w.name for w in pending)
            raise RuntimeError(f"worker(s) {names} did not find the producer in {timeout_s:.0f} s")
        time.sleep(0.05)


def _killpg(pgid: int, sig: int) -> bool:
    """Signal a process group we started; False when it no longer exists."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False


def stop_workers(workers: list[WorkerProc], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM each worker's process group (graceful stop), SIGKILL it after ``timeout_s``.

    Only the groups of the processes started here are signalled (each worker leads its own
    session, so its pid is its group id). Fills ``exit_code`` / ``killed``.
    """
    for worker in workers:
        if worker.proc.poll() is None:
            _killpg(worker.proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    try:
        for worker in workers:
            try:
                worker.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.killed = True
                _killpg(worker.proc.pid, signal.SIGKILL)
                worker.proc.wait()
            worker.exit_code = worker.proc.returncode
            # the worker is gone; leave nothing of its group behind (its job processes die
            # with it, but make sure)
            if _killpg(worker.proc.pid, 0):
                time.sleep(0.2)
                _killpg(worker.proc.pid, signal.SIGKILL)
    except BaseException:  # Ctrl-C while waiting: no more patience, but nothing survives
        for worker in workers:
            _killpg(worker.proc.pid, signal.SIGKILL)
            worker.proc.wait()
        raise


class LateLauncher(threading.Thread):
    """Launches the late worker at ``at`` (time.monotonic()) unless cancelled first."""

    def __init__(self, at: float, slots: int, out_dir: Path) -> None:
        super().__init__(name="late-launcher", daemon=True)
        self.at = at
        self.slots = slots
        self.out_dir = out_dir
        self.cancelled = threading.Event()
        self.worker: WorkerProc | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        if self.cancelled.wait(max(0.0, self.at - time.monotonic())):
            return
        try:
            self.worker = launch_worker(LATE_WORKER, self.slots, self.out_dir, late=True)
        except BaseException as exc:  # reported by the main thread
            self.error = exc


# --- the run -------------------------------------------------------------------------------


@dataclass
class Tally:
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: list[tuple[str, JobFailed]] = field(default_factory=list)
    lost: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    duplicates: list[str] = field(default_factory=list)
    per_worker: Counter[str] = field(default_factory=Counter)
    first_result_at: dict[str, float] = field(default_factory=dict)

    def take(self, path: str, future: Future[Any], now: float) -> None:
        try:
            value = future.result(timeout=0)
        except JobFailed as exc:  # the task raised on a worker (e.g. unreadable file)
            self.failures.append((path, exc))
            return
        except Exception as exc:  # noqa: BLE001 - JobLost and anything else: the file is lost
            self.lost.append((path, f"{type(exc).__name__}: {exc}"))
            return
        if not isinstance(value, dict) or value.get("path") != path:
            self.lost.append((path, f"result names another file: {value!r:.200}"))
            return
        if path in self.results:
            self.duplicates.append(path)
            return
        self.results[path] = value
        worker = str(value.get("worker"))
        self.per_worker[worker] += 1
        if now < self.first_result_at.get(worker, now + 1):  # as_completed is not in order
            self.first_result_at[worker] = now


def progress_description(tally: Tally) -> str:
    counts = " ".join(
        f"{name}:{tally.per_worker.get(name, 0)}" for name in (*EARLY_WORKERS, LATE_WORKER)
    )
    return f"compressing [dim]({counts})[/dim]"


def run(args: argparse.Namespace, console: Console, out_dir: Path) -> int:
    root = sysconfig.get_paths()["stdlib"]
    files = collect_files(root, skip_site_packages=args.stdlib_only)
    if args.limit > 0:
        files = files[: args.limit]
    if not files:
        console.print(f"[red]no files found under {root}[/red]")
        return 1
    console.print(
        f"[bold]{len(files):,}[/bold] files under {root}"
        + (" (site-packages skipped)" if args.stdlib_only else "")
    )

    workers: list[WorkerProc] = []
    late: LateLauncher | None = None
    producer = Producer(group=GROUP, interfaces=[LOOPBACK])
    tally = Tally()
    producer_done = False  # shut down after every job was resolved
    t_begin = time.monotonic()
    try:
        # The early workers start while the producer probes mDNS (about 1.5 s).
        for name in EARLY_WORKERS:
            workers.append(launch_worker(name, args.slots, out_dir))
        producer.start()
        console.print(f"producer {producer.producer_id} on {producer.endpoint}, group {GROUP!r}")
        wait_connected(workers, producer.producer_id, READY_TIMEOUT_S)
        console.print(f"workers {', '.join(EARLY_WORKERS)} connected; submitting jobs")

        t0 = time.monotonic()  # jobs start being submitted
        late = LateLauncher(t0 + args.late_delay, args.slots, out_dir)
        late.start()
        futures: dict[Future[Any], str] = {}
        arrived: dict[Future[Any], float] = {}  # when the producer resolved each future

        def stamp(future: Future[Any]) -> None:  # runs on the producer's I/O thread
            arrived[future] = time.monotonic()

        large: list[JobFuture] = []  # files big enough to report progress (tasks.CHUNK_BYTES)
        for path in files:
            future = producer.submit(TASK, path)
            future.add_done_callback(stamp)
            futures[future] = path
            try:
                if os.path.getsize(path) > CHUNK_BYTES:
                    large.append(future)
            except OSError:
                pass  # the job will fail and say why
        t_submitted = time.monotonic()

        progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TaskProgressColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
            console=console, transient=False,
        )
        with progress:
            bar = progress.add_task(progress_description(tally), total=len(files))
            big = progress.add_task("large files: waiting", total=None)
            try:
                for n, future in enumerate(
                    as_completed(futures, timeout=args.timeout - (time.monotonic() - t0)), 1
                ):
                    tally.take(futures[future], future, arrived.get(future, time.monotonic()) - t0)
                    if n % 50 == 0 or n == len(files):
                        progress.update(bar, description=progress_description(tally))
                        large = [f for f in large if not f.done()]
                        running = [(f, producer.progress(f)) for f in large]
                        shown = [(f, r) for f, r in running if r is not None and r.total]
                        if shown:  # the running large file furthest from done
                            _, latest = min(shown, key=lambda fr: fr[1].done / (fr[1].total or 1))
                            progress.update(
                                big, description=f"large file {latest.message}",
                                completed=latest.done, total=latest.total,
                            )
                        elif not large:
                            progress.update(big, description="large files: all done", completed=1, total=1)
                    progress.advance(bar)
            except FuturesTimeout:
                for future, path in futures.items():
                    if not future.done():
                        tally.lost.append((path, f"no result within --timeout {args.timeout} s"))
        wall = time.monotonic() - t0

        late.cancelled.set()
        late.join()
        if late.error is not None:
            console.print(f"[red]could not launch {LATE_WORKER}: {late.error!r}[/red]")
        if late.worker is not None:
            workers.append(late.worker)
        if all(future.done() for future in futures):
            producer.shutdown(wait=True)  # every job is resolved: returns at once
            producer_done = True
    finally:
        if late is not None:
            late.cancelled.set()
            late.join()
            if late.worker is not None and late.worker not in workers:
                workers.append(late.worker)
        try:
            # graceful: running jobs finish and deliver while the producer still listens
            stop_workers(workers)
        finally:
            if not producer_done:  # error, Ctrl-C or --timeout: stop now, pending jobs cancelled
                producer.close(timeout_s=5.0)
                console.print(f"[yellow]producer closed, workers stopped; logs in {out_dir}[/yellow]")

    return report(
        console, files, tally, workers, late, wall=wall, submit_s=t_submitted - t0,
        total_s=time.monotonic() - t_begin, late_delay=args.late_delay, out_dir=out_dir,
    )


# --- the report ----------------------------------------------------------------------------


def _mb(n: int) -> str:
    return f"{n:,} B ({n / 1e6:,.1f} MB)"


def report(
    console: Console, files: list[str], tally: Tally, workers: list[WorkerProc],
    late: LateLauncher | None, *, wall: float, submit_s: float, total_s: float,
    late_delay: float, out_dir: Path,
) -> int:
    bytes_in = sum(r["bytes_in"] for r in tally.results.values())
    bytes_out = sum(r["bytes_out"] for r in tally.results.values())
    accounted = len(tally.results) + len(tally.failures)
    missing = len(files) - accounted - len(tally.lost)  # should be 0 by construction

    table = Table(title="stdlib compression on freelance_rz workers", show_header=False)
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    table.add_row("files", f"{len(files):,}")
    table.add_row("results", f"{len(tally.results):,}")
    table.add_row("bytes in", _mb(bytes_in))
    table.add_row("bytes out (zlib -6)", _mb(bytes_out))
    ratio = bytes_out / bytes_in if bytes_in else 0.0
    table.add_row("ratio (out / in)", f"{ratio:.3f}  ({1 / ratio:.2f}:1)" if ratio else "-")
    table.add_row("failures (task raised)", f"{len(tally.failures):,}")
    table.add_row("lost files", f"{len(tally.lost) + missing:,}")
    table.add_row("duplicate results", f"{len(tally.duplicates):,}")
    table.add_row("wall time (first submit -> last result)", f"{wall:.2f} s")
    table.add_row("  of which submitting", f"{submit_s:.2f} s")
    table.add_row("jobs/s", f"{len(files) / wall:,.0f}" if wall > 0 else "-")
    table.add_row("whole demo (startup + shutdown)", f"{total_s:.2f} s")
    console.print(table)

    by_worker = Table(title="jobs per worker")
    by_worker.add_column("worker")
    by_worker.add_column("launched", justify="right")
    by_worker.add_column("first result", justify="right")
    by_worker.add_column("jobs", justify="right")
    by_worker.add_column("share", justify="right")
    by_worker.add_column("exit code", justify="right")
    known = {w.name: w for w in workers}
    for name in (*EARLY_WORKERS, LATE_WORKER):
        worker = known.get(name)
        jobs = tally.per_worker.get(name, 0)
        first = tally.first_result_at.get(name)
        if name == LATE_WORKER:
            label = f"{name} [yellow](late joiner)[/yellow]"
            launched = f"t+{late_delay:.2f} s" if worker is not None else "not launched"
        else:
            label, launched = name, "before t0"
        code = "-" if worker is None else str(worker.exit_code) + (" (killed)" if worker.killed else "")
        by_worker.add_row(
            label, launched, "-" if first is None else f"t+{first:.2f} s", f"{jobs:,}",
            f"{jobs / len(tally.results):.1%}" if tally.results else "-", code,
        )
    strangers = set(tally.per_worker) - {*EARLY_WORKERS, LATE_WORKER}
    for name in sorted(strangers):  # a worker of someone else's on this group
        jobs = tally.per_worker[name]
        by_worker.add_row(f"{name} [red](unknown)[/red]", "-", "-", f"{jobs:,}", "", "-")
    console.print(by_worker)
    console.print("t0 = first submit; 'first result' is when the producer received it")

    if tally.failures:
        console.print(f"[yellow]{len(tally.failures)} failure(s); the first ones:[/yellow]")
        for path, exc in tally.failures[:SHOW_FAILURES]:
            console.print(f"  {path}: {exc.remote_type}: {exc.remote_message}", markup=False)
    for path, why in tally.lost[:SHOW_FAILURES]:
        console.print(f"  lost: {path}: {why}", markup=False, style="red")

    problems = []
    if tally.lost or missing:
        problems.append(f"{len(tally.lost) + missing} file(s) got no result")
    if tally.duplicates:
        problems.append(f"{len(tally.duplicates)} file(s) got more than one result")
    if tally.per_worker.get(LATE_WORKER, 0) < 1:
        launched = LATE_WORKER in {w.name for w in workers}
        problems.append(
            f"the late worker {LATE_WORKER} ran no job ("
            + (f"launched at t+{late_delay:.2f} s" if launched else "never launched")
            + f"; the jobs were all done at t+{wall:.2f} s; it needs ~1-2 s to start and find "
            "the producer over mDNS: use more files or a shorter --late-delay)"
        )
    bad_exits = [w for w in workers if w.exit_code != 0]
    for worker in bad_exits:
        console.print(
            f"[red]worker {worker.name} exited with code {worker.exit_code}"
            f"{' after SIGKILL' if worker.killed else ''}; see {worker.log_path}[/red]"
        )
    if not bad_exits and workers:
        console.print(f"all {len(workers)} worker(s) stopped gracefully on SIGTERM (exit code 0)")
    console.print(f"worker logs: {out_dir}")
    if problems:
        console.print(f"[bold red]FAILED: {'; '.join(problems)}[/bold red]")
        return 1
    console.print(
        f"[bold green]OK[/bold green]: every file got exactly one result; "
        f"{LATE_WORKER} ran {tally.per_worker[LATE_WORKER]:,} job(s)"
    )
    return 0


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM."""


def _terminate(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: let the cleanup run in peace
    raise Terminated


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--late-delay", type=float, default=1.0,
        help="seconds after the first submit to launch the late worker (default: %(default)s)",
    )
    parser.add_argument("--slots", type=int, default=1, help="slots per worker (default: 1)")
    parser.add_argument("--limit", type=int, default=0, help="only the first N files (0: all)")
    parser.add_argument("--out", help="directory for logs (default: a new temporary directory)")
    parser.add_argument(
        "--stdlib-only", action="store_true",
        help="skip site-packages / dist-packages directories under the stdlib directory",
    )
    parser.add_argument(
        "--timeout", type=float, default=240.0,
        help="give up on results this many seconds after the first submit (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.slots < 1:
        parser.error("--slots must be >= 1")
    if args.late_delay < 0:
        parser.error("--late-delay must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out_dir = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="freelance-stdlib-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        filename=out_dir / "producer.log", level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    console = Console()
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so the finally blocks stop the workers
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return run(args, console, out_dir)
    except KeyboardInterrupt:
        console.print(f"[red]interrupted; worker logs: {out_dir}[/red]")
        return 130
    except Terminated:
        console.print(f"[red]terminated (SIGTERM); worker logs: {out_dir}[/red]")
        return 143
    except RuntimeError as exc:
        console.print(f"[red]error: {exc}[/red]")
        console.print(f"worker logs: {out_dir}")
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""Process handling shared by the benchmark scripts: loopback-pinned environment, worker
launch in their own process groups, clean kills, log parsing, CPU accounting from /proc."""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
LOOPBACK = "127.0.0.1"

# Everything started here, and this process itself, keeps mDNS on loopback.
os.environ["FREELANCE_RZ_INTERFACES"] = LOOPBACK

_started: list[subprocess.Popen] = []


def bench_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, FREELANCE_RZ_INTERFACES=LOOPBACK, PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def spawn(args: list[str], log_path: Path, **env: str) -> subprocess.Popen:
    """Start a child in its own session (so its whole group can be killed), output to a file."""
    log = open(log_path, "ab")
    try:
        proc = subprocess.Popen(
            args, cwd=BENCH_DIR, env=bench_env(**env), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
    finally:
        log.close()
    proc.log_path = log_path  # type: ignore[attr-defined]
    proc.launched_at = time.time()  # type: ignore[attr-defined]
    _started.append(proc)
    return proc


def start_worker(name: str, group: str, logdir: Path, *, slots: int = 1,
                 exec_log: Path | None = None, extra: tuple[str, ...] = (),
                 tasks: tuple[str, ...] = ("benchtasks",)) -> subprocess.Popen:
    modules = [arg for module in tasks for arg in ("--tasks", module)]
    args = [
        sys.executable, "-m", "freelance_rz.cli", "--discover", "--interface", LOOPBACK,
        *modules, "--group", group, "--slots", str(slots), "--name", name,
        "--log-level", "INFO", *extra,
    ]
    env = {"RZ_WORKER": name}
    if exec_log is not None:
        env["BENCH_EXEC_LOG"] = str(exec_log)
    return spawn(args, logdir / f"{name}.log", **env)


def start_baseline_worker(name: str, logdir: Path, jobs: list[str], results: list[str],
                          exec_log: Path | None = None) -> subprocess.Popen:
    args = [sys.executable, str(BENCH_DIR / "baseline_node.py"), "worker", "--name", name,
            "--jobs", *jobs, "--results", *results]
    env = {"RZ_WORKER": name}
    if exec_log is not None:
        env["BENCH_EXEC_LOG"] = str(exec_log)
    return spawn(args, logdir / f"{name}.log", **env)


def kill(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal the process group of a child we started (never anything else)."""
    if getattr(proc, "group_killed", False):
        return  # already SIGKILLed and reaped: its pgid may no longer be ours
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    if sig == signal.SIGKILL:
        proc.group_killed = True  # type: ignore[attr-defined]
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass


def kill_all() -> None:
    while _started:
        kill(_started.pop())


def kill_these(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        kill(proc)
        if proc in _started:
            _started.remove(proc)


# --- CPU accounting (no psutil): every process of the child's session ----------------------



def session_cpu_s(sid: int) -> float:
    """On-CPU seconds (ns resolution, from /proc/PID/task/TID/schedstat) of every thread of
    every live process whose session id is ``sid``."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                raw = f.read().decode()
            fields = raw[raw.rfind(")") + 2:].split()
            if int(fields[3]) != sid:  # session id (stat field 6)
                continue
            for tid in os.listdir(f"/proc/{entry}/task"):
                with open(f"/proc/{entry}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read().decode()
    return raw[raw.rfind(")") + 2:].split()


def process_cpu(pid: int) -> tuple[float, int]:
    """On-CPU seconds (schedstat, ns resolution) and wake-ups (voluntary context switches:
    each is a sleep the process woke from) summed over every thread of process ``pid``;
    (0, 0) once it is gone."""
    cpu_ns = wakeups = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    cpu_ns += int(f.read().split()[0])
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    for line in f:
                        if line.startswith("voluntary_ctxt_switches"):
                            wakeups += int(line.split()[1])
            except (OSError, ValueError, IndexError):
                continue
    except OSError:
        pass
    return cpu_ns / 1e9, wakeups


def rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def children_of(pid: int) -> list[int]:
    """The live child processes of ``pid``."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(_stat_fields(int(entry))[1]) == pid:
                    out.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return out


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def role_pids(workers: list[subprocess.Popen]) -> dict[str, list[int]]:
    """The processes of a run by role: ``producer`` (this process: the app thread, the
    producer's I/O thread and libzmq's threads), ``worker`` (each worker's main process),
    ``job process`` (their job processes; not the reaper or multiprocessing's resource
    tracker, which sleep)."""
    roles: dict[str, list[int]] = {"producer": [os.getpid()], "worker": [], "job process": []}
    for proc in workers:
        roles["worker"].append(proc.pid)
        for child in children_of(proc.pid):
            cmd = _cmdline(child)
            if "reaper" not in cmd and "resource_tracker" not in cmd:
                roles["job process"].append(child)
    return roles


def cpu_by_role(roles: dict[str, list[int]]) -> dict[str, tuple[float, int]]:
    """(CPU seconds, wake-ups) summed over each role's processes (see :func:`role_pids`)."""
    out = {}
    for role, pids in roles.items():
        samples = [process_cpu(pid) for pid in pids]
        out[role] = (sum(c for c, _ in samples), sum(w for _, w in samples))
    return out


def idle_cpu_percent(proc: subprocess.Popen, seconds: float) -> float:
    """Percent of one core used by ``proc``'s whole session over ``seconds``."""
    start_cpu, start = session_cpu_s(proc.pid), time.monotonic()
    time.sleep(seconds)
    return 100.0 * (session_cpu_s(proc.pid) - start_cpu) / (time.monotonic() - start)


# --- worker logs -----------------------------------------------------------------------------

_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def log_lines(proc: subprocess.Popen) -> list[str]:
    return Path(proc.log_path).read_text(errors="replace").splitlines()  # type: ignore[attr-defined]


def log_time(line: str) -> float | None:
    """Wall-clock time of a logging line (format of freelance_rz.cli: asctime with ms)."""
    m = _LOG_TIME.match(line)
    if not m:
        return None
    return dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def producers_found(proc: subprocess.Popen) -> int:
    return sum(1 for line in log_lines(proc) if " producer " in line and " at tcp://" in line)


def wait_for(cond, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def warm_up(producer, names: list[str], timeout: float = 60.0) -> None:
    """Run short jobs until every named worker has run one (so each is connected, parked and
    its job process warm)."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while not set(names) <= seen:
        if time.monotonic() > deadline:
            raise TimeoutError(f"workers {sorted(set(names) - seen)} never took a job")
        futures = [producer.submit("benchtasks:whoami", 0.05) for _ in names]
        for future in futures:
            seen.add(future.result(timeout=max(1.0, deadline - time.monotonic())))


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


class Dealer:
    """A raw protocol client (DEALER) for STATUS and claim-rate measurements."""

    def __init__(self, endpoint: str) -> None:
        import zmq

        from freelance_rz.core import wire as p

        self.p = p
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.rid = 0

    def next_rid(self) -> int:
        self.rid += 1
        return self.rid

    def send(self, msg) -> None:
        self.sock.send_multipart(self.p.encode(msg))

    def recv(self, timeout_ms: int = 5000):
        if not self.sock.poll(timeout_ms):
            raise TimeoutError("no reply from the producer")
        return self.p.decode_reply(self.sock.recv_multipart())

    def status(self) -> dict:
        rid = self.next_rid()
        self.send(self.p.Status(rid=rid))
        while True:
            msg = self.recv()
            if isinstance(msg, self.p.StatusReply) and msg.rid == rid:
                return msg.info

    def close(self) -> None:
        self.sock.close(0)


def add_s5_producer_args(ap, ready_required: bool = False) -> None:
    """The flags of an S5 producer process (freelance_rz's or the baseline's): files to
    signal readiness and the start, where to write the outcome, and the jobs to submit."""
    ap.add_argument("--ready", required=ready_required)
    ap.add_argument("--go")
    ap.add_argument("--out")
    ap.add_argument("--workers", default="")
    ap.add_argument("--jobs-n", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=0.02)
    ap.add_argument("--tag", default="A")

"""Beyond one LAN on real network parts (issue 18, DESIGN §11), as root: producers on subnet
a, workers on subnet b behind a router that passes no multicast, and a real DNS server
(dnsmasq) in a namespace of its own. mDNS on b finds nothing; DNS-SD, a re-resolved name and
the endpoints file each find every producer; a producer added is used within one resolve
interval, one removed and killed stops being polled within the C5 bound. Every namespace,
/etc/netns directory and process (dnsmasq included) is gone afterwards, even after a failure."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from freelance_rz.lab import beyond, dnsmasq, netns
from freelance_rz.lab.beyond import FINDERS_B, BeyondError, BeyondRun, format_report
from freelance_rz.sources import POLL_S

C5_BOUND_S = 1.5  # DESIGN §5: workers notice a lost producer within ~1.5 s
RESOLVE_EVERY_S = 2.0


def processes_of(run_dir: Path) -> list[int]:
    """Pids of processes whose command line names the run directory (dnsmasq's config is in
    it; peers run with it as their working directory)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if str(run_dir).encode() in cmdline or cwd.startswith(str(run_dir)):
            found.append(int(pid))
    return found


@pytest.fixture
def lab(tmp_path):
    """Skip unless namespaces and dnsmasq are here; afterwards nothing of the run is left:
    namespaces, /etc/netns directories, processes."""
    prefix = f"rzlab-{os.getpid()}-b"
    for ok, reason in (netns.available(f"rzlab-{os.getpid()}-probe"), dnsmasq.available()):
        if not ok:
            pytest.skip(reason)
    yield tmp_path
    left = netns.list_namespaces(prefix)
    etc = [p.name for p in Path("/etc/netns").glob(f"{prefix}*")] if Path("/etc/netns").exists() else []
    running = [pid for run in tmp_path.glob("beyond-lan-*") for pid in processes_of(run)]
    for name in left:
        netns._ip("netns", "del", name, check=False)
    for pid in running:
        os.kill(pid, signal.SIGKILL)
    assert not left and not etc and not running, (left, etc, running)


@pytest.mark.timeout(240)
def test_workers_beyond_the_subnet_find_producers_by_dns_sd_name_and_file(lab):
    report = BeyondRun(lab, RESOLVE_EVERY_S, show=print).run()
    print(format_report(report))
    assert report.leftover_namespaces == []
    assert report.found.get("wb-mdns", []) == [] and not report.jobs.get("wb-mdns")
    assert {"p1", "p2"} <= set(report.found["wa"])  # mDNS works within a subnet
    for source in ("dns-sd", "name", "file"):  # freelance-status takes the same sources
        code, line = report.status_checks[source]
        assert code == 0 and line.startswith("ok: 2 producer(s) answered"), (source, line)
    assert report.status_checks["mdns"][0] == 1, report.status_checks["mdns"]
    for worker in FINDERS_B:
        assert report.found[worker] == ["p1", "p2", "p3"], worker
        assert all(report.jobs[worker].get(p, 0) > 0 for p in ("p1", "p2", "p3")), report.jobs
        # added: used within one resolve interval (DNS), about POLL_S (the file), + margins
        bound = POLL_S if worker == "wb-file" else RESOLVE_EVERY_S
        added = report.add_first_job_s[worker]
        assert added is not None and added < bound + 1.5, (worker, added)
        # removed and killed: no longer polled within the C5 bound (+ margin for a busy
        # machine), forgotten once out of its source and silent
        stopped, forgot = report.remove_stopped_s[worker], report.remove_forgotten_s[worker]
        assert stopped is not None and stopped < C5_BOUND_S + 2.0, (worker, stopped)
        assert forgot is not None and forgot < RESOLVE_EVERY_S + C5_BOUND_S + 1.5, (worker, forgot)
        assert report.p2_jobs_after_kill[worker] <= 2  # only jobs already on their way


@pytest.mark.timeout(120)
def test_a_failed_run_leaves_nothing_behind(lab, monkeypatch):
    """A step that fails after the whole setup (network, dnsmasq, producers, workers): the
    run raises, and the fixture finds no namespace, /etc/netns directory or process left."""
    def fail(self: BeyondRun) -> None:
        raise BeyondError("planted failure")

    monkeypatch.setattr(BeyondRun, "_steps", fail)
    with pytest.raises(BeyondError, match="planted failure"):
        BeyondRun(lab, RESOLVE_EVERY_S).run()
    assert beyond.WAIT_S > 0

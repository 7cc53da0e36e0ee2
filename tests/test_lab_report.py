"""Pure tests of the lab report (compute_report) on hand-built records, and the timeline PNG."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from freelance_rz.lab.report import build_report, compute_report, compute_timeline, format_report, write_outputs

T0 = 1_700_000_000.0  # wall clock of the runs' start (seconds)
HOSTS = {"p1": "h1", "p2": "h2", "w1": "h3", "w2": "h4", "w3": "h5"}
TERMINAL = {"ok": "done", "JobLost": "dead", "CancelledError": "cancelled"}


def scenario(name: str = "test", **producer_options: dict[str, Any]) -> dict[str, Any]:
    """A scenario dict shaped like Scenario.to_dict() (plus the runner's mode)."""
    return {
        "name": name,
        "mode": "netns",
        "duration_s": 30.0,
        "hosts": ["h1", "h2", "h3", "h4", "h5"],
        "producers": [
            {"name": p, "host": HOSTS[p], "start_s": 0.0, "store": False, **producer_options.get(p, {})}
            for p in ("p1", "p2")
        ],
        "workers": [{"name": w, "host": HOSTS[w], "start_s": 0.0, "slots": 1} for w in ("w1", "w2")],
        "events": [],
    }


class Run:
    """Builds records as the runner, the producer peers and the lab task write them; ``t``
    arguments are seconds after T0."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.pids = {"p1": 101, "p2": 201}

    def add(self, t: float, kind: str, peer: str, **fields: Any) -> None:
        self.records.append({"t": T0 + t, "kind": kind, "peer": peer, "host": HOSTS.get(peer, peer), **fields})

    def producer(self, t: float, kind: str, peer: str, **fields: Any) -> None:
        self.add(t, kind, peer, pid=self.pids[peer], **fields)

    def action(self, t: float, action: str, target: str) -> None:
        self.add(t, "action", "lab", action=action, target=target)
        if action in ("restart",) and target in self.pids:
            self.pids[target] += 1

    def ready(self, t: float, peer: str, store: bool = False) -> None:
        self.producer(t, "producer_ready", peer, producer_id=f"id-{peer}-{self.pids[peer]}",
                      endpoints=[f"tcp://{HOSTS[peer]}:5000"], store=store)

    def submit(self, t: float, peer: str, job_id: int) -> str:
        key = f"{peer}/{job_id}"
        self.producer(t, "submitted", peer, job_id=job_id)
        self.producer(t + 0.0001, "job_key", peer, job_id=job_id, key=key)
        return key

    def lease(self, t: float, peer: str, job_id: int, worker: str, attempt: int = 1) -> None:
        self.producer(t, "leased", peer, job_id=job_id, worker=worker, attempt=attempt)

    def execute(self, start: float, end: float | None, key: str, worker: str, pid: int = 5000) -> None:
        self.add(start, "started", worker, key=key, pid=pid)
        if end is not None:
            self.add(end, "finished", worker, key=key, pid=pid)

    def resolve(self, t: float, peer: str, job_id: int, outcome: str = "ok") -> None:
        self.producer(t, TERMINAL.get(outcome, "failed"), peer, job_id=job_id)
        self.producer(t + 0.001, "resolved", peer, job_id=job_id, outcome=outcome)

    def clean_job(self, t: float, peer: str, job_id: int, worker: str, run_s: float = 0.1) -> str:
        """A job submitted at t, leased at t + 0.01, run for run_s, resolved ok."""
        key = self.submit(t, peer, job_id)
        self.lease(t + 0.01, peer, job_id, worker)
        self.execute(t + 0.02, t + 0.02 + run_s, key, worker, pid=job_id)
        self.resolve(t + 0.03 + run_s, peer, job_id)
        return key


def clean_run() -> Run:
    run = Run()
    run.action(0.0, "start", "p1")
    run.action(0.0, "start", "w1")
    run.action(0.0, "start", "w2")
    run.ready(0.5, "p1")
    for i in range(4):
        run.clean_job(1.0 + i * 0.1, "p1", i + 1, "w1" if i % 2 == 0 else "w2")
    return run


# --------------------------------------------------------------------------- clean run


def test_clean_run() -> None:
    report = compute_report(scenario("clean"), clean_run().records)
    assert report["scenario"] == "clean" and report["mode"] == "netns"
    assert report["jobs_submitted"] == 4
    assert report["jobs_completed"] == 4
    for name in ("jobs_failed", "jobs_dead", "jobs_cancelled", "jobs_lost", "jobs_abandoned",
                 "duplicate_executions", "duplicates_explained", "duplicates_unexplained",
                 "futures_resolved_more_than_once"):
        assert report[name] == 0, name
    # first submit at 1.0, last resolution at 1.3 + 0.13 + 0.001
    assert report["makespan_s"] == pytest.approx(0.431, abs=1e-3)
    assert report["latency_s"] == {"p50": 0.131, "p99": 0.131, "max": 0.131}
    assert report["workers"]["w1"] == {"leased": 2, "started": 2, "finished": 2, "cut_off": 0}
    assert report["workers"]["w2"] == {"leased": 2, "started": 2, "finished": 2, "cut_off": 0}
    assert report["producers"]["p1"]["submitted"] == 4
    assert report["producers"]["p1"]["completed"] == 4
    assert report["producers"]["p1"]["makespan_s"] == pytest.approx(0.431, abs=1e-3)
    assert report["producers"]["p2"]["submitted"] == 0
    assert report["recovery"] == {"c4": [], "c4_max_s": None, "c5": [], "c5_max_s": None}
    assert [a["action"] for a in report["actions"]] == ["start", "start", "start"]
    json.dumps(report)  # JSON-ready


def test_latency_percentiles_nearest_rank() -> None:
    run = Run()
    for i in range(100):  # latencies 0.01 .. 1.00 s
        run.submit(0.0, "p1", i)
        run.producer(0.01 * (i + 1), "resolved", "p1", job_id=i, outcome="ok")
    report = compute_report(scenario(), run.records)
    assert report["latency_s"] == {"p50": 0.5, "p99": 0.99, "max": 1.0}
    assert report["makespan_s"] == 1.0


def test_empty_run() -> None:
    report = compute_report({}, [])
    assert report["scenario"] is None
    assert report["jobs_submitted"] == 0 and report["jobs_completed"] == 0 and report["jobs_lost"] == 0
    assert report["duplicate_executions"] == 0
    assert report["makespan_s"] is None
    assert report["latency_s"] == {"p50": None, "p99": None, "max": None}
    assert report["workers"] == {} and report["producers"] == {}
    assert report["recovery"]["c4_max_s"] is None and report["recovery"]["c5_max_s"] is None
    assert "jobs_submitted" in format_report(report)


def test_empty_scenario_peers_still_listed() -> None:
    report = compute_report(scenario(), [])
    assert set(report["workers"]) == {"w1", "w2"} and set(report["producers"]) == {"p1", "p2"}


# --------------------------------------------------------------------------- outcomes


def test_outcomes_are_bucketed() -> None:
    run = Run()
    for job_id, outcome in enumerate(["ok", "JobFailed", "JobTimeout", "JobLost", "CancelledError", "ProducerClosed"]):
        run.submit(0.1, "p1", job_id)
        run.resolve(1.0, "p1", job_id, outcome)
    report = compute_report(scenario(), run.records)
    assert report["jobs_submitted"] == 6
    assert (report["jobs_completed"], report["jobs_failed"], report["jobs_dead"], report["jobs_cancelled"]) == (1, 3, 1, 1)
    row = report["producers"]["p1"]
    assert (row["completed"], row["failed"], row["dead"], row["cancelled"], row["lost"]) == (1, 3, 1, 1, 0)


def test_terminal_ledger_event_without_resolved_record_counts() -> None:
    run = Run()
    run.submit(0.1, "p1", 1)
    run.producer(0.5, "done", "p1", job_id=1)
    run.submit(0.1, "p1", 2)
    run.producer(0.6, "dead", "p1", job_id=2)
    report = compute_report(scenario(), run.records)
    assert report["jobs_completed"] == 1 and report["jobs_dead"] == 1 and report["jobs_lost"] == 0
    assert report["makespan_s"] == 0.5


def test_unresolved_job_of_a_live_producer_is_lost() -> None:
    run = clean_run()
    run.submit(2.0, "p1", 99)
    run.lease(2.1, "p1", 99, "w1")
    report = compute_report(scenario(), run.records)
    assert report["jobs_lost"] == 1 and report["jobs_abandoned"] == 0
    assert report["producers"]["p1"]["lost"] == 1


def test_steps_of_unknown_jobs_and_junk_records_are_ignored() -> None:
    run = clean_run()
    run.producer(3.0, "leased", "p1", job_id=777, worker="w1", attempt=1)  # never submitted
    run.records.append({"kind": "resolved", "peer": "p1"})  # no t
    run.records.append({"t": T0 + 3.0, "kind": "something_new", "peer": "x"})
    report = compute_report(scenario(), run.records)
    assert report["jobs_submitted"] == 4 and report["jobs_completed"] == 4


def test_double_resolution() -> None:
    run = Run()
    run.submit(0.0, "p1", 1)
    run.producer(1.0, "resolved", "p1", job_id=1, outcome="ok")
    run.producer(1.5, "resolved", "p1", job_id=1, outcome="JobLost")
    run.submit(0.0, "p1", 2)
    run.producer(1.0, "resolved", "p1", job_id=2, outcome="ok")
    report = compute_report(scenario(), run.records)
    assert report["futures_resolved_more_than_once"] == 1
    assert report["jobs_completed"] == 2 and report["jobs_dead"] == 0  # the first resolution counts
    assert report["latency_s"]["max"] == 1.0


# --------------------------------------------------------------------------- C4: killed worker


def killed_worker_run() -> Run:
    """w1 runs p1/1 and is SIGKILLed at 0.5 s; the lease expires, w2 runs it again."""
    run = clean_run()
    key = run.submit(0.1, "p1", 10)
    run.lease(0.2, "p1", 10, "w1")
    run.execute(0.25, None, key, "w1", pid=77)
    key2 = run.submit(0.1, "p1", 11)  # finished on w1 before the kill: not held
    run.lease(0.11, "p1", 11, "w2")
    run.execute(0.12, 0.15, key2, "w2", pid=78)
    run.resolve(0.16, "p1", 11)
    run.action(0.5, "sigkill", "w1")
    run.add(0.52, "peer_exit", "lab", target="w1", code=-9)
    run.producer(1.3, "requeued", "p1", job_id=10, attempt=2)
    run.lease(1.32, "p1", 10, "w2", attempt=2)
    run.execute(1.33, 1.36, key, "w2", pid=79)
    run.resolve(1.37, "p1", 10)
    return run


def test_killed_worker_re_leased_and_duplicate_explained() -> None:
    report = compute_report(scenario(), killed_worker_run().records)
    assert report["jobs_submitted"] == 6 and report["jobs_completed"] == 6 and report["jobs_lost"] == 0
    assert report["duplicate_executions"] == 1
    assert report["duplicates_explained"] == 1
    assert report["duplicates_unexplained"] == 0 and report["duplicates_after_crash"] == 0
    assert report["futures_resolved_more_than_once"] == 0
    assert report["workers"]["w1"]["cut_off"] == 1 and report["workers"]["w1"]["finished"] == 2
    (c4,) = report["recovery"]["c4"]
    assert c4["worker"] == "w1" and c4["action"] == "sigkill" and c4["t_s"] == 0.5
    assert c4["jobs"] == [{"job": "p1/10", "re_leased_after_s": 0.82, "to": "w2"}]
    assert c4["max_s"] == 0.82 and report["recovery"]["c4_max_s"] == 0.82
    assert report["peer_exits"] == [{"t_s": 0.52, "target": "w1", "code": -9}]


def test_killed_worker_holding_nothing() -> None:
    run = clean_run()
    run.action(3.0, "sigkill", "w2")
    (c4,) = compute_report(scenario(), run.records)["recovery"]["c4"]
    assert c4["jobs"] == [] and c4["max_s"] is None


def test_job_never_re_leased_after_kill() -> None:
    run = Run()
    key = run.submit(0.0, "p1", 1)
    run.lease(0.1, "p1", 1, "w1")
    run.execute(0.2, None, key, "w1")
    run.action(0.5, "sigkill", "w1")
    report = compute_report(scenario(), run.records)
    assert report["recovery"]["c4"][0]["jobs"] == [{"job": "p1/1", "re_leased_after_s": None, "to": None}]
    assert report["jobs_lost"] == 1  # its producer lives and never resolved it


def test_restart_of_a_worker_counts_as_a_kill() -> None:
    run = Run()
    key = run.submit(0.0, "p1", 1)
    run.lease(0.1, "p1", 1, "w1")
    run.execute(0.2, None, key, "w1", pid=1)
    run.action(0.5, "restart", "w1")
    run.lease(1.6, "p1", 1, "w1", attempt=2)  # the restarted w1 takes it again
    run.execute(1.7, 1.8, key, "w1", pid=2)
    run.resolve(1.9, "p1", 1)
    report = compute_report(scenario(), run.records)
    assert report["duplicates_explained"] == 1
    assert report["recovery"]["c4"][0]["jobs"][0] == {"job": "p1/1", "re_leased_after_s": 1.1, "to": "w1"}


# --------------------------------------------------------------------------- duplicates


def test_unexplained_duplicate() -> None:
    run = Run()
    key = run.submit(0.0, "p1", 1)
    run.lease(0.1, "p1", 1, "w1")
    run.execute(0.2, 2.2, key, "w1", pid=1)  # a long job that finished
    run.lease(1.3, "p1", 1, "w2", attempt=2)  # leased again although w1 was fine: C9 broken
    run.execute(1.4, 1.5, key, "w2", pid=2)
    run.resolve(1.6, "p1", 1)
    report = compute_report(scenario(), run.records)
    assert report["duplicate_executions"] == 1
    assert report["duplicates_unexplained"] == 1 and report["duplicates_explained"] == 0
    assert report["duplicates_unexplained_keys"] == ["p1/1"]


def test_kill_after_the_second_start_does_not_explain_it() -> None:
    run = Run()
    key = run.submit(0.0, "p1", 1)
    run.execute(0.2, None, key, "w1", pid=1)
    run.execute(0.3, 0.4, key, "w2", pid=2)
    run.action(0.5, "sigkill", "w1")
    report = compute_report(scenario(), run.records)
    assert report["duplicates_unexplained"] == 1


def test_one_cut_off_run_explains_one_duplicate_only() -> None:
    run = Run()
    key = run.submit(0.0, "p1", 1)
    run.execute(0.2, None, key, "w1", pid=1)
    run.action(0.5, "sigkill", "w1")
    run.execute(1.5, 1.6, key, "w2", pid=2)
    run.execute(1.7, 1.8, key, "w3", pid=3)
    report = compute_report(scenario(), run.records)
    assert report["duplicate_executions"] == 2
    assert report["duplicates_explained"] == 1 and report["duplicates_unexplained"] == 1


def test_retry_after_the_job_process_crashed() -> None:
    run = Run()
    key = run.submit(0.0, "p1", 1)
    run.execute(0.1, None, key, "w1", pid=1)  # os._exit in the task: no finished, w1 lives
    run.producer(0.15, "requeued", "p1", job_id=1, attempt=2)
    run.execute(0.2, None, key, "w1", pid=2)
    run.producer(0.25, "requeued", "p1", job_id=1, attempt=3)
    run.execute(0.3, None, key, "w2", pid=3)
    run.resolve(0.35, "p1", 1, "JobLost")
    report = compute_report(scenario(), run.records)
    assert report["duplicate_executions"] == 2
    assert report["duplicates_after_crash"] == 2 and report["duplicates_unexplained"] == 0
    assert report["jobs_dead"] == 1


def test_link_cut_of_the_worker_host_explains_a_duplicate_even_if_it_finished() -> None:
    run = Run()
    key = run.submit(0.0, "p1", 1)
    run.lease(0.1, "p1", 1, "w1")
    run.execute(0.2, 3.0, key, "w1", pid=1)  # finishes while cut off; result arrives late
    run.action(1.0, "link_down", "h3")
    run.lease(2.2, "p1", 1, "w2", attempt=2)
    run.execute(2.3, 2.4, key, "w2", pid=2)
    run.resolve(2.5, "p1", 1)
    run.action(4.0, "link_up", "h3")
    report = compute_report(scenario(), run.records)
    assert report["duplicates_explained"] == 1 and report["duplicates_unexplained"] == 0
    assert report["workers"]["w1"]["cut_off"] == 1


def test_link_cut_named_by_a_peer_and_on_the_producer_side() -> None:
    run = Run()
    key = run.submit(0.0, "p1", 1)
    run.execute(0.2, 1.0, key, "w1", pid=1)
    run.action(0.5, "link_down", "p1")  # a peer standing for its host h1
    run.execute(1.5, 1.6, key, "w2", pid=2)
    report = compute_report(scenario(), run.records)
    assert report["duplicates_explained"] == 1


def test_a_run_finished_before_the_cut_does_not_explain() -> None:
    run = Run()
    key = run.submit(0.0, "p1", 1)
    run.execute(0.2, 0.3, key, "w1", pid=1)
    run.action(0.5, "link_down", "h3")
    run.execute(1.5, 1.6, key, "w2", pid=2)
    assert compute_report(scenario(), run.records)["duplicates_unexplained"] == 1


# --------------------------------------------------------------------------- C5: producer loss


def killed_producer_run() -> Run:
    """p1 is SIGKILLed at 0.5 s with two jobs unresolved; w1 notices by producer id, w2 by
    endpoint; p2 goes on."""
    run = Run()
    for peer in ("p1", "p2", "w1", "w2"):
        run.action(0.0, "start", peer)
    run.ready(0.1, "p1")
    run.ready(0.1, "p2")
    run.clean_job(0.2, "p1", 1, "w1")
    key = run.submit(0.3, "p1", 2)
    run.lease(0.31, "p1", 2, "w2")
    run.execute(0.32, 0.6, key, "w2")
    run.submit(0.3, "p1", 3)
    run.action(0.5, "sigkill", "p1")
    run.add(1.7, "unreachable", "w1", producer_key="id-p1-101")
    run.add(1.9, "unreachable", "w2", producer_key="tcp://h1:5000")
    run.add(2.5, "unreachable", "w2", producer_key="tcp://h1:5000")  # a later one: not the first
    for i in range(3):
        run.clean_job(0.4 + i * 0.5, "p2", i + 1, "w1")
    return run


def test_killed_producer() -> None:
    report = compute_report(scenario(), killed_producer_run().records)
    assert report["jobs_submitted"] == 6
    assert report["jobs_completed"] == 4
    assert report["jobs_lost"] == 0 and report["jobs_abandoned"] == 2
    assert report["producers"]["p1"]["abandoned"] == 2 and report["producers"]["p2"]["completed"] == 3
    (c5,) = report["recovery"]["c5"]
    assert c5["producer"] == "p1" and c5["action"] == "sigkill" and c5["t_s"] == 0.5
    assert c5["workers"] == {"w1": 1.2, "w2": 1.4}
    assert c5["max_s"] == 1.4 and report["recovery"]["c5_max_s"] == 1.4
    assert report["recovery"]["c4"] == []  # a producer kill is not a worker kill


def test_c5_unreachable_with_producer_field_and_workers_not_up() -> None:
    run = Run()
    run.action(0.0, "start", "w1")
    run.action(0.0, "sigkill", "w2")
    run.action(0.5, "sigkill", "p1")
    run.add(1.6, "unreachable", "w1", producer="p1", producer_key="whatever")
    c5 = compute_report(scenario(), run.records)["recovery"]["c5"]
    assert c5 == [{"producer": "p1", "action": "sigkill", "t_s": 0.5, "workers": {"w1": 1.1}, "max_s": 1.1}]


def test_c5_worker_not_yet_started_is_left_out() -> None:
    spec = scenario()
    spec["workers"][1]["start_s"] = 2.0  # w2 joins late
    run = Run()
    run.add(0.0, "started", "w1", key="x", pid=1)  # the run's start
    run.action(0.5, "sigkill", "p1")
    c5 = compute_report(spec, run.records)["recovery"]["c5"]
    assert c5[0]["workers"] == {"w1": None} and c5[0]["max_s"] is None


def test_c5_link_down_of_producer_host_and_window() -> None:
    spec = scenario()
    spec["workers"][1]["host"] = "h1"  # w2 shares p1's host: keeps its link
    run = Run()
    run.ready(0.0, "p1")
    run.action(1.0, "link_down", "h1")
    run.add(2.3, "unreachable", "w1", producer_key="id-p1-101")
    run.action(3.0, "link_up", "h1")
    run.action(5.0, "link_down", "h1")
    run.add(6.0, "unreachable", "w1", producer_key="id-p1-101")
    report = compute_report(spec, run.records)
    first, second = report["recovery"]["c5"]
    assert first["action"] == "link_down" and first["workers"] == {"w1": 1.3}
    assert second["workers"] == {"w1": 1.0}
    assert report["recovery"]["c5_max_s"] == 1.3


# --------------------------------------------------------------------------- restarted producers


def test_restarted_durable_producer_keeps_its_jobs() -> None:
    spec = scenario(p1={"store": True})
    run = Run()
    run.action(0.0, "start", "p1")
    run.ready(0.1, "p1", store=True)
    key1 = run.submit(0.2, "p1", 1)
    run.lease(0.3, "p1", 1, "w1")
    run.execute(0.35, 1.5, key1, "w1", pid=1)  # finishes after the restart; re-run elsewhere
    run.submit(0.2, "p1", 2)  # never resolved by anyone
    run.clean_job(0.4, "p1", 3, "w2")
    run.action(1.0, "restart", "p1")  # new pid, same store, same job ids
    run.ready(2.0, "p1", store=True)
    run.lease(2.1, "p1", 1, "w2", attempt=2)
    run.execute(2.2, 2.3, key1, "w2", pid=2)
    run.producer(2.4, "done", "p1", job_id=1)  # restored job: a terminal event, no Future here
    report = compute_report(spec, run.records)
    assert report["jobs_submitted"] == 3
    assert report["jobs_completed"] == 2
    assert report["jobs_lost"] == 1 and report["jobs_abandoned"] == 0
    assert report["duplicate_executions"] == 1 and report["duplicates_explained"] == 1  # cut by the restart


def test_restarted_producer_without_store_abandons_its_old_jobs() -> None:
    run = Run()
    run.action(0.0, "start", "p1")
    run.ready(0.1, "p1")
    run.submit(0.2, "p1", 1)  # old process: never resolved
    run.action(1.0, "restart", "p1")
    run.ready(2.0, "p1")
    run.clean_job(2.1, "p1", 1, "w1")  # the same id in the new process
    report = compute_report(scenario(), run.records)
    assert report["jobs_submitted"] == 2
    assert report["jobs_completed"] == 1 and report["jobs_abandoned"] == 1 and report["jobs_lost"] == 0


def test_restarted_producer_without_pid_falls_back_to_actions() -> None:
    run = Run()
    run.action(0.0, "start", "p1")
    run.submit(0.2, "p1", 1)
    run.action(1.0, "sigkill", "p1")
    run.action(1.5, "start", "p1")
    run.clean_job(2.1, "p1", 1, "w1")
    for rec in run.records:
        rec.pop("pid", None)
    report = compute_report(scenario(), run.records)
    assert report["jobs_submitted"] == 2
    assert report["jobs_completed"] == 1 and report["jobs_abandoned"] == 1


def test_producer_killed_for_good_abandons_even_with_a_store() -> None:
    spec = scenario(p1={"store": True})
    run = Run()
    run.submit(0.2, "p1", 1)
    run.action(1.0, "sigkill", "p1")
    report = compute_report(spec, run.records)
    assert report["jobs_abandoned"] == 1 and report["jobs_lost"] == 0


# --------------------------------------------------------------------------- files, text, picture


def write_run(run_dir: Path, spec: dict[str, Any], records: list[dict[str, Any]]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "scenario.json").write_text(json.dumps(spec))
    lines = [json.dumps(r) for r in records]
    lines.insert(2, "{not json")  # a broken line is skipped
    (run_dir / "events.jsonl").write_text("\n".join(lines) + "\n\n")


def test_build_report_reads_the_run_directory(tmp_path: Path) -> None:
    run = killed_worker_run()
    write_run(tmp_path, scenario("s4"), run.records)
    assert build_report(tmp_path) == compute_report(scenario("s4"), run.records)


def test_format_report_mentions_the_figures() -> None:
    text = format_report(compute_report(scenario("s4"), killed_worker_run().records))
    assert "s4" in text and "jobs_lost" in text and "duplicates_explained" in text
    assert "C4 sigkill w1 at 0.500 s: p1/10 0.820 s" in text
    assert "w2" in text and "p1" in text


def test_timeline_of_a_cut_off_execution_ends_at_the_kill() -> None:
    line = compute_timeline(scenario(), killed_worker_run().records)
    cut = [r for r in line.executions if r.end is None]
    assert len(cut) == 1 and cut[0].cut_at == T0 + 0.5 and cut[0].producer == "p1"
    assert line.workers == ["w1", "w2"] and line.producers == ["p1", "p2"]


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_plot_timeline_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from freelance_rz.lab.plot import plot_timeline

    run = killed_producer_run()
    run.records.extend(killed_worker_run().records)
    path = tmp_path / "timeline.png"
    plot_timeline(scenario(), run.records, path)
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert 5_000 < len(data) < 2_000_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width == 1200 and 200 <= height <= 1000  # 12 in at 100 dpi; about 0.6 in per lane


def test_plot_timeline_of_an_empty_run(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from freelance_rz.lab.plot import plot_timeline

    path = tmp_path / "empty.png"
    plot_timeline({}, [], path)
    assert path.read_bytes().startswith(PNG_SIGNATURE)


def test_write_outputs(tmp_path: Path) -> None:
    write_run(tmp_path, scenario("s4"), killed_worker_run().records)
    report = write_outputs(tmp_path)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved == report and saved["jobs_completed"] == 6
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert report["timeline"] is None
    else:
        assert report["timeline"] == "timeline.png"
        assert (tmp_path / "timeline.png").read_bytes().startswith(PNG_SIGNATURE)


# --------------------------------------------------------------------------- the runner's record shapes


def test_go_record_is_time_zero_and_no_op_actions_count_for_nothing() -> None:
    run = Run()
    run.action(-1.0, "start", "w1")  # peers start before time zero
    run.add(0.0, "go", "lab")
    key = run.submit(0.1, "p1", 1)
    run.lease(0.2, "p1", 1, "w1")
    run.execute(0.3, None, key, "w1", pid=1)
    run.add(0.4, "action", "lab", action="sigkill", target="w2", note="not running")
    run.add(0.45, "action", "lab", action="start", target="w1", note="already running")
    run.action(0.5, "sigkill", "w1")
    run.execute(1.6, 1.7, key, "w2", pid=2)
    run.resolve(1.8, "p1", 1)
    report = compute_report(scenario(), run.records)
    assert [a["t_s"] for a in report["actions"]] == [-1.0, 0.4, 0.45, 0.5]
    assert report["actions"][1] == {"t_s": 0.4, "action": "sigkill", "target": "w2", "note": "not running"}
    assert [c["worker"] for c in report["recovery"]["c4"]] == ["w1"]  # the no-op sigkill of w2 is no kill
    assert report["duplicates_explained"] == 1
    line = compute_timeline(scenario(), run.records)
    assert line.t0 == T0 and line.t_first == T0 - 1.0


def test_link_action_with_host_target() -> None:
    run = Run()
    key = run.submit(0.0, "p1", 1)
    run.execute(0.2, None, key, "w1", pid=1)
    run.add(0.5, "action", "lab", action="link_down", target="w1", host_target="h3")
    run.execute(1.5, 1.6, key, "w2", pid=2)
    report = compute_report(scenario(), run.records)
    assert report["duplicates_explained"] == 1 and report["workers"]["w1"]["cut_off"] == 1


def test_restart_then_start_records_of_the_runner() -> None:
    """The runner writes ``restart`` and then the new process's ``start``: the producer is up."""
    spec = scenario(p1={"store": True})
    run = Run()
    run.submit(0.1, "p1", 1)
    run.action(1.0, "restart", "p1")
    run.action(1.01, "start", "p1")
    report = compute_report(spec, run.records)
    assert report["jobs_lost"] == 1 and report["jobs_abandoned"] == 0
    (c5,) = report["recovery"]["c5"]
    assert c5["action"] == "restart"


def test_execution_started_just_after_the_link_went_down_is_cut_off() -> None:
    """The runner writes link_down just before the link goes down: a JOB in flight may start
    a few ms later and finish with its result stuck until link_up."""
    run = Run()
    run.action(1.0, "link_down", "h1")  # p1's host
    key = run.submit(1.002, "p1", 1)
    run.lease(1.002, "p1", 1, "w1")
    run.execute(1.003, 1.05, key, "w1", pid=1)
    run.producer(2.0, "requeued", "p1", job_id=1, attempt=2)
    run.action(3.0, "link_up", "h1")
    run.lease(3.1, "p1", 1, "w2", attempt=2)
    run.execute(3.2, 3.25, key, "w2", pid=2)
    run.resolve(3.3, "p1", 1)
    report = compute_report(scenario(), run.records)
    assert report["duplicates_explained"] == 1 and report["workers"]["w1"]["cut_off"] == 1


def test_a_run_between_two_link_cuts_is_not_cut_off() -> None:
    run = Run()
    key = run.submit(0.0, "p1", 1)
    run.action(0.5, "link_down", "h3")
    run.action(1.0, "link_up", "h3")
    run.execute(1.5, 1.6, key, "w1", pid=1)
    run.action(2.0, "link_down", "h3")
    run.execute(2.5, 2.6, key, "w2", pid=2)
    assert compute_report(scenario(), run.records)["duplicates_unexplained"] == 1


def test_link_cut_of_a_host_shared_by_worker_and_producer_cuts_nothing() -> None:
    spec = scenario()
    spec["workers"][0]["host"] = "h1"  # w1 beside p1
    run = Run()
    run.records.clear()
    key = run.submit(0.0, "p1", 1)
    run.add(0.2, "started", "w1", key=key, pid=1)
    run.add(1.0, "finished", "w1", key=key, pid=1)
    for rec in run.records[-2:]:
        rec["host"] = "h1"
    run.action(0.5, "link_down", "h1")
    run.execute(1.5, 1.6, key, "w2", pid=2)
    assert compute_report(spec, run.records)["duplicates_unexplained"] == 1


def test_an_execution_that_never_finished_ends_when_its_producer_heard_of_the_job() -> None:
    """A job killed at its time limit or crashing writes no `finished`: its bar ends when the
    producer next recorded the job (failed, requeued, dead), not at the end of the run."""
    run = Run()
    key = run.submit(0.0, "p1", 1)
    run.execute(0.1, None, key, "w1", pid=1)  # crashed
    run.producer(0.4, "requeued", "p1", job_id=1, attempt=2)
    run.execute(0.5, None, key, "w1", pid=2)  # killed at its time limit
    run.producer(1.0, "failed", "p1", job_id=1)
    run.resolve(1.0, "p1", 1, "JobTimeout")
    run.action(9.0, "sigkill", "w2")  # the run goes on long after
    runs = sorted(compute_timeline(scenario(), run.records).executions, key=lambda r: r.start)
    assert [r.heard_at - T0 for r in runs] == pytest.approx([0.4, 1.0])
    assert [r.until(T0 + 99) - T0 for r in runs] == pytest.approx([0.4, 1.0])


def test_a_worker_killed_after_its_job_finished_but_before_the_result_arrived_explains_the_rerun() -> None:
    """The task wrote `finished`, the worker was SIGKILLed before its RESULT reached the
    producer: the result died with it, so the re-run is explained."""
    run = Run()
    key = run.submit(0.0, "p1", 1)
    run.execute(0.10, 0.12, key, "w1", pid=1)
    run.action(0.1203, "sigkill", "w1")
    run.producer(1.1, "requeued", "p1", job_id=1, attempt=2)
    run.execute(1.2, 1.3, key, "w2", pid=2)
    run.producer(1.31, "done", "p1", job_id=1)
    run.resolve(1.31, "p1", 1, "ok")
    report = compute_report(scenario(), run.records)
    assert report["duplicate_executions"] == 1 and report["duplicates_explained"] == 1

"""The dashboard's picture of the fleet (pure: rows and times passed in): up and down
producers, workers merged over producers, chart samples from the differences between polls,
a restarted producer, and malformed replies from the network."""

from __future__ import annotations

import json

from freelance_rz.core.tally import BUCKETS_S
from freelance_rz.dashboard.fleet import FORGET_S, Fleet, _quantile


def reply(endpoint: str, producer_id: str = "p1", done: int = 0, run_sum: float = 0.0, **extra):
    runs = [0] * (len(BUCKETS_S) + 1)
    runs[BUCKETS_S.index(0.01)] = done
    return {"endpoint": endpoint, "producer_id": producer_id, "group": "g", "pending": 0, "leased": 0,
            "done": done, "failed": 0, "dead": 0, "cancelled": 0, "workers": 1, "uptime_s": 1.0,
            "buckets_s": list(BUCKETS_S),
            "tasks": [{"task": "m:f", "submitted": done, "pending": 0, "leased": 0, "done": done,
                       "failed": 0, "dead": 0, "cancelled": 0, "retried": 0,
                       "wait_counts": runs, "wait_sum_s": 0.001 * done, "run_counts": runs,
                       "run_sum_s": run_sum}], **extra}


def test_throughput_and_latency_come_from_the_difference_between_polls():
    fleet = Fleet(group="g")
    fleet.update([reply("tcp://a:1", done=10, run_sum=0.05)], 100.0)
    fleet.update([reply("tcp://a:1", done=110, run_sum=0.55)], 101.0)
    first, second = list(fleet.samples)
    assert first["finished"] == 0 and first["run_ms"] is None  # nothing to compare yet
    assert second["finished"] == 100 and abs(second["run_ms"] - 5.0) < 1e-6
    assert 5.0 < second["run_p95_ms"] <= 10.0  # in the (5 ms, 10 ms] bucket
    fleet.update([reply("tcp://a:1", producer_id="p2", done=3, run_sum=0.01)], 102.0)  # restarted
    assert list(fleet.samples)[-1]["finished"] == 0
    assert json.dumps(fleet.snapshot(102.0))  # JSON-ready


def test_a_producer_that_stops_answering_is_down_then_forgotten_once_unannounced():
    fleet = Fleet()
    fleet.update([reply("tcp://a:1", done=5), reply("tcp://b:1", "pb")], 0.0)
    fleet.update([reply("tcp://a:1", done=5), {"endpoint": "tcp://b:1", "error": "no answer"}], 1.0)
    producers = {p["endpoint"]: p for p in fleet.snapshot(1.0)["producers"]}
    assert producers["tcp://a:1"]["up"] and producers["tcp://a:1"]["done"] == 5
    assert not producers["tcp://b:1"]["up"] and producers["tcp://b:1"]["error"] == "no answer"
    assert producers["tcp://b:1"]["id"] == "pb" and producers["tcp://b:1"]["stale_s"] == 1.0
    fleet.update([reply("tcp://a:1", done=5)], 2.0)  # b no longer announced
    fleet.update([reply("tcp://a:1", done=5)], 3.0 + FORGET_S)
    assert [p["endpoint"] for p in fleet.snapshot(4.0 + FORGET_S)["producers"]] == ["tcp://a:1"]


def test_workers_are_merged_over_producers():
    fleet = Fleet()
    fleet.update([
        reply("tcp://a:1", worker_list=[{"id": "w-1", "last_seen_s": 0.5, "running": 2, "parked": 1},
                                        {"id": "w-2", "last_seen_s": 3.0, "running": 0, "parked": 4}]),
        reply("tcp://b:1", "pb", worker_list=[{"id": "w-1", "last_seen_s": 0.1, "running": 1, "parked": 1,
                                                "resources": {"gpu": 1}, "labels": {"zone": "a"}}]),
    ], 0.0)
    workers = {w["id"]: w for w in fleet.snapshot(0.0)["workers"]}
    assert workers["w-1"]["busy"] == 3 and workers["w-1"]["free"] == 1 and workers["w-1"]["last_seen_s"] == 0.1
    assert workers["w-1"]["resources"] == {"gpu": 1} and sorted(workers["w-1"]["producers"]) == ["p1", "pb"]
    assert workers["w-2"]["busy"] == 0 and workers["w-2"]["free"] == 4


def test_malformed_replies_never_break_the_page():
    fleet = Fleet()
    fleet.update([
        {"endpoint": "tcp://a:1", "producer_id": 7},  # a wrong type: down, says why
        reply("tcp://b:1", "pb", tasks=[{"task": b"\xff", "done": "x"}, 3, None],
              running=[{"job_id": "1"}], failures=[{"message": "m" * 10_000, "traceback": None}],
              waiting=[{"task": "m:render", "jobs": 12, "message": "12 jobs of m:render need gpu=1",
                        "resources": {"gpu": 1.0, 7: "x"}, "labels": "nope"}],
              worker_list="nope"),
        reply("tcp://c:1", "pc", waiting=[{"requirement": "gpu=1", "jobs": 12}]),  # no task
    ], 0.0)
    snapshot = fleet.snapshot(0.0)
    json.dumps(snapshot)
    producers = {p["endpoint"]: p for p in snapshot["producers"]}
    assert not producers["tcp://a:1"]["up"] and "producer_id" in producers["tcp://a:1"]["error"]
    assert producers["tcp://b:1"]["up"]
    assert not producers["tcp://c:1"]["up"] and "waiting[0].task" in producers["tcp://c:1"]["error"]
    assert snapshot["tasks"][0]["done"] is None and len(snapshot["failures"][0]["message"]) == 500
    assert snapshot["waiting"] == [{"producer": "pb", "key": "waiting", "value": [
        {"task": "m:render", "jobs": 12, "needs": "gpu=1 7=x", "why": "12 jobs of m:render need gpu=1"},
    ]}]


def test_jobs_no_worker_can_run_are_shown_by_task_needs_and_why():
    """A matching producer's ``waiting`` entries (core/fleet.py's own) as the page's rows."""
    from freelance_rz.core.fleet import Waiting
    from freelance_rz.core.match import Needs

    entry = Waiting(Needs.of("m:render", {"gpu": 1}, {"zone": "eu"}), 12,
                    "no connected worker offers gpu=1").as_status()
    fleet = Fleet()
    fleet.update([reply("tcp://b:1", "pb", waiting=[entry])], 0.0)
    assert fleet.snapshot(0.0)["waiting"] == [{"producer": "pb", "key": "waiting", "value": [
        {"task": "m:render", "jobs": 12, "needs": "gpu=1 zone=eu", "why": "no connected worker offers gpu=1"},
    ]}]


def test_quantile_is_linear_within_its_bucket():
    assert _quantile([0.01, 0.1], [0, 10, 0], 0.5) == 55.0
    assert _quantile([0.01, 0.1], [0, 0, 4], 0.95) == 100.0  # past the last bound: the bound
    assert _quantile([0.01], [0, 0], 0.5) is None

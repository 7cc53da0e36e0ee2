"""Mixed fleets over real sockets (issue 14, DESIGN §8): claims say what their worker can run,
and the producer hands each worker only such jobs. Real producers, real `freelance-worker`
processes (discovery on loopback), raw DEALER/ROUTER sockets where a peer misbehaves or speaks
an older protocol version."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import wait

import msgpack
import pytest
import zmq

import rzgpu
import rzmoda
import rzmodb
import rztasks
from conftest import TESTS_DIR
from freelance_rz.core import wire as p

pytestmark = pytest.mark.timeout(120)


def wait_until(condition, timeout_s: float, what: str, interval_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(interval_s)


def results(futures, timeout_s: float = 60.0) -> list:
    done, not_done = wait(futures, timeout=timeout_s)
    assert not not_done, f"{len(not_done)} of {len(futures)} jobs did not finish"
    failures = [f.exception() for f in futures if f.exception() is not None]
    assert not failures, [str(exc)[:200] for exc in failures[:5]]
    return [f.result() for f in futures]


def test_the_issue_mixed_fleet_runs_every_job(make_producer, start_worker):
    """The run of issue 14: one worker with --tasks moda, one with --tasks modb, 20 + 20
    jobs submitted before either starts. Before: 22 completed, 18 TaskNotAllowed."""
    producer = make_producer()
    futures = [producer.submit(rzmoda.fa, i) for i in range(20)]
    futures += [producer.submit(rzmodb.fb, i) for i in range(20)]
    start_worker("wa", tasks=("rzmoda",))
    start_worker("wb", tasks=("rzmodb",))
    done = results(futures)
    assert len(done) == 40
    assert {(r["kind"], r["worker"]) for r in done} == {("a", "wa"), ("b", "wb")}
    assert producer.status()["failed"] == 0


def test_three_kinds_on_three_workers_no_capability_failure(make_producer, start_worker, tmp_path):
    """Three kinds of jobs (two modules, and GPU renders) on three workers that each run one
    kind; every job completes on a worker that can run it."""
    producer = make_producer()
    gpu = producer.options(resources={"gpu": 1})
    futures = []
    for i in range(10):
        futures += [producer.submit(rzmoda.fa, i), producer.submit(rzmodb.fb, i),
                    gpu.submit(rzgpu.render, str(tmp_path), 0.01)]
    start_worker("wa", tasks=("rzmoda",))
    start_worker("wb", tasks=("rzmodb",))
    start_worker("wg", "--resources", "gpu=1", tasks=("rzgpu",))
    done = results(futures)
    assert [r["worker"] for r in done] == ["wa", "wb", "wg"] * 10
    assert not any(r.get("gpu_was_busy") for r in done)


def test_a_gpu_worker_runs_one_gpu_job_at_a_time_and_cpu_jobs_beside_it(
        make_producer, start_worker, tmp_path):
    """A worker of 3 slots and gpu=1: the renders (holding the GPU) never overlap, while its
    other slots run CPU jobs, as the tasks' own records show."""
    producer = make_producer()
    renders = [producer.options(resources={"gpu": 1}).submit(rzgpu.render, str(tmp_path), 0.3)
               for _ in range(5)]
    cpus = [producer.submit(rzgpu.cpu, str(tmp_path), 0.05) for _ in range(40)]
    start_worker("wg", "--slots", "3", "--resources", "gpu=1,mem_gb=8", tasks=("rzgpu",))
    rendered, cpu_done = results(renders), results(cpus)
    assert [r["gpu_was_busy"] for r in rendered] == [False] * 5  # never two at once
    assert any(r["gpu_busy_meanwhile"] for r in cpu_done)  # other slots ran CPU jobs meanwhile


def test_claims_to_two_producers_race_for_one_gpu_and_never_overrun_it(
        make_producer, start_worker, tmp_path):
    """Both producers have GPU jobs when the worker's claims (gpu=1 free) reach them, so both
    hand it one: the second JOB is declined (back to the head of its queue), never run over
    budget; every job completes."""
    first, second = make_producer(), make_producer()
    futures = [producer.options(resources={"gpu": 1}).submit(rzgpu.render, str(tmp_path), 0.1)
               for producer in (first, second) for _ in range(4)]
    start_worker("wg", "--slots", "2", "--resources", "gpu=1", tasks=("rzgpu",))
    done = results(futures)
    assert [r["gpu_was_busy"] for r in done] == [False] * 8


def test_a_job_needing_a_label_nobody_has_waits_is_reported_and_runs_later(
        make_producer, start_worker):
    producer = make_producer()
    start_worker("w1")
    job = producer.options(labels={"zone": "mars"}).submit(rztasks.whoami)
    assert producer.submit(rztasks.add, 1, 2).result(timeout=30) == 3  # w1 is connected

    def reported():
        return producer.status()["waiting"]

    wait_until(reported, 10, "the job to be reported")
    (entry,) = reported()
    assert entry["task"] == "rztasks:whoami" and entry["jobs"] == 1
    assert entry["labels"] == {"zone": "mars"}
    assert entry["message"] == ("1 job of rztasks:whoami needs label zone=mars: no connected "
                                "worker of module rztasks carries label zone=mars")
    assert not job.done()
    # freelance-status says it, as JSON and in its table
    status = freelance_status("--connect", producer.endpoint, "--json")
    assert status.returncode == 0, status.stderr
    (row,) = json.loads(status.stdout)
    assert row["waiting"][0]["message"] == entry["message"]
    table = freelance_status("--connect", producer.endpoint)
    assert table.returncode == 0, table.stderr
    shown = " ".join(table.stdout.split())
    assert "waiting: jobs no connected worker can run" in shown, table.stdout
    assert "needs label zone=mars" in shown, table.stdout
    # a worker that carries the label starts: it runs the job
    start_worker("w2", "--label", "zone=mars", "--label", "pool=batch")
    assert job.result(timeout=30)["worker"] == "w2"
    assert producer.status()["waiting"] == []


def freelance_status(*args: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from freelance_rz.cli import status_main; sys.exit(status_main())"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=30, cwd=TESTS_DIR)


def test_priorities_and_fifo_hold_among_matching_jobs(make_producer, start_worker, tmp_path):
    """One slot, so the execution order is the order the producer hands jobs out: by
    priority, then FIFO, among the jobs the worker can run; the others are not in the way."""
    producer = make_producer()
    log_path = str(tmp_path / "order.log")
    plan = [(1, 0), (2, 5), (3, 0), (4, -1), (5, 5), (6, 9), (7, 0)]
    futures = []
    others = []
    for i, priority in plan:
        futures.append(producer.options(priority=priority).submit(rzmoda.fa, i, log_path))
        others.append(producer.options(priority=priority + 100).submit(rzmodb.fb, i))
    start_worker("wa", "--slots", "1", tasks=("rzmoda",))
    results(futures)
    ran = [int(line) for line in open(log_path).read().split()]
    assert ran == [6, 2, 5, 1, 3, 7, 4]
    assert not any(f.done() for f in others)
    for future in others:
        future.cancel()


class Dealer:
    """A raw protocol client."""

    def __init__(self, endpoint: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVTIMEO, 5000)
        self.sock.connect(endpoint)

    def send_body(self, verb: bytes, body: dict, signature: bytes = p.SIGNATURE) -> None:
        self.sock.send_multipart([signature, verb, msgpack.packb(body, use_bin_type=True)])

    def recv(self) -> list[bytes]:
        return self.sock.recv_multipart()

    def close(self) -> None:
        self.sock.close(0)


BAD_CAPABILITIES = [
    {"tasks": "rztasks"},
    {"tasks": []},
    {"tasks": ["rztasks"] * 257},
    {"tasks": [1]},
    {"tasks": ["not a module"]},
    {"tasks": ["x" * 5000]},
    {"tasks": ["rztasks"], "resources": {"gpu": -1}},
    {"tasks": ["rztasks"], "resources": {"gpu": float("nan")}},
    {"tasks": ["rztasks"], "resources": {"gpu": float("inf")}},
    {"tasks": ["rztasks"], "resources": {"gpu": "1"}},
    {"tasks": ["rztasks"], "resources": {"gpu": True}},
    {"tasks": ["rztasks"], "resources": [["gpu", 1]]},
    {"tasks": ["rztasks"], "resources": {f"r{i}": 1 for i in range(100)}},
    {"tasks": ["rztasks"], "resources": {"bad name": 1}},
    {"tasks": ["rztasks"], "labels": {"zone": 1}},
    {"tasks": ["rztasks"], "labels": {"zone": "x" * 10_000}},
    {"tasks": ["rztasks"], "labels": ["zone", "eu"]},
]


def test_malformed_capability_fields_get_err_and_the_producer_keeps_serving(
        make_producer, start_worker):
    producer = make_producer()
    future = producer.submit(rztasks.add, 4, 5)
    dealer = Dealer(producer.endpoint)
    try:
        for rid, fields in enumerate(BAD_CAPABILITIES, start=1):
            dealer.send_body(b"CLAIM", {"rid": rid, "wait_ms": 0, **fields})
            signature, verb, body = dealer.recv()
            err = msgpack.unpackb(body)
            assert (signature, verb, err["rid"], err["code"]) == (p.SIGNATURE, b"ERR", rid, p.E_INVALID), err
            assert "CLAIM: field" in err["message"]
        # a carried claim with a bad field: the RESULT it rides on is refused with it
        dealer.send_body(b"RESULT", {"rid": 900, "job_id": 1, "lease_id": 1, "ok": True,
                                     "payload": b"\xc0", "claim": {"rid": 901, "wait_ms": 0,
                                                                   "tasks": ["rztasks"] * 300}})
        err = msgpack.unpackb(dealer.recv()[2])
        assert (err["rid"], err["code"]) == (900, p.E_INVALID)
        # a huge list: over the body's size limit (ERR 1), still no harm done
        dealer.send_body(b"CLAIM", {"rid": 999, "wait_ms": 0, "tasks": ["m"] * 70_000})
        assert msgpack.unpackb(dealer.recv()[2])["code"] == p.E_MALFORMED
        assert not future.done()  # nothing was handed out on a malformed claim
        status = producer.status()
        assert status["bad_messages"] == len(BAD_CAPABILITIES) + 2
    finally:
        dealer.close()
    start_worker("w1")
    assert future.result(timeout=30) == 9


def test_an_frz1_worker_gets_an_error_naming_both_versions_never_a_job(make_producer):
    producer = make_producer()
    future = producer.submit(rztasks.add, 1, 1)
    old = Dealer(producer.endpoint)
    try:
        old.send_body(b"CLAIM", {"rid": 7, "wait_ms": 0}, signature=b"FRZ1")  # as FRZ1 claims
        signature, verb, body = old.recv()
        err = msgpack.unpackb(body)
        assert (signature, verb, err["rid"], err["code"]) == (b"FRZ1", b"ERR", None, p.E_VERSION)
        assert "version 1" in err["message"] and "version 2 (FRZ2)" in err["message"]
        assert not future.done()
        assert producer.status()["leased"] == 0
    finally:
        old.close()


def test_a_worker_stops_using_a_producer_of_an_older_version(start_worker):
    """An FRZ1 producer answers every FRZ2 message with its own ERR 2 (as FRZ1 does); the
    worker reads it, says both versions in its log and stops claiming there."""
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    worker = start_worker("w1", connect=f"tcp://127.0.0.1:{port}")
    answered = 0
    try:
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        deadline = time.monotonic() + 30
        while "speaks another protocol version" not in worker.log():
            assert time.monotonic() < deadline, worker.log()
            if poller.poll(100):
                identity, *_ = router.recv_multipart()
                router.send_multipart([identity, b"FRZ1", b"ERR", msgpack.packb(
                    {"rid": None, "code": 2, "message": "protocol version b'2' not spoken; this is 1"})])
                answered += 1
        assert "this worker speaks FRZ2" in worker.log()
        assert "not spoken; this is 1" in worker.log()
        later = []
        while poller.poll(3000):  # a worker that went on would claim again within a second
            later.append(router.recv_multipart())
        assert later == [], later
    finally:
        router.close(0)
    assert answered >= 1


def test_a_durable_producer_keeps_the_requirements_of_its_jobs(tmp_path, start_worker):
    """Requirements are journaled with the job: restarted on its store, the producer still
    holds a GPU job back from a worker without a GPU."""
    from conftest import GROUP, LOOPBACK
    from freelance_rz import Producer

    store = tmp_path / "jobs.sqlite"
    first = Producer(GROUP, interfaces=LOOPBACK, store=store, announce=False).start()
    job_id = first.options(resources={"gpu": 1}).submit(rzgpu.render, str(tmp_path), 0.01).job_id
    first.close()
    again = Producer(GROUP, interfaces=LOOPBACK, store=store).start()
    try:
        start_worker("cpu", tasks=("rzgpu",))
        assert again.submit(rzgpu.cpu, str(tmp_path), 0.0).result(timeout=30)["worker"] == "cpu"
        wait_until(lambda: again.status()["waiting"], 10, "the GPU job to be reported")
        assert again.status()["waiting"][0]["resources"] == {"gpu": 1}
        start_worker("gpu", "--resources", "gpu=1", tasks=("rzgpu",))
        assert again.get(job_id).result(timeout=30)["worker"] == "gpu"
    finally:
        again.close()


def test_bad_resources_and_labels_on_the_command_line_are_refused(tmp_path):
    for args, words in [
        (["--resources", "gpu"], "expected NAME=VALUE"),
        (["--resources", "gpu=lots"], "the amount must be a number"),
        (["--resources", "gpu=-1"], "resources['gpu'] must be a number"),
        (["--resources", "gpu=nan"], "resources['gpu'] must be a number"),
        (["--resources", "gpu=1,gpu=2"], "'gpu' is given twice"),
        (["--label", "zone"], "expected NAME=VALUE"),
        (["--label", "bad name=x"], "must be 1 to 64 of"),
    ]:
        run = subprocess.run(
            [sys.executable, "-m", "freelance_rz.cli", "--connect", "tcp://127.0.0.1:9",
             "--tasks", "rztasks", *args], capture_output=True, text=True, timeout=30,
            cwd=TESTS_DIR,
        )
        assert run.returncode == 2 and words in run.stderr, (args, run.stderr)


def test_job_requirement_options_are_checked_at_options(make_producer):
    producer = make_producer(announce=False)
    for kwargs, error in [
        ({"resources": ["gpu"]}, TypeError), ({"resources": {"gpu": "1"}}, TypeError),
        ({"resources": {"gpu": -1}}, ValueError), ({"resources": {"gpu": float("nan")}}, ValueError),
        ({"resources": {1: 1}}, TypeError), ({"resources": {"": 1}}, ValueError),
        ({"labels": {"zone": 1}}, TypeError), ({"labels": "zone=eu"}, TypeError),
        ({"labels": {f"l{i}": "x" for i in range(33)}}, ValueError),
    ]:
        with pytest.raises(error, match="resources|labels"):
            producer.options(**kwargs)
    options = producer.options(resources={"gpu": 0.5, "mem_gb": 0}, labels={"zone": "eu"})
    assert (options.resources, options.labels) == ({"gpu": 0.5, "mem_gb": 0}, {"zone": "eu"})


def test_the_tutorial_routing_section_runs_as_written(tmp_path):
    """docs/tutorial.md section 10: its files, its three worker commands (the third started
    once the app says it waits), and the output it shows."""
    import os
    import re
    import signal

    from conftest import GROUP
    from test_examples import doc_blocks

    text = (TESTS_DIR.parent / "docs" / "tutorial.md").read_text()
    tutorial = doc_blocks(text, "tutorial-file")
    files = doc_blocks(text, "routing-file")
    assert set(files) == {"render.py", "routing.py"}
    group = f"{GROUP}-routing"
    (tmp_path / "tasks.py").write_text(tutorial["tasks.py"])
    (tmp_path / "render.py").write_text(files["render.py"])
    (tmp_path / "routing.py").write_text(
        files["routing.py"].replace('group="tutorial"', f"group={group!r}"))
    section = text[text.index("## 10. Routing"):text.index("## Next")]
    commands = re.findall(r"^(freelance-worker .*)$", section, re.M)
    assert len(commands) == 2
    shown = re.search(r"It prints:\n\n```text\n(.*?)```", section, re.S)[1].splitlines()
    assert "`eu: 144`" in section
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    started = []

    def start(args: list[str], name: str) -> subprocess.Popen:
        args = [a if a != "tutorial" else group for a in args]
        log = open(tmp_path / f"{name}.log", "wb")
        proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        started.append(proc)
        return proc

    worker = [sys.executable, "-m", "freelance_rz.cli"]
    plain = "freelance-worker --discover --tasks tasks --group tutorial --slots 2".split()
    try:
        start(worker + plain[1:], "plain")
        start(worker + commands[0].split()[1:], "gpu")
        app = subprocess.Popen([sys.executable, "routing.py"], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
        started.append(app)
        out = []
        for line in app.stdout:
            out.append(line.rstrip("\n"))
            if line.startswith("waiting for a worker"):
                break
        assert out == shown, (out, app.stderr.read() if app.poll() is not None else "")
        start(worker + commands[1].split()[1:], "eu")
        rest, err = app.communicate(timeout=60)
        assert app.returncode == 0, err
        assert rest.strip() == "eu: 144"
    finally:
        for proc in started:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(10)


def test_a_worker_says_when_it_ignores_a_producer_of_another_version(start_worker, tmp_path):
    """An announced producer of the worker's group that speaks protocol version 1 is not
    used, and the worker says so (it used to skip it in silence, at DEBUG)."""
    from conftest import GROUP
    from hostile.hostile_kit import MdnsForger, txt

    props = dict(txt("oldproducer1", GROUP, "tcp://127.0.0.1:9"), v="1")
    with MdnsForger(tmp_path, announce=[("oldproducer1", props)]):
        worker = start_worker("w1")
        wait_until(lambda: "speaks protocol version 1" in worker.log(), 30, "no warning")
    assert "this side version 2" in worker.log()
    assert "oldproducer1 at tcp://" not in worker.log()  # never used

"""Trace context across real processes: an application (its own process, the OpenTelemetry
SDK with an in-memory exporter) submits jobs inside a span; the worker's job process (the SDK
set up by its task module) records its spans and hands them back. The producer's span of each
job is a child of the submitting span, the worker's run span a child of the producer's (the
JOB carried its traceparent), and the task's own span a child of the run span; a failing job
marks both spans as errors. Without an active tracer provider a JOB carries no trace
context."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import zmq

from conftest import GROUP, TESTS_DIR

pytest.importorskip("opentelemetry.sdk")
pytestmark = pytest.mark.timeout(120)


def test_spans_link_submitter_producer_worker_and_task(start_worker):
    app = subprocess.Popen([sys.executable, "rztraceapp.py", GROUP], cwd=TESTS_DIR, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        endpoint = app.stdout.readline().strip()
        assert endpoint.startswith("tcp://"), app.stderr.read()
        start_worker("traced", "--tasks", "rztraced", "--slots", "1", connect=endpoint)
        out, err = app.communicate(timeout=90)
        assert app.returncode == 0, err
    finally:
        if app.poll() is None:
            app.kill()
            app.wait()
    report = json.loads(out.strip().splitlines()[-1])
    assert report["doubled"] == 42 and report["error"] == "ValueError"
    producer = {span["name"]: span for span in report["producer"]}
    worker = {span["name"]: span for span in report["worker"]}
    request = producer.get("request") or pytest.fail(json.dumps(report, indent=1))
    for task, status in (("rztraced:work", "UNSET"), ("rztraced:boom", "ERROR")):
        submit, run = producer[f"submit {task}"], worker[f"run {task}"]
        assert submit["kind"] == "PRODUCER" and run["kind"] == "CONSUMER"
        assert submit["trace_id"] == run["trace_id"] == request["trace_id"]
        assert submit["parent"] == request["span_id"]  # the submitting code's span
        assert run["parent"] == submit["span_id"]  # linked by the JOB's traceparent
        assert submit["status"] == run["status"] == status
        assert run["attributes"]["freelance_rz.task"] == task
        assert run["attributes"]["messaging.message.id"] == submit["attributes"]["messaging.message.id"]
    assert worker["inside work"]["parent"] == worker["run rztraced:work"]["span_id"]
    assert producer["submit rztraced:spans"]["trace_id"] != request["trace_id"]  # a trace of its own


def test_no_trace_context_without_a_tracer_provider(make_producer):
    """This test process has the API but no tracer provider set: JOBs carry none."""
    from freelance_rz import tracing
    from freelance_rz.core import wire as w

    assert not tracing.active()
    producer = make_producer(announce=False)
    future = producer.submit("rztasks:add", 1, 2)
    assert future.span is None and future.traceparent is None
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.ROUTING_ID, b"raw-0123456789abcdef0123456789abcdef")
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(producer.endpoint)
        sock.send_multipart(w.encode(w.Claim(rid=1, wait_ms=5000, tasks=("rztasks",))))
        assert sock.poll(10_000)
        job = w.decode_reply(sock.recv_multipart())
        assert isinstance(job, w.Job) and job.traceparent is None
        sock.send_multipart(w.encode(w.Result(rid=2, job_id=job.job_id, lease_id=job.lease_id, ok=True,
                                              payload=b"\x03")))
        assert future.result(timeout=10) == 3
    finally:
        sock.close()

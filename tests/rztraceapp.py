"""An application for the tracing test, run as its own process: it sets up the OpenTelemetry
SDK (spans kept in memory: importing rztraced does it), prints its producer's endpoint, runs three jobs (one a coroutine) inside a span of
its own, asks the worker's job process for its spans, and prints every span as JSON."""

from __future__ import annotations

import json
import sys

from opentelemetry import trace
from rztraced import EXPORTER, describe

from freelance_rz import JobFailed, Producer

with Producer(group=sys.argv[1], interfaces=["127.0.0.1"], announce=False) as producer:
    print(producer.endpoint, flush=True)
    with trace.get_tracer("rztraceapp").start_as_current_span("request"):
        doubled = producer.submit("rztraced:work", 21).result(timeout=60)
        adoubled = producer.submit("rztraced:awork", 21).result(timeout=60)
        failed = producer.submit("rztraced:boom")
        try:
            failed.result(timeout=60)
        except JobFailed as exc:
            error = exc.remote_type
    worker_spans = producer.submit("rztraced:spans").result(timeout=60)
print(json.dumps({"doubled": doubled, "adoubled": adoubled, "error": error, "worker": worker_spans,
                  "producer": [describe(span) for span in EXPORTER.get_finished_spans()]}), flush=True)

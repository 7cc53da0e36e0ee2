"""``--log-format json``: a worker writes one JSON object per line, with the job's id, task and
producer on lines about a job and its own name on every line; the formatter alone keeps the
standard logging fields and escapes what a peer sent."""

from __future__ import annotations

import json
import logging
import time

import pytest

from freelance_rz import JobTimeout
from freelance_rz.logfmt import JsonFormatter

pytestmark = pytest.mark.timeout(60)


def test_worker_json_lines_name_the_job(make_producer, start_worker):
    producer = make_producer(announce=False)
    worker = start_worker("jsonlog", "--slots", "1", "--log-format", "json", connect=producer.endpoint)
    future = producer.options(timeout_s=0.3).submit("rztasks:steps", 100, 0.1)
    with pytest.raises(JobTimeout):
        future.result(timeout=30)
    deadline = time.monotonic() + 10
    while "time limit" not in worker.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = [json.loads(line) for line in worker.log().splitlines() if line.strip()]
    assert lines and all({"ts", "level", "logger", "message"} <= set(line) for line in lines)
    assert all(line["worker"] == "jsonlog" for line in lines)
    [killed] = [line for line in lines if "time limit" in line["message"]]
    assert killed["job_id"] == future.job_id and killed["task"] == "rztasks:steps"
    assert killed["level"] == "WARNING" and killed["producer"].startswith("tcp://127.0.0.1:")


def test_formatter_fields_and_escapes():
    record = logging.LogRecord("freelance_rz.worker", logging.ERROR, __file__, 1,
                               "bad \x1b[31m %s", ("text\n",), None)
    record.job_id, record.task = 7, "m:f"
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    line = JsonFormatter({"component": "dashboard"}).format(record)
    assert "\n" not in line and "\x1b" not in line
    parsed = json.loads(line)
    assert parsed["message"] == "bad \x1b[31m text\n" and parsed["job_id"] == 7 and parsed["task"] == "m:f"
    assert parsed["component"] == "dashboard" and "ValueError: boom" in parsed["exc_info"]
    assert parsed["ts"].endswith("Z") and parsed["level"] == "ERROR"

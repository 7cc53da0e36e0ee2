"""The service of app.py written for asyncio: handlers ``await producer.submit_async(...)``.

A tiny JSON-lines server (plain asyncio, the shape of an aiohttp handler) takes requests such
as ``{"op": "count", "text": "..."}`` and answers each from a job on the workers; the event
loop never blocks while a job runs. The script then plays the client: it opens a few
connections, sends requests at the same time, prints the answers and stops the server.

Next to your own workers (see examples/worker/README.md)::

    python async_app.py

On its own, starting two workers and stopping them at the end::

    python async_app.py --spawn-workers 2

Exit code 0 when every request got the answer it should.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from freelance_rz import JobFailed, JobLost, Producer

WORKER_DIR = Path(__file__).resolve().parent.parent / "worker"
sys.path.insert(0, str(WORKER_DIR))  # the --spawn-workers helper lives beside tasks.py
from spawn import example_args, example_workers  # noqa: E402

JOB_DEADLINE_S = 30.0  # a request whose job takes longer is answered 504 (and its job cancelled)
SUM_DEADLINE_S = 1.0  # the "sum" requests get less time: a slow one is cut short on purpose
WORKER_WAIT_S = 30.0  # how long to wait for a first worker before giving up

REQUESTS: list[dict[str, Any]] = [
    {"op": "count", "text": "to be or not to be"},
    {"op": "checksum", "text": "hello"},
    {"op": "parse", "line": "Ada, 36"},
    {"op": "parse", "line": "Bob, thirty"},  # the task raises ValueError: answered 400
    {"op": "sum", "n": 3},  # 3 steps of 0.05 s: in time
    {"op": "sum", "n": 100},  # 5 s of work, past SUM_DEADLINE_S: 504, the job is cancelled
    {"op": "reverse", "text": "abc"},  # no such operation: 404 without any job
]


async def handle(producer: Producer, request: dict[str, Any]) -> dict[str, Any]:
    """One request in, one answer out, like a web handler. Awaiting a job never blocks the
    event loop; cancelling the await (``asyncio.wait_for``) cancels the job on its worker."""
    op = request.get("op")
    try:
        if op == "count":
            counts = await asyncio.wait_for(
                producer.submit_async("tasks:word_count", request["text"]), JOB_DEADLINE_S
            )
            return {"status": 200, "words": counts["words"], "top": counts["top"]}
        if op == "checksum":
            digest = await asyncio.wait_for(
                producer.submit_async("tasks:checksum", request["text"].encode()), JOB_DEADLINE_S
            )
            return {"status": 200, "sha256": digest}
        if op == "parse":
            record = await asyncio.wait_for(
                producer.submit_async("tasks:parse_record", request["line"]), JOB_DEADLINE_S
            )
            return {"status": 200, "record": record}
        if op == "sum":
            total = await asyncio.wait_for(
                producer.submit_async("tasks:slow_sum", request["n"], 0.05), SUM_DEADLINE_S
            )
            return {"status": 200, "sum": total}
    except JobFailed as exc:  # the task raised on the worker: the client's input was bad
        return {"status": 400, "error": f"{exc.remote_type}: {exc.remote_message}"}
    except JobLost as exc:
        return {"status": 500, "error": str(exc)}
    except asyncio.TimeoutError:  # the job was cancelled when wait_for gave up on it
        return {"status": 504, "error": "the job took too long and was cancelled"}
    return {"status": 404, "error": f"no operation {op!r}"}


async def serve_connection(
    producer: Producer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """A connection: JSON requests in, JSON answers out, one per line, in order."""
    try:
        while line := await reader.readline():
            answer = await handle(producer, json.loads(line))
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
    finally:
        writer.close()


async def ask(port: int, request: dict[str, Any]) -> dict[str, Any]:
    """The client side: one connection, one request, one answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(json.dumps(request).encode() + b"\n")
        await writer.drain()
        return json.loads(await reader.readline())  # type: ignore[no-any-return]
    finally:
        writer.close()
        await writer.wait_closed()


async def run(group: str, interfaces: list[str]) -> int:
    producer = Producer(group, interfaces=interfaces)
    # starting binds and announces over mDNS (about 1.5 s): do it off the event loop
    await asyncio.to_thread(producer.start)
    try:
        print(f"producer {producer.producer_id} on {producer.endpoint}, group {group!r}")
        # the "sum" deadline is short: let a worker find the producer before taking requests
        if not await wait_for_workers(producer, WORKER_WAIT_S):
            print(f"no worker of group {group!r} showed up in {WORKER_WAIT_S:g} s")
            return 1
        server = await asyncio.start_server(
            lambda r, w: serve_connection(producer, r, w), "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]
        print(f"serving JSON lines on 127.0.0.1:{port}")
        async with server:
            answers = await asyncio.gather(*(ask(port, request) for request in REQUESTS))
        for request, answer in zip(REQUESTS, answers, strict=True):
            print(f"{json.dumps(request)} -> {json.dumps(answer)}")
        expected = [200, 200, 200, 400, 200, 504, 404]
        return 0 if [a["status"] for a in answers] == expected else 1
    finally:
        # A worker learns that its running job was cancelled at its next heartbeat (within a
        # quarter of the lease, 0.25 s): stay up that long so it aborts the job now rather
        # than finish it for a producer that is gone. Then shut down, off the event loop.
        await asyncio.sleep(0.5)
        await asyncio.to_thread(producer.shutdown, cancel_futures=True)


async def wait_for_workers(producer: Producer, timeout_s: float) -> bool:
    """Wait until at least one worker has claimed from this producer (``status()``)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        if (await asyncio.to_thread(producer.status))["workers"]:
            return True
        await asyncio.sleep(0.1)
    return False


def main(argv: list[str] | None = None) -> int:
    args = example_args(argv, __doc__, "async")
    with example_workers(args):
        return asyncio.run(run(args.group, args.interface))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)

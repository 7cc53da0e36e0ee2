"""Submit jobs, wait for them and handle what can go wrong: a tour of the client side.

1. one job, waited for with ``result(timeout=...)``;
2. a batch, taken as it finishes with ``concurrent.futures.as_completed``; bad records fail
   with ``JobFailed``, which carries the remote exception's type, message and traceback;
3. a time limit with ``producer.options(timeout_s=...)``: ``JobTimeout``;
4. progress of a running job, then ``future.cancel()`` (the worker aborts it);
5. ``producer.status()``.

The tasks are those of ``examples/worker/tasks.py``; this script imports that module and
passes its functions to ``submit`` (they travel as ``"tasks:word_count"`` and so on).

Next to your own workers (see examples/worker/README.md)::

    python client.py

On its own, starting two workers and stopping them at the end::

    python client.py --spawn-workers 2

Exit code 0 when every step behaved as described.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import CancelledError, as_completed
from pathlib import Path

from freelance_rz import JobFailed, JobTimeout, Producer

WORKER_DIR = Path(__file__).resolve().parent.parent / "worker"
sys.path.insert(0, str(WORKER_DIR))  # tasks.py and the --spawn-workers helper live there
import tasks  # noqa: E402  (the same module the workers run with --tasks tasks)
from spawn import example_args, example_workers  # noqa: E402

WAIT_S = 30.0  # longest wait for any one result (a worker may still be starting)
RECORDS = ["Ada, 36", "Grace, 45", "Linus", "Margaret, 33", "Ken, forty"]


def one_job(producer: Producer) -> bool:
    print("1. one job")
    future = producer.submit(tasks.checksum, b"hello world")
    digest = future.result(timeout=WAIT_S)  # the task's return value
    print(f"   job {future.job_id}: sha256(b'hello world') = {digest[:16]}...")
    return digest.startswith("b94d27b9934d3e08")


def batch(producer: Producer) -> bool:
    print(f"2. a batch of {len(RECORDS)} records, in the order they finish")
    futures = {producer.submit(tasks.parse_record, line): line for line in RECORDS}
    parsed, failed = [], []
    for future in as_completed(futures, timeout=WAIT_S):
        try:
            parsed.append(future.result())
        except JobFailed as exc:  # parse_record raised on the worker
            failed.append(exc)
            print(f"   {futures[future]!r}: {exc.remote_type}: {exc.remote_message}")
    names = sorted(record["name"] for record in parsed)
    print(f"   parsed {len(parsed)}: {', '.join(names)}; failed {len(failed)}")
    if failed:  # the worker's traceback, as it would be logged
        last_line = failed[0].remote_traceback.strip().splitlines()[-1]
        print(f"   remote traceback ends with: {last_line}")
    return len(parsed) == 3 and len(failed) == 2


def time_limit(producer: Producer) -> bool:
    print("3. a time limit")
    limited = producer.options(timeout_s=0.5)  # jobs submitted through it get 0.5 s each
    future = limited.submit(tasks.slow_sum, 100, 0.1)  # would take 10 s
    try:
        future.result(timeout=WAIT_S)
    except JobTimeout as exc:  # also a TimeoutError; not retried
        print(f"   slow_sum(100) was stopped: {exc.remote_message}")
        return isinstance(exc, TimeoutError)
    print("   slow_sum(100) finished within its time limit?!")
    return False


def progress_and_cancel(producer: Producer) -> bool:
    print("4. progress, then cancel")
    future = producer.submit(tasks.slow_sum, 100, 0.05)  # 5 s of work
    deadline = time.monotonic() + WAIT_S
    while producer.progress(future) is None or producer.progress(future).done < 5:
        if time.monotonic() > deadline:
            print("   no progress reported")
            return False
        time.sleep(0.05)
    progress = producer.progress(future)
    print(f"   running: {progress.done:g} of {progress.total:g} ({progress.message})")
    cancelled = future.cancel()  # aborts it on the worker within a quarter of the lease
    try:
        future.result(timeout=1)
    except CancelledError:
        print(f"   cancelled: {cancelled}")
        return cancelled
    return False


def status(producer: Producer) -> bool:
    print("5. status")
    info = producer.status()
    print(
        f"   done {info['done']}, failed {info['failed']}, cancelled {info['cancelled']}, "
        f"pending {info['pending']}; {info['workers']} worker(s) seen"
    )
    for worker in info["worker_list"]:
        print(f"   worker {worker['id']}: {worker['running']} running")
    # 1 + 3 results; 2 records and the timed-out job failed; the slow sum was cancelled
    return (info["done"], info["failed"], info["cancelled"]) == (4, 3, 1)


def tour(producer: Producer) -> int:
    print(f"producer {producer.producer_id} on {producer.endpoint}, group {producer.group!r}")
    steps = [one_job, batch, time_limit, progress_and_cancel, status]
    ok = [step(producer) for step in steps]
    # a worker hears that its job was cancelled at its next heartbeat (within 0.25 s here):
    # stay up that long, so it aborts the job rather than finish it for a producer that is gone
    time.sleep(0.5)
    print("all steps as expected" if all(ok) else f"unexpected: {ok}")
    return 0 if all(ok) else 1


def main(argv: list[str] | None = None) -> int:
    args = example_args(argv, __doc__, "client")
    with example_workers(args):
        with Producer(args.group, interfaces=args.interface) as producer:
            try:
                return tour(producer)
            except BaseException:
                producer.close()  # Ctrl-C or a bug: cancel what is left rather than wait
                raise


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)

"""A service that embeds a Producer and hands its work to pulling workers (plain threads).

Request threads, as a threaded web server has them, each submit a job and wait for its
result; then a batch goes out with ``producer.map``. The tasks are those of
``examples/worker/tasks.py``, named ``"tasks:word_count"`` and so on: the app does not need
to import them.

Next to your own workers (see examples/worker/README.md)::

    python app.py

On its own, starting two workers and stopping them at the end::

    python app.py --spawn-workers 2

Discovery stays on 127.0.0.1 unless ``--interface`` (or ``$FREELANCE_RZ_INTERFACES``) says
otherwise. Exit code 0 when every request got its answer.
"""

from __future__ import annotations

import concurrent.futures
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from freelance_rz import JobFailed, JobLost, Producer

WORKER_DIR = Path(__file__).resolve().parent.parent / "worker"
sys.path.insert(0, str(WORKER_DIR))  # the --spawn-workers helper lives beside tasks.py
from spawn import example_args, example_workers  # noqa: E402

RESULT_TIMEOUT_S = 30.0  # how long a request waits for its job before giving up
DOCUMENTS = {
    "haiku.txt": "An old silent pond\nA frog jumps into the pond\nSplash! Silence again.\n",
    "todo.txt": "buy milk\nbuy bread\nfix the bike\ncall the bank about the bike\n",
    "motto.txt": "Pull, do not push. Pull when idle, and only then pull.\n",
}
BATCH = [
    "the quick brown fox",
    "jumps over the lazy dog",
    "and the dog sleeps on",
]


def handle_request(producer: Producer, name: str, text: str) -> str:
    """What one request thread does: submit jobs, wait for their results, answer."""
    counting = producer.submit("tasks:word_count", text, top=2)
    hashing = producer.submit("tasks:checksum", text.encode())
    try:
        counts = counting.result(timeout=RESULT_TIMEOUT_S)
        digest = hashing.result(timeout=RESULT_TIMEOUT_S)
    except JobFailed as exc:  # the task raised on the worker
        return f"{name}: error {exc.remote_type}: {exc.remote_message}"
    except JobLost as exc:  # the workers running it kept dying
        return f"{name}: error: {exc}"
    except (TimeoutError, concurrent.futures.TimeoutError):  # the same class from 3.11 on
        counting.cancel()  # nobody waits for them any more
        hashing.cancel()
        return f"{name}: error: no result within {RESULT_TIMEOUT_S:g} s (are workers running?)"
    top = ", ".join(f"{word} x{n}" for word, n in counts["top"])
    return (
        f"{name}: {counts['lines']} line(s), {counts['words']} words (top: {top}), "
        f"sha256 {digest[:12]}"
    )


def serve(producer: Producer) -> int:
    print(f"producer {producer.producer_id} on {producer.endpoint}, group {producer.group!r}")
    with ThreadPoolExecutor(4, thread_name_prefix="request") as request_threads:
        answers = list(request_threads.map(
            lambda item: handle_request(producer, *item), DOCUMENTS.items()
        ))
    for answer in answers:
        print(answer)

    # a batch: one job per line, results in the order of the lines
    counts = list(producer.map("tasks:word_count", BATCH, timeout=RESULT_TIMEOUT_S))
    print(f"batch: {len(BATCH)} lines, {sum(c['words'] for c in counts)} words")

    status = producer.status()
    print(
        f"status: {status['done']} jobs done, {status['failed']} failed, "
        f"{status['workers']} worker(s) seen"
    )
    return 1 if any(": error" in answer for answer in answers) else 0


def main(argv: list[str] | None = None) -> int:
    args = example_args(argv, __doc__, "service")
    with example_workers(args):
        # `with` starts the producer (bind, mDNS announce: about 1.5 s) and, on the way out,
        # waits until every job is resolved (Executor.shutdown(wait=True))
        with Producer(args.group, interfaces=args.interface) as producer:
            try:
                return serve(producer)
            except BaseException:
                producer.close()  # Ctrl-C or a bug: cancel what is left rather than wait
                raise


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)

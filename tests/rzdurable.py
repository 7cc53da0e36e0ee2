"""A durable producer in its own process, for kill-and-restart tests.

    python rzdurable.py STORE GROUP submit N DELAY_S   submit N whoami(DELAY_S) jobs
    python rzdurable.py STORE GROUP resume N            wait for jobs 1..N of an earlier run
    python rzdurable.py STORE GROUP mark N PATH DELAY_S submit N mark(PATH, DELAY_S) jobs
    python rzdurable.py STORE GROUP mixed 3 PATH DELAY_S LATER_S
        job 1 mark(PATH, DELAY_S), job 2 echo(job 1's result) (it waits for job 1),
        job 3 whoami() not before LATER_S seconds from now

Prints "endpoint ...", then "done JOB_ID JSON" as each job finishes, then "all done"; and
"event KIND JOB_ID ATTEMPT AT" for each step of a job (``Producer(on_event=...)``).
$RZ_LEASE_S: the producer's lease_s (default: the library's).
"""

import json
import os
import sys
import threading
from concurrent.futures import as_completed

from freelance_rz import JobFailed, JobLost, Producer

import rztasks


def outcome(future):
    try:
        return future.result()
    except (JobFailed, JobLost) as exc:
        return {"error": type(exc).__name__, "message": str(exc)}


_lock = threading.Lock()  # lines from the main thread and the I/O thread (events) never mix


def say(*words):
    with _lock:
        print(*words, flush=True)


if __name__ == "__main__":
    store, group, mode, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    options = {"lease_s": float(os.environ["RZ_LEASE_S"])} if "RZ_LEASE_S" in os.environ else {}
    with Producer(group, interfaces=["127.0.0.1"], store=store, **options,
                  on_event=lambda e: say("event", e.kind, e.job_id, e.attempt, e.at)) as producer:
        say("endpoint", producer.endpoint)
        if mode == "submit":
            futures = [producer.submit(rztasks.whoami, float(sys.argv[5])) for _ in range(count)]
        elif mode == "mark":
            futures = [producer.submit(rztasks.mark, sys.argv[5], float(sys.argv[6]))
                       for _ in range(count)]
        elif mode == "mixed":
            first = producer.submit(rztasks.mark, sys.argv[5], float(sys.argv[6]))
            futures = [first, producer.submit(rztasks.echo, first),
                       producer.options(delay_s=float(sys.argv[7])).submit(rztasks.whoami)]
        else:
            futures = [producer.get(job_id) for job_id in range(1, count + 1)]
        for future in as_completed(futures):
            say("done", future.job_id, json.dumps(outcome(future)))
        say("all done")

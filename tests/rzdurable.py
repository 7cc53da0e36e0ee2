"""A durable producer in its own process, for kill-and-restart tests.

    python rzdurable.py STORE GROUP submit N DELAY_S   submit N whoami(DELAY_S) jobs
    python rzdurable.py STORE GROUP resume N            wait for jobs 1..N of an earlier run

Prints "endpoint ...", then "done JOB_ID JSON" as each job finishes, then "all done".
"""

import json
import sys
from concurrent.futures import as_completed

from freelance_rz import JobFailed, JobLost, Producer

import rztasks


def outcome(future):
    try:
        return future.result()
    except (JobFailed, JobLost) as exc:
        return {"error": type(exc).__name__, "message": str(exc)}


if __name__ == "__main__":
    store, group, mode, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    with Producer(group, interfaces=["127.0.0.1"], store=store) as producer:
        print("endpoint", producer.endpoint, flush=True)
        if mode == "submit":
            futures = [producer.submit(rztasks.whoami, float(sys.argv[5])) for _ in range(count)]
        else:
            futures = [producer.get(job_id) for job_id in range(1, count + 1)]
        for future in as_completed(futures):
            print("done", future.job_id, json.dumps(outcome(future)), flush=True)
        print("all done", flush=True)

"""A durable producer that dies (os._exit) in the store flush that would write its first
finished result, after a pause that lets any reply already queued leave. For the test that
"acknowledged" means "durable". Usage: python rzcrashy.py STORE GROUP

Prints "endpoint ..." once it serves; submits one rztasks:add(1, 2) job.
"""

import os
import sys
import time

from freelance_rz import Producer
from freelance_rz.producer import store as store_module

import rztasks

real_flush = store_module.JobStore.flush


def crashing_flush(self):
    if any(result.state == "done" for result in self._fin.values()):
        time.sleep(0.5)  # a reply sent before this flush has left by now
        os._exit(9)
    real_flush(self)


store_module.JobStore.flush = crashing_flush

if __name__ == "__main__":
    path, group = sys.argv[1], sys.argv[2]
    with Producer(group, interfaces=["127.0.0.1"], store=path, announce=False) as producer:
        producer.submit(rztasks.add, 1, 2)
        print("endpoint", producer.endpoint, flush=True)
        time.sleep(60)

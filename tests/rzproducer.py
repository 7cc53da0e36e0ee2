"""A producer in its own process, for tests that kill one: submits N jobs, prints its endpoint,
then waits for them. Usage: python rzproducer.py N DELAY_S"""

import os
import sys
from concurrent.futures import FIRST_COMPLETED, wait

from freelance_rz import Producer

import rztasks

if __name__ == "__main__":
    count, delay_s = int(sys.argv[1]), float(sys.argv[2])
    with Producer(os.environ["RZ_GROUP"], interfaces=["127.0.0.1"]) as producer:
        futures = [producer.submit(rztasks.whoami, delay_s) for _ in range(count)]
        print(producer.endpoint, flush=True)
        wait(futures, return_when=FIRST_COMPLETED)
        print("first job done", flush=True)
        for future in futures:
            future.result()
        print("all done", flush=True)

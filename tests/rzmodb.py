"""Task module "b" of the mixed-fleet tests: only workers with ``--tasks rzmodb`` run it."""

import os


def fb(i):
    return {"kind": "b", "i": i, "worker": os.environ.get("RZ_WORKER", "?")}

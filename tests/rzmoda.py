"""Task module "a" of the mixed-fleet tests: only workers with ``--tasks rzmoda`` run it."""

import os


def fa(i, log_path=None):
    """Say which worker ran job ``i``; with ``log_path``, append ``i`` to it (the order of
    execution, for a worker of one slot)."""
    if log_path:
        with open(log_path, "a") as log:
            log.write(f"{i}\n")
    return {"kind": "a", "i": i, "worker": os.environ.get("RZ_WORKER", "?")}

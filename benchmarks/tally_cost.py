#!/usr/bin/env python
"""What the producer's tally (core/tally.py: per-task counts, wait and run histograms, for
STATUS detail, metrics and the dashboard) costs its I/O thread per job: a ledger submit,
claim and resolve without and with the tally fed from its journal. Pure CPU, no sockets;
the minimum of 15 rounds of 20,000 jobs, so other load on the host matters less.

    python benchmarks/tally_cost.py
"""

from __future__ import annotations

import random
import time

from freelance_rz.core import payload as pl
from freelance_rz.core.ledger import Ledger
from freelance_rz.core.tally import Tally
from freelance_rz.producer.journal import TallyTap


class Turn:
    now = 0.0  # the I/O thread's wall-clock time of the turn


def per_job_us(tally: bool, jobs: int = 20_000) -> float:
    ledger = Ledger(lease_s=10, max_attempts=3, rng=random.Random(1))
    if tally:
        ledger.journal = TallyTap(ledger.journal, Tally(), Turn())  # type: ignore[arg-type]
    call, value = pl.pack_call("benchtasks:inc", [1], {}), pl.pack_value(2)
    start = time.perf_counter()
    for job_id in range(1, jobs + 1):
        ledger.submit(job_id, call)
        lease = ledger.claim(b"w", 0.0)
        assert lease is not None
        ledger.resolve(b"w", job_id, lease.lease_id, True, value)
    return (time.perf_counter() - start) / jobs * 1e6


def main() -> None:
    without, with_ = [], []
    for _ in range(15):
        without.append(per_job_us(False))
        with_.append(per_job_us(True))
    print(f"ledger submit + claim + resolve per job (min of 15 rounds): {min(without):.2f} us "
          f"without the tally, {min(with_):.2f} us with it (+{min(with_) - min(without):.2f} us)")


if __name__ == "__main__":
    main()

"""S7 task module "a": only workers with ``--tasks kind_a`` run its jobs (see benchtasks)."""

from __future__ import annotations

import benchtasks


def job(key, seconds):
    """A job of kind a: ``seconds`` of sleep, its execution recorded; returns the worker."""
    return benchtasks.sleep_job(key, seconds)


def whoami(seconds=0.0):
    """Warm-up: which worker runs this."""
    return benchtasks.whoami(seconds)

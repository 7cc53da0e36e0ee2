"""Tasks of the resource tests: ``render`` holds "the GPU" (submitted with
``resources={"gpu": 1}``), ``cpu`` does not. The GPU is a marker file made with O_EXCL, so two
renders at once on one worker are seen by the tasks themselves (an execution record, not a
timing): the second finds the marker and says so."""

import os
import time


def render(marker_dir, seconds=0.3):
    """Hold the GPU for ``seconds``. Returns (worker, whether the GPU was already held)."""
    marker = os.path.join(marker_dir, f"gpu-{os.environ.get('RZ_WORKER', '?')}")
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return {"worker": os.environ.get("RZ_WORKER", "?"), "gpu_was_busy": True}
    try:
        time.sleep(seconds)
    finally:
        os.close(fd)
        os.unlink(marker)
    return {"worker": os.environ.get("RZ_WORKER", "?"), "gpu_was_busy": False}


def cpu(marker_dir, seconds=0.05):
    """A CPU job. Returns (worker, whether a render held this worker's GPU when it started)."""
    marker = os.path.join(marker_dir, f"gpu-{os.environ.get('RZ_WORKER', '?')}")
    busy = os.path.exists(marker)
    time.sleep(seconds)
    return {"worker": os.environ.get("RZ_WORKER", "?"), "gpu_busy_meanwhile": busy}

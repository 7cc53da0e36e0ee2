"""The main of a job process (the child side of a worker's pool).

A job process is started by its worker as ``python -c ENTRY FD`` (FD: its end of the pipe),
or forked from a worker that has not started any thread yet (its first job processes, see
:meth:`freelance_rz.worker.slots.JobProcess.start`), leads a process group of its own and keeps the default signal dispositions (see
:mod:`freelance_rz.worker.slots`). It reads its set-up (the first frame: task modules,
``--init``, pool, slots, the worker's ``sys.path``), imports the task modules, runs the
``--init`` function once, says it is ready, then runs jobs as its pool does
(:mod:`freelance_rz.worker.runners`) until the pipe closes. Everything on the pipe is in the
pipe codec of :mod:`freelance_rz.core.payload`.

Only the standard library, msgpack and the project's pure core are imported here before the
task modules, so a job process is ready soon after its interpreter starts.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import traceback
from collections.abc import Callable
from typing import Any

from ..core import payload as pl
from .pipe import Pipe, attach

_PR_SET_PDEATHSIG = 1
# Blocked in the worker while it starts a job process, unblocked by the job process once it has
# a process group of its own: a Ctrl-C to the worker's group in between never reaches it.
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
# What a job process runs (python -c ENTRY FD).
ENTRY = "from freelance_rz.worker.jobprocess import main; main()"



def main(fd: int | None = None) -> None:
    """Body of a job process: set up, then run jobs until the worker closes the pipe
    (``fd``, its end of the pipe: by default the first command-line argument)."""
    _die_with_parent()
    _own_process_group()
    pipe = Pipe(int(sys.argv[1]) if fd is None else fd)
    body = pipe.read()
    if body is None:
        return
    setup = pl.decode_to_job_process(body)
    assert isinstance(setup, pl.Setup)
    sys.path[:] = setup.path
    from . import runners

    try:
        runner = runners.make(setup.pool, pipe, setup.modules, setup.slots)
        init = init_function(setup.init)
    except BaseException as exc:  # noqa: BLE001 - reported to the worker, which stops
        return _start_failed(pipe, f"{type(exc).__name__}: {exc}")
    try:
        runner.start(init)
    except BaseException:  # noqa: BLE001 - reported to the worker, which stops
        return _start_failed(pipe, f"--init {setup.init} raised:\n{traceback.format_exc().strip()}")
    attach(pipe)
    pipe.write(pl.encode_from_job_process(pl.Ready()))
    try:
        runner.serve()
    except OSError:  # the worker has gone
        pass


def _start_failed(pipe: Pipe, message: str) -> None:
    try:
        pipe.write(pl.encode_from_job_process(pl.StartFailed(message)))
    except OSError:
        pass


def init_function(spec: str | None) -> Callable[[], Any] | None:
    """The ``--init`` function named by ``"module:function"`` (imported here), or None.

    Raises:
        LookupError: the module has no such callable.
        ImportError: the module cannot be imported (or raises while imported).
    """
    if spec is None:
        return None
    module_name, _, name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"--init {spec}: cannot import {module_name}: {exc}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise LookupError(f"--init {spec}: module {module_name} has no function {name!r}")
    return fn  # type: ignore[no-any-return]


def _own_process_group() -> None:
    """Lead a process group of its own, then restore the default signal dispositions.

    The worker decides when jobs stop (C6): a Ctrl-C in its terminal goes to the worker's
    process group, which this process has just left. The worker started it with SIGINT and
    SIGTERM blocked, so one sent to that group in between is pending here: it is discarded
    (ignoring a pending signal drops it) before they are unblocked. Nothing stays ignored or
    blocked, so programs a task starts get the defaults too (they are inherited across exec).
    """
    os.setpgid(0, 0)
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's default: KeyboardInterrupt
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)  # e.g. ignored by a shell's `worker &`


def _die_with_parent() -> None:
    """On Linux, ask the kernel to SIGKILL this process when its parent dies (prctl)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)
    except (OSError, AttributeError):
        pass

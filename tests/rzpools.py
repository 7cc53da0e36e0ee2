"""Tasks and --init functions for the pool tests (workers run with cwd = tests/)."""

import asyncio
import os
import threading
import time

_inits = 0
_arrived = 0
_cond = threading.Condition()
_hoard = []


def setup():
    """--init: count this process's set-ups, and log its pid to $RZ_INIT_LOG."""
    global _inits
    _inits += 1
    with open(os.environ["RZ_INIT_LOG"], "a") as log:
        log.write(f"{os.getpid()}\n")


async def asetup():
    """--init, as a coroutine function."""
    await asyncio.sleep(0)
    setup()


def broken_setup():
    raise ValueError("no model file here")


def inits():
    """What this process's --init did (its count here, and this process's pid)."""
    return {"pid": os.getpid(), "inits": _inits}


def pid():
    return os.getpid()


async def apid():
    await asyncio.sleep(0)
    return os.getpid()


async def aadd(a, b):
    await asyncio.sleep(0.01)
    return a + b


async def afail(message):
    await asyncio.sleep(0)
    raise ValueError(message)


def meet(n, timeout_s=30.0):
    """Wait (in a thread) until ``n`` jobs of this process have arrived here: True when they
    all did, so they ran at once."""
    global _arrived
    with _cond:
        _arrived += 1
        _cond.notify_all()
        return _cond.wait_for(lambda: _arrived >= n, timeout_s)


async def ameet(n, timeout_s=30.0):
    """:func:`meet` for coroutines on one event loop."""
    global _arrived
    _arrived += 1
    deadline = time.monotonic() + timeout_s
    while _arrived < n and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return _arrived >= n


def spin(seconds, path=None):
    """Hold the GIL in a Python loop for ``seconds`` (a cancel stops it); write ``path`` in
    ``finally``, so a test sees cleanup ran."""
    try:
        deadline = time.monotonic() + seconds
        n = 0
        while time.monotonic() < deadline:
            n += 1
        return n
    finally:
        if path:
            with open(path, "w") as out:
                out.write("cleaned up")


async def asleep(seconds, path=None):
    try:
        await asyncio.sleep(seconds)
        return "slept"
    finally:
        if path:
            with open(path, "w") as out:
                out.write("cleaned up")


def block(seconds):
    """Sleep in C: a cancel cannot reach this thread until it wakes."""
    time.sleep(seconds)
    return "woke"


async def stubborn(seconds):
    """A coroutine that swallows cancellation."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            await asyncio.sleep(deadline - time.monotonic())
        except asyncio.CancelledError:
            pass
    return "done"


def hoard(mib):
    """Keep ``mib`` MiB resident in this process (a leak)."""
    _hoard.append(b"x" * (mib * 2**20))
    return os.getpid()


class Unprintable(Exception):
    """An exception whose str() and repr() raise."""

    def __str__(self):
        raise RuntimeError("str fails")

    def __repr__(self):
        raise RuntimeError("repr fails")


class BadNotes(Exception):
    """An exception whose traceback cannot be formatted (its __notes__ raise)."""

    @property
    def __notes__(self):
        raise RuntimeError("notes fail")


def raise_unprintable():
    raise Unprintable()


async def araise_unprintable():
    await asyncio.sleep(0)
    raise Unprintable()


def raise_bad_notes():
    raise BadNotes("with notes")


def raise_surrogate():
    raise ValueError("bad \udcff text")


class Hostile(ConnectionError):
    """A ConnectionError whose ``retry_in_s`` (read for a Retry's delay) raises."""

    @property
    def retry_in_s(self):
        raise RuntimeError("retry_in_s fails")


def raise_hostile():
    raise Hostile("hostile")


def _run_count(path):
    with open(path, "a") as log:
        log.write("run\n")
    with open(path) as log:
        return len(log.read().splitlines())


async def aflaky(path, fails):
    """rztasks.flaky as a coroutine: ConnectionRefusedError until ``fails`` runs are
    recorded in ``path``, then the number of runs."""
    await asyncio.sleep(0)
    runs = _run_count(path)
    if runs <= fails:
        raise ConnectionRefusedError(f"run {runs}")
    return runs


async def aretry_me(path, times, in_s):
    """Raise Retry(in_s) for the first ``times`` runs, then return the number of runs."""
    from freelance_rz import Retry

    await asyncio.sleep(0)
    runs = _run_count(path)
    if runs <= times:
        raise Retry(in_s=in_s)
    return runs

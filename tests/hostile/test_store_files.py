"""Issue 11 #11 (files): a job store and its ``-wal``/``-shm`` files are private to their
owner. A new store is created 0600 (so SQLite makes its WAL 0600 too), an existing one that
group or others can write is refused naming the file and ``chmod 600 PATH``, and one that
they can read is used with a warning giving the same advice.

Before the fix a store made under the usual umask 022 was 0644 (job arguments and results
readable by every local user), and a 0666 store was used as it was.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest
import rztasks

from freelance_rz import Producer, StoreError
from freelance_rz.producer.store import JobStore


def mode(path: Path | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def companions(path: Path) -> dict[str, int]:
    """Mode of each of the store's files that exists now: '' (the database), -wal, -shm."""
    found = {}
    for suffix in ("", "-wal", "-shm"):
        p = Path(f"{path}{suffix}")
        if p.exists():
            found[suffix] = mode(p)
    return found


def make_file(path: Path, file_mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, file_mode)
    os.fchmod(fd, file_mode)
    os.close(fd)


def test_a_producer_run_leaves_every_store_file_0600(make_producer, start_worker, tmp_path):
    path = tmp_path / "jobs.sqlite"
    old_umask = os.umask(0o022)  # the usual one: before the fix, files came out 0644
    try:
        producer = make_producer(store=path)
        start_worker("w1")
        assert producer.submit(rztasks.add, 2, 3).result(timeout=30) == 5
        while_open = companions(path)
        producer.close()
    finally:
        os.umask(old_umask)
    print(f"store file modes while the producer ran: "
          f"{ {k or 'db': oct(v) for k, v in while_open.items()} }")
    assert "" in while_open and "-wal" in while_open  # WAL mode: the journal is there
    assert while_open == {suffix: 0o600 for suffix in while_open}
    assert mode(path) == 0o600


def test_a_new_store_is_0600_whatever_the_umask(tmp_path):
    path = tmp_path / "jobs.sqlite"
    old_umask = os.umask(0o000)
    try:
        store = JobStore(path)
        store.add(1, b"payload", 3)
        store.flush()
        modes = companions(path)
        store.close()
    finally:
        os.umask(old_umask)
    assert modes == {suffix: 0o600 for suffix in modes} and "-wal" in modes


@pytest.mark.parametrize("suffix", ["", "-wal", "-shm"], ids=["db", "wal", "shm"])
@pytest.mark.parametrize("bad_mode", [0o666, 0o620, 0o602], ids=["0666", "0620", "0602"])
def test_a_store_file_others_can_write_is_refused(tmp_path, suffix, bad_mode):
    path = tmp_path / "jobs.sqlite"
    JobStore(path).close()
    target = Path(f"{path}{suffix}")
    if target.exists():
        os.chmod(target, bad_mode)
    else:
        make_file(target, bad_mode)
    before = target.read_bytes()
    with pytest.raises(StoreError) as caught:
        JobStore(path)
    message = str(caught.value)
    assert caught.value.path == str(target)
    assert f"chmod 600 {target}" in message and f"{bad_mode:04o}" in message, message
    assert target.read_bytes() == before and mode(target) == bad_mode  # left as it was


def test_a_producer_refuses_a_world_writable_store(tmp_path):
    path = tmp_path / "jobs.sqlite"
    JobStore(path).close()
    os.chmod(path, 0o666)
    with pytest.raises(StoreError, match="chmod 600"):
        Producer(store=path, interfaces=["127.0.0.1"])


def test_a_store_others_can_read_is_used_with_a_warning(tmp_path, caplog):
    path = tmp_path / "jobs.sqlite"
    store = JobStore(path)
    store.add(1, b"payload", 3)
    store.close()
    os.chmod(path, 0o644)
    with caplog.at_level(logging.WARNING, logger="freelance_rz.store"):
        store = JobStore(path)
    try:
        assert [job.job_id for job in store.restore().pending] == [1]
    finally:
        store.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert str(path) in warnings[0] and f"chmod 600 {path}" in warnings[0]
    assert "readable by group or others" in warnings[0]


def test_a_private_store_opens_without_a_warning(tmp_path, caplog):
    path = tmp_path / "jobs.sqlite"
    JobStore(path).close()
    with caplog.at_level(logging.WARNING, logger="freelance_rz.store"):
        JobStore(path).close()
    assert not [r for r in caplog.records if r.name == "freelance_rz.store"]

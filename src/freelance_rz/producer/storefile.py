"""Opening a job store file safely: its modes, its header, its schema (see
:mod:`freelance_rz.producer.store` for what the store is and what it promises).

Opening never empties, recreates or "repairs" an existing file; whatever is wrong with one
raises :class:`~freelance_rz.StoreError` naming the path and the problem, and leaves it as it
was.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sqlite3
import stat
from collections.abc import Iterator

from ..errors import StoreError

log = logging.getLogger("freelance_rz.store")
SCHEMA_VERSION = 2  # 2: jobs.retries, due, deps; schedules (issue 15); version 1 is upgraded
#: ``PRAGMA application_id`` of a job store: "FRZ1" read as a big-endian int.
APPLICATION_ID = 0x46525A31
#: seconds to wait for the file lock when opening (a dying predecessor releasing it).
LOCK_TIMEOUT_S = 1.0

_SQLITE_MAGIC = b"SQLite format 3\x00"
#: the files of a store whose modes are checked: the database and SQLite's WAL companions.
_COMPANIONS = ("", "-wal", "-shm")
_NEW_FILE_MODE = 0o600

_SCHEDULES = ("CREATE TABLE schedules (schedule_id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,"
              " spec BLOB NOT NULL, created REAL NOT NULL, last REAL, paused INTEGER NOT NULL,"
              " job_id INTEGER)")
#: tables added after version 1: name -> (the version that added it, its statement)
_NEW_TABLES = {"schedules": (2, _SCHEDULES)}
_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID",
    "CREATE TABLE jobs (job_id INTEGER PRIMARY KEY, payload BLOB NOT NULL,"
    " attempt INTEGER NOT NULL, max_attempts INTEGER NOT NULL, lease_id INTEGER,"
    " retries INTEGER NOT NULL DEFAULT 0, due REAL, deps BLOB)",
    "CREATE TABLE leases (job_id INTEGER NOT NULL, lease_id INTEGER NOT NULL,"
    " worker BLOB NOT NULL, PRIMARY KEY (job_id, lease_id)) WITHOUT ROWID",
    "CREATE TABLE results (job_id INTEGER PRIMARY KEY, state TEXT NOT NULL,"
    " payload BLOB NOT NULL, finished_at REAL NOT NULL)",
    "CREATE INDEX results_by_finished_at ON results (finished_at)",
    _SCHEDULES,
)
#: what each schema version adds to the one before: (table, column definition)
_UPGRADES = {2: (("jobs", "retries INTEGER NOT NULL DEFAULT 0"), ("jobs", "due REAL"),
                 ("jobs", "deps BLOB"))}
_COLUMNS = {
    "meta": ("key", "value"),
    "jobs": ("job_id", "payload", "attempt", "max_attempts", "lease_id", "retries", "due", "deps"),
    "leases": ("job_id", "lease_id", "worker"),
    "results": ("job_id", "state", "payload", "finished_at"),
    "schedules": ("schedule_id", "name", "spec", "created", "last", "paused", "job_id"),
}


def sqlite_error(path: str, doing: str, exc: BaseException) -> StoreError:
    """A :class:`StoreError` saying what an SQLite error means for the store at ``path``."""
    # sqlite_errorname exists from Python 3.11; the messages are SQLite's own
    name = getattr(exc, "sqlite_errorname", "")
    text = str(exc)
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "database is locked" in text:
        return StoreError(
            path, f"is in use by another job store (another producer on the same file?): {exc}"
        )
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or (
        "malformed" in text or "not a database" in text
    ):
        return StoreError(path, f"is damaged ({exc}) while {doing}; the file was left as it is")
    return StoreError(path, f"SQLite error while {doing}: {exc}")


def open_store(path: str) -> sqlite3.Connection:
    """Open (creating it 0600 when missing) and check a store file; returns its connection,
    holding the file's lock.

    Raises:
        StoreError: see the module docstring of :mod:`freelance_rz.producer.store`.
    """
    _create_private_file(path)
    _check_modes(path)
    _check_header(path)
    try:
        conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=LOCK_TIMEOUT_S
        )
    except sqlite3.Error as exc:
        raise StoreError(path, f"cannot be opened: {exc}") from exc
    try:
        # before the first read: hold the file lock for the life of the connection
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        new, version = _validate(path, conn)
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(path, f"cannot be put in WAL mode (journal_mode is {mode!r})")
        conn.execute("PRAGMA synchronous=NORMAL")
        if new:
            _create(path, conn)
        elif version < SCHEMA_VERSION:
            _upgrade(conn, version)
    except sqlite3.Error as exc:
        conn.close()
        raise sqlite_error(path, "opening it", exc) from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _check_modes(path: str) -> None:
    """Refuse a store file, ``-wal`` or ``-shm`` that group or others can write; warn
    about one they can read (POSIX only)."""
    if os.name != "posix":  # pragma: no cover - modes mean nothing elsewhere
        return
    for suffix in _COMPANIONS:
        file = path + suffix
        try:
            mode = stat.S_IMODE(os.stat(file).st_mode)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise StoreError(file, f"cannot be read: {exc}") from exc
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise StoreError(
                file,
                f"is writable by group or others (mode {mode:04o}): anyone could change the "
                f"jobs and results it holds; run `chmod 600 {file}` if it is yours",
            )
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            log.warning(
                "job store %r is readable by group or others (mode %04o): they can read "
                "every job's arguments and results; run `chmod 600 %s`", file, mode, file,
            )


def _create_private_file(path: str) -> None:
    """Make a missing store file, empty and mode 0600, before SQLite creates it with
    the umask's mode (its -wal and -shm files then get 0600 too)."""
    try:
        fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
            _NEW_FILE_MODE,
        )
    except FileExistsError:
        return
    except IsADirectoryError:
        raise StoreError(path, "is a directory, not a job store file") from None
    except OSError as exc:
        hint = " (its directory must exist)" if isinstance(exc, FileNotFoundError) else ""
        raise StoreError(path, f"cannot be opened: cannot create it: {exc.strerror}{hint}") from exc
    try:
        if os.name == "posix":
            os.fchmod(fd, _NEW_FILE_MODE)  # exactly 0600 whatever the umask
    finally:
        os.close(fd)

def _check_header(path: str) -> None:
    """Refuse a file that is not SQLite before SQLite opens it (it would not write to
    it either, but the message is clearer)."""
    try:
        with open(path, "rb") as f:
            header = f.read(100)
    except FileNotFoundError:
        return
    except IsADirectoryError:
        raise StoreError(path, "is a directory, not a job store file") from None
    except OSError as exc:
        raise StoreError(path, f"cannot be read: {exc}") from exc
    if not header:
        return  # an empty file: SQLite treats it as an empty database
    if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
        raise StoreError(path, 
            "is not a SQLite database (damaged, or some other file); "
            "it was left as it is: move it away to start a new store"
        )

def _validate(path: str, conn: sqlite3.Connection) -> tuple[bool, int]:
    """Check an existing file read-only. Returns (it is empty: a new store, its version)."""
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    tables = sorted(
        name
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        if not name.startswith("sqlite_")
    )
    if app_id == 0 and not tables and version == 0:
        return True, SCHEMA_VERSION
    if app_id != APPLICATION_ID:
        shown = ", ".join(tables[:8]) + (", ..." if len(tables) > 8 else "")
        raise StoreError(path, 
            "is a SQLite database of another application, not a freelance_rz job store "
            f"(application_id {app_id:#x}, tables: {shown or 'none'}); it was left as it is"
        )
    if version > SCHEMA_VERSION:
        raise StoreError(path, 
            f"has schema version {version}, newer than version {SCHEMA_VERSION} that this "
            "freelance_rz understands: upgrade freelance_rz to use it (it was left as it is)"
        )
    if version < 1:
        raise StoreError(path, f"has an invalid schema version {version} (damaged?)")
    missing = [name for name in _COLUMNS if name not in tables
               and not (name in _NEW_TABLES and version < _NEW_TABLES[name][0])]
    if missing:
        raise StoreError(path, f"is damaged: missing table(s) {', '.join(missing)}")
    for name, expected in _COLUMNS.items():
        if name not in tables:
            continue  # a table of a later version, made by the upgrade
        for upgrade in range(version + 1, SCHEMA_VERSION + 1):  # columns it does not have yet
            added = {column.split()[0] for table, column in _UPGRADES[upgrade] if table == name}
            expected = tuple(c for c in expected if c not in added)
        columns = tuple(row[1] for row in conn.execute(f"PRAGMA table_info({name})"))
        if columns != expected:
            raise StoreError(path, 
                f"is damaged: table {name} has columns {columns}, expected {expected}"
            )
    problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
    if problems != ["ok"]:
        raise StoreError(path, 
            f"is damaged (SQLite quick_check: {'; '.join(map(str, problems))}); "
            "it was left as it is"
        )
    return False, version


def _upgrade(conn: sqlite3.Connection, version: int) -> None:
    """Bring a store of an older schema ``version`` to SCHEMA_VERSION, in one transaction
    (columns are only added: its jobs and results stay as they were)."""
    with transaction(conn):
        for upgrade in range(version + 1, SCHEMA_VERSION + 1):
            for table, column in _UPGRADES[upgrade]:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
            for since, statement in _NEW_TABLES.values():
                if since == upgrade:
                    conn.execute(statement)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    log.info("job store upgraded from schema version %d to %d", version, SCHEMA_VERSION)


def _create(path: str, conn: sqlite3.Connection) -> None:
    with transaction(conn):
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            [("producer_key", secrets.token_hex(8)), ("next_job_id", 1)],
        )
        conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction: committed when the block ends, rolled back if it raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        raise


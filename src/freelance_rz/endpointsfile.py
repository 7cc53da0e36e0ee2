"""The endpoints file: producers listed in a file, for workers that neither mDNS nor DNS
reaches (``freelance-worker --connect-file PATH``; the idea of Dask's ``--scheduler-file``).

One producer per line; a ``#`` at the start of a line or of a field starts a comment
(Z85 keys may hold ``#`` inside), blank lines are ignored::

    tcp://10.0.0.5:5555
    tcp://producers.example.org:5555 pk=rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7
    tcp://10.0.0.6:5555 id=3f2a9c01d4e5b6a7 g=thumbnails sk=7c1e0b2d pk=...

The first field is the endpoint (``tcp://HOST:PORT``; HOST an IPv4 address or a name, which
is resolved and re-resolved as ``--connect`` names are). The others are ``key=value``
entries with the names and rules of the mDNS TXT entries (:func:`~freelance_rz.discovery.
parse_entries`): ``pk`` the producer's CURVE public key (Z85, 40 characters), ``id`` its
producer id, ``g`` its group (a line of another group is skipped), ``sk`` a durable
producer's store key, ``v`` the protocol version. Unknown entries are ignored, as in TXT
records. A malformed line is logged once and skipped; nothing in the file can stop a worker.

A producer writes its own line (``Producer(endpoints_file=PATH)``) with :func:`add_entry`
and removes it with :func:`remove_entry`: under an exclusive lock (``flock`` on ``PATH.lock``
beside it; on NFS, Linux maps it to a POSIX lock), the file is read, the producer's line
(found by its endpoint) replaced, and the whole written to a temporary file in the same
directory that is renamed over the file, so a reader sees the old file or the new one, never
a part of either.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from .core.wire import parse_endpoint
from .discovery import Announcement, parse_entries

MAX_FILE_BYTES = 1 << 20  # a larger file is read up to this many bytes
MAX_ENTRIES = 4096  # lines taken from one file
MAX_LINE_CHARS = 1024  # a longer line is malformed
FIELD_ORDER = ("id", "g", "sk", "pk", "v")  # how add_entry writes a line's entries

#: Announcement.source of endpoints file entries (as in :mod:`freelance_rz.sources`)
SOURCE = "file"


def parse_line(line: str) -> Announcement | str | None:
    """One line: its :class:`Announcement` (named ``file:ENDPOINT``, source ``file``), None
    for a blank or comment line, or why it is malformed (a str)."""
    fields = []
    for field in line.split():
        if field.startswith("#"):
            break
        fields.append(field)
    if not fields:
        return None
    if len(line) > MAX_LINE_CHARS:
        return f"longer than {MAX_LINE_CHARS} characters"
    endpoint, *rest = fields
    try:
        parse_endpoint(endpoint)
    except ValueError as exc:
        return f"{endpoint!r} is not an endpoint: {exc}"
    entries = {"ep": endpoint}
    for item in rest:
        key, sep, value = item.partition("=")
        if not sep or not key:
            return f"{item!r} is not key=value"
        entries.setdefault(key, value)
    announcement = parse_entries(f"file:{endpoint}", entries, source=SOURCE, id_required=False)
    if announcement is None:
        return "an entry is malformed (id and sk: 1 to 64 of A-Z a-z 0-9 _ -; g: up to 63 " \
               "characters; pk: 40 Z85 characters; v: a number)"
    return announcement


def parse_text(text: str) -> tuple[list[Announcement], list[tuple[int, str, str]]]:
    """Every line of a file: the announcements (at most MAX_ENTRIES, the first line of an
    endpoint winning), and the malformed lines as ``(line number, line, why)``."""
    entries: dict[str, Announcement] = {}
    problems = []
    for number, line in enumerate(text.splitlines(), 1):
        parsed = parse_line(line)
        if isinstance(parsed, str):
            problems.append((number, line, parsed))
        elif parsed is not None and len(entries) < MAX_ENTRIES:
            entries.setdefault(parsed.endpoints[0], parsed)
    return list(entries.values()), problems


def format_line(endpoint: str, fields: Mapping[str, str | None]) -> str:
    """The line of a producer: its endpoint, then its entries (None values left out).

    Raises:
        ValueError: the line would not parse back to the same endpoint and entries.
    """
    parts = [endpoint]
    for key in FIELD_ORDER:
        value = fields.get(key)
        if value is not None:
            parts.append(f"{key}={value}")
    line = " ".join(parts)
    parsed = parse_line(line)
    if not isinstance(parsed, Announcement):
        raise ValueError(f"endpoints file entry {line!r}: {parsed}")
    return line


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _rewrite(path: Path, endpoint: str, line: str | None) -> None:
    """Replace the line of ``endpoint`` by ``line`` (None: remove it), atomically."""
    path = Path(path)
    with _locked(path):
        try:
            old = path.read_text("utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            if line is None:
                return
            old = []
        kept = [
            text for text in old
            if not (isinstance(parsed := parse_line(text), Announcement) and parsed.endpoints[0] == endpoint)
        ]
        if line is not None:
            kept.append(line)
        fd, scratch = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write("".join(f"{text}\n" for text in kept))
                f.flush()
                os.fsync(f.fileno())
            os.chmod(scratch, 0o644)  # endpoints and public keys: readable by every worker
            os.replace(scratch, path)
        except BaseException:
            try:
                os.unlink(scratch)
            except FileNotFoundError:
                pass
            raise


def add_entry(path: str | os.PathLike[str], endpoint: str, fields: Mapping[str, str | None]) -> str:
    """Write the line of the producer at ``endpoint`` into the file at ``path`` (made if
    missing), replacing any line of that endpoint (a previous process there). Returns the
    line.

    Raises:
        ValueError: a malformed endpoint or entry.
        OSError: the file or its lock cannot be written.
    """
    line = format_line(endpoint, fields)
    _rewrite(Path(path), endpoint, line)
    return line


def remove_entry(path: str | os.PathLike[str], endpoint: str) -> None:
    """Remove the line of the producer at ``endpoint``. Raises OSError when the file or its
    lock cannot be written."""
    _rewrite(Path(path), endpoint, None)


__all__ = ["MAX_FILE_BYTES", "add_entry", "format_line", "parse_line", "parse_text", "remove_entry"]

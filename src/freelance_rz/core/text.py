"""Peer-provided text made safe to log or show: one place for the rule.

Strings that come from the network (producer ids, groups and endpoints from mDNS, worker
routing ids, ERR messages, progress messages) may hold terminal escape sequences, other
control characters, bidirectional overrides or megabytes of text. Before such a string reaches
a log line or a terminal it goes through :func:`clean`.
"""

from __future__ import annotations

import hashlib
import unicodedata

DEFAULT_LIMIT = 200  # characters kept of a peer string in a log line or a table cell


def clean(value: object, limit: int = DEFAULT_LIMIT) -> str:
    """``value`` as printable text: bytes decoded as UTF-8 (invalid bytes replaced), control
    and format characters (C0, C1, DEL, bidi overrides, zero-width marks) replaced by ``?``,
    and the result cut to ``limit`` characters with a trailing ``…`` when longer.

    Args:
        value: a str, bytes, or anything else (formatted with ``str``).
        limit: the most characters returned (>= 1).
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        text = bytes(value[: limit * 4]).decode("utf-8", errors="replace")
    else:
        text = value if isinstance(value, str) else str(value)
    cut = len(text) > limit
    text = text[:limit]
    if not text.isprintable():
        text = "".join(
            ch if ch == " " or unicodedata.category(ch)[0] not in "CZ" else "?" for ch in text
        )
    return text[: limit - 1] + "…" if cut else text


_LABELS: dict[bytes, str] = {}  # routing id -> worker_label, a cache bounded below


def worker_label(identity: bytes) -> str:
    """How a worker is shown (STATUS, events, logs): ``NAME-xxxxxxxx``, the part of its
    routing id before the last ``-`` and 32 bits of a BLAKE2b hash of the whole id. The
    routing id itself is a secret (whoever has it can take the worker's replies), so it is
    never shown. A peer whose id has no such name (ZeroMQ's own ids are 5 binary bytes: a
    status client, a stranger) or one that is not UTF-8 is ``peer-xxxxxxxx``: no raw bytes."""
    label = _LABELS.get(identity)
    if label is None:
        try:
            name = identity.rpartition(b"-")[0].decode("utf-8")
        except UnicodeDecodeError:
            name = ""
        label = f"{clean(name, 64) or 'peer'}-{hashlib.blake2b(identity, digest_size=4).hexdigest()}"
        if len(_LABELS) >= 4096:
            _LABELS.clear()
        _LABELS[identity] = label
    return label

"""Task module of the examples: workers run it with ``--tasks tasks`` from this directory.

A worker runs only the public functions defined in its ``--tasks`` modules (the allowlist), so
the producer names these tasks ``"tasks:word_count"``, ``"tasks:checksum"`` and so on.
Arguments and results are msgpack values: None, bool, int, float, str, bytes, lists and dicts.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import Counter

from freelance_rz import report_progress

_WORD_RE = re.compile(r"[A-Za-z']+")


def word_count(text: str, top: int = 3) -> dict[str, object]:
    """Count the lines and words of ``text``.

    Returns:
        ``{"lines", "words", "top"}``; ``top`` holds the ``top`` most common words (lower
        case) as ``[word, count]`` pairs, most common first.
    """
    words = [word.lower() for word in _WORD_RE.findall(text)]
    return {
        "lines": len(text.splitlines()),
        "words": len(words),
        "top": [[word, n] for word, n in Counter(words).most_common(top)],
    }


def checksum(data: bytes, algorithm: str = "sha256") -> str:
    """The hex digest of ``data`` with a :mod:`hashlib` algorithm.

    Raises:
        ValueError: ``algorithm`` is not one hashlib knows.
    """
    return hashlib.new(algorithm, data).hexdigest()


def parse_record(line: str) -> dict[str, object]:
    """Parse one ``"name,age"`` line of a CSV file.

    Raises:
        ValueError: the line does not have two fields, or the age is not a whole number.
    """
    fields = [field.strip() for field in line.split(",")]
    if len(fields) != 2:
        raise ValueError(f"expected 'name,age', got {len(fields)} field(s) in {line!r}")
    name, age = fields
    if not age.isdigit():
        raise ValueError(f"age must be a whole number, got {age!r}")
    return {"name": name, "age": int(age)}


def slow_sum(n: int, step_s: float = 0.1) -> int:
    """Add 1 to ``n``, one number every ``step_s`` seconds, reporting progress as it goes.

    The producer sees the progress with ``producer.progress(future)``; ``freelance-status``
    lists it under "running jobs with progress".
    """
    total = 0
    for i in range(1, n + 1):
        time.sleep(step_s)
        total += i
        report_progress(i, n, f"added {i}")
    return total

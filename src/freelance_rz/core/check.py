"""Checks of the public API's arguments, with one wording for every error.

A wrong type raises ``TypeError``, a value out of range ``ValueError``; each message names the
argument, says what is expected and shows the value given, e.g.
``lease_s must be a number of seconds from 0.2 to 1e+09, got '1' (str)``. ``bool`` is never
taken for a number, NaN never, and infinity only where it means something.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from .match import LABEL_VALUE_MAX_CHARS, MAX_AMOUNT, MAX_LABELS, MAX_RESOURCES, NAME_RE

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
MAX_SECONDS = 1e9  # seconds (31 years): the longest lease, time limit or wait taken
GROUP_MAX_CHARS = 63  # a group is one DNS label in the mDNS service name
_T = TypeVar("_T")


def _shown(value: object) -> str:
    text = repr(value)
    if len(text) <= 80:
        return text
    if isinstance(value, (str, list, tuple)):
        return f"{text[:70]}... ({len(value)} {'characters' if isinstance(value, str) else 'items'})"
    return text[:77] + "..."


def _fail(kind: type[Exception], name: str, expected: str, value: object, allow_none: bool) -> Exception:
    if allow_none:
        expected = f"None or {expected}"
    got = _shown(value) if kind is ValueError else f"{_shown(value)} ({type(value).__name__})"
    return kind(f"{name} must be {expected}, got {got}")


def _bounds(min_: float | None, max_: float | None, above: float | None) -> str:
    low = f">= {min_:g}" if min_ is not None else (f"> {above:g}" if above is not None else "")
    if min_ is not None and max_ is not None:
        return f"from {min_:g} to {max_:g}"
    if low and max_ is not None:
        return f"{low} and <= {max_:g}"
    return low or (f"<= {max_:g}" if max_ is not None else "")


def number(
    name: str, value: Any, *, min_: float | None = None, above: float | None = None,
    max_: float | None = None, unit: str = "", allow_inf: bool = False, allow_none: bool = False,
) -> Any:
    """A real number (an int or a float, not a bool, not NaN), returned as given (a numpy
    scalar as a float).

    Args:
        name: the argument's name, for the message.
        value: what was passed.
        min_, above, max_: inclusive lower, exclusive lower and inclusive upper bound.
        unit: plural unit for the message (``"seconds"``).
        allow_inf: take ``float("inf")`` (where it means "never"); otherwise finite only.
        allow_none: take None too (returned as None).

    Raises:
        TypeError: not a real number (a bool, a str, ...).
        ValueError: NaN, infinite (unless ``allow_inf``) or out of bounds.
    """
    expected = f"a number of {unit}" if unit else "a number"
    bounds = _bounds(min_, max_, above)
    if bounds:
        expected += f" {bounds}"
    if allow_inf:
        expected += " (or inf)"
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _fail(TypeError, name, expected, value, allow_none)
    if not isinstance(value, (int, float)):
        value = float(value)
    if (
        math.isnan(value)
        or (math.isinf(value) and not (allow_inf and value > 0))
        or (min_ is not None and value < min_)
        or (above is not None and not value > above)
        or (max_ is not None and value > max_ and not (allow_inf and math.isinf(value)))
    ):
        raise _fail(ValueError, name, expected, value, allow_none)
    return value


_POWERS_SHOWN = {INT64_MAX: "2**63 - 1", INT64_MIN: "-2**63", 2**62: "2**62"}


def _int_shown(bound: int | None) -> str:
    if bound is None:
        return ""
    return _POWERS_SHOWN.get(bound, str(bound))


def integer(
    name: str, value: Any, *, min_: int | None = None, max_: int | None = None, unit: str = "",
    allow_none: bool = False,
) -> Any:
    """An integer (an int or another ``numbers.Integral`` such as numpy's, not a bool),
    returned as an int.

    Args:
        name: the argument's name, for the message.
        value: what was passed.
        min_, max_: inclusive bounds.
        unit: plural unit for the message (``"bytes"``).
        allow_none: take None too (returned as None).

    Raises:
        TypeError: not an integer (a bool, a float such as 2.5, a str, ...).
        ValueError: out of bounds.
    """
    expected = f"an int of {unit}" if unit else "an int"
    low, high = _int_shown(min_), _int_shown(max_)
    if min_ is not None and max_ is not None:
        expected += f" from {low} to {high}"
    elif min_ is not None:
        expected += f" >= {low}"
    elif max_ is not None:
        expected += f" <= {high}"
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _fail(TypeError, name, expected, value, allow_none)
    value = int(value)
    if (min_ is not None and value < min_) or (max_ is not None and value > max_):
        raise _fail(ValueError, name, expected, value, allow_none)
    return value


def string(
    name: str, value: Any, *, min_chars: int = 0, max_chars: int | None = None,
    max_bytes: int | None = None, allow_none: bool = False,
) -> Any:
    """A str of ``min_chars`` to ``max_chars`` characters and at most ``max_bytes`` bytes in
    UTF-8.

    Raises:
        TypeError: not a str.
        ValueError: too short or too long.
    """
    expected = "a str"
    if max_chars is not None:
        expected += f" of {min_chars} to {max_chars} characters"
    elif min_chars:
        expected += f" of at least {min_chars} character{'s' if min_chars > 1 else ''}"
    if max_bytes is not None:
        expected += f" of at most {max_bytes} bytes in UTF-8"
    if value is None and allow_none:
        return None
    if not isinstance(value, str):
        raise _fail(TypeError, name, expected, value, allow_none)
    if (
        len(value) < min_chars
        or (max_chars is not None and len(value) > max_chars)
        or (max_bytes is not None and len(value.encode("utf-8", "surrogatepass")) > max_bytes)
    ):
        raise _fail(ValueError, name, expected, value, allow_none)
    return value


def strings(name: str, value: Any, *, example: str, allow_none: bool = False) -> Any:
    """A list (or tuple) of str, returned as a list; a single str is refused, not split.

    Args:
        example: shown in the message, e.g. ``"['myapp.tasks']"``.

    Raises:
        TypeError: a str, or not a list or tuple, or an element that is not a str.
    """
    expected = f"a list of str, e.g. {example}"
    if value is None and allow_none:
        return None
    if not isinstance(value, (list, tuple)):
        raise _fail(TypeError, name, expected, value, allow_none)
    for item in value:
        if not isinstance(item, str):
            raise TypeError(f"{name} must be {expected}, got the element {_shown(item)} "
                            f"({type(item).__name__})")
    return list(value)


def boolean(name: str, value: Any) -> bool:
    """True or False (not 0, 1 or None).

    Raises:
        TypeError: not a bool.
    """
    if not isinstance(value, bool):
        raise _fail(TypeError, name, "True or False", value, False)
    return value


def path(name: str, value: Any, *, allow_none: bool = True) -> Any:
    """A file system path: a str or an ``os.PathLike`` (e.g. ``pathlib.Path``).

    Raises:
        TypeError: neither.
    """
    if value is None and allow_none:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise _fail(TypeError, name, "a path (a str or a pathlib.Path)", value, allow_none)
    return value


def function(name: str, value: Callable[..., _T] | None, *, allow_none: bool = True) -> Any:
    """A callable.

    Raises:
        TypeError: not callable.
    """
    if value is None and allow_none:
        return None
    if not callable(value):
        raise _fail(TypeError, name, "a callable", value, allow_none)
    return value


def group(value: Any) -> str:
    """A producer group: a str of 1 to 63 characters (one DNS label of the mDNS name).

    Raises:
        TypeError: not a str.
        ValueError: empty or longer than 63 characters.
    """
    checked: str = string("group", value, min_chars=1, max_chars=GROUP_MAX_CHARS)
    return checked


def address(name: str, value: Any, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``[HOST:]PORT`` (e.g. ``--metrics-port``, ``--serve``) as ``(host, port)``; a bare port
    listens on ``default_host``. Port 0 picks a free one.

    Raises:
        ValueError: not a str, PORT not in 0..65535, or an empty HOST.
    """
    if not isinstance(value, str):
        raise ValueError(f"{name} must be [HOST:]PORT, got {value!r}")
    host, colon, port = value.rpartition(":")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{name} must be [HOST:]PORT with PORT in 0..65535, got {value!r}")
    if colon and not host.strip("[]"):
        raise ValueError(f"{name}: empty HOST in {value!r}")
    return (host.strip("[]") if colon else default_host), int(port)


def metrics_address(port: Any, host: Any) -> tuple[str, int] | None:
    """``metrics_port`` and ``metrics_host`` (of a producer or a worker), checked: where to
    serve metrics, or None. Raises TypeError or ValueError."""
    port = integer("metrics_port", port, min_=0, max_=65535, allow_none=True)
    host = string("metrics_host", host, min_chars=1)
    return None if port is None else (host, port)


def _names(name: str, value: Any, most: int, example: str) -> dict[Any, Any]:
    """A mapping of at most ``most`` entries with resource or label names for keys."""
    expected = f"a dict of at most {most} names to values, e.g. {example}"
    if not isinstance(value, Mapping):
        raise _fail(TypeError, name, expected, value, True)
    if len(value) > most:
        raise _fail(ValueError, name, expected, value, True)
    for key in value:
        if not isinstance(key, str):
            raise TypeError(f"{name} must have str names, got the name {_shown(key)} "
                            f"({type(key).__name__})")
        if not NAME_RE.fullmatch(key):
            raise ValueError(f"{name}: the name {_shown(key)} must be 1 to 64 of A-Z a-z 0-9 "
                             "_ . -, starting with a letter or _")
    return dict(value)


def resources(name: str, value: Any) -> dict[str, float] | None:
    """Resources (a worker's, or what a job holds while it runs): None, or a dict of at
    most 32 names (1 to 64 of ``A-Z a-z 0-9 _ . -``, starting with a letter or ``_``) to
    numbers from 0 to 1e15 (NaN and infinity refused), returned as a dict.

    Raises:
        TypeError: not a dict, a name not a str, an amount not a number.
        ValueError: more than 32, a malformed name, an amount out of range.
    """
    if value is None:
        return None
    checked = _names(name, value, MAX_RESOURCES, "{'gpu': 1, 'mem_gb': 16}")
    for key, amount in checked.items():
        checked[key] = number(f"{name}[{key!r}]", amount, min_=0, max_=MAX_AMOUNT)
    return checked


def labels(name: str, value: Any) -> dict[str, str] | None:
    """Labels (a worker's, or what a job's worker must carry): None, or a dict of at most 32
    names (as for :func:`resources`) to str values of at most 128 characters.

    Raises:
        TypeError: not a dict, a name or a value not a str.
        ValueError: more than 32, a malformed name, a value too long.
    """
    if value is None:
        return None
    checked = _names(name, value, MAX_LABELS, "{'zone': 'eu'}")
    for key, text in checked.items():
        string(f"{name}[{key!r}]", text, max_chars=LABEL_VALUE_MAX_CHARS)
    return checked

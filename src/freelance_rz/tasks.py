"""Task naming ("module:function") and the worker's allowlist.

A task is named by the module that defines it and its name there, e.g. ``"myapp.tasks:resize"``.
A worker resolves a name only when the module is exactly one of its ``--tasks`` modules, the
function name is a public identifier (no dots, no leading underscore), and the object found is
a function defined in that very module (so ``from os import system`` inside a task module does
not expose ``os.system``). Nothing outside the allowlist is ever imported.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import time
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

from .core.match import MODULE_RE
from .errors import TaskNotAllowed

_MODULE_RE = MODULE_RE  # one rule for module names (claims carry them too)
_FUNC_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def task_name(fn: Callable[..., Any] | str) -> str:
    """The wire name of a task: a module-level function, or a ``"module:function"`` string.

    Raises:
        ValueError: a lambda, nested function, method, builtin or other non-function callable,
            a function of ``__main__`` (workers cannot import the app's main script), or a
            malformed string.
        TypeError: ``fn`` is neither callable nor a string.
    """
    if isinstance(fn, str):
        name = fn
    elif callable(fn):
        if not inspect.isfunction(fn):  # workers run only functions defined in --tasks modules
            raise ValueError(
                f"{fn!r} is not a Python function (a builtin, class or callable object): "
                "wrap it in a function of a task module"
            )
        module = getattr(fn, "__module__", None)
        qualname = getattr(fn, "__qualname__", None)
        if not module or not qualname:
            raise ValueError(f"{fn!r} has no module/qualname: pass a module-level function")
        if module == "__main__":
            raise ValueError(
                f"{qualname} is defined in __main__, which workers cannot import: move it into "
                "a module and start workers with --tasks that_module"
            )
        name = f"{module}:{qualname}"
    else:
        raise TypeError(f"task must be a function or a 'module:function' string, got {fn!r}")
    split_task_name(name)
    return name


def split_task_name(name: str) -> tuple[str, str]:
    """Split ``"module:function"``. Raises ValueError when either part is malformed."""
    module, sep, func = name.partition(":")
    if not sep or not _MODULE_RE.fullmatch(module) or not _FUNC_RE.fullmatch(func):
        raise ValueError(
            f"task name {name!r} must be 'module:function' with a public module-level "
            "function name (no dots, no leading underscore)"
        )
    return module, func


class Allowlist:
    """The task modules a worker may run, imported up front.

    Args:
        modules: module names (e.g. ``["myapp.tasks"]``).

    Raises:
        ValueError: a malformed module name.
        ImportError: a module cannot be imported (surfaced at start, not at the first job).
    """

    def __init__(self, modules: Iterable[str]) -> None:
        self.modules: dict[str, ModuleType] = {}
        # module -> (wall-clock time of its import, its source file's mtime then, in ns)
        self._imported: dict[str, tuple[float, int | None]] = {}
        for name in modules:
            if not _MODULE_RE.fullmatch(name):
                raise ValueError(f"--tasks {name!r} is not a module name")
            module = self.modules[name] = importlib.import_module(name)
            self._imported[name] = (time.time(), _mtime_ns(module))
        if not self.modules:
            raise ValueError("a worker needs at least one --tasks module")

    def resolve(self, name: str) -> Callable[..., Any]:
        """The function a task name refers to.

        Raises:
            TaskNotAllowed: malformed name, module not allowed, no such public function, or
                the object is not a function defined in that module. When the module's
                source file changed after it was imported, the message says so and when it
                was imported (a function added since needs a restart of the worker).
        """
        try:
            module_name, func_name = split_task_name(name)
        except ValueError as exc:
            raise TaskNotAllowed(str(exc)) from None
        module = self.modules.get(module_name)
        if module is None:
            raise TaskNotAllowed(
                f"task {name!r}: module {module_name!r} is not among this worker's --tasks "
                f"modules ({', '.join(sorted(self.modules))})"
            )
        fn = module.__dict__.get(func_name)
        if not inspect.isfunction(fn) or fn.__module__ != module_name:
            raise TaskNotAllowed(
                f"task {name!r}: no function {func_name!r} defined in {module_name}"
                + self._changed_since_import(module_name)
            )
        return fn

    def _changed_since_import(self, module_name: str) -> str:
        """A hint when the module's source file changed after it was imported (a task added
        to it later is not seen until the worker restarts), else ""."""
        imported_at, mtime_ns = self._imported[module_name]
        module = self.modules[module_name]
        now_ns = _mtime_ns(module)
        if mtime_ns is None or now_ns is None or now_ns == mtime_ns:
            return ""
        at = time.strftime("%H:%M:%S", time.localtime(imported_at))
        return (f" ({module.__file__} changed after this worker imported it at {at}; restart "
                "the worker to load new functions)")


def _mtime_ns(module: ModuleType) -> int | None:
    """The modification time of a module's source file (ns), or None (no file, unreadable)."""
    path = getattr(module, "__file__", None)
    if not path:
        return None
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None

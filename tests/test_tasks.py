"""Tests of task naming and the worker's allowlist. Helper task modules live in tmp_path."""

from __future__ import annotations

import functools
import importlib
import itertools
import sys
import textwrap

import pytest

from freelance_rz import FreelanceError, TaskNotAllowed
from freelance_rz.tasks import Allowlist, split_task_name, task_name

_counter = itertools.count()

TASK_MODULE = """
import os
from os.path import join
from os import system as run_shell
import functools

CONSTANT = 3
lookup = {"a": 1}

def add(a, b):
    return a + b

def Shout(text):
    return text.upper()

def _private():
    return "secret"

def __dunder__():
    return "secret"

async def coro():
    return 1

class Thing:
    def method(self):
        return 1

instance = Thing()
partial_add = functools.partial(add, 1)
length = len
borrowed = os.getcwd
"""


@pytest.fixture
def make_module(tmp_path, monkeypatch):
    """Write a module (or package) under tmp_path with a unique name; return its name.

    Everything imported from tmp_path is dropped from sys.modules afterwards.
    """
    monkeypatch.syspath_prepend(str(tmp_path))

    def make(source: str, *, package: str | None = None, prefix: str = "frz_test_tasks") -> str:
        name = f"{prefix}_{next(_counter)}"
        directory = tmp_path
        if package is not None:
            directory = tmp_path / package
            directory.mkdir(exist_ok=True)
            (directory / "__init__.py").touch()
            name = f"{package}.{name}"
        (directory / f"{name.rpartition('.')[2]}.py").write_text(textwrap.dedent(source))
        importlib.invalidate_caches()
        return name

    yield make
    for name in list(sys.modules):
        module_file = getattr(sys.modules[name], "__file__", None) or ""
        if module_file.startswith(str(tmp_path)):
            del sys.modules[name]


@pytest.fixture
def tasks_mod(make_module) -> str:
    return make_module(TASK_MODULE)


# --- task_name -----------------------------------------------------------------------------


def module_level_task(x):
    return x


def test_task_name_of_a_module_level_function():
    assert task_name(module_level_task) == f"{module_level_task.__module__}:module_level_task"


def test_task_name_of_a_function_in_a_helper_module(tasks_mod):
    module = __import__(tasks_mod)
    assert task_name(module.add) == f"{tasks_mod}:add"
    assert task_name(module.Shout) == f"{tasks_mod}:Shout"


def test_task_name_of_a_function_in_a_package(make_module):
    name = make_module("def f():\n    return 1\n", package="frz_test_pkg_a")
    module = importlib.import_module(name)
    assert task_name(module.f) == f"{name}:f"
    assert split_task_name(task_name(module.f)) == (name, "f")


@pytest.mark.parametrize("name", ["mod:f", "a.b.c:run_it", "_m:F", "m1:f2", "M:f_"])
def test_task_name_of_a_string_is_the_string(name):
    assert task_name(name) == name


@pytest.mark.parametrize(
    "name, parts",
    [("mod:f", ("mod", "f")), ("a.b.c:run_it", ("a.b.c", "run_it")), ("_m:F", ("_m", "F"))],
)
def test_split_task_name(name, parts):
    assert split_task_name(name) == parts


def test_task_name_does_not_import_anything(make_module):
    name = make_module("raise RuntimeError('imported!')\ndef f():\n    pass\n")
    assert task_name(f"{name}:f") == f"{name}:f"
    assert name not in sys.modules


def test_task_name_rejects_a_lambda():
    with pytest.raises(ValueError):
        task_name(lambda x: x)


def test_task_name_rejects_a_nested_function():
    def inner(x):
        return x

    assert "<locals>" in inner.__qualname__
    with pytest.raises(ValueError):
        task_name(inner)


class Holder:
    def method(self):
        return 1

    @staticmethod
    def static():
        return 1

    @classmethod
    def klass(cls):
        return 1


@pytest.mark.parametrize("fn", [Holder().method, Holder.method, Holder.static, Holder.klass])
def test_task_name_rejects_methods(fn):
    with pytest.raises(ValueError):
        task_name(fn)


def test_task_name_rejects_functions_of_main():
    namespace = {"__name__": "__main__"}
    exec("def job(x):\n    return x\n", namespace)
    job = namespace["job"]
    assert job.__module__ == "__main__"
    with pytest.raises(ValueError, match="__main__"):
        task_name(job)


def test_task_name_rejects_private_functions(tasks_mod):
    module = __import__(tasks_mod)
    with pytest.raises(ValueError):
        task_name(module._private)


def test_task_name_rejects_a_partial():
    with pytest.raises(ValueError):
        task_name(functools.partial(module_level_task, 1))


class CallableThing:
    def __call__(self):
        return 1


def test_task_name_rejects_a_callable_instance():
    with pytest.raises(ValueError):
        task_name(CallableThing())


@pytest.mark.parametrize("value", [42, None, b"mod:f", ["mod", "f"], 1.5, object()])
def test_task_name_rejects_non_callables(value):
    with pytest.raises(TypeError):
        task_name(value)


MALFORMED = [
    "", "mod", "mod:", ":f", "mod::f", "mod:f:g", "mod:f.g", "mod:os.system", "mod:_f",
    "mod:__f__", "mod:1f", "1mod:f", "mod.:f", ".mod:f", "mod..x:f", "mod:f g", "mod: f",
    "mod :f", "mod:f-g", "mod-x:f", "mod/x:f", "mod:é", "mod:f()", " mod:f", "mod:f ",
]


@pytest.mark.parametrize("name", MALFORMED)
def test_task_name_rejects_malformed_strings(name):
    with pytest.raises(ValueError):
        task_name(name)
    with pytest.raises(ValueError):
        split_task_name(name)


@pytest.mark.parametrize("name", ["mod:f\n", "mod\n:f"])
def test_task_name_rejects_a_trailing_newline(name):
    with pytest.raises(ValueError):
        task_name(name)


# --- Allowlist construction ----------------------------------------------------------------


def test_allowlist_imports_its_modules_up_front(tasks_mod):
    assert tasks_mod not in sys.modules
    allow = Allowlist([tasks_mod])
    assert tasks_mod in sys.modules
    assert allow.modules == {tasks_mod: sys.modules[tasks_mod]}


def test_allowlist_needs_a_module():
    with pytest.raises(ValueError):
        Allowlist([])


@pytest.mark.parametrize("name", ["", "a b", "a:b", "a..b", "1a", "a.", "os/path"])
def test_allowlist_rejects_malformed_module_names(name):
    with pytest.raises(ValueError):
        Allowlist([name])


def test_allowlist_surfaces_import_errors_at_start():
    with pytest.raises(ImportError):
        Allowlist(["frz_test_no_such_module_at_all"])


def test_allowlist_surfaces_errors_raised_by_the_module(make_module):
    name = make_module("raise RuntimeError('broken task module')\n")
    with pytest.raises(RuntimeError, match="broken task module"):
        Allowlist([name])


# --- Allowlist.resolve -------------------------------------------------------------------


def test_resolve_a_function_of_an_allowed_module(tasks_mod):
    allow = Allowlist([tasks_mod])
    module = sys.modules[tasks_mod]
    fn = allow.resolve(f"{tasks_mod}:add")
    assert fn is module.add
    assert fn(2, 3) == 5
    assert allow.resolve(f"{tasks_mod}:Shout") is module.Shout
    assert allow.resolve(f"{tasks_mod}:coro") is module.coro


def test_resolve_with_several_modules_and_a_package(tasks_mod, make_module):
    other = make_module("def g():\n    return 'g'\n", package="frz_test_pkg_b")
    allow = Allowlist([tasks_mod, other])
    assert allow.resolve(f"{other}:g")() == "g"
    assert allow.resolve(f"{tasks_mod}:add")(1, 1) == 2


def test_resolve_uses_task_name_round_trip(tasks_mod):
    allow = Allowlist([tasks_mod])
    fn = sys.modules[tasks_mod].add
    assert allow.resolve(task_name(fn)) is fn


@pytest.mark.parametrize("name", ["os:system", "builtins:eval", "sys:exit", "subprocess:run",
                                  "freelance_rz.tasks:task_name"])
def test_resolve_refuses_modules_not_allowed(tasks_mod, name):
    allow = Allowlist([tasks_mod])
    with pytest.raises(TaskNotAllowed, match="not among"):
        allow.resolve(name)


def test_resolve_refuses_a_parent_package_of_an_allowed_module(make_module):
    name = make_module("def g():\n    return 1\n", package="frz_test_pkg_c")
    allow = Allowlist([name])
    assert "frz_test_pkg_c" in sys.modules  # imported as a side effect, but not allowed
    with pytest.raises(TaskNotAllowed):
        allow.resolve("frz_test_pkg_c:g")


@pytest.mark.parametrize(
    "attribute",
    [
        "os.system",  # dotted path through an imported module
        "os",  # a module object
        "join",  # imported from os.path
        "run_shell",  # imported from os under another name
        "borrowed",  # assigned from another module
        "_private",  # private name
        "__dunder__",
        "__builtins__",
        "__import__",
        "eval",  # a builtin is not an attribute of the module
        "CONSTANT",  # not a function
        "lookup",
        "Thing",  # a class
        "Thing.method",
        "instance",
        "partial_add",
        "length",  # a builtin function bound in the module
        "missing",
        "",
    ],
)
def test_resolve_refuses(tasks_mod, attribute):
    allow = Allowlist([tasks_mod])
    with pytest.raises(TaskNotAllowed):
        allow.resolve(f"{tasks_mod}:{attribute}")


def test_resolve_refuses_malformed_names(tasks_mod):
    allow = Allowlist([tasks_mod])
    for name in MALFORMED + [tasks_mod, f"{tasks_mod}:add:x", f" {tasks_mod}:add"]:
        with pytest.raises(TaskNotAllowed):
            allow.resolve(name)


def test_task_not_allowed_is_a_freelance_error():
    assert issubclass(TaskNotAllowed, FreelanceError)


def test_resolve_never_imports_a_module_that_is_not_allowed(tasks_mod, make_module, tmp_path):
    marker = tmp_path / "imported.txt"
    secret = make_module(
        f"open({str(marker)!r}, 'w').write('imported')\n"
        "def f():\n    return 'ran'\n",
        prefix="frz_test_not_allowed",
    )
    pkg_member = make_module("def g():\n    return 1\n", package="frz_test_pkg_never")
    allow = Allowlist([tasks_mod])
    before = set(sys.modules)
    for name in [f"{secret}:f", f"{pkg_member}:g", "frz_test_pkg_never:g",
                 f"{secret}.sub:f", f"{tasks_mod}.{secret}:f"]:
        with pytest.raises(TaskNotAllowed):
            allow.resolve(name)
    assert secret not in sys.modules
    assert "frz_test_pkg_never" not in sys.modules
    assert pkg_member not in sys.modules
    assert set(sys.modules) == before
    assert not marker.exists()


def test_resolve_does_not_import_even_an_importable_stdlib_module(tasks_mod):
    # pick a stdlib module that is very unlikely to be imported by anything here
    candidates = ["this", "tabnanny", "pydoc_data.topics", "turtle"]
    name = next((c for c in candidates if c not in sys.modules), None)
    if name is None:
        pytest.skip("every candidate module is already imported")
    allow = Allowlist([tasks_mod])
    with pytest.raises(TaskNotAllowed):
        allow.resolve(f"{name}:main")
    assert name not in sys.modules


def test_a_function_added_after_the_import_gets_a_restart_hint(make_module, tmp_path):
    """A worker imports its modules once: a task added to the file later is "not defined",
    and the message says the file changed after the import, and when that was."""
    import os

    name = make_module("def old():\n    return 1\n")
    allowlist = Allowlist([name])
    with pytest.raises(TaskNotAllowed) as unchanged:
        allowlist.resolve(f"{name}:kw")
    assert "changed" not in str(unchanged.value)
    path = tmp_path / f"{name}.py"
    path.write_text("def old():\n    return 1\n\ndef kw():\n    return 2\n")
    stat = path.stat()  # a later mtime, even on a file system with coarse timestamps
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    with pytest.raises(TaskNotAllowed) as changed:
        allowlist.resolve(f"{name}:kw")
    message = str(changed.value)
    assert message.startswith(f"task '{name}:kw': no function 'kw' defined in {name} (")
    assert f"{path} changed after this worker imported it at " in message
    assert message.endswith("; restart the worker to load new functions)")
    assert allowlist.resolve(f"{name}:old")() == 1

"""Methods by name, so the CLI, the viewer and the evaluator can list and pick them.

The built-in methods register themselves when ``spantrace.methods`` is imported (its ``__init__``); this
module imports only the base class. Python imports that package before this module, so the built-ins are in
place before any user registration is examined. A name must be one the command line can express (``NAME_SYNTAX``,
not ``all`` or ``random``); a clash is refused unless ``replace=True``, and ``unregister_method`` restores what a
replacement shadowed."""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Any

from ..errors import RegistryError, SpanTraceError
from ..shadowing import ShadowingTable
from .base import AttributionMethod

_TABLE: ShadowingTable[type[AttributionMethod]] = ShadowingTable()
_METHODS = _TABLE.entries  # name -> the class in force
# What `--method NAME` and `eval --methods A,B` can carry: no comma, no whitespace, not empty.
NAME_SYNTAX = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
RESERVED_NAMES = ("all", "random")  # eval's --methods all, and the random baseline's rows


@dataclass(frozen=True)
class MethodInfo:
    """What ``spantrace methods`` shows for one method: its name, one line on it, and its cost class."""

    name: str
    description: str
    cost: str  # e.g. "O(M·N) per layer", "O(k·forward)"; "" when a method does not say


def register_method(method: type[AttributionMethod], *, replace: bool = False) -> type[AttributionMethod]:
    """Make ``method`` (an ``AttributionMethod`` subclass) available under ``method.name``; usable as a decorator.

    The CLI, the viewer and the evaluator then list it and run it like a built-in method. ``replace=True``
    overrides a method already registered under that name (``unregister_method`` brings it back). What its
    ``score`` returns is checked at every call (``methods.base.checked_scores``).
    """
    if not (isinstance(method, type) and issubclass(method, AttributionMethod)):
        raise RegistryError(f"register_method takes an AttributionMethod subclass, not {method!r}")
    name = getattr(method, "name", None)
    if not isinstance(name, str) or not name:
        raise RegistryError(f"{method.__name__} needs a class attribute `name` (a non-empty string)")
    if NAME_SYNTAX.fullmatch(name) is None or name.lower() in RESERVED_NAMES:
        raise RegistryError(
            f"{method.__name__}: the method name {name!r} cannot be given on the command line; use letters, digits "
            f"and - _ . + only (no comma or space), and not {' or '.join(RESERVED_NAMES)}"
        )
    previous = _METHODS.get(name)
    clash = "" if previous is None else (  # what a second registration under name is told
        f"a method is already registered as {name!r} ({previous.__module__}.{previous.__qualname__}); "
        "pass replace=True to override it, or choose another name"
    )
    _TABLE.add(name, method, replace=replace, clash=clash)
    return method


def unregister_method(name: str) -> type[AttributionMethod]:
    """Remove the method registered as ``name`` and return it; the one it replaced (``replace=True``) is back."""
    registered = ", ".join(sorted(_METHODS))
    return _TABLE.remove(name, missing=f"no method is registered as {name!r}; registered: {registered}")


def get_method(name: str, **options: Any) -> AttributionMethod:
    """A fresh instance of the method registered as ``name``; ``options`` go to its constructor."""
    if name not in _METHODS:
        raise SpanTraceError(f"unknown method {name!r}; available: {', '.join(sorted(_METHODS))}")
    method = _METHODS[name]
    try:
        inspect.signature(method).bind(**options)
    except TypeError as error:
        raise SpanTraceError(f"method {name!r} does not take the options {sorted(options)}: {error}") from error
    return method(**options)


def list_methods() -> list[str]:
    """The names of every registered method, sorted."""
    return sorted(_METHODS)


def available_methods() -> dict[str, str]:
    """Registered method names with their one-line descriptions."""
    return {info.name: info.description for info in describe_methods()}


def describe_methods() -> list[MethodInfo]:
    """Name, one-line description and cost class of every registered method, sorted by name."""
    return [
        MethodInfo(name=name, description=_METHODS[name].description, cost=getattr(_METHODS[name], "cost", ""))
        for name in sorted(_METHODS)
    ]


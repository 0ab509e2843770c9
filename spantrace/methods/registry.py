"""Methods by name, so the CLI, the viewer and the evaluator can list and pick them.

The built-in methods register themselves when ``spantrace.methods`` is imported (its ``__init__``); this
module imports only the base class."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from ..errors import SpanTraceError
from .base import AttributionMethod

_METHODS: dict[str, type[AttributionMethod]] = {}


@dataclass(frozen=True)
class MethodInfo:
    """What ``spantrace methods`` shows for one method: its name, one line on it, and its cost class."""

    name: str
    description: str
    cost: str  # e.g. "O(M·N) per layer", "O(k·forward)"; "" when a method does not say


def register_method(method: type[AttributionMethod], *, replace: bool = False) -> type[AttributionMethod]:
    """Make ``method`` (an ``AttributionMethod`` subclass) available under ``method.name``; usable as a decorator.

    The CLI, the viewer and the evaluator then list it and run it like a built-in method. ``replace=True``
    overrides a method already registered under that name.
    """
    if not (isinstance(method, type) and issubclass(method, AttributionMethod)):
        raise SpanTraceError(f"register_method takes an AttributionMethod subclass, not {method!r}")
    if not isinstance(getattr(method, "name", None), str) or not method.name:
        raise SpanTraceError(f"{method.__name__} needs a class attribute `name` (a non-empty string)")
    if method.name in _METHODS and _METHODS[method.name] is not method and not replace:
        raise SpanTraceError(
            f"two attribution methods are registered as {method.name!r}; pass replace=True to override it"
        )
    _METHODS[method.name] = method
    return method


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


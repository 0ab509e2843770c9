"""Methods by name, so the CLI, the viewer and the evaluator can list and pick them."""

from __future__ import annotations

from ..errors import SpanTraceError
from .base import AttributionMethod

_METHODS: dict[str, type[AttributionMethod]] = {}


def register(method: type[AttributionMethod]) -> type[AttributionMethod]:
    """Class decorator: make ``method`` available under ``method.name``."""
    if method.name in _METHODS and _METHODS[method.name] is not method:
        raise SpanTraceError(f"two attribution methods are registered as {method.name!r}")
    _METHODS[method.name] = method
    return method


def get_method(name: str) -> AttributionMethod:
    """A fresh instance of the method registered as ``name``."""
    _load_builtin_methods()
    if name not in _METHODS:
        raise SpanTraceError(f"unknown method {name!r}; available: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]()


def available_methods() -> dict[str, str]:
    """Registered method names with their one-line descriptions."""
    _load_builtin_methods()
    return {name: _METHODS[name].description for name in sorted(_METHODS)}


def _load_builtin_methods() -> None:
    from . import flashtrace, ifr  # noqa: F401  (importing registers them)

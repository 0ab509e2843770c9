"""A table of named entries that a registration may shadow and an unregistration restores.

The method registry (``methods.registry``) and the adapter registry (``architectures.registry``) keep their
entries this way: a name clash is refused unless ``replace=True``, a replaced entry is kept underneath, and
removing the newer one brings it back.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from .errors import RegistryError

T = TypeVar("T")


class ShadowingTable(Generic[T]):
    """``entries`` (name → entry, what is in force) and, per name, the entries it shadows, newest last."""

    def __init__(self) -> None:
        self.entries: dict[str, T] = {}
        self._shadowed: dict[str, list[T]] = {}

    def add(self, name: str, entry: T, *, replace: bool, clash: str) -> None:
        """Put ``entry`` under ``name``; another entry already there is kept underneath with ``replace``, else
        ``RegistryError(clash)``. Adding the entry that is already in force changes nothing."""
        previous = self.entries.get(name)
        if previous is not None and previous is not entry:
            if not replace:
                raise RegistryError(clash)
            self._shadowed.setdefault(name, []).append(previous)
        self.entries[name] = entry

    def remove(self, name: str, *, missing: str) -> T:
        """Take the entry in force under ``name`` out and return it; the one it shadowed (if any) is back.
        ``RegistryError(missing)`` when nothing is registered under ``name``."""
        if name not in self.entries:
            raise RegistryError(missing)
        removed = self.entries.pop(name)
        shadowed = self._shadowed.get(name)
        if shadowed:
            self.entries[name] = shadowed.pop()
        return removed

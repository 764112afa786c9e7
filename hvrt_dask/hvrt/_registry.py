"""A tiny name → strategy registry, shared by generation and selection strategies."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Map names (and aliases) to strategy instances.

    Parameters
    ----------
    kind : str
        Human-readable kind used in error messages (``"generation strategy"``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, strategy: T, *aliases: str, overwrite: bool = False) -> T:
        """Register ``strategy`` under ``strategy.name`` and ``aliases``; returns it."""
        names = (getattr(strategy, "name"), *aliases)
        for name in names:
            if not overwrite and name in self._items and self._items[name] is not strategy:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = strategy
        return strategy

    def get(self, name_or_obj: str | T) -> T:
        """Resolve a name (or pass a strategy object through)."""
        if not isinstance(name_or_obj, str):
            return name_or_obj
        try:
            return self._items[name_or_obj]
        except KeyError:
            raise ValueError(
                f"unknown {self.kind} {name_or_obj!r}; known: {sorted(self._items)}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

"""A tiny name -> implementation registry, used instead of if/elif factories.

A registry is the one place a variant is named: config validation asks it for the valid
names, and callers branch on properties of the registered class, never on the name.
Built-ins are declared lazily (``"module:attribute"``, see :mod:`secure_ffm.variants`) so
that listing the names imports nothing heavy; the implementation is imported on first ``get``.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

T = TypeVar("T")


def nearest(name: str, choices: list[str] | tuple[str, ...]) -> str | None:
    """The closest valid name to ``name``, or None when nothing is close."""
    found = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return found[0] if found else None


class Registry(Generic[T]):
    """Maps names to implementations; ``register`` works as a decorator.

    >>> partitioners = Registry("partitioner")
    >>> @partitioners.register("iid")
    ... def iid(): ...
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._lazy: dict[str, str] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(item: T) -> T:
            if name in self:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = item
            return item

        return decorator

    def register_lazy(self, name: str, target: str) -> None:
        """Register ``name`` as ``"package.module:Attribute"``, imported on the first :meth:`get` of it."""
        if name in self:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._lazy[name] = target

    @contextmanager
    def registered(self, name: str, item: T) -> Iterator[T]:
        """Register ``item`` as ``name`` for the duration of a ``with`` block (for tests and experiments)."""
        self.register(name)(item)
        try:
            yield item
        finally:
            del self._items[name]

    def get(self, name: str, *, key: str | None = None) -> T:
        """The implementation called ``name``; a ConfigError naming ``key`` when unknown."""
        if name in self._lazy:
            module, _, attribute = self._lazy[name].partition(":")
            self._items[name] = getattr(importlib.import_module(module), attribute)
            del self._lazy[name]
        try:
            return self._items[name]
        except KeyError:
            from secure_ffm.errors import ConfigError

            hint = nearest(name, self.names())
            fix = f"did you mean {hint!r}?" if hint else f"choose one of: {', '.join(self.names())}"
            raise ConfigError(key or self.kind, f"unknown {self.kind} {name!r}", fix) from None

    def names(self) -> tuple[str, ...]:
        """Every registered name, lazy ones included (nothing is imported)."""
        return tuple(sorted({*self._items, *self._lazy}))

    def items(self) -> list[tuple[str, T]]:
        """``(name, implementation)`` for every name (imports the lazy ones)."""
        return [(name, self.get(name)) for name in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._lazy

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

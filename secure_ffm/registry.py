"""A tiny name -> implementation registry, used instead of if/elif factories.

A registry is the one place a variant is named: config validation asks it for the valid
names, and callers branch on properties of the registered class, never on the name.
Built-ins are declared lazily (``"module:attribute"``, see :mod:`secure_ffm.variants`) so
that listing the names imports nothing heavy; the implementation is imported on first ``get``.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Generic, TypeVar

T = TypeVar("T")


def nearest(name: str, choices: Sequence[str]) -> str | None:
    """The closest valid name to ``name``, or None when nothing is close."""
    found = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return found[0] if found else None


def did_you_mean(name: str, choices: Sequence[str], *, show: Callable[[str], str] = repr, listing: str = "choose one of") -> str:
    """The fix for an unknown ``name``: ``did you mean X?`` with X the nearest choice as ``show`` writes it (quoted by
    default), else ``listing: every, choice``. Every "unknown name" error (config keys, registries, sweep files) uses it."""
    hint = nearest(name, choices)
    return f"did you mean {show(hint)}?" if hint is not None else f"{listing}: {', '.join(choices)}"


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

            raise ConfigError(key or self.kind, f"unknown {self.kind} {name!r}", did_you_mean(name, self.names())) from None

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

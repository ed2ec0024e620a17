"""A tiny name -> implementation registry, used instead of if/elif factories."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
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

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = item
            return item

        return decorator

    def get(self, name: str, *, key: str | None = None) -> T:
        """The implementation called ``name``; a ConfigError naming ``key`` when unknown."""
        try:
            return self._items[name]
        except KeyError:
            from secure_ffm.errors import ConfigError

            hint = nearest(name, self.names())
            fix = f"did you mean {hint!r}?" if hint else f"choose one of: {', '.join(self.names())}"
            raise ConfigError(key or self.kind, f"unknown {self.kind} {name!r}", fix) from None

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._items))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

"""A typed store for plugins' state (``config.stash``), as pytest's ``_pytest/stash.py``.

A plugin makes a module-level ``KEY = StashKey[T]()`` and keeps its state in
``config.stash[KEY]``: no attribute of ``Session`` or ``Config`` is a mailbox
between plugins, and mypy knows the type of what each key holds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar, cast

T = TypeVar("T")
D = TypeVar("D")


class StashKey(Generic[T]):
    """A key of a :class:`Stash`; each instance is a key of its own."""

    __slots__ = ()


class Stash:
    """A mapping from :class:`StashKey` to values of the key's type."""

    __slots__ = ("_storage",)

    def __init__(self) -> None:
        self._storage: dict[StashKey[Any], object] = {}

    def __setitem__(self, key: StashKey[T], value: T) -> None:
        self._storage[key] = value

    def __getitem__(self, key: StashKey[T]) -> T:
        return cast(T, self._storage[key])

    def get(self, key: StashKey[T], default: D) -> T | D:
        try:
            return self[key]
        except KeyError:
            return default

    def setdefault(self, key: StashKey[T], default: T) -> T:
        try:
            return self[key]
        except KeyError:
            self[key] = default
            return default

    def setdefault_factory(self, key: StashKey[T], factory: Callable[[], T]) -> T:
        """The key's value, made by ``factory()`` the first time."""
        try:
            return self[key]
        except KeyError:
            value = self[key] = factory()
            return value

    def __delitem__(self, key: StashKey[T]) -> None:
        del self._storage[key]

    def __contains__(self, key: StashKey[T]) -> bool:
        return key in self._storage

    def __len__(self) -> int:
        return len(self._storage)

"""Values a build computes once, even when several targets ask for them at the same time.

Targets run in threads (packager.scheduler), and the shared stages (the fp32 reference, the
baseline answers, a GGUF) are asked for by whichever target gets there first; the others wait
for that computation instead of starting their own. A failed computation is not remembered: the
next caller tries again (and most likely fails the same way, with its own traceback).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class OnceMap(Generic[T]):
    """A dict whose missing values are computed once per key, the other askers waiting for it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[Hashable, T] = {}
        self._key_locks: dict[Hashable, threading.Lock] = {}

    def __contains__(self, key: Hashable) -> bool:
        return key in self._values

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        if key in self._values:
            return self._values[key]
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            if key not in self._values:
                self._values[key] = compute()
            return self._values[key]


class once_property(Generic[T]):
    """functools.cached_property whose first computation other threads wait for (3.12 dropped that lock)."""

    def __init__(self, compute: Callable[[Any], T]) -> None:
        self.compute = compute
        self.name = compute.__name__
        self.__doc__ = compute.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> T:
        if obj is None:
            return self  # type: ignore[return-value]
        values: OnceMap[Any] = obj.__dict__.setdefault("_once_values", OnceMap())
        return values.get(self.name, lambda: self.compute(obj))

"""A small thread-safe LRU cache: what ``Services`` keeps predictors, checkpoints and results in."""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Hashable, TypeVar

T = TypeVar("T")


class LRU:
    """A small thread-safe LRU cache; each missing key is built once even when asked for concurrently."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict[Hashable, object] = OrderedDict()
        self._building: dict[Hashable, threading.Lock] = {}
        self._lock = threading.Lock()  # guards the two dicts only, never held while building

    def get_or_build(self, key: Hashable, build: Callable[[], T]) -> T:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]  # type: ignore[return-value]
            key_lock = self._building.setdefault(key, threading.Lock())
        # Two users asking for the same new predictor wait for one build (prompt encoding is
        # seconds on CPU); other keys, cached or not, are not blocked by a slow Hub download.
        with key_lock:
            with self._lock:
                if key in self._items:
                    return self._items[key]  # type: ignore[return-value]
            try:
                value = build()
            except BaseException:  # propagate, cache nothing: a retry builds again
                with self._lock:
                    self._building.pop(key, None)
                raise
            with self._lock:
                self._items[key] = value
                self._building.pop(key, None)
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
            return value

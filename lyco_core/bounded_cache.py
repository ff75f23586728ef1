"""The one cache kind of the pack: a small, thread-safe least-recently-used map.

Its users: derived rotations of OFT/BOFT modules per device and dtype (ComfyUI's low-VRAM path recomputes every
patch on every forward, so the weight-independent part is kept), adapters read by the nodes, and the info route's
answers. Keys carry whatever makes a value stale (a file's mtime and size, a device and dtype), so entries are never
invalidated, only evicted. ``make`` runs outside the lock: two threads may compute the same value once each, and
the last one stays (the values are equal by construction).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable


class BoundedCache:
    """At most ``size`` values; ``get(key, make)`` returns the cached value or stores ``make()``."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, make: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value

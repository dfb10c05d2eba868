"""A least-recently-used cache bounded in bytes, with hit / miss / eviction counts.

The server keeps each image's `EncodedImage` here (the decoder's KV cache after BOS + image tokens,
one row), keyed by the hash of the image's pixels: a hit skips the vision tower and the image
prefill. Only the engine thread touches the entries; `stats()` may be read from any thread.
"""
import collections
import threading
from typing import Any, Callable, Optional


class ByteLRU:
  def __init__(self, max_bytes: int, size_of: Callable[[Any], int]):
    self.max_bytes, self.size_of = max_bytes, size_of
    self._items: collections.OrderedDict = collections.OrderedDict()
    self._lock = threading.Lock()
    self.bytes = self.hits = self.misses = self.evictions = 0

  def get(self, key) -> Optional[Any]:
    with self._lock:
      item = self._items.get(key)
      if item is None:
        self.misses += 1
        return None
      self._items.move_to_end(key)
      self.hits += 1
      return item[0]

  def put(self, key, value) -> bool:
    """False when the value alone is larger than the whole cache (it is not kept)."""
    size = self.size_of(value)
    with self._lock:
      if key in self._items:
        self.bytes -= self._items.pop(key)[1]
      if size > self.max_bytes:
        return False
      while self._items and self.bytes + size > self.max_bytes:
        _, (_, old) = self._items.popitem(last=False)
        self.bytes -= old
        self.evictions += 1
      self._items[key] = (value, size)
      self.bytes += size
      return True

  def clear(self):
    with self._lock:
      self._items.clear()
      self.bytes = 0

  def __len__(self) -> int:
    return len(self._items)

  def __contains__(self, key) -> bool:
    return key in self._items

  def stats(self) -> dict:
    with self._lock:
      lookups = self.hits + self.misses
      return {"entries": len(self._items), "bytes": self.bytes, "max_bytes": self.max_bytes, "hits": self.hits,
              "misses": self.misses, "evictions": self.evictions,
              "hit_rate": round(self.hits / lookups, 4) if lookups else None}

"""A byte-bounded LRU cache of recurrent prefix states (SPEC §9.2).

The RNN analogue of a KV prefix cache: the state after a prompt prefix (an image, or an image and a
question with the sandwich prompt) has a constant size and can be resumed for any continuation.
Values are stored and returned as clones, so neither the caller that put a state nor the ones that
got it can change what the cache holds.
"""

from __future__ import annotations

import hashlib
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol, Sequence


class CacheableState(Protocol):
    nbytes: int

    def clone(self) -> "CacheableState": ...


def make_key(image_bytes: bytes | Sequence[bytes] | None, prefix_ids: Sequence[int], model_id: str) -> str:
    """sha256 hex digest naming (images, token prefix, model).

    `image_bytes`: None (no image), one bytes value, or a sequence of them (several images, in order;
    a sequence of one names the same prompt as its single value, an empty one the same as None). Each
    part is length-delimited and the number of images is hashed, so different splits of the same
    bytes never collide, "no image" differs from an empty image, and images in another order differ.
    """
    ids = list(prefix_ids)
    return make_prefix_keys(image_bytes, ids, [len(ids)], model_id)[0]


def _image_parts(image_bytes) -> list[bytes]:
    if image_bytes is None:
        return []
    if isinstance(image_bytes, (bytes, bytearray, memoryview)):
        return [bytes(image_bytes)]
    if isinstance(image_bytes, (list, tuple)) and all(isinstance(b, (bytes, bytearray, memoryview))
                                                      for b in image_bytes):
        return [bytes(b) for b in image_bytes]
    raise TypeError(f"image_bytes must be bytes, a list of bytes or None, got {type(image_bytes).__name__}")


def make_prefix_keys(image_bytes: bytes | Sequence[bytes] | None, ids: Sequence[int], lengths: Sequence[int],
                     model_id: str) -> list[str]:
    """`make_key(image_bytes, ids[:n], model_id)` for every n in `lengths` (ascending), in one pass
    over `ids`: a prompt of hundreds of turns has hundreds of checkpoints, and hashing each prefix
    from the start would cost quadratic time in the engine thread."""
    images = _image_parts(image_bytes)
    if not isinstance(model_id, str) or not model_id:
        raise ValueError(f"model_id must be a non-empty string, got {model_id!r}")
    if any(type(i) is not int for i in ids):  # bool is a subclass of int: refused too
        raise ValueError("prefix_ids must be a list of integers")
    if any(b < a for a, b in zip(lengths, lengths[1:])) or any(not 0 <= n <= len(ids) for n in lengths):
        raise ValueError("lengths must be ascending prefix lengths")

    h = hashlib.sha256()
    model = model_id.encode("utf-8")
    h.update(struct.pack("<Q", len(model)) + model)
    if not images:
        h.update(b"\x00")
    elif len(images) == 1:  # the one-image encoding, as before several images were taken
        h.update(b"\x01" + struct.pack("<Q", len(images[0])))
        h.update(images[0])
    else:
        h.update(b"\x02" + struct.pack("<Q", len(images)))
        for image in images:
            h.update(struct.pack("<Q", len(image)))
            h.update(image)
    keys, done = [], 0
    for n in lengths:
        # signed 64-bit: token ids include the negative image sentinel (-200); the count comes
        # last, so that the hash of a prefix can be carried on to the next one
        h.update(struct.pack(f"<{n - done}q", *ids[done:n]))
        done = n
        key = h.copy()
        key.update(struct.pack("<Q", n))
        keys.append(key.hexdigest())
    return keys


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    evictions: int
    entries: int
    bytes: int
    max_bytes: int


class PrefixStateCache:
    """key → state, least recently used evicted first, total `nbytes` kept <= `max_bytes`."""

    def __init__(self, max_bytes: int):
        if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 0:
            raise ValueError(f"max_bytes must be an integer >= 0, got {max_bytes!r}")
        self.max_bytes = max_bytes
        # key -> (state, its size when stored); the size is kept so accounting never drifts
        self._entries: OrderedDict[str, tuple[CacheableState, int]] = OrderedDict()
        self._bytes = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> CacheableState | None:
        """A clone of the state under `key` (marking it recently used), or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self._misses += 1
                return None
            value = entry[0]
            self._entries.move_to_end(key)
            self._hits += 1
        # cloning outside the lock: stored values are never mutated, so this is safe and lets
        # other threads use the cache meanwhile
        return value.clone()

    def put(self, key: str, value: CacheableState) -> bool:
        """Store a clone of `value`; False if it is larger than the whole cache (not stored)."""
        if not isinstance(key, str):
            raise TypeError(f"cache key must be a str (see make_key), got {type(key).__name__}")
        size = int(value.nbytes)
        if size < 0:
            raise ValueError(f"state nbytes must be >= 0, got {size}")
        if size > self.max_bytes:
            return False
        stored = value.clone()
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._entries[key] = (stored, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, evicted_size) = self._entries.popitem(last=False)
                self._bytes -= evicted_size
                self._evictions += 1
        return True

    def __contains__(self, key: str) -> bool:
        """Membership without counting a hit or refreshing recency."""
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                hits=self._hits,
                misses=self._misses,
                evictions=self._evictions,
                entries=len(self._entries),
                bytes=self._bytes,
                max_bytes=self.max_bytes,
            )

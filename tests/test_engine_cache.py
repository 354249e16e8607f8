"""PrefixStateCache: LRU by bytes, clones in and out, stats, thread safety; make_key."""

from __future__ import annotations

import threading

import pytest

from visualrwkv.engine.cache import PrefixStateCache, make_key


class FakeState:
    """A mutable value with the two things the cache relies on: nbytes and clone()."""

    def __init__(self, payload: list[int], nbytes: int = 10):
        self.payload = payload
        self.nbytes = nbytes

    def clone(self) -> "FakeState":
        return FakeState(list(self.payload), self.nbytes)


def test_get_returns_a_clone_that_can_be_mutated_safely():
    cache = PrefixStateCache(100)
    cache.put("k", FakeState([1, 2]))
    got = cache.get("k")
    got.payload.append(3)
    assert cache.get("k").payload == [1, 2]
    assert cache.get("k") is not cache.get("k")


def test_put_stores_a_clone():
    cache = PrefixStateCache(100)
    original = FakeState([1])
    cache.put("k", original)
    original.payload[0] = 99
    assert cache.get("k").payload == [1]


def test_lru_eviction_by_bytes():
    cache = PrefixStateCache(30)
    for key in "abc":
        cache.put(key, FakeState([ord(key)], nbytes=10))
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("d", FakeState([0], nbytes=10))  # evicts b, the least recently used
    assert "b" not in cache and all(k in cache for k in "acd")
    cache.put("e", FakeState([0], nbytes=20))  # needs two slots: c then a go
    assert "c" not in cache and "a" not in cache and "d" in cache and "e" in cache
    stats = cache.stats()
    assert stats.evictions == 3 and stats.bytes == 30 and stats.entries == 2


def test_replacing_a_key_updates_the_byte_count():
    cache = PrefixStateCache(100)
    cache.put("k", FakeState([1], nbytes=40))
    cache.put("k", FakeState([2], nbytes=25))
    assert cache.stats().bytes == 25 and len(cache) == 1 and cache.get("k").payload == [2]


def test_oversized_value_is_not_stored_and_evicts_nothing():
    cache = PrefixStateCache(50)
    cache.put("small", FakeState([1], nbytes=50))
    assert cache.put("big", FakeState([2], nbytes=51)) is False
    assert "big" not in cache and "small" in cache and cache.stats().evictions == 0


def test_stats_count_hits_and_misses():
    cache = PrefixStateCache(100)
    assert cache.get("nope") is None
    cache.put("k", FakeState([1]))
    cache.get("k")
    cache.get("k")
    assert "k" in cache  # membership does not count
    s = cache.stats()
    assert (s.hits, s.misses, s.evictions, s.entries, s.bytes, s.max_bytes) == (2, 1, 0, 1, 10, 100)
    cache.clear()
    assert len(cache) == 0 and cache.stats().bytes == 0


def test_zero_budget_cache_stores_nothing():
    cache = PrefixStateCache(0)
    assert cache.put("k", FakeState([1], nbytes=1)) is False and cache.get("k") is None


@pytest.mark.parametrize("bad", [-1, 1.5, "10", True])
def test_max_bytes_is_validated(bad):
    with pytest.raises(ValueError, match="max_bytes"):
        PrefixStateCache(bad)


def test_non_string_key_is_rejected():
    with pytest.raises(TypeError, match="key"):
        PrefixStateCache(10).put(("a", 1), FakeState([1]))


def test_concurrent_use_keeps_the_invariants():
    cache = PrefixStateCache(25 * 8)
    gets_per_thread = 400
    errors: list[BaseException] = []

    def worker(tid: int) -> None:
        try:
            for i in range(gets_per_thread):
                key = f"{(tid * 7 + i) % 40}"
                value = cache.get(key)
                if value is None:
                    cache.put(key, FakeState([int(key)], nbytes=8))
                else:
                    assert value.payload == [int(key)]
                    value.payload.append(-1)  # must never leak into the cache
        except BaseException as e:  # surfaced in the main thread below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    s = cache.stats()
    assert s.hits + s.misses == 6 * gets_per_thread
    assert s.bytes <= s.max_bytes and s.bytes == 8 * s.entries == 8 * len(cache)


# ---------------------------------------------------------------- keys


def test_make_key_is_deterministic_sha256_hex():
    k = make_key(b"img", [1, 2, 3], "model-a")
    assert k == make_key(b"img", [1, 2, 3], "model-a")
    assert len(k) == 64 and int(k, 16) >= 0
    # the same in every process and release: the digest of the documented framing, pinned
    assert k == "f634606d9574c6e2882f08ba62845a6d8c9eebf1ffa30059d3bb1e9fdb2c04bf"
    assert make_key(None, [-200, 5], "m") == "e300a35ce1f270aaef2810b90118a33d60dec621857e59c0f7ca44b8688b74d9"


def test_make_key_is_the_sha256_of_length_delimited_parts():
    # written out here: len(model) model, then 0x01 len(image) image (0x00 for no image), the ids as int64, count
    import hashlib
    import struct

    framed = (struct.pack("<Q", 7) + b"model-a" + b"\x01" + struct.pack("<Q", 3) + b"img"
              + struct.pack("<3q", 1, 2, 3) + struct.pack("<Q", 3))
    assert make_key(b"img", [1, 2, 3], "model-a") == hashlib.sha256(framed).hexdigest()
    framed = struct.pack("<Q", 1) + b"m" + b"\x00" + struct.pack("<2q", -200, 5) + struct.pack("<Q", 2)
    assert make_key(None, [-200, 5], "m") == hashlib.sha256(framed).hexdigest()


def test_make_key_distinguishes_every_part():
    base = make_key(b"img", [1, 2, 3], "m")
    variants = [
        make_key(b"imh", [1, 2, 3], "m"),
        make_key(None, [1, 2, 3], "m"),
        make_key(b"", [1, 2, 3], "m"),
        make_key(b"img", [1, 2], "m"),
        make_key(b"img", [1, 2, 3, 0], "m"),
        make_key(b"img", [3, 2, 1], "m"),
        make_key(b"img", [1, 2, 3], "n"),
        make_key(b"img", [-200, 1, 2, 3], "m"),
    ]
    assert len({base, *variants}) == len(variants) + 1
    # framing: moving bytes between the parts must change the key
    assert make_key(b"ab", [], "c") != make_key(b"a", [], "bc")


def test_make_key_validates_inputs():
    with pytest.raises(TypeError, match="image_bytes"):
        make_key("not bytes", [1], "m")
    with pytest.raises(ValueError, match="model_id"):
        make_key(b"x", [1], "")
    with pytest.raises(ValueError, match="prefix_ids"):
        make_key(b"x", [1, "2"], "m")


def test_prefix_keys_equal_the_key_of_each_prefix():
    from visualrwkv.engine.cache import make_prefix_keys

    ids = [5, -200, 7, 9]
    keys = make_prefix_keys(b"img", ids, [0, 1, 3, 4], "m")
    assert keys == [make_key(b"img", ids[:n], "m") for n in (0, 1, 3, 4)]
    assert len(set(keys)) == 4
    assert make_prefix_keys(b"img", ids, [2, 2], "m") == [make_key(b"img", ids[:2], "m")] * 2
    for bad in ([3, 1], [5], [-1]):
        with pytest.raises(ValueError, match="lengths must be ascending"):
            make_prefix_keys(b"img", ids, bad, "m")

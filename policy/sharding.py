"""Which shard owns a key. A fixed hash (crc32), never Python's salted ``hash()``,
so every process, on every machine, agrees."""

from __future__ import annotations

import zlib


def stable_hash(key: str) -> int:
    return zlib.crc32(key.encode())


def shard_of(key: str, shards: int) -> int:
    return stable_hash(key) % shards

"""Version-1 UUIDs as Scylla writes them in `cdc$time`: the timestamp is the base write's, in µs."""
from __future__ import annotations

import random
import uuid

# 100-ns intervals between the UUID epoch (1582-10-15) and the Unix epoch.
_UUID_EPOCH_OFFSET = 0x01B21DD213814000


def from_micros(micros: int, *, clock_seq: int | None = None, node: int | None = None) -> uuid.UUID:
    """A timeuuid at `micros` µs since the Unix epoch, random in the rest (so equal timestamps differ)."""
    ticks = micros * 10 + _UUID_EPOCH_OFFSET
    # Uniqueness, not secrecy: the module PRNG (a syscall per value for `secrets` made it the
    # emulated writer's most expensive line).
    if clock_seq is None:
        clock_seq = random.getrandbits(14)
    if node is None:
        node = random.getrandbits(48)
    time_low = ticks & 0xFFFFFFFF
    time_mid = (ticks >> 32) & 0xFFFF
    time_hi_version = ((ticks >> 48) & 0x0FFF) | 0x1000
    clock_seq_hi_variant = ((clock_seq >> 8) & 0x3F) | 0x80
    return uuid.UUID(fields=(time_low, time_mid, time_hi_version, clock_seq_hi_variant, clock_seq & 0xFF, node))


def to_micros(u: uuid.UUID) -> int:
    """µs since the Unix epoch of a version-1 UUID (sub-µs ticks dropped)."""
    return (u.time - _UUID_EPOCH_OFFSET) // 10

"""CDC stream ids: Scylla's 16-byte layout (SCYLLA_CDC.md §2.4).

bytes 0..7  token, big-endian signed int64 (what Scylla's CDCPartitioner routes by)
bytes 8..15 random(38) << 26 | vnode_index(22) << 4 | version(4), version 1
"""
from __future__ import annotations

import secrets

STREAM_ID_VERSION = 1
_VNODE_MASK = 0x3FFFFF
_RANDOM_BITS = 38


def make_stream_id(token: int, vnode_index: int, random_bits: int | None = None) -> bytes:
    if not -(2**63) <= token < 2**63:
        raise ValueError(f"token {token} outside int64")
    if not 0 <= vnode_index <= _VNODE_MASK:
        raise ValueError(f"vnode index {vnode_index} outside 22 bits")
    if random_bits is None:
        random_bits = secrets.randbits(_RANDOM_BITS)
    low = (random_bits & ((1 << _RANDOM_BITS) - 1)) << 26 | vnode_index << 4 | STREAM_ID_VERSION
    return token.to_bytes(8, "big", signed=True) + low.to_bytes(8, "big")


def stream_token(stream_id: bytes) -> int:
    return int.from_bytes(stream_id[:8], "big", signed=True)


def stream_version(stream_id: bytes) -> int | None:
    if len(stream_id) != 16:
        return None
    return stream_id[15] & 0x0F


def vnode_index(stream_id: bytes) -> int | None:
    """The vnode index of a version-1 id; None for ids Scylla made before versioning."""
    if stream_version(stream_id) != STREAM_ID_VERSION:
        return None
    return (int.from_bytes(stream_id[8:16], "big") >> 4) & _VNODE_MASK


def hex_id(stream_id: bytes) -> str:
    return "0x" + stream_id.hex()

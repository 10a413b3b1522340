"""Token-ring arithmetic for the emulation: vnode ranges, Scylla's shard function, tablets.

Everything here is pure and deterministic for a given seed, so a test can rebuild the
ring an emulated generation was made from and check stream choice independently.
"""
from __future__ import annotations

import bisect
import random
from dataclasses import dataclass

from relay.streams import make_stream_id

MIN_TOKEN = -(2**63)
MAX_TOKEN = 2**63 - 1
# Scylla's default murmur3_partitioner_ignore_msb_bits.
IGNORE_MSB_BITS = 12


def shard_of(token: int, shards: int, ignore_msb: int = IGNORE_MSB_BITS) -> int:
    """Scylla's shard of a token: ((unbiased << ignore_msb) mod 2^64 * shards) >> 64."""
    unbiased = (token - MIN_TOKEN) & (2**64 - 1)
    return (((unbiased << ignore_msb) & (2**64 - 1)) * shards) >> 64


def _first_token_of_shard(first: int, last: int, shard: int, shards: int) -> int | None:
    """The first token in [first, last] owned by `shard`, or None if the range has none."""
    if shard_of(first, shards) == shard:
        return first
    unbiased = (first - MIN_TOKEN) & (2**64 - 1)
    x0 = (unbiased << IGNORE_MSB_BITS) & (2**64 - 1)
    # Smallest x with (x * shards) >> 64 == shard; x advances 2^ignore_msb per token.
    x_target = -((-shard << 64) // shards)
    dx = (x_target - x0) % 2**64
    step = 1 << IGNORE_MSB_BITS
    dt = -(-dx // step)
    span = (last - first) % 2**64
    if dt > span:
        return None
    tok = first + dt
    if tok > MAX_TOKEN:
        tok -= 2**64
    return tok


@dataclass(frozen=True)
class VnodeRing:
    """A ring of sorted vnode end tokens. Range i covers (tokens[i-1], tokens[i]];
    range 0 wraps: (tokens[-1], tokens[0]]."""

    tokens: tuple[int, ...]
    shards: int

    @classmethod
    def random(cls, vnodes: int, shards: int, seed: int | None = None) -> VnodeRing:
        rng = random.Random(seed)
        tokens: set[int] = set()
        while len(tokens) < vnodes:
            tokens.add(rng.randint(MIN_TOKEN + 1, MAX_TOKEN))
        return cls(tuple(sorted(tokens)), shards)

    def vnode_of(self, token: int) -> int:
        i = bisect.bisect_left(self.tokens, token)
        return 0 if i == len(self.tokens) else i

    def range_bounds(self, index: int) -> tuple[int, int]:
        """Inclusive [first, last] tokens of range `index` (the first may wrap past MAX_TOKEN)."""
        prev = self.tokens[index - 1]  # index 0 takes tokens[-1]: the wrapping range
        first = prev + 1 if prev < MAX_TOKEN else MIN_TOKEN
        return first, self.tokens[index]

    def make_streams(self, rng: random.Random) -> list[list[bytes]]:
        """One stream per shard per vnode range, at the first token that shard owns there
        (cdc/generation.cc create_stream_ids); a shard owning no token of the range gets none."""
        out: list[list[bytes]] = []
        for index in range(len(self.tokens)):
            first, last = self.range_bounds(index)
            streams = []
            for shard in range(self.shards):
                tok = _first_token_of_shard(first, last, shard, self.shards)
                if tok is not None:
                    streams.append(make_stream_id(tok, index, rng.getrandbits(38)))
            if not streams:  # never fewer than one stream per vnode
                streams.append(make_stream_id(last, index, rng.getrandbits(38)))
            out.append(streams)
        return out


def tablet_last_tokens(count: int) -> list[int]:
    """Last token of each of `count` equal tablets, in ring order."""
    size = 2**64 // count
    return [MIN_TOKEN + (i + 1) * size - 1 for i in range(count - 1)] + [MAX_TOKEN]


def tablet_of(token: int, last_tokens: list[int]) -> int:
    return bisect.bisect_left(last_tokens, token)

"""Redis dedup keys (DESIGN §4): check before producing, mark only after Kafka's ack.

Keys are short binary digests of the event's CDC identity (stream, cdc$time, batch_seq_no),
so a key costs little memory however long the stream ids are.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence

from relay.model import OutboxEvent


class DedupUnavailable(Exception):
    """Redis is down and `redis.on_outage = "pause"`: the window must wait."""


# One round trip and one command to encode per batch: SET in a pipeline costs a command per key
# on the client (LIBRARIES.md §5). Keys of one call must share a slot on Redis Cluster.
_MARK_LUA = """
for i, key in ipairs(KEYS) do
  redis.call('SET', key, '1', 'EX', ARGV[1])
end
return #KEYS
"""
_MARK_CHUNK = 1000  # bounds how long one script holds Redis


def dedup_key(prefix: bytes, event: OutboxEvent) -> bytes:
    if event.dedup_key is not None:
        return event.dedup_key
    h = hashlib.blake2b(digest_size=12)
    h.update(event.source.encode())
    h.update(event.stream_id)
    h.update(event.cdc_time.bytes)
    h.update(event.batch_seq_no.to_bytes(4, "big", signed=True))
    event.dedup_key = prefix + h.digest()
    return event.dedup_key


class Dedup:
    def __init__(self, client, prefix: str, ttl_seconds: int, on_outage: str) -> None:
        self.client = client
        self.prefix = prefix.encode()
        self.ttl = ttl_seconds
        self.fail_open = on_outage == "fail-open"
        self.unavailable = 0  # operations done without Redis (fail-open), for the metric
        self._mark = client.register_script(_MARK_LUA)

    def split(self, events: Sequence[OutboxEvent]) -> tuple[list[OutboxEvent], list[OutboxEvent]]:
        """(new, already delivered). On an outage: everything is new (fail-open) or DedupUnavailable."""
        import redis

        if not events:
            return [], []
        keys = [dedup_key(self.prefix, e) for e in events]
        try:
            found = self.client.mget(keys)
        except redis.RedisError as exc:
            if self.fail_open:
                self.unavailable += len(events)
                return list(events), []
            raise DedupUnavailable(str(exc)) from exc
        new = [e for e, v in zip(events, found, strict=True) if v is None]
        old = [e for e, v in zip(events, found, strict=True) if v is not None]
        return new, old

    def mark(self, events: Sequence[OutboxEvent]) -> None:
        """SET key EX ttl for delivered (or dead-lettered) events, one script call per batch."""
        import redis

        if not events:
            return
        keys = [dedup_key(self.prefix, e) for e in events]
        try:
            for i in range(0, len(keys), _MARK_CHUNK):
                self._mark(keys=keys[i:i + _MARK_CHUNK], args=[self.ttl])
        except redis.RedisError as exc:
            if self.fail_open:
                self.unavailable += len(events)
                return
            raise DedupUnavailable(str(exc)) from exc

"""relay/dedup.py against the real Redis: check, mark, TTL, buckets, restarts, outages (DESIGN §4).

Each test has its own key prefix and deletes its keys. An outage is a client of a port nothing
listens on (the shared Redis is never stopped here; tests/test_outages.py does that)."""
from __future__ import annotations

import time
import uuid

import pytest
from conftest import unique

from relay import timeuuid
from relay.dedup import BUCKET_US, CALL_MEMBERS, CHUNK, Dedup, DedupUnavailable
from relay.model import OutboxEvent

T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
TTL = 3600


@pytest.fixture
def prefix(redis_client):
    p = unique("dedup") + ":"
    yield p
    keys = list(redis_client.scan_iter(match=f"{p}*", count=1000))
    for i in range(0, len(keys), 500):
        redis_client.delete(*keys[i:i + 500])


@pytest.fixture
def down_client():
    """A Redis client whose server is down: nothing listens on port 1."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis(host="127.0.0.1", port=1, socket_timeout=0.2, socket_connect_timeout=0.2,
                       retry=Retry(NoBackoff(), 0))


def event(us: int, stream: bytes = b"\x01" * 16, seq: int = 0, table: str = "shop.outbox",
          cdc_time: uuid.UUID | None = None, **kw) -> OutboxEvent:
    t = cdc_time or timeuuid.from_micros(us)
    fields = dict(event_id=str(uuid.uuid4()), aggregate_type="order", aggregate_id="a", event_type="created",
                  topic="t", key=b"a", payload=b"p")
    fields.update(kw)
    return OutboxEvent(source=table, stream_id=stream, cdc_time=t, cdc_time_us=timeuuid.to_micros(t),
                       batch_seq_no=seq, **fields)


def copy(e: OutboxEvent, **kw) -> OutboxEvent:
    """The same CDC row mapped again (another replica, a restart): a fresh object, no cached digest."""
    fields = dict(source=e.source, stream_id=e.stream_id, cdc_time=e.cdc_time, cdc_time_us=e.cdc_time_us,
                  batch_seq_no=e.batch_seq_no, event_id=e.event_id, aggregate_type=e.aggregate_type,
                  aggregate_id=e.aggregate_id, event_type=e.event_type, topic=e.topic, key=e.key, payload=e.payload)
    fields.update(kw)
    return OutboxEvent(**fields)


def spread(n: int, seconds: float, start: int = T0, **kw) -> list[OutboxEvent]:
    """n events with cdc$time spread evenly over `seconds`, streams and batch_seq_no varied."""
    step = int(seconds * 1e6 / n)
    return [event(start + i * step, stream=bytes([i % 7]) * 16, seq=i % 3, **kw) for i in range(n)]


def dedup(client, prefix: str, on_outage: str = "pause", ttl: int = TTL) -> Dedup:
    return Dedup(client, prefix, ttl, on_outage)


# --------------------------------------------------------------------------- check and mark

def test_nothing_marked_is_all_new_in_order(redis_client, prefix):
    events = spread(50, 3)
    assert dedup(redis_client, prefix).split(events) == (events, [])
    assert dedup(redis_client, prefix).split([]) == ([], [])
    assert not list(redis_client.scan_iter(match=f"{prefix}*")), "a check writes nothing"


def test_marked_events_are_seen_by_a_fresh_instance(redis_client, prefix):
    """Dedup across restarts and replicas: the marks live in Redis, keyed by the CDC identity only."""
    events = spread(40, 2.5)
    dedup(redis_client, prefix).mark(events[::2])
    again = [copy(e, event_id="other", topic="other", payload=b"other") for e in events]
    new, seen = dedup(redis_client, prefix).split(again)
    assert seen == again[::2]
    assert new == again[1::2]


def test_identity_is_stream_time_and_batch_seq_no(redis_client, prefix):
    t = timeuuid.from_micros(T0)
    same_us_other_uuid = timeuuid.from_micros(T0)  # same µs, other clock sequence and node
    base = event(T0, cdc_time=t)
    variants = [event(T0, cdc_time=t, stream=b"\x02" * 16), event(T0, cdc_time=t, seq=1),
                event(T0, cdc_time=same_us_other_uuid), event(T0, cdc_time=t, table="shop.other")]
    d = dedup(redis_client, prefix)
    d.mark([base])
    new, seen = d.split([copy(base), *variants])
    assert [e.identity for e in seen] == [base.identity]
    assert new == variants


def test_sets_per_table_and_second_with_a_hash_tag(redis_client, prefix):
    events = spread(30, 3, table="shop.outbox") + spread(10, 1, table="shop.other")
    dedup(redis_client, prefix).mark(events)
    keys = sorted(k.decode() for k in redis_client.scan_iter(match=f"{prefix}*"))
    second = T0 // BUCKET_US
    assert keys == sorted([f"{prefix}{{shop.outbox}}:{second + i}" for i in range(3)] + [
        f"{prefix}{{shop.other}}:{second}"])
    assert sum(redis_client.scard(k) for k in keys) == 40
    assert all(len(m) == 12 for k in keys for m in redis_client.smembers(k))


def test_large_calls_span_several_scripts(redis_client, prefix):
    """More members than one script takes, and more than one unpack in one second."""
    n = CALL_MEMBERS * 2 + 123
    events = spread(n, 2)
    assert n / 2 > CHUNK
    d = dedup(redis_client, prefix)
    d.mark(events[: n // 2])
    new, seen = dedup(redis_client, prefix).split(events)
    assert seen == events[: n // 2] and new == events[n // 2:]
    d.mark(new)
    assert dedup(redis_client, prefix).split([copy(e) for e in events])[0] == []


def test_mark_is_idempotent(redis_client, prefix):
    events = spread(20, 1)
    d = dedup(redis_client, prefix)
    d.mark(events)
    d.mark(events + events)
    [key] = redis_client.scan_iter(match=f"{prefix}*")
    assert redis_client.scard(key) == 20


# --------------------------------------------------------------------------- TTL

def test_every_mark_gives_its_set_the_full_ttl(redis_client, prefix):
    """A member lives at least ttl after it was marked: a later mark of the same second renews it."""
    first, later = event(T0), event(T0 + 10)
    d = dedup(redis_client, prefix, ttl=TTL)
    d.mark([first])
    [key] = redis_client.scan_iter(match=f"{prefix}*")
    assert TTL - 5 <= redis_client.ttl(key) <= TTL
    redis_client.expire(key, 5)  # as if most of the TTL had passed
    d.mark([later])
    assert TTL - 5 <= redis_client.ttl(key) <= TTL
    assert d.split([copy(first), copy(later)])[0] == []


def test_expired_marks_are_new_again(redis_client, prefix):
    d = dedup(redis_client, prefix, ttl=1)
    e = event(T0)
    d.mark([e])
    [key] = redis_client.scan_iter(match=f"{prefix}*")
    deadline = time.monotonic() + 30
    while redis_client.exists(key) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not redis_client.exists(key), "Redis expires the set"
    assert d.split([copy(e)]) == ([copy(e)], [])


# --------------------------------------------------------------------------- outages

def test_fail_open_treats_everything_as_new_and_counts_it(down_client):
    d = Dedup(down_client, "x:", TTL, "fail-open")
    events = spread(7, 2)
    assert d.split(events) == (events, [])
    assert d.unavailable == 7
    d.mark(events[:3])
    assert d.unavailable == 10


def test_pause_raises_on_check_and_on_mark(down_client):
    d = Dedup(down_client, "x:", TTL, "pause")
    with pytest.raises(DedupUnavailable):
        d.split(spread(3, 1))
    with pytest.raises(DedupUnavailable):
        d.mark(spread(3, 2))
    assert d.unavailable == 0


def test_nothing_to_do_needs_no_redis(down_client):
    d = Dedup(down_client, "x:", TTL, "pause")
    assert d.split([]) == ([], [])
    d.mark([])


def test_digest_is_computed_once_per_event(redis_client, prefix):
    e = event(T0)
    d = dedup(redis_client, prefix)
    d.split([e])
    digest = e.dedup_digest
    assert digest is not None and len(digest) == 12
    d.mark([e])
    assert e.dedup_digest is digest
    assert copy(e).dedup_digest is None


def test_a_client_that_decodes_replies_works_too(redis_url, prefix):
    import redis

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    events = spread(10, 1)
    d = dedup(client, prefix)
    d.mark(events[:4])
    assert d.split(events) == (events[4:], events[:4])
    client.close()

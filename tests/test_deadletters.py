"""DeadLetterWriter through the real driver against the relay schema: one row per event, the first
failure time kept across rewrites without LWT and without timestamps in the future (Scylla refuses
`USING TIMESTAMP` more than 3 days ahead)."""
from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from relay import timeuuid
from relay.deadletters import DeadLetterWriter, count_pending
from relay.model import OutboxEvent


@pytest.fixture
def writer(cql, keyspace, relay_config):
    relay_config()  # relay's tables in the test's keyspace, as `relay schema apply` makes them
    return DeadLetterWriter(cql, keyspace)


def event(source: str) -> OutboxEvent:
    us = time.time_ns() // 1000 - 5_000_000
    return OutboxEvent(source=source, stream_id=bytes(range(16)), cdc_time=timeuuid.from_micros(us), cdc_time_us=us,
                       batch_seq_no=0, event_id=str(uuid.uuid4()), aggregate_type="order", aggregate_id="agg-1",
                       event_type="created", topic="outbox.event.order", key=b"agg-1", payload=b"x" * 20,
                       headers={"trace": "t1"})


def rows(cql, keyspace):
    return list(cql.execute(f"SELECT event_id, attempts, first_failed_at, last_failed_at, status, error_class, "
                            f"writetime(first_failed_at) AS wt FROM {keyspace}.dead_letters"))


def test_rewrites_keep_one_row_and_the_first_failure_time(cql, keyspace, writer):
    ev = event(f"{keyspace}.outbox")
    t1 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    writer.write(ev, "MSG_SIZE_TOO_LARGE", "too big", now=t1)
    writer.write(ev, "MSG_SIZE_TOO_LARGE", "still too big", now=t1 + timedelta(minutes=5))
    writer.write(ev, "INVALID_RECORD", "other", now=t1 + timedelta(minutes=9))
    [row] = rows(cql, keyspace)
    assert row.event_id == ev.event_id and row.attempts == 3 and row.status == "pending"
    assert row.first_failed_at.replace(tzinfo=UTC) == t1
    assert row.last_failed_at.replace(tzinfo=UTC) == t1 + timedelta(minutes=9)
    assert row.error_class == "INVALID_RECORD"
    # Every cell carries the server's (or driver's) current time, never one in the future.
    assert row.wt <= time.time_ns() // 1000
    assert count_pending(cql, keyspace, f"{keyspace}.outbox") == 1


def test_a_rewrite_never_resurrects_a_replayed_or_discarded_dead_letter(cql, keyspace, writer):
    ev = event(f"{keyspace}.outbox")
    writer.write(ev, "MSG_SIZE_TOO_LARGE", "too big")
    cql.execute(f"UPDATE {keyspace}.dead_letters SET status = 'replayed' WHERE source_table = %s AND day = %s "
                f"AND cdc_time = %s AND stream_id = %s AND batch_seq_no = 0",
                (ev.source, datetime.fromtimestamp(ev.cdc_time_us / 1e6, tz=UTC).date(), ev.cdc_time, ev.stream_id))
    writer.write(ev, "MSG_SIZE_TOO_LARGE", "too big again")
    [row] = rows(cql, keyspace)
    assert row.status == "replayed" and row.attempts == 2
    assert count_pending(cql, keyspace, f"{keyspace}.outbox") == 0

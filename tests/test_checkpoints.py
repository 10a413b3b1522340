"""Checkpoint writes (relay.checkpoints) on the real server."""
from __future__ import annotations

import pytest

from relay import config
from relay.checkpoints import BATCH_ROWS, CheckpointStore
from relay.model import Task

GEN = 1_790_000_000_000_000  # µs


def rows_of(n: int, table: str = "shop.outbox", gen: int = GEN) -> list[tuple[Task, int]]:
    return [(Task(table, gen, i, (bytes([i % 256, i // 256]),), None), gen + 1_000_000 + 7 * i) for i in range(n)]


def test_positions_of_many_tasks_and_partitions_are_saved_and_read_back(cql, relay_config):
    cfg = config.load(relay_config())
    store = CheckpointStore(cql, cfg.scylla.relay_keyspace, "replica/w0")
    first = rows_of(2 * BATCH_ROWS + 50)  # three batches of one (table, generation) partition
    other = rows_of(5, gen=GEN + 60_000_000)  # and a batch of another partition, in the same call
    store.save_many(first + other)
    assert store.load("shop.outbox", GEN) == {t.task_id: p for t, p in first}
    assert store.load("shop.outbox", GEN + 60_000_000) == {t.task_id: p for t, p in other}
    owners = {owner for _, _, owner, _ in store.load_full("shop.outbox", GEN)}
    assert owners == {"replica/w0"}


def test_a_failed_write_raises(cql, relay_config):
    cfg = config.load(relay_config())
    ks = cfg.scylla.relay_keyspace
    store = CheckpointStore(cql, ks, "replica/w0")
    cql.execute(f"DROP TABLE {ks}.checkpoints", timeout=60)
    with pytest.raises(Exception, match="checkpoints"):
        store.save_many(rows_of(10))


def test_a_save_in_flight_is_answered_later_and_read_back(cql, relay_config):
    cfg = config.load(relay_config())
    store = CheckpointStore(cql, cfg.scylla.relay_keyspace, "replica/w1")
    rows = rows_of(BATCH_ROWS + 1)
    pending = store.start_save(rows)
    pending.wait()
    assert pending.done(), "every batch's answer was counted"
    assert store.load("shop.outbox", GEN) == {t.task_id: p for t, p in rows}


def test_a_failed_save_in_flight_raises_once_every_batch_is_answered(cql, relay_config):
    cfg = config.load(relay_config())
    ks = cfg.scylla.relay_keyspace
    store = CheckpointStore(cql, ks, "replica/w0")
    cql.execute(f"DROP TABLE {ks}.checkpoints", timeout=60)
    pending = store.start_save(rows_of(2 * BATCH_ROWS))
    with pytest.raises(Exception, match="checkpoints"):
        pending.wait()
    assert pending.done()

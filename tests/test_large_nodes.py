"""A node with more shards than Scylla allows keys in one IN (issue 7 item 4), end to end.

The emulated generation has 120 streams per vnode (one per shard of a 120-shard node), so
every task holds 120 streams; Scylla would refuse them in one IN list. relay must read
them in several queries and still deliver every event once, in order per aggregate.
Judged by consuming Kafka.
"""
from __future__ import annotations

from harness import Outbox, assert_delivered_in_order, consume_all

from relay.discovery import tasks_of
from relay.model import Generation
from relay.reader import SCYLLA_MAX_IN_KEYS


def refuses_long_in(cql, log_table: str, streams: list[bytes]) -> bool:
    """The stack stands in for Scylla's 100-key IN limit (a guardrail, deploy/local): one over is refused."""
    from cassandra import InvalidRequest

    try:
        stmt = cql.prepare(f'SELECT "cdc$time" FROM {log_table} WHERE "cdc$stream_id" IN ?')
        cql.execute(stmt, (streams[:101],))
    except InvalidRequest:
        return True
    return False


def test_120_streams_per_vnode_end_to_end(cql, keyspace, relay_config, relay_process, kafka_bootstrap):
    outbox = Outbox.create(cql, keyspace, vnodes=3, shards=120)
    gen = outbox.emulator.generations[-1]
    assert min(len(s) for s in gen.streams_by_vnode.values()) > SCYLLA_MAX_IN_KEYS
    tasks = tasks_of(Generation(outbox.table, gen.start_us, None, tuple(gen.all_streams()), False))
    assert len(tasks) == 3 and all(len(t.streams) == 120 for t in tasks)

    outbox.write(3_000, aggregates=600)
    used = {outbox.emulator.stream_for(outbox.table, {"aggregate_id": agg}, gen.start_us) for agg in outbox.written}
    assert len(used) > 200, "the events should spread over most of the streams"

    relay = relay_process(relay_config(workers=2), "--until", "now")
    assert relay.wait(240) == 0, relay.output()[-3000:]
    delivered = consume_all(kafka_bootstrap, [f"{keyspace}.order"])
    assert len(delivered.records) == 3_000
    assert_delivered_in_order(outbox, delivered)
    # The same reads as one IN per vnode would have been refused here, as on Scylla.
    assert refuses_long_in(cql, f'{keyspace}."outbox_scylla_cdc_log"', list(tasks[0].streams))

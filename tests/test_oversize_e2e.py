"""A bad record dead-letters only itself (issue 7 item 10), end to end: emulated CDC → relay
processes → a topic whose max.message.bytes is 10,000, checked by consuming it."""
from __future__ import annotations

import os

from harness import assert_delivered_in_order, consume_all
from publisher_helpers import create_topic


def test_oversized_events_alone_are_dead_lettered_and_the_rest_flows_in_order(cql, keyspace, outbox, relay_config,
                                                                             relay_process, kafka_bootstrap):
    topic = f"{keyspace}.order"
    create_topic(kafka_bootstrap, topic, **{"max.message.bytes": "10000"})
    rows = outbox.rows(3_000, aggregates=300)
    oversized = {str(r["id"]) for r in rows[13::100]}  # 30 of 3,000
    for r in rows:
        if str(r["id"]) in oversized:
            r["payload"] = os.urandom(20_000)  # incompressible: too big for the topic even with lz4
    for start in range(0, len(rows), 300):  # each round writes an aggregate at most once: per-aggregate order
        outbox.emulator.write_many(outbox.table, rows[start:start + 300])

    relay = relay_process(relay_config(workers=2), "--until", "now")
    assert relay.wait(240) == 0, relay.output()[-3000:]

    dead = list(cql.execute(f"SELECT event_id, error_class, status FROM {keyspace}.dead_letters"))
    assert sorted(r.event_id for r in dead) == sorted(oversized), \
        f"{len(dead)} dead letters for {len(oversized)} oversized events"
    assert {(r.error_class, r.status) for r in dead} == {("MSG_SIZE_TOO_LARGE", "pending")}
    for agg, ids in outbox.written.items():
        outbox.written[agg] = [i for i in ids if i not in oversized]
    assert_delivered_in_order(outbox, consume_all(kafka_bootstrap, [topic]))
    print(f"oversized: {len(dead)} dead letters (exactly the oversized), "
          f"{sum(map(len, outbox.written.values()))} delivered once, in order")

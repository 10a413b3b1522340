"""[dlq] order = "park-aggregate" end to end (issue 11): a record of aggregate A too big for its topic
in the middle of A's sequence parks A's later events (other aggregates flow); a restart changes
nothing; after the limit is raised, `relay dlq replay` publishes A's events complete and in order and
unparks A, whose next events flow live again. Checked by consuming Kafka."""
from __future__ import annotations

import os

from dlq_helpers import run_json, set_topic_config
from harness import Outbox, assert_delivered_in_order, consume_all, now_micros
from publisher_helpers import create_topic

AGGS = 10
POISONED = "agg-00002"


def write_round(outbox: Outbox, at_us: int, poison: bool = False) -> None:
    """One event per aggregate at `at_us` (+1 ms each); A's is too big for the topic if `poison`."""
    rows = outbox.rows(AGGS, aggregates=AGGS)
    if poison:
        rows[2]["payload"] = os.urandom(20_000)
    outbox.emulator.write_many(outbox.table, rows, timestamps=[at_us + i * 1000 for i in range(AGGS)])


def statuses(cql, keyspace: str) -> dict[str, list[str]]:
    out: dict[str, list[tuple]] = {}
    for r in cql.execute(f"SELECT aggregate_id, cdc_time, status, error_class FROM {keyspace}.dead_letters"):
        out.setdefault(r.aggregate_id, []).append((r.cdc_time.time, r.status, r.error_class))
    return {agg: [f"{s}/{c}" for _, s, c in sorted(v)] for agg, v in out.items()}


def test_park_aggregate_holds_a_back_until_replay(cql, keyspace, relay_config, relay_process, kafka_bootstrap,
                                                 capsys):
    start = now_micros() - 600_000_000
    outbox = Outbox.create(cql, keyspace, start_us=start)
    topic = f"{keyspace}.order"
    create_topic(kafka_bootstrap, topic, **{"max.message.bytes": "10000"})
    for k in range(8):  # 5 s apart: every round is a window of its own (window_seconds = 2)
        write_round(outbox, start + 60_000_000 + k * 5_000_000, poison=(k == 3))
    config = relay_config(workers=2, dlq={"order": "park-aggregate"})
    relay = relay_process(config, "--until", "now")
    assert relay.wait(240) == 0, relay.output()[-3000:]

    assert statuses(cql, keyspace) == {POISONED: ["pending/MSG_SIZE_TOO_LARGE"] + ["parked/PARKED"] * 4}
    assert [r.aggregate_id for r in cql.execute(f"SELECT aggregate_id FROM {keyspace}.parked_aggregates")] == \
        [POISONED]
    a_ids = list(outbox.written[POISONED])
    others = {agg: ids for agg, ids in outbox.written.items() if agg != POISONED}
    delivered = consume_all(kafka_bootstrap, [topic])
    assert_delivered_in_order({**others, POISONED: a_ids[:3]}, delivered)

    # A restart (new processes, cold caches) with more events: A's still park, the others flow.
    for _ in range(2):  # after the first run's checkpoints: now
        write_round(outbox, now_micros())
    relay = relay_process(config, "--until", "now")
    assert relay.wait(240) == 0, relay.output()[-3000:]
    assert statuses(cql, keyspace) == {POISONED: ["pending/MSG_SIZE_TOO_LARGE"] + ["parked/PARKED"] * 6}
    others = {agg: ids for agg, ids in outbox.written.items() if agg != POISONED}
    assert_delivered_in_order({**others, POISONED: a_ids[:3]}, consume_all(kafka_bootstrap, [topic]))

    # The fix, then the replay: A complete, in order, once; A unparked.
    set_topic_config(kafka_bootstrap, topic, **{"max.message.bytes": "1000000"})
    code, out = run_json(capsys, "dlq", "replay", "--config", str(config), "--table", outbox.table)
    assert code == 0 and (out["matched"], out["replayed"], out["unparked"]) == (7, 7, [POISONED]), out
    assert_delivered_in_order(outbox, consume_all(kafka_bootstrap, [topic]))
    assert list(cql.execute(f"SELECT aggregate_id FROM {keyspace}.parked_aggregates")) == []

    # Unparked: A's next event flows live.
    write_round(outbox, now_micros())
    relay = relay_process(config, "--until", "now")
    assert relay.wait(240) == 0, relay.output()[-3000:]
    report = assert_delivered_in_order(outbox, consume_all(kafka_bootstrap, [topic]))
    assert statuses(cql, keyspace) == {POISONED: ["replayed/MSG_SIZE_TOO_LARGE"] + ["replayed/PARKED"] * 6}
    print(f"park-aggregate: {report}")

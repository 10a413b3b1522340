"""start_from under generation switches and restarts (DESIGN §3): start_from applies only to relay's
first start on a table; every later task starts at its generation's (stream set's) start. Checked by
consuming the topics: 0 lost, nothing from before the start, order kept."""
from __future__ import annotations

import signal
import uuid

import pytest
from harness import Outbox, Writer, assert_delivered_in_order, consume_all, wait_for_cdc_time

from relay.testing import now_micros

S = 1_000_000


def write_before_start(outbox: Outbox, age_s: float, tag: str, n: int = 30) -> dict[str, list[str]]:
    """Events written `age_s` ago, before relay's first start, on aggregates of their own."""
    written: dict[str, list[str]] = {}
    rows, stamps = [], []
    for i in range(n):
        agg, eid = f"{tag}-{i % 10}", uuid.uuid1()
        rows.append({"aggregate_id": agg, "id": eid, "aggregate_type": "order", "event_type": tag, "payload": b"{}"})
        stamps.append(now_micros() - int(age_s * S) + i)
        written.setdefault(agg, []).append(str(eid))
    outbox.emulator.write_many(outbox.table, rows, timestamps=stamps)
    return written


@pytest.mark.parametrize("start_from", ["earliest", "now", "lookback:30"])
def test_start_from_across_a_switch_and_a_restart(start_from, cql, keyspace, relay_config, relay_process,
                                                   kafka_bootstrap):
    outbox = Outbox.create(cql, keyspace, start_us=now_micros() - 300 * S)
    topic = f"{keyspace}.order"
    old = write_before_start(outbox, 200, "old")  # before any lookback
    recent = write_before_start(outbox, 10, "recent")  # inside lookback:30
    expected = {"earliest": {**old, **recent}, "now": {}, "lookback:30": recent}[start_from]

    path = relay_config(workers=2, relay={"start_from": start_from})
    first = relay_process(path)
    first.wait_until(lambda: first.status().get("ready"), 90, "relay ready")
    writer = Writer(outbox)
    writer.start()
    try:
        switch = now_micros() + 3 * S
        outbox.emulator.open_generation(start=switch, vnodes=8, shards=3, seed=77)
        # The switch happens while relay reads: events of the new generation reach Kafka from this run.
        wait_for_cdc_time(first, kafka_bootstrap, topic, switch, "events of the new generation")
        first.signal(signal.SIGTERM)
        assert first.wait(60) == 0, first.output()[-3000:]
        writer.wait_rounds(10)  # the application keeps writing while relay is down
    finally:
        writer.stop()
    # A fresh dedup prefix: a restart that re-decided start_from or began over would show as
    # duplicates (or, for "now", as a gap).
    second = relay_process(path, "--until", "now", env={"RELAY_REDIS__KEY_PREFIX": f"{keyspace}-second:"})
    assert second.wait(180) == 0, second.output()[-3000:]

    outbox.written.update(expected)
    delivered = consume_all(kafka_bootstrap, [topic])
    assert_delivered_in_order(outbox, delivered)
    assert sum(int(h["cdc_time"]) >= switch for _, h, _ in delivered.records) > 0
    assert sum(int(h["cdc_time"]) < switch for _, h, _ in delivered.records) > 0


def test_tablets_split_while_reading_under_now(cql, keyspace, relay_config, relay_process, kafka_bootstrap):
    outbox = Outbox.create(cql, keyspace, tablets=4, start_us=now_micros() - 120 * S)
    emu = outbox.emulator
    write_before_start(outbox, 20, "before")  # not expected: relay starts at "now"
    topic = f"{keyspace}.order"
    relay = relay_process(relay_config(workers=2, relay={"start_from": "now"}))
    relay.wait_until(lambda: relay.status().get("ready"), 90, "relay ready")
    writer = Writer(outbox)
    writer.start()
    try:
        split = now_micros() + 2 * S
        emu.open_tablet_streams(outbox.table, 8, start=split)
        wait_for_cdc_time(relay, kafka_bootstrap, topic, split, "events written after the split")
    finally:
        writer.stop()
    relay.signal(signal.SIGTERM)
    assert relay.wait(60) == 0, relay.output()[-3000:]
    second = relay_process(relay.config, "--until", "now")
    assert second.wait(120) == 0, second.output()[-3000:]
    delivered = consume_all(kafka_bootstrap, [topic])
    assert_delivered_in_order(outbox, delivered)
    assert any(int(h["cdc_time"]) >= split for _, h, _ in delivered.records)

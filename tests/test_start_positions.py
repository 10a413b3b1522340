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


def test_now_with_a_switch_into_a_large_node_generation_and_own_columns(cql, keyspace, relay_config, relay_process,
                                                                        kafka_bootstrap):
    """Another writer's table and column names, start_from = now, and a switch into a generation
    whose vnodes have 120 streams each (over Scylla's 100-key IN limit)."""
    import threading
    import time

    from harness import audit

    from relay.testing import CdcEmulator

    cql.execute(f"CREATE TABLE {keyspace}.journal (tenant text, seq timeuuid, evt uuid, kind text, category text, "
                f"body blob, PRIMARY KEY ((tenant), seq))")
    emu = CdcEmulator(cql, metadata_keyspace=keyspace)
    emu.create_metadata_tables()
    emu.open_generation(start=now_micros() - 60 * S, vnodes=4, shards=2, seed=3)
    emu.enable_cdc(f"{keyspace}.journal")
    table = f"{keyspace}.journal"
    written: dict[str, list[str]] = {}

    def write(n: int, tag: str, at_us: int | None = None) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        rows = []
        for i in range(n):
            tenant, evt = f"{tag}-{i % 40}", uuid.uuid4()
            rows.append({"tenant": tenant, "seq": uuid.uuid1(), "evt": evt, "kind": "made", "category": "ledger",
                         "body": b"x"})
            out.setdefault(tenant, []).append(str(evt))
        emu.write_many(table, rows, timestamps=[at_us + i for i in range(n)] if at_us else None)
        return out

    write(80, "before", now_micros() - 20 * S)  # before relay's first start: not expected under "now"
    columns = {"event_id": "evt", "aggregate_type": "category", "aggregate_id": "tenant", "event_type": "kind",
               "payload": "body"}
    path = relay_config(workers=2, tables=("journal",), columns=columns, relay={"start_from": "now"})
    topic = f"{keyspace}.ledger"
    relay = relay_process(path)
    relay.wait_until(lambda: relay.status().get("ready"), 90, "relay ready")
    stop = threading.Event()

    def live() -> None:
        while not stop.is_set():
            for tenant, ids in write(40, "live").items():
                written.setdefault(tenant, []).extend(ids)
            time.sleep(0.1)  # pacing the writer, not synchronisation

    writer = threading.Thread(target=live, daemon=True)
    writer.start()
    try:
        switch = now_micros() + 3 * S
        gen = emu.open_generation(start=switch, vnodes=3, shards=120, seed=8)
        assert min(len(s) for s in gen.streams_by_vnode.values()) > 100
        wait_for_cdc_time(relay, kafka_bootstrap, topic, switch, "events of the large generation")
        relay.signal(signal.SIGTERM)
        assert relay.wait(60) == 0, relay.output()[-3000:]
    finally:
        stop.set()
        writer.join()
    second = relay_process(path, "--until", "now")
    assert second.wait(180) == 0, second.output()[-3000:]
    delivered = consume_all(kafka_bootstrap, [topic])
    problems = audit(written, delivered).problems()
    assert not problems, "; ".join(problems)
    assert any(int(h["cdc_time"]) >= switch for _, h, _ in delivered.records)

"""A dead-letter write that keeps failing surfaces (metric, log, /ready false) and the window waits;
once writes succeed again the poison row is stored and nothing is lost."""
from __future__ import annotations

import signal
import urllib.error
import uuid

from harness import Outbox, RelayProcess, assert_delivered_in_order, consume_all


def _ready(relay: RelayProcess) -> bool:
    try:
        relay.get("/ready")
        return True
    except urllib.error.HTTPError as exc:
        if exc.code == 503:
            return False
        raise


COLUMNS = {"event_id": "event_id", "aggregate_type": "category", "aggregate_id": "agg", "event_type": "kind",
           "payload": "body"}


def test_failing_dead_letter_writes_surface_and_recover(cql, keyspace, relay_config, relay_process, kafka_bootstrap):
    from relay import config as cfgmod
    from relay import schema
    from relay.testing import now_micros

    ddl = (f"CREATE TABLE {keyspace}.events (bucket int, seq timeuuid, event_id uuid, agg text, kind text, "
           f"category text, body text, PRIMARY KEY ((bucket), seq))")
    outbox = Outbox.create(cql, keyspace, name="events", ddl=ddl, vnodes=8, start_us=now_micros() - 10_000_000)
    emu = outbox.emulator
    path = relay_config(workers=1, tables=("events",), columns=COLUMNS)
    relay = relay_process(path)
    relay.wait_until(lambda: _ready(relay), 90, "relay ready")

    cql.execute(f"DROP TABLE {keyspace}.dead_letters", timeout=60)  # every dead-letter write now fails
    poison = uuid.uuid4()
    emu.insert(outbox.table, {"bucket": 1, "seq": uuid.uuid1(), "event_id": poison, "agg": None, "kind": "made",
                              "category": "order", "body": "orphan"})
    for i in range(20):  # good events on other partitions flow on
        eid = uuid.uuid4()
        emu.insert(outbox.table, {"bucket": 2 + i, "seq": uuid.uuid1(), "event_id": eid, "agg": f"a{i}",
                                  "kind": "made", "category": "order", "body": f"body {i}"})
        outbox.written[f"a{i}"].append(str(eid))
    relay.wait_until(lambda: relay.metric("relay_dlq_write_failures_total") >= 1, 90, "a failed dead-letter write")
    relay.wait_until(lambda: not _ready(relay), 30, "/ready to turn false")
    assert relay.status()["dead_letter_writes_failing"]
    assert "cannot write dead letters" in relay.output()

    schema.apply(cql, cfgmod.load(path))  # the operator restores the table
    relay.wait_until(lambda: _ready(relay), 120, "/ready to turn true again")
    relay.wait_until(lambda: cql.execute(f"SELECT count(*) FROM {keyspace}.dead_letters").one()[0] == 1, 60,
                     "the poison row in dead_letters")
    relay.wait_until(lambda: outbox.expected_ids() <= set(consume_all(kafka_bootstrap, [f"{keyspace}.order"]).ids),
                     60, "the good events")
    relay.signal(signal.SIGTERM)
    assert relay.wait(60) == 0
    row = cql.execute(f"SELECT event_id, status FROM {keyspace}.dead_letters").one()
    assert row.event_id == str(poison) and row.status == "pending"
    assert_delivered_in_order(outbox, consume_all(kafka_bootstrap, [f"{keyspace}.order"]))

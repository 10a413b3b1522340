"""`relay verify` against real Cassandra and Kafka, with records produced here in relay's exact format."""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from harness import outbox_ddl, wait_topics_ready, write_config

from relay import config, timeuuid
from relay.cli import main
from relay.commands import verify as verify_cmd
from relay.model import OutboxEvent

AGGREGATES = {"agg-1": "order", "agg-2": "order", "agg-3": "invoice"}
EVENTS_PER_AGGREGATE = 4


@dataclass(frozen=True)
class Row:
    aggregate_id: str
    id: uuid.UUID
    aggregate_type: str
    event_type: str
    payload: bytes
    created_us: int


@dataclass
class VerifyCase:
    """An outbox table with rows (no CDC: verify reads the table) and its topics, for `relay verify`."""

    table: str
    config_path: Path
    topic_prefix: str
    bootstrap: str
    rows: list[Row]  # in write order

    @property
    def cfg(self) -> config.Config:
        return config.load(self.config_path)

    def of(self, aggregate: str) -> list[Row]:
        return [r for r in self.rows if r.aggregate_id == aggregate]


def insert_rows(cql, keyspace: str, start_us: int) -> list[Row]:
    """Events of the aggregates interleaved, each written at its own increasing timestamp."""
    insert = cql.prepare(f"INSERT INTO {keyspace}.outbox (aggregate_id, id, aggregate_type, event_type, payload, "
                         f"created_at) VALUES (?, ?, ?, ?, ?, ?) USING TIMESTAMP ?")
    rows = []
    for seq in range(EVENTS_PER_AGGREGATE):
        for aggregate, kind in AGGREGATES.items():
            ts = start_us + len(rows) * 10
            row = Row(aggregate, timeuuid.from_micros(ts), kind, "created" if seq == 0 else "updated",
                      json.dumps({"aggregate": aggregate, "seq": seq}).encode(), ts)
            cql.execute(insert, (row.aggregate_id, row.id, row.aggregate_type, row.event_type, row.payload,
                                 datetime.fromtimestamp(ts / 1e6, tz=UTC), ts))
            rows.append(row)
    return rows


@pytest.fixture
def outbox(cql, keyspace, topic, kafka_bootstrap, tmp_path) -> VerifyCase:
    from confluent_kafka.admin import AdminClient, NewTopic

    cql.execute(outbox_ddl(keyspace))
    rows = insert_rows(cql, keyspace, time.time_ns() // 1000)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    futures = admin.create_topics([NewTopic(f"{topic}.{kind}", num_partitions=3, replication_factor=1)
                                   for kind in set(AGGREGATES.values())])
    for f in futures.values():
        f.result(30)
    wait_topics_ready(kafka_bootstrap, futures)  # verify must find them: it was once told one was unknown
    path = write_config(tmp_path / "relay.toml", keyspace, topic=f"{topic}.{{aggregate_type}}")
    return VerifyCase(f"{keyspace}.outbox", path, topic, kafka_bootstrap, rows)


def record(box: VerifyCase, row: Row, source: str | None = None, event_id: str | None = None) -> OutboxEvent:
    """The record relay publishes for `row` (DESIGN §6), built with relay's own model."""
    return OutboxEvent(
        source=source or box.table, stream_id=bytes(16), cdc_time=row.id, cdc_time_us=row.created_us,
        batch_seq_no=0, event_id=event_id or str(row.id), aggregate_type=row.aggregate_type,
        aggregate_id=row.aggregate_id, event_type=row.event_type, topic=f"{box.topic_prefix}.{row.aggregate_type}",
        key=row.aggregate_id.encode(), payload=row.payload)


def publish(box: VerifyCase, events: list[OutboxEvent]) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": box.bootstrap, "enable.idempotence": True, "acks": "all",
                         "partitioner": "murmur2_random", "linger.ms": 5})
    errors = []
    for e in events:
        producer.produce(e.topic, key=e.key, value=e.payload, headers=e.kafka_headers(),
                         on_delivery=lambda err, _msg: err and errors.append(err))
        producer.flush(30)  # one at a time: the list order is the partition order
    assert not errors


def run_verify(box: VerifyCase, **kwargs) -> verify_cmd.VerifyReport:
    return verify_cmd.verify(box.cfg, box.table, timeout=30, **kwargs)


def test_all_delivered_in_order(outbox):
    foreign = record(outbox, outbox.rows[0], source="other_ks.outbox", event_id=str(uuid.uuid4()))
    publish(outbox, [record(outbox, r) for r in outbox.rows] + [foreign])

    report = run_verify(outbox)

    assert report.ok
    assert (report.expected, report.aggregates, report.delivered) == (12, 3, 12)
    assert (report.missing, report.duplicates, report.unexpected, report.out_of_order) == (0, 0, 0, 0)
    assert report.records_read == 12, "records of another source are not counted"
    assert report.topics == tuple(sorted(f"{outbox.topic_prefix}.{k}" for k in ("invoice", "order")))
    assert report.unfinished_partitions == 0
    assert report.render().splitlines()[-1] == "OK"


def test_a_topic_not_in_kafka_is_reported_and_never_created(outbox, kafka_bootstrap):
    """verify asks Kafka about each expected topic by name, not for the whole cluster's list, as a
    client that never asks the broker to create it: the stack's broker auto-creates topics (with
    allow.auto.create.topics on, this test fails), and the check must not create what it reports."""
    from confluent_kafka.admin import AdminClient

    from relay.kafkameta import topic_partitions

    cfg = outbox.cfg
    absent = f"{outbox.topic_prefix}.never"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    exp = verify_cmd.Expectation(outbox.table, topics={absent, f"{outbox.topic_prefix}.order"})
    got = verify_cmd.consume(cfg, outbox.table, exp, timeout=10)
    assert got.missing_topics == [absent]
    counts = topic_partitions(admin, [absent, f"{outbox.topic_prefix}.order"], 10)
    assert counts == {absent: None, f"{outbox.topic_prefix}.order": 3}, "still absent; the real one has 3 partitions"


def test_missing_event(outbox):
    gone = outbox.of("agg-2")[2]
    publish(outbox, [record(outbox, r) for r in outbox.rows if r != gone])

    report = run_verify(outbox)

    assert not report.ok
    assert (report.delivered, report.missing, report.out_of_order) == (11, 1, 0)
    assert report.missing_ids == (str(gone.id),)
    assert report.render().splitlines()[-1] == "FAILED"


def test_duplicate_and_unexpected_records(outbox):
    again = outbox.of("agg-3")[1]
    stranger = record(outbox, outbox.rows[0], event_id=str(timeuuid.from_micros(1)))
    publish(outbox, [record(outbox, r) for r in outbox.rows] + [record(outbox, again), stranger])

    report = run_verify(outbox)

    assert report.ok, "duplicates and strangers are reported but do not fail the audit"
    assert (report.delivered, report.missing, report.duplicates, report.unexpected) == (12, 0, 1, 1)
    assert report.duplicate_ids == (str(again.id),)
    assert report.unexpected_ids == (stranger.event_id,)
    assert report.out_of_order == 0, "a late second copy does not reorder the aggregate"


def test_out_of_order_aggregate(outbox):
    rows = list(outbox.rows)
    first, second = (rows.index(r) for r in outbox.of("agg-1")[1:3])
    rows[first], rows[second] = rows[second], rows[first]
    events = [record(outbox, r) for r in rows]
    publish(outbox, events)

    report = run_verify(outbox)

    assert not report.ok
    assert (report.delivered, report.missing, report.out_of_order) == (12, 0, 1)
    assert report.out_of_order_aggregates == ("agg-1",)


def test_since_limits_the_expected_rows(outbox, cql):
    keyspace = outbox.table.split(".")[0]
    hour_ago = (int(datetime.now(UTC).timestamp()) - 3600) * 1_000_000
    old = Row("agg-old", timeuuid.from_micros(hour_ago), "order", "created", b"{}", hour_ago)
    cql.execute(f"INSERT INTO {keyspace}.outbox (aggregate_id, id, aggregate_type, event_type, payload, created_at) "
                f"VALUES (%s, %s, %s, %s, %s, %s)", (old.aggregate_id, old.id, old.aggregate_type, old.event_type,
                                                   old.payload, datetime.fromtimestamp(hour_ago / 1e6, tz=UTC)))
    publish(outbox, [record(outbox, r) for r in outbox.rows])

    assert run_verify(outbox).missing_ids == (str(old.id),)
    report = run_verify(outbox, since=verify_cmd.parse_since("600"))
    assert report.ok and report.expected == 12


def test_cli_exit_codes_and_json(outbox, capsys):
    gone = outbox.rows[-1]
    publish(outbox, [record(outbox, r) for r in outbox.rows[:-1]])
    base = ["verify", "--config", str(outbox.config_path), "--table", outbox.table, "--timeout", "30"]

    assert main([*base, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["missing"] == 1 and report["missing_ids"] == [str(gone.id)]

    publish(outbox, [record(outbox, gone)])
    assert main(base) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == "OK" and "missing" in out

    assert main(["verify", "--config", str(outbox.config_path), "--table", "nope.nope"]) == 2
    assert main([*base, "--since", "yesterday-ish"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("relay: ") for line in err)


def test_parse_since():
    now = datetime(2025, 1, 31, 12, 0, tzinfo=UTC)
    assert verify_cmd.parse_since("90", now) == datetime(2025, 1, 31, 11, 58, 30, tzinfo=UTC)
    assert verify_cmd.parse_since("2025-01-30T00:00:00Z", now) == datetime(2025, 1, 30, tzinfo=UTC)
    assert verify_cmd.parse_since("2025-01-30T00:00:00", now).tzinfo is UTC


def test_order_is_judged_per_partition():
    d = verify_cmd.Delivery
    deliveries = {"a": d(1, ("t", 0, 5)), "b": d(1, ("t", 1, 1)), "c": d(1, ("t", 0, 9)), "x": d(1, ("t", 0, 2))}
    # a, b, c: b is on another partition, so only a < c matters; y is missing and ignored
    assert verify_cmd.out_of_order_aggregates({"g": ["a", "b", "y", "c"]}, deliveries) == []
    assert verify_cmd.out_of_order_aggregates({"g": ["a", "x"], "h": ["x", "a"]}, deliveries) == ["g"]

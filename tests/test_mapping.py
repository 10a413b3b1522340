"""`relay/mapping.py`: CDC changes → outbox events or poison events (DESIGN §3, §6), with hand-built Changes."""
from __future__ import annotations

import uuid

import pytest

from relay import timeuuid
from relay.config import ColumnsConfig, TableConfig
from relay.mapping import Mapper, Poison
from relay.model import Change, OutboxEvent

STREAM = bytes.fromhex("7f000000000000010000000000000021")
CDC_US = 1_767_225_600_123_456  # 2026-01-01T00:00:00.123456Z
CDC_TIME = timeuuid.from_micros(CDC_US)
EVENT_ID = uuid.UUID("6b3a1a4e-e6f1-11f0-8de9-0242ac120002")

INSERT, UPDATE = 2, 1


def table(**kw) -> TableConfig:
    kw.setdefault("name", "shop.outbox")
    return TableConfig(**kw)


def row(op: int | None = INSERT, seq: int = 0, end: bool | None = True, **values) -> dict[str, object]:
    base: dict[str, object] = {
        "cdc$stream_id": STREAM, "cdc$time": CDC_TIME, "cdc$batch_seq_no": seq, "cdc$operation": op,
        "cdc$ttl": None, "cdc$end_of_batch": end,
        "aggregate_id": "agg-1", "id": EVENT_ID, "aggregate_type": "order", "event_type": "created",
        "payload": b'{"total": 42}', "created_at": None, "headers": None,
    }
    base.update(values)
    return base


def change(*rows: dict[str, object]) -> Change:
    return Change(STREAM, CDC_TIME, tuple(rows))


def mapped(tbl: TableConfig, *rows: dict[str, object]) -> tuple[list[OutboxEvent | Poison], dict[str, int]]:
    skipped: dict[str, int] = {}
    out = list(Mapper(tbl).map(change(*rows), skipped))
    return out, skipped


def one_event(tbl: TableConfig, r: dict[str, object]) -> OutboxEvent:
    out, skipped = mapped(tbl, r)
    assert skipped == {}
    assert len(out) == 1
    assert isinstance(out[0], OutboxEvent), f"poison: {out[0]}"
    return out[0]


def one_poison(tbl: TableConfig, r: dict[str, object]) -> Poison:
    out, _ = mapped(tbl, r)
    assert len(out) == 1
    assert isinstance(out[0], Poison), f"expected a poison event, got {out[0]}"
    return out[0]


# --------------------------------------------------------------------------- inserts

def test_insert_becomes_an_event():
    ev = one_event(table(), row())
    assert ev.source == "shop.outbox"
    assert ev.stream_id == STREAM
    assert ev.cdc_time == CDC_TIME
    assert ev.cdc_time_us == CDC_US
    assert ev.batch_seq_no == 0
    assert ev.event_id == str(EVENT_ID)
    assert (ev.aggregate_type, ev.aggregate_id, ev.event_type) == ("order", "agg-1", "created")
    assert ev.topic == "outbox.event.order"
    assert ev.key == b"agg-1"
    assert ev.payload == b'{"total": 42}'
    assert ev.headers == {}
    assert ev.identity == (STREAM, CDC_TIME, 0)


def test_key_is_the_aggregate_id_as_utf8():
    ev = one_event(table(), row(aggregate_id="kunde-ü-7"))
    assert ev.key == "kunde-ü-7".encode()
    assert ev.aggregate_id == "kunde-ü-7"


@pytest.mark.parametrize("template,expect", [
    ("outbox.event.{aggregate_type}", "outbox.event.order"),
    ("{aggregate_type}.{event_type}", "order.created"),
    ("events-{aggregate_type}_{event_type}", "events-order_created"),
    ("all-events", "all-events"),
    ("by-agg.{aggregate_id}", "by-agg.agg-1"),
])
def test_topic_from_template(template, expect):
    assert one_event(table(topic=template), row()).topic == expect


def test_custom_column_names():
    cols = ColumnsConfig(event_id="event_uuid", aggregate_type="kind", aggregate_id="owner", event_type="what",
                         payload="body")
    r = row(event_uuid="e-17", kind="invoice", owner="cust-9", what="paid", body=b"\x00\x01")
    ev = one_event(table(columns=cols, topic="billing.{aggregate_type}.{event_type}"), r)
    assert (ev.event_id, ev.aggregate_type, ev.aggregate_id, ev.event_type) == ("e-17", "invoice", "cust-9", "paid")
    assert ev.topic == "billing.invoice.paid"
    assert ev.key == b"cust-9"
    assert ev.payload == b"\x00\x01"


def test_str_payload_is_encoded_as_utf8():
    ev = one_event(table(), row(payload='{"name": "Zoë", "sum": "€5"}'))
    assert ev.payload == '{"name": "Zoë", "sum": "€5"}'.encode()
    assert isinstance(ev.payload, bytes)


def test_bytearray_payload_becomes_bytes():
    ev = one_event(table(), row(payload=bytearray(b"raw")))
    assert ev.payload == b"raw" and type(ev.payload) is bytes


def test_null_payload_is_published_as_null():
    ev = one_event(table(), row(payload=None))
    assert ev.payload is None


def test_non_text_ids_are_rendered_as_text():
    ev = one_event(table(), row(aggregate_id=12345, event_type=b"created"))
    assert ev.aggregate_id == "12345" and ev.key == b"12345"
    assert ev.event_type == "created"


def test_batch_seq_no_comes_from_each_row():
    tbl = table()
    rows = [row(seq=0, end=None, id=uuid.uuid1()), row(seq=1, end=None, id=uuid.uuid1()),
            row(seq=2, id=uuid.uuid1())]
    out, skipped = mapped(tbl, *rows)
    assert skipped == {}
    assert [e.batch_seq_no for e in out] == [0, 1, 2]
    assert [e.event_id for e in out] == [str(r["id"]) for r in rows]
    assert len({e.identity for e in out}) == 3


# --------------------------------------------------------------------------- headers

def test_map_column_entries_are_merged_into_headers():
    tbl = table(columns=ColumnsConfig(headers=("headers",)))
    ev = one_event(tbl, row(headers={"trace_id": "t-1", "tenant": "acme"}))
    assert ev.headers == {"trace_id": "t-1", "tenant": "acme"}


def test_scalar_columns_become_header_values():
    tbl = table(columns=ColumnsConfig(headers=("tenant", "created_at", "region")))
    ev = one_event(tbl, row(tenant="acme", created_at=uuid.UUID(int=5), region=None))
    assert ev.headers == {"tenant": "acme", "created_at": str(uuid.UUID(int=5))}  # null columns are left out


def test_map_and_scalar_headers_together():
    tbl = table(columns=ColumnsConfig(headers=("headers", "tenant")))
    ev = one_event(tbl, row(headers={"trace_id": "t-9", "retries": 3}, tenant="globex"))
    assert ev.headers == {"trace_id": "t-9", "retries": "3", "tenant": "globex"}


def test_unconfigured_columns_are_not_headers():
    ev = one_event(table(), row(headers={"trace_id": "t-1"}, tenant="acme"))
    assert ev.headers == {}


def test_kafka_headers_contents():
    tbl = table(columns=ColumnsConfig(headers=("headers",)))
    ev = one_event(tbl, row(headers={"trace_id": "t-1"}))
    headers = ev.kafka_headers()
    assert headers[:5] == [
        ("id", str(EVENT_ID).encode()),
        ("event_type", b"created"),
        ("aggregate_type", b"order"),
        ("relay_source", b"shop.outbox"),
        ("cdc_time", str(CDC_US).encode()),
    ]
    assert headers[5:] == [("trace_id", b"t-1")]
    assert all(isinstance(k, str) and isinstance(v, bytes) for k, v in headers)


def test_extra_headers_cannot_shadow_relays_own():
    tbl = table(columns=ColumnsConfig(headers=("headers",)))
    ev = one_event(tbl, row(headers={"id": "spoofed", "cdc_time": "0"}))
    headers = ev.kafka_headers()
    assert [k for k, _ in headers].count("id") == 1
    assert dict(headers)["id"] == str(EVENT_ID).encode()
    assert dict(headers)["cdc_time"] == str(CDC_US).encode()


# --------------------------------------------------------------------------- operations

def test_update_ignored_unless_configured():
    out, skipped = mapped(table(), row(op=UPDATE))
    assert out == []
    assert skipped == {"update": 1}
    out, skipped = mapped(table(operations=("insert", "update")), row(op=UPDATE))
    assert skipped == {}
    assert len(out) == 1 and isinstance(out[0], OutboxEvent) and out[0].topic == "outbox.event.order"


def test_update_only_table_skips_inserts():
    out, skipped = mapped(table(operations=("update",)), row(op=INSERT), row(op=UPDATE, seq=1))
    assert [e.batch_seq_no for e in out] == [1]
    assert skipped == {"insert": 1}


@pytest.mark.parametrize("op,name", [
    (0, "preimage"), (3, "row_delete"), (4, "partition_delete"), (5, "range_delete"), (6, "range_delete"),
    (7, "range_delete"), (8, "range_delete"), (9, "postimage"),
    (-3, "row_delete"), (-4, "partition_delete"),  # Alternator's TTL deletes
    (42, "unknown"), (None, "unknown"),
])
def test_other_operations_are_counted_by_name(op, name):
    out, skipped = mapped(table(operations=("insert", "update")), row(op=op))
    assert out == []
    assert skipped == {name: 1}


def test_skipped_counts_accumulate_across_calls_and_rows():
    mapper = Mapper(table())
    skipped = {"row_delete": 5}
    # A group with a preimage, the insert, and a postimage: only the insert is published.
    out = list(mapper.map(change(row(op=0, seq=0, end=None), row(op=INSERT, seq=1, end=None),
                                 row(op=9, seq=2)), skipped))
    out += list(mapper.map(change(row(op=3), row(op=-3, seq=1), row(op=UPDATE, seq=2)), skipped))
    assert [e.batch_seq_no for e in out] == [1]
    assert skipped == {"row_delete": 7, "preimage": 1, "postimage": 1, "update": 1}


def test_negative_op_codes_are_treated_as_their_absolute_value():
    out, skipped = mapped(table(operations=("insert", "update")), row(op=-INSERT), row(op=-UPDATE, seq=1))
    assert skipped == {}
    assert [type(e) for e in out] == [OutboxEvent, OutboxEvent]


# --------------------------------------------------------------------------- poison

def test_null_event_id_is_poison():
    p = one_poison(table(), row(id=None))
    assert p.reason == "missing_event_id"
    assert "'id'" in p.message and "null" in p.message
    # As much of the event as could be read travels to the dead-letter table.
    assert p.event.aggregate_id == "agg-1" and p.event.key == b"agg-1"
    assert p.event.payload == b'{"total": 42}'
    assert p.event.identity == (STREAM, CDC_TIME, 0)


def test_missing_event_id_column_is_poison():
    r = row()
    del r["id"]
    assert one_poison(table(), r).reason == "missing_event_id"


def test_null_aggregate_id_is_poison():
    p = one_poison(table(), row(aggregate_id=None))
    assert p.reason == "missing_aggregate_id"
    assert "'aggregate_id'" in p.message
    assert p.event.event_id == str(EVENT_ID)


@pytest.mark.parametrize("payload", [42, 4.2, {"a": 1}, ["x"], uuid.uuid4()])
def test_payload_of_wrong_type_is_poison(payload):
    p = one_poison(table(), row(payload=payload))
    assert p.reason == "bad_payload_type"
    assert "'payload'" in p.message and type(payload).__name__ in p.message
    assert p.event.event_id == str(EVENT_ID)


@pytest.mark.parametrize("value", [None, ""])
def test_empty_topic_placeholder_is_poison(value):
    p = one_poison(table(), row(aggregate_type=value))
    assert p.reason == "topic_template"
    assert "aggregate_type" in p.message and "outbox.event.{aggregate_type}" in p.message


def test_empty_placeholder_other_than_aggregate_type():
    p = one_poison(table(topic="{aggregate_type}.{event_type}"), row(event_type=None))
    assert p.reason == "topic_template" and "event_type" in p.message


@pytest.mark.parametrize("aggregate_type", ["order lines", "order/line", "ordre✓", "x" * 250])
def test_invalid_topic_name_is_poison(aggregate_type):
    tbl = table(topic="{aggregate_type}")
    p = one_poison(tbl, row(aggregate_type=aggregate_type))
    assert p.reason == "invalid_topic"
    assert "not a valid Kafka topic name" in p.message


@pytest.mark.parametrize("aggregate_type", ["..", "."])
def test_dot_topics_are_invalid(aggregate_type):
    assert one_poison(table(topic="{aggregate_type}"), row(aggregate_type=aggregate_type)).reason == "invalid_topic"


def test_longest_valid_topic_is_accepted():
    ev = one_event(table(topic="{aggregate_type}"), row(aggregate_type="a" * 249))
    assert len(ev.topic) == 249


def test_poison_does_not_stop_the_rest_of_the_group():
    rows = [row(seq=0, end=None, aggregate_id=None), row(seq=1, end=None, payload=7), row(seq=2)]
    out, skipped = mapped(table(), *rows)
    assert [type(x).__name__ for x in out] == ["Poison", "Poison", "OutboxEvent"]
    assert [x.reason for x in out if isinstance(x, Poison)] == ["missing_aggregate_id", "bad_payload_type"]
    assert [x.event.batch_seq_no for x in out if isinstance(x, Poison)] == [0, 1]
    assert skipped == {}


@pytest.mark.parametrize("aggregate_type", ["bestellung-ä", "order٣"])
def test_non_ascii_topic_names_are_invalid(aggregate_type):
    assert one_poison(table(topic="{aggregate_type}"), row(aggregate_type=aggregate_type)).reason == "invalid_topic"

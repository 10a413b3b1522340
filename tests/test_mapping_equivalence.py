"""The precomputed mapper (relay/mapping.py) against the straightforward one it replaced: the same
events and the same poison (reason and message) for random rows, as dicts and as tuples, one
change at a time and a window at once. Also the Kafka headers against their plain definition."""
from __future__ import annotations

import json
import random
import re
import string
import uuid
from collections.abc import Mapping

import pytest

from relay import timeuuid
from relay.config import ColumnsConfig, TableConfig
from relay.mapping import _TOPIC_CACHE_MAX, Mapper, Poison, _micros, _uuid_text
from relay.model import RESERVED_HEADERS, Change, OutboxEvent


# --------------------------------------------------------------------------- the reference
# The mapping as it was written first (one dict per row, format() and a regex per event).
def _ref_text(value):
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, uuid.UUID | int | float | bool):
        return str(value)
    if isinstance(value, Mapping):
        return json.dumps({str(k): _ref_text(v) for k, v in value.items()}, sort_keys=True)
    return str(value)


def _ref_valid(name):
    return bool(re.fullmatch(r"[A-Za-z0-9._-]{1,249}", name)) and name not in (".", "..")


def ref_map(table: TableConfig, change: Change, skipped: dict[str, int]):
    ops = {{"update": 1, "insert": 2}[o] for o in table.operations}
    names = {0: "preimage", 1: "update", 2: "insert", 3: "row_delete", 4: "partition_delete", 5: "range_delete",
             6: "range_delete", 7: "range_delete", 8: "range_delete", 9: "postimage"}
    fields = [f for _, f, _, _ in string.Formatter().parse(table.topic) if f]
    c = table.columns
    for row in change.rows:
        op = row.get("cdc$operation")
        op = abs(op) if isinstance(op, int) else op
        if op not in ops:
            name = names.get(op, "unknown")
            skipped[name] = skipped.get(name, 0) + 1
            continue
        raw = {a: row.get(getattr(c, a)) for a in ("event_id", "aggregate_type", "aggregate_id", "event_type")}
        texts = {a: _ref_text(v) for a, v in raw.items()}
        payload = row.get(c.payload)
        event = OutboxEvent(
            source=table.name, stream_id=change.stream_id, cdc_time=change.cdc_time,
            cdc_time_us=timeuuid.to_micros(change.cdc_time), batch_seq_no=int(row.get("cdc$batch_seq_no") or 0),
            event_id=texts["event_id"] or "", aggregate_type=texts["aggregate_type"] or "",
            aggregate_id=texts["aggregate_id"] or "", event_type=texts["event_type"] or "", topic="",
            key=(texts["aggregate_id"] or "").encode(), payload=None)
        if payload is None:
            pass
        elif isinstance(payload, bytes | bytearray):
            event.payload = bytes(payload)
        elif isinstance(payload, str):
            event.payload = payload.encode()
        else:
            yield Poison(event, "bad_payload_type",
                         f"column {c.payload!r} is {type(payload).__name__}, expected blob or text")
            continue
        bad = next((a for a in ("event_id", "aggregate_id") if raw[a] is None), None)
        if bad:
            yield Poison(event, f"missing_{bad}", f"column {getattr(c, bad)!r} is null")
            continue
        for col in c.headers:
            value = row.get(col)
            if isinstance(value, Mapping):
                event.headers.update({str(k): _ref_text(v) or "" for k, v in value.items()})
            elif value is not None:
                event.headers[col] = _ref_text(value) or ""
        try:
            values = {f: texts.get(f) if f in texts else _ref_text(row.get(getattr(c, f))) for f in fields}
            missing = [f for f, v in values.items() if v is None or v == ""]
            if missing:
                yield Poison(event, "topic_template", f"topic {table.topic!r} needs {missing[0]}, which is empty")
                continue
            event.topic = table.topic.format(**values)
        except (KeyError, ValueError, AttributeError, IndexError) as exc:
            yield Poison(event, "topic_template", f"topic {table.topic!r}: {exc}")
            continue
        if not _ref_valid(event.topic):
            yield Poison(event, "invalid_topic", f"{event.topic!r} is not a valid Kafka topic name")
            continue
        yield event


# --------------------------------------------------------------------------- random rows
CUSTOM = ColumnsConfig(event_id="eid", aggregate_type="kind", aggregate_id="owner", event_type="what", payload="body",
                       headers=("hdrs", "tenant"))
TABLES = [
    TableConfig(name="shop.outbox"),
    TableConfig(name="shop.outbox", operations=("insert", "update")),
    TableConfig(name="shop.outbox", topic="{aggregate_type}.{event_type}", columns=ColumnsConfig(headers=("headers",))),
    TableConfig(name="shop.outbox", topic="all-events", operations=("update",)),
    TableConfig(name="shop.outbox", topic="by-agg.{aggregate_id}.{aggregate_id}"),
    TableConfig(name="shop.outbox", topic="ev-{event_id}"),
    TableConfig(name="b.o", topic="billing.{aggregate_type}", columns=CUSTOM),
    # Beyond plain placeholders (config validation refuses some; the mapper must still not raise).
    TableConfig(name="shop.outbox", topic="p.{payload}"),
    TableConfig(name="shop.outbox", topic="x.{aggregate_type:.3}.{event_type!s}"),
    TableConfig(name="shop.outbox", topic="x.{headers}"),
    TableConfig(name="shop.outbox", topic="x.{nope}"),
    TableConfig(name="shop.outbox", topic="x.{}"),
    TableConfig(name="shop.outbox", topic="x.{aggregate_type[0]}"),
    TableConfig(name="shop.outbox", topic="x.{{lit}}.{aggregate_type}"),
]
STREAMS = [bytes([i]) * 16 for i in range(4)]
TEXTS = ["order", "invoice", "", "a b", "ordre✓", "..", "x" * 250, "kunde-ü-7", "agg-1"]


def _value(rng: random.Random, kind: str):
    choices = {
        "text": lambda: rng.choice(TEXTS),
        "id": lambda: rng.choice([uuid.uuid1(), uuid.uuid4(), "e-17", 12345, b"raw-id", None]),
        "payload": lambda: rng.choice([b'{"total": 42}', bytearray(b"raw"), '{"name": "Zoë"}', None, 42, 4.2,
                                       {"a": 1}, ["x"], uuid.uuid4(), b"order"]),
        "header": lambda: rng.choice([None, "acme", 7, {"trace": "t-1", "n": 3, "id": "spoof"}, b"\xff\xfe",
                                      uuid.UUID(int=5)]),
    }
    return choices[kind]()


def random_row(rng: random.Random, cols: ColumnsConfig, seq: int) -> dict[str, object]:
    row: dict[str, object] = {
        "cdc$batch_seq_no": seq, "cdc$operation": rng.choice([2, 2, 2, 1, -2, -1, 0, 3, 9, 42, None]),
        "cdc$end_of_batch": None, "cdc$ttl": None,
        cols.event_id: _value(rng, "id"), cols.aggregate_id: rng.choice([*TEXTS, None, 17, b"bin"]),
        cols.aggregate_type: rng.choice([*TEXTS, None, 5, b"order"]), cols.event_type: rng.choice([*TEXTS, None]),
        cols.payload: _value(rng, "payload"),
        "headers": _value(rng, "header"), "hdrs": _value(rng, "header"), "tenant": _value(rng, "header"),
        "unused": "x",
    }
    for col in list(row):  # now and then a column the log table lacks
        if not col.startswith("cdc$") and rng.random() < 0.03:
            del row[col]
    return row


def random_changes(rng: random.Random, cols: ColumnsConfig, n: int) -> list[Change]:
    changes = []
    for i in range(n):
        t = timeuuid.from_micros(1_767_225_600_000_000 + i * 37 + rng.randrange(1000))
        rows = tuple(random_row(rng, cols, s) for s in range(rng.choice([1, 1, 1, 2, 3])))
        changes.append(Change(rng.choice(STREAMS), t, rows))
    return changes


def as_tuples(change: Change, names: tuple[str, ...]) -> Change:
    return Change(change.stream_id, change.cdc_time, tuple(tuple(r.get(n) for n in names) for r in change.rows),
                  names)


def column_orders(changes: list[Change]) -> list[tuple[str, ...]]:
    """Column orders tuples rows may come in: every column seen, and one without the mapped ones."""
    every = tuple(dict.fromkeys(k for c in changes for r in c.rows for k in r))
    return [every, tuple(reversed(every))]


# --------------------------------------------------------------------------- the comparisons

@pytest.mark.parametrize("table", TABLES, ids=[t.topic for t in TABLES])
def test_same_events_and_poison_as_the_reference(table):
    rng = random.Random(table.topic)
    changes = random_changes(rng, table.columns, 400)
    mapper = Mapper(table)
    want_skipped: dict[str, int] = {}
    want = [list(ref_map(table, c, want_skipped)) for c in changes]
    assert any(isinstance(x, OutboxEvent) for w in want for x in w) or table.topic.startswith("x.")

    got_skipped: dict[str, int] = {}
    assert [list(mapper.map(c, got_skipped)) for c in changes] == want
    assert got_skipped == want_skipped

    # A window at once: the same items, split into events and poison.
    flat = [x for w in want for x in w]
    window_skipped: dict[str, int] = {}
    events, poisons = Mapper(table).map_changes(changes, window_skipped)
    assert events == [x for x in flat if isinstance(x, OutboxEvent)]
    assert poisons == [x for x in flat if isinstance(x, Poison)]
    assert window_skipped == want_skipped

    # Tuple rows: a missing column reads as null, as a missing dict key does.
    for names in column_orders(changes):
        tuple_skipped: dict[str, int] = {}
        tuple_changes = [as_tuples(c, names) for c in changes]
        assert [list(mapper.map(c, tuple_skipped)) for c in tuple_changes] == want
        assert tuple_skipped == want_skipped
        assert Mapper(table).map_changes(tuple_changes, {}) == (events, poisons)

    # Straight from the reader's pages (no CDC groups), pages cutting through groups; cdc$time as the
    # reader fetches it (its 16 bytes) or as a UUID.
    for names in column_orders(changes):
        for as_bytes in (False, True):
            page_names = ("cdc$stream_id", "cdc$time", *names)
            rows = [(c.stream_id, c.cdc_time.bytes if as_bytes else c.cdc_time, *(r.get(n) for n in names))
                    for c in changes for r in c.rows]
            pages = [(page_names, rows[i:i + 7]) for i in range(0, len(rows), 7)] + [(page_names, [])]
            page_skipped: dict[str, int] = {}
            got_events, got_poisons = Mapper(table).map_pages(pages, page_skipped)
            assert page_skipped == want_skipped
            if as_bytes:
                assert [type(e.cdc_time) for e in got_events] == [bytes] * len(events)
                for e in got_events + [p.event for p in got_poisons]:
                    e.cdc_time = uuid.UUID(bytes=e.cdc_time)
            assert (got_events, got_poisons) == (events, poisons)


def test_tuple_rows_without_a_mapped_column_read_it_as_null():
    table = TableConfig(name="shop.outbox")
    row = {"cdc$operation": 2, "cdc$batch_seq_no": 0, "id": uuid.uuid1(), "aggregate_id": "a", "event_type": "e",
           "payload": b"p", "aggregate_type": "order"}
    names = tuple(n for n in row if n != "aggregate_type")
    t = timeuuid.from_micros(1_767_225_600_000_000)
    [p] = Mapper(table).map(as_tuples(Change(STREAMS[0], t, (row,)), names), {})
    assert isinstance(p, Poison) and p.reason == "topic_template"


def test_the_topic_cache_stays_bounded_and_right():
    table = TableConfig(name="shop.outbox", topic="by-agg.{aggregate_id}")
    mapper = Mapper(table)
    t = timeuuid.from_micros(1_767_225_600_000_000)
    for i in range(_TOPIC_CACHE_MAX + 50):
        row = {"cdc$operation": 2, "cdc$batch_seq_no": 0, "id": "e", "aggregate_id": f"a{i}", "aggregate_type": "o",
               "event_type": "e", "payload": b""}
        [ev] = mapper.map(Change(STREAMS[0], t, (row,)), {})
        assert ev.topic == f"by-agg.a{i}"
    assert len(mapper._topics) <= _TOPIC_CACHE_MAX


def test_columns_are_the_mapped_base_columns_once_each():
    assert Mapper(TableConfig(name="shop.outbox")).columns == (
        "id", "aggregate_type", "aggregate_id", "event_type", "payload")
    assert Mapper(TableConfig(name="b.o", columns=CUSTOM, topic="{aggregate_type}")).columns == (
        "eid", "kind", "owner", "what", "body", "hdrs", "tenant")
    shared = ColumnsConfig(aggregate_type="kind", event_type="kind", headers=("tenant", "payload"))
    assert Mapper(TableConfig(name="b.o", columns=shared)).columns == (
        "id", "kind", "aggregate_id", "payload", "tenant")


def test_fast_uuid_text_and_micros_match_the_plain_ones():
    rng = random.Random(7)
    for _ in range(2000):
        u = timeuuid.from_micros(rng.randrange(0, 4_000_000_000_000_000))
        assert _micros(u) == timeuuid.to_micros(u)
        assert _uuid_text(u) == str(u)
        v = uuid.UUID(int=rng.getrandbits(128))
        assert _uuid_text(v) == str(v)


def test_kafka_headers_match_their_definition():
    """DESIGN §6: id, event_type, aggregate_type, relay_source, cdc_time (µs), then the extra
    headers in their order, never one of relay's own names."""
    rng = random.Random(3)
    table = TableConfig(name="shop.outbox", columns=ColumnsConfig(headers=("headers", "tenant")))
    events, _ = Mapper(table).map_changes(random_changes(rng, table.columns, 300), {})
    assert any(e.headers for e in events)
    for e in events:
        want = [("id", e.event_id.encode()), ("event_type", e.event_type.encode()),
                ("aggregate_type", e.aggregate_type.encode()), ("relay_source", e.source.encode()),
                ("cdc_time", str(e.cdc_time_us).encode())]
        want += [(k, v.encode()) for k, v in e.headers.items() if k not in RESERVED_HEADERS]
        assert e.kafka_headers() == want

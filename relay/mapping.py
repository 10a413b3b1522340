"""A CDC change → outbox events, by the table's column mapping (DESIGN §3, §6).

A row that cannot be mapped (missing id or aggregate, wrong type, unknown topic field) is a
poison event: it is returned with its reason, for the dead-letter table; it never raises.

This runs once per event, so what depends only on the table is worked out once: the columns
to fetch (one C-level itemgetter per row, not a dict per row), the topic template (joined from
its parts, and remembered per distinct value: a table has few aggregate types), the operations
to keep. Rows come as dicts (column name -> value) or, when `Change.columns` is set, as tuples
in that column order (no dict is built per row at all).
"""
from __future__ import annotations

import json
import operator
import re
import string
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from relay.config import TableConfig
from relay.model import CdcTime, Change, OutboxEvent
from relay.timeuuid import _UUID_EPOCH_OFFSET

OPS = {"update": 1, "insert": 2}
OP_NAMES = {0: "preimage", 1: "update", 2: "insert", 3: "row_delete", 4: "partition_delete",
            5: "range_delete", 6: "range_delete", 7: "range_delete", 8: "range_delete", 9: "postimage"}
OPERATION, BATCH_SEQ_NO, STREAM, TIME = "cdc$operation", "cdc$batch_seq_no", "cdc$stream_id", "cdc$time"
# The placeholders a topic takes by fast path: the event's own text fields.
_TEXT_ALIASES = ("event_id", "aggregate_type", "aggregate_id", "event_type")
_TOPIC_CACHE_MAX = 10_000  # distinct placeholder values remembered (bounded: {aggregate_id} is unbounded)


@dataclass
class Poison:
    """A row that cannot become a Kafka record; it goes to the dead-letter table."""

    event: OutboxEvent  # as much of it as could be read
    reason: str  # short class, e.g. missing_aggregate_id
    message: str


class Mapper:
    def __init__(self, table: TableConfig) -> None:
        self.table = table
        self.source = table.name
        self.cols = c = table.columns
        self.ops = {OPS[o] for o in table.operations}
        # Negative codes are TTL-expiry deletes (Alternator), counted as their absolute value.
        self._keep = frozenset(self.ops | {-o for o in self.ops})
        parsed = list(string.Formatter().parse(table.topic))  # a malformed template raises here
        self._fields = [f for _, f, _, _ in parsed if f]
        self._header_cols = tuple(c.headers)
        # What one row is read as: (op, seq, id, aggregate type, aggregate id, event type, payload, *headers).
        self._wanted = (OPERATION, BATCH_SEQ_NO, c.event_id, c.aggregate_type, c.aggregate_id, c.event_type,
                        c.payload, *self._header_cols)
        self._get = operator.itemgetter(*self._wanted)
        self._by_names: dict[tuple[str, ...], tuple[bool, operator.itemgetter | None, tuple]] = {}
        self._last_names: tuple[str, ...] | None = None
        self._last: tuple[bool, operator.itemgetter | None, tuple] = (False, None, ())
        # The fast topic: literal text and plain {alias} fields of the four text columns only.
        simple = all(f is None or (f in _TEXT_ALIASES and not spec and conv is None) for _, f, spec, conv in parsed)
        self._topic_parts = ([(lit, _TEXT_ALIASES.index(f) if f else None) for lit, f, _, _ in parsed]
                             if simple else None)
        # The cache key of a topic: its placeholder values (one value alone, not a 1-tuple).
        idx = [i for _, i in self._topic_parts or () if i is not None]
        self._topic_key = operator.itemgetter(*idx) if idx else _no_key
        self._topics: dict[object, tuple[str, bool]] = {}  # values -> (topic, valid)

    @property
    def columns(self) -> tuple[str, ...]:
        """The base-table columns the mapping reads, each once: event id, aggregate type and id,
        event type, payload, header columns (topic placeholders name some of these). The CDC
        metadata it reads besides: cdc$operation and cdc$batch_seq_no."""
        return tuple(dict.fromkeys(self._wanted[2:]))

    def map(self, change: Change, skipped: dict[str, int]) -> Iterator[OutboxEvent | Poison]:
        """The change's rows of the kept operations, in order, as events or poison; the others
        are counted in `skipped` by operation name."""
        cdc_us = _micros(change.cdc_time)
        keep = self._keep
        for values in self._values(change):
            if values[0] in keep:
                yield self._event(change.stream_id, change.cdc_time, cdc_us, values)
            else:
                _skip(values[0], skipped)

    def map_changes(self, changes: Iterable[Change], skipped: dict[str, int]
                    ) -> tuple[list[OutboxEvent], list[Poison]]:
        """`map` over a window's changes at once, split into (events, poison), each in order:
        no generator per change, no isinstance per item in the caller."""
        events: list[OutboxEvent] = []
        poisons: list[Poison] = []
        keep, event, values_of = self._keep, self._event, self._values
        for change in changes:
            cdc_us = _micros(change.cdc_time)
            for values in values_of(change):
                if values[0] in keep:
                    item = event(change.stream_id, change.cdc_time, cdc_us, values)
                    (events if type(item) is OutboxEvent else poisons).append(item)  # type: ignore[arg-type]
                else:
                    _skip(values[0], skipped)
        return events, poisons

    def map_pages(self, pages: Iterable[tuple[tuple[str, ...], Sequence[tuple]]], skipped: dict[str, int]
                  ) -> tuple[list[OutboxEvent], list[Poison]]:
        """`map_changes` straight from the reader's pages (relay.reader.LogReader.read_pages): rows in
        log order, each with its page's column names. No CDC group is built: every row of a group
        shares its stream and cdc$time, which is all the mapping takes from the group."""
        events: list[OutboxEvent] = []
        poisons: list[Poison] = []
        keep, event = self._keep, self._event
        last_time: object = None
        cdc_us = 0
        for names, rows in pages:
            if not rows:
                continue
            si, ti = names.index(STREAM), names.index(TIME)
            whole, get, index = self._tuple_getter(names)
            for row in rows:
                values = get(row) if whole else tuple([None if i is None else row[i] for i in index])  # type: ignore[misc]
                if values[0] in keep:
                    t = row[ti]
                    if t != last_time:
                        cdc_us, last_time = _micros(t), t
                    item = event(row[si], t, cdc_us, values)
                    (events if type(item) is OutboxEvent else poisons).append(item)  # type: ignore[arg-type]
                else:
                    _skip(values[0], skipped)
        return events, poisons

    def _values(self, change: Change) -> list[tuple]:
        """Each row as (op, seq, id, aggregate type, aggregate id, event type, payload, *headers)."""
        if change.columns is None:
            try:
                return list(map(self._get, change.rows))
            except KeyError:  # a configured column the log table lacks: read as null
                return [tuple([row.get(col) for col in self._wanted]) for row in change.rows]
        whole, get, index = self._tuple_getter(change.columns)
        if whole:
            return list(map(get, change.rows))  # type: ignore[arg-type]
        return [tuple([None if i is None else row[i] for i in index]) for row in change.rows]

    def _tuple_getter(self, names: tuple[str, ...]) -> tuple[bool, operator.itemgetter | None, tuple]:
        """(all wanted columns present, their itemgetter, their indexes or None) for one column
        order. The reader shares one `columns` object per page: found by identity first."""
        if names is self._last_names:
            return self._last
        got = self._by_names.get(names)
        if got is None:
            pos = {n: i for i, n in enumerate(names)}
            index = tuple(pos.get(w) for w in self._wanted)
            whole = None not in index
            got = self._by_names[names] = (whole, operator.itemgetter(*index) if whole else None, index)
        self._last_names, self._last = names, got
        return got

    def _event(self, stream_id: bytes, cdc_time: CdcTime, cdc_us: int, values: tuple) -> OutboxEvent | Poison:
        _, seq, raw_id, raw_atype, raw_agg, raw_etype, payload = values[:7]
        event_id = raw_id if type(raw_id) is str else _text(raw_id)
        aggregate_type = raw_atype if type(raw_atype) is str else _text(raw_atype)
        aggregate_id = raw_agg if type(raw_agg) is str else _text(raw_agg)
        event_type = raw_etype if type(raw_etype) is str else _text(raw_etype)
        event = OutboxEvent(
            self.source, stream_id, cdc_time, cdc_us, seq if type(seq) is int else int(seq or 0),
            event_id or "", aggregate_type or "", aggregate_id or "", event_type or "", "",
            (aggregate_id or "").encode(), None)
        ptype = type(payload)
        if ptype is bytes:
            event.payload = payload
        elif payload is None:
            pass
        elif isinstance(payload, bytes | bytearray):
            event.payload = bytes(payload)
        elif isinstance(payload, str):
            event.payload = payload.encode()
        else:
            return Poison(event, "bad_payload_type",
                          f"column {self.cols.payload!r} is {ptype.__name__}, expected blob or text")
        if raw_id is None:
            return Poison(event, "missing_event_id", f"column {self.cols.event_id!r} is null")
        if raw_agg is None:
            return Poison(event, "missing_aggregate_id", f"column {self.cols.aggregate_id!r} is null")
        if self._header_cols:
            headers = event.headers
            for col, value in zip(self._header_cols, values[7:], strict=True):
                if isinstance(value, Mapping):
                    headers.update({str(k): _text(v) or "" for k, v in value.items()})
                elif value is not None:
                    headers[col] = _text(value) or ""
        texts = (event_id, aggregate_type, aggregate_id, event_type)
        parts = self._topic_parts
        if parts is None:
            return self._general_topic(event, values, texts)
        key = self._topic_key(texts)
        known = self._topics.get(key)
        if known is None:
            for _, i in parts:
                if i is not None and not texts[i]:
                    return Poison(event, "topic_template",
                                  f"topic {self.table.topic!r} needs {_TEXT_ALIASES[i]}, which is empty")
            if len(self._topics) >= _TOPIC_CACHE_MAX:
                self._topics.clear()
            name = "".join([lit + texts[i] if i is not None else lit for lit, i in parts])
            known = self._topics[key] = (name, _valid_topic(name))
        event.topic, valid = known
        if not valid:
            return Poison(event, "invalid_topic", f"{event.topic!r} is not a valid Kafka topic name")
        return event

    def _general_topic(self, event: OutboxEvent, values: tuple, texts: tuple) -> OutboxEvent | Poison:
        """Templates beyond plain text placeholders (format specs, {payload}, unknown names)."""
        c = self.cols
        by_alias = dict(zip(_TEXT_ALIASES, texts, strict=True))
        try:
            fields = {f: by_alias[f] if f in by_alias else _text(values[6] if getattr(c, f) == c.payload else None)
                      for f in self._fields}
            missing = [f for f, v in fields.items() if v is None or v == ""]
            if missing:
                return Poison(event, "topic_template", f"topic {self.table.topic!r} needs {missing[0]}, which is empty")
            event.topic = self.table.topic.format(**fields)
        except (KeyError, ValueError, AttributeError, IndexError) as exc:
            return Poison(event, "topic_template", f"topic {self.table.topic!r}: {exc}")
        if not _valid_topic(event.topic):
            return Poison(event, "invalid_topic", f"{event.topic!r} is not a valid Kafka topic name")
        return event


def _micros(t: CdcTime) -> int:
    """timeuuid.to_micros from the timeuuid's bits at once (UUID.time reads three properties)."""
    i = int.from_bytes(t, "big") if type(t) is bytes else t.int  # type: ignore[union-attr]
    return ((((i >> 64) & 0x0FFF) << 48 | ((i >> 80) & 0xFFFF) << 32 | (i >> 96)) - _UUID_EPOCH_OFFSET) // 10


def _no_key(texts: tuple) -> tuple:
    return ()


def _skip(op: object, skipped: dict[str, int]) -> None:
    op = abs(op) if isinstance(op, int) else op
    name = OP_NAMES.get(op, "unknown")  # type: ignore[arg-type]
    skipped[name] = skipped.get(name, 0) + 1


def _uuid_text(u: uuid.UUID) -> str:
    """str(u) at half the cost of UUID.__str__ (which %-formats a 5-tuple of slices): event ids are uuids."""
    h = f"{u.int:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _text(value: object) -> str | None:
    if value is None:
        return None
    if type(value) is uuid.UUID:
        return _uuid_text(value)
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, uuid.UUID | int | float | bool):
        return str(value)
    if isinstance(value, Mapping):
        return json.dumps({str(k): _text(v) for k, v in value.items()}, sort_keys=True)
    return str(value)


_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")


def _valid_topic(name: str) -> bool:
    return bool(_TOPIC.fullmatch(name)) and name not in (".", "..")

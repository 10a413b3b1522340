"""A CDC change → outbox events, by the table's column mapping (DESIGN §3, §6).

A row that cannot be mapped (missing id or aggregate, wrong type, unknown topic field) is a
poison event: it is returned with its reason, for the dead-letter table; it never raises.
"""
from __future__ import annotations

import json
import re
import string
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from relay import timeuuid
from relay.config import TableConfig
from relay.model import Change, OutboxEvent

OPS = {"update": 1, "insert": 2}
OP_NAMES = {0: "preimage", 1: "update", 2: "insert", 3: "row_delete", 4: "partition_delete",
            5: "range_delete", 6: "range_delete", 7: "range_delete", 8: "range_delete", 9: "postimage"}


@dataclass
class Poison:
    """A row that cannot become a Kafka record; it goes to the dead-letter table."""

    event: OutboxEvent  # as much of it as could be read
    reason: str  # short class, e.g. missing_aggregate_id
    message: str


class Mapper:
    def __init__(self, table: TableConfig) -> None:
        self.table = table
        self.ops = {OPS[o] for o in table.operations}
        self.cols = table.columns
        self._fields = [f for _, f, _, _ in string.Formatter().parse(table.topic) if f]

    def map(self, change: Change, skipped: dict[str, int]) -> Iterator[OutboxEvent | Poison]:
        cdc_us = timeuuid.to_micros(change.cdc_time)
        for row in change.rows:
            op = row.get("cdc$operation")
            op = abs(op) if isinstance(op, int) else op  # negative = TTL-expiry delete (Alternator)
            if op not in self.ops:
                name = OP_NAMES.get(op, "unknown")  # type: ignore[arg-type]
                skipped[name] = skipped.get(name, 0) + 1
                continue
            yield self._event(change, row, cdc_us)

    def _event(self, change: Change, row: Mapping[str, object], cdc_us: int) -> OutboxEvent | Poison:
        c = self.cols
        raw = {alias: row.get(col) for alias, col in (("event_id", c.event_id), ("aggregate_type", c.aggregate_type),
                                                      ("aggregate_id", c.aggregate_id),
                                                      ("event_type", c.event_type))}
        texts = {alias: _text(v) for alias, v in raw.items()}
        payload = row.get(c.payload)
        event = OutboxEvent(
            source=self.table.name, stream_id=change.stream_id, cdc_time=change.cdc_time, cdc_time_us=cdc_us,
            batch_seq_no=int(row.get("cdc$batch_seq_no") or 0), event_id=texts["event_id"] or "",
            aggregate_type=texts["aggregate_type"] or "", aggregate_id=texts["aggregate_id"] or "",
            event_type=texts["event_type"] or "", topic="", key=(texts["aggregate_id"] or "").encode(),
            payload=None,
        )
        if payload is None:
            event.payload = None
        elif isinstance(payload, bytes | bytearray):
            event.payload = bytes(payload)
        elif isinstance(payload, str):
            event.payload = payload.encode()
        else:
            return Poison(event, "bad_payload_type",
                          f"column {c.payload!r} is {type(payload).__name__}, expected blob or text")
        for alias in ("event_id", "aggregate_id"):
            if raw[alias] is None:
                return Poison(event, f"missing_{alias}", f"column {getattr(c, alias)!r} is null")
        for col in c.headers:
            value = row.get(col)
            if isinstance(value, Mapping):
                event.headers.update({str(k): _text(v) or "" for k, v in value.items()})
            elif value is not None:
                event.headers[col] = _text(value) or ""
        try:
            values = {f: texts.get(f) if f in texts else _text(row.get(getattr(c, f))) for f in self._fields}
            missing = [f for f, v in values.items() if v is None or v == ""]
            if missing:
                return Poison(event, "topic_template", f"topic {self.table.topic!r} needs {missing[0]}, which is empty")
            event.topic = self.table.topic.format(**values)
        except (KeyError, ValueError, AttributeError, IndexError) as exc:
            return Poison(event, "topic_template", f"topic {self.table.topic!r}: {exc}")
        if not _valid_topic(event.topic):
            return Poison(event, "invalid_topic", f"{event.topic!r} is not a valid Kafka topic name")
        return event


def _text(value: object) -> str | None:
    if value is None:
        return None
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

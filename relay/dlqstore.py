"""Reading dead letters and recording their status transitions (DESIGN §4b, §5).

`dead_letters` is partitioned by (source table, UTC day of the event's `cdc$time`), so every read
here is one partition per table and day, newest day first, and never scans the table. A status
change is a plain UPDATE at the current time (no LWT, no `USING TIMESTAMP`: Scylla refuses both
where relay runs) that also adds the transition, as JSON, to the row's `history` map under its
time, so who/when/why survives every later change.
"""
from __future__ import annotations

import getpass
import json
import socket
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from relay.deadletters import history_entry
from relay.model import OutboxEvent

STATUSES = ("pending", "parked", "replayed", "discarded", "failed")
OPEN_STATUSES = ("pending", "parked", "failed")  # a replay or discard may still act on these
LIST_COLUMNS = ("source_table", "day", "cdc_time", "stream_id", "batch_seq_no", "event_id", "aggregate_type",
                "aggregate_id", "event_type", "topic", "key", "payload", "headers", "error_class", "error_message",
                "attempts", "first_failed_at", "last_failed_at", "status", "status_at", "actor", "reason", "history")
STATS_COLUMNS = ("status", "error_class", "first_failed_at", "last_failed_at", "cdc_time")
KEY = "source_table = ? AND day = ? AND cdc_time = ? AND stream_id = ? AND batch_seq_no = ?"
# Rows per unlogged batch: ~4 KiB with history entries, under the batch size warnings
# (Scylla 128 KiB, Cassandra 5 KiB).
BATCH_ROWS = 16


def utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)  # the driver returns naive UTC


def cdc_datetime(cdc_time: uuid.UUID) -> datetime:
    from relay import timeuuid

    return datetime.fromtimestamp(timeuuid.to_micros(cdc_time) / 1e6, tz=UTC)


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def default_actor() -> str:
    """Who acts from the command line: user@host, as an audit trail wants it."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class DeadLetter:
    source_table: str
    day: date
    cdc_time: uuid.UUID
    stream_id: bytes
    batch_seq_no: int
    event_id: str | None
    aggregate_type: str | None
    aggregate_id: str | None
    event_type: str | None
    topic: str | None
    key: bytes | None
    payload: bytes | None = field(repr=False)
    headers: dict[str, str]
    error_class: str | None
    error_message: str | None
    attempts: int | None
    first_failed_at: datetime | None
    last_failed_at: datetime | None
    status: str | None
    status_at: datetime | None = None
    actor: str | None = None
    reason: str | None = None
    history: tuple[tuple[datetime, dict[str, Any]], ...] = ()

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> DeadLetter:
        v = dict(zip(LIST_COLUMNS, row, strict=True))
        day = v["day"]
        history = []
        for at, text in sorted((v["history"] or {}).items()):
            try:
                entry = json.loads(text)
            except (TypeError, ValueError):
                entry = {"note": str(text)}
            history.append((utc(at), entry))
        return cls(**{**v, "day": day.date() if hasattr(day, "date") else day,
                      "headers": dict(v["headers"] or {}), "history": tuple(history),
                      "first_failed_at": utc(v["first_failed_at"]), "last_failed_at": utc(v["last_failed_at"]),
                      "status_at": utc(v["status_at"])})

    @property
    def cdc_at(self) -> datetime:
        return cdc_datetime(self.cdc_time)

    @property
    def cdc_us(self) -> int:
        from relay import timeuuid

        return timeuuid.to_micros(self.cdc_time)

    @property
    def identity(self) -> tuple:
        return self.source_table, self.day, self.cdc_time, self.stream_id, self.batch_seq_no

    @property
    def order(self) -> tuple:
        """Sort key: `cdc$time` order, the order relay published in (and per aggregate, the only one)."""
        return self.cdc_us, self.stream_id, self.batch_seq_no

    @property
    def payload_size(self) -> int | None:
        return None if self.payload is None else len(self.payload)

    def to_event(self, extra_headers: dict[str, str] | None = None) -> OutboxEvent:
        """The record relay would have published (DESIGN §6), plus `extra_headers`."""
        return OutboxEvent(
            source=self.source_table, stream_id=self.stream_id, cdc_time=self.cdc_time, cdc_time_us=self.cdc_us,
            batch_seq_no=self.batch_seq_no, event_id=self.event_id or "", aggregate_type=self.aggregate_type or "",
            aggregate_id=self.aggregate_id or "", event_type=self.event_type or "", topic=self.topic or "",
            key=self.key if self.key is not None else (self.aggregate_id or "").encode(), payload=self.payload,
            headers={**self.headers, **(extra_headers or {})})

    def to_dict(self) -> dict[str, Any]:
        return {
            "source_table": self.source_table, "day": self.day.isoformat(), "cdc_time": str(self.cdc_time),
            "cdc_at": self.cdc_at.isoformat(), "stream_id": "0x" + self.stream_id.hex(),
            "batch_seq_no": self.batch_seq_no, "event_id": self.event_id, "aggregate_type": self.aggregate_type,
            "aggregate_id": self.aggregate_id, "event_type": self.event_type, "topic": self.topic,
            "key": None if self.key is None else self.key.decode("utf-8", "replace"),
            "payload_size": self.payload_size, "headers": self.headers, "error_class": self.error_class,
            "error_message": self.error_message, "attempts": self.attempts,
            "first_failed_at": iso(self.first_failed_at), "last_failed_at": iso(self.last_failed_at),
            "status": self.status, "status_at": iso(self.status_at), "actor": self.actor, "reason": self.reason,
            "history": [{"at": iso(at), **entry} for at, entry in self.history],
        }


# --------------------------------------------------------------------------- reading

def recent_days(days: int, today: date) -> list[date]:
    """The last `days` UTC days, today included, newest first."""
    return [today - timedelta(days=i) for i in range(days)]


def days_between(first: date, last: date) -> list[date]:
    """Every UTC day from `last` back to `first`, newest first."""
    return [last - timedelta(days=i) for i in range((last - first).days + 1)]


def partitions(session, keyspace: str, columns: Sequence[str], tables: Iterable[str], days: Sequence[date]
               ) -> Iterator[tuple[str, Iterable[Sequence[Any]]]]:
    """(table, rows) per (table, day) partition, newest day first; rows in cdc_time DESC order."""
    stmt = session.prepare(f"SELECT {', '.join(columns)} FROM {keyspace}.dead_letters "
                           f"WHERE source_table = ? AND day = ?")
    for table in tables:
        for day in days:
            yield table, session.execute(stmt, (table, day))


def read_letters(session, keyspace: str, tables: Sequence[str], days: Sequence[date]) -> Iterator[DeadLetter]:
    for _, rows in partitions(session, keyspace, LIST_COLUMNS, tables, days):
        for row in rows:
            yield DeadLetter.from_row(row)


# --------------------------------------------------------------------------- transitions

class DeadLetterStore:
    """Status transitions of dead letters, each kept in the row's history."""

    def __init__(self, session, keyspace: str, actor: str) -> None:
        self.session = session
        self.keyspace = keyspace
        self.actor = actor
        self._status = session.prepare(
            f"UPDATE {keyspace}.dead_letters SET status = ?, status_at = ?, actor = ?, reason = ?, "
            f"history = history + ? WHERE {KEY}")
        self._failed = session.prepare(
            f"UPDATE {keyspace}.dead_letters SET status = ?, status_at = ?, actor = ?, attempts = ?, "
            f"error_class = ?, error_message = ?, last_failed_at = ?, history = history + ? WHERE {KEY}")
        self._unpark = session.prepare(f"DELETE FROM {keyspace}.parked_aggregates WHERE source_table = ? AND "
                                       f"aggregate_id = ?")
        self._repark = session.prepare(f"UPDATE {keyspace}.parked_aggregates SET parked_at = ?, reason = ? "
                                       f"WHERE source_table = ? AND aggregate_id = ?")
        self._parked = session.prepare(f"SELECT aggregate_id FROM {keyspace}.parked_aggregates WHERE "
                                       f"source_table = ?")

    def set_status(self, letter: DeadLetter, status: str, reason: str = "", *, attempt: int | None = None,
                   now: datetime | None = None) -> None:
        now = now or datetime.now(UTC)
        entry = {now: history_entry(status, self.actor, reason=reason, attempt=attempt)}
        self.session.execute(self._status, (status, now, self.actor, reason or None, entry, *letter.identity))

    def set_status_many(self, letters: Sequence[DeadLetter], status: str, reason: str = "", *,
                        attempts: bool = False) -> None:
        """`set_status` for many: an unlogged batch per partition (source table, day) and up to
        BATCH_ROWS rows, the batches concurrently. Single-partition unlogged batches are one
        mutation on one replica set (no batchlog), the cheapest way to write many rows on Scylla."""
        from cassandra.concurrent import execute_concurrent
        from cassandra.query import BatchStatement, BatchType

        if not letters:
            return
        now = datetime.now(UTC)
        by_partition: dict[tuple, list[DeadLetter]] = {}
        for d in letters:
            by_partition.setdefault((d.source_table, d.day), []).append(d)
        batches = []
        for group in by_partition.values():
            for i in range(0, len(group), BATCH_ROWS):
                batch = BatchStatement(batch_type=BatchType.UNLOGGED)
                for d in group[i:i + BATCH_ROWS]:
                    entry = {now: history_entry(status, self.actor, reason=reason,
                                                attempt=(d.attempts or 0) + 1 if attempts else None)}
                    batch.add(self._status, (status, now, self.actor, reason or None, entry, *d.identity))
                batches.append((batch, ()))
        for ok, res in execute_concurrent(self.session, batches, concurrency=16, raise_on_first_error=False):
            if not ok:
                raise res

    def attempt_failed(self, letter: DeadLetter, error_class: str, message: str, status: str,
                       now: datetime | None = None) -> None:
        now = now or datetime.now(UTC)
        attempts = (letter.attempts or 0) + 1
        entry = {now: history_entry(status, self.actor, error=f"{error_class}: {message}", attempt=attempts)}
        self.session.execute(self._failed, (status, now, self.actor, attempts, error_class, message[:2000], now,
                                            entry, *letter.identity))

    def parked(self, table: str) -> set[str]:
        return {r[0] for r in self.session.execute(self._parked, (table,))}

    def unpark(self, table: str, aggregate_id: str) -> None:
        self.session.execute(self._unpark, (table, aggregate_id))

    def repark(self, table: str, aggregate_id: str, reason: str) -> None:
        self.session.execute(self._repark, (datetime.now(UTC), reason, table, aggregate_id))

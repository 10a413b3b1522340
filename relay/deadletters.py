"""Writing dead letters (DESIGN §5): one row per CDC identity, so re-reading a window
rewrites the same row instead of adding a duplicate.

"First failed at" survives rewrites by reading the row before writing it (no LWT, which
Scylla refuses on tablets, and no `USING TIMESTAMP` in the future, which Scylla refuses beyond
3 days: `restrict_future_timestamp`). Dead letters are rare, so one extra read each is cheap.
Two writers racing on the same event (a handover) both see no row; the later one's time wins,
milliseconds apart. A rewrite keeps the row's status: a re-read must never turn a dead letter
that an operator already replayed or discarded back into a pending one.
"""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from relay.model import OutboxEvent, cdc_time_uuid

_KEY = "source_table = ? AND day = ? AND cdc_time = ? AND stream_id = ? AND batch_seq_no = ?"


class DeadLetterWriter:
    def __init__(self, session, keyspace: str) -> None:
        self.session = session
        self._read = session.prepare(
            f"SELECT first_failed_at, attempts, status FROM {keyspace}.dead_letters WHERE {_KEY}")
        self._write = session.prepare(
            f"UPDATE {keyspace}.dead_letters SET event_id = ?, aggregate_type = ?, aggregate_id = ?, "
            f"event_type = ?, topic = ?, key = ?, payload = ?, headers = ?, error_class = ?, error_message = ?, "
            f"attempts = ?, first_failed_at = ?, last_failed_at = ?, status = ? WHERE {_KEY}")

    def write(self, event: OutboxEvent, error_class: str, message: str, attempts: int = 1,
              now: datetime | None = None) -> None:
        now = now or datetime.now(UTC)
        day = datetime.fromtimestamp(event.cdc_time_us / 1e6, tz=UTC).date()
        key = (event.source, day, cdc_time_uuid(event.cdc_time), event.stream_id, event.batch_seq_no)
        first, status = now, "pending"
        row = self.session.execute(self._read, key).one()
        if row is not None:
            first = row[0] or now
            attempts = (row[1] or 0) + attempts
            status = row[2] or status
        self.session.execute(self._write, (
            event.event_id, event.aggregate_type, event.aggregate_id, event.event_type, event.topic, event.key,
            event.payload, dict(event.headers), error_class, message[:2000], attempts, first, now, status, *key))


def count_pending(session, keyspace: str, table: str, days: int = 7) -> int:
    """Dead letters of `table` still pending, over the last `days` day partitions."""
    today = datetime.now(UTC).date()
    stmt = session.prepare(f"SELECT status FROM {keyspace}.dead_letters WHERE source_table = ? AND day = ?")
    return sum(1 for d in range(days) for r in session.execute(stmt, (table, today - timedelta(days=d)))
               if r[0] == "pending")

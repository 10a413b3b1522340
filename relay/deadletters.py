"""Writing dead letters (DESIGN §5): one row per CDC identity, so re-reading a window
rewrites the same row instead of adding a duplicate."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from relay.model import OutboxEvent


class DeadLetterWriter:
    def __init__(self, session, keyspace: str) -> None:
        self.session = session
        self._insert = session.prepare(
            f"UPDATE {keyspace}.dead_letters SET event_id = ?, aggregate_type = ?, aggregate_id = ?, "
            f"event_type = ?, topic = ?, key = ?, payload = ?, headers = ?, error_class = ?, error_message = ?, "
            f"attempts = ?, last_failed_at = ?, status = ? "
            f"WHERE source_table = ? AND day = ? AND cdc_time = ? AND stream_id = ? AND batch_seq_no = ?")
        # Re-writes must keep the first failure time without a read or an LWT: write it with
        # a timestamp that decreases as time passes, so the earliest write wins reconciliation.
        self._first = session.prepare(
            f"UPDATE {keyspace}.dead_letters USING TIMESTAMP ? SET first_failed_at = ? "
            f"WHERE source_table = ? AND day = ? AND cdc_time = ? AND stream_id = ? AND batch_seq_no = ?")

    def write(self, event: OutboxEvent, error_class: str, message: str, attempts: int = 1) -> None:
        now = datetime.now(UTC)
        day = datetime.fromtimestamp(event.cdc_time_us / 1e6, tz=UTC).date()
        key = (event.source, day, event.cdc_time, event.stream_id, event.batch_seq_no)
        self.session.execute(self._insert, (
            event.event_id, event.aggregate_type, event.aggregate_id, event.event_type, event.topic, event.key,
            event.payload, dict(event.headers), error_class, message[:2000], attempts, now, "pending", *key))
        inverted = _FAR_FUTURE_US - int(now.timestamp() * 1_000_000)
        self.session.execute(self._first, (inverted, now, *key))


_FAR_FUTURE_US = 2**62


def count_pending(session, keyspace: str, table: str, days: int = 7) -> int:
    """Dead letters of `table` still pending, over the last `days` day partitions."""
    today = datetime.now(UTC).date()
    stmt = session.prepare(f"SELECT status FROM {keyspace}.dead_letters WHERE source_table = ? AND day = ?")
    return sum(1 for d in range(days) for r in session.execute(stmt, (table, today - timedelta(days=d)))
               if r[0] == "pending")

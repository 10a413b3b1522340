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

import json
from datetime import UTC, datetime, timedelta

from relay.model import OutboxEvent, cdc_time_uuid

_KEY = "source_table = ? AND day = ? AND cdc_time = ? AND stream_id = ? AND batch_seq_no = ?"
# The error class of an event held back behind an earlier dead letter of its aggregate
# ([dlq] order = "park-aggregate", relay.parking): written with status `parked`, not `pending`.
PARKED = "PARKED"
WORKER_ACTOR = "relay"


def history_entry(status: str, actor: str, *, reason: str = "", error: str = "", attempt: int | None = None) -> str:
    """One status transition as the JSON text kept in `dead_letters.history` (keyed by its time)."""
    entry = {"status": status, "actor": actor}
    if reason:
        entry["reason"] = reason
    if error:
        entry["error"] = error[:500]
    if attempt is not None:
        entry["attempt"] = attempt
    return json.dumps(entry, sort_keys=True)


def event_day(event: OutboxEvent):
    return datetime.fromtimestamp(event.cdc_time_us / 1e6, tz=UTC).date()


class DeadLetterWriter:
    """`parking` (relay.parking.Parking, optional) learns of every dead letter, so that under
    [dlq] order = "park-aggregate" the aggregate's later events are held back."""

    def __init__(self, session, keyspace: str, parking=None) -> None:
        self.session = session
        self.parking = parking
        self._read = session.prepare(
            f"SELECT first_failed_at, attempts, status FROM {keyspace}.dead_letters WHERE {_KEY}")
        self._write = session.prepare(
            f"UPDATE {keyspace}.dead_letters SET event_id = ?, aggregate_type = ?, aggregate_id = ?, "
            f"event_type = ?, topic = ?, key = ?, payload = ?, headers = ?, error_class = ?, error_message = ?, "
            f"attempts = ?, first_failed_at = ?, last_failed_at = ?, status = ?, status_at = ?, actor = ?, "
            f"history = history + ? WHERE {_KEY}")

    def write(self, event: OutboxEvent, error_class: str, message: str, attempts: int = 1,
              now: datetime | None = None) -> None:
        now = now or datetime.now(UTC)
        key = (event.source, event_day(event), cdc_time_uuid(event.cdc_time), event.stream_id, event.batch_seq_no)
        first, status = now, ("parked" if error_class == PARKED else "pending")
        if error_class == PARKED:
            attempts = 0  # held back, never tried: replay's first try is its first attempt
        row = self.session.execute(self._read, key).one()
        if row is not None:
            first = row[0] or now
            attempts = (row[1] or 0) + attempts
            status = row[2] or status
        if self.parking is not None and error_class != PARKED:
            self.parking.park(event, f"{error_class}: {message}"[:500])  # before the row: order is never lost
        entry = {now: history_entry(status, WORKER_ACTOR, error=f"{error_class}: {message}", attempt=attempts)}
        self.session.execute(self._write, (
            event.event_id, event.aggregate_type, event.aggregate_id, event.event_type, event.topic, event.key,
            event.payload, dict(event.headers), error_class, message[:2000], attempts, first, now, status, now,
            WORKER_ACTOR, entry, *key))


def count_pending(session, keyspace: str, table: str, days: int = 7) -> int:
    """Dead letters of `table` still pending, over the last `days` day partitions."""
    today = datetime.now(UTC).date()
    stmt = session.prepare(f"SELECT status FROM {keyspace}.dead_letters WHERE source_table = ? AND day = ?")
    return sum(1 for d in range(days) for r in session.execute(stmt, (table, today - timedelta(days=d)))
               if r[0] == "pending")

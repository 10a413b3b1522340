"""[dlq] order = "park-aggregate" (DESIGN §4b): once an event of aggregate A is dead-lettered, A's
later events are dead-lettered as `parked` instead of published, until `relay dlq replay` (or
`discard`) settles A's dead letters and unparks it. Other aggregates never wait.

Parked aggregates live in Scylla (`parked_aggregates`, one partition per source table), so they
survive restarts and a task moving to another worker or replica. A worker keeps each table's set
in memory and reads it again at most every `refresh_seconds` (one single-partition query per
table, never one per event); an aggregate this worker parks itself is in its set at once.

The one gap: a replay that unparks A while a worker still has A in its cached set lets that
worker park one more event of A; it then parks A again (the write below), so A's later events
keep waiting behind it and order holds; the next replay publishes it.

With the default order "skip" nothing here runs: `hold` returns the events untouched.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from relay.deadletters import PARKED
from relay.model import OutboxEvent, cdc_time_uuid

REFRESH_S = 2.0


def split_parked(events: Sequence[OutboxEvent], parked: set[str], poisoned: dict[str, tuple]
                 ) -> tuple[list[OutboxEvent], list[OutboxEvent]]:
    """(to publish, to park), each in the given order. `parked`: aggregates parked already;
    `poisoned`: aggregate -> the (cdc µs, stream, seq) of its first poison row in this window, behind
    which its later events of the window wait too."""
    publish: list[OutboxEvent] = []
    held: list[OutboxEvent] = []
    for e in events:
        agg = e.aggregate_id
        first = poisoned.get(agg)
        if agg in parked or (first is not None and (e.cdc_time_us, e.stream_id, e.batch_seq_no) > first):
            held.append(e)
        else:
            publish.append(e)
    return publish, held


class Parking:
    def __init__(self, session, keyspace: str, order: str, refresh_seconds: float = REFRESH_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.enabled = order == "park-aggregate"
        self.session = session
        self.refresh_seconds = refresh_seconds
        self.clock = clock
        self._sets: dict[str, tuple[float, set[str]]] = {}
        if self.enabled:
            self._read = session.prepare(f"SELECT aggregate_id FROM {keyspace}.parked_aggregates "
                                         f"WHERE source_table = ?")
            self._write = session.prepare(f"UPDATE {keyspace}.parked_aggregates SET since = ?, parked_at = ?, "
                                          f"reason = ? WHERE source_table = ? AND aggregate_id = ?")

    def parked(self, table: str) -> set[str]:
        now = self.clock()
        cached = self._sets.get(table)
        if cached is None or now - cached[0] >= self.refresh_seconds:
            cached = self._sets[table] = (now, {r[0] for r in self.session.execute(self._read, (table,))})
        return cached[1]

    def hold(self, table: str, events: list[OutboxEvent], poisons: Sequence) -> tuple[list[OutboxEvent], list]:
        """(events to publish, [(event, PARKED, message)] to dead-letter as parked)."""
        if not self.enabled or not events:
            return events, []
        poisoned: dict[str, tuple] = {}
        for p in poisons:
            e = p.event
            if e.aggregate_id and e.aggregate_id not in poisoned:
                poisoned[e.aggregate_id] = (e.cdc_time_us, e.stream_id, e.batch_seq_no)
        parked = self.parked(table)
        if not parked and not poisoned:
            return events, []
        publish, held = split_parked(events, parked, poisoned)
        return publish, [(e, PARKED, f"held back: aggregate {e.aggregate_id} has an earlier dead letter") for e in held]

    def park(self, event: OutboxEvent, reason: str) -> None:
        """Called for every dead letter written (relay.deadletters): parks its aggregate."""
        if not self.enabled or not event.aggregate_id:
            return
        self.session.execute(self._write, (cdc_time_uuid(event.cdc_time), datetime.now(UTC), reason, event.source,
                                           event.aggregate_id))
        self.parked(event.source).add(event.aggregate_id)

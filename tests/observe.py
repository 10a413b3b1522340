"""What relay has done, seen from outside it: the CDC log rows it reads, its checkpoints in Scylla,
its dedup marks in Redis and the records in Kafka, photographed while its workers are frozen.

Tests use this to prove that a scenario happened (a worker was killed with work in flight, a SIGTERM
came mid-window) instead of trusting relay's own counters.
"""
from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from harness import Delivered, consume_all

from relay import timeuuid
from relay.dedup import Dedup
from relay.model import OutboxEvent
from relay.streams import vnode_index


@dataclass(frozen=True)
class LogRow:
    """One CDC log row of an outbox event: its identity, hence its task and its dedup key."""

    event_id: str
    stream_id: bytes
    cdc_time: object  # the timeuuid
    batch_seq_no: int

    @property
    def cdc_time_us(self) -> int:
        return timeuuid.to_micros(self.cdc_time)

    @property
    def task_id(self) -> int:
        """The vnode task that reads this row (vnode generations: one task per vnode index)."""
        idx = vnode_index(self.stream_id)
        assert idx is not None, "a vnode stream id carries its vnode index"
        return idx


def log_rows(cql, table: str) -> dict[str, LogRow]:
    """event id -> its CDC log row, read back from the log table."""
    keyspace, name = table.split(".")
    rows = cql.execute(f'SELECT "cdc$stream_id", "cdc$time", "cdc$batch_seq_no", id '
                       f"FROM {keyspace}.{name}_scylla_cdc_log")
    return {str(r[3]): LogRow(str(r[3]), r[0], r[1], r[2]) for r in rows}


def checkpoints(cql, keyspace: str, table: str, generation_us: int) -> dict[int, int]:
    """task id -> checkpoint position (µs) of one generation: every event before it is done."""
    from relay.discovery import as_datetime

    rows = cql.execute(f"SELECT task_id, position FROM {keyspace}.checkpoints WHERE source_table = %s "
                       f"AND generation = %s", (table, as_datetime(generation_us)))
    return {r.task_id: timeuuid.to_micros(r.position) for r in rows if r.position is not None}


def marked(redis_client, prefix: str, table: str, rows: Iterable[LogRow]) -> set[str]:
    """The event ids whose dedup mark is in Redis (the keys relay's worker sets after an ack)."""
    _, seen = Dedup(redis_client, prefix, 1, "pause").split([_event(table, r) for r in rows])
    return {e.event_id for e in seen}


def _event(table: str, row: LogRow) -> OutboxEvent:
    return OutboxEvent(source=table, stream_id=row.stream_id, cdc_time=row.cdc_time, cdc_time_us=row.cdc_time_us,
                       batch_seq_no=row.batch_seq_no, event_id=row.event_id, aggregate_type="", aggregate_id="",
                       event_type="", topic="", key=b"", payload=b"")


@contextlib.contextmanager
def frozen(pids: Iterable[int]) -> Iterator[None]:
    """SIGSTOP the processes for the length of the block (a photograph that holds still), SIGCONT after.
    A stopped worker neither produces, acks, marks nor checkpoints; what it sent before arrives."""
    pids = list(pids)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


@dataclass
class Photo:
    """relay's state at one instant, from outside."""

    checkpoints: dict[int, int]  # task id -> position (µs)
    delivered: Delivered  # what Kafka held
    in_flight: set[str]  # ids in Kafka at or past their task's checkpoint: windows not saved yet
    unmarked: set[str]  # of those, the ones whose dedup mark was not in Redis yet

    def tasks_in_flight(self, rows: dict[str, LogRow]) -> set[int]:
        return {rows[eid].task_id for eid in self.in_flight}


class Watch:
    """Looks at one relay run (one table, one vnode generation, one topic) from outside."""

    def __init__(self, cql, redis_client, bootstrap: str, *, keyspace: str, table: str, topic: str,
                 generation_us: int, prefix: str) -> None:
        from confluent_kafka import Consumer

        self.cql, self.redis, self.bootstrap = cql, redis_client, bootstrap
        self.keyspace, self.table, self.topic, self.generation_us, self.prefix = (
            keyspace, table, topic, generation_us, prefix)
        self.rows = log_rows(cql, table)
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused"})

    def close(self) -> None:
        self._consumer.close()

    def saved(self) -> dict[int, int]:
        return checkpoints(self.cql, self.keyspace, self.table, self.generation_us)

    def records_in_kafka(self) -> int:
        """0 until the topic and its leaders are there (relay creates it with its first window)."""
        from confluent_kafka import KafkaException, TopicPartition

        try:
            md = self._consumer.list_topics(self.topic, timeout=10).topics[self.topic]
            if md.error is not None:
                return 0
            return sum(self._consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)[1]
                       for p in md.partitions)
        except KafkaException:
            return 0

    def ahead(self) -> bool:
        """Kafka holds more records than the checkpoints cover: one is past its checkpoint. A cheap
        look (one CQL read, the watermarks), valid while nothing was published twice."""
        saved = self.saved()
        covered = sum(1 for r in self.rows.values() if r.cdc_time_us < saved.get(r.task_id, self.generation_us))
        return self.records_in_kafka() > covered

    def photograph(self) -> Photo:
        """Checkpoints first, then Kafka, then Redis: a checkpoint read early can only be older than
        the truth (more in flight, never less), and by the time Redis is read, whatever was sent to
        it has landed."""
        saved = self.saved()
        delivered = consume_all(self.bootstrap, [self.topic])
        in_flight = {eid for eid in delivered.ids if eid in self.rows
                     and self.rows[eid].cdc_time_us >= saved.get(self.rows[eid].task_id, self.generation_us)}
        unmarked = in_flight - marked(self.redis, self.prefix, self.table, (self.rows[e] for e in in_flight))
        return Photo(saved, delivered, in_flight, unmarked)

    def catch_in_flight(self, relay, act: Callable[[Photo], None], timeout: float = 120) -> Photo:
        """Freeze relay's workers, again and again, until Kafka holds a record that no checkpoint has
        passed; photograph that moment and `act` on it (kill, signal) before they thaw."""
        caught: list[Photo] = []

        def attempt() -> bool:
            pids = relay.worker_pids()
            if not pids:
                return False
            with frozen(pids):
                if not self.ahead():
                    return False
                photo = self.photograph()
                if not photo.in_flight:
                    # A checkpoint write sent just before the freeze landed between the two reads
                    # (the server is not frozen): this moment has nothing in flight; look again.
                    return False
                act(photo)
            caught.append(photo)
            return True
        relay.wait_until(attempt, timeout, "a moment with a window in flight (published, not yet saved)",
                         interval=0.02)
        return caught[0]

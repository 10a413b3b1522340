"""`relay replay`: publish a time range of an outbox table again, from its CDC log (DESIGN §4b),
to rebuild projections. Read-only on relay's state: no checkpoint, no dead letter, no dedup.

Every record carries `relay_replay` = the run id, so consumers can tell a rebuild from live
traffic. Dedup is bypassed on purpose (the events were delivered before: that is the point), but a
run never publishes one CDC row twice: the time range is read in consecutive, non-overlapping
slices, and the identities published are remembered for the run (12-byte digests).

Order: generations oldest first; within a slice every task's events are merged by `cdc$time`,
so an aggregate's events (one stream per generation) leave in their CDC order. A chunk is
produced only after the previous one was acknowledged, so a refusal cannot be overtaken.
"""
from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from relay.config import Config, TableConfig
from relay.model import OutboxEvent

REPLAY_HEADER = "relay_replay"
SLICE_US = 60_000_000  # one read per task per minute of log: bounded memory, few queries
CHUNK = 2000


@dataclass(frozen=True)
class LogSelection:
    table: str
    since_us: int
    until_us: int
    aggregate_id: str | None = None
    event_type: str | None = None
    topic: str | None = None  # a topic template replacing the table's

    def wants(self, e: OutboxEvent) -> bool:
        # The log is read on whole milliseconds (minTimeuuid); the range itself is exact to the µs.
        return (self.since_us <= e.cdc_time_us < self.until_us
                and (self.aggregate_id is None or e.aggregate_id == self.aggregate_id)
                and (self.event_type is None or e.event_type == self.event_type))


def slices(start_us: int, end_us: int, width_us: int = SLICE_US) -> Iterator[tuple[int, int]]:
    """[start, end) cut into consecutive [a, b) of at most `width_us`, widened to whole milliseconds
    (the log is read with minTimeuuid bounds, which take ms; the caller filters to the µs)."""
    a = start_us - start_us % 1000
    while a < end_us:
        b = min(a + width_us, end_us)
        b += -b % 1000
        yield a, b
        a = b


@dataclass
class ReplaySummary:
    run_id: str
    read: int = 0
    matched: int = 0
    published: int = 0
    failed: int = 0
    poison: int = 0
    twice: int = 0  # rows met a second time in this run (never published again)
    errors: dict[str, int] = field(default_factory=dict)
    stopped: str = ""
    seconds: float = 0.0
    events: list[dict] = field(default_factory=list)  # dry run: what would be published

    @property
    def complete(self) -> bool:
        return not self.failed and not self.stopped

    def to_dict(self) -> dict:
        out = {"run_id": self.run_id, "read": self.read, "matched": self.matched, "published": self.published,
               "failed": self.failed, "poison": self.poison, "errors": self.errors, "stopped": self.stopped or None,
               "seconds": round(self.seconds, 3),
               "rate_per_second": round(self.published / self.seconds, 1) if self.seconds else None}
        if self.events:
            out["events"] = self.events
        return out

    def line(self) -> str:
        text = (f"run {self.run_id}: read {self.read}, matched {self.matched}, published {self.published}, "
                f"failed {self.failed}")
        if self.poison:
            text += f", not mappable {self.poison}"
        return text + (f"; stopped early: {self.stopped}" if self.stopped else "")


class LogReplayer:
    def __init__(self, cfg: Config, session, *, rate: float | None = None, dry_run: bool = False,
                 on_progress: Callable[[int], None] = lambda n: None) -> None:
        self.cfg = cfg
        self.session = session
        self.rate = rate
        self.dry_run = dry_run
        self.on_progress = on_progress

    def run(self, sel: LogSelection, run_id: str | None = None) -> ReplaySummary:
        from relay.dedup import digest
        from relay.discovery import Discovery, tasks_of
        from relay.mapping import Mapper
        from relay.reader import LogReader

        started = time.monotonic()
        table: TableConfig = self.cfg.table(sel.table)
        if sel.topic:
            table = dataclasses.replace(table, topic=sel.topic)
        mapper = Mapper(table)
        reader = LogReader(self.session, table.name, self.cfg.scylla.bypass_cache, self.cfg.scylla.fetch_size,
                           self.cfg.scylla.max_in_keys, columns=mapper.columns)
        out = ReplaySummary(run_id or uuid.uuid4().hex)
        published: set[bytes] = set()
        gens = [g for g in Discovery(self.session, self.cfg).generations(table)
                if g.start_us < sel.until_us and (g.end_us is None or g.end_us > sel.since_us)]
        try:
            for gen in gens:
                tasks = tasks_of(gen)
                lo, hi = max(sel.since_us, gen.start_us), min(sel.until_us, gen.end_us or sel.until_us)
                for a, b in slices(lo, hi):
                    batch: list[OutboxEvent] = []
                    for task in tasks:
                        skipped: dict[str, int] = {}
                        # As a worker maps a window: rows straight from the reader's pages.
                        events, poisons = mapper.map_pages(reader.read_pages(task.streams, a, b), skipped)
                        out.read += len(events) + len(poisons)
                        out.poison += sum(1 for p in poisons if sel.wants(p.event))
                        batch += [e for e in events if sel.wants(e)]
                    batch.sort(key=lambda e: (e.cdc_time_us, e.stream_id, e.batch_seq_no))
                    fresh = []
                    for e in batch:
                        d = digest(e)
                        if d in published:
                            out.twice += 1
                            continue
                        published.add(d)
                        e.headers = {**e.headers, REPLAY_HEADER: out.run_id}
                        fresh.append(e)
                    out.matched += len(fresh)
                    if self.dry_run:
                        out.events += [{"event_id": e.event_id, "aggregate_id": e.aggregate_id,
                                        "event_type": e.event_type, "topic": e.topic, "cdc_time_us": e.cdc_time_us}
                                       for e in fresh]
                        continue
                    self._publish(fresh, out)
                    if out.stopped:
                        return out
        finally:
            self._close()
            out.seconds = time.monotonic() - started
        return out

    # ------------------------------------------------------------------ publishing
    _publisher = None
    _limiter = None

    def _publish(self, events: list[OutboxEvent], out: ReplaySummary) -> None:
        import pybreaker

        from relay.publisher import FatalProducerError, PublishAborted, Publisher, TransientPublishError
        from relay.ratelimit import RateLimit, chunk_size

        if self._publisher is None:
            self._publisher = Publisher(self.cfg, on_acked=lambda es: self.on_progress(len(es)))
            if self.rate:
                self._limiter = RateLimit(self.rate, chunk_size(self.rate, CHUNK))
        size = chunk_size(self.rate, CHUNK)
        for i in range(0, len(events), size):
            chunk = events[i:i + size]
            if self._limiter is not None:
                while (delay := self._limiter.wait(time.monotonic(), len(chunk))) > 0:
                    time.sleep(delay)
            deadline = time.monotonic() + self.cfg.kafka.delivery_timeout_seconds
            try:
                outcome = self._publisher.publish(chunk, lambda d=deadline: time.monotonic() > d)
            except (TransientPublishError, FatalProducerError) as exc:
                outcome = exc.outcome
                out.stopped = f"kafka: {str(exc)[:200]}"
            except PublishAborted:
                out.stopped = "no delivery reports within kafka.delivery_timeout_seconds"
                return
            except pybreaker.CircuitBreakerError:
                out.stopped = "kafka circuit breaker open"
                return
            out.published += len(outcome.delivered)
            for _, cls, _ in outcome.failed:
                out.failed += 1
                out.errors[cls] = out.errors.get(cls, 0) + 1
            if out.stopped:
                return

    def _close(self) -> None:
        if self._publisher is not None:
            self._publisher.close(5.0)
            self._publisher = None

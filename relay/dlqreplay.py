"""Replaying and discarding dead letters (DESIGN §4b): `relay dlq replay|discard` and auto-recovery.

Selection and order are pure (`Selection`, `plan`, `waves`); `Replayer` does the I/O.

Order. Dead letters go out in `cdc$time` order, in waves of at most one dead letter per
aggregate: every report of a wave arrives before the next wave is produced, and an aggregate
whose dead letter fails again is held back for the rest of the run. So an aggregate's events can
never overtake each other, even when one of them is still refused (a refused record's later
neighbours in its partition would otherwise be acknowledged ahead of it).

Idempotence. A dead letter is marked `replayed` in Scylla only after Kafka acknowledged it. The
acknowledgement is first recorded in Redis, in a set of its own (`<prefix>dlq-replayed:`), next
to the event's ordinary dedup key: a crash between the ack and the Scylla update leaves the row
pending, and the next run finds the mark, updates the row and publishes nothing. So running a
replay twice publishes each dead letter at most once (unless Redis loses the mark as well).

Parking. Replaying or discarding the last open dead letter of a parked aggregate unparks it
(relay.parking); a worker that parked one more event of it meanwhile parks it again.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from relay.config import Config
from relay.dlqstore import DeadLetter, DeadLetterStore, days_between, read_letters, recent_days

log = logging.getLogger(__name__)

DLQ_ATTEMPT_HEADER = "relay_dlq_attempt"
REPLAYED_PREFIX = "dlq-replayed:"
REPLAYED_TTL_S = 30 * 86400  # a replay mark must outlive any re-run an operator may try
WAVE_MAX = 5000


# --------------------------------------------------------------------------- selection (pure)

@dataclass(frozen=True)
class Selection:
    """What a replay or discard acts on; every filter given must match (`None`: any)."""

    table: str
    statuses: frozenset[str] = frozenset({"pending", "parked"})
    since_us: int | None = None
    until_us: int | None = None
    aggregate_id: str | None = None
    event_type: str | None = None
    error_class: str | None = None
    limit: int | None = None

    def matches(self, d: DeadLetter) -> bool:
        """Every filter but the status."""
        us = d.cdc_us
        return (d.source_table == self.table
                and (self.since_us is None or us >= self.since_us)
                and (self.until_us is None or us < self.until_us)
                and (self.aggregate_id is None or d.aggregate_id == self.aggregate_id)
                and (self.event_type is None or d.event_type == self.event_type)
                and (self.error_class is None or d.error_class == self.error_class))

    def days(self, today: date, default_days: int) -> list[date]:
        """The day partitions that can hold a match, newest first."""
        if self.since_us is None:
            return recent_days(default_days, today)
        first = datetime.fromtimestamp(self.since_us / 1e6, tz=UTC).date()
        last = datetime.fromtimestamp(self.until_us / 1e6, tz=UTC).date() if self.until_us else today
        return days_between(first, max(first, min(last, today)))


@dataclass
class Plan:
    todo: list[DeadLetter]  # in cdc$time order
    already: list[DeadLetter]  # matching, and replayed before
    held: list[DeadLetter] = field(default_factory=list)  # behind an unselected open dead letter (auto)


def plan(letters: Iterable[DeadLetter], sel: Selection, eligible: Callable[[DeadLetter], bool] | None = None
         ) -> Plan:
    """The dead letters to act on, in `cdc$time` order, at most `sel.limit`.

    `eligible` (auto-recovery) also stops an aggregate at its first open dead letter that may not
    go yet (a mapping poison, say): its later events wait behind it, as the order requires."""
    matching = sorted((d for d in letters if sel.matches(d)), key=lambda d: d.order)
    todo = [d for d in matching if d.status in sel.statuses]
    held: list[DeadLetter] = []
    if eligible is not None:
        stopped: set[str] = set()
        kept = []
        for d in todo:
            agg = aggregate_of(d)
            if agg in stopped or not eligible(d):
                stopped.add(agg)
                held.append(d)
            else:
                kept.append(d)
        todo = kept
    if sel.limit:
        todo = todo[:sel.limit]
    return Plan(todo, [d for d in matching if d.status == "replayed"], held)


def aggregate_of(d: DeadLetter) -> str:
    # Without an aggregate id (a poison row) the dead letter is its own "aggregate".
    return d.aggregate_id if d.aggregate_id else f"\0{d.cdc_time}/{d.stream_id.hex()}/{d.batch_seq_no}"


def waves(todo: Sequence[DeadLetter], blocked: set[str]) -> Iterable[list[DeadLetter]]:
    """Successive waves of at most one dead letter per aggregate, each in cdc$time order; an
    aggregate added to `blocked` (by the caller, between waves) gets no more."""
    queues: dict[str, list[DeadLetter]] = {}
    for d in todo:
        queues.setdefault(aggregate_of(d), []).append(d)
    depth = 0
    while True:
        wave = [q[depth] for agg, q in queues.items() if len(q) > depth and agg not in blocked]
        if not wave:
            return
        wave.sort(key=lambda d: d.order)
        for i in range(0, len(wave), WAVE_MAX):
            yield wave[i:i + WAVE_MAX]
        depth += 1


# --------------------------------------------------------------------------- the run

@dataclass
class Summary:
    matched: int = 0
    replayed: int = 0
    failed: int = 0
    held: int = 0  # not tried: an earlier dead letter of their aggregate failed (or waits)
    already: int = 0  # replayed by an earlier run
    discarded: int = 0
    unparked: list[str] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)  # error class -> count, of this run's failures
    by_class: dict[str, int] = field(default_factory=dict)  # replayed, by the dead letter's error class
    failed_by_class: dict[str, int] = field(default_factory=dict)
    stopped: str = ""  # why the run stopped early (Kafka unreachable, …)
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return self.replayed + self.discarded >= self.matched and not self.failed and not self.held

    def to_dict(self) -> dict:
        return {"matched": self.matched, "replayed": self.replayed, "failed": self.failed, "held_back": self.held,
                "skipped_already_replayed": self.already, "discarded": self.discarded, "unparked": self.unparked,
                "errors": self.errors, "stopped": self.stopped or None, "seconds": round(self.seconds, 3),
                "rate_per_second": round(self.replayed / self.seconds, 1) if self.seconds else None}

    def line(self) -> str:
        text = (f"matched {self.matched}, replayed {self.replayed}, failed {self.failed}, held back {self.held}, "
                f"skipped as already replayed {self.already}")
        if self.discarded:
            text = f"matched {self.matched}, discarded {self.discarded}"
        if self.unparked:
            text += f", unparked {len(self.unparked)} aggregate(s)"
        if self.stopped:
            text += f"; stopped early: {self.stopped}"
        return text


class Replayer:
    """One replay or discard run against the real services. `auto` (auto-recovery) turns a dead
    letter whose retryable attempts are exhausted into `failed`; a manual run only counts."""

    def __init__(self, cfg: Config, session, actor: str, *, days: int = 7, rate: float | None = None,
                 auto: bool = False, on_progress: Callable[[int], None] = lambda n: None,
                 should_stop: Callable[[], bool] = lambda: False) -> None:
        self.cfg = cfg
        self.session = session
        self.keyspace = cfg.scylla.relay_keyspace
        self.store = DeadLetterStore(session, self.keyspace, actor)
        self.days = days
        self.rate = rate
        self.auto = auto
        self.on_progress = on_progress
        self.on_plan: Callable[[int], None] = lambda n: None  # how many dead letters the run acts on
        self.should_stop = should_stop
        # Auto-recovery: the first dead letter goes alone, and the round stops unless Kafka acks it.
        self.probe_first = False
        self._publisher = None
        self._redis = None

    # ------------------------------------------------------------------ selecting
    def select(self, sel: Selection, eligible: Callable[[DeadLetter], bool] | None = None,
               now: datetime | None = None) -> Plan:
        today = (now or datetime.now(UTC)).date()
        letters = list(read_letters(self.session, self.keyspace, [sel.table], sel.days(today, self.days)))
        return plan(letters, sel, eligible)

    # ------------------------------------------------------------------ discard
    def discard(self, sel: Selection, reason: str) -> Summary:
        p = self.select(sel)
        self.on_plan(len(p.todo))
        out = Summary(matched=len(p.todo), already=len(p.already))
        self.store.set_status_many(p.todo, "discarded", reason)
        out.discarded = len(p.todo)
        self.on_progress(len(p.todo))
        out.unparked = self._unpark(sel.table, {d.aggregate_id for d in p.todo if d.aggregate_id})
        return out

    # ------------------------------------------------------------------ replay
    def replay(self, sel: Selection, eligible: Callable[[DeadLetter], bool] | None = None) -> Summary:
        from relay.ratelimit import RateLimit, chunk_size

        started = time.monotonic()
        p = self.select(sel, eligible)
        self.on_plan(len(p.todo))
        out = Summary(matched=len(p.todo), already=len(p.already), held=len(p.held))
        if not p.todo:
            out.unparked = self._unpark(sel.table, set())
            return out
        marks, dedup = self._marks()
        # Acknowledged by Kafka in an earlier run whose Scylla update never happened: no second copy.
        # The events stay referenced while their ids are compared: a freed object's id is reused.
        events = [d.to_event() for d in p.todo]
        acked_before = {id(e) for e in marks.split(events)[1]}
        done_before = [d for d, e in zip(p.todo, events, strict=True) if id(e) in acked_before]
        self.store.set_status_many(done_before, "replayed", "published by an earlier run (its Kafka ack was recorded)")
        out.already += len(done_before)
        out.matched -= len(done_before)
        self.on_progress(len(done_before))
        todo = [d for d, e in zip(p.todo, events, strict=True) if id(e) not in acked_before]
        limiter = RateLimit(self.rate, chunk_size(self.rate, WAVE_MAX)) if self.rate else None
        blocked: set[str] = set()
        touched: set[str] = set()
        try:
            probe = self.probe_first
            for wave in waves(todo, blocked):
                i = 0
                while i < len(wave):
                    if self.should_stop():
                        out.stopped = out.stopped or "stopped"
                        break
                    size = 1 if probe else chunk_size(self.rate, WAVE_MAX)
                    chunk = wave[i:i + size]
                    i += size
                    if limiter is not None:
                        while (delay := limiter.wait(time.monotonic(), len(chunk))) > 0:
                            time.sleep(delay)
                    self._publish(chunk, out, blocked, dedup, marks)
                    touched |= {d.aggregate_id for d in chunk if d.aggregate_id}
                    if probe:
                        probe = False
                        if not out.replayed:
                            out.stopped = out.stopped or "the probe produce failed: " + ", ".join(out.errors)
                    if out.stopped:
                        break
                if out.stopped:
                    break
        finally:
            self._close()
        tried = out.replayed + out.failed
        out.held += max(0, len(todo) - tried)
        out.unparked = self._unpark(sel.table, touched | {d.aggregate_id for d in done_before if d.aggregate_id})
        out.seconds = time.monotonic() - started
        return out

    def _publish(self, chunk: list[DeadLetter], out: Summary, blocked: set[str], dedup, marks) -> None:
        import pybreaker

        from relay.publisher import FatalProducerError, PublishAborted, TransientPublishError

        by_event = {}
        events = []
        for d in chunk:
            e = d.to_event({DLQ_ATTEMPT_HEADER: str((d.attempts or 0) + 1)})
            by_event[id(e)] = d
            events.append(e)
        unpublishable = [e for e in events if not e.topic]
        for e in unpublishable:  # a poison row without a topic: nothing to send
            self._failed(by_event[id(e)], "no_topic", "the dead letter has no topic to publish to", out, blocked)
        events = [e for e in events if e.topic]
        acked: list = []
        publisher = self._publisher_for(lambda es: (acked.extend(es), marks.mark(es), dedup.mark(es)))
        deadline = time.monotonic() + self.cfg.kafka.delivery_timeout_seconds
        failed: list[tuple] = []
        try:
            outcome = publisher.publish(events, lambda: time.monotonic() > deadline or self.should_stop())
            failed = outcome.failed
        except (TransientPublishError, FatalProducerError) as exc:
            failed = exc.outcome.failed
            out.stopped = f"kafka: {str(exc)[:200]}"
        except PublishAborted:
            out.stopped = f"no delivery reports within kafka.delivery_timeout_seconds " \
                          f"({self.cfg.kafka.delivery_timeout_seconds:g}s)"
        except pybreaker.CircuitBreakerError:
            out.stopped = "kafka circuit breaker open"
        done = {id(e) for e in acked}
        letters = [by_event[id(e)] for e in acked]
        self.store.set_status_many(letters, "replayed", attempts=True)
        for d in letters:
            self._count_replayed(out, d)
        self.on_progress(len(letters))
        for e, cls, msg in failed:
            if id(e) not in done:
                self._failed(by_event[id(e)], cls, msg, out, blocked)
        settled = done | {id(e) for e, _, _ in failed}
        for e in events:
            if id(e) not in settled:
                blocked.add(aggregate_of(by_event[id(e)]))  # unknown fate: its aggregate waits for a re-run

    def _failed(self, d: DeadLetter, cls: str, msg: str, out: Summary, blocked: set[str]) -> None:
        status = d.status or "pending"
        if self.auto and (d.attempts or 0) + 1 >= self.cfg.dlq.max_attempts:
            status = "failed"
        self.store.attempt_failed(d, cls, msg, status)
        out.failed += 1
        out.errors[cls] = out.errors.get(cls, 0) + 1
        key = d.error_class or "unknown"
        out.failed_by_class[key] = out.failed_by_class.get(key, 0) + 1
        blocked.add(aggregate_of(d))
        self.on_progress(1)

    @staticmethod
    def _count_replayed(out: Summary, d: DeadLetter) -> None:
        out.replayed += 1
        key = d.error_class or "unknown"
        out.by_class[key] = out.by_class.get(key, 0) + 1

    # ------------------------------------------------------------------ parking
    def _unpark(self, table: str, aggregates: set[str]) -> list[str]:
        """Unpark each parked aggregate of `aggregates` that has no open dead letter left."""
        parked = self.store.parked(table) & aggregates
        if not parked:
            return []
        today = datetime.now(UTC).date()
        open_left = {d.aggregate_id for d in read_letters(self.session, self.keyspace, [table],
                                                          recent_days(self.days, today))
                     if d.aggregate_id in parked and d.status in ("pending", "parked")}
        freed = sorted(parked - open_left)
        for agg in freed:
            self.store.unpark(table, agg)
        if freed:
            # A worker whose cache still held the aggregate may have parked one more event just now.
            again = {d.aggregate_id for d in read_letters(self.session, self.keyspace, [table], [today])
                     if d.aggregate_id in freed and d.status == "parked"}
            for agg in again:
                self.store.repark(table, agg, "parked again while it was being unparked")
            freed = [a for a in freed if a not in again]
        return freed

    # ------------------------------------------------------------------ clients
    def _marks(self):
        from relay import connect
        from relay.dedup import Dedup

        if self._redis is None:
            self._redis = connect.redis_client(self.cfg)
        r = self.cfg.redis
        marks = Dedup(self._redis, r.key_prefix + REPLAYED_PREFIX, max(r.dedup_ttl_seconds, REPLAYED_TTL_S),
                      r.on_outage)
        return marks, Dedup(self._redis, r.key_prefix, r.dedup_ttl_seconds, r.on_outage)

    def _publisher_for(self, on_acked):
        from relay.publisher import Publisher

        if self._publisher is None:
            self._publisher = Publisher(self.cfg, on_acked=lambda es: self._on_acked(es))
        self._acked_cb = on_acked
        return self._publisher

    def _on_acked(self, events) -> None:
        self._acked_cb(events)

    def _close(self) -> None:
        if self._publisher is not None:
            self._publisher.close(5.0)  # late acks are still recorded in Redis: the next run settles them
            self._publisher = None
        if self._redis is not None:
            self._redis.close()
            self._redis = None

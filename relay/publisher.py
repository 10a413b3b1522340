"""Publishing a window to Kafka (DESIGN §4, §6) with an idempotent producer.

`publish(events)` produces every event, waits for every delivery report, and sorts the result
with the pure rules of relay.delivery: delivered, dead letters, suspects produced again one by
one, and events left for a re-read of the window (raised as TransientPublishError).

Outages. librdkafka never gives up on a record (`message.timeout.ms = 0`, relay.connect), so an
outage only delays reports: nothing fails by a timeout, nothing is re-produced, so nothing is
duplicated or reordered. While a window waits, Kafka counts as failing when librdkafka reports
all brokers down or the window's reports are overdue (`kafka.delivery_timeout_seconds` without
a report); the circuit breaker is then opened (so the worker pauses reading once this window is
done) and the window keeps polling for its reports, checking `should_abort` (worker stopping,
supervisor gone) at every poll. When Kafka returns the reports arrive, the window completes, and
the breaker's normal half-open trial closes it. The breaker still wraps the whole "produce a
window and wait for its reports" step, never a single produce() (LIBRARIES.md §3).

Oversized records. The broker refuses a whole batch when it exceeds the topic's
`max.message.bytes`, innocent neighbours included. relay learns each topic's limit
(DescribeConfigs) and keeps librdkafka's `batch.size` within the smallest one, so a record too
big for its topic always travels alone and is the only one refused (measured: 30 oversized among
3,000 events → exactly those 30 refused). A shared batch refused anyway is handled by
relay.delivery (suspects retried alone, in order).

Fatal producer errors. Every report librdkafka still delivers is collected (flush) and the acked
events handed to `on_acked` before FatalProducerError is raised, so their dedup keys are set.

Delivery callbacks only record; all decisions happen outside them (LIBRARIES.md §4).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pybreaker
from confluent_kafka import KafkaError, KafkaException, Producer

from relay.config import Config
from relay.connect import LIBRDKAFKA_BATCH_SIZE, kafka_client_base, producer_config
from relay.delivery import Report, Status, decide
from relay.model import OutboxEvent

log = logging.getLogger(__name__)


def _codes(*names: str) -> frozenset[int]:
    return frozenset(getattr(KafkaError, n) for n in names if hasattr(KafkaError, n))


# Refusals of the record itself: retrying cannot fix them. Dead-letter it, keep the window going.
PERMANENT = _codes("TOPIC_AUTHORIZATION_FAILED", "INVALID_TOPIC_EXCEPTION", "UNKNOWN_TOPIC_OR_PART", "_UNKNOWN_TOPIC",
                   "_UNKNOWN_PARTITION", "_INVALID_ARG", "INVALID_REQUIRED_ACKS", "_MSG_SIZE_TOO_LARGE",
                   "POLICY_VIOLATION")
# Refusals the broker gives a whole batch for one bad record in it (Kafka's Java producer splits
# such batches): each record is a suspect until it fails alone.
BATCH_REFUSALS = _codes("MSG_SIZE_TOO_LARGE", "RECORD_LIST_TOO_LARGE", "INVALID_RECORD", "CORRUPT_MESSAGE",
                        "INVALID_TIMESTAMP")
# A multiprocess histogram observation costs ~2 µs (LIBRARIES.md §1), and each sample feeds two
# (publish and end-to-end latency); one ack in this many describes the distribution just as well
# (at 10,000 events/s: 150 samples a second).
LATENCY_SAMPLE = 64
BREAKER_STATES = {"closed": 0, "open": 1, "half-open": 2}
BATCH_MARGIN = 64  # bytes kept below a topic's max.message.bytes (librdkafka counts framing in batch.size)
RECORD_OVERHEAD = 32  # a lower bound of a record's framing in a batch (varints, attributes, deltas)
POLL_S = 0.1
ACK_POLL_S = 0.02
DOWN_GRACE_S = 3.0
FATAL_DRAIN_S = 30.0  # how long a fatal error waits for the reports of in-flight requests


class TransientPublishError(Exception):
    """Some records were not acknowledged for reasons that pass: re-read the window later,
    checkpoint unchanged. `outcome` holds what was settled (delivered and already marked; dead
    letters to write); `unsettled` the events the re-read must bring again."""

    def __init__(self, message: str, outcome: PublishOutcome | None = None,
                 unsettled: Sequence[OutboxEvent] = ()) -> None:
        super().__init__(message)
        self.outcome = outcome or PublishOutcome()
        self.unsettled = list(unsettled)


class FatalProducerError(Exception):
    """The producer instance is unusable (librdkafka fatal error): rebuild it, re-read the window.
    The reports that still came were collected first; `outcome.delivered` were marked."""

    def __init__(self, message: str, outcome: PublishOutcome | None = None) -> None:
        super().__init__(message)
        self.outcome = outcome or PublishOutcome()


class PublishAborted(Exception):
    """`should_abort()` turned true while the window waited: return without a checkpoint."""


@dataclass
class PublishOutcome:
    delivered: list[OutboxEvent] = field(default_factory=list)
    failed: list[tuple[OutboxEvent, str, str]] = field(default_factory=list)  # event, error class, message


_PENDING = object()  # no delivery report yet


class _Window:
    """One publish call's records and their reports, by produce index."""

    def __init__(self, events: Sequence[OutboxEvent]) -> None:
        self.events = list(events)
        self.results: list = [_PENDING] * len(self.events)  # None = acked, KafkaError = failed
        self.arrived: list[tuple[int, KafkaError | None]] = []  # appended by callbacks
        self.taken = 0
        self.pending = 0
        self.started = time.monotonic()
        self.unmarked: list[OutboxEvent] = []  # acked, not yet handed to on_acked
        self.marked_at = self.started

    def callback(self, i: int):
        append = self.arrived.append

        def on_delivery(err, msg):  # runs inside poll()/flush(): record only
            append((i, err))
        return on_delivery


class _BreakerListener(pybreaker.CircuitBreakerListener):
    def __init__(self, on_state: Callable[[str], None]) -> None:
        self.on_state = on_state
        self.opened_at = 0.0

    def state_change(self, cb, old_state, new_state) -> None:
        name = new_state.name if hasattr(new_state, "name") else str(new_state)
        if name == "open":
            self.opened_at = time.monotonic()
        log.warning("kafka circuit breaker %s -> %s", getattr(old_state, "name", old_state), name)
        self.on_state(name)


def _never() -> bool:
    return False


class Publisher:
    def __init__(self, cfg: Config, on_acked: Callable[[list[OutboxEvent]], None],
                 on_breaker_state: Callable[[str], None] = lambda s: None,
                 on_latency: Callable[[OutboxEvent, float], None] | None = None) -> None:
        self.cfg = cfg
        self.on_acked = on_acked
        self.on_latency = on_latency
        self._listener = _BreakerListener(on_breaker_state)
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=cfg.breaker.fail_max, reset_timeout=cfg.breaker.reset_timeout_seconds,
            exclude=[lambda e: not isinstance(e, TransientPublishError)],
            listeners=[self._listener], name="kafka")
        self._known_topics: set[str] = set()
        self._limits: dict[str, int | None] = {}  # topic -> max.message.bytes (None: could not learn it)
        self._down_at: float | None = None  # librdkafka's last "all brokers down"
        self._report_at = time.monotonic()  # the last delivery report of any window
        self._tripped_at: float | None = None  # when this publisher opened the breaker for a stuck window
        self._window: _Window | None = None  # the window whose reports may still arrive
        self._acks_seen = 0  # for sampling latencies
        self.admin = None
        # Built now, not on the first window: a window's first record for a topic waits for the
        # topic's check and its max.message.bytes (relay.publisher._prepare), and a new client's
        # bootstrap added ~0.15 s to that window on a loaded machine (make bench, first point).
        self._admin()
        self.batch_size = self._wanted_batch_size()
        self.producer = self._make_producer()

    # ------------------------------------------------------------------ producer lifecycle
    def _make_producer(self) -> Producer:
        return Producer(producer_config(self.cfg, batch_size=self.batch_size, error_cb=self._on_error))

    def _on_error(self, err: KafkaError) -> None:  # served by poll()/flush(): record only
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self._down_at = time.monotonic()

    def rebuild(self) -> None:
        """After a fatal error: collect what can be collected, then start a new producer session."""
        self._drain(5.0)
        self.producer = self._make_producer()

    def close(self, timeout: float = 10.0) -> int:
        """Flush, handing late acks of an unfinished window to on_acked; returns the records still queued."""
        self._drain(timeout)
        try:
            return len(self.producer)
        except KafkaException:
            return 0

    def _drain(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                left = self.producer.flush(max(0.0, min(POLL_S * 5, deadline - time.monotonic())))
            except KafkaException:
                left = len(self.producer)
            if self._window is not None:
                self._collect(self._window)
                self._hand_acks(self._window)
            if not left or time.monotonic() >= deadline:
                return

    @property
    def breaker_state(self) -> str:
        return self.breaker.current_state

    # ------------------------------------------------------------------ publish
    def publish(self, events: Sequence[OutboxEvent], should_abort: Callable[[], bool] = _never) -> PublishOutcome:
        """Raises pybreaker.CircuitBreakerError while the breaker is open (reading pauses),
        TransientPublishError, FatalProducerError, PublishAborted (see the module docstring)."""
        if not events:
            # Nothing to send proves nothing about Kafka: an empty window neither closes nor trips
            # the breaker, but still pauses while it is open and its reset timeout runs.
            if (self.breaker.current_state == "open"
                    and time.monotonic() - self._listener.opened_at < self.cfg.breaker.reset_timeout_seconds):
                raise pybreaker.CircuitBreakerError("kafka circuit breaker is open")
            return PublishOutcome()
        return self.breaker.call(self._publish, events, should_abort)

    def _publish(self, events: Sequence[OutboxEvent], should_abort: Callable[[], bool]) -> PublishOutcome:
        earlier: list[OutboxEvent] = []
        if self._window is not None:
            # An aborted window's records are still queued ahead of these: let them finish first,
            # and do not send again what they got through (it was read before they were marked).
            stale = self._window
            self._await(stale, should_abort)
            self._window = None
            done = {e.identity for e, r in zip(stale.events, stale.results, strict=True) if r is None}
            earlier = [e for e in events if e.identity in done]
            events = [e for e in events if e.identity not in done]
            if not events:
                return PublishOutcome(earlier)
        self._prepare({e.topic for e in events})
        w = self._window = _Window(events)
        produce, callback = self.producer.produce, w.callback
        for i, event in enumerate(w.events):
            try:  # the common case inline; _produce handles a full queue and refusals
                produce(event.topic, event.payload, event.key, on_delivery=callback(i), headers=event.kafka_headers())
                w.pending += 1
            except (BufferError, KafkaException):
                self._produce(w, i, should_abort)
                produce = self.producer.produce
            if i % 100 == 99:  # keep reports flowing: a crash re-publishes only unmarked acks
                self._step(w, 0, should_abort)
        self._await(w, should_abort)
        if all(r is None for r in w.results):  # the common case: every record acked, nothing to decide
            self._window = None
            return PublishOutcome(earlier + w.events)
        reports = [self._fact(w, i) for i in range(len(events))]
        relearned = False
        while True:
            decision = decide(reports)
            if not decision.retry_alone:
                break
            if not relearned:
                relearned = True
                self._relearn_limits({w.events[i].topic for i in decision.retry_alone})
            i = decision.retry_alone[0]
            w.results[i] = _PENDING
            self._produce(w, i, should_abort)  # the queue is empty: it travels alone
            self._await(w, should_abort)
            reports[i] = self._fact(w, i, alone=True)
        self._window = None
        outcome = PublishOutcome(earlier + [w.events[i] for i in decision.delivered],
                                 [(w.events[i], cls, msg) for i, cls, msg in decision.dead_letter])
        if decision.reread:
            first = reports[decision.reread[0]]
            raise TransientPublishError(
                f"{len(decision.reread)} of {len(events)} records not acknowledged: {first.error}: {first.message}",
                outcome, [w.events[i] for i in decision.reread])
        return outcome

    def _produce(self, w: _Window, i: int, should_abort: Callable[[], bool]) -> None:
        event = w.events[i]
        while True:
            try:
                self.producer.produce(event.topic, key=event.key, value=event.payload,
                                      headers=event.kafka_headers(), on_delivery=w.callback(i))
                w.pending += 1
                return
            except BufferError:
                self._step(w, POLL_S, should_abort)  # local queue full (an outage, or a huge window)
            except KafkaException as exc:
                err = exc.args[0]
                if err.fatal():
                    raise self._fatal(w, err, should_abort) from exc
                w.results[i] = err  # refused locally (e.g. larger than message.max.bytes)
                return

    def _await(self, w: _Window, should_abort: Callable[[], bool]) -> None:
        while w.pending:
            # flush(), unlike poll(), sends the queued tail at once instead of after linger.ms:
            # the window is complete, nothing more is coming to batch with it. Short calls, so
            # acks are marked in Redis as they arrive: a crash re-publishes only the last few ms
            # of acks, not the whole window (DESIGN §4).
            self._step(w, ACK_POLL_S, should_abort, flush=True)

    def _step(self, w: _Window, timeout: float, should_abort: Callable[[], bool], flush: bool = False) -> None:
        """One poll: serve reports, notice a failing Kafka, honour should_abort."""
        try:
            if flush:
                self.producer.flush(timeout)
            else:
                self.producer.poll(timeout)
        except KafkaException as exc:
            err = exc.args[0]
            if err.fatal():
                raise self._fatal(w, err, should_abort) from exc
            self._hand_acks(w)
            raise
        fatal = self._collect(w)
        if fatal is not None:
            raise self._fatal(w, fatal, should_abort)
        if w.pending:
            self._watch(w)
        if should_abort():
            self._hand_acks(w)
            raise PublishAborted(f"{w.pending} delivery reports outstanding")

    def _watch(self, w: _Window) -> None:
        """Open the breaker when this window's reports are stuck behind a failing Kafka."""
        now = time.monotonic()
        since = max(w.started, self._report_at)  # the last sign of life of this window
        waited = now - since
        # librdkafka says "all brokers down" once per outage, and again only every few reconnect
        # cycles: it counts until the next report of any window, and once this window has waited
        # a moment (a blip of a second does not open the breaker).
        down = self._down_at is not None and self._down_at > self._report_at and waited >= DOWN_GRACE_S
        if not down and waited <= self.cfg.kafka.delivery_timeout_seconds:
            return
        if self._tripped_at is None:
            self._tripped_at = now
            log.warning("kafka is failing (%s, %d delivery reports outstanding): the breaker opens and the window "
                        "keeps waiting for its reports", "all brokers down" if down else
                        f"no report for {waited:.0f}s", w.pending)
        if self.breaker.current_state != "open":  # also when a half-open trial finds Kafka still down
            self.breaker.open()

    def _collect(self, w: _Window) -> KafkaError | None:
        """Take the reports that arrived; hand acks to on_acked. Returns a fatal error, if one came."""
        fatal = None
        new = w.arrived[w.taken:]
        if new:
            # Reports are served inside the poll/flush that just returned (every ACK_POLL_S at most):
            # its end stands for their arrival.
            at = self._report_at = time.monotonic()
            w.taken += len(new)
            w.pending -= len(new)
            results, events = w.results, w.events
            errors = False
            for i, err in new:
                results[i] = err
                if err is not None:
                    errors = True
            if errors:
                acked = [events[i] for i, err in new if err is None]
                fatal = next((err for _, err in new if err is not None and err.fatal()), None)
            else:
                acked = [events[i] for i, _ in new]
            if self.on_latency and acked:
                seen, self._acks_seen = self._acks_seen, self._acks_seen + len(acked)
                for k in range(-seen % LATENCY_SAMPLE, len(acked), LATENCY_SAMPLE):
                    self.on_latency(acked[k], at - w.started)
        else:
            acked = []
        if self._tripped_at is not None and w.taken and acked:
            log.warning("kafka: delivery reports flowing again after %.0fs", time.monotonic() - self._tripped_at)
            self._tripped_at = None
        if acked:
            w.unmarked += acked
        # Marked every ACK_POLL_S and when the window's last report is in, not per poll: one Redis
        # call per few thousand acks instead of one per hundred, and a crash still re-publishes only
        # the acks of the last few milliseconds.
        if w.unmarked and (not w.pending or fatal is not None or time.monotonic() - w.marked_at >= ACK_POLL_S):
            self._hand_acks(w)
        return fatal

    def _hand_acks(self, w: _Window) -> None:
        if w.unmarked:
            acked, w.unmarked = w.unmarked, []
            w.marked_at = time.monotonic()
            self.on_acked(acked)

    def _fatal(self, w: _Window, err: KafkaError, should_abort: Callable[[], bool]) -> FatalProducerError:
        """Collect every report librdkafka still delivers (purged queue, in-flight acks) and mark
        the acked events before the caller gives up on this producer."""
        log.error("fatal producer error %s: %s; collecting the outstanding delivery reports", err.name(), err.str())
        deadline = time.monotonic() + FATAL_DRAIN_S
        while w.pending and time.monotonic() < deadline and not should_abort():
            try:
                self.producer.flush(POLL_S * 5)
            except KafkaException:
                pass
            self._collect(w)
        self._hand_acks(w)
        self._window = None
        delivered = [e for e, r in zip(w.events, w.results, strict=True) if r is None]
        return FatalProducerError(f"{err.name()}: {err.str()}", PublishOutcome(delivered))

    def _fact(self, w: _Window, i: int, alone: bool = False) -> Report:
        event, res = w.events[i], w.results[i]
        key = (event.topic, event.key)
        if res is _PENDING:
            return Report(key, Status.MISSING, "_NO_REPORT", "no delivery report")
        if res is None:
            return Report(key, Status.ACKED)
        code = res.code()
        if code in BATCH_REFUSALS:
            return Report(key, Status.SUSPECT, res.name(), res.str(), alone or self._travels_alone(event))
        return Report(key, Status.PERMANENT if code in PERMANENT else Status.TRANSIENT, res.name(), res.str())

    def _travels_alone(self, event: OutboxEvent) -> bool:
        """librdkafka adds a record to a batch only if the batch stays within batch.size, so a
        record bigger than batch.size always has a batch of its own."""
        size = len(event.key or b"") + len(event.payload or b"") + RECORD_OVERHEAD
        size += sum(len(k) + len(v) for k, v in event.kafka_headers())
        return size > self.batch_size

    # ------------------------------------------------------------------ topics and their limits
    def _prepare(self, topics: set[str]) -> None:
        if self.cfg.kafka.create_topics:
            self._ensure_topics(topics)
        self._learn_limits(topics)
        self._fit_batch_size()

    def _wanted_batch_size(self) -> int:
        configured = int(self.cfg.kafka.producer.get("batch.size", LIBRDKAFKA_BATCH_SIZE))
        limits = [v - BATCH_MARGIN for v in self._limits.values() if v]
        return max(1, min([configured, *limits]))

    def _fit_batch_size(self) -> None:
        """Between windows (nothing queued): a new producer when a topic needs smaller batches."""
        wanted = self._wanted_batch_size()
        if wanted < self.batch_size:
            log.info("batch.size %d -> %d to fit max.message.bytes of %s", self.batch_size, wanted,
                     sorted(t for t, v in self._limits.items() if v and v - BATCH_MARGIN == wanted))
            self._drain(5.0)
            self.batch_size = wanted
            self.producer = self._make_producer()

    def _admin(self):
        from confluent_kafka.admin import AdminClient

        if self.admin is None:
            self.admin = AdminClient(kafka_client_base(self.cfg))
        return self.admin

    def _learn_limits(self, topics: set[str]) -> None:
        from confluent_kafka.admin import ConfigResource, ResourceType

        missing = sorted(topics - set(self._limits))
        if not missing:
            return
        futures = self._admin().describe_configs([ConfigResource(ResourceType.TOPIC, t) for t in missing],
                                                 request_timeout=10)
        for resource, fut in futures.items():
            topic = resource.name
            try:
                entry = fut.result(timeout=15).get("max.message.bytes")
                self._limits[topic] = int(entry.value) if entry is not None and entry.value else None
            except KafkaException as exc:
                err = exc.args[0]
                if err.code() in (KafkaError._TIMED_OUT, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN):
                    raise TransientPublishError(f"cannot describe topic {topic}: {err.str()}") from exc
                if err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                    continue  # not there yet (auto-created by the first record): asked again next window
                log.warning("cannot learn max.message.bytes of %s (%s): batches keep batch.size %d, so a record "
                            "too big for the topic may take its batch's neighbours to a retry", topic, err.str(),
                            self.batch_size)
                self._limits[topic] = None

    def _relearn_limits(self, topics: set[str]) -> None:
        """A shared batch was refused: the topic's limit may have been lowered since we learned it."""
        for t in topics:
            self._limits.pop(t, None)
        try:
            self._learn_limits(topics)
        except TransientPublishError as exc:
            log.warning("%s", exc)
        self._fit_batch_size()

    def _ensure_topics(self, topics: set[str]) -> None:
        missing = topics - self._known_topics
        if not missing:
            return
        from confluent_kafka.admin import NewTopic

        from relay.kafkameta import topic_partitions

        try:
            existing = {t for t, n in topic_partitions(self._admin(), missing, 10).items() if n is not None}
        except KafkaException as exc:
            raise TransientPublishError(f"cannot describe topics {sorted(missing)}: {exc.args[0].str()}") from exc
        to_create = missing - existing
        if to_create:
            futures = self._admin().create_topics([
                NewTopic(t, num_partitions=self.cfg.kafka.topic_partitions,
                         replication_factor=self.cfg.kafka.topic_replication_factor) for t in sorted(to_create)])
            for topic, fut in futures.items():
                try:
                    fut.result(timeout=15)
                    log.info("created topic %s", topic)
                except KafkaException as exc:
                    err = exc.args[0]
                    if err.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                        if err.code() in (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.INVALID_TOPIC_EXCEPTION,
                                          KafkaError.POLICY_VIOLATION, KafkaError.INVALID_REPLICATION_FACTOR,
                                          KafkaError.INVALID_PARTITIONS):
                            log.error("cannot create topic %s: %s", topic, err.str())
                            continue  # its records will fail permanently and be dead-lettered
                        raise TransientPublishError(f"creating topic {topic}: {err.str()}") from exc
        self._known_topics |= missing

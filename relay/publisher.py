"""Publishing a window to Kafka (DESIGN §4, §6) with an idempotent producer.

`publish(events)` produces every event, polls until each delivery report is back, and
sorts the outcome: delivered (acknowledged), permanent per-event failures (for the
dead-letter table), transient failures (raised, so the window is re-read later) and fatal
producer errors (raised; the caller rebuilds the producer). The circuit breaker wraps this
whole "produce a window and wait for its reports" step, never a single produce().
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
from relay.connect import producer_config
from relay.model import OutboxEvent

log = logging.getLogger(__name__)

# Errors that re-trying cannot fix for this record: dead-letter it, keep the window going.
PERMANENT = {getattr(KafkaError, name) for name in (
    "MSG_SIZE_TOO_LARGE", "INVALID_RECORD", "TOPIC_AUTHORIZATION_FAILED", "RECORD_LIST_TOO_LARGE",
    "INVALID_TOPIC_EXCEPTION", "UNKNOWN_TOPIC_OR_PART", "_UNKNOWN_TOPIC", "_INVALID_ARG", "INVALID_REQUIRED_ACKS",
    "CORRUPT_MESSAGE", "_MSG_SIZE_TOO_LARGE") if hasattr(KafkaError, name)}
# A multiprocess histogram observation costs ~2 µs (LIBRARIES.md §1); one ack in this many
# (the first of each batch included) describes the latency distribution just as well.
LATENCY_SAMPLE = 16
BREAKER_STATES = {"closed": 0, "open": 1, "half-open": 2}


class TransientPublishError(Exception):
    """Some records were not acknowledged for reasons that pass (timeouts, brokers down)."""


class PublishAborted(Exception):
    """The worker is stopping (or its supervisor is gone) while a window waits for its reports."""


class FatalProducerError(Exception):
    """The producer instance is unusable (librdkafka fatal error): flush, rebuild, re-read."""


@dataclass
class PublishOutcome:
    delivered: list[OutboxEvent] = field(default_factory=list)
    failed: list[tuple[OutboxEvent, str, str]] = field(default_factory=list)  # event, error class, message


class _BreakerListener(pybreaker.CircuitBreakerListener):
    def __init__(self, on_state: Callable[[str], None]) -> None:
        self.on_state = on_state

    def state_change(self, cb, old_state, new_state) -> None:
        name = new_state.name if hasattr(new_state, "name") else str(new_state)
        log.warning("kafka circuit breaker %s -> %s", getattr(old_state, "name", old_state), name)
        self.on_state(name)


class Publisher:
    def __init__(self, cfg: Config, on_acked: Callable[[list[OutboxEvent]], None],
                 on_breaker_state: Callable[[str], None] = lambda s: None,
                 on_latency: Callable[[OutboxEvent, float], None] | None = None) -> None:
        self.cfg = cfg
        self.on_acked = on_acked
        self.on_latency = on_latency
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=cfg.breaker.fail_max, reset_timeout=cfg.breaker.reset_timeout_seconds,
            exclude=[lambda e: not isinstance(e, TransientPublishError)],
            listeners=[_BreakerListener(on_breaker_state)], name="kafka")
        self._known_topics: set[str] = set()
        self._errors: list[KafkaError] = []
        self.producer = self._make_producer()
        self.admin = None

    def _make_producer(self) -> Producer:
        return Producer(producer_config(self.cfg, error_cb=self._errors.append))

    def rebuild(self) -> None:
        """After a fatal error: collect what can be collected, then start a new producer session."""
        try:
            self.producer.flush(5)
        except KafkaException:
            pass
        self.producer = self._make_producer()

    @property
    def breaker_state(self) -> str:
        return self.breaker.current_state

    def publish(self, events: Sequence[OutboxEvent],
                should_abort: Callable[[], bool] = lambda: False) -> PublishOutcome:
        """Raises pybreaker.CircuitBreakerError while the breaker is open."""
        return self.breaker.call(self._publish, events, should_abort)

    def _publish(self, events: Sequence[OutboxEvent], should_abort: Callable[[], bool]) -> PublishOutcome:
        outcome = PublishOutcome()
        if not events:
            return outcome
        if self.cfg.kafka.create_topics:
            self._ensure_topics({e.topic for e in events})
        reports: list[tuple[OutboxEvent, KafkaError | None, float]] = []
        sent_at = time.monotonic()

        def report(event: OutboxEvent):
            def cb(err, msg):  # runs inside poll(): record only
                reports.append((event, err, time.monotonic()))
            return cb

        transient: list[str] = []
        pending = 0
        taken = 0
        for i, event in enumerate(events):
            while True:
                try:
                    self.producer.produce(event.topic, key=event.key, value=event.payload,
                                          headers=event.kafka_headers(), on_delivery=report(event))
                    pending += 1
                    break
                except BufferError:
                    self._poll(0.05)  # local queue full: let reports drain
                    taken = self._take(reports, taken, outcome, transient, sent_at)
                except KafkaException as exc:
                    err = exc.args[0]
                    if err.fatal():
                        raise FatalProducerError(err.str()) from exc
                    outcome.failed.append((event, err.name(), err.str()))
                    break
            if i % 100 == 99:  # keep reports flowing: a crash re-publishes only unmarked acks
                self._poll(0)
                taken = self._take(reports, taken, outcome, transient, sent_at)
        deadline = time.monotonic() + self.cfg.kafka.delivery_timeout_seconds + 10
        while taken < pending:
            # flush(), unlike poll(), sends the queued tail at once instead of after linger.ms:
            # the window is complete, nothing more is coming to batch with it.
            self._poll(0.05, flush=True)
            taken = self._take(reports, taken, outcome, transient, sent_at)
            if taken < pending and should_abort():
                raise PublishAborted(f"{pending - taken} delivery reports outstanding")
            if time.monotonic() > deadline:
                # librdkafka promises a report per message within message.timeout.ms; if not, treat
                # the rest as unknown and re-read the window (dedup skips what did get through).
                raise TransientPublishError(f"{pending - taken} delivery reports missing after the delivery timeout")
        if transient:
            raise TransientPublishError(f"{len(transient)} of {len(events)} records not acknowledged: {transient[0]}")
        return outcome

    def _poll(self, timeout: float, flush: bool = False) -> None:
        try:
            if flush:
                self.producer.flush(timeout)
            else:
                self.producer.poll(timeout)
        except KafkaException as exc:
            err = exc.args[0]
            if err.fatal():
                raise FatalProducerError(err.str()) from exc
            raise

    def _take(self, reports, taken: int, outcome: PublishOutcome, transient: list[str], sent_at: float) -> int:
        acked = []
        for event, err, at in reports[taken:]:
            if err is None:
                acked.append(event)
                if self.on_latency and len(acked) % LATENCY_SAMPLE == 1:
                    self.on_latency(event, at - sent_at)
            elif err.fatal():
                raise FatalProducerError(err.str())
            elif err.code() in PERMANENT:
                outcome.failed.append((event, err.name(), err.str()))
            else:
                transient.append(f"{err.name()}: {err.str()}")
        if acked:
            outcome.delivered.extend(acked)
            self.on_acked(acked)  # mark dedup keys per poll batch, not per window
        return len(reports)

    def _ensure_topics(self, topics: set[str]) -> None:
        missing = topics - self._known_topics
        if not missing:
            return
        from confluent_kafka.admin import AdminClient, NewTopic

        if self.admin is None:
            self.admin = AdminClient({"bootstrap.servers": self.cfg.kafka.bootstrap_servers,
                                      **{k: v for k, v in self.cfg.kafka.producer.items()
                                         if k.startswith(("security.", "sasl.", "ssl."))}})
        try:
            existing = set(self.admin.list_topics(timeout=10).topics)
        except KafkaException as exc:
            raise TransientPublishError(f"cannot list topics: {exc.args[0].str()}") from exc
        to_create = missing - existing
        if to_create:
            futures = self.admin.create_topics([
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

    def close(self, timeout: float = 10.0) -> int:
        """Flush; returns the number of records still queued."""
        try:
            return self.producer.flush(timeout)
        except KafkaException:
            return len(self.producer)

"""Dead-letter statistics and auto-recovery in the supervisor (DESIGN §4b, §9).

A thread of the supervisor (never the workers' hot path) does two things:
- every STATS_INTERVAL_S: counts dead letters per table, status and error class (the last 7 days),
  for the gauges and for `/dlq` (read-only JSON on the metrics port);
- with `[dlq] auto_replay = true`, every `replay_interval_seconds`: replays the retryable dead
  letters of each table (relay.dlqreplay, actor `relay-auto@<replica>`), when
  1. `may_replay()` says this replica is the one (the owner of slot 0 once replicas share slots;
     until then every replica is the only one),
  2. Kafka answers a metadata request, and
  3. the round's first dead letter, produced alone, is acknowledged (the probe produce); if it
     is not, the round stops there and touches nothing else.
  The round's producer has the same circuit breaker as a worker's; an open breaker ends the round.

Retryable: a refusal that an operator's fix of Kafka clears without touching the record (unknown
topic, authorization, policy), a record too big for its topic only once the topic's limit has
grown past it, and events parked behind one of those. Mapping poison and other record-level
refusals wait for an operator. A retryable one whose attempts reach `max_attempts` becomes
`failed` and is left to an operator too (`relay dlq replay --status failed`).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from relay.config import Config
from relay.deadletters import PARKED
from relay.dlqstore import DeadLetter

log = logging.getLogger(__name__)

STATS_INTERVAL_S = 30.0
STATS_DAYS = 7
# Kafka's refusals that a change on the Kafka side fixes, record unchanged.
RETRYABLE = frozenset({"UNKNOWN_TOPIC_OR_PART", "_UNKNOWN_TOPIC", "_UNKNOWN_PARTITION", "TOPIC_AUTHORIZATION_FAILED",
                       "POLICY_VIOLATION", "_NO_REPORT", PARKED})
TOO_LARGE = frozenset({"MSG_SIZE_TOO_LARGE", "_MSG_SIZE_TOO_LARGE", "RECORD_LIST_TOO_LARGE"})
RECORD_OVERHEAD = 128  # record framing and batch header, bytes: a record must fit its topic with this to spare


def record_size(d: DeadLetter) -> int:
    return (len(d.key or b"") + len(d.payload or b"") + sum(len(k) + len(v) for k, v in d.headers.items())
            + RECORD_OVERHEAD)


def retryable(d: DeadLetter, topic_limit: int | None) -> bool:
    """May auto-recovery try this dead letter now? `topic_limit`: its topic's max.message.bytes
    as Kafka reports it now (None: unknown)."""
    if d.status not in ("pending", "parked"):
        return False
    cls = d.error_class or ""
    if cls in RETRYABLE:
        return True
    if cls in TOO_LARGE:
        return topic_limit is not None and record_size(d) <= topic_limit
    return False  # mapping poison, INVALID_RECORD, …: an operator decides


def due(now: float, last: float | None, interval: float) -> bool:
    return last is None or now - last >= interval


class DlqMonitor:
    def __init__(self, cfg: Config, session, may_replay: Callable[[], bool]) -> None:
        self.cfg = cfg
        self.session = session
        self.may_replay = may_replay
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.snapshot: dict = {"auto_replay": cfg.dlq.auto_replay, "stats": None, "last_round": None}
        self._thread = threading.Thread(target=self._loop, name="dlq", daemon=True)
        self._gauge_keys: set[tuple] = set()
        self._limits: dict[str, int | None] = {}
        self._admin_client = None

    def start(self) -> DlqMonitor:
        from relay.metrics import DlqMetrics

        self.metrics = DlqMetrics()
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()

    def dlq(self) -> dict:
        with self.lock:
            return dict(self.snapshot)

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> None:
        last_stats: float | None = None
        last_round: float | None = None
        while not self.stop_event.is_set():
            now = time.monotonic()
            try:
                if self.cfg.dlq.auto_replay and due(now, last_round, self.cfg.dlq.replay_interval_seconds):
                    last_round = now
                    self.round()
                    last_stats = None  # show the round's effect at once
                if due(time.monotonic(), last_stats, STATS_INTERVAL_S):
                    last_stats = time.monotonic()
                    self.stats()
            except Exception:  # noqa: BLE001 - the supervisor must outlive any dead-letter trouble
                log.exception("dead-letter monitor")
            self.stop_event.wait(1.0)

    def stats(self) -> None:
        from relay.commands.dlq import dlq_stats

        stats = dlq_stats(self.session, self.cfg.scylla.relay_keyspace, [t.name for t in self.cfg.tables],
                          STATS_DAYS)
        keys = set()
        pending = dict.fromkeys((t.name for t in self.cfg.tables), 0)
        for (table, status, cls), n in stats.counts.items():
            self.metrics.letters.labels(table, status, cls).set(n)
            keys.add((table, status, cls))
            if status == "pending":
                pending[table] = pending.get(table, 0) + n
        for table, n in pending.items():
            self.metrics.pending.labels(table).set(n)
        for gone in self._gauge_keys - keys:
            self.metrics.letters.labels(*gone).set(0)
        self._gauge_keys = keys
        for name, t in stats.tables.items():
            age = (stats.now - t.oldest_pending).total_seconds() if t.oldest_pending else 0.0
            self.metrics.oldest_pending_age.labels(name).set(max(age, 0.0))
        with self.lock:
            self.snapshot = {**self.snapshot, "stats": stats.to_dict()}

    def round(self) -> dict:
        """One auto-recovery round over every table; returns (and publishes in /dlq) what it did."""
        from relay.dlqreplay import Replayer, Selection

        started = datetime.now(UTC)
        report: dict = {"started_at": started.isoformat(), "tables": {}}
        if not self.may_replay():
            report["skipped"] = "another replica replays dead letters"
        elif not self._kafka_answers():
            report["skipped"] = "kafka does not answer"
        else:
            for t in self.cfg.tables:
                replayer = Replayer(self.cfg, self.session, f"relay-auto@{self.cfg.replica_id}", days=STATS_DAYS,
                                    auto=True, should_stop=self.stop_event.is_set)
                replayer.probe_first = True
                summary = replayer.replay(Selection(t.name), eligible=self._eligible)
                for cls, n in summary.by_class.items():
                    self.metrics.replayed.labels(t.name, cls).inc(n)
                for cls, n in summary.failed_by_class.items():
                    self.metrics.replay_failed.labels(t.name, cls).inc(n)
                report["tables"][t.name] = summary.to_dict()
                if summary.replayed or summary.failed:
                    log.info("%s: auto-replay of dead letters: %s", t.name, summary.line())
                if summary.stopped:
                    break
        self._limits.clear()  # learned again next round: an operator may raise a limit meanwhile
        with self.lock:
            self.snapshot = {**self.snapshot, "last_round": report}
        return report

    def _eligible(self, d: DeadLetter) -> bool:
        limit = None
        if (d.error_class or "") in TOO_LARGE and d.topic:
            limit = self._topic_limit(d.topic)
        return retryable(d, limit)

    def _admin(self):
        from confluent_kafka.admin import AdminClient

        from relay import connect

        if self._admin_client is None:
            self._admin_client = AdminClient(connect.kafka_client_base(self.cfg))
        return self._admin_client

    def _kafka_answers(self) -> bool:
        from relay.kafkameta import cluster_answers

        try:
            cluster_answers(self._admin(), 5)
            return True
        except Exception as exc:  # noqa: BLE001 - any failure means: not now
            log.info("auto-replay waits: kafka does not answer (%s)", str(exc)[:200])
            return False

    def _topic_limit(self, topic: str) -> int | None:
        if topic not in self._limits:
            from confluent_kafka.admin import ConfigResource, ResourceType

            try:
                res = ConfigResource(ResourceType.TOPIC, topic)
                entry = self._admin().describe_configs([res], request_timeout=10)[res].result(timeout=15) \
                    .get("max.message.bytes")
                self._limits[topic] = int(entry.value) if entry is not None and entry.value else None
            except Exception:  # noqa: BLE001 - unknown limit: the record waits
                self._limits[topic] = None
        return self._limits[topic]

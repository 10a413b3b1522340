"""Auto-recovery of dead letters (issue 11): with `kafka.create_topics = false` and a missing topic,
relay dead-letters every event (UNKNOWN_TOPIC); once the topic exists, `[dlq] auto_replay` delivers
them all, once each and in order, without any command; /dlq and the metrics report it. Kafka not
answering stops a round before it touches anything.

The replay interval is set to 10 s here, not the default 300: the interval itself is the configured
thing under test (delivery must come within about one interval of the fix)."""
from __future__ import annotations

import json
import socket
import time

from harness import assert_delivered_in_order, consume_all
from publisher_helpers import create_topic

from relay import config as relay_config_module
from relay import connect
from relay.autoreplay import DlqMonitor, retryable
from relay.dlqstore import DeadLetter

INTERVAL = 10
NO_AUTO_CREATE = {"RELAY_KAFKA__PRODUCER__ALLOW_AUTO_CREATE_TOPICS": "false",
                  # how long librdkafka waits for a topic to appear before failing its records (default 30 s)
                  "RELAY_KAFKA__PRODUCER__TOPIC_METADATA_PROPAGATION_MAX_MS": "2000"}


def dead_letters(cql, keyspace):
    return list(cql.execute(f"SELECT event_id, status, error_class, attempts FROM {keyspace}.dead_letters"))


def test_auto_replay_delivers_once_the_topic_exists(cql, keyspace, outbox, relay_config, relay_process,
                                                   kafka_bootstrap):
    topic = f"{keyspace}.order"
    config = relay_config(kafka={"create_topics": False},
                          dlq={"auto_replay": True, "replay_interval_seconds": INTERVAL})
    outbox.write(40, aggregates=8)
    relay = relay_process(config, env=NO_AUTO_CREATE)
    relay.wait_until(lambda: len(dead_letters(cql, keyspace)) == 40, 180, "40 dead letters")
    assert {r.error_class for r in dead_letters(cql, keyspace)} <= {"_UNKNOWN_TOPIC", "UNKNOWN_TOPIC_OR_PART"}
    relay.wait_until(lambda: (json.loads(relay.get("/dlq"))["stats"] or {}).get("total") == 40, 120,
                     "/dlq to count them")

    create_topic(kafka_bootstrap, topic)
    fixed = time.monotonic()
    relay.wait_until(lambda: {r.status for r in dead_letters(cql, keyspace)} == {"replayed"}, 180,
                     "every dead letter replayed")
    took = time.monotonic() - fixed
    assert_delivered_in_order(outbox, consume_all(kafka_bootstrap, [topic]))
    relay.wait_until(lambda: relay.metric("relay_dlq_replayed_total") == 40, 60, "the replayed counter")
    dlq = json.loads(relay.get("/dlq"))
    assert dlq["auto_replay"] is True and dlq["last_round"] is not None
    print(f"auto-replay: topic created -> 40 dead letters delivered in {took:.1f}s "
          f"(replay_interval_seconds = {INTERVAL})")


def test_no_round_while_kafka_does_not_answer(cql, keyspace, relay_config, tmp_path):
    with socket.socket() as s:  # a port nothing listens on: a Kafka that is down
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    path = relay_config(dlq={"auto_replay": True}, bootstrap=dead)
    cfg = relay_config_module.load(path)
    session = connect.cql_session(cfg)
    try:
        cql.execute(f"INSERT INTO {keyspace}.dead_letters (source_table, day, cdc_time, stream_id, batch_seq_no, "
                    f"event_id, aggregate_id, topic, payload, error_class, status, attempts) VALUES "
                    f"('{cfg.tables[0].name}', toDate(now()), now(), 0x00, 0, 'e1', 'a', 't', 0x00, "
                    f"'_UNKNOWN_TOPIC', 'pending', 1)")
        monitor = DlqMonitor(cfg, session, lambda: True)
        report = monitor.round()
        assert report["skipped"] == "kafka does not answer" and report["tables"] == {}
        [row] = dead_letters(cql, keyspace)
        assert (row.status, row.attempts) == ("pending", 1), "nothing was tried"
        assert DlqMonitor(cfg, session, lambda: False).round()["skipped"].startswith("another replica")
    finally:
        session.cluster.shutdown()


def test_what_auto_recovery_may_retry():
    def letter(cls: str, status: str = "pending", size: int = 100) -> DeadLetter:
        return DeadLetter("k.t", None, None, b"", 0, "e", "order", "a", "c", "t", b"a", b"x" * size, {}, cls, "",
                          1, None, None, status)
    assert retryable(letter("_UNKNOWN_TOPIC"), None)
    assert retryable(letter("PARKED", "parked"), None)
    assert not retryable(letter("_UNKNOWN_TOPIC", "failed"), None), "exhausted ones wait for an operator"
    assert not retryable(letter("missing_aggregate_id"), None), "mapping poison waits for an operator"
    assert not retryable(letter("MSG_SIZE_TOO_LARGE", size=20_000), 10_000), "limit unchanged: waits"
    assert retryable(letter("MSG_SIZE_TOO_LARGE", size=20_000), 1_000_000), "limit raised: retried"
    assert not retryable(letter("MSG_SIZE_TOO_LARGE", size=20_000), None)

"""Kafka and Redis outages, for real: the services are stopped and started with the stack script.

These stop shared services, so they run in their own serial pytest phase (`-m outage`, see the
Makefile); the parallel phase excludes them."""
from __future__ import annotations

import signal
import subprocess
import threading
import time

import pytest
from harness import REPO, Outbox, RelayProcess, assert_delivered_in_order, consume_all, write_config

pytestmark = pytest.mark.outage


def stack(action: str, service: str) -> None:
    res = subprocess.run([str(REPO / "deploy" / "local" / "stack"), action, service], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.fixture
def restore_services():
    yield
    stack("up", "kafka")
    stack("up", "redis")


@pytest.fixture
def outbox(cql, keyspace):
    return Outbox.create(cql, keyspace)


def _config(tmp_path, keyspace, kafka, redis_url, **kw):
    from relay import config as cfgmod
    from relay import connect, schema

    path = write_config(tmp_path / "relay.toml", keyspace, kafka, redis_url, **kw)
    session = connect.cql_session(cfgmod.load(path))
    schema.apply(session, cfgmod.load(path))
    session.cluster.shutdown()
    return path


class Writer(threading.Thread):
    """Writes a few events per tick until stopped, like an application would."""

    def __init__(self, outbox: Outbox) -> None:
        super().__init__(daemon=True)
        self.outbox = outbox
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            self.outbox.write(10, aggregates=10)
            time.sleep(0.1)

    def stop(self) -> None:
        self.halt.set()
        self.join()


def _drain(relay: RelayProcess, outbox: Outbox, kafka: str, keyspace: str, timeout: float = 120):
    expected = outbox.expected_ids()
    relay.wait_until(lambda: expected <= set(consume_all(kafka, [f"{keyspace}.order"], timeout=20).ids), timeout,
                     "every written event in Kafka")


def test_kafka_outage_opens_the_breaker_and_loses_nothing(tmp_path, keyspace, outbox, kafka_bootstrap, redis_url,
                                                          cql, restore_services):
    path = _config(tmp_path, keyspace, kafka_bootstrap, redis_url, workers=1,
                   kafka_extra="delivery_timeout_seconds = 3",
                   extra="[breaker]\nfail_max = 2\nreset_timeout_seconds = 2\n")
    relay = RelayProcess(path).start()
    writer = Writer(outbox)
    writer.start()
    try:
        relay.wait_until(lambda: relay.metric("relay_events_published_total") > 0, 60, "first events")
        stack("down", "kafka")
        time.sleep(20)
        relay.wait_until(lambda: relay.metric("relay_breaker_transitions_total", state="open") >= 1, 30,
                         "the breaker to open")
        stack("up", "kafka")
        time.sleep(3)
    finally:
        writer.stop()
    _drain(relay, outbox, kafka_bootstrap, keyspace)
    relay.wait_until(lambda: relay.metric("relay_breaker_state") == 0, 30, "the breaker to close again")
    relay.signal(signal.SIGTERM)
    assert relay.wait(60) == 0
    delivered = consume_all(kafka_bootstrap, [f"{keyspace}.order"])
    # Records that timed out in flight may have been written anyway: duplicates are allowed, loss is not.
    assert_delivered_in_order(outbox, delivered, allow_duplicates=True)
    assert cql.execute(f"SELECT count(*) FROM {keyspace}.dead_letters").one()[0] == 0


def test_redis_outage_fail_open_keeps_publishing(tmp_path, keyspace, outbox, kafka_bootstrap, redis_url,
                                                 restore_services):
    path = _config(tmp_path, keyspace, kafka_bootstrap, redis_url, workers=1)
    relay = RelayProcess(path).start()
    relay.wait_until(lambda: relay.status().get("ready"), 60, "relay ready")
    stack("down", "redis")
    outbox.write(200, aggregates=20)
    relay.wait_until(lambda: relay.metric("relay_events_published_total") >= 200, 60, "events published")
    assert relay.metric("relay_dedup_unavailable_total") >= 200, "publishing without dedup is counted"
    stack("up", "redis")
    relay.signal(signal.SIGTERM)
    assert relay.wait(60) == 0
    assert_delivered_in_order(outbox, consume_all(kafka_bootstrap, [f"{keyspace}.order"]))


def test_redis_outage_pause_mode_waits(tmp_path, keyspace, outbox, kafka_bootstrap, redis_url, restore_services):
    path = _config(tmp_path, keyspace, kafka_bootstrap, redis_url, workers=1, redis_extra='on_outage = "pause"')
    relay = RelayProcess(path).start()
    relay.wait_until(lambda: relay.status().get("ready"), 60, "relay ready")
    stack("down", "redis")
    outbox.write(100, aggregates=20)
    time.sleep(6)
    assert relay.metric("relay_events_published_total") == 0, "pause mode must not publish without Redis"
    stack("up", "redis")
    relay.wait_until(lambda: relay.metric("relay_events_published_total") >= 100, 60, "events after Redis returns")
    relay.signal(signal.SIGTERM)
    assert relay.wait(60) == 0
    assert_delivered_in_order(outbox, consume_all(kafka_bootstrap, [f"{keyspace}.order"]))

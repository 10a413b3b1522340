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
    for service in ("cassandra", "kafka", "redis"):
        stack("up", service)


@pytest.fixture
def outbox(cql, keyspace):
    return Outbox.create(cql, keyspace)


def _config(tmp_path, keyspace, kafka, redis_url, **kw):
    """The harness's quick settings, but the default confidence window: outages load this small
    machine, and writes may then take more than a second to show up in the CDC log, as on a busy
    cluster; the default covers that."""
    from relay import config as cfgmod
    from relay import connect, schema

    kw["relay"] = {"confidence_seconds": 10, **kw.get("relay", {})}

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


def test_kafka_down_90s_with_default_settings(tmp_path, keyspace, outbox, kafka_bootstrap, redis_url, cql,
                                              restore_services):
    """Default timeouts (delivery, heartbeat, breaker): the outage ends in "breaker open, reading
    paused, worker alive" - no kill loop, nothing lost, nothing published twice."""
    path = _config(tmp_path, keyspace, kafka_bootstrap, redis_url, workers=1)
    relay = RelayProcess(path).start()
    writer = Writer(outbox)
    writer.start()
    try:
        relay.wait_until(lambda: relay.metric("relay_events_published_total") > 0, 60, "first events")
        stack("down", "kafka")
        down_at = time.monotonic()
        relay.wait_until(lambda: relay.metric("relay_breaker_transitions_total", state="open") >= 1, 85,
                         "the breaker to open")
        time.sleep(max(0.0, 90 - (time.monotonic() - down_at)))  # the outage itself lasts 90 s
        stack("up", "kafka")
    finally:
        writer.stop()
    _drain(relay, outbox, kafka_bootstrap, keyspace)
    relay.wait_until(lambda: relay.metric("relay_breaker_state") == 0, 60, "the breaker to close again")
    restarts = relay.metric("relay_worker_restarts_total")
    relay.signal(signal.SIGTERM)
    assert relay.wait(60) == 0
    assert restarts == 0, "a worker was killed during the outage:\n" + relay.output()[-3000:]
    assert "killing it" not in relay.output()
    assert_delivered_in_order(outbox, consume_all(kafka_bootstrap, [f"{keyspace}.order"]))
    assert cql.execute(f"SELECT count(*) FROM {keyspace}.dead_letters").one()[0] == 0
    print(f"kafka down 90 s: {len(outbox.expected_ids())} events, 0 lost, 0 duplicates, {restarts:.0f} restarts")


def _cql_answers(cql) -> bool:
    try:
        cql.execute("SELECT release_version FROM system.local")
        return True
    except Exception:  # noqa: BLE001 - not yet
        return False


def test_cassandra_down_60s_relay_waits_and_resumes(tmp_path, keyspace, outbox, kafka_bootstrap, redis_url, cql,
                                                   restore_services):
    path = _config(tmp_path, keyspace, kafka_bootstrap, redis_url, workers=2)
    relay = RelayProcess(path).start()
    relay.wait_until(lambda: relay.status().get("ready"), 60, "relay ready")
    outbox.write(2_000, aggregates=200)
    relay.wait_until(lambda: relay.metric("relay_events_published_total") > 0, 60, "first events")
    stack("down", "cassandra")  # mid-backlog: windows, checkpoints and discovery all fail now
    time.sleep(60)  # the outage itself
    stack("up", "cassandra")
    relay.wait_until(lambda: _cql_answers(cql), 60, "the test's own session to reconnect")
    outbox.write(500, aggregates=200)
    _drain(relay, outbox, kafka_bootstrap, keyspace, timeout=240)
    restarts = relay.metric("relay_worker_restarts_total")
    relay.signal(signal.SIGTERM)
    assert relay.wait(60) == 0, relay.output()[-3000:]
    assert restarts == 0, "a worker was killed during the outage:\n" + relay.output()[-3000:]
    assert_delivered_in_order(outbox, consume_all(kafka_bootstrap, [f"{keyspace}.order"]))
    print(f"cassandra down 60 s: {len(outbox.expected_ids())} events, 0 lost, {restarts:.0f} restarts")


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


def test_redis_down_mid_window_in_pause_mode(tmp_path, keyspace, outbox, kafka_bootstrap, redis_url,
                                             restore_services):
    """Redis stops while windows publish: acknowledged events whose dedup marks could not be written
    are kept until Redis takes them, so nothing is published twice once it returns."""
    outbox.write(6_000, aggregates=300)
    path = _config(tmp_path, keyspace, kafka_bootstrap, redis_url, workers=2, redis_extra='on_outage = "pause"',
                   relay={"window_seconds": 0.5})
    relay = RelayProcess(path).start()
    relay.wait_until(lambda: relay.metric("relay_events_published_total") > 0, 60, "first events")
    stack("down", "redis")
    published = consume_all(kafka_bootstrap, [f"{keyspace}.order"])
    assert len(published.records) < 6_000, "Redis went down mid-backlog"
    # While Redis is down relay tries it (retries counted) and publishes nothing more.
    relay.wait_until(lambda: "redis unavailable and on_outage=pause" in relay.output(), 60, "relay to wait for Redis")
    during = len(consume_all(kafka_bootstrap, [f"{keyspace}.order"]).records)
    relay.wait_until(lambda: relay.output().count("redis unavailable and on_outage=pause") >= 5, 60,
                     "relay to retry Redis")
    assert len(consume_all(kafka_bootstrap, [f"{keyspace}.order"]).records) == during, "published without Redis"
    stack("up", "redis")
    _drain(relay, outbox, kafka_bootstrap, keyspace)
    relay.signal(signal.SIGTERM)
    assert relay.wait(60) == 0
    assert_delivered_in_order(outbox, consume_all(kafka_bootstrap, [f"{keyspace}.order"]))

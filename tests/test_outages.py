"""Kafka and Redis outages, for real: the services are stopped and started with the stack script.

These stop shared services: marked `outage`, each holds the stack's lock alone (conftest.stack_lock),
and `make test` runs them in its second, serial phase."""
from __future__ import annotations

import signal
import subprocess
import time

import pytest
from conftest import REPO
from harness import Outbox, RelayProcess, Writer, assert_delivered_in_order, consume_all, wait_for
from test_replicas import assert_nothing_lost_first_copies_in_order, balanced, drained, three_publishing, writer_for

pytestmark = pytest.mark.outage


def stack(action: str, service: str) -> None:
    """deploy/local/stack for one service of the stack the tests use (RELAY_STACK_* choose it)."""
    res = subprocess.run([str(REPO / "deploy" / "local" / "stack"), action, service], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr


def hold_outage(seconds: float, since: float) -> None:
    """The outage itself: a service stays down this long (the scenario's length, not a wait for relay)."""
    time.sleep(max(0.0, seconds - (time.monotonic() - since)))


@pytest.fixture
def restore_services():
    yield
    for service in ("cassandra", "kafka", "redis"):
        stack("up", service)


@pytest.fixture
def config(relay_config):
    """The harness's quick settings, but the default confidence window: outages load this small
    machine, and writes may then take more than a second to show up in the CDC log, as on a busy
    cluster; the default covers that."""
    def make(**kw):
        return relay_config(**{**kw, "relay": {"confidence_seconds": 10, **kw.get("relay", {})}})
    return make


def _drain(relay: RelayProcess, outbox: Outbox, kafka: str, keyspace: str, timeout: float = 120):
    expected = outbox.expected_ids()
    relay.wait_until(lambda: expected <= set(consume_all(kafka, [f"{keyspace}.order"], timeout=20).ids), timeout,
                     "every written event in Kafka")


def test_kafka_down_90s_with_default_settings(keyspace, config, relay_process, outbox, kafka_bootstrap, cql,
                                              restore_services):
    """Default timeouts (delivery, heartbeat, breaker): the outage ends in "breaker open, reading
    paused, worker alive" - no kill loop, nothing lost, nothing published twice."""
    relay = relay_process(config(workers=1))
    writer = Writer(outbox, per_round=10, aggregates=10)
    writer.start()
    try:
        relay.wait_until(lambda: relay.metric("relay_events_published_total") > 0, 60, "first events")
        stack("down", "kafka")
        down_at = time.monotonic()
        # Publishing pauses: the breaker opens, or - Kafka's group coordinator being down too, so the
        # replica cannot prove its lease (DESIGN §5b) - the workers fence themselves first.
        relay.wait_until(lambda: relay.metric("relay_breaker_transitions_total", state="open") >= 1
                         or relay.metric("relay_fence_events_total") >= 1, 85, "publishing to pause")
        hold_outage(90, since=down_at)
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


def test_kafka_down_and_back_while_three_replicas_run(keyspace, config, relay_process, big_outbox,
                                                      kafka_bootstrap, restore_services):
    """Default [leases] and timeouts, Kafka stopped for 60 s under three replicas: the group
    coordinator goes with it, so no replica can prove its session and every worker stops publishing
    (fenced, or its breaker open); the sessions expire meanwhile. When Kafka is back the three
    rejoin and share the slots again, and nothing is lost. Records a producer had in flight when the
    broker went away may land late beside the next owner's copies; first deliveries keep their order."""
    cfg = config(workers=1)
    writer = writer_for(big_outbox)
    writer.start()
    try:
        reps = three_publishing(relay_process, cfg, "k")
        stack("down", "kafka")
        down_at = time.monotonic()
        for r in reps:
            r.wait_until(lambda r=r: r.metric("relay_fence_events_total") >= 1
                         or r.metric("relay_breaker_transitions_total", state="open") >= 1, 85,
                         "every replica to stop publishing")
        hold_outage(60, since=down_at)
        stack("up", "kafka")
        up_at = time.monotonic()
        wait_for(lambda: balanced(reps), 180, "the three sharing the slots again")
        print(f"kafka back: the three balanced again after {time.monotonic() - up_at:.1f}s")
        for r in reps:
            published = r.metric("relay_events_published_total")
            r.wait_until(lambda r=r, n=published: r.metric("relay_events_published_total") > n, 120,
                         "every replica publishing again")
        writer.wait_rounds(20)
    finally:
        writer.stop()
    drained(reps[0], big_outbox, kafka_bootstrap, keyspace, timeout=240)
    delivered = consume_all(kafka_bootstrap, [f"{keyspace}.order"])
    assert_nothing_lost_first_copies_in_order(big_outbox, delivered)
    for r in reps:
        assert r.metric("relay_worker_restarts_total") == 0, "a worker was killed during the outage"
        r.signal(signal.SIGTERM)
    for r in reps:
        assert r.wait(60) == 0, r.output()[-3000:]
    print(f"kafka down 60 s under 3 replicas: {len(big_outbox.expected_ids())} events, 0 lost, "
          f"{delivered.duplicates()} duplicates")


def _cql_answers(cql) -> bool:
    try:
        cql.execute("SELECT release_version FROM system.local")
        return True
    except Exception:  # noqa: BLE001 - not yet
        return False


def test_cassandra_down_60s_relay_waits_and_resumes(keyspace, config, relay_process, outbox, kafka_bootstrap, cql,
                                                   restore_services):
    relay = relay_process(config(workers=2))
    relay.wait_until(lambda: relay.status().get("ready"), 60, "relay ready")
    outbox.write(2_000, aggregates=200)
    relay.wait_until(lambda: relay.metric("relay_events_published_total") > 0, 60, "first events")
    stack("down", "cassandra")  # mid-backlog: windows, checkpoints and discovery all fail now
    hold_outage(60, since=time.monotonic())
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


def test_redis_outage_fail_open_keeps_publishing(keyspace, config, relay_process, outbox, kafka_bootstrap,
                                                 restore_services):
    relay = relay_process(config(workers=1))
    relay.wait_until(lambda: relay.status().get("ready"), 60, "relay ready")
    stack("down", "redis")
    outbox.write(200, aggregates=20)
    _drain(relay, outbox, kafka_bootstrap, keyspace, timeout=60)
    assert relay.metric("relay_dedup_unavailable_total") >= 200, "publishing without dedup is counted"
    stack("up", "redis")
    relay.signal(signal.SIGTERM)
    assert relay.wait(60) == 0
    assert_delivered_in_order(outbox, consume_all(kafka_bootstrap, [f"{keyspace}.order"]))


def test_redis_down_mid_window_in_pause_mode(keyspace, config, relay_process, outbox, kafka_bootstrap,
                                             restore_services):
    """Redis stops while windows publish: acknowledged events whose dedup marks could not be written
    are kept until Redis takes them, so nothing is published twice once it returns."""
    outbox.write(6_000, aggregates=300)
    relay = relay_process(config(workers=2, redis={"on_outage": "pause"}, relay={"window_seconds": 0.5}))
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

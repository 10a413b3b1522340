"""The local stack answers real requests: a Kafka round trip, an LWT, Redis commands."""
from __future__ import annotations

import uuid

from confluent_kafka import Consumer, Producer
from harness import wait_for


def test_kafka_produce_and_consume(kafka_bootstrap, topic):
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    reports = []
    payload = uuid.uuid4().bytes
    producer.produce(topic, key=b"k", value=payload, on_delivery=lambda err, msg: reports.append((err, msg)))
    assert producer.flush(30) == 0
    assert len(reports) == 1 and reports[0][0] is None, reports

    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": topic,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    got = []
    try:
        def consumed() -> bool:
            msg = consumer.poll(1.0)
            if msg is not None and msg.error() is None:
                got.append(msg)
            return bool(got)
        wait_for(consumed, 60, "the record")
        assert got[0].value() == payload and got[0].key() == b"k"
    finally:
        consumer.close()


def test_cassandra_lwt(cql, keyspace):
    cql.execute(f"CREATE TABLE {keyspace}.leases (name text PRIMARY KEY, owner text, epoch bigint)")
    first = cql.execute(f"INSERT INTO {keyspace}.leases (name, owner, epoch) VALUES ('x', 'a', 1) IF NOT EXISTS")
    assert first.one().applied
    second = cql.execute(f"INSERT INTO {keyspace}.leases (name, owner, epoch) VALUES ('x', 'b', 1) IF NOT EXISTS")
    row = second.one()
    assert not row.applied and row.owner == "a"
    cas = cql.execute(f"UPDATE {keyspace}.leases SET owner = 'b', epoch = 2 WHERE name = 'x' IF owner = 'a'")
    assert cas.one().applied
    assert cql.execute(f"SELECT owner, epoch FROM {keyspace}.leases WHERE name = 'x'").one() == ("b", 2)


def test_redis_commands(redis_client):
    key = f"relay-test:{uuid.uuid4().hex}"
    assert redis_client.ping()
    assert redis_client.set(key, 1, ex=60, nx=True)
    assert redis_client.set(key, 2, ex=60, nx=True) is None
    assert 0 < redis_client.ttl(key) <= 60
    redis_client.delete(key)

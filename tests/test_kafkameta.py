"""relay.kafkameta on the stack's real broker, which auto-creates topics (auto.create.topics.enable):
asking about a topic by name must never create it, and a Kafka that is down must be an error, not
"no such topic" (the leases check would then try to create the topic)."""
from __future__ import annotations

import logging
import time

import pytest
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType
from harness import ReservedPort, wait_for

from relay.kafkameta import cluster_answers, topic_partitions


@pytest.fixture
def admin(kafka_bootstrap):
    return AdminClient({"bootstrap.servers": kafka_bootstrap})


def exists(admin, name: str) -> bool:
    return name in admin.list_topics(timeout=10).topics


def test_asking_about_a_missing_topic_does_not_create_it(admin, topic, kafka_bootstrap):
    broker = admin.list_topics(timeout=10).brokers
    resource = ConfigResource(ResourceType.BROKER, str(next(iter(broker))))
    auto = admin.describe_configs([resource])[resource].result(30)["auto.create.topics.enable"].value
    assert auto == "true", "the broker must auto-create for this test to mean anything"
    # The hazard is real here: a metadata request naming a topic creates it.
    named = f"{topic}.named"
    Producer({"bootstrap.servers": kafka_bootstrap}).list_topics(named, timeout=10)
    deadline = time.monotonic() + 10
    while not exists(admin, named) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert exists(admin, named), "a metadata request naming a topic did not create it: the control failed"

    missing = f"{topic}.described"
    assert topic_partitions(admin, [missing], 10) == {missing: None}
    time.sleep(1)
    assert not exists(admin, missing)


def test_partition_counts_of_existing_and_missing_topics(admin, topic):
    five, none = f"{topic}.five", f"{topic}.none"
    admin.create_topics([NewTopic(five, num_partitions=5, replication_factor=-1)])[five].result(30)
    # Kafka accepts the creation before every broker's metadata has the topic (CI saw it missing once).
    wait_for(lambda: topic_partitions(admin, [five], 10)[five] is not None, 30, f"{five} described")
    assert topic_partitions(admin, [five, none], 10) == {five: 5, none: None}
    assert topic_partitions(admin, [], 10) == {}
    cluster_answers(admin, 10)


def test_a_kafka_that_is_down_is_an_error_not_a_missing_topic(topic):
    port = ReservedPort()
    logging.getLogger("relay.kafka").setLevel(logging.CRITICAL)
    down = AdminClient({"bootstrap.servers": f"127.0.0.1:{port.port}", "logger": logging.getLogger("relay.kafka")})
    try:
        with pytest.raises(KafkaException):
            topic_partitions(down, [topic], 1)
        with pytest.raises(KafkaException):
            cluster_answers(down, 1)
    finally:
        port.close()


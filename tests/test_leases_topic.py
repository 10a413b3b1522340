"""The leases topic (DESIGN §5b) on the real Kafka: created with one partition per slot, found again,
and refused when its partition count differs from leases.slots (tasks of the missing slots would
never run)."""
from __future__ import annotations

import dataclasses

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from relay.config import Config, KafkaConfig, LeasesConfig
from relay.errors import UserError
from relay.leases import ensure_topic


def cfg_for(kafka_bootstrap: str, topic: str, slots: int) -> Config:
    return Config(kafka=KafkaConfig(bootstrap_servers=kafka_bootstrap),
                  leases=LeasesConfig(topic=topic, slots=slots), source="relay.toml")


def partitions(kafka_bootstrap: str, topic: str) -> int:
    return len(AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10).topics[topic].partitions)


def test_created_with_one_partition_per_slot_then_found(kafka_bootstrap, topic):
    cfg = cfg_for(kafka_bootstrap, f"{topic}.slots", 8)
    assert "created" in ensure_topic(cfg)
    assert partitions(kafka_bootstrap, f"{topic}.slots") == 8
    assert "exists" in ensure_topic(cfg)


def test_a_topic_of_another_size_is_a_one_line_error(kafka_bootstrap, topic):
    name = f"{topic}.slots"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(name, num_partitions=3, replication_factor=-1)])[name].result(30)
    cfg = cfg_for(kafka_bootstrap, name, 64)
    with pytest.raises(UserError) as info:
        ensure_topic(cfg)
    msg = str(info.value)
    assert "leases.slots: 64" in msg and "has 3 partitions" in msg and "\n" not in msg
    assert "exists" in ensure_topic(dataclasses.replace(cfg, leases=LeasesConfig(topic=name, slots=3)))

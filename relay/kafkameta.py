"""What Kafka says about topics, asked without side effects and without listing the whole cluster.

A metadata request that names a topic makes a broker with `auto.create.topics.enable` (Kafka's
default) create it with the broker's default partition count, so relay used to list every topic
instead: on a cluster of thousands of topics that is megabytes of metadata and a noticeable part
of a process's start (17 ms of CPU at 261 topics here). DescribeTopics names the topics and never
creates one (tests/test_kafkameta.py checks both on the stack's broker, which auto-creates).
"""
from __future__ import annotations

from collections.abc import Iterable

# Per-topic answers that mean "not there for relay": relay creates it, or fails creating it and
# says why (an authorization failure surfaces there, with the topic's name).
_ABSENT = ("UNKNOWN_TOPIC_OR_PART", "_UNKNOWN_TOPIC", "TOPIC_AUTHORIZATION_FAILED")


def topic_partitions(admin, topics: Iterable[str], timeout: float) -> dict[str, int | None]:
    """Partition count of each topic; None for one that does not exist. Raises KafkaException when
    Kafka does not answer (timeout, transport)."""
    from confluent_kafka import KafkaException, TopicCollection

    names = sorted(set(topics))
    if not names:
        return {}
    futures = admin.describe_topics(TopicCollection(names), request_timeout=timeout)
    counts: dict[str, int | None] = {}
    for name in names:
        try:
            counts[name] = len(futures[name].result(timeout=timeout + 5).partitions)
        except KafkaException as exc:
            if exc.args[0].name() not in _ABSENT:
                raise
            counts[name] = None
    return counts


def cluster_answers(admin, timeout: float) -> None:
    """Raises KafkaException unless a broker answers (DescribeCluster: brokers only, no topics)."""
    admin.describe_cluster(request_timeout=timeout).result(timeout=timeout + 5)

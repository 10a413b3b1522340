"""Building Publishers and events for the publisher tests (real Kafka; nothing here is a fake)."""
from __future__ import annotations

import collections
import os
import time
import uuid

from harness import Delivered, audit

from relay import timeuuid
from relay.config import Config, KafkaConfig
from relay.model import OutboxEvent


def config(bootstrap: str, **producer) -> Config:
    """relay's defaults (timeouts, breaker) with only the bootstrap servers and producer overrides set."""
    return Config(kafka=KafkaConfig(bootstrap_servers=bootstrap, producer=producer))


def events(topic: str, n: int, aggregates: int, oversized: set[int] = frozenset(), big: int = 20_000
           ) -> list[OutboxEvent]:
    """n events over `aggregates` keys, in per-aggregate order; the indexes in `oversized` carry an
    incompressible payload of `big` bytes."""
    out = []
    base = time.time_ns() // 1000
    seq: collections.Counter = collections.Counter()
    for i in range(n):
        agg = f"agg-{i % aggregates:04d}"
        seq[agg] += 1
        us = base + i
        payload = os.urandom(big) if i in oversized else f'{{"agg": "{agg}", "seq": {seq[agg]}}}'.encode()
        out.append(OutboxEvent(source="ks.outbox", stream_id=bytes(16), cdc_time=timeuuid.from_micros(us),
                               cdc_time_us=us, batch_seq_no=0, event_id=str(uuid.uuid4()), aggregate_type="order",
                               aggregate_id=agg, event_type="created", topic=topic, key=agg.encode(),
                               payload=payload))
    return out


def assert_in_order_once(sent: list[OutboxEvent], delivered: Delivered, expect_ids: set[str]) -> None:
    """Exactly `expect_ids` in Kafka, each once, and each aggregate's in the order they were sent."""
    assert set(delivered.ids) == expect_ids, (f"missing {len(expect_ids - set(delivered.ids))}, "
                                              f"unexpected {len(set(delivered.ids) - expect_ids)}")
    assert delivered.duplicates() == 0, f"{delivered.duplicates()} duplicates"
    written: dict[str, list[str]] = {}
    for e in sent:
        if e.event_id in expect_ids:
            written.setdefault(e.aggregate_id, []).append(e.event_id)
    problems = audit(written, delivered).problems()
    assert not problems, "; ".join(problems)


def create_topic(bootstrap: str, topic: str, partitions: int = 3, **configs: str) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, partitions, 1, config=configs)])[topic].result(30)

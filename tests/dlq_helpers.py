"""Helpers of the dead-letter lifecycle tests: a topic too small for some records, reading records
with their broker timestamps, raising a topic's limit."""
from __future__ import annotations

import json
import os
import uuid

from relay.cli import main


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def run_json(capsys, *argv: str) -> tuple[int, dict]:
    code, out, err = run_cli(capsys, *argv, "--json")
    try:
        return code, json.loads(out)
    except json.JSONDecodeError:
        raise AssertionError(f"exit {code}, not JSON: {out!r} {err[-2000:]!r}") from None


def set_topic_config(bootstrap: str, topic: str, **configs: str) -> None:
    from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

    admin = AdminClient({"bootstrap.servers": bootstrap})
    entries = [ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in configs.items()]
    for fut in admin.incremental_alter_configs([ConfigResource(ResourceType.TOPIC, topic,
                                                               incremental_configs=entries)]).values():
        fut.result(30)


def records(bootstrap: str, topic: str, timeout: float = 60.0) -> list[dict]:
    """Every record of `topic` up to its current end: headers, key, broker timestamp (ms), partition."""
    import time

    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{uuid.uuid4().hex}",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    try:
        md = c.list_topics(topic, timeout=10)
        parts = [TopicPartition(topic, p, 0) for p in md.topics[topic].partitions]
        ends = {p.partition: c.get_watermark_offsets(p, timeout=10)[1] for p in parts}
        c.assign(parts)
        left = {p for p, end in ends.items() if end > 0}
        out: list[dict] = []
        deadline = time.monotonic() + timeout
        while left and time.monotonic() < deadline:
            msg = c.poll(1.0)
            if msg is None or msg.error() is not None or msg.offset() >= ends[msg.partition()]:
                continue
            out.append({"headers": {h: v.decode() for h, v in (msg.headers() or [])}, "key": msg.key(),
                        "ts_ms": msg.timestamp()[1], "partition": msg.partition(), "offset": msg.offset()})
            if msg.offset() + 1 >= ends[msg.partition()]:
                left.discard(msg.partition())
        assert not left, f"could not read {topic} to its end"
        return out
    finally:
        c.close()


def oversize(rows: list[dict], every: int, offset: int, size: int = 20_000) -> set[str]:
    """Make every `every`-th row (from `offset`) too big for a 10,000-byte topic; returns their ids."""
    chosen = set()
    for r in rows[offset::every]:
        r["payload"] = os.urandom(size)  # incompressible: too big even with lz4
        chosen.add(str(r["id"]))
    return chosen

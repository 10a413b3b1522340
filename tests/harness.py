"""Helpers for end-to-end tests: an emulated outbox, a relay subprocess, a topic reader.

Everything here talks to the real stack; the only emulated part is Scylla's writing of
CDC log rows (relay.testing). Delivery is judged by consuming the topics.
"""
from __future__ import annotations

import collections
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from conftest import CQL_PASSWORD, CQL_USER

from relay.testing import CdcEmulator, now_micros

REPO = Path(__file__).resolve().parent.parent

OUTBOX_DDL = """CREATE TABLE {ks}.outbox (
    aggregate_id text, id timeuuid, aggregate_type text, event_type text, payload blob,
    created_at timestamp, headers map<text, text>, PRIMARY KEY ((aggregate_id), id))"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(path: Path, keyspace: str, kafka: str, redis_url: str, *, table: str = "outbox",
                 topic: str | None = None, extra: str = "", workers: int = 2, columns: str = "",
                 relay: dict | None = None, kafka_extra: str = "", redis_extra: str = "") -> Path:
    """A relay.toml for one test: relay's tables and the emulated generation tables live in
    the test's own keyspace; the topic is unique to the test. relay logs in as the stack's
    non-superuser role and keeps one replica (the stack is one node)."""

    topic = topic or f"{keyspace}.{{aggregate_type}}"
    section = {"workers": workers, "window_seconds": 2, "confidence_seconds": 1, "poll_interval_seconds": 0.2,
               "shutdown_timeout_seconds": 20, "generation_poll_seconds": 1, **(relay or {})}
    relay_lines = "\n".join(f"{k} = {v!r}" if not isinstance(v, str) else f'{k} = "{v}"' for k, v in section.items())
    path.write_text(f"""
[scylla]
contact_points = ["127.0.0.1"]
port = {os.environ.get("RELAY_STACK_CASSANDRA_PORT", "9042")}
username = "{CQL_USER}"
password = "{CQL_PASSWORD}"
consistency = "ONE"
relay_keyspace = "{keyspace}"
relay_replication = {{ class = "SimpleStrategy", replication_factor = 1 }}
cdc_metadata_keyspace = "{keyspace}"
tablets_metadata_keyspace = "{keyspace}"

[[tables]]
name = "{keyspace}.{table}"
topic = "{topic}"
{columns}

[kafka]
bootstrap_servers = "{kafka}"
topic_partitions = 3
{kafka_extra}

[redis]
url = "{redis_url}"
key_prefix = "{keyspace}:"
{redis_extra}

[relay]
{relay_lines}

[metrics]
host = "127.0.0.1"
port = {free_port()}
{extra}
""")
    return path


@dataclass
class Outbox:
    """An outbox table with emulated CDC, plus what was written to it (for checking)."""

    emulator: CdcEmulator
    table: str
    written: dict[str, list[str]] = field(default_factory=lambda: collections.defaultdict(list))  # agg -> ids
    seq: collections.Counter = field(default_factory=collections.Counter)

    @classmethod
    def create(cls, cql, keyspace: str, *, vnodes: int = 16, shards: int = 2, start_us: int | None = None) -> Outbox:
        cql.execute(OUTBOX_DDL.format(ks=keyspace))
        emu = CdcEmulator(cql, metadata_keyspace=keyspace)
        emu.create_metadata_tables()
        emu.open_generation(start=start_us if start_us is not None else now_micros() - 20_000_000,
                            vnodes=vnodes, shards=shards, seed=5)
        emu.enable_cdc(f"{keyspace}.outbox")
        return cls(emu, f"{keyspace}.outbox")

    def rows(self, n: int, aggregates: int, event_type: str = "created") -> list[dict]:
        out = []
        for i in range(n):
            agg = f"agg-{i % aggregates:05d}"
            self.seq[agg] += 1
            eid = uuid.uuid1()
            out.append({"aggregate_id": agg, "id": eid, "aggregate_type": "order", "event_type": event_type,
                        "payload": json.dumps({"agg": agg, "seq": self.seq[agg]}).encode()})
            self.written[agg].append(str(eid))
        return out

    def write(self, n: int, aggregates: int, **kw) -> None:
        """n events; per aggregate written in order (each round writes an aggregate at most once)."""
        rows = self.rows(n, aggregates, **kw)
        for start in range(0, len(rows), aggregates):
            self.emulator.write_many(self.table, rows[start:start + aggregates])

    def expected_ids(self) -> set[str]:
        return {e for ids in self.written.values() for e in ids}


class RelayProcess:
    """`python -m relay run` as a real process tree (supervisor + spawned workers)."""

    def __init__(self, config: Path, *args: str, log: Path | None = None, env: dict | None = None) -> None:
        self.config = config
        self.extra_env = env or {}
        self.args = args
        self.log = log or config.with_suffix(f".{uuid.uuid4().hex[:6]}.log")
        self.proc: subprocess.Popen | None = None
        text = config.read_text()
        self.port = int(text.split("[metrics]")[1].split("port = ")[1].split()[0])

    def start(self) -> RelayProcess:
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.extra_env)
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self._fh = open(self.log, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "relay", "run", "--config", str(self.config), *self.args],
                                     stdout=self._fh, stderr=subprocess.STDOUT, cwd=REPO, env=env,
                                     start_new_session=True)
        return self

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"relay did not exit within {timeout}s; log:\n{self.output()[-3000:]}") from None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        """Kill the whole tree we started (its own session: the supervisor's pid is the group id)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def get(self, path: str, timeout: float = 2.0) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as resp:
            return resp.read()

    def status(self) -> dict:
        return json.loads(self.get("/status"))

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of one metric (optionally filtered by labels) on /metrics."""
        total = 0.0
        for line in self.get("/metrics").decode().splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            if any(f'{k}="{v}"' not in line for k, v in labels.items()):
                continue
            total += float(line.rsplit(" ", 1)[1])
        return total

    def wait_until(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return
            except OSError:
                pass
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"relay exited ({self.proc.returncode}) while waiting for {what}:\n"
                                     f"{self.output()[-3000:]}")
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; log:\n{self.output()[-3000:]}")


@dataclass
class Delivered:
    records: list[tuple[bytes, dict[str, str], bytes]]  # key, headers, value, in per-partition offset order
    partitions: list[tuple[str, int]] = field(default_factory=list)  # (topic, partition) of each record

    @property
    def ids(self) -> collections.Counter:
        return collections.Counter(h["id"] for _, h, _ in self.records)

    def duplicates(self) -> int:
        return sum(n - 1 for n in self.ids.values())


def consume_all(bootstrap: str, topics: list[str], timeout: float = 30.0) -> Delivered:
    """Every record currently in `topics` (up to the high watermarks seen at the start)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    try:
        parts = []
        for topic in topics:
            md = consumer.list_topics(topic, timeout=10)
            if md.topics[topic].error is not None:
                continue
            parts += [TopicPartition(topic, p, 0) for p in md.topics[topic].partitions]
        ends = {(p.topic, p.partition): consumer.get_watermark_offsets(p, timeout=10)[1] for p in parts}
        consumer.assign(parts)
        remaining = {k for k, end in ends.items() if end > 0}
        by_partition: dict[tuple, list] = collections.defaultdict(list)
        deadline = time.monotonic() + timeout
        while remaining and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None or msg.error() is not None:
                continue
            k = (msg.topic(), msg.partition())
            if msg.offset() >= ends[k]:
                continue
            headers = {h: v.decode() for h, v in (msg.headers() or [])}
            by_partition[k].append((msg.key(), headers, msg.value()))
            if msg.offset() + 1 >= ends[k]:
                remaining.discard(k)
        assert not remaining, f"could not read partitions {remaining} to their end within {timeout}s"
        keys = sorted(by_partition)
        return Delivered([r for k in keys for r in by_partition[k]], [k for k in keys for _ in by_partition[k]])
    finally:
        consumer.close()


@dataclass
class AuditReport:
    """What a consumer of the topics sees, against what was written."""

    lost: list[str] = field(default_factory=list)
    duplicated: dict[str, int] = field(default_factory=dict)  # id -> extra copies
    unexpected: list[str] = field(default_factory=list)
    out_of_order: list[str] = field(default_factory=list)  # first deliveries: "aggregate: #i after #j"
    # Copies of older records after newer ones: what re-publishing an acknowledged-but-unmarked
    # tail does (a worker killed between Kafka's ack and its dedup mark). Out of order for a
    # consumer all the same; accepted only where duplicates are.
    redelivered_behind: list[str] = field(default_factory=list)
    split: dict[str, set] = field(default_factory=dict)  # aggregate -> the partitions it was found in

    def problems(self, *, allow_duplicates: bool = False) -> list[str]:
        out = []
        if self.lost:
            out.append(f"{len(self.lost)} lost, e.g. {sorted(self.lost)[:3]}")
        if self.duplicated and not allow_duplicates:
            out.append(f"{sum(self.duplicated.values())} duplicate records, e.g. {sorted(self.duplicated)[:3]}")
        if self.unexpected:
            out.append(f"{len(self.unexpected)} unexpected, e.g. {sorted(self.unexpected)[:3]}")
        if self.out_of_order:
            out.append(f"{len(self.out_of_order)} out of order, e.g. {self.out_of_order[:3]}")
        if self.redelivered_behind and not allow_duplicates:
            out.append(f"{len(self.redelivered_behind)} copies of older records after newer ones, "
                       f"e.g. {self.redelivered_behind[:3]}")
        if self.split:
            agg, parts = next(iter(self.split.items()))
            out.append(f"{len(self.split)} aggregates in several partitions, e.g. {agg} in {sorted(parts)}")
        return out


def audit(written: Mapping[str, list[str]], delivered: Delivered) -> AuditReport:
    """Lost, duplicated, unexpected and out-of-order events per aggregate, over *every* delivery: an
    aggregate's records must appear in written order in its partition, and a copy of an older record
    after a newer one is out of order like any other. An aggregate found in two partitions is reported."""
    report = AuditReport()
    index = {eid: (agg, i) for agg, ids in written.items() for i, eid in enumerate(ids)}
    counts = delivered.ids
    report.lost = [eid for eid in index if eid not in counts]
    report.duplicated = {eid: n - 1 for eid, n in counts.items() if n > 1}
    report.unexpected = [eid for eid in counts if eid not in index]
    newest: dict[str, tuple[int, str]] = {}
    delivered_before: set[str] = set()
    where: dict[str, set] = collections.defaultdict(set)
    parts = delivered.partitions or [("?", 0)] * len(delivered.records)
    for (key, headers, _), part in zip(delivered.records, parts, strict=True):
        eid = headers["id"]
        if eid not in index:
            continue
        agg, i = index[eid]
        where[agg].add(part)
        if key is None or key.decode() != agg:
            report.out_of_order.append(f"{agg}: {eid} carries key {key!r}")
        seen = newest.get(agg)
        if seen is not None and i < seen[0]:
            where_to = report.redelivered_behind if eid in delivered_before else report.out_of_order
            where_to.append(f"{agg}: #{i} ({eid}) after #{seen[0]} ({seen[1]})")
        delivered_before.add(eid)
        if seen is None or i > seen[0]:
            newest[agg] = (i, eid)
    report.split = {agg: p for agg, p in where.items() if len(p) > 1}
    return report


def assert_delivered_in_order(outbox: Outbox, delivered: Delivered, *, allow_duplicates: bool = False) -> None:
    problems = audit(outbox.written, delivered).problems(allow_duplicates=allow_duplicates)
    assert not problems, "; ".join(problems)

"""`relay verify`: audit what reached Kafka against what is in the outbox table (DESIGN §1, §6, §8).

Expected = the table's rows (or those created since `--since`), each aggregate's events in
the order of the table's clustering timeuuid (= write order = `cdc$time` order for rows
written at their own timestamp, as `relay loadgen` does). Delivered = records of the topics
those rows map to whose `relay_source` header names the table, matched by the `id` header.
Every partition is read from its start up to the high watermark measured when reading
starts, so records published afterwards do not make a run flaky.

Ordering is judged where Kafka defines it: inside one partition. An aggregate is out of
order when, in one partition, the first copy of a later event sits at a lower offset than
the first copy of an earlier one. Missing events are not ordering errors.
"""
from __future__ import annotations

import json
import logging
import string
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from relay.config import Config, TableConfig
from relay.connect import table_metadata
from relay.errors import UserError
from relay.model import HEADER_ID, HEADER_SOURCE
from relay.progress import Progress

TOPIC_SETTLE_S = 10.0  # how long verify waits for a topic without a leader before calling it missing

ProgressFactory = Callable[[int], Progress]  # total records to read -> a reporter

SAMPLE = 10  # ids listed per problem in the JSON report
TEXT_SAMPLE = 3  # and in the human one, which must stay readable
DEFAULT_TIMEOUT_SECONDS = 120.0
# Consumer settings that must follow the producer's to reach the same cluster (TLS, SASL).
SHARED_CLIENT_PREFIXES = ("security.", "sasl.", "ssl.", "client.dns.lookup", "broker.address.family")


# --------------------------------------------------------------------------- expected (from the table)

@dataclass
class Expectation:
    table: str
    topics: set[str] = field(default_factory=set)
    by_aggregate: dict[str, list[str]] = field(default_factory=dict)  # ids in expected order
    expected_ids: set[str] = field(default_factory=set)
    known_ids: set[str] = field(default_factory=set)  # every id in the table, in scope or not
    unroutable: int = 0  # rows relay dead-letters (no id, no aggregate, topic template cannot be filled)


@dataclass(frozen=True)
class RowShape:
    """Which columns to read, and where each one lands in a row."""

    select: tuple[str, ...]  # CQL expressions: the aliases' columns, then the order column, then created_at
    aliases: tuple[str, ...]  # column aliases of the first len(aliases) expressions
    order_by_writetime: bool  # no timeuuid clustering column: order by WRITETIME(payload)
    has_created_at: bool

    @property
    def order_index(self) -> int:
        return len(self.aliases)


def _text(value: object) -> str | None:
    """A column value as relay's mapping renders it (uuid → canonical str, bytes → UTF-8)."""
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, Mapping):
        return json.dumps({str(k): _text(v) for k, v in value.items()}, sort_keys=True)
    return str(value)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _template_fields(template: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


def row_shape(meta, table: TableConfig) -> RowShape:
    """event_id, aggregate_id and the topic template's columns; the ordering column; created_at if any."""
    c = table.columns
    aliases = ["event_id", "aggregate_id"]
    aliases += [f for f in _template_fields(table.topic) if f not in aliases]
    missing = [getattr(c, a) for a in aliases if getattr(c, a) not in meta.columns]
    if missing:
        raise UserError(f"table {table.name} has no column {missing[0]!r} (see [tables.columns])")
    select = [_q(getattr(c, a)) for a in aliases]
    clustering = [col.name for col in meta.clustering_key if col.cql_type == "timeuuid"]
    if clustering:
        select.append(_q(clustering[0]))
    elif c.payload in meta.columns and meta.columns[c.payload] not in meta.primary_key:
        select.append(f"WRITETIME({_q(c.payload)})")
    else:
        raise UserError(f"table {table.name} has no timeuuid clustering column and no payload column to order by")
    has_created = "created_at" in meta.columns
    if has_created:
        select.append(_q("created_at"))
    return RowShape(tuple(select), tuple(aliases), not clustering, has_created)


def _order(value: object, by_writetime: bool) -> tuple[tuple[int, bytes], int]:
    """(sort key, µs since the epoch) of a row's timeuuid, or of its write time."""
    if by_writetime:
        micros = int(value or 0)  # type: ignore[call-overload]
        return (micros, b""), micros
    from relay import timeuuid

    assert isinstance(value, uuid.UUID)
    return (value.time, value.bytes), timeuuid.to_micros(value)


def _created_micros(value: object) -> int | None:
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None:  # the driver returns naive UTC
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1_000_000)


def read_expected(session, table: TableConfig, since: datetime | None) -> Expectation:
    """Scan the table once; rows before `since` only tell which ids exist (so they are not 'unexpected')."""
    meta = table_metadata(session, table.name)
    if meta is None:
        raise UserError(f"table {table.name} does not exist")
    shape = row_shape(meta, table)
    since_us = int(since.timestamp() * 1_000_000) if since else None
    fields = _template_fields(table.topic)
    exp = Expectation(table.name)
    ordered: dict[str, list[tuple[tuple[int, bytes], str]]] = {}
    query = f"SELECT {', '.join(shape.select)} FROM {table.keyspace}.{_q(table.table)}"
    for row in session.execute(query):
        values = dict(zip(shape.aliases, row, strict=False))
        event_id, aggregate = _text(values["event_id"]), _text(values["aggregate_id"])
        if event_id:
            exp.known_ids.add(event_id)
        key, written_us = _order(row[shape.order_index], shape.order_by_writetime)
        if since_us is not None:
            created = _created_micros(row[shape.order_index + 1]) if shape.has_created_at else None
            if (written_us if created is None else created) < since_us:
                continue
        topic = _topic(table.topic, fields, values)
        if not event_id or not aggregate or topic is None:
            exp.unroutable += 1
            continue
        exp.topics.add(topic)
        exp.expected_ids.add(event_id)
        ordered.setdefault(aggregate, []).append((key, event_id))
    exp.by_aggregate = {agg: [i for _, i in sorted(events)] for agg, events in ordered.items()}
    return exp


def _topic(template: str, fields: list[str], values: Mapping[str, object]) -> str | None:
    texts = {f: _text(values.get(f)) for f in fields}
    if any(not v for v in texts.values()):
        return None
    try:
        return template.format(**texts)
    except (KeyError, ValueError, IndexError):
        return None


# --------------------------------------------------------------------------- delivered (from Kafka)

@dataclass
class Delivery:
    copies: int
    first: tuple[str, int, int]  # topic, partition, offset of the first copy


@dataclass
class Delivered:
    deliveries: dict[str, Delivery] = field(default_factory=dict)
    unexpected: set[str] = field(default_factory=set)
    records: int = 0  # records from this table
    missing_topics: list[str] = field(default_factory=list)
    unfinished_partitions: int = 0  # partitions not read to their watermark before the timeout


@dataclass
class _OnceLogger:
    """librdkafka repeats a failed connect every few milliseconds; log each distinct line once.
    The error that matters reaches the user as one UserError line anyway."""

    logger: logging.Logger
    seen: set[str] = field(default_factory=set)

    def log(self, level: int, msg: str, *args: object) -> None:
        text = msg % args if args else msg
        if text not in self.seen:
            self.seen.add(text)
            self.logger.log(level, text)


def consumer_config(cfg: Config) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "bootstrap.servers": cfg.kafka.bootstrap_servers,
        "group.id": f"relay-verify-{uuid.uuid4().hex}",  # never shares or commits offsets
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        "allow.auto.create.topics": False,  # librdkafka's default for a consumer, said: verify only reads
        "client.id": "relay-verify",
        "logger": _OnceLogger(logging.getLogger("relay.verify.kafka")),
    }
    conf.update({k: v for k, v in cfg.kafka.producer.items() if k.startswith(SHARED_CLIENT_PREFIXES)})
    return conf


def _headers(msg) -> dict[str, str]:
    return {k: (v or b"").decode("utf-8", "replace") for k, v in (msg.headers() or [])}


def consume(cfg: Config, source: str, exp: Expectation, timeout: float,
            progress_for: ProgressFactory | None = None) -> Delivered:
    """Read every partition of the expected topics up to its starting high watermark."""
    from confluent_kafka import Consumer, KafkaException

    out = Delivered()
    if not exp.topics:
        return out
    try:
        consumer = Consumer(consumer_config(cfg))
    except KafkaException as exc:
        raise UserError(f"Kafka consumer settings: {_kafka_text(exc)}") from None
    try:
        ends = _partition_ends(consumer, sorted(exp.topics), out)
        total = sum(high - low for low, high in ends.values())
        progress = progress_for(total) if progress_for and total else None
        _read(consumer, ends, source, exp, out, timeout, progress)
        if progress is not None:
            progress.close()
    except KafkaException as exc:
        raise UserError(f"Kafka at {cfg.kafka.bootstrap_servers}: {_kafka_text(exc)}") from None
    finally:
        consumer.close()
    return out


def _kafka_text(exc: Exception) -> str:
    err = exc.args[0] if exc.args else exc
    return err.str() if hasattr(err, "str") else str(err)


def _topic_metadata(consumer, topic: str):
    """The topic's metadata, or None when Kafka does not know it. Asked for this topic alone, never
    the whole cluster's list (megabytes on a large cluster); the consumer never asks the broker to
    create what it names (allow.auto.create.topics). A topic whose leader is being elected (just
    created, or a broker restarting) is waited out for a few seconds, not reported missing."""
    from confluent_kafka import KafkaError

    unknown = (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC)
    deadline = time.monotonic() + TOPIC_SETTLE_S
    while True:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is not None and meta.error is None:
            return meta
        if meta is None or meta.error.code() in unknown or time.monotonic() > deadline:
            return None
        time.sleep(0.2)


def _partition_ends(consumer, topics: list[str], out: Delivered) -> dict[tuple[str, int], tuple[int, int]]:
    """(topic, partition) → (low, high) watermarks for every partition with records."""
    from confluent_kafka import TopicPartition

    ends = {}
    for topic in topics:
        meta = _topic_metadata(consumer, topic)
        if meta is None:
            out.missing_topics.append(topic)
            continue
        for partition in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=15, cached=False)
            if high > low:
                ends[(topic, partition)] = (low, high)
    return ends


def _read(consumer, ends: dict[tuple[str, int], tuple[int, int]], source: str, exp: Expectation,
          out: Delivered, timeout: float, progress: Progress | None) -> None:
    from confluent_kafka import KafkaError, KafkaException, TopicPartition

    if not ends:
        return
    consumer.assign([TopicPartition(t, p, low) for (t, p), (low, _) in ends.items()])
    remaining = {tp: high for tp, (_, high) in ends.items()}
    deadline = time.monotonic() + timeout
    while remaining and time.monotonic() < deadline:
        batch = consumer.consume(num_messages=1000, timeout=0.5)
        counted = 0
        for msg in batch:
            tp = (msg.topic(), msg.partition())
            high = remaining.get(tp)
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    raise KafkaException(err)
                if high is not None and msg.offset() >= high:
                    _finish(consumer, remaining, tp)
                continue
            if high is None or msg.offset() >= high:
                continue  # published after we started, or a partition already finished
            counted += 1
            _record(msg, source, exp, out)
            if msg.offset() >= high - 1:
                _finish(consumer, remaining, tp)
        if progress is not None and counted:
            progress.update(counted)
    out.unfinished_partitions = len(remaining)


def _finish(consumer, remaining: dict[tuple[str, int], int], tp: tuple[str, int]) -> None:
    from confluent_kafka import TopicPartition

    remaining.pop(tp, None)
    consumer.pause([TopicPartition(*tp)])  # stop fetching what was published after the start


def _record(msg, source: str, exp: Expectation, out: Delivered) -> None:
    headers = _headers(msg)
    if headers.get(HEADER_SOURCE) != source:
        return
    out.records += 1
    event_id = headers.get(HEADER_ID, "")
    if event_id in exp.expected_ids:
        seen = out.deliveries.get(event_id)
        if seen is None:
            out.deliveries[event_id] = Delivery(1, (msg.topic(), msg.partition(), msg.offset()))
        else:
            seen.copies += 1
    elif event_id not in exp.known_ids:
        out.unexpected.add(event_id)


# --------------------------------------------------------------------------- the report

def out_of_order_aggregates(by_aggregate: Mapping[str, list[str]], deliveries: Mapping[str, Delivery]) -> list[str]:
    bad = []
    for aggregate, ids in by_aggregate.items():
        highest: dict[tuple[str, int], int] = {}
        for event_id in ids:
            d = deliveries.get(event_id)
            if d is None:
                continue
            topic, partition, offset = d.first
            if offset < highest.get((topic, partition), -1):
                bad.append(aggregate)
                break
            highest[(topic, partition)] = offset
    return sorted(bad)


@dataclass(frozen=True)
class VerifyReport:
    table: str
    since: str | None
    expected: int
    aggregates: int
    delivered: int
    missing: int
    duplicates: int  # extra copies beyond the first
    unexpected: int  # distinct ids from this table's source that are not in the table
    out_of_order: int  # aggregates
    unroutable: int
    records_read: int
    topics: tuple[str, ...]
    missing_topics: tuple[str, ...]
    unfinished_partitions: int
    seconds: float
    missing_ids: tuple[str, ...] = ()
    duplicate_ids: tuple[str, ...] = ()
    unexpected_ids: tuple[str, ...] = ()
    out_of_order_aggregates: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.missing == 0 and self.out_of_order == 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def render(self) -> str:
        scope = f" since {self.since}" if self.since else ""
        lines = [f"verify {self.table}{scope}: {self.expected:,} events of {self.aggregates:,} aggregates "
                 f"in {len(self.topics)} topic(s); read {self.records_read:,} records in {self.seconds:.1f} s"]
        lines += _line("delivered", self.delivered)
        lines += _line("missing", self.missing, self.missing_ids)
        lines += _line("duplicates", self.duplicates, self.duplicate_ids)
        lines += _line("unexpected", self.unexpected, self.unexpected_ids)
        lines += _line("out of order", self.out_of_order, self.out_of_order_aggregates, "aggregates")
        if self.unroutable:
            lines += _line("unroutable", self.unroutable, (), "rows (relay dead-letters them)")
        if self.missing_topics:
            lines.append(f"  topics not in Kafka: {', '.join(self.missing_topics[:SAMPLE])}")
        if self.unfinished_partitions:
            lines.append(f"  timed out before the end of {self.unfinished_partitions} partition(s)")
        lines.append("OK" if self.ok else "FAILED")
        return "\n".join(lines)


def _line(name: str, count: int, sample: Iterable[str] = (), unit: str = "") -> list[str]:
    ids = list(sample)[:TEXT_SAMPLE]
    more = f" e.g. {', '.join(ids)}{' …' if count > len(ids) else ''}" if ids and count else ""
    return [f"  {name:<13}{count:>10,}{' ' + unit if unit else ''}{more}"]


def build_report(table: str, since: datetime | None, exp: Expectation, got: Delivered, seconds: float
                 ) -> VerifyReport:
    delivered = got.deliveries
    missing = [i for ids in exp.by_aggregate.values() for i in ids if i not in delivered]
    dupes = {i: d.copies - 1 for i, d in delivered.items() if d.copies > 1}
    disorder = out_of_order_aggregates(exp.by_aggregate, delivered)
    return VerifyReport(
        table=table, since=since.isoformat() if since else None, expected=len(exp.expected_ids),
        aggregates=len(exp.by_aggregate), delivered=len(delivered), missing=len(missing),
        duplicates=sum(dupes.values()), unexpected=len(got.unexpected), out_of_order=len(disorder),
        unroutable=exp.unroutable, records_read=got.records, topics=tuple(sorted(exp.topics)),
        missing_topics=tuple(got.missing_topics), unfinished_partitions=got.unfinished_partitions,
        seconds=round(seconds, 3), missing_ids=tuple(missing[:SAMPLE]), duplicate_ids=tuple(sorted(dupes)[:SAMPLE]),
        unexpected_ids=tuple(sorted(got.unexpected)[:SAMPLE]), out_of_order_aggregates=tuple(disorder[:SAMPLE]),
    )


def verify(cfg: Config, table: str, since: datetime | None = None, *, timeout: float = DEFAULT_TIMEOUT_SECONDS,
           progress_for: ProgressFactory | None = None) -> VerifyReport:
    """Compare the outbox table with the Kafka records relay published for it.

    `progress_for(total_records)` may return a Progress for the Kafka read (the CLI shows one).
    """
    from relay.connect import cql_session

    tcfg = cfg.table(table)
    started = time.monotonic()
    session = cql_session(cfg)
    try:
        exp = read_expected(session, tcfg, since)
    finally:
        session.cluster.shutdown()
    got = consume(cfg, tcfg.name, exp, timeout, progress_for)
    return build_report(tcfg.name, since, exp, got, time.monotonic() - started)


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`300` / `2.5` = seconds ago; otherwise an ISO-8601 time (UTC when it has no offset)."""
    now = now or datetime.now(UTC)
    try:
        return now - timedelta(seconds=float(text))
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise UserError(f"--since {text!r}: use seconds ago (e.g. 600) or an ISO time (2025-01-31T12:00:00Z)"
                        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


# --------------------------------------------------------------------------- CLI

def register(sub, common) -> None:
    p = sub.add_parser("verify", parents=[common], help="audit: expected vs delivered, missing, duplicates, order",
                       description="Compare an outbox table with the records in Kafka. Exit 1 if an event is "
                                   "missing or an aggregate is out of order.")
    p.add_argument("--table", required=True, help="configured table (keyspace.table)")
    p.add_argument("--since", default=None, help="only rows created since: seconds ago, or an ISO time")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_SECONDS,
                   help=f"stop reading Kafka after this many seconds (default {DEFAULT_TIMEOUT_SECONDS:.0f})")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_handle)


def _handle(args) -> int:
    from relay import config

    cfg = config.load(args.config)
    cfg.table(args.table)
    since = parse_since(args.since) if args.since else None
    if args.timeout <= 0:
        raise UserError("--timeout must be > 0")

    def progress_for(total: int) -> Progress:
        return Progress(total=total, label=f"verify {args.table}", unit="records")

    report = verify(cfg, args.table, since, timeout=args.timeout, progress_for=progress_for)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.render())
    return 0 if report.ok else 1

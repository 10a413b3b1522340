"""`relay loadgen`: write outbox rows for demos, tests and benchmarks (DESIGN §8).

Events are spread round-robin over the aggregates (event k → aggregate k % A, seq k // A),
and written in consecutive slices of at most A events, one slice after the other. A slice
therefore never holds two events of one aggregate, so concurrent writes cannot reorder an
aggregate. Every event also gets its own write timestamp, strictly increasing in issue
order, and an event id (timeuuid) at that same microsecond: the clustering order, the
write order and Scylla's `cdc$time` all agree with `seq`.

With `--emulate-cdc` the rows go through `relay.testing.CdcEmulator`, which writes the CDC
log rows Scylla would write (for the Cassandra-based local stack); without it they are plain
CQL inserts and the server writes the CDC log itself.
"""
from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from string import Template
from typing import Any

from relay.config import Config, TableConfig
from relay.connect import table_metadata
from relay.errors import UserError
from relay.progress import Progress
from relay.schema import replication_literal

DEFAULT_EVENT_TYPES = ("created", "updated")
# Slices are kept small so progress and --rate pacing stay smooth; concurrency bounds in-flight writes.
SLICE_PER_CONCURRENCY = 4
# With --rate, one slice covers about this many seconds of events.
PACING_STEP_SECONDS = 0.1
_TEXT = ("text", "varchar", "ascii")
# Column types loadgen can fill for each mapped column (ids are timeuuids, aggregate ids like agg-000123).
LOADABLE_TYPES = {"event_id": ("timeuuid", "uuid", *_TEXT), "aggregate_type": _TEXT, "aggregate_id": _TEXT,
                  "event_type": _TEXT, "payload": ("blob", *_TEXT)}


@dataclass(frozen=True)
class LoadgenResult:
    table: str
    events: int
    aggregates: int
    seconds: float
    run_id: str
    first_timestamp_us: int = 0
    last_timestamp_us: int = 0

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        return (f"loadgen {self.table}: wrote {self.events:,} events over {self.aggregates:,} aggregates in "
                f"{self.seconds:.2f} s ({self.events_per_second:,.0f} events/s)")


@dataclass(frozen=True)
class Event:
    """One outbox row to write, before it is shaped to the table's columns."""

    index: int
    aggregate_id: str
    seq: int
    event_type: str
    timestamp_us: int
    event_id: uuid.UUID
    payload: bytes


@dataclass(frozen=True)
class Shape:
    """How an Event becomes a row of this particular table (column names and CQL types)."""

    table: TableConfig
    column_types: Mapping[str, str]  # every column of the table -> cql type
    clustering: tuple[str, ...]
    aggregate_type: str


@dataclass
class Clock:
    """Write timestamps that never repeat and never go back, even if the wall clock does."""

    last_us: int = 0
    now: Callable[[], int] = field(default=lambda: time.time_ns() // 1000)

    def next(self) -> int:
        self.last_us = max(self.now(), self.last_us + 1)
        return self.last_us


# --------------------------------------------------------------------------- events

def aggregate_name(index: int) -> str:
    return f"agg-{index:06d}"


def event_type_for(seq: int, types: Sequence[str]) -> str:
    """The first event of an aggregate is types[0]; later ones cycle through the rest."""
    if seq == 0 or len(types) == 1:
        return types[0]
    return types[1 + (seq - 1) % (len(types) - 1)]


def make_payload(aggregate_id: str, seq: int, event_type: str, run_id: str, size: int) -> bytes:
    """JSON of about `size` bytes (never less than the fields themselves need)."""
    body = {"aggregate": aggregate_id, "seq": seq, "event_type": event_type, "run": run_id, "pad": ""}
    bare = len(json.dumps(body, separators=(",", ":")))
    body["pad"] = "x" * max(size - bare, 0)
    return json.dumps(body, separators=(",", ":")).encode()


def plan(events: int, aggregates: int, types: Sequence[str], run_id: str, payload_bytes: int, clock: Clock,
         start: int = 0, count: int | None = None) -> list[Event]:
    """Events [start, start + count) of the round-robin sequence, timestamped now (in that order)."""
    from relay import timeuuid

    stop = events if count is None else min(events, start + count)
    out = []
    for k in range(start, stop):
        agg, seq = aggregate_name(k % aggregates), k // aggregates
        kind = event_type_for(seq, types)
        ts = clock.next()
        out.append(Event(k, agg, seq, kind, ts, timeuuid.from_micros(ts),
                         make_payload(agg, seq, kind, run_id, payload_bytes)))
    return out


def slice_size(aggregates: int, concurrency: int, rate: float) -> int:
    """Never more than one event per aggregate (so a slice cannot reorder one), small enough to pace."""
    size = min(aggregates, concurrency * SLICE_PER_CONCURRENCY)
    if rate > 0:
        size = min(size, max(1, int(rate * PACING_STEP_SECONDS)))
    return max(size, 1)


# --------------------------------------------------------------------------- rows

def _coerce(value: Any, cql_type: str) -> Any:
    """Fit a Python value to a column's CQL type (the mapping allows text or uuid ids, blob or text payloads)."""
    if cql_type in ("text", "varchar", "ascii"):
        if isinstance(value, bytes):
            return value.decode()
        return value.isoformat() if isinstance(value, datetime) else str(value)
    if cql_type == "blob":
        return value if isinstance(value, bytes) else str(value).encode()
    if cql_type in ("uuid", "timeuuid"):
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    return value


def _filler(cql_type: str, event: Event, created_at: datetime) -> Any:
    """A value for a clustering column the mapping does not name, taken from the event's identity."""
    if cql_type in ("timeuuid", "uuid"):
        return event.event_id
    if cql_type == "timestamp":
        return created_at
    if cql_type in ("int", "bigint", "smallint", "tinyint", "varint"):
        return event.seq
    if cql_type in ("text", "varchar", "ascii"):
        return str(event.event_id)
    raise UserError(f"loadgen cannot fill a clustering column of type {cql_type}")


def row_for(event: Event, shape: Shape) -> dict[str, Any]:
    c = shape.table.columns
    types = shape.column_types
    created_at = datetime.fromtimestamp(event.timestamp_us // 1000 / 1000, tz=UTC)
    row: dict[str, Any] = {
        c.event_id: event.event_id, c.aggregate_type: shape.aggregate_type, c.aggregate_id: event.aggregate_id,
        c.event_type: event.event_type, c.payload: event.payload,
    }
    if "created_at" in types:
        row["created_at"] = created_at
    for name in shape.clustering:
        if name not in row:
            row[name] = _filler(types[name], event, created_at)
    return {name: _coerce(value, types[name]) for name, value in row.items()}


def shape_of(session, table: TableConfig, aggregate_type: str) -> Shape:
    """Read the table's columns from cluster metadata; a mapped column it lacks is a user error."""
    meta = table_metadata(session, table.name)
    if meta is None:
        raise UserError(f"table {table.name} does not exist (create it with CDC enabled, or use --emulate-cdc)")
    types = {name: col.cql_type for name, col in meta.columns.items()}
    c = table.columns
    for alias, allowed in LOADABLE_TYPES.items():
        column = getattr(c, alias)
        if column not in types:
            raise UserError(f"table {table.name} has no column {column!r} (tables.columns.{alias})")
        if types[column] not in allowed:
            raise UserError(f"loadgen cannot write {table.name}.{column} of type {types[column]} "
                            f"(tables.columns.{alias}; use {' or '.join(allowed)})")
    return Shape(table, types, tuple(col.name for col in meta.clustering_key), aggregate_type)


# --------------------------------------------------------------------------- sessions and schema

def plain_session(cfg: Config, *, connect_timeout: float = 10.0):
    """A session with the driver's default named-tuple rows, as CdcEmulator expects."""
    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable
    from cassandra.policies import RoundRobinPolicy, TokenAwarePolicy

    s = cfg.scylla
    profile = ExecutionProfile(load_balancing_policy=TokenAwarePolicy(RoundRobinPolicy()),
                               request_timeout=max(s.request_timeout_seconds, 30.0))
    kwargs: dict[str, Any] = {"contact_points": list(s.contact_points), "port": s.port,
                              "execution_profiles": {EXEC_PROFILE_DEFAULT: profile},
                              "connect_timeout": connect_timeout, "control_connection_timeout": connect_timeout,
                              # As relay.connect: Scylla speaks v4 at most, and on Cassandra 5 the v5 framing
                              # (segments, compressed and checksummed in Python) cost ~0.5 ms of CPU per write.
                              "protocol_version": 4}
    if s.username:
        kwargs["auth_provider"] = PlainTextAuthProvider(s.username, s.password)
    cluster = Cluster(**kwargs)
    try:
        session = cluster.connect()
    except NoHostAvailable as exc:
        cluster.shutdown()
        first = next(iter(exc.errors.values()), exc)
        reason = (str(first) or first.__class__.__name__).splitlines()[0][:200]
        where = ", ".join(f"{h}:{s.port}" for h in s.contact_points)
        raise UserError(f"cannot connect to Scylla/Cassandra at {where}: {reason}") from None
    return session


def outbox_statements(cfg: Config, table: TableConfig) -> list[str]:
    """cql/outbox.cql for this keyspace and table name, without Scylla's `cdc` option (Cassandra lacks it)."""
    from importlib import resources

    text = resources.files("relay").joinpath("cql", "outbox.cql").read_text()
    text = text.replace("${keyspace}.outbox", "${keyspace}." + table.table)
    text = Template(text).safe_substitute(keyspace=table.keyspace,
                                          replication=replication_literal(cfg.scylla.relay_replication))
    text = re.sub(r"\s+WITH\s+cdc\s*=\s*\{[^}]*\}", "", text, flags=re.IGNORECASE)
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in body.split(";") if s.strip()]


def prepare_emulation(session, cfg: Config, table: TableConfig):
    """Metadata tables, outbox table, emulated CDC log and a first generation: whatever is missing."""
    from relay.testing import CdcEmulator

    s = cfg.scylla
    emu = CdcEmulator(session, s.cdc_metadata_keyspace, s.tablets_metadata_keyspace,
                      replication=replication_literal(s.relay_replication), logged=False)
    emu.create_metadata_tables()
    if table_metadata(session, table.name) is None:
        for stmt in outbox_statements(cfg, table):
            session.execute(stmt, timeout=60)
    if table_metadata(session, f"{table.keyspace}.{table.table}_scylla_cdc_log") is None:
        emu.enable_cdc(table.name)
    else:
        emu.attach(table.name)
    emu.load()
    if not emu.generations and not emu.tablet_sets(table.name):
        emu.open_generation(time.time_ns() // 1000 - 1_000_000, vnodes=16, shards=2)
    return emu


# --------------------------------------------------------------------------- writers

Writer = Callable[[list[Event]], None]


def cql_writer(session, shape: Shape, concurrency: int) -> Writer:
    """Plain inserts at the event's own timestamp (the server writes the CDC log)."""
    from cassandra.concurrent import execute_concurrent_with_args

    names: list[str] = []
    stmt = None

    def write(batch: list[Event]) -> None:
        nonlocal stmt, names
        rows = [row_for(e, shape) for e in batch]
        if stmt is None:
            names = list(rows[0])
            cols = ", ".join(f'"{n}"' for n in names)
            stmt = session.prepare(f'INSERT INTO {shape.table.keyspace}."{shape.table.table}" ({cols}) '
                                   f"VALUES ({', '.join('?' for _ in names)}) USING TIMESTAMP ?")
        params = [[row[n] for n in names] + [e.timestamp_us] for row, e in zip(rows, batch, strict=True)]
        execute_concurrent_with_args(session, stmt, params, concurrency=concurrency, raise_on_first_error=True)

    return write


def emulator_writer(emu, shape: Shape, concurrency: int) -> Writer:
    def write(batch: list[Event]) -> None:
        emu.write_many(shape.table.name, [row_for(e, shape) for e in batch],
                       timestamps=[e.timestamp_us for e in batch], concurrency=concurrency)

    return write


def _slices(events: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, events, size):
        yield start, min(size, events - start)


# --------------------------------------------------------------------------- core

def generate(cfg: Config, table: str, events: int, aggregates: int, *, rate: float = 0.0, emulate: bool = False,
             payload_bytes: int = 1000, event_types: Sequence[str] = DEFAULT_EVENT_TYPES,
             aggregate_type: str = "order", concurrency: int = 64, progress: Progress | None = None,
             ) -> LoadgenResult:
    """Write `events` outbox rows over `aggregates` aggregates into `table`; see the module docstring."""
    _check_arguments(events, aggregates, rate, payload_bytes, concurrency, event_types)
    tcfg = cfg.table(table)
    from relay.connect import cql_session

    session = plain_session(cfg) if emulate else cql_session(cfg)
    try:
        return _run(session, cfg, tcfg, events, aggregates, rate, emulate, payload_bytes,
                    tuple(event_types), aggregate_type, concurrency, progress)
    finally:
        session.cluster.shutdown()


def _run(session, cfg: Config, tcfg: TableConfig, events: int, aggregates: int, rate: float, emulate: bool,
         payload_bytes: int, event_types: tuple[str, ...], aggregate_type: str, concurrency: int,
         progress: Progress | None) -> LoadgenResult:
    from relay.testing import CdcWriteRejected

    emu = prepare_emulation(session, cfg, tcfg) if emulate else None
    shape = shape_of(session, tcfg, aggregate_type)
    write = emulator_writer(emu, shape, concurrency) if emu is not None else cql_writer(session, shape, concurrency)
    run_id = uuid.uuid4().hex[:8]
    clock = Clock()
    size = slice_size(aggregates, concurrency, rate)
    started = time.monotonic()
    first = last = 0
    for start, count in _slices(events, size):
        if rate > 0:
            _pace(started, start, rate)
        batch = plan(events, aggregates, event_types, run_id, payload_bytes, clock, start, count)
        try:
            write(batch)
        except CdcWriteRejected as exc:
            raise UserError(f"emulated CDC rejected a write to {tcfg.name}: {exc}") from None
        first = first or batch[0].timestamp_us
        last = batch[-1].timestamp_us
        if progress is not None:
            progress.update(len(batch))
    return LoadgenResult(tcfg.name, events, min(aggregates, events), time.monotonic() - started, run_id, first, last)


def _pace(started: float, done: int, rate: float) -> None:
    """Sleep until `done` events are due, so the average rate stays at `rate` without bursts."""
    delay = started + done / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def _check_arguments(events: int, aggregates: int, rate: float, payload_bytes: int, concurrency: int,
                     event_types: Sequence[str]) -> None:
    if events < 1:
        raise UserError("--events must be at least 1")
    if aggregates < 1:
        raise UserError("--aggregates must be at least 1")
    if rate < 0:
        raise UserError("--rate must be >= 0 (0 = as fast as possible)")
    if payload_bytes < 0:
        raise UserError("--payload-bytes must be >= 0")
    if concurrency < 1:
        raise UserError("--concurrency must be at least 1")
    if not event_types or any(not t for t in event_types):
        raise UserError("--event-types needs at least one non-empty name")


# --------------------------------------------------------------------------- CLI

def register(sub, common) -> None:
    p = sub.add_parser("loadgen", parents=[common], help="write outbox rows (demo, tests, benchmarks)",
                       description="Write outbox rows spread over aggregates, in per-aggregate order.")
    p.add_argument("--table", required=True, help="configured table (keyspace.table)")
    p.add_argument("--events", type=int, required=True, help="number of events to write")
    p.add_argument("--aggregates", type=int, required=True, help="number of aggregates (agg-000000 …)")
    p.add_argument("--rate", type=float, default=0.0, help="events per second (default 0 = as fast as possible)")
    p.add_argument("--emulate-cdc", action="store_true",
                   help="write the CDC log too (Cassandra stand-in for Scylla); creates missing tables")
    p.add_argument("--payload-bytes", type=int, default=1000, help="approximate payload size (default 1000)")
    p.add_argument("--event-types", default=",".join(DEFAULT_EVENT_TYPES),
                   help="comma-separated: the first for an aggregate's first event, the rest cycled "
                        "(default created,updated)")
    p.add_argument("--aggregate-type", default="order", help="aggregate_type column value (default order)")
    p.add_argument("--concurrency", type=int, default=64, help="writes in flight (default 64)")
    p.set_defaults(func=_handle)


def _handle(args) -> int:
    from relay import config

    cfg = config.load(args.config)
    cfg.table(args.table)  # an unknown table fails before any connection attempt
    types = tuple(t.strip() for t in args.event_types.split(",") if t.strip())
    progress = Progress(total=args.events, label=f"loadgen {args.table}")
    try:
        result = generate(cfg, args.table, args.events, args.aggregates, rate=args.rate, emulate=args.emulate_cdc,
                          payload_bytes=args.payload_bytes, event_types=types, aggregate_type=args.aggregate_type,
                          concurrency=args.concurrency, progress=progress)
    except BaseException:
        progress.close()  # end the in-place line so the error starts on its own line
        raise
    progress.close(result.summary())
    return 0

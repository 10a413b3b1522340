"""Emulation of the one thing Cassandra lacks and Scylla does: writing CDC.

Given a base table created with plain CQL, `CdcEmulator.enable_cdc` creates
`<table>_scylla_cdc_log` with Scylla's columns, and every write made through the
emulator goes, in one batch (logged unless asked otherwise), to the base table and to the log row(s) of the
stream Scylla would choose: the stream of the vnode owning the partition key's token
(and of the shard owning it) in the generation active at the write's timestamp.
Generations live in `cdc_generation_timestamps` / `cdc_streams_descriptions_v2` with
Scylla's schema, in a keyspace of the emulator's own (`metadata_keyspace`, which relay
reads as `scylla.cdc_metadata_keyspace`). Tablets tables get per-table stream sets in
`cdc_timestamps` / `cdc_streams` (relay's `scylla.tablets_metadata_keyspace`).

A table's CDC options (`WITH cdc = {...}`) are kept by Scylla in `system_schema.tables`,
column `extensions` (frozen<map<text, blob>>), key 'cdc': the option map serialized by Scylla's
own serializer (see `encode_cdc_extension`). Cassandra cannot hold them there: it accepts
`WITH extensions = {...}` and stores nothing, and system_schema is the server's, not ours
to write. So the emulator keeps a table of the same shape and bytes in its metadata
keyspace, `<metadata_keyspace>.tables (keyspace_name, table_name, extensions)`, where
relay looks whenever its generation tables are the emulator's (relay.discovery).

Reads, checkpoints, leases and dead letters never go through here: relay uses the real
driver against the real server for all of them.
"""
from __future__ import annotations

import bisect
import logging
import random
import re
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cassandra.cluster import Session
from cassandra.concurrent import execute_concurrent
from cassandra.murmur3 import murmur3
from cassandra.query import BatchStatement, BatchType, PreparedStatement

from relay import timeuuid
from relay.streams import stream_token
from relay.testing.ring import VnodeRing, shard_of, tablet_last_tokens, tablet_of

# Scylla's write admission window for generation switches (cdc/generation.cc).
GENERATION_LEEWAY_S = 5.0
DEFAULT_CDC_TTL = 86400

OP_PREIMAGE, OP_UPDATE, OP_INSERT, OP_ROW_DELETE, OP_PARTITION_DELETE = 0, 1, 2, 3, 4
STATE_CURRENT, STATE_CLOSED, STATE_OPENED = 0, 1, 2

VNODE_METADATA_CQL = """
CREATE TABLE IF NOT EXISTS {ks}.tables (
  keyspace_name text, table_name text, extensions frozen<map<text, blob>>,
  PRIMARY KEY (keyspace_name, table_name));
CREATE TABLE IF NOT EXISTS {ks}.cdc_generation_timestamps (
  key text, time timestamp, expired timestamp,
  PRIMARY KEY (key, time)) WITH CLUSTERING ORDER BY (time DESC);
CREATE TABLE IF NOT EXISTS {ks}.cdc_streams_descriptions_v2 (
  time timestamp, range_end bigint, streams frozen<set<blob>>,
  PRIMARY KEY (time, range_end));
"""

TABLETS_METADATA_CQL = """
CREATE TABLE IF NOT EXISTS {ks}.cdc_timestamps (
  keyspace_name text, table_name text, timestamp timestamp,
  PRIMARY KEY ((keyspace_name, table_name), timestamp)) WITH CLUSTERING ORDER BY (timestamp DESC);
CREATE TABLE IF NOT EXISTS {ks}.cdc_streams (
  keyspace_name text, table_name text, timestamp timestamp, stream_state tinyint, stream_id blob,
  PRIMARY KEY ((keyspace_name, table_name), timestamp, stream_state, stream_id));
"""


def encode_cdc_extension(options: Mapping[str, str]) -> bytes:
    """A cdc option map as Scylla stores it in system_schema.tables.extensions['cdc']: Scylla's
    serializer for map<sstring, sstring> — uint32 LE entry count, then each key and value as a
    uint32 LE byte length and UTF-8 bytes, keys in std::map (sorted) order."""
    out = [len(options).to_bytes(4, "little")]
    for key in sorted(options):
        for text in (key, options[key]):
            raw = text.encode()
            out += [len(raw).to_bytes(4, "little"), raw]
    return b"".join(out)


def scylla_cdc_options(ttl: int) -> dict[str, str]:
    """What Scylla's cdc::options::to_map() writes for `WITH cdc = {'enabled': true, 'ttl': ttl}`:
    every option, defaults included (so 'ttl' is always there once CDC is enabled)."""
    return {"delta": "full", "enabled": "true", "postimage": "false", "preimage": "false", "ttl": str(ttl)}


class _BatchlogWarningFilter(logging.Filter):
    """Cassandra warns on every logged batch touching a gc_grace_seconds=0 table; Scylla's CDC log
    has gc_grace 0 by design and Scylla writes it atomically without a batchlog, so the warning
    says nothing about the emulated system."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "configured with a gc_grace_seconds of 0" not in record.getMessage()


logging.getLogger("cassandra.protocol").addFilter(_BatchlogWarningFilter())


class CdcWriteRejected(Exception):
    """Scylla would refuse this write (no generation yet, or outside the generation leeway)."""


def now_micros() -> int:
    return time.time_ns() // 1000


def _ms(micros: int) -> datetime:
    return datetime.fromtimestamp(micros // 1000 / 1000, tz=UTC)


def _to_micros(ts: datetime) -> int:
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return int(ts.timestamp() * 1_000_000)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class Generation:
    """A vnode generation: its start (µs, ms precision like Scylla's timestamp column) and streams."""

    start_us: int
    streams_by_vnode: dict[int, tuple[bytes, ...]]  # vnode index -> streams
    range_ends: tuple[int, ...]  # sorted vnode end tokens, index = vnode index
    shards: int

    def all_streams(self) -> list[bytes]:
        return [s for i in sorted(self.streams_by_vnode) for s in self.streams_by_vnode[i]]

    def stream_for_token(self, token: int) -> bytes:
        i = bisect.bisect_left(self.range_ends, token)
        vnode = 0 if i == len(self.range_ends) else i
        streams = self.streams_by_vnode[vnode]
        shard = shard_of(token, self.shards)
        for s in streams:
            if shard_of(stream_token(s), self.shards) == shard:
                return s
        return streams[0]


@dataclass(frozen=True)
class TabletStreamSet:
    """A tablets table's stream set operating from `start_us`: one stream per tablet."""

    start_us: int
    streams: tuple[bytes, ...]  # ordered by tablet (= by token)

    def stream_for_token(self, token: int) -> bytes:
        return self.streams[tablet_of(token, [stream_token(s) for s in self.streams])]


@dataclass
class Column:
    name: str
    cql_type: str
    kind: str  # partition_key | clustering | regular | static

    @property
    def collection(self) -> str | None:
        """map / set / list for a non-frozen collection, else None."""
        m = re.match(r"^(map|set|list)<", self.cql_type)
        return m.group(1) if m else None


@dataclass
class CdcTable:
    keyspace: str
    name: str
    columns: list[Column]
    ttl: int
    tablets: bool
    insert_base: dict[tuple[str, ...], PreparedStatement] = field(default_factory=dict)
    insert_log: dict[tuple[str, ...], PreparedStatement] = field(default_factory=dict)
    key_stmt: PreparedStatement | None = None

    @property
    def qualified(self) -> str:
        return f"{self.keyspace}.{self.name}"

    @property
    def log_name(self) -> str:
        return f"{self.name}_scylla_cdc_log"

    @property
    def partition_key(self) -> list[Column]:
        return [c for c in self.columns if c.kind == "partition_key"]

    @property
    def clustering(self) -> list[Column]:
        return [c for c in self.columns if c.kind == "clustering"]

    @property
    def regular(self) -> list[Column]:
        return [c for c in self.columns if c.kind in ("regular", "static")]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"{self.qualified} has no column {name!r}")


@dataclass
class Op:
    """One base-table operation inside a CDC group (same partition, same timestamp)."""

    kind: int  # OP_INSERT / OP_UPDATE / OP_ROW_DELETE / OP_PARTITION_DELETE
    key: dict[str, object]
    values: dict[str, object] = field(default_factory=dict)
    ttl: int | None = None


def _log_type(col: Column) -> str:
    t = col.cql_type
    kind = col.collection
    if kind == "list":
        return "frozen<map<timeuuid, " + t[len("list<"):-1] + ">>"
    if kind in ("map", "set"):
        return f"frozen<{t}>"
    return t


def _deleted_elements_type(col: Column) -> str:
    inner = col.cql_type[col.cql_type.index("<") + 1:-1]
    if col.collection == "map":
        return f"frozen<set<{inner.split(',', 1)[0].strip()}>>"
    if col.collection == "list":
        return "frozen<set<timeuuid>>"
    return f"frozen<set<{inner}>>"


class CdcEmulator:
    """Writes base rows together with Scylla-shaped CDC log rows, through the real driver."""

    def __init__(self, session: Session, metadata_keyspace: str, tablets_keyspace: str | None = None,
                 replication: str = "{'class': 'SimpleStrategy', 'replication_factor': 1}",
                 *, logged: bool = True) -> None:
        self.session = session
        # A group's base and log rows go in one batch. Logged (the default) keeps them all-or-nothing
        # as Scylla's single mutation does; unlogged skips Cassandra's batchlog, a second copy of every
        # row that Scylla never writes (and about a third of the write's cost), for writers that
        # only need load: loadgen.
        self.batch_type = BatchType.LOGGED if logged else BatchType.UNLOGGED
        self.metadata_keyspace = metadata_keyspace
        self.tablets_keyspace = tablets_keyspace or metadata_keyspace
        self.replication = replication
        self.tables: dict[str, CdcTable] = {}
        self._generations: list[Generation] = []
        self._tablet_sets: dict[str, list[TabletStreamSet]] = {}
        self._rng = random.Random()

    # ------------------------------------------------------------------ metadata
    def create_metadata_tables(self) -> None:
        for ks in {self.metadata_keyspace, self.tablets_keyspace}:
            self.session.execute(f"CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {self.replication}")
        for stmt in VNODE_METADATA_CQL.format(ks=self.metadata_keyspace).split(";"):
            if stmt.strip():
                self.session.execute(stmt)
        for stmt in TABLETS_METADATA_CQL.format(ks=self.tablets_keyspace).split(";"):
            if stmt.strip():
                self.session.execute(stmt)

    def load(self) -> None:
        """Read back the generations and stream sets already published (another process may have made them)."""
        ks = self.metadata_keyspace
        times = [r[0] for r in self.session.execute(
            f"SELECT time FROM {ks}.cdc_generation_timestamps WHERE key = 'timestamps'")]
        gens = []
        for t in sorted(times):
            rows = list(self.session.execute(
                f"SELECT range_end, streams FROM {ks}.cdc_streams_descriptions_v2 WHERE time = %s", (t,)))
            gens.append(self._generation_from_rows(_to_micros(t), rows))
        self._generations = gens
        for table in self.tables.values():
            if table.tablets:
                self._load_tablet_sets(table)

    def _generation_from_rows(self, start_us: int, rows: Sequence[tuple[int, Iterable[bytes]]]) -> Generation:
        from relay.streams import vnode_index

        by_vnode: dict[int, list[bytes]] = {}
        ends: dict[int, int] = {}
        for range_end, streams in rows:
            for s in streams:
                idx = vnode_index(s)
                by_vnode.setdefault(idx, []).append(s)
                ends[idx] = range_end
        shards = max(len(v) for v in by_vnode.values()) if by_vnode else 1
        return Generation(start_us, {k: tuple(sorted(v)) for k, v in by_vnode.items()},
                          tuple(ends[i] for i in sorted(ends)), shards)

    @property
    def generations(self) -> list[Generation]:
        return list(self._generations)

    def open_generation(self, start: datetime | int | None = None, *, vnodes: int = 16, shards: int = 2,
                        seed: int | None = None) -> Generation:
        """Publish a new vnode generation starting at `start` (µs or datetime; default now).

        As in Scylla, the stream rows are written first and the timestamp last, so a
        reader that follows the timestamp table never sees a partial stream set.
        """
        start_us = now_micros() if start is None else start if isinstance(start, int) else _to_micros(start)
        start_us -= start_us % 1000  # the timestamp column has ms precision
        if self._generations and start_us <= self._generations[-1].start_us:
            raise ValueError("a new generation must start after the previous one")
        ring = VnodeRing.random(vnodes, shards, seed)
        rng = random.Random(seed)
        streams = ring.make_streams(rng)
        ks = self.metadata_keyspace
        insert = self.session.prepare(
            f"INSERT INTO {ks}.cdc_streams_descriptions_v2 (time, range_end, streams) VALUES (?, ?, ?)")
        when = _ms(start_us)
        execute_concurrent(self.session, [(insert, (when, ring.tokens[i], set(s))) for i, s in enumerate(streams)],
                           concurrency=64, raise_on_first_error=True)
        self.session.execute(
            f"INSERT INTO {ks}.cdc_generation_timestamps (key, time) VALUES ('timestamps', %s)", (when,))
        gen = Generation(start_us, {i: tuple(sorted(s)) for i, s in enumerate(streams)}, ring.tokens, shards)
        self._generations.append(gen)
        return gen

    def generation_at(self, micros: int) -> Generation:
        starts = [g.start_us for g in self._generations]
        i = bisect.bisect_right(starts, micros) - 1
        if i < 0:
            raise CdcWriteRejected("could not find any CDC stream: no generation operates at this timestamp")
        return self._generations[i]

    # ------------------------------------------------------------------ tables
    def enable_cdc(self, qualified: str, *, ttl: int = DEFAULT_CDC_TTL, tablets: int | None = None,
                   start: datetime | int | None = None) -> CdcTable:
        """Create the log table for an existing base table (like `WITH cdc = {'enabled': true}`).

        `tablets=N` makes it a tablets table with its own stream set of N streams.
        """
        if ttl < 0:
            raise ValueError("Invalid CDC option: ttl must be >= 0")  # Scylla's own check
        table = self._table_from_metadata(qualified, ttl, tablets is not None)
        self._create_log_table(table)
        self._store_cdc_options(table)
        self.tables[qualified] = table
        if tablets is not None:
            self._tablet_sets.setdefault(qualified, [])
            self._load_tablet_sets(table)
            if not self._tablet_sets[qualified]:
                self.open_tablet_streams(qualified, tablets, start=start)
        return table

    def alter_cdc_ttl(self, qualified: str, ttl: int) -> None:
        """Like `ALTER TABLE ... WITH cdc = {'enabled': true, 'ttl': ttl}`: later log rows carry the new TTL."""
        if ttl < 0:
            raise ValueError("Invalid CDC option: ttl must be >= 0")
        table = self.tables[qualified]
        table.ttl = ttl
        self._store_cdc_options(table)

    def _store_cdc_options(self, table: CdcTable) -> None:
        # The whole map, as Scylla rewrites a table's schema row (extensions is frozen there too).
        self.session.execute(
            f"INSERT INTO {self.metadata_keyspace}.tables (keyspace_name, table_name, extensions) VALUES (%s, %s, %s)",
            (table.keyspace, table.name, {"cdc": encode_cdc_extension(scylla_cdc_options(table.ttl))}))

    def stored_cdc_ttl(self, qualified: str) -> int:
        """The TTL in the stored options (another process may have enabled CDC), else Scylla's default."""
        from relay.discovery import cdc_ttl_from_options, decode_cdc_extension

        keyspace, name = qualified.split(".", 1)
        row = self.session.execute(f"SELECT extensions FROM {self.metadata_keyspace}.tables "
                                   f"WHERE keyspace_name = %s AND table_name = %s", (keyspace, name)).one()
        blob = (row[0] or {}).get("cdc") if row is not None else None
        return DEFAULT_CDC_TTL if blob is None else cdc_ttl_from_options(decode_cdc_extension(blob))

    def attach(self, qualified: str) -> CdcTable:
        """Use a table whose log already exists (made by another process)."""
        table = self._table_from_metadata(qualified, self.stored_cdc_ttl(qualified), False)
        self._prepare_key(table)
        self.tables[qualified] = table
        self._tablet_sets[qualified] = []
        self._load_tablet_sets(table)
        table.tablets = bool(self._tablet_sets[qualified])
        return table

    def _table_from_metadata(self, qualified: str, ttl: int, tablets: bool) -> CdcTable:
        keyspace, name = qualified.split(".", 1)
        cluster = self.session.cluster
        cluster.refresh_table_metadata(keyspace, name)
        meta = cluster.metadata.keyspaces[keyspace].tables[name]
        pk = {c.name for c in meta.partition_key}
        ck = {c.name for c in meta.clustering_key}
        columns = [Column(c.name, c.cql_type, "partition_key" if c.name in pk else "clustering" if c.name in ck
                          else "static" if c.is_static else "regular") for c in meta.columns.values()]
        return CdcTable(keyspace, name, columns, ttl, tablets)

    def _prepare_key(self, table: CdcTable) -> None:
        cols_pk = ", ".join(_q(c.name) for c in table.partition_key)
        table.key_stmt = self.session.prepare(
            f"SELECT token({cols_pk}) FROM {table.keyspace}.{_q(table.name)} WHERE "
            + " AND ".join(f"{_q(c.name)} = ?" for c in table.partition_key))

    def _create_log_table(self, table: CdcTable) -> None:
        cols = ['"cdc$stream_id" blob', '"cdc$time" timeuuid', '"cdc$batch_seq_no" int',
                '"cdc$operation" tinyint', '"cdc$ttl" bigint', '"cdc$end_of_batch" boolean']
        for c in table.partition_key + table.clustering:
            cols.append(f"{_q(c.name)} {c.cql_type}")
        for c in table.regular:  # base static columns are not static in the log
            cols.append(f"{_q(c.name)} {_log_type(c)}")
            cols.append(f"{_q('cdc$deleted_' + c.name)} boolean")
            if c.collection:
                cols.append(f"{_q('cdc$deleted_elements_' + c.name)} {_deleted_elements_type(c)}")
        window_minutes = max(1, -(-table.ttl // 24 // 60)) if table.ttl else 60
        # Scylla's create_log_schema: TWCS, gc_grace 0 with a TTL, caching off; compression is Scylla's
        # table default, LZ4 in 4 KiB chunks (Cassandra's default chunk is 16 KiB: every window read of
        # a freshly flushed sstable would decompress four times what Scylla does, per stream).
        self.session.execute(
            f"CREATE TABLE IF NOT EXISTS {table.keyspace}.{_q(table.log_name)} ({', '.join(cols)}, "
            f'PRIMARY KEY (("cdc$stream_id"), "cdc$time", "cdc$batch_seq_no")) '
            f"WITH compaction = {{'class': 'TimeWindowCompactionStrategy', 'compaction_window_unit': 'MINUTES', "
            f"'compaction_window_size': {window_minutes}}} "
            f"AND gc_grace_seconds = {0 if table.ttl else 864000} "
            f"AND caching = {{'keys': 'NONE', 'rows_per_partition': 'NONE'}} "
            f"AND compression = {{'class': 'LZ4Compressor', 'chunk_length_in_kb': 4}} "
            f"AND comment = 'CDC log for {table.qualified} (relay.testing emulation of Scylla)'")
        self._prepare_key(table)

    # ------------------------------------------------------------------ tablets
    def _load_tablet_sets(self, table: CdcTable) -> None:
        ks = self.tablets_keyspace
        rows = self.session.execute(
            f"SELECT timestamp, stream_state, stream_id FROM {ks}.cdc_streams "
            f"WHERE keyspace_name = %s AND table_name = %s", (table.keyspace, table.name))
        by_ts: dict[int, list[bytes]] = {}
        for ts, state, sid in rows:
            if state == STATE_CURRENT:
                by_ts.setdefault(_to_micros(ts), []).append(sid)
        self._tablet_sets[table.qualified] = [
            TabletStreamSet(t, tuple(sorted(by_ts[t], key=stream_token))) for t in sorted(by_ts)]

    def tablet_sets(self, qualified: str) -> list[TabletStreamSet]:
        return list(self._tablet_sets.get(qualified, []))

    def open_tablet_streams(self, qualified: str, tablets: int, start: datetime | int | None = None
                            ) -> TabletStreamSet:
        """Publish a new stream set for a tablets table (creation, or a split/merge to `tablets` tablets).

        Rows: stream_state 0 for every stream of the new set, 1 for each stream it closes,
        2 for each stream it opens; the timestamp row last.
        """
        start_us = now_micros() if start is None else start if isinstance(start, int) else _to_micros(start)
        start_us -= start_us % 1000
        sets = self._tablet_sets.setdefault(qualified, [])
        if sets and start_us <= sets[-1].start_us:
            raise ValueError("a new stream set must start after the previous one")
        from relay.streams import make_stream_id

        new = tuple(make_stream_id(tok, 0, self._rng.getrandbits(38)) for tok in tablet_last_tokens(tablets))
        keyspace, name = qualified.split(".", 1)
        ks = self.tablets_keyspace
        when = _ms(start_us)
        insert = self.session.prepare(
            f"INSERT INTO {ks}.cdc_streams (keyspace_name, table_name, timestamp, stream_state, stream_id) "
            f"VALUES (?, ?, ?, ?, ?)")
        rows = [(insert, (keyspace, name, when, STATE_CURRENT, s)) for s in new]
        rows += [(insert, (keyspace, name, when, STATE_OPENED, s)) for s in new]
        if sets:
            rows += [(insert, (keyspace, name, when, STATE_CLOSED, s)) for s in sets[-1].streams]
        execute_concurrent(self.session, rows, concurrency=64, raise_on_first_error=True)
        self.session.execute(f"INSERT INTO {ks}.cdc_timestamps (keyspace_name, table_name, timestamp) "
                             f"VALUES (%s, %s, %s)", (keyspace, name, when))
        stream_set = TabletStreamSet(start_us, new)
        sets.append(stream_set)
        return stream_set

    # ------------------------------------------------------------------ writes
    def token(self, qualified: str, key: Mapping[str, object]) -> int:
        """Murmur3 token of a partition key, computed the way the driver routes it."""
        table = self.tables[qualified]
        assert table.key_stmt is not None
        bound = table.key_stmt.bind([key[c.name] for c in table.partition_key])
        return murmur3(bound.routing_key)

    def stream_for(self, qualified: str, key: Mapping[str, object], micros: int) -> bytes:
        table = self.tables[qualified]
        token = self.token(qualified, key)
        if table.tablets:
            sets = self._tablet_sets[qualified]
            i = bisect.bisect_right([s.start_us for s in sets], micros) - 1
            if i < 0:
                raise CdcWriteRejected(f"{qualified}: no CDC stream set operates at this timestamp")
            return sets[i].stream_for_token(token)
        return self.generation_at(micros).stream_for_token(token)

    def _admit(self, qualified: str, micros: int, now_us: int) -> None:
        """Scylla's generation leeway: no writes too far in the future, none to a past generation too late."""
        leeway = int(GENERATION_LEEWAY_S * 1_000_000)
        if micros >= now_us + leeway:
            raise CdcWriteRejected(f"timestamp {micros} is more than {GENERATION_LEEWAY_S}s in the future")
        table = self.tables[qualified]
        starts = ([s.start_us for s in self._tablet_sets[qualified]] if table.tablets
                  else [g.start_us for g in self._generations])
        current = bisect.bisect_right(starts, now_us) - 1
        own = bisect.bisect_right(starts, micros) - 1
        if own < current and micros <= now_us - leeway:
            raise CdcWriteRejected(f"timestamp {micros} belongs to a previous generation and is older than "
                                   f"{GENERATION_LEEWAY_S}s")

    def insert(self, qualified: str, values: Mapping[str, object], *, timestamp: int | None = None,
               ttl: int | None = None) -> uuid.UUID:
        """INSERT one row; returns its `cdc$time`."""
        table = self.tables[qualified]
        key = {c.name: values[c.name] for c in table.partition_key + table.clustering}
        return self.write_group(qualified, [Op(OP_INSERT, key, {k: v for k, v in values.items() if k not in key},
                                               ttl)], timestamp=timestamp)

    def update(self, qualified: str, key: Mapping[str, object], values: Mapping[str, object], *,
               timestamp: int | None = None) -> uuid.UUID:
        return self.write_group(qualified, [Op(OP_UPDATE, dict(key), dict(values))], timestamp=timestamp)

    def delete(self, qualified: str, key: Mapping[str, object], *, timestamp: int | None = None) -> uuid.UUID:
        """Row delete with a full primary key; partition delete with the partition key only.
        On a table without clustering key a row delete is logged as a partition delete (op 4)."""
        table = self.tables[qualified]
        full = all(c.name in key for c in table.clustering)
        kind = OP_ROW_DELETE if table.clustering and full else OP_PARTITION_DELETE
        return self.write_group(qualified, [Op(kind, dict(key))], timestamp=timestamp)

    def write_group(self, qualified: str, ops: Sequence[Op], *, timestamp: int | None = None) -> uuid.UUID:
        """Several operations on one partition at one timestamp: one logged batch, one CDC group."""
        batch, cdc_time = self._group_batch(qualified, ops, timestamp)
        self.session.execute(batch)
        return cdc_time

    def write_many(self, qualified: str, rows: Iterable[Mapping[str, object]], *,
                   timestamps: Iterable[int] | None = None, concurrency: int = 64) -> list[uuid.UUID]:
        """INSERT many rows concurrently (each its own logged batch and CDC group)."""
        table = self.tables[qualified]
        keys = [c.name for c in table.partition_key + table.clustering]
        ts_iter = iter(timestamps) if timestamps is not None else None
        times = []

        def statements():
            # Built one by one as the driver sends them: a write's timestamp is taken when it
            # leaves, as a driver's client timestamp is. Building them all first would stamp the
            # last-sent ones seconds in the past - late rows a confidence window may not cover.
            for values in rows:
                key = {k: values[k] for k in keys}
                op = Op(OP_INSERT, key, {k: v for k, v in values.items() if k not in key})
                batch, cdc_time = self._group_batch(qualified, [op], next(ts_iter) if ts_iter else None)
                times.append(cdc_time)
                yield batch, ()

        results = execute_concurrent(self.session, statements(), concurrency=concurrency,
                                     raise_on_first_error=True)
        for ok, res in results:
            if not ok:
                raise res
        return times

    def _group_batch(self, qualified: str, ops: Sequence[Op], timestamp: int | None
                     ) -> tuple[BatchStatement, uuid.UUID]:
        if not ops:
            raise ValueError("a CDC group needs at least one operation")
        table = self.tables[qualified]
        now_us = now_micros()
        micros = now_us if timestamp is None else timestamp
        self._admit(qualified, micros, now_us)
        pk = {c.name: ops[0].key[c.name] for c in table.partition_key}
        for op in ops[1:]:
            if {c.name: op.key[c.name] for c in table.partition_key} != pk:
                raise ValueError("all operations of one CDC group must touch the same partition")
        stream = self.stream_for(qualified, pk, micros)
        cdc_time = timeuuid.from_micros(micros)
        batch = BatchStatement(self.batch_type)
        for seq, op in enumerate(ops):
            self._add_base(batch, table, op, micros)
            log_values = self._log_values(table, op)
            log_values.update({"cdc$stream_id": stream, "cdc$time": cdc_time, "cdc$batch_seq_no": seq,
                               "cdc$operation": op.kind, "cdc$ttl": op.ttl,
                               "cdc$end_of_batch": True if seq == len(ops) - 1 else None})
            cols = tuple(sorted(log_values))
            stmt = table.insert_log.get(cols)
            if stmt is None:
                stmt = self.session.prepare(
                    f"INSERT INTO {table.keyspace}.{_q(table.log_name)} ({', '.join(_q(c) for c in cols)}) "
                    f"VALUES ({', '.join('?' for _ in cols)}) USING TIMESTAMP ? AND TTL ?")
                table.insert_log[cols] = stmt
            batch.add(stmt, [log_values[c] for c in cols] + [micros, table.ttl])
        return batch, cdc_time

    def _add_base(self, batch: BatchStatement, table: CdcTable, op: Op, micros: int) -> None:
        ks, name = table.keyspace, _q(table.name)
        if op.kind in (OP_INSERT, OP_UPDATE):
            cols = tuple(op.key) + tuple(op.values)
            cache_key = (("I" if op.kind == OP_INSERT else "U"), op.ttl is not None, *cols)
            stmt = table.insert_base.get(cache_key)
            if stmt is None:
                using = "USING TIMESTAMP ?" + (" AND TTL ?" if op.ttl is not None else "")
                if op.kind == OP_INSERT:
                    cql = (f"INSERT INTO {ks}.{name} ({', '.join(_q(c) for c in cols)}) "
                           f"VALUES ({', '.join('?' for _ in cols)}) {using}")
                else:
                    cql = (f"UPDATE {ks}.{name} {using} SET {', '.join(_q(c) + ' = ?' for c in op.values)} "
                           f"WHERE {' AND '.join(_q(c) + ' = ?' for c in op.key)}")
                stmt = self.session.prepare(cql)
                table.insert_base[cache_key] = stmt
            ttl = [op.ttl] if op.ttl is not None else []
            if op.kind == OP_INSERT:
                batch.add(stmt, [*op.key.values(), *op.values.values(), micros, *ttl])
            else:
                batch.add(stmt, [micros, *ttl, *op.values.values(), *op.key.values()])
        else:
            cache_key = ("D", *op.key)
            stmt = table.insert_base.get(cache_key)
            if stmt is None:
                stmt = self.session.prepare(f"DELETE FROM {ks}.{name} USING TIMESTAMP ? WHERE "
                                            + " AND ".join(_q(c) + " = ?" for c in op.key))
                table.insert_base[cache_key] = stmt
            batch.add(stmt, [micros, *op.key.values()])

    def _log_values(self, table: CdcTable, op: Op) -> dict[str, object]:
        values: dict[str, object] = dict(op.key)
        if op.kind not in (OP_INSERT, OP_UPDATE):
            return values
        for name, value in op.values.items():
            col = table.column(name)
            if value is None:
                values["cdc$deleted_" + name] = True
                continue
            if col.collection == "list":
                # List cells are keyed by timeuuids in the log (cdc-advanced-types).
                value = {timeuuid.from_micros(now_micros()): v for v in value}  # type: ignore[union-attr]
            values[name] = value
            if col.collection:
                # Overwriting a collection = collection tombstone + new elements in one row.
                values["cdc$deleted_" + name] = True
        return values

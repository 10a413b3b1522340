"""Discovery: CDC generations (vnodes) and stream sets (tablets) of each table, cut into tasks.

Vnodes (SCYLLA_CDC.md §2.2): generation timestamps come from `cdc_generation_timestamps`;
a generation's streams are read from `cdc_streams_descriptions_v2` only after its timestamp
is visible (Scylla writes the streams first). Tablets (§3.2): each table has its own stream
sets in `cdc_timestamps` / `cdc_streams` (stream_state 0 = the set operating from then).
A generation operates over [start, next start). Tasks: one per vnode index (its streams read
with as few IN queries as Scylla allows); one per stream for tablets.

Failures are never remembered: a stream set is cached only once it was read whole, so a
failed, empty or partial read is simply read again on the next poll, and a generation
whose set is not whole yet stops the list there (its successors wait; nothing is skipped).
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from relay.config import Config, TableConfig
from relay.model import Generation, Task
from relay.streams import stream_token, vnode_index

log = logging.getLogger(__name__)

UNVERSIONED_TASK_BASE = 1 << 22  # task ids for pre-versioning stream ids, one task each
SCYLLA_DEFAULT_CDC_TTL = 86400  # cdc::options::_ttl when `WITH cdc` names no ttl
SCYLLA_METADATA_KEYSPACE = "system_distributed"


def micros(ts: datetime) -> int:
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return round(ts.timestamp() * 1000) * 1000


def as_datetime(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, tz=UTC)


def tasks_of(gen: Generation) -> list[Task]:
    """Cut a generation into tasks: streams grouped by vnode index, or one task per tablet stream."""
    if gen.tablets:
        ordered = sorted(gen.streams, key=stream_token)
        return [Task(gen.table, gen.start_us, i, (s,), gen.end_us) for i, s in enumerate(ordered)]
    groups: dict[int, list[bytes]] = {}
    loose = 0
    for s in sorted(gen.streams):
        idx = vnode_index(s)
        if idx is None:  # ids made before versioning carry no vnode index
            idx = UNVERSIONED_TASK_BASE + loose
            loose += 1
        groups.setdefault(idx, []).append(s)
    return [Task(gen.table, gen.start_us, i, tuple(groups[i]), gen.end_us) for i in sorted(groups)]


# --------------------------------------------------------------------------- stream-set checks

def vnode_set_problem(rows: Iterable[tuple[int, Iterable[bytes]]]) -> str | None:
    """Why the rows (range_end, streams) read for a vnode generation are not its whole set, or None.

    Scylla writes one row per vnode range, never without a stream, and the streams of the
    range with the i-th smallest end carry vnode index i (cdc/generation.cc,
    make_new_generation_description). So a row missing from the read shows as a row holding
    another index. Ids without a version-1 index (made before versioning) cannot be checked."""
    ordered = sorted((end, tuple(streams or ())) for end, streams in rows)
    if not ordered:
        return "no stream rows"
    for i, (end, streams) in enumerate(ordered):
        if not streams:
            return f"vnode range ending at {end} has no streams"
        indexes = {vnode_index(s) for s in streams}
        if None in indexes:
            continue
        if indexes != {i}:
            return (f"the range ending at {end} is row {i} of {len(ordered)} but holds streams of vnode "
                    f"{sorted(indexes)}: rows are missing")
    return None


# --------------------------------------------------------------------------- CDC options (TTL)

class CdcNotEnabled(Exception):
    """The table's schema says CDC is not enabled on it (or the table does not exist)."""


def decode_cdc_extension(blob: bytes) -> dict[str, str]:
    """The option map in system_schema.tables.extensions['cdc']: Scylla's serializer for
    map<sstring, sstring> (uint32 LE count, then each key and value as uint32 LE length + UTF-8)."""
    data = memoryview(blob)
    pos = 0

    def u32() -> int:
        nonlocal pos
        if pos + 4 > len(data):
            raise ValueError("cdc extension: truncated")
        value = int.from_bytes(data[pos:pos + 4], "little")
        pos += 4
        return value

    def text() -> str:
        nonlocal pos
        n = u32()
        if pos + n > len(data):
            raise ValueError("cdc extension: truncated string")
        value = bytes(data[pos:pos + n]).decode()
        pos += n
        return value

    count = u32()
    out = {}
    for _ in range(count):
        key = text()
        out[key] = text()
    if pos != len(data):
        raise ValueError("cdc extension: trailing bytes")
    return out


def cdc_ttl_from_options(options: Mapping[str, str]) -> int:
    """Seconds a CDC log row lives (0 = forever). Scylla lowercases option values and takes
    "1" as true; an enabled table with no ttl option has Scylla's default."""
    if options.get("enabled", "false").lower() not in ("true", "1"):
        raise CdcNotEnabled("cdc is not enabled in the table's options")
    ttl = int(options.get("ttl", SCYLLA_DEFAULT_CDC_TTL))
    if ttl < 0:
        raise ValueError(f"cdc ttl {ttl} < 0")
    return ttl


def cdc_options_keyspace(cfg: Config) -> str:
    """Where a table's CDC options are read: Scylla keeps them in system_schema.tables
    (column `extensions`, key 'cdc'). Cassandra cannot hold them there (it accepts
    `WITH extensions` and stores nothing), so the emulation keeps a table of the same shape
    and bytes next to its generation tables; relay reads there whenever
    `scylla.cdc_metadata_keyspace` names the emulation's keyspace instead of Scylla's own."""
    ks = cfg.scylla.cdc_metadata_keyspace
    return "system_schema" if ks == SCYLLA_METADATA_KEYSPACE else ks


# --------------------------------------------------------------------------- discovery

class Discovery:
    """Reads generation metadata through the real driver. Stream sets are immutable once
    published, so each is fetched once it is whole and then cached; the timestamp lists are
    re-polled, and a generation that was seen and is gone is reported in `disappeared`.

    Consistency: Scylla writes these tables at QUORUM when the cluster has more than one
    token owner and at ONE otherwise (system_distributed_keyspace.cc, `quorum_if_many`);
    scylla-cdc-java/go/rust read them at QUORUM with more than one node, else ONE. Reading
    at QUORUM after a QUORUM write always meets a replica that has the row; on one node ONE
    is the only level that works (system_distributed has RF 3). `consistency` forces a level
    (a driver ConsistencyLevel value) instead of this rule."""

    def __init__(self, session, cfg: Config, consistency: int | None = None) -> None:
        self.session = session
        self.cfg = cfg
        self.consistency = consistency
        self.disappeared: list[tuple[str, int]] = []  # (table, generation start µs), drained by the caller
        self._vnode_streams: dict[int, tuple[bytes, ...]] = {}
        self._tablet_streams: dict[tuple[str, int], tuple[bytes, ...]] = {}
        self._mode: dict[str, bool] = {}
        self._seen: dict[str, set[int]] = {}
        self._reported: dict[tuple[str, int], str] = {}  # incomplete sets already warned about
        self._level_logged: int | None = None
        ks = cfg.scylla.cdc_metadata_keyspace
        tks = cfg.scylla.tablets_metadata_keyspace
        self._q_gen_times = f"SELECT time FROM {ks}.cdc_generation_timestamps WHERE key = 'timestamps'"
        self._q_gen_streams = f"SELECT range_end, streams FROM {ks}.cdc_streams_descriptions_v2 WHERE time = %s"
        self._q_tab_times = f"SELECT timestamp FROM {tks}.cdc_timestamps WHERE keyspace_name = %s AND table_name = %s"
        self._q_tab_streams = (f"SELECT stream_id FROM {tks}.cdc_streams WHERE keyspace_name = %s AND "
                               f"table_name = %s AND timestamp = %s AND stream_state = 0")
        self._q_options = (f"SELECT extensions FROM {cdc_options_keyspace(cfg)}.tables "
                           f"WHERE keyspace_name = %s AND table_name = %s")

    # ------------------------------------------------------------------ reads
    def metadata_consistency(self) -> int:
        from cassandra import ConsistencyLevel

        if self.consistency is not None:
            level = self.consistency
        else:
            hosts = len(self.session.cluster.metadata.all_hosts())
            level = ConsistencyLevel.QUORUM if hosts > 1 else ConsistencyLevel.ONE
        if level != self._level_logged:
            self._level_logged = level
            log.debug("reading CDC generation metadata at %s", ConsistencyLevel.value_to_name.get(level, level))
        return level

    def _query(self, cql: str, params: tuple = ()):
        from cassandra.query import SimpleStatement

        return self.session.execute(SimpleStatement(cql, consistency_level=self.metadata_consistency()), params)

    def uses_tablets(self, table: TableConfig) -> bool:
        """Scylla says so in system_schema.scylla_keyspaces; elsewhere (and as a fallback) a
        table with rows in the tablets stream tables is a tablets table. Only a definite answer
        is cached: a failed read raises (the caller polls again), it never becomes "vnodes"."""
        from cassandra import InvalidRequest

        if table.name in self._mode:
            return self._mode[table.name]
        try:
            row = self._query("SELECT initial_tablets FROM system_schema.scylla_keyspaces "
                              "WHERE keyspace_name = %s", (table.keyspace,)).one()
        except InvalidRequest:  # no such table: not Scylla (or an old one)
            row = None
        if row is not None and row[0] is not None:
            self._mode[table.name] = True
            return True
        try:
            has_sets = self._query(self._q_tab_times + " LIMIT 1", (table.keyspace, table.table)).one() is not None
        except InvalidRequest:  # no tablets metadata tables at all: a vnodes-only cluster
            self._mode[table.name] = False
            return False
        if has_sets:
            self._mode[table.name] = True
        # No stream set yet: vnodes for now, asked again next poll (a tablets table may be new).
        return has_sets

    def cdc_ttl_seconds(self, table: TableConfig) -> int:
        """The table's CDC TTL in seconds, read from its schema each time (ALTER TABLE may change
        it): 0 = log rows never expire; 86400 (Scylla's default) when CDC was enabled without a
        ttl. Raises CdcNotEnabled when the schema has no enabled cdc options for the table, and
        the driver's error when the read fails."""
        row = self._query(self._q_options, (table.keyspace, table.table)).one()
        if row is None:
            raise CdcNotEnabled(f"{table.name}: no such table in {cdc_options_keyspace(self.cfg)}.tables")
        blob = (row[0] or {}).get("cdc")
        if blob is None:
            raise CdcNotEnabled(f"{table.name}: CDC is not enabled (no cdc options in its schema)")
        try:
            return cdc_ttl_from_options(decode_cdc_extension(blob))
        except CdcNotEnabled:
            raise CdcNotEnabled(f"{table.name}: CDC is not enabled") from None

    # ------------------------------------------------------------------ generations
    def generations(self, table: TableConfig, now_us: int | None = None) -> list[Generation]:
        """Every generation of the table, oldest first, each with its end once the next is known,
        up to (not including) the first whose stream set cannot be read whole yet."""
        import time

        tablets = self.uses_tablets(table)
        if tablets:
            rows = self._query(self._q_tab_times, (table.keyspace, table.table))
        else:
            rows = self._query(self._q_gen_times)
        times = sorted({micros(r[0]) for r in rows})
        self._note_disappeared(table.name, times)
        gens = []
        for i, t in enumerate(times):
            end = times[i + 1] if i + 1 < len(times) else None
            streams, problem = self._tablet_set(table, t) if tablets else self._vnode_set(t)
            if problem is None:
                if self._reported.pop((table.name, t), None) is not None:
                    log.info("%s: stream set of generation %s is now complete", table.name, as_datetime(t))
                gens.append(Generation(table.name, t, end, streams, tablets))
                continue
            now = time.time_ns() // 1000 if now_us is None else now_us
            if end is not None and self._expired(table, end, now):
                self._report(table.name, t, "expired", logging.WARNING,
                             "%s: generation %s cannot be read (%s) but ended before the CDC TTL: nothing of "
                             "it is left to read; skipped", problem)
                continue
            self._report(table.name, t, problem, logging.WARNING,
                         "%s: stream set of generation %s is not complete (%s); it and later generations wait "
                         "for the next poll", problem)
            break
        return gens

    def drain_disappeared(self) -> list[tuple[str, int]]:
        """The (table, generation start µs) seen earlier and missing from the metadata since the
        last call; for a metric. Each disappearance is reported once (and again if it recurs)."""
        out, self.disappeared = self.disappeared, []
        return out

    def _expired(self, table: TableConfig, end_us: int, now_us: int) -> bool:
        from relay.positions import oldest_live_us

        oldest = oldest_live_us(now_us, self.cdc_ttl_seconds(table))
        return oldest is not None and end_us < oldest

    def _report(self, table: str, t: int, problem: str, level: int, msg: str, *args) -> None:
        if self._reported.get((table, t)) != problem:  # once per distinct problem, not every poll
            self._reported[(table, t)] = problem
            log.log(level, msg, table, as_datetime(t), *args)

    def _note_disappeared(self, table: str, times: list[int]) -> None:
        now = set(times)
        before = self._seen.get(table)
        self._seen[table] = now
        if not before:
            return
        for t in sorted(before - now):
            log.warning("%s: CDC generation %s disappeared from the generation metadata (truncated or "
                        "garbage-collected?); any of its data not yet relayed cannot be read", table, as_datetime(t))
            self.disappeared.append((table, t))
            self._tablet_streams.pop((table, t), None)  # if it comes back, read it afresh
            self._vnode_streams.pop(t, None)
            self._reported.pop((table, t), None)

    def _vnode_set(self, t: int) -> tuple[tuple[bytes, ...], str | None]:
        cached = self._vnode_streams.get(t)
        if cached is not None:
            return cached, None
        rows = [(end, tuple(streams or ())) for end, streams in self._query(self._q_gen_streams, (as_datetime(t),))]
        problem = vnode_set_problem(rows)
        if problem is not None:
            return (), problem
        streams = tuple(sorted(s for _, group in rows for s in group))
        self._vnode_streams[t] = streams
        return streams, None

    def _tablet_set(self, table: TableConfig, t: int) -> tuple[tuple[bytes, ...], str | None]:
        key = (table.name, t)
        cached = self._tablet_streams.get(key)
        if cached is not None:
            return cached, None
        rows = self._query(self._q_tab_streams, (table.keyspace, table.table, as_datetime(t)))
        streams = tuple(sorted((r[0] for r in rows), key=stream_token))
        if not streams:
            return (), "no current streams"
        self._tablet_streams[key] = streams
        return streams, None

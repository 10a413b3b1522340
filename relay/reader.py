"""Reading one task's CDC log window (DESIGN §3): prepared `IN` queries, paged, rows
grouped into changes by (stream, cdc$time) up to `cdc$end_of_batch`.

Scylla refuses an `IN` on the partition key with more than 100 values
(`max_partition_key_restrictions_per_query`), and a vnode of a node with more than 100
shards has more than 100 streams. So a task's streams are split into `IN` lists of at
most `max_in_keys`; every stream sits in exactly one list, and a query returns each of
its streams whole and in cdc$time order, so per-stream order survives the split.
"""
from __future__ import annotations

import logging
import struct
from collections.abc import Iterator, Sequence

from relay.discovery import as_datetime
from relay.model import Change

log = logging.getLogger(__name__)

STREAM, TIME, SEQ, END = "cdc$stream_id", "cdc$time", "cdc$batch_seq_no", "cdc$end_of_batch"
METADATA = (STREAM, TIME, SEQ, END, "cdc$operation")
SCYLLA_MAX_IN_KEYS = 100  # Scylla's default max_partition_key_restrictions_per_query
IN_LIST_CACHE = 4096  # serialized IN lists kept (a worker's live groups need a few dozen)
_MS = struct.Struct(">q")


def log_table(table: str) -> str:
    ks, name = table.split(".", 1)
    return f'{ks}."{name}_scylla_cdc_log"'


def split_streams(streams: Sequence[bytes], max_in_keys: int) -> list[tuple[bytes, ...]]:
    """Consecutive, near-equal slices of at most `max_in_keys` streams (121 → 61 + 60, not 100 + 21:
    equal queries finish together). Order is kept; an empty task gives no query."""
    if max_in_keys < 1:
        raise ValueError("max_in_keys must be >= 1")
    n = len(streams)
    if n == 0:
        return []
    parts = -(-n // max_in_keys)
    size, extra = divmod(n, parts)
    out, i = [], 0
    for p in range(parts):
        j = i + size + (1 if p < extra else 0)
        out.append(tuple(streams[i:j]))
        i = j
    return out


class PendingRead:
    """A window's sub-queries, sent at once by `LogReader.start`; `read(..., future=)` collects them."""

    def __init__(self, streams: tuple[bytes, ...], futures: list) -> None:
        self.streams = streams
        self.futures = futures


class LogReader:
    def __init__(self, session, table: str, bypass_cache: str = "auto", fetch_size: int = 5000,
                 max_in_keys: int = SCYLLA_MAX_IN_KEYS, columns: Sequence[str] | None = None,
                 router=None) -> None:
        from cassandra import InvalidRequest
        from cassandra.protocol import SyntaxException

        if not 1 <= max_in_keys <= SCYLLA_MAX_IN_KEYS:
            raise ValueError(f"max_in_keys must be 1..{SCYLLA_MAX_IN_KEYS}")
        self.session = session
        self.table = table
        self.fetch_size = fetch_size
        self.max_in_keys = max_in_keys
        self.router = router
        self._in_lists: dict[tuple[bytes, ...], bytes] = {}
        base = (f'SELECT {self._select_list(columns)} FROM {log_table(table)} WHERE "cdc$stream_id" IN ? '
                f'AND "cdc$time" >= minTimeuuid(?) AND "cdc$time" < minTimeuuid(?)')
        self.stmt = None
        if bypass_cache in ("auto", "true"):
            driver_log = logging.getLogger("cassandra.cluster")
            level = driver_log.level
            # The probe fails on Cassandra; the driver would log that failure as an ERROR.
            driver_log.setLevel(logging.CRITICAL)
            try:
                # Scylla: don't let a one-pass scan of the log evict the hot cache.
                self.stmt = session.prepare(base + " BYPASS CACHE")
            except (SyntaxException, InvalidRequest):
                if bypass_cache == "true":
                    raise
            finally:
                driver_log.setLevel(level)
        if self.stmt is None:
            self.stmt = session.prepare(base)
        self.stmt.fetch_size = fetch_size
        from cassandra.query import PreparedStatement

        self._cache_lists = isinstance(self.stmt, PreparedStatement)

    def _select_list(self, columns: Sequence[str] | None) -> str:
        """The CDC metadata plus the columns the mapping reads, not `*`: a wide outbox row's other
        columns cost network and decoding for nothing. A mapped column the log does not have is left
        out (the mapping sees null, as with `*`).

        Timeuuids and uuids are fetched as the server renders them, not as the driver decodes them:
        `cdc$time` as its 16 bytes (`timeuuidAsBlob`), a mapped uuid column as its text (`CAST … AS
        text`, what the mapping would make of it anyway). The driver builds a `uuid.UUID` per value,
        about 3 µs of Python each, which was a third of the cost of reading a row. Scylla has both
        functions (typeAsBlob for every native type; cast from uuid/timeuuid to text)."""
        if columns is None:
            return "*"
        from relay.connect import table_metadata

        ks, name = self.table.split(".", 1)
        try:
            known = self.session.cluster.metadata.keyspaces[ks].tables[f"{name}_scylla_cdc_log"].columns
        except (KeyError, AttributeError):
            meta = table_metadata(self.session, f"{ks}.{name}_scylla_cdc_log")  # created after the session
            if meta is None:
                return "*"  # no such log table (yet): the server says so when the statement is prepared
            known = meta.columns
        wanted = list(METADATA) + [c for c in columns if c not in METADATA]
        missing = [c for c in wanted if c not in known]
        if missing:
            log.warning("%s: the CDC log has no column(s) %s; they read as null", self.table, ", ".join(missing))
        return ", ".join(_selector(c, str(known[c].cql_type)) for c in wanted if c in known)

    def _params(self, part: tuple[bytes, ...], start_us: int, end_us: int) -> tuple:
        return list(part), as_datetime(start_us), as_datetime(end_us)

    def start(self, streams: tuple[bytes, ...], start_us: int, end_us: int) -> PendingRead:
        """Send the first page request of every sub-query now; `read(..., future=)` collects them later."""
        parts = split_streams(streams, self.max_in_keys)
        return PendingRead(tuple(streams), [self.session.execute_async(self._bind(p, start_us, end_us))
                                            for p in parts])

    def _bind(self, part: tuple[bytes, ...], start_us: int, end_us: int):
        from cassandra.query import BoundStatement

        # Live reads send the same stream lists every grid step: their serialized IN list is kept, and
        # only the two bounds (timestamps: int64 ms, as minTimeuuid takes them) are encoded per query.
        in_list = self._in_lists.get(part) if self._cache_lists else None
        if in_list is None:
            bound = self.stmt.bind(self._params(part, start_us, end_us))
            if len(self._in_lists) >= IN_LIST_CACHE:
                self._in_lists.clear()
            self._in_lists[part] = bound.values[0]
        else:
            bound = BoundStatement(self.stmt)
            bound.raw_values = (part, start_us, end_us)
            bound.values = [in_list, _MS.pack(start_us // 1000), _MS.pack(end_us // 1000)]
        if self.router is not None:
            self.router.route(bound, part[0])  # an IN has no routing key of its own; its streams share replicas
        return bound

    def read_pages(self, streams: tuple[bytes, ...], start_us: int, end_us: int,
                   future: PendingRead | None = None) -> Iterator[tuple[tuple[str, ...], list]]:
        """The rows with start <= cdc$time < end (ms bounds, as minTimeuuid takes), in stream order,
        page by page: (the page's column names, its rows as tuples). The worker maps rows straight
        from pages (relay.mapping.Mapper.map_pages): a Change object per CDC group cost more than
        mapping the row. Each page carries its own names: ALTER TABLE may change them mid-read."""
        # A handle started for other streams (the task changed in between) is not used: read afresh.
        if future is not None and future.streams == tuple(streams):
            results = (f.result() for f in future.futures)
        else:
            results = (self.session.execute(self._bind(p, start_us, end_us))
                       for p in split_streams(streams, self.max_in_keys))
        for rs in results:
            while True:
                yield tuple(rs.column_names), rs.current_rows
                if not rs.has_more_pages:
                    break
                rs.fetch_next_page()

    def read(self, streams: tuple[bytes, ...], start_us: int, end_us: int,
             future: PendingRead | None = None) -> Iterator[Change]:
        """The same rows grouped into changes (one CDC group each), for tools and tests."""
        return self._changes(self.read_pages(streams, start_us, end_us, future))

    def _changes(self, pages: Iterator[tuple[tuple[str, ...], list]]) -> Iterator[Change]:
        """Rows as changes. A group may span pages, never sub-queries (its stream is in one).

        Rows stay the driver's tuples, with the page's column names beside them (`Change.columns`)."""
        group: list = []
        names: tuple[str, ...] | None = None  # the columns of the rows in `group`
        key: tuple[bytes, object] | None = None
        for page_names, page_rows in pages:
            si, ti, ei = page_names.index(STREAM), page_names.index(TIME), page_names.index(END)
            for raw in page_rows:
                row_key = (raw[si], raw[ti])
                if key is not None and row_key != key and group:
                    log.warning("%s: CDC group %s ended without cdc$end_of_batch", self.table, key[1])
                    yield _change(key, group, names)
                    group = []
                if group and names != page_names:  # the schema changed inside a group: name every row
                    group = [r if isinstance(r, dict) else dict(zip(names, r, strict=False)) for r in group]
                    raw = dict(zip(page_names, raw, strict=False))
                    names = None
                elif not group:
                    names = page_names
                elif names is None:
                    raw = dict(zip(page_names, raw, strict=False))
                key = row_key
                group.append(raw)
                if raw[END] if isinstance(raw, dict) else raw[ei]:
                    yield _change(key, group, names)
                    group, key = [], None
        if group and key is not None:
            log.warning("%s: CDC group %s ended without cdc$end_of_batch", self.table, key[1])
            yield _change(key, group, names)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _selector(column: str, cql_type: str) -> str:
    """How one column is fetched (see LogReader._select_list); it keeps its name in the result."""
    if column == TIME and cql_type == "timeuuid":
        return f"timeuuidAsBlob({_quote(column)}) AS {_quote(column)}"
    if cql_type in ("uuid", "timeuuid"):
        return f"CAST({_quote(column)} AS text) AS {_quote(column)}"
    return _quote(column)


def _change(key: tuple, group: list, names: tuple[str, ...] | None) -> Change:
    return Change(key[0], key[1], tuple(group), columns=names)  # type: ignore[arg-type]

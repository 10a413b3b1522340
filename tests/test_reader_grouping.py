"""`relay.reader.LogReader.read` (DESIGN §3): paged reads grouped into Changes.

Most tests use a fake session/result set (pure logic); the last ones read an emulated CDC
log on the real Cassandra of the local stack.
"""
from __future__ import annotations

import dataclasses
import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from harness import outbox_ddl, write_config

from relay import timeuuid
from relay.model import cdc_time_bytes
from relay.reader import LogReader, log_table

S1 = bytes.fromhex("11" * 16)
S2 = bytes.fromhex("22" * 16)
T1, T2, T3 = (timeuuid.from_micros(1_767_225_600_000_000 + i * 1000) for i in range(3))
NAMES = ["cdc$stream_id", "cdc$time", "cdc$batch_seq_no", "cdc$end_of_batch", "cdc$operation", "id", "payload"]


# --------------------------------------------------------------------------- fakes

@dataclass
class FakePrepared:
    query: str
    fetch_size: int | None = None

    def bind(self, params):
        return FakeBound(self, tuple(params))


@dataclass
class FakeBound:
    prepared: FakePrepared
    params: tuple
    values: tuple = ()

    def __post_init__(self):
        self.values = self.params


@dataclass
class FakeResultSet:
    """Pages of (column_names, rows), like the driver's ResultSet with tuple_factory."""

    pages: list[tuple[list[str], list[tuple]]]
    index: int = 0
    fetches: int = 0

    @property
    def column_names(self) -> list[str]:
        return self.pages[self.index][0]

    @property
    def current_rows(self) -> list[tuple]:
        return self.pages[self.index][1]

    @property
    def has_more_pages(self) -> bool:
        return self.index + 1 < len(self.pages)

    def fetch_next_page(self) -> None:
        assert self.has_more_pages, "fetch_next_page called after the last page"
        self.index += 1
        self.fetches += 1


@dataclass
class FakeSession:
    pages: list[tuple[list[str], list[tuple]]]
    reject_bypass_cache: bool = False
    prepared: list[str] = field(default_factory=list)
    executed: list[tuple] = field(default_factory=list)
    result: FakeResultSet | None = None

    def prepare(self, query: str) -> FakePrepared:
        self.prepared.append(query)
        if self.reject_bypass_cache and "BYPASS CACHE" in query:
            from cassandra.protocol import SyntaxException

            raise SyntaxException(0x2000, "line 1:200 no viable alternative at input 'BYPASS'", None)
        return FakePrepared(query)

    def execute(self, bound):
        stmt, params = bound.prepared, bound.params
        self.executed.append((stmt, params))
        self.result = FakeResultSet(self.pages)
        return self.result


def r(stream: bytes, time: uuid.UUID, seq: int, end: bool | None, op: int = 2, eid: str = "", payload=b"p"):
    return (stream, time, seq, end, op, eid or f"{stream.hex()[:2]}-{time.time}-{seq}", payload)


def read_all(pages, streams=(S1, S2), start_us=1_000_000_000, end_us=2_000_000_000, **kw):
    session = FakeSession(pages, **kw)
    reader = LogReader(session, "shop.outbox")
    changes = list(reader.read(streams, start_us, end_us))
    return session, reader, changes


def shape(changes) -> list[tuple[bytes, uuid.UUID, list[int]]]:
    return [(c.stream_id, c.cdc_time, [row["cdc$batch_seq_no"] for row in as_dicts(c)]) for c in changes]


def as_dicts(change) -> list[dict]:
    return list(change.dict_rows)


# --------------------------------------------------------------------------- query

def test_query_shape_and_parameters():
    session, reader, changes = read_all([(NAMES, [])], streams=(S1, S2), start_us=1_767_225_600_000_000,
                                        end_us=1_767_225_610_000_000)
    assert changes == []
    q = session.prepared[0]
    assert f"FROM {log_table('shop.outbox')} " in q and log_table("shop.outbox") == 'shop."outbox_scylla_cdc_log"'
    assert '"cdc$stream_id" IN ?' in q
    assert '"cdc$time" >= minTimeuuid(?)' in q and '"cdc$time" < minTimeuuid(?)' in q
    assert q.endswith(" BYPASS CACHE")
    assert reader.stmt.fetch_size == 5000
    (stmt, params), = session.executed
    assert stmt is reader.stmt
    assert params == ([S1, S2], datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, 0, 0, 10, tzinfo=UTC))


def test_bypass_cache_falls_back_when_the_server_rejects_it():
    session = FakeSession([(NAMES, [])], reject_bypass_cache=True)
    reader = LogReader(session, "shop.outbox", bypass_cache="auto", fetch_size=100)
    assert len(session.prepared) == 2 and session.prepared[0].endswith(" BYPASS CACHE")
    assert "BYPASS CACHE" not in reader.stmt.query
    assert reader.stmt.fetch_size == 100


def test_bypass_cache_false_never_asks_for_it():
    session = FakeSession([(NAMES, [])])
    reader = LogReader(session, "shop.outbox", bypass_cache="false")
    assert session.prepared == [reader.stmt.query] and "BYPASS" not in reader.stmt.query


def test_bypass_cache_true_insists():
    from cassandra.protocol import SyntaxException

    with pytest.raises(SyntaxException):
        LogReader(FakeSession([(NAMES, [])], reject_bypass_cache=True), "shop.outbox", bypass_cache="true")


# --------------------------------------------------------------------------- grouping

def test_groups_over_several_pages():
    pages = [
        (NAMES, [r(S1, T1, 0, True), r(S1, T2, 0, None), r(S1, T2, 1, True)]),
        (NAMES, [r(S1, T3, 0, True)]),
        (NAMES, [r(S2, T1, 0, None), r(S2, T1, 1, None), r(S2, T1, 2, True), r(S2, T2, 0, True)]),
    ]
    session, _, changes = read_all(pages)
    assert shape(changes) == [(S1, T1, [0]), (S1, T2, [0, 1]), (S1, T3, [0]), (S2, T1, [0, 1, 2]), (S2, T2, [0])]
    assert session.result.fetches == 2
    # Rows are decoded into column name -> value.
    assert changes[3].dict_rows[2]["id"] == r(S2, T1, 2, True)[5]
    assert changes[3].dict_rows[2]["cdc$end_of_batch"] is True


def test_group_split_across_a_page_boundary():
    pages = [
        (NAMES, [r(S1, T1, 0, True), r(S1, T2, 0, None), r(S1, T2, 1, None)]),
        (NAMES, [r(S1, T2, 2, None)]),
        (NAMES, [r(S1, T2, 3, True), r(S1, T3, 0, True)]),
    ]
    _, _, changes = read_all(pages)
    assert shape(changes) == [(S1, T1, [0]), (S1, T2, [0, 1, 2, 3]), (S1, T3, [0])]


def test_column_names_change_between_pages():
    """ALTER TABLE ... ADD mid-read: the second page has a new column, in a different position."""
    names2 = ["cdc$stream_id", "cdc$time", "cdc$batch_seq_no", "cdc$end_of_batch", "cdc$operation", "tenant", "id",
              "payload"]
    pages = [
        (NAMES, [r(S1, T1, 0, True, eid="e1"), r(S1, T2, 0, None, eid="e2")]),
        (names2, [(S1, T2, 1, True, 2, "acme", "e3", b"q"), (S1, T3, 0, True, 2, "globex", "e4", b"z")]),
    ]
    _, _, changes = read_all(pages)
    assert shape(changes) == [(S1, T1, [0]), (S1, T2, [0, 1]), (S1, T3, [0])]
    first, second = changes[1].dict_rows
    assert first["id"] == "e2" and "tenant" not in first
    assert second["id"] == "e3" and second["tenant"] == "acme" and second["payload"] == b"q"
    assert changes[2].dict_rows[0] == {"cdc$stream_id": S1, "cdc$time": T3, "cdc$batch_seq_no": 0,
                                  "cdc$end_of_batch": True, "cdc$operation": 2, "tenant": "globex", "id": "e4",
                                  "payload": b"z"}


def test_group_missing_end_of_batch_is_closed_by_the_next_group(caplog):
    pages = [(NAMES, [r(S1, T1, 0, None), r(S1, T1, 1, None), r(S1, T2, 0, True)])]
    with caplog.at_level(logging.WARNING, logger="relay.reader"):
        _, _, changes = read_all(pages)
    assert shape(changes) == [(S1, T1, [0, 1]), (S1, T2, [0])]
    assert any("without cdc$end_of_batch" in rec.getMessage() for rec in caplog.records)


def test_group_missing_end_of_batch_at_a_stream_change():
    pages = [(NAMES, [r(S1, T1, 0, None)]), (NAMES, [r(S2, T1, 0, True)])]
    _, _, changes = read_all(pages)
    assert shape(changes) == [(S1, T1, [0]), (S2, T1, [0])]


def test_last_group_missing_end_of_batch_is_still_returned(caplog):
    pages = [(NAMES, [r(S1, T1, 0, True), r(S1, T2, 0, None)]), (NAMES, [r(S1, T2, 1, False)])]
    with caplog.at_level(logging.WARNING, logger="relay.reader"):
        _, _, changes = read_all(pages)
    assert shape(changes) == [(S1, T1, [0]), (S1, T2, [0, 1])]
    assert sum("without cdc$end_of_batch" in rec.getMessage() for rec in caplog.records) == 1


def test_empty_pages_in_between():
    pages = [(NAMES, [r(S1, T1, 0, None)]), (NAMES, []), (NAMES, [r(S1, T1, 1, True)]), (NAMES, [])]
    session, _, changes = read_all(pages)
    assert shape(changes) == [(S1, T1, [0, 1])]
    assert session.result.fetches == 3


def test_read_is_lazy_per_page():
    """Changes of page 1 are available before page 2 is fetched (a window is not held in memory)."""
    pages = [(NAMES, [r(S1, T1, 0, True)]), (NAMES, [r(S1, T2, 0, True)])]
    session = FakeSession(pages)
    it = LogReader(session, "shop.outbox").read((S1,), 0, 1000)
    first = next(it)
    assert first.cdc_time == T1 and session.result.fetches == 0
    assert [c.cdc_time for c in it] == [T2]


# --------------------------------------------------------------------------- real Cassandra

@pytest.fixture
def real(cql, keyspace, emulator, tmp_path):
    from relay import config, connect
    from relay.testing import now_micros

    cql.execute(outbox_ddl(keyspace))
    base = (now_micros() // 1_000_000 - 30) * 1_000_000  # a whole second, 30 s ago
    emulator.open_generation(start=base - 60_000_000, vnodes=8, shards=2, seed=11)
    emulator.enable_cdc(f"{keyspace}.outbox")
    cfg = config.load(write_config(tmp_path / "relay.toml", keyspace))
    session = connect.cql_session(cfg)
    yield emulator, f"{keyspace}.outbox", base, LogReader(session, f"{keyspace}.outbox", cfg.scylla.bypass_cache,
                                                          fetch_size=2)
    session.cluster.shutdown()


def count_pages(reader: LogReader) -> dict[str, int]:
    """Count fetch_next_page calls on the real driver's result sets."""
    counter = {"fetched": 0}
    session = reader.session

    class Counting:
        def prepare(self, *a, **kw):
            return session.prepare(*a, **kw)

        def execute(self, *a, **kw):
            rs = session.execute(*a, **kw)
            fetch = rs.fetch_next_page

            def counted():
                counter["fetched"] += 1
                fetch()

            rs.fetch_next_page = counted
            return rs

    reader.session = Counting()
    return counter


def test_real_groups_in_batch_seq_no_order(real):
    from relay.testing import OP_INSERT, OP_UPDATE, Op

    emu, table, base, reader = real
    ids = [timeuuid.from_micros(base - i * 1000) for i in range(4)]  # descending: clustering order != op order
    ops = [Op(OP_INSERT, {"aggregate_id": "agg-1", "id": ids[0]}, {"event_type": "a", "payload": b"0"}),
           Op(OP_INSERT, {"aggregate_id": "agg-1", "id": ids[1]}, {"event_type": "b", "payload": b"1"}),
           Op(OP_UPDATE, {"aggregate_id": "agg-1", "id": ids[0]}, {"event_type": "c"}),
           Op(OP_INSERT, {"aggregate_id": "agg-1", "id": ids[2]}, {"event_type": "d", "payload": b"3"})]
    t_group = emu.write_group(table, ops, timestamp=base + 1000)
    t_single = emu.insert(table, {"aggregate_id": "agg-1", "id": ids[3], "event_type": "e", "payload": b"4"},
                          timestamp=base + 2000)
    t_other = emu.write_group(table, [
        Op(OP_INSERT, {"aggregate_id": "agg-2", "id": ids[0]}, {"event_type": "x", "payload": b"x"}),
        Op(OP_INSERT, {"aggregate_id": "agg-2", "id": ids[1]}, {"event_type": "y", "payload": b"y"}),
    ], timestamp=base + 1500)
    s1 = emu.stream_for(table, {"aggregate_id": "agg-1"}, base)
    s2 = emu.stream_for(table, {"aggregate_id": "agg-2"}, base)
    streams = tuple(dict.fromkeys([s1, s2]))

    pages = count_pages(reader)
    changes = list(reader.read(streams, base, base + 10_000))  # fetch_size 2: groups span pages
    assert pages["fetched"] >= 3, "the window should have been read in several pages"

    by_time = {c.cdc_time: c for c in changes}
    assert set(by_time) == {t_group, t_single, t_other}
    assert len(changes) == 3
    group = by_time[t_group]
    assert group.stream_id == s1
    assert [row["cdc$batch_seq_no"] for row in group.dict_rows] == [0, 1, 2, 3]
    assert [row["cdc$operation"] for row in group.dict_rows] == [OP_INSERT, OP_INSERT, OP_UPDATE, OP_INSERT]
    assert [row["event_type"] for row in group.dict_rows] == ["a", "b", "c", "d"]
    assert [row["id"] for row in group.dict_rows] == [ids[0], ids[1], ids[0], ids[2]]
    assert [bool(row["cdc$end_of_batch"]) for row in group.dict_rows] == [False, False, False, True]
    assert all(row["cdc$time"] == t_group and row["cdc$stream_id"] == s1 for row in group.dict_rows)
    assert [row["event_type"] for row in by_time[t_other].dict_rows] == ["x", "y"]
    assert by_time[t_other].stream_id == s2
    assert [row["payload"] for row in by_time[t_single].dict_rows] == [b"4"]
    # Within a stream, changes come in cdc$time order.
    s1_times = [timeuuid.to_micros(c.cdc_time) for c in changes if c.stream_id == s1]
    assert s1_times == sorted(s1_times) == [base + 1000, base + 2000]


def test_real_window_is_start_inclusive_end_exclusive_in_ms(real):
    emu, table, base, reader = real
    start, end = base + 5_000, base + 9_000  # whole milliseconds
    offsets = {"before": start - 1000, "at_start": start, "just_after_start": start + 1,
               "last_us_before_end": end - 1, "at_end": end, "after_end": end + 1000}
    times = {}
    for name, ts in offsets.items():
        times[name] = emu.insert(table, {"aggregate_id": "agg-w", "id": timeuuid.from_micros(ts), "event_type": name,
                                         "payload": name.encode()}, timestamp=ts)
    stream = emu.stream_for(table, {"aggregate_id": "agg-w"}, start)

    changes = list(reader.read((stream,), start, end))

    got = [c.dict_rows[0]["event_type"] for c in changes]
    assert got == ["at_start", "just_after_start", "last_us_before_end"]
    assert [c.cdc_time for c in changes] == [times[n] for n in got]
    # The next window picks up exactly where this one stopped.
    assert [c.dict_rows[0]["event_type"] for c in reader.read((stream,), end, end + 2000)] == ["at_end", "after_end"]
    assert [c.dict_rows[0]["event_type"] for c in reader.read((stream,), start - 1000, start)] == ["before"]


def test_real_routed_reader_with_only_mapped_columns_reads_what_select_star_reads(real):
    """The live path (routed, only the mapping's columns, IN lists serialized once and reused) returns the
    same changes, rows and values as a plain `SELECT *` reader, on the second read as on the first."""
    from relay.routing import Router

    emu, table, base, plain = real
    ks, name = table.split(".")
    for i in range(40):
        agg = f"agg-{i % 7}"
        emu.insert(table, {"aggregate_id": agg, "id": timeuuid.from_micros(base + i * 1000), "event_type": f"e{i}",
                           "payload": f"p{i}".encode()}, timestamp=base + i * 1000)
    streams = tuple(sorted({emu.stream_for(table, {"aggregate_id": f"agg-{i}"}, base) for i in range(7)}))
    router = Router(plain.session, ks, f"{name}_scylla_cdc_log")
    lean = LogReader(plain.session, table, "auto", fetch_size=3, max_in_keys=2, router=router,
                     columns=("aggregate_id", "event_type", "payload", "no_such_column"))
    assert len({router.replica_set(s) for s in streams}) == 1, "one node: one replica set"
    assert router.replica_set(streams[0]) == {str(h.host_id) for h in plain.session.cluster.metadata.all_hosts()}, \
        "the driver knows the keyspace's replication: reads are routed"

    def view(changes, cols=("aggregate_id", "event_type", "payload", "cdc$batch_seq_no")):
        return [(c.stream_id, cdc_time_bytes(c.cdc_time), [tuple(row.get(k) for k in cols) for row in c.dict_rows])
                for c in changes]

    want = view(plain.read(streams, base, base + 40_000))
    assert len(want) == 40
    for _ in range(2):
        assert view(lean.read(streams, base, base + 40_000, lean.start(streams, base, base + 40_000))) == want
    row = lean.read(streams, base, base + 1000).__next__().dict_rows[0]
    assert "cdc$operation" in row and "id" not in row, "only the CDC metadata and the mapped columns are read"
    # cdc$time comes as the timeuuid's bytes, a mapped uuid column as its text: what the mapping makes of them.
    assert type(lean.read(streams, base, base + 1000).__next__().cdc_time) is bytes
    with_id = LogReader(plain.session, table, "auto", columns=("id", "aggregate_id"))
    ids = [r["id"] for c in with_id.read(streams, base, base + 40_000) for r in c.dict_rows]
    assert ids == [str(r["id"]) for c in plain.read(streams, base, base + 40_000) for r in c.dict_rows]
    assert len(ids) == 40 and all(type(i) is str for i in ids)


def test_real_session_loads_only_relays_metadata_and_a_later_table_is_still_routed_and_narrowed(
        cql, keyspace, emulator, tmp_path, made):
    """relay's sessions skip the driver's whole-cluster schema (relay.connect.load_metadata): they know
    relay's keyspace and the configured tables, not other keyspaces; a table and a keyspace created
    after the session started still get their log's columns and replicas."""
    from relay import config, connect
    from relay.routing import Router
    from relay.testing import now_micros

    other = f"{keyspace}_other"
    made.keyspaces.add(other)
    cfg = config.load(write_config(tmp_path / "relay.toml", keyspace))
    cfg = dataclasses.replace(cfg, tables=[dataclasses.replace(cfg.tables[0], name=f"{other}.outbox")])
    session = connect.cql_session(cfg)  # before the table's keyspace exists
    try:
        known = session.cluster.metadata.keyspaces
        assert keyspace in known and other not in known
        assert "system_schema" not in known, "not the whole cluster's schema"
        cql.execute(f"CREATE KEYSPACE {other} WITH replication = "
                    "{'class': 'SimpleStrategy', 'replication_factor': 1}")
        cql.execute(outbox_ddl(other))
        base = (now_micros() // 1_000_000 - 30) * 1_000_000
        emulator.open_generation(start=base - 60_000_000, vnodes=4, shards=1, seed=5)
        emulator.enable_cdc(f"{other}.outbox")
        emulator.insert(f"{other}.outbox", {"aggregate_id": "a1", "id": timeuuid.from_micros(base), "event_type": "e",
                                           "payload": b"p"}, timestamp=base)
        stream = emulator.stream_for(f"{other}.outbox", {"aggregate_id": "a1"}, base)
        router = Router(session, other, "outbox_scylla_cdc_log")
        assert router.replica_set(stream) == {str(h.host_id) for h in session.cluster.metadata.all_hosts()}
        reader = LogReader(session, f"{other}.outbox", "auto", router=router, columns=("aggregate_id", "payload"))
        assert "SELECT *" not in reader.stmt.query_string
        [change] = list(reader.read((stream,), base, base + 1000))
        assert change.dict_rows[0]["aggregate_id"] == "a1" and "event_type" not in change.dict_rows[0]
    finally:
        session.cluster.shutdown()

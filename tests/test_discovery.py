"""Discovery (issue 7 items 7 and 8): the CDC TTL as Scylla stores it, stream sets that are
cached only when whole, the consistency of metadata reads, disappeared generations.

The pure parts run against a fake session; the last tests go through the real driver to
the real Cassandra, with the emulator publishing the metadata the way Scylla does.
"""
from __future__ import annotations

import logging
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from cassandra import ConsistencyLevel, InvalidRequest, OperationTimedOut
from harness import outbox_ddl, write_config

from relay import config
from relay.config import TableConfig
from relay.discovery import (
    SCYLLA_DEFAULT_CDC_TTL,
    CdcNotEnabled,
    Discovery,
    cdc_options_keyspace,
    cdc_ttl_from_options,
    decode_cdc_extension,
    micros,
    vnode_set_problem,
)
from relay.streams import make_stream_id
from relay.testing.emulator import encode_cdc_extension, scylla_cdc_options

TABLE = TableConfig(name="shop.outbox")
T0 = 1_767_225_600_000_000  # 2026-01-01, µs
HOUR = 3_600_000_000


def cfg(metadata_keyspace: str = "meta"):
    return config.load(None, environ={"RELAY_KAFKA__BOOTSTRAP_SERVERS": "k:9092",
                                      "RELAY_SCYLLA__CDC_METADATA_KEYSPACE": metadata_keyspace,
                                      "RELAY_SCYLLA__TABLETS_METADATA_KEYSPACE": metadata_keyspace})


def vnode_rows(vnodes: int = 4, shards: int = 2, seed: int = 0) -> list[tuple[int, frozenset]]:
    """(range_end, streams) rows as Scylla writes them: row i by range_end holds vnode index i."""
    ends = [-(2**62) + i * (2**61) for i in range(vnodes)]
    rows = []
    for i, end in enumerate(ends):
        rows.append((end, frozenset(make_stream_id(end - 100 * (j + 1), i, seed * 1000 + i * 10 + j)
                                    for j in range(shards))))
    return rows


# --------------------------------------------------------------------------- pure: stream sets

def test_vnode_set_problem_accepts_a_whole_set_in_any_row_order():
    rows = vnode_rows()
    assert vnode_set_problem(rows) is None
    assert vnode_set_problem(list(reversed(rows))) is None


def test_vnode_set_problem_finds_missing_rows_empty_sets_and_empty_rows():
    rows = vnode_rows(vnodes=5)
    assert "rows are missing" in vnode_set_problem(rows[:2] + rows[3:])
    assert "rows are missing" in vnode_set_problem(rows[1:])
    assert vnode_set_problem([]) == "no stream rows"
    assert "has no streams" in vnode_set_problem(rows[:2] + [(rows[2][0], frozenset())] + rows[3:])


def test_vnode_set_problem_cannot_judge_unversioned_ids():
    old = [(100, [b"\x00" * 8 + b"\x01" * 7 + b"\x10"]), (200, [b"\x00" * 7 + b"\x02" + b"\x00" * 8])]  # version 0
    assert vnode_set_problem(old) is None


# --------------------------------------------------------------------------- pure: CDC options

def test_cdc_extension_bytes_match_scyllas_serializer():
    # uint32 LE count, then uint32 LE length + bytes for each key and value, keys sorted.
    blob = encode_cdc_extension({"ttl": "0", "enabled": "true"})
    assert blob == (b"\x02\x00\x00\x00" + b"\x07\x00\x00\x00enabled" + b"\x04\x00\x00\x00true"
                    + b"\x03\x00\x00\x00ttl" + b"\x01\x00\x00\x000")
    assert decode_cdc_extension(blob) == {"enabled": "true", "ttl": "0"}
    full = scylla_cdc_options(3600)
    assert decode_cdc_extension(encode_cdc_extension(full)) == full
    assert decode_cdc_extension(b"\x00\x00\x00\x00") == {}


def test_cdc_extension_refuses_damaged_bytes():
    blob = encode_cdc_extension(scylla_cdc_options(3600))
    for bad in (blob[:-1], blob[:3], blob + b"\x00"):
        with pytest.raises(ValueError):
            decode_cdc_extension(bad)


def test_ttl_from_options():
    assert cdc_ttl_from_options(scylla_cdc_options(0)) == 0
    assert cdc_ttl_from_options(scylla_cdc_options(3600)) == 3600
    assert cdc_ttl_from_options({"enabled": "true"}) == SCYLLA_DEFAULT_CDC_TTL == 86400
    assert cdc_ttl_from_options({"enabled": "1", "ttl": "60"}) == 60
    for off in ({}, {"enabled": "false", "ttl": "60"}):
        with pytest.raises(CdcNotEnabled):
            cdc_ttl_from_options(off)
    with pytest.raises(ValueError):
        cdc_ttl_from_options({"enabled": "true", "ttl": "-1"})


def test_options_are_read_where_scylla_keeps_them_unless_the_metadata_is_emulated():
    assert cdc_options_keyspace(cfg("system_distributed")) == "system_schema"
    assert cdc_options_keyspace(cfg("emu_ks")) == "emu_ks"


# --------------------------------------------------------------------------- fake session

class Rows(list):
    def one(self):
        return self[0] if self else None


class FakeSession:
    """Answers discovery's queries from editable state; a value of an Exception is raised."""

    def __init__(self, hosts: int = 1) -> None:
        self.timestamps: list[int] | Exception = []
        self.streams: dict[int, list[tuple[int, frozenset]] | Exception] = {}
        self.ttl: int | None = 86400
        self.levels: list[int] = []
        self.stream_reads: list[int] = []
        self.cluster = SimpleNamespace(metadata=SimpleNamespace(all_hosts=lambda: [object()] * hosts))

    def execute(self, stmt, params=()):
        q = stmt.query_string
        self.levels.append(stmt.consistency_level)
        if "scylla_keyspaces" in q or "cdc_timestamps" in q:
            raise InvalidRequest("unconfigured table")
        if "cdc_generation_timestamps" in q:
            if isinstance(self.timestamps, Exception):
                raise self.timestamps
            return Rows((datetime.fromtimestamp(t / 1e6, tz=UTC).replace(tzinfo=None),) for t in self.timestamps)
        if "cdc_streams_descriptions_v2" in q:
            t = micros(params[0])
            self.stream_reads.append(t)
            value = self.streams.get(t, [])
            if isinstance(value, Exception):
                raise value
            return Rows(value)
        if ".tables" in q:
            if self.ttl is None:
                return Rows([({},)])
            return Rows([({"cdc": encode_cdc_extension(scylla_cdc_options(self.ttl))},)])
        raise AssertionError(q)


def discovery(session: FakeSession, **kw) -> Discovery:
    return Discovery(session, cfg(), **kw)


def starts(gens) -> list[tuple[int, int | None]]:
    return [(g.start_us, g.end_us) for g in gens]


def test_failed_stream_set_read_is_not_cached():
    s = FakeSession()
    s.timestamps = [T0, T0 + HOUR]
    s.streams = {T0: vnode_rows(seed=1), T0 + HOUR: OperationTimedOut("timed out")}
    d = discovery(s)
    with pytest.raises(OperationTimedOut):
        d.generations(TABLE, now_us=T0 + 2 * HOUR)
    s.streams[T0 + HOUR] = vnode_rows(seed=2)
    assert starts(d.generations(TABLE, now_us=T0 + 2 * HOUR)) == [(T0, T0 + HOUR), (T0 + HOUR, None)]
    reads = len(s.stream_reads)
    d.generations(TABLE, now_us=T0 + 2 * HOUR)
    assert len(s.stream_reads) == reads, "whole stream sets are cached"


@pytest.mark.parametrize("incomplete", ["empty", "partial"])
def test_incomplete_stream_set_waits_and_is_read_again(incomplete, caplog):
    s = FakeSession()
    whole = vnode_rows(vnodes=5, seed=2)
    s.timestamps = [T0, T0 + HOUR, T0 + 2 * HOUR]
    s.streams = {T0: vnode_rows(seed=1), T0 + HOUR: [] if incomplete == "empty" else whole[:2] + whole[3:],
                 T0 + 2 * HOUR: vnode_rows(seed=3)}
    d = discovery(s)
    with caplog.at_level(logging.WARNING, logger="relay.discovery"):
        first = d.generations(TABLE, now_us=T0 + 3 * HOUR)
        d.generations(TABLE, now_us=T0 + 3 * HOUR)
    # The generation before it ends where the incomplete one starts; nothing after it is offered.
    assert starts(first) == [(T0, T0 + HOUR)]
    assert sum("not complete" in r.getMessage() for r in caplog.records) == 1, "warned once, not every poll"
    assert s.stream_reads.count(T0 + HOUR) == 2, "re-read on every poll until whole"
    s.streams[T0 + HOUR] = whole
    assert starts(d.generations(TABLE, now_us=T0 + 3 * HOUR)) == [
        (T0, T0 + HOUR), (T0 + HOUR, T0 + 2 * HOUR), (T0 + 2 * HOUR, None)]


def test_incomplete_generation_skipped_only_when_its_data_has_expired():
    s = FakeSession()
    s.timestamps = [T0, T0 + HOUR]
    s.streams = {T0: [], T0 + HOUR: vnode_rows(seed=1)}
    s.ttl = 3600
    d = discovery(s)
    # Ended (at T0 + 1h) more than the TTL (1h) ago: nothing left to read there.
    assert starts(d.generations(TABLE, now_us=T0 + 2 * HOUR + 1)) == [(T0 + HOUR, None)]
    # Still within the TTL: wait for it.
    assert starts(discovery(s).generations(TABLE, now_us=T0 + 2 * HOUR - 1)) == []
    # TTL 0: log rows never expire, so it is never skipped.
    s.ttl = 0
    assert starts(discovery(s).generations(TABLE, now_us=T0 + 1000 * HOUR)) == []


def test_disappeared_generation_is_reported_once(caplog):
    s = FakeSession()
    s.timestamps = [T0, T0 + HOUR, T0 + 2 * HOUR]
    s.streams = {T0: vnode_rows(seed=1), T0 + HOUR: vnode_rows(seed=2), T0 + 2 * HOUR: vnode_rows(seed=3)}
    d = discovery(s)
    d.generations(TABLE)
    assert d.drain_disappeared() == []
    s.timestamps = [T0 + HOUR, T0 + 2 * HOUR]
    with caplog.at_level(logging.WARNING, logger="relay.discovery"):
        assert starts(d.generations(TABLE)) == [(T0 + HOUR, T0 + 2 * HOUR), (T0 + 2 * HOUR, None)]
    assert any("disappeared" in r.getMessage() for r in caplog.records)
    assert d.disappeared == [(TABLE.name, T0)]
    assert d.drain_disappeared() == [(TABLE.name, T0)] and d.disappeared == []
    d.generations(TABLE)
    assert d.drain_disappeared() == []
    # A failed timestamp read is an error, not "everything disappeared".
    s.timestamps = OperationTimedOut("timed out")
    with pytest.raises(OperationTimedOut):
        d.generations(TABLE)
    s.timestamps = [T0 + HOUR, T0 + 2 * HOUR]
    d.generations(TABLE)
    assert d.drain_disappeared() == []


def test_metadata_consistency_follows_the_cluster_size():
    one = FakeSession(hosts=1)
    one.timestamps, one.streams = [T0], {T0: vnode_rows()}
    discovery(one).generations(TABLE)
    assert set(one.levels) == {ConsistencyLevel.ONE}
    many = FakeSession(hosts=3)
    many.timestamps, many.streams = [T0], {T0: vnode_rows()}
    discovery(many).generations(TABLE)
    assert set(many.levels) == {ConsistencyLevel.QUORUM}
    forced = FakeSession(hosts=3)
    forced.timestamps, forced.streams = [T0], {T0: vnode_rows()}
    discovery(forced, consistency=ConsistencyLevel.ALL).generations(TABLE)
    assert set(forced.levels) == {ConsistencyLevel.ALL}


def test_mode_check_failure_is_raised_not_cached_as_vnodes():
    s = FakeSession()
    calls = []

    def execute(stmt, params=()):
        calls.append(stmt.query_string)
        if len(calls) == 1:
            raise OperationTimedOut("timed out")
        return Rows([(5,)])  # initial_tablets = 5: a tablets keyspace

    s.execute = execute
    d = discovery(s)
    with pytest.raises(OperationTimedOut):
        d.uses_tablets(TABLE)
    assert d.uses_tablets(TABLE) is True
    assert d.uses_tablets(TABLE) is True and len(calls) == 2


def test_cdc_ttl_seconds_from_the_fake_schema():
    s = FakeSession()
    for ttl in (0, 3600, 86400):
        s.ttl = ttl
        assert discovery(s).cdc_ttl_seconds(TABLE) == ttl
    s.ttl = None
    with pytest.raises(CdcNotEnabled):
        discovery(s).cdc_ttl_seconds(TABLE)


# --------------------------------------------------------------------------- real driver

@pytest.fixture
def real(cql, keyspace, emulator, tmp_path):
    from relay import connect

    c = config.load(write_config(tmp_path / "relay.toml", keyspace))
    session = connect.cql_session(c)
    yield emulator, Discovery(session, c), keyspace
    session.cluster.shutdown()


def test_real_cdc_ttl_as_stored_by_the_emulation(cql, real):
    emu, d, ks = real
    emu.open_generation(vnodes=4, shards=2, seed=3)
    for name, kw, expected in [("no_expiry", {"ttl": 0}, 0), ("hour", {"ttl": 3600}, 3600),
                               ("default", {}, 86400)]:
        cql.execute(outbox_ddl(ks, name))
        emu.enable_cdc(f"{ks}.{name}", **kw)
        assert d.cdc_ttl_seconds(TableConfig(name=f"{ks}.{name}")) == expected, name
    # Same shape and bytes as Scylla's system_schema.tables.extensions['cdc'].
    row = cql.execute(f"SELECT extensions FROM {ks}.tables WHERE keyspace_name = %s AND table_name = 'hour'",
                      (ks,)).one()
    assert decode_cdc_extension(row.extensions["cdc"]) == {
        "delta": "full", "enabled": "true", "postimage": "false", "preimage": "false", "ttl": "3600"}
    # ALTER TABLE ... WITH cdc = {'ttl': ...} is seen on the next read (the TTL is not cached).
    emu.alter_cdc_ttl(f"{ks}.hour", 60)
    assert d.cdc_ttl_seconds(TableConfig(name=f"{ks}.hour")) == 60
    with pytest.raises(CdcNotEnabled):
        d.cdc_ttl_seconds(TableConfig(name=f"{ks}.never_enabled"))


def test_real_partial_generation_waits_and_disappearance_is_reported(cql, real):
    from relay.testing import now_micros

    emu, d, ks = real
    cql.execute(outbox_ddl(ks))
    g1 = emu.open_generation(start=now_micros() - 120_000_000, vnodes=4, shards=2, seed=1)
    emu.enable_cdc(f"{ks}.outbox")
    table = TableConfig(name=f"{ks}.outbox")
    assert d.metadata_consistency() == ConsistencyLevel.ONE  # one node
    # A generation whose timestamp is visible but whose stream rows are not (yet).
    g2_us = now_micros() - 60_000_000
    g2_us -= g2_us % 1000
    when = datetime.fromtimestamp(g2_us / 1e6, tz=UTC)
    cql.execute(f"INSERT INTO {ks}.cdc_generation_timestamps (key, time) VALUES ('timestamps', %s)", (when,))
    assert starts(d.generations(table)) == [(g1.start_us, g2_us)]
    ring = vnode_rows(vnodes=3, seed=9)
    insert = f"INSERT INTO {ks}.cdc_streams_descriptions_v2 (time, range_end, streams) VALUES (%s, %s, %s)"
    for end, streams in (ring[0], ring[2]):  # the middle row of three is missing: still partial
        cql.execute(insert, (when, end, set(streams)))
    assert starts(d.generations(table)) == [(g1.start_us, g2_us)]
    cql.execute(insert, (when, ring[1][0], set(ring[1][1])))
    gens = d.generations(table)
    assert starts(gens) == [(g1.start_us, g2_us), (g2_us, None)]
    assert set(gens[1].streams) == {s for _, group in ring for s in group}
    # The first generation vanishes from the metadata (an operator truncated it).
    cql.execute(f"DELETE FROM {ks}.cdc_generation_timestamps WHERE key = 'timestamps' AND time = %s",
                (datetime.fromtimestamp(g1.start_us / 1e6, tz=UTC),))
    assert starts(d.generations(table)) == [(g2_us, None)]
    assert d.drain_disappeared() == [(table.name, g1.start_us)]

"""relay.testing writes CDC the way Scylla does; checked against the real Cassandra.

Each check reads back through plain CQL (system_schema, token(), WRITETIME) rather than
trusting the emulator's in-memory state.
"""
from __future__ import annotations

import bisect
import uuid

import pytest
from harness import outbox_ddl, wait_for_clock

from relay import timeuuid
from relay.streams import make_stream_id, stream_token, stream_version, vnode_index
from relay.testing import (
    OP_INSERT,
    OP_PARTITION_DELETE,
    OP_ROW_DELETE,
    OP_UPDATE,
    CdcEmulator,
    CdcWriteRejected,
    Op,
    now_micros,
)
from relay.testing.ring import MAX_TOKEN, MIN_TOKEN, VnodeRing, shard_of, tablet_last_tokens

# The standard outbox plus a set and a list, whose log columns Scylla shapes differently.
EXTRA_COLUMNS = "tags set<text>, notes list<text>"


def _columns(cql, ks, table):
    rows = cql.execute("SELECT column_name, type, kind, clustering_order, position FROM system_schema.columns "
                       "WHERE keyspace_name = %s AND table_name = %s", (ks, table))
    return {r.column_name: (r.type, r.kind, r.clustering_order, r.position) for r in rows}


def _log_rows(cql, ks, table="outbox"):
    return list(cql.execute(f'SELECT "cdc$stream_id", "cdc$time", "cdc$batch_seq_no", "cdc$operation", '
                            f'"cdc$end_of_batch", aggregate_id, id FROM {ks}.{table}_scylla_cdc_log'))


# ---------------------------------------------------------------------------- pure layout

def test_stream_id_layout_round_trips():
    sid = make_stream_id(-1234567890123, 4_194_303, random_bits=(1 << 38) - 1)
    assert len(sid) == 16
    assert stream_token(sid) == -1234567890123
    assert vnode_index(sid) == 4_194_303
    assert stream_version(sid) == 1
    low = int.from_bytes(sid[8:], "big")
    assert low >> 26 == (1 << 38) - 1 and (low >> 4) & 0x3FFFFF == 4_194_303 and low & 0xF == 1


def test_unversioned_stream_id_has_no_vnode_index():
    assert vnode_index(bytes(16)) is None
    assert vnode_index(b"\x01" * 8) is None


def test_shard_function_matches_scylla_formula():
    # Scylla: shard = ((unbiased_token << ignore_msb) * shards) >> 64, unbiased = token + 2^63
    for token in (MIN_TOKEN, -1, 0, 1, MAX_TOKEN, 123456789012345678):
        unbiased = token + 2**63
        expected = (((unbiased << 12) % 2**64) * 8) >> 64
        assert shard_of(token, 8) == expected


def test_ring_streams_sit_in_their_vnode_and_shard():
    ring = VnodeRing.random(64, 4, seed=7)
    import random

    streams = ring.make_streams(random.Random(7))
    for index, group in enumerate(streams):
        first, last = ring.range_bounds(index)
        assert 1 <= len(group) <= 4
        for sid in group:
            tok = stream_token(sid)
            assert vnode_index(sid) == index
            assert ring.vnode_of(tok) == index, "stream token must lie in its own vnode range"
        assert len({shard_of(stream_token(s), 4) for s in group}) == len(group), "one stream per shard"


def test_timeuuid_carries_micros():
    u = timeuuid.from_micros(1_700_000_000_123_456)
    assert u.version == 1
    assert timeuuid.to_micros(u) == 1_700_000_000_123_456
    assert timeuuid.from_micros(5) != timeuuid.from_micros(5), "equal timestamps still give distinct ids"


# ---------------------------------------------------------------------------- schema

def test_generation_tables_have_scylla_schema(cql, emulator, keyspace):
    ts = _columns(cql, keyspace, "cdc_generation_timestamps")
    assert ts == {"key": ("text", "partition_key", "none", 0), "time": ("timestamp", "clustering", "desc", 0),
                  "expired": ("timestamp", "regular", "none", -1)}
    sd = _columns(cql, keyspace, "cdc_streams_descriptions_v2")
    assert sd == {"time": ("timestamp", "partition_key", "none", 0),
                  "range_end": ("bigint", "clustering", "asc", 0),
                  "streams": ("frozen<set<blob>>", "regular", "none", -1)}
    tt = _columns(cql, keyspace, "cdc_streams")
    assert {k: v[:2] for k, v in tt.items()} == {
        "keyspace_name": ("text", "partition_key"), "table_name": ("text", "partition_key"),
        "timestamp": ("timestamp", "clustering"), "stream_state": ("tinyint", "clustering"),
        "stream_id": ("blob", "clustering")}


def test_log_table_has_scylla_columns(cql, emulator, keyspace):
    cql.execute(outbox_ddl(keyspace, extra_columns=EXTRA_COLUMNS))
    emulator.open_generation(vnodes=8, shards=2, seed=1)
    emulator.enable_cdc(f"{keyspace}.outbox", ttl=3600)
    cols = _columns(cql, keyspace, "outbox_scylla_cdc_log")
    assert cols["cdc$stream_id"][:2] == ("blob", "partition_key")
    assert cols["cdc$time"][:3] == ("timeuuid", "clustering", "asc")
    assert cols["cdc$batch_seq_no"][:3] == ("int", "clustering", "asc")
    assert cols["cdc$operation"][0] == "tinyint"
    assert cols["cdc$ttl"][0] == "bigint"
    assert cols["cdc$end_of_batch"][0] == "boolean"
    # key columns keep name and type; they are regular columns in the log
    assert cols["aggregate_id"][:2] == ("text", "regular") and cols["id"][:2] == ("timeuuid", "regular")
    for atomic, typ in [("aggregate_type", "text"), ("event_type", "text"), ("payload", "blob"),
                        ("created_at", "timestamp")]:
        assert cols[atomic][0] == typ
        assert cols[f"cdc$deleted_{atomic}"][0] == "boolean"
    assert cols["headers"][0] == "frozen<map<text, text>>"
    assert cols["cdc$deleted_elements_headers"][0] == "frozen<set<text>>"
    assert cols["tags"][0] == "frozen<set<text>>"
    assert cols["cdc$deleted_elements_tags"][0] == "frozen<set<text>>"
    assert cols["notes"][0] == "frozen<map<timeuuid, text>>"
    assert cols["cdc$deleted_elements_notes"][0] == "frozen<set<timeuuid>>"
    assert "cdc$deleted_aggregate_id" not in cols
    props = cql.execute("SELECT gc_grace_seconds, compaction, caching, compression FROM system_schema.tables "
                        "WHERE keyspace_name = %s AND table_name = 'outbox_scylla_cdc_log'", (keyspace,)).one()
    assert props.gc_grace_seconds == 0
    assert "TimeWindowCompactionStrategy" in props.compaction["class"]
    assert props.caching["keys"] == "NONE"
    assert "LZ4Compressor" in props.compression["class"] and props.compression["chunk_length_in_kb"] == "4"


# ---------------------------------------------------------------------------- writes

@pytest.fixture
def outbox(cql, emulator, keyspace):
    cql.execute(outbox_ddl(keyspace, extra_columns=EXTRA_COLUMNS))
    emulator.open_generation(start=now_micros() - 60_000_000, vnodes=32, shards=3, seed=11)
    emulator.enable_cdc(f"{keyspace}.outbox")
    return f"{keyspace}.outbox"


def _ring_from_server(cql, ks, gen_time):
    rows = list(cql.execute(f"SELECT range_end, streams FROM {ks}.cdc_streams_descriptions_v2 WHERE time = %s",
                            (gen_time,)))
    ends = [r.range_end for r in rows]
    streams = {vnode_index(s): r.range_end for r in rows for s in r.streams}
    return ends, streams


def test_stream_choice_follows_token_vnode_and_shard(cql, emulator, keyspace, outbox):
    keys = [f"agg-{i}" for i in range(300)]
    emulator.write_many(outbox, [{"aggregate_id": k, "id": uuid.uuid1(), "aggregate_type": "order",
                                  "event_type": "created", "payload": b"x"} for k in keys])
    gen_time = cql.execute(f"SELECT time FROM {keyspace}.cdc_generation_timestamps "
                           f"WHERE key = 'timestamps' LIMIT 1").one().time
    ends, _ = _ring_from_server(cql, keyspace, gen_time)
    tokens = {r.aggregate_id: r.t for r in cql.execute(
        f"SELECT aggregate_id, token(aggregate_id) AS t FROM {outbox}")}
    rows = _log_rows(cql, keyspace)
    assert len(rows) == len(keys)
    vnodes_hit = set()
    for r in rows:
        tok = tokens[r.aggregate_id]
        i = bisect.bisect_left(ends, tok)
        expected_vnode = 0 if i == len(ends) else i
        sid = r[0]
        assert vnode_index(sid) == expected_vnode, "stream must be of the vnode owning the key's token"
        assert shard_of(stream_token(sid), 3) == shard_of(tok, 3), "and of the shard owning it"
        vnodes_hit.add(expected_vnode)
    assert len(vnodes_hit) > 16, "300 keys over 32 vnodes should spread"


def test_insert_log_row_shares_timestamp_and_is_one_group(cql, emulator, keyspace, outbox):
    ts = now_micros() - 2_000_000
    eid = uuid.uuid1()
    cdc_time = emulator.insert(outbox, {"aggregate_id": "a", "id": eid, "aggregate_type": "order",
                                        "event_type": "created", "payload": b"{}", "headers": {"h": "1"},
                                        "created_at": None}, timestamp=ts)
    assert timeuuid.to_micros(cdc_time) == ts
    row = cql.execute(f'SELECT "cdc$operation", "cdc$batch_seq_no", "cdc$end_of_batch", "cdc$time", '
                      f'"cdc$deleted_created_at", "cdc$deleted_headers", headers, payload, '
                      f'WRITETIME(payload) AS wt FROM {keyspace}.outbox_scylla_cdc_log').one()
    assert row[0] == OP_INSERT and row[1] == 0 and row[2] is True
    assert timeuuid.to_micros(row[3]) == ts
    assert row[4] is True, "null written to an atomic column -> cdc$deleted_X"
    assert row[5] is True and dict(row[6]) == {"h": "1"}, "collection overwrite: tombstone + elements"
    assert row.wt == ts
    base_wt = cql.execute(f"SELECT WRITETIME(payload) FROM {outbox} WHERE aggregate_id = 'a'").one()[0]
    assert base_wt == ts


def test_unlogged_batches_write_the_same_rows(cql, emulator, keyspace, outbox):
    """loadgen's emulator skips Cassandra's batchlog; the base and log rows it writes are the same."""
    fast = CdcEmulator(cql, metadata_keyspace=keyspace, logged=False)
    fast.load()
    fast.attach(outbox)
    ts = now_micros() - 2_000_000
    for emu, key in ((emulator, "logged"), (fast, "unlogged")):
        emu.insert(outbox, {"aggregate_id": key, "id": uuid.uuid1(), "aggregate_type": "order",
                            "event_type": "created", "payload": b"{}", "headers": {"h": "1"}}, timestamp=ts)
    cols = ('"cdc$operation", "cdc$batch_seq_no", "cdc$end_of_batch", "cdc$time", "cdc$deleted_headers", '
            "headers, payload, WRITETIME(payload)")
    # cdc$time: compared by its timestamp (its other bits are random, as Scylla's are)
    rows = {r.aggregate_id: (*r[1:4], timeuuid.to_micros(r[4]), *r[5:]) for r in cql.execute(
        f"SELECT aggregate_id, {cols} FROM {keyspace}.outbox_scylla_cdc_log")}
    assert set(rows) == {"logged", "unlogged"}
    assert rows["logged"][3] == ts
    assert rows["unlogged"] == rows["logged"]
    base = {r.aggregate_id: r[1] for r in cql.execute(f"SELECT aggregate_id, WRITETIME(payload) FROM {outbox}")}
    assert base == {"logged": ts, "unlogged": ts}


def test_group_of_several_rows_ends_with_end_of_batch(cql, emulator, keyspace, outbox):
    e1, e2, e3 = uuid.uuid1(), uuid.uuid1(), uuid.uuid1()
    emulator.write_group(outbox, [
        Op(OP_INSERT, {"aggregate_id": "g", "id": e1}, {"event_type": "a", "payload": b"1"}),
        Op(OP_INSERT, {"aggregate_id": "g", "id": e2}, {"event_type": "b", "payload": b"2"}),
        Op(OP_UPDATE, {"aggregate_id": "g", "id": e3}, {"event_type": None}),
    ])
    rows = list(cql.execute(f'SELECT "cdc$time", "cdc$batch_seq_no", "cdc$operation", "cdc$end_of_batch", '
                            f'"cdc$deleted_event_type" FROM {keyspace}.outbox_scylla_cdc_log'))
    assert [r[1] for r in rows] == [0, 1, 2]
    assert len({r[0] for r in rows}) == 1, "one group shares one cdc$time"
    assert [r[2] for r in rows] == [OP_INSERT, OP_INSERT, OP_UPDATE]
    assert [r[3] for r in rows] == [None, None, True]
    assert rows[2][4] is True
    with pytest.raises(ValueError):
        emulator.write_group(outbox, [Op(OP_INSERT, {"aggregate_id": "x", "id": e1}),
                                      Op(OP_INSERT, {"aggregate_id": "y", "id": e2})])


def test_deletes_use_row_and_partition_operations(cql, emulator, keyspace, outbox):
    eid = uuid.uuid1()
    emulator.insert(outbox, {"aggregate_id": "d", "id": eid, "event_type": "x"})
    emulator.delete(outbox, {"aggregate_id": "d", "id": eid})
    emulator.delete(outbox, {"aggregate_id": "d"})
    ops = [r[0] for r in cql.execute(f'SELECT "cdc$operation" FROM {keyspace}.outbox_scylla_cdc_log')]
    assert ops == [OP_INSERT, OP_ROW_DELETE, OP_PARTITION_DELETE]
    assert cql.execute(f"SELECT * FROM {outbox} WHERE aggregate_id = 'd'").one() is None

    cql.execute(f"CREATE TABLE {keyspace}.flat (k text PRIMARY KEY, v text)")
    emulator.enable_cdc(f"{keyspace}.flat")
    emulator.insert(f"{keyspace}.flat", {"k": "1", "v": "x"})
    emulator.delete(f"{keyspace}.flat", {"k": "1"})
    ops = sorted(r[0] for r in cql.execute(f'SELECT "cdc$operation" FROM {keyspace}.flat_scylla_cdc_log'))
    assert ops == [OP_INSERT, OP_PARTITION_DELETE], "row delete without clustering key is logged as op 4"


def test_new_generation_switches_streams_at_its_timestamp(cql, emulator, keyspace, outbox):
    old = emulator.generations[-1]
    start = now_micros() + 1_500_000
    new = emulator.open_generation(start=start, vnodes=16, shards=2, seed=99)
    published = [r.time for r in cql.execute(
        f"SELECT time FROM {keyspace}.cdc_generation_timestamps WHERE key = 'timestamps'")]
    assert len(published) == 2 and published[0] > published[1], "clustering order is DESC"
    n_rows = cql.execute(f"SELECT count(*) FROM {keyspace}.cdc_streams_descriptions_v2 WHERE time = %s",
                         (published[0],)).one()[0]
    assert n_rows == 16

    before = emulator.insert(outbox, {"aggregate_id": "k", "id": uuid.uuid1(), "event_type": "before"})
    wait_for_clock(start)  # the next write is stamped in the new generation
    after = emulator.insert(outbox, {"aggregate_id": "k", "id": uuid.uuid1(), "event_type": "after"})
    rows = {r[1]: r[0] for r in _log_rows(cql, keyspace)}
    assert rows[before] in set(old.all_streams())
    assert rows[after] in set(new.all_streams())
    assert timeuuid.to_micros(before) < start <= timeuuid.to_micros(after)


def test_late_rows_and_write_admission(cql, emulator, keyspace, outbox):
    late_ts = now_micros() - 30_000_000  # 30 s in the past, still the current generation
    cdc_time = emulator.insert(outbox, {"aggregate_id": "late", "id": uuid.uuid1(), "event_type": "x"},
                               timestamp=late_ts)
    assert timeuuid.to_micros(cdc_time) == late_ts
    assert any(r[1] == cdc_time for r in _log_rows(cql, keyspace))
    with pytest.raises(CdcWriteRejected):
        emulator.insert(outbox, {"aggregate_id": "f", "id": uuid.uuid1()}, timestamp=now_micros() + 60_000_000)
    emulator.open_generation(start=now_micros(), vnodes=4, shards=1, seed=3)
    with pytest.raises(CdcWriteRejected):  # previous generation, more than 5 s ago
        emulator.insert(outbox, {"aggregate_id": "p", "id": uuid.uuid1()}, timestamp=now_micros() - 10_000_000)


def test_no_generation_means_no_stream(cql, emulator, keyspace):
    cql.execute(outbox_ddl(keyspace, extra_columns=EXTRA_COLUMNS))
    emulator.enable_cdc(f"{keyspace}.outbox")
    with pytest.raises(CdcWriteRejected):
        emulator.insert(f"{keyspace}.outbox", {"aggregate_id": "a", "id": uuid.uuid1()})


def test_another_process_can_load_published_generations(cql, emulator, keyspace, outbox):
    from relay.testing import CdcEmulator

    other = CdcEmulator(cql, metadata_keyspace=keyspace)
    other.attach(outbox)
    other.load()
    assert [g.all_streams() for g in other.generations] == [g.all_streams() for g in emulator.generations]
    cdc_time = other.insert(outbox, {"aggregate_id": "z", "id": uuid.uuid1()})
    sid = next(r[0] for r in _log_rows(cql, keyspace) if r[1] == cdc_time)
    assert sid == emulator.stream_for(outbox, {"aggregate_id": "z"}, timeuuid.to_micros(cdc_time))


def test_cdc_options_are_stored_like_scyllas_schema_extension(cql, emulator, keyspace):
    """Scylla: system_schema.tables, column extensions (map<text, blob>), key 'cdc', the option map in
    Scylla's serialization. The emulation: the same columns and bytes in its metadata keyspace."""
    from relay.discovery import decode_cdc_extension
    from relay.testing import CdcEmulator

    ours = _columns(cql, keyspace, "tables")
    theirs = _columns(cql, "system_schema", "tables")
    assert ours == {name: theirs[name] for name in ("keyspace_name", "table_name", "extensions")}
    assert ours["extensions"][0] == "frozen<map<text, blob>>"

    emulator.open_generation(start=now_micros() - 60_000_000, vnodes=4, shards=2, seed=2)
    for name, ttl in (("hour", 3600), ("forever", 0)):
        cql.execute(outbox_ddl(keyspace, name, EXTRA_COLUMNS))
        emulator.enable_cdc(f"{keyspace}.{name}", ttl=ttl)
        row = cql.execute(f"SELECT extensions FROM {keyspace}.tables WHERE keyspace_name = %s AND table_name = %s",
                          (keyspace, name)).one()
        assert decode_cdc_extension(row.extensions["cdc"]) == {
            "delta": "full", "enabled": "true", "postimage": "false", "preimage": "false", "ttl": str(ttl)}
        emulator.insert(f"{keyspace}.{name}", {"aggregate_id": "a", "id": uuid.uuid1(), "payload": b"x"})
        cell_ttl = cql.execute(f'SELECT TTL(payload) FROM {keyspace}.{name}_scylla_cdc_log').one()[0]
        if ttl:
            assert ttl - 60 < cell_ttl <= ttl, "every log cell carries the table's CDC TTL"
        else:
            assert cell_ttl is None, "ttl 0: log rows never expire"
    # Another process picks the TTL up from the stored options.
    assert CdcEmulator(cql, metadata_keyspace=keyspace).attach(f"{keyspace}.hour").ttl == 3600
    with pytest.raises(ValueError):
        emulator.enable_cdc(f"{keyspace}.hour", ttl=-1)


# ---------------------------------------------------------------------------- tablets

def test_tablets_stream_sets_and_resize(cql, emulator, keyspace):
    cql.execute(outbox_ddl(keyspace, extra_columns=EXTRA_COLUMNS))
    table = f"{keyspace}.outbox"
    emulator.enable_cdc(table, tablets=4, start=now_micros() - 10_000_000)
    rows = list(cql.execute(f"SELECT timestamp, stream_state, stream_id FROM {keyspace}.cdc_streams "
                            f"WHERE keyspace_name = %s AND table_name = 'outbox'", (keyspace,)))
    current = sorted((r.stream_id for r in rows if r.stream_state == 0), key=stream_token)
    assert len(current) == 4
    assert [stream_token(s) for s in current] == tablet_last_tokens(4), "token = the tablet's last token"
    assert all(vnode_index(s) == 0 for s in current), "tablet stream ids have vnode index 0"

    cdc_time = emulator.insert(table, {"aggregate_id": "t1", "id": uuid.uuid1()})
    tok = cql.execute(f"SELECT token(aggregate_id) FROM {table} WHERE aggregate_id = 't1'").one()[0]
    sid = next(r[0] for r in _log_rows(cql, keyspace) if r[1] == cdc_time)
    assert sid == current[bisect.bisect_left([stream_token(s) for s in current], tok)]

    split_at = now_micros() + 1_000_000
    emulator.open_tablet_streams(table, 8, start=split_at)
    ts_rows = [r.timestamp for r in cql.execute(
        f"SELECT timestamp FROM {keyspace}.cdc_timestamps WHERE keyspace_name = %s AND table_name = 'outbox'",
        (keyspace,))]
    assert len(ts_rows) == 2
    newest = max(ts_rows)
    by_state: dict[int, set[bytes]] = {}
    for r in cql.execute(f"SELECT stream_state, stream_id FROM {keyspace}.cdc_streams WHERE keyspace_name = %s "
                         f"AND table_name = 'outbox' AND timestamp = %s", (keyspace, newest)):
        by_state.setdefault(r.stream_state, set()).add(r.stream_id)
    assert len(by_state[0]) == 8 and by_state[2] == by_state[0]
    assert by_state[1] == set(current), "the split closes every old stream"
    wait_for_clock(split_at)  # the next write is stamped after the split
    after = emulator.insert(table, {"aggregate_id": "t1", "id": uuid.uuid1()})
    sid_after = next(r[0] for r in _log_rows(cql, keyspace) if r[1] == after)
    assert sid_after in by_state[0]

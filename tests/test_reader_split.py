"""Splitting a task's streams into IN lists Scylla accepts (<= 100 partition keys per query).

Pure logic with a fake session: which queries are sent, with which keys, and that the
changes still come per stream in cdc$time order with groups intact across pages.
"""
from __future__ import annotations

import pytest
from test_reader_grouping import NAMES, FakePrepared, FakeResultSet, r

from relay import config, timeuuid
from relay.errors import ConfigError
from relay.reader import LogReader, PendingRead, split_streams

STREAMS = tuple(bytes([i]) * 16 for i in range(1, 8))
END_US = 2_000_000_000_000_000
TIMES = [timeuuid.from_micros(1_767_225_600_000_000 + i * 1000) for i in range(4)]


def test_split_sizes_and_order():
    assert split_streams((), 100) == []
    for n, sizes in [(1, [1]), (100, [100]), (101, [51, 50]), (120, [60, 60]), (250, [84, 83, 83]),
                     (300, [100, 100, 100])]:
        streams = tuple(i.to_bytes(16, "big") for i in range(n))
        parts = split_streams(streams, 100)
        assert [len(p) for p in parts] == sizes
        assert tuple(s for p in parts for s in p) == streams  # every stream once, order kept
    assert [len(p) for p in split_streams(STREAMS, 3)] == [3, 2, 2]
    with pytest.raises(ValueError):
        split_streams(STREAMS, 0)


class FakeFuture:
    def __init__(self, rs):
        self.rs = rs
        self.collected = False

    def result(self):
        self.collected = True
        return self.rs


class SplitSession:
    """Answers each IN query with the rows of its streams, `page` rows per page, like one replica would:
    stream after stream (partition order), each in cdc$time order."""

    def __init__(self, rows_by_stream: dict[bytes, list[tuple]], page: int = 2) -> None:
        self.rows_by_stream = rows_by_stream
        self.page = page
        self.sent: list[list[bytes]] = []  # the IN list of every query, in sending order
        self.async_sent = 0
        self.futures: list[FakeFuture] = []

    def prepare(self, query: str) -> FakePrepared:
        return FakePrepared(query)

    def _result(self, params) -> FakeResultSet:
        keys, _start, _end = params
        assert isinstance(keys, list)
        self.sent.append(keys)
        rows = [row for s in sorted(keys) for row in self.rows_by_stream.get(s, [])]
        pages = [(NAMES, rows[i:i + self.page]) for i in range(0, len(rows), self.page)] or [(NAMES, [])]
        return FakeResultSet(pages)

    def execute(self, bound):
        return self._result(bound.params)

    def execute_async(self, bound):
        self.async_sent += 1
        future = FakeFuture(self._result(bound.params))
        self.futures.append(future)
        return future


def rows_for_streams() -> dict[bytes, list[tuple]]:
    """Each stream: a one-row group, a three-row group (spans a page at page size 2), another one-row group."""
    out = {}
    for s in STREAMS:
        out[s] = [r(s, TIMES[0], 0, True), r(s, TIMES[1], 0, None), r(s, TIMES[1], 1, None),
                  r(s, TIMES[1], 2, True), r(s, TIMES[3], 0, True)]
    return out


def check_changes(changes) -> None:
    by_stream: dict[bytes, list] = {}
    for c in changes:
        by_stream.setdefault(c.stream_id, []).append((c.cdc_time, [row["cdc$batch_seq_no"] for row in c.dict_rows]))
    assert set(by_stream) == set(STREAMS)
    for s in STREAMS:
        assert by_stream[s] == [(TIMES[0], [0]), (TIMES[1], [0, 1, 2]), (TIMES[3], [0])], s.hex()
    # Each stream's changes are contiguous: a stream is read by exactly one sub-query.
    order = [c.stream_id for c in changes]
    assert [s for i, s in enumerate(order) if i == 0 or order[i - 1] != s] == sorted(STREAMS)


def test_read_splits_into_in_lists_of_at_most_max_keys():
    session = SplitSession(rows_for_streams())
    reader = LogReader(session, "shop.outbox", bypass_cache="false", max_in_keys=3)
    changes = list(reader.read(STREAMS, 0, END_US))
    assert [len(keys) for keys in session.sent] == [3, 2, 2]
    assert [s for keys in session.sent for s in keys] == list(STREAMS)
    check_changes(changes)


def test_default_limit_is_scyllas_100():
    streams = tuple(i.to_bytes(16, "big") for i in range(1, 121))
    session = SplitSession({s: [r(s, TIMES[0], 0, True)] for s in streams})
    reader = LogReader(session, "shop.outbox", bypass_cache="false")
    assert reader.max_in_keys == 100
    changes = list(reader.read(streams, 0, END_US))
    assert [len(keys) for keys in session.sent] == [60, 60]
    assert [c.stream_id for c in changes] == list(streams)


def test_start_sends_every_sub_query_at_once_and_read_collects_them():
    session = SplitSession(rows_for_streams())
    reader = LogReader(session, "shop.outbox", bypass_cache="false", max_in_keys=3)
    handle = reader.start(STREAMS, 0, END_US)
    assert isinstance(handle, PendingRead)
    assert session.async_sent == 3 and not any(f.collected for f in session.futures)
    changes = list(reader.read(STREAMS, 0, END_US, future=handle))
    assert all(f.collected for f in session.futures)
    assert len(session.sent) == 3, "read() must use the prefetched sub-queries, not send new ones"
    check_changes(changes)


def test_a_handle_for_other_streams_is_not_used():
    session = SplitSession(rows_for_streams())
    reader = LogReader(session, "shop.outbox", bypass_cache="false", max_in_keys=3)
    handle = reader.start(STREAMS[:2], 0, END_US)
    changes = list(reader.read(STREAMS, 0, END_US, future=handle))
    assert len(session.sent) == 1 + 3
    check_changes(changes)


def test_reader_refuses_a_limit_scylla_would_refuse():
    for bad in (0, 101):
        with pytest.raises(ValueError):
            LogReader(SplitSession({}), "shop.outbox", bypass_cache="false", max_in_keys=bad)


def test_config_max_in_keys_default_and_bounds():
    env = {"RELAY_KAFKA__BOOTSTRAP_SERVERS": "k:9092"}
    assert config.load(None, environ=env).scylla.max_in_keys == 100
    assert config.load(None, environ={**env, "RELAY_SCYLLA__MAX_IN_KEYS": "50"}).scylla.max_in_keys == 50
    for bad in ("0", "101"):
        with pytest.raises(ConfigError, match="scylla.max_in_keys"):
            config.load(None, environ={**env, "RELAY_SCYLLA__MAX_IN_KEYS": bad})

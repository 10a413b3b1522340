"""relay.heap: what a started process does to the garbage collector, and that cycles still go."""
from __future__ import annotations

import gc
import time
import weakref

from relay import heap


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def test_settle_freezes_the_start_yet_new_cycles_are_still_collected():
    thresholds = gc.get_threshold()
    try:
        heap.settle()
        assert gc.get_freeze_count() > 0, "the start's objects were not frozen"
        assert gc.get_threshold() == thresholds
        a, b = Node(), Node()
        a.other, b.other = b, a
        gone = weakref.ref(a)
        del a, b
        assert gone() is not None  # a cycle outlives its references until a collection
        keep = [[] for _ in range(100_000)]  # allocations alone trigger collections
        assert gone() is None, "no automatic collection after 100,000 allocations"
        del keep
    finally:
        gc.unfreeze()


def test_collection_clock_is_due_once_per_period_from_when_it_ran():
    clock = heap.CollectionClock(10.0, now=100.0)
    assert clock.wait_s(100.0) == 10.0
    assert not clock.due(109.9)
    assert clock.due(110.0)
    assert not clock.due(110.0), "once per period"
    assert clock.wait_s(112.0) == 8.0
    assert clock.due(135.0), "late: collects once..."
    assert not clock.due(140.0) and clock.wait_s(140.0) == 5.0, "...and the next period starts then"


def test_periodic_collector_replaces_automatic_collection():
    collector = heap.PeriodicCollector(every_s=0.5).start()
    try:
        assert not gc.isenabled()
        a, b = Node(), Node()
        a.other, b.other = b, a
        gone = weakref.ref(a)
        del a, b
        keep = [[] for _ in range(100_000)]
        assert gone() is not None, "allocations no longer trigger collections"
        del keep
        deadline = time.monotonic() + 5.0
        while (gone() is not None or not collector.collections) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gone() is None and collector.collections >= 1, "the periodic collection freed the cycle"
    finally:
        collector.stop()
    assert gc.isenabled()


def test_relay_sessions_free_a_finished_request_without_the_cycle_collector(keyspace, tmp_path, cql_cluster):
    """The driver's request timer and the request hold each other: a finished read stays in memory
    (with its rows) until a collection. Through relay's sessions it goes with its last reference."""
    from harness import write_config

    from relay import config, connect

    cfg = config.load(write_config(tmp_path / "relay.toml", keyspace))
    plain = cql_cluster.connect()
    gc.disable()
    try:
        for hot_path in (True, False):
            session = connect.cql_session(cfg, hot_path=hot_path)
            try:
                rs = session.execute("SELECT release_version FROM system.local")
                assert rs.one()
                request = weakref.ref(rs.response_future)
                del rs
                assert request() is None, f"hot_path={hot_path}: the finished request is still alive"
            finally:
                session.cluster.shutdown()
        rs = plain.execute("SELECT release_version FROM system.local")  # the driver's own class: the control
        request = weakref.ref(rs.response_future)
        del rs
        assert request() is not None, "the driver no longer keeps finished requests in a cycle: drop the workaround"
        # A collection frees it once the driver's loop has dropped the (cancelled) timer from its queue.
        deadline = time.monotonic() + 15.0
        while request() is not None and time.monotonic() < deadline:
            gc.collect()
            time.sleep(0.05)
        assert request() is None
    finally:
        gc.enable()
        plain.shutdown()


def test_timer_safe_connection_fires_a_live_requests_timeout_and_does_not_keep_a_finished_one():
    """relay.connect.without_timer_cycles, on a stand-in for the driver's connection class: the timer it
    creates still calls the request's timeout handler while the request lives, and holds it weakly."""
    from cassandra.cluster import ResponseFuture

    from relay.connect import without_timer_cycles

    class Base:
        timers: list = []

        @classmethod
        def create_timer(cls, timeout, callback):
            cls.timers.append(callback)
            return callback

    class Request(ResponseFuture):
        def __init__(self) -> None:  # none of the driver's state: only the timeout handler matters here
            self.timeouts = 0

        def _on_timeout(self, _attempts=0):
            self.timeouts += 1

    conn = without_timer_cycles(Base)
    assert without_timer_cycles(Base) is conn, "one class per base: libev keeps one loop per class"
    request = Request()
    fire = conn.create_timer(10.0, request._on_timeout)
    fire()
    assert request.timeouts == 1, "the timeout of a request still in flight is not lost"
    other = conn.create_timer(1.0, len)  # not a request's: passed through as it is
    assert other is len
    gone = weakref.ref(request)
    del request
    assert gone() is None, "the timer keeps a finished request alive"
    fire()  # nobody waits any more: nothing to do, no error

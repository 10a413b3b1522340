"""The worker's scheduling decisions (relay.schedule), with a fake clock: no services."""
from __future__ import annotations

from relay import windows
from relay.model import Task
from relay.schedule import BUSY_HOLD_S, LIGHT_EVENTS, MAX_READ_EVENTS, MAX_READ_STREAMS, UNKNOWN_EVENTS, Read, Schedule

S = 1_000_000
NOW = 1_800_000_000 * S  # a fixed wall clock, µs
GEN = NOW - 3600 * S


def tasks(n: int, streams: int = 2, table: str = "ks.t", gen: int = GEN, end: int | None = None) -> list[Task]:
    return [Task(table, gen, i, tuple(bytes([i % 256, i // 256, s]) for s in range(streams)), end)
            for i in range(n)]


def schedule(**kw) -> Schedule:
    opts = dict(window_s=10.0, confidence_s=10.0, grid_s=0.25, checkpoint_interval_s=5.0)
    opts.update(kw)
    return Schedule(**opts)


def started(sch: Schedule, ts: list[Task], position: int, now: int = NOW) -> None:
    sch.assign(ts, now)
    for st in sch.needs_start():
        sch.started(st.task.key, position, now)


def drain(sch: Schedule, now: int, events: int = 0, limit: int = 1000) -> list:
    """Plan everything due at `now` and report each read done with `events` per task."""
    reads = sch.plan(now, limit)
    for r in reads:
        sch.done(r, {k: events for k in r.keys}, now)
    return reads


def test_unknown_tasks_share_reads_a_few_at_a_time_then_idle_ones_share_reads():
    sch = schedule()
    ts = tasks(768)
    live = windows.readable_limit(NOW, 10, 0, sch.grid_us)
    started(sch, ts, live - 2 * S)
    first = drain(sch, NOW)
    per_read = MAX_READ_EVENTS // UNKNOWN_EVENTS
    assert [len(r.keys) for r in first] == [per_read] * (768 // per_read) + [768 % per_read], \
        "tasks not read yet share reads, a bounded number per read (they may not be light)"
    assert sorted(k for r in first for k in r.keys) == sorted(t.key for t in ts)
    assert all(r.end_us == live for r in first)
    # Caught up and empty: due at the next grid point, all together, in reads of ≤ MAX_READ_STREAMS streams.
    nxt = sch.next_due_us()
    assert nxt == live + sch.grid_us + 10 * S
    second = drain(sch, nxt)
    assert len(second) == -(-768 * 2 // MAX_READ_STREAMS)
    assert sorted(k for r in second for k in r.keys) == sorted(t.key for t in ts)
    assert {(r.start_us, r.end_us) for r in second} == {(live, live + sch.grid_us)}
    assert all(len(r.streams) <= MAX_READ_STREAMS for r in second)


def test_idle_reads_per_second_do_not_grow_with_tasks():
    for n in (256, 768, 3072):
        sch = schedule()
        started(sch, tasks(n), windows.readable_limit(NOW, 10, 0, sch.grid_us) - sch.grid_us)
        now, reads = NOW, 0
        assert len(drain(sch, now, limit=n)) == -(-n // (MAX_READ_EVENTS // UNKNOWN_EVENTS))  # first windows
        end = NOW + 10 * S
        while (due := sch.next_due_us()) is not None and due < end:
            now = due
            reads += len(drain(sch, now))
        per_s = reads / 10
        assert per_s <= (-(-n * 2 // MAX_READ_STREAMS)) / 0.25 + 1


def test_groups_split_by_replica_set_and_generation():
    ts = tasks(10) + tasks(4, gen=GEN + 1)
    sch = schedule(group_of=lambda t: t.task_id % 2)
    started(sch, ts, NOW - 30 * S)
    drain(sch, NOW)  # learn they are light
    reads = drain(sch, sch.next_due_us() or NOW)
    for r in reads:
        assert len({k[1] for k in r.keys}) == 1, "one (table, generation) per read"
        assert len({k[2] % 2 for k in r.keys}) == 1, "one replica set per read"
    assert len(reads) == 4


def test_busy_task_reads_alone_and_is_due_at_once():
    sch = schedule()
    ts = tasks(3)
    started(sch, ts, NOW - 600 * S)
    reads = sch.plan(NOW, 10)
    busy = reads[0].keys[0]
    sch.done(reads[0], {busy: 5000}, NOW)
    for r in reads[1:]:
        sch.done(r, {}, NOW)
    again = sch.plan(NOW, 10)
    alone = [r for r in again if busy in r.keys]
    assert len(alone) == 1 and alone[0].keys == (busy,)
    assert sch.states[busy].window_s == 10.0


def test_a_busy_backlog_does_not_starve_live_tasks():
    """Due tasks are served oldest-first: a backlog task due again at once queues behind earlier ones."""
    sch = schedule()
    backlog, live = tasks(1, table="ks.a"), tasks(1, table="ks.b")
    sch.assign(backlog + live, NOW)
    sch.started(backlog[0].key, NOW - 3600 * S, NOW)
    sch.started(live[0].key, windows.readable_limit(NOW, 10, 0, sch.grid_us) - sch.grid_us, NOW)
    now = NOW
    served = set()
    for _ in range(5):
        reads = sch.plan(now, 1)
        assert len(reads) == 1
        served.add(reads[0].table)
        sch.done(reads[0], {k: 50_000 for k in reads[0].keys}, now)
        now += 1000
    assert served == {"ks.a", "ks.b"}


def test_plan_respects_limit_and_keeps_the_rest_due():
    sch = schedule()
    started(sch, tasks(5), NOW - 60 * S)
    drain(sch, NOW, events=LIGHT_EVENTS)  # not light: each reads alone from now on
    assert len(sch.plan(NOW, 2)) == 2
    assert len(sch.plan(NOW, 10)) == 3
    assert sch.plan(NOW, 10) == [], "in-flight tasks are not planned twice"


def test_merged_reads_are_bounded_by_their_events():
    sch = schedule()
    ts = tasks(30, streams=1)
    started(sch, ts, NOW - 600 * S)
    drain(sch, NOW, events=LIGHT_EVENTS - 1)
    reads = sch.plan(NOW, 100)
    per_read = MAX_READ_EVENTS // (LIGHT_EVENTS - 1)
    assert [len(r.keys) for r in reads] == [per_read] * (30 // per_read) + ([30 % per_read] if 30 % per_read else [])


def test_failure_backs_off_and_timeouts_shrink_the_window():
    sch = schedule()
    started(sch, tasks(1), NOW - 600 * S)
    (r,) = sch.plan(NOW, 10)
    sch.failed(r, "ReadTimeout", NOW, timed_out=True)
    st = sch.states[r.keys[0]]
    assert st.failures == 1 and st.window_s == 2.5 and st.last_error == "ReadTimeout"
    assert sch.plan(NOW, 10) == []
    assert sch.next_due_us() == NOW + 400_000
    (again,) = sch.plan(NOW + 400_000, 10)
    assert again.start_us == r.start_us and again.end_us < r.end_us


def test_paused_breaker_plans_nothing_and_released_reads_come_back():
    sch = schedule()
    started(sch, tasks(2), NOW - 600 * S)
    reads = sch.plan(NOW, 10)
    sch.paused_until_us = NOW + 5 * S
    for r in reads:
        sch.released(r, NOW, "kafka breaker open")
    assert sch.plan(NOW + S, 10) == []
    assert sch.next_due_us() == NOW + 5 * S
    assert sorted(k for r in sch.plan(NOW + 5 * S, 10) for k in r.keys) == sorted(k for r in reads for k in r.keys)


def test_clock_ahead_holds_windows_back():
    sch = schedule(clock_ahead_s=1.5)
    started(sch, tasks(1), NOW - 12 * S)
    (r,) = sch.plan(NOW, 10)
    assert r.end_us == windows.readable_limit(NOW, 10, 1.5, sch.grid_us) <= NOW - 11_500_000


def test_checkpoints_batched_per_partition_with_bounded_staleness():
    sch = schedule()
    a, b = tasks(3, table="ks.a"), tasks(3, table="ks.b")
    started(sch, a + b, NOW - 600 * S)  # one assignment of both tables
    # The start positions are new rows: due after the interval, not before.
    assert sch.checkpoints(NOW + 4 * S) == []
    rows = sch.checkpoints(NOW + 5 * S)
    assert len(rows) == 6
    sch.saved(rows, NOW + 5 * S)
    assert sch.checkpoints(NOW + 60 * S) == []
    # One task of ks.a moves: at the interval, only its partition is written (with every moved task of it).
    for r in sch.plan(NOW + 6 * S, 100):
        if r.table == "ks.a":
            sch.done(r, {}, NOW + 6 * S)
        else:
            sch.released(r, NOW + 6 * S)
    assert sch.checkpoints(NOW + 10 * S) == []
    rows = sch.checkpoints(NOW + 11 * S)
    assert {t.table for t, _ in rows} == {"ks.a"} and len(rows) == 3
    sch.saved(rows, NOW + 11 * S)
    assert sch.checkpoints(NOW + 11 * S, force=True) == []


def test_generation_end_is_saved_at_once_and_finishes_the_task():
    end = NOW - 30 * S
    sch = schedule()
    ts = tasks(2, end=end)
    started(sch, ts, end - 5 * S)
    sch.saved(sch.checkpoints(NOW, force=True), NOW)
    reads = sch.plan(NOW, 10)
    assert {r.end_us for r in reads} == {end}
    for r in reads:
        sch.done(r, {}, NOW)
    assert all(sch.states[t.key].finished for t in ts)
    rows = sch.checkpoints(NOW)
    assert sorted((t.task_id, p) for t, p in rows) == [(0, end), (1, end)]
    assert sch.next_due_us() is None


def test_until_is_a_goal_too():
    sch = schedule(until_us=NOW - 100 * S)
    started(sch, tasks(1), NOW - 100 * S)
    assert sch.plan(NOW, 10) == []
    assert all(st.finished for st in sch.states.values())


def test_revoked_task_is_returned_and_its_inflight_read_ignored():
    sch = schedule()
    ts = tasks(2)
    started(sch, ts, NOW - 600 * S)
    reads = sch.plan(NOW, 10)
    gone = sch.assign(ts[:1], NOW)
    assert [st.task.key for st in gone] == [ts[1].key]
    for r in reads:
        sch.done(r, {}, NOW)
    assert ts[1].key not in sch.states
    assert {t.task_id for t, _ in sch.checkpoints(NOW, force=True)} == {0}


def test_generation_end_learned_later_reopens_a_task_finished_by_until():
    sch = schedule()
    t = tasks(1)[0]
    started(sch, [t], NOW - 600 * S)
    ended = Task(t.table, t.generation_us, t.task_id, t.streams, NOW - 590 * S)
    sch.assign([ended], NOW)
    (r,) = sch.plan(NOW, 10)
    assert r.end_us == NOW - 590 * S


def test_silent_tasks_stay_on_the_live_grid():
    """Outboxes are often silent for long stretches: the first event after one still waits at most
    one grid step (a coarser grid for silent tasks halved idle queries, but made that wait twice as
    long, and the benchmark's load starts paid it in their p99)."""
    sch = schedule()
    ts = tasks(6)
    live = windows.readable_limit(NOW, 10, 0, sch.grid_us)
    started(sch, ts, live - sch.grid_us)
    drain(sch, NOW, limit=100)  # first windows: unknown traffic
    now, ends = NOW, []
    while now < NOW + 30 * S:
        now = sch.next_due_us()
        reads = drain(sch, now)
        assert len(reads) == 1 and len(reads[0].keys) == 6, "one shared read per step"
        ends.append(reads[0].end_us)
    steps = {b - a for a, b in zip(ends, ends[1:], strict=False)}
    assert steps == {sch.grid_us}
    assert all(e % sch.grid_us == 0 for e in ends)


def test_thin_traffic_over_many_tasks_keeps_their_shared_read_live():
    """100 events/s over 768 vnodes is one event per task every ~8 s, but every merged read sees some."""
    sch = schedule()
    ts = tasks(300)
    started(sch, ts, windows.readable_limit(NOW, 10, 0, sch.grid_us) - sch.grid_us)
    drain(sch, NOW, limit=1000)
    now, ends = NOW, []
    for i in range(60):
        now = sch.next_due_us()
        reads = sch.plan(now, 100)
        assert len(reads) == 1 and len(reads[0].keys) == 300, "one shared read per step"
        sch.done(reads[0], {reads[0].keys[i % 300]: 1}, now)  # one event somewhere in each read
        ends.append(reads[0].end_us)
    # The first event moved the group to the busy grid; it stays there while events keep coming.
    assert all(e % sch.busy_grid_us == 0 for e in ends[1:])
    assert {b - a for a, b in zip(ends[1:], ends[2:], strict=False)} == {sch.busy_grid_us}


def test_a_read_too_large_sends_its_tasks_alone_and_a_lone_one_narrower():
    sch = schedule()
    ts = tasks(5)
    started(sch, ts, NOW - 600 * S)
    (merged,) = sch.plan(NOW, 10)  # not read yet: they share a read
    assert len(merged.keys) == 5
    sch.too_big(merged, NOW)
    alone = sch.plan(NOW, 10)
    assert sorted(len(r.keys) for r in alone) == [1] * 5, "each reads alone, at once, from the same position"
    assert {(r.start_us, r.end_us) for r in alone} == {(merged.start_us, merged.end_us)}
    sch.too_big(alone[0], NOW)
    (again,) = sch.plan(NOW, 1)
    assert again.keys == alone[0].keys and again.end_us - again.start_us == (merged.end_us - merged.start_us) // 4
    for r in alone[1:]:
        sch.done(r, {r.keys[0]: 10}, NOW)
    assert all(sch.states[r.keys[0]].failures == 0 for r in alone), "not counted as a failure"


def caught_up(n: int) -> tuple[Schedule, int]:
    """n light tasks whose windows end at the current grid point (returned), due at the next."""
    sch = schedule()
    live = windows.readable_limit(NOW, 10, 0, sch.grid_us)
    started(sch, tasks(n), live - sch.grid_us)
    drain(sch, NOW)
    return sch, live


def test_a_late_plan_reads_up_to_the_newest_fine_grid_point_then_realigns():
    sch, live = caught_up(4)
    grid = sch.grid_us
    on_time = sch.next_due_us() + 3_000  # the loop's usual few ms after the grid point
    reads = sch.plan(on_time, 10)
    assert [(r.start_us, r.end_us) for r in reads] == [(live, live + grid)], "on time: the grid point"
    for r in reads:
        sch.done(r, {}, on_time)
    late = sch.next_due_us() + 120_007  # e.g. the last read was slow: half a step late
    reads = sch.plan(late, 10)
    newest = live + 2 * grid + 2 * sch.late_grid_us  # the newest point of the fine grid (a fifth of a step)
    assert sch.late_grid_us == grid // 5 and late - 10 * S - newest < sch.late_grid_us
    assert [(r.start_us, r.end_us) for r in reads] == [(live + grid, newest)], \
        "late: one read, all tasks, up to the newest readable point of the fine grid"
    assert len(reads[0].keys) == 4
    for r in reads:
        sch.done(r, {}, late)
    # No extra read for the rest of that step: the next is due at the next grid point, aligned again.
    assert sch.next_due_us() == live + 3 * grid + 10 * S
    reads = sch.plan(sch.next_due_us(), 10)
    assert [(r.start_us, r.end_us) for r in reads] == [(newest, live + 3 * grid)]


def test_a_plan_a_little_late_keeps_the_grid_point():
    sch, live = caught_up(2)
    slightly = sch.next_due_us() + sch.late_grid_us - 1000  # less than LATE_FRACTION of a step late
    reads = sch.plan(slightly, 10)
    assert [r.end_us for r in reads] == [live + sch.grid_us]


def test_tasks_of_one_group_planned_apart_within_a_fine_step_share_a_late_end():
    sch, _live = caught_up(4)
    late = sch.next_due_us() + 2 * sch.late_grid_us + 3_000
    first = sch.plan(late, 10)
    (a,) = first
    # Half the tasks come back at once (e.g. a release), planned alone 20 ms later: the same end.
    half = Read(a.table, a.generation_us, a.start_us, a.end_us, a.keys[:2], ())
    sch.released(half, late)
    (b,) = sch.plan(late + 20_000, 10)
    assert b.keys == a.keys[:2] and b.end_us == a.end_us


def test_a_group_carrying_events_reads_on_the_busy_grid_until_it_has_been_silent_a_while():
    sch, live = caught_up(4)
    assert sch.busy_grid_us < sch.grid_us
    now = sch.next_due_us()
    (r,) = sch.plan(now, 10)
    assert r.end_us == live + sch.grid_us, "silent so far: the grid"
    sch.done(r, {r.keys[0]: 3}, now)
    events_at = r.end_us
    nxt = sch.next_due_us()
    assert nxt == windows.next_readable_at(r.end_us, 10, 0, sch.busy_grid_us), "due at the busy grid's next point"
    ends = [r.end_us]
    while nxt is not None and nxt < events_at + 10 * S + 2 * BUSY_HOLD_S * S:
        (r,) = sch.plan(nxt, 10)
        assert len(r.keys) == 4
        sch.done(r, {}, nxt)  # silent from now on
        ends.append(r.end_us)
        nxt = sch.next_due_us()
    steps = [b - a for a, b in zip(ends, ends[1:], strict=False)]
    busy = [s for s, e in zip(steps, ends[1:], strict=False) if e <= events_at + BUSY_HOLD_S * S]
    # (the first busy step may be shorter: it ends at the busy grid's first point after the grid's)
    assert busy and all(s == sch.busy_grid_us for s in busy[1:]) and busy[0] <= sch.busy_grid_us
    assert len(busy) >= BUSY_HOLD_S * S // sch.busy_grid_us - 1, "busy for BUSY_HOLD_S after the last event"
    assert all(e % sch.grid_us == 0 for e in ends[-4:]) and steps[-3:] == [sch.grid_us] * 3, \
        "silent for BUSY_HOLD_S: back on the grid"


def test_only_the_replica_group_carrying_events_reads_on_the_busy_grid():
    sch = schedule(group_of=lambda t: t.task_id % 2)
    live = windows.readable_limit(NOW, 10, 0, sch.grid_us)
    started(sch, tasks(6), live - sch.grid_us)
    drain(sch, NOW)
    ends: dict[int, list[int]] = {0: [], 1: []}
    for _ in range(40):
        now = sch.next_due_us()
        for r in sch.plan(now, 10):
            group = r.keys[0][2] % 2
            assert r.group == group and {k[2] % 2 for k in r.keys} == {group}
            sch.done(r, {r.keys[0]: 1} if group == 0 else {}, now)
            ends[group].append(r.end_us)
    assert all(e % sch.busy_grid_us == 0 for e in ends[0][1:]) and len(ends[0]) > len(ends[1])
    assert all(e % sch.grid_us == 0 for e in ends[1]), "a silent group keeps the grid: idle cost is unchanged"


def test_the_busy_state_of_groups_no_longer_planned_is_forgotten():
    sch = schedule(group_of=lambda t: t.task_id)
    live = windows.readable_limit(NOW, 10, 0, sch.grid_us)
    for gen in range(50):  # each generation's groups carry events, then its tasks go to another worker
        ts = tasks(20, gen=GEN + gen)
        started(sch, ts, live - sch.grid_us)
        for r in sch.plan(NOW + gen * S, 100):
            sch.done(r, {k: 1 for k in r.keys}, NOW + gen * S)
        sch.assign([], NOW + gen * S)
    sch.plan(NOW + 60 * S, 100)
    assert not sch._busy_until

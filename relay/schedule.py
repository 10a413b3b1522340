"""Which windows a worker reads next, and which positions it saves (DESIGN §3, §3b). Pure.

The worker feeds facts (tasks assigned, start positions found, reads done or failed, the clock
skew, a paused breaker) with an injected wall-clock `now` (µs), and acts on the decisions: the
`Read`s to send and the checkpoint rows to write. Nothing here touches a socket.

Why it is shaped this way:
- Cost must follow traffic, not the number of tasks. Live windows end on a shared grid
  (`poll_interval_seconds`), so every caught-up task of a (table, generation) reads the same
  [start, end); tasks whose last windows were light and whose streams share a replica set are
  merged into one `Read`, which the reader sends as a few `IN` queries of at most 100 streams.
  768 idle vnodes then cost a handful of queries per grid step instead of 768. A replica group whose
  reads carry events moves to a finer grid (BUSY_FRACTION) for as long as they keep coming: the grid's
  wait is most of the latency beyond the confidence window, and then each extra query carries events.
- A task not read yet is merged too, a bounded number per read (UNKNOWN_EVENTS): a backlog of
  many light vnodes drains in reads of thousands of events, so the per-read costs (a query, a
  flush, two Redis calls, ~1 ms) stay small beside the per-event ones.
- A busy task reads alone and is due again at once, so it never waits behind idle ones; due tasks
  are served oldest-first from a heap, so a backlog cannot starve live tasks either.
- Positions move in memory; they are saved per (table, generation) partition at most
  `checkpoint_interval_s` after they moved (a crash re-reads at most that much, and dedup drops
  what was already delivered), and at once when a task reaches its generation's end (the
  generation barrier waits on those rows) or when the worker lets tasks go.
"""
from __future__ import annotations

import heapq
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field

from relay import windows
from relay.model import Task

TaskKey = tuple[str, int, int]

LIGHT_EVENTS = 1_000  # a task whose last window carried fewer events may share a query with others
# A task not read yet counts as this many events when reads are merged: its first windows are merged
# too (a backlog of 256 light vnodes is drained in reads of thousands of events, not one read per
# vnode window, each paying a query, a flush and two Redis calls), but never more than
# MAX_READ_EVENTS / UNKNOWN_EVENTS of them in one read, in case they are not light.
UNKNOWN_EVENTS = LIGHT_EVENTS
# Streams of one merged read: twenty IN queries of 100, sent at once, one publish batch. A worker
# publishes its reads one after another, so the events of a grid step's second read wait for the
# first's acks: 2,000 covers a worker's share of 768 vnodes x 4 shards in one read (measured at
# 600 events/s on the local stack: p99 over confidence 0.65/0.43 s, against 0.74/0.53 s at 1,000).
MAX_READ_STREAMS = 2_000
# Events a merged read may carry, by its tasks' last windows: the same bound as one task's window
# (the first page of each of its queries is all that travels ahead of the loop).
MAX_READ_EVENTS = 20_000
# Rows a read may bring into memory at all: a merged read whose tasks turn out not to be light (a
# burst, or a first read after a long outage) is cut off here and handed back (`too_big`).
MAX_READ_ROWS = 4 * MAX_READ_EVENTS
BACKOFF_MAX_S = 10.0
LATE_FRACTION = 0.2  # planned this far past its grid point or more, a live window ends on a grid this much finer
# A replica group whose reads carried events in the last BUSY_HOLD_S reads on a grid this much finer: the
# grid's wait is most of the latency a caught-up event sees beyond the confidence window, and while events
# flow each extra query carries some of them. An idle group stays on the grid: idle cost does not change.
# Measured at 768 tasks (make bench points, poll 0.25 s vs 0.1 s for all): p99 - confidence 0.28 -> 0.16 s at
# 100 events/s, for 0.08 -> 0.21 relay cores there.
BUSY_FRACTION = 0.4
BUSY_HOLD_S = 2.0


@dataclass
class TaskState:
    task: Task
    window_s: float
    position_us: int | None = None  # every event before it is delivered or dead-lettered
    due_us: int = 0  # wall time at which its next window may be read
    failures: int = 0
    finished: bool = False  # reached its generation's end (or the run's --until)
    busy: bool = False  # a read of it is in flight
    last_events: int = -1  # events in its last window; -1 = not read yet (see UNKNOWN_EVENTS)
    last_error: str = ""
    saved_us: int | None = None  # position last written to the checkpoint table
    goal_us: int | None = None  # where it stops: its generation's end or the run's --until


@dataclass(frozen=True)
class Read:
    """One window [start_us, end_us) of one or more tasks of one (table, generation)."""

    table: str
    generation_us: int
    start_us: int
    end_us: int
    keys: tuple[TaskKey, ...]
    streams: tuple[bytes, ...]  # the tasks' streams, task after task
    group: Hashable = None  # the replica set the tasks share (Schedule.group_of)


@dataclass
class Schedule:
    window_s: float
    confidence_s: float
    grid_s: float
    checkpoint_interval_s: float
    group_of: Callable[[Task], Hashable] = field(default=lambda task: None)  # replica set of a task's streams
    until_us: int | None = None
    clock_ahead_s: float = 0.0  # fact: how far relay's clock runs ahead of the cluster's
    paused_until_us: int = 0  # fact: the Kafka breaker is open until then
    states: dict[TaskKey, TaskState] = field(default_factory=dict)
    _heap: list[tuple[int, int, TaskKey]] = field(default_factory=list)
    _seq: int = 0
    _moved: dict[tuple[str, int], dict[TaskKey, int]] = field(default_factory=dict)  # partition → key → moved at
    _urgent: set[tuple[str, int]] = field(default_factory=set)  # partitions to save at once
    _unstarted: set[TaskKey] = field(default_factory=set)
    _busy_until: dict[tuple[str, int, Hashable], int] = field(default_factory=dict)  # group → wall time
    _busy_swept_us: int = 0

    def __post_init__(self) -> None:
        self.grid_us = max(1000, int(self.grid_s * 1_000_000) // 1000 * 1000)
        self.busy_grid_us = max(1000, int(self.grid_us * BUSY_FRACTION) // 1000 * 1000)
        self.late_grid_us = max(1000, int(self.grid_us * LATE_FRACTION) // 1000 * 1000)

    # ------------------------------------------------------------ facts in
    def assign(self, tasks: Iterable[Task], now_us: int) -> list[TaskState]:
        """The worker's whole task list. Returns the states of tasks it no longer has (to save)."""
        keep = {t.key: t for t in tasks}
        gone = [self.states.pop(k) for k in list(self.states) if k not in keep]
        for st in gone:
            self._forget(st.task.key)
        for key, task in keep.items():
            st = self.states.get(key)
            if st is None:
                self.states[key] = TaskState(task, self.window_s, goal_us=self.goal(task))
                self._unstarted.add(key)
            elif st.task != task:
                st.task = task  # e.g. the generation's end became known
                st.goal_us = self.goal(task)
                if st.finished and (st.goal_us is None or (st.position_us or 0) < st.goal_us):
                    st.finished = False
                    self._push(key, now_us)
        return gone

    def needs_start(self) -> list[TaskState]:
        return [self.states[k] for k in sorted(self._unstarted)]

    def started(self, key: TaskKey, position_us: int, now_us: int) -> None:
        st = self.states[key]
        self._unstarted.discard(key)
        st.position_us = position_us
        st.saved_us = None  # written at the first save even when it is the start itself
        self._moved_now(st, now_us)
        self._push(key, now_us)

    def done(self, read: Read, events: dict[TaskKey, int], now_us: int) -> None:
        """Every event of the read is delivered or dead-lettered: its tasks move to its end."""
        # Every task of a read shares its window: what follows from the window is worked out once.
        end = read.end_us
        group = (read.table, read.generation_us, read.group)
        if any(events.values()):
            self._busy_until[group] = now_us + int(BUSY_HOLD_S * 1_000_000)
        grid = self._grid_of(group, now_us)
        limit = windows.readable_limit(now_us, self.confidence_s, self.clock_ahead_s, grid)
        caught_up = end >= limit
        due = now_us  # at once; the next grid point when caught up
        if caught_up:
            due = windows.next_readable_at(end, self.confidence_s, self.clock_ahead_s, grid)
        for key in read.keys:
            st = self.states.get(key)
            if st is None:
                continue  # revoked while its read was in flight; the next owner re-reads it
            st.busy = False
            if st.position_us != read.start_us:
                self._push(key, now_us)
                continue
            n = events.get(key, 0)
            st.position_us, st.last_events = end, n
            if st.failures:
                st.failures, st.last_error = 0, ""
            if n or st.window_s < self.window_s * windows.CATCH_UP_GROWTH:
                st.window_s = windows.next_window_size(st.window_s, self.window_s, n)
            if st.goal_us is not None and end >= st.goal_us:
                st.finished = True
            self._moved_now(st, now_us)  # a finished task is urgent: the generation barrier waits on it
            if not st.finished:
                self._push(key, due)

    def failed(self, read: Read, error: str, now_us: int, timed_out: bool = False) -> None:
        for key in read.keys:
            st = self.states.get(key)
            if st is None:
                continue
            st.busy = False
            st.failures += 1
            st.last_error = error[:300]
            if timed_out:  # a read that keeps timing out gets a smaller window, not the same one forever
                st.window_s = windows.next_window_size(st.window_s, self.window_s, 0, timed_out=True)
            backoff = min(BACKOFF_MAX_S, 0.2 * 2 ** min(st.failures, 6))
            self._push(key, now_us + int(backoff * 1_000_000))

    def too_big(self, read: Read, now_us: int) -> None:
        """The read brought more than MAX_READ_ROWS rows and was dropped unpublished: each of its
        tasks reads alone from now on, with a window a quarter as wide, at once (it is not a failure)."""
        for key in read.keys:
            st = self.states.get(key)
            if st is None:
                continue
            st.busy = False
            st.last_events = max(st.last_events, LIGHT_EVENTS)
            if len(read.keys) == 1:  # alone already: only a narrower window helps
                st.window_s = windows.next_window_size(st.window_s, self.window_s, 0, timed_out=True)
            self._push(key, now_us)

    def released(self, read: Read, now_us: int, error: str = "") -> None:
        """The read was dropped without an outcome (stopping, breaker open): read it again later."""
        for key in read.keys:
            st = self.states.get(key)
            if st is not None:
                st.busy = False
                if error:
                    st.last_error = error
                self._push(key, max(now_us, self.paused_until_us))

    # ------------------------------------------------------------ decisions out
    def goal(self, task: Task) -> int | None:
        goals = [x for x in (task.end_us, self.until_us) if x is not None]
        return min(goals) if goals else None

    def plan(self, now_us: int, limit: int) -> list[Read]:
        """Up to `limit` reads due now, oldest due first; light tasks sharing a window merged."""
        if limit <= 0 or now_us < self.paused_until_us:
            return []
        groups: dict[Hashable, tuple[int, Hashable, list[TaskState]]] = {}  # read key -> (end, group, tasks)
        order: list[Hashable] = []
        if now_us - self._busy_swept_us >= BUSY_HOLD_S * 1_000_000:
            # A group that is never planned again (its generation ended, its tasks were revoked, its
            # replica set changed) would keep its entry: sweep the expired ones now and then.
            self._busy_until = {g: u for g, u in self._busy_until.items() if u > now_us}
            self._busy_swept_us = now_us
        limits = {grid: self._limit(now_us, grid) for grid in (self.grid_us, self.busy_grid_us)}
        heap, states = self._heap, self.states
        while heap and heap[0][0] <= now_us:
            due, _, key = heapq.heappop(heap)
            st = states.get(key)
            if st is None or st.busy or st.finished or st.position_us is None or st.due_us != due:
                continue  # a stale heap entry
            t = st.task
            rg = (t.table, t.generation_us, self.group_of(t))
            grid = self._grid_of(rg, now_us)
            end = windows.window_end(st.position_us, st.window_s, limits[grid], st.goal_us)
            if end is None:
                if st.goal_us is not None and st.position_us >= st.goal_us:
                    st.finished = True
                    self._moved_now(st, now_us)
                else:
                    self._push(key, windows.next_readable_at(st.position_us, self.confidence_s, self.clock_ahead_s,
                                                             grid))
                continue
            if st.last_events < LIGHT_EVENTS:  # light, or not read yet
                gk: Hashable = (rg, st.position_us, end)
            else:
                gk = ("alone", key, end)
            group = groups.get(gk)
            if group is None:
                if len(order) == limit:  # no room for another read: the rest stay due, untouched
                    self._push(key, now_us)
                    break
                group = groups[gk] = (end, rg[2], [])
                order.append(gk)
            group[2].append(st)
            st.busy = True
            st.due_us = -1
        reads: list[Read] = []
        for gk in order:
            end, replicas, members = groups[gk]
            chunk: list[TaskState] = []
            size = events = 0
            for st in members:
                # Bounded in streams (queries) and in the events their last windows carried (memory).
                expected = st.last_events if st.last_events >= 0 else UNKNOWN_EVENTS
                if chunk and (size + len(st.task.streams) > MAX_READ_STREAMS
                              or events + expected > MAX_READ_EVENTS):
                    reads.append(self._read(chunk, end, replicas))
                    chunk, size, events = [], 0, 0
                chunk.append(st)
                size += len(st.task.streams)
                events += expected
            if chunk:
                reads.append(self._read(chunk, end, replicas))
        return reads

    def next_due_us(self) -> int | None:
        """When `plan` may next return something (stale heap entries may make this early, never late)."""
        while self._heap:
            due, _, key = self._heap[0]
            st = self.states.get(key)
            if st is None or st.busy or st.finished or st.due_us != due:
                heapq.heappop(self._heap)
                continue
            return max(due, self.paused_until_us)
        return None

    def checkpoints(self, now_us: int, force: bool = False) -> list[tuple[Task, int]]:
        """(task, position) rows to write now: every moved position of a (table, generation) partition
        once one of them is `checkpoint_interval_s` old or its task finished; all of them when forced."""
        interval = int(self.checkpoint_interval_s * 1_000_000)
        rows: list[tuple[Task, int]] = []
        for part, moved in self._moved.items():
            # The partition's oldest move decides: O(partitions) when nothing is due.
            if force or part in self._urgent or now_us - min(moved.values()) >= interval:
                rows += [(self.states[k].task, self.states[k].position_us) for k in sorted(moved)]
        return rows

    def urgent(self) -> bool:
        """A task reached its generation's end (or the run's goal) and its position is not saved yet."""
        return bool(self._urgent)

    def saved(self, rows: Iterable[tuple[Task, int]], now_us: int) -> None:
        for task, position in rows:
            st = self.states.get(task.key)
            if st is None:
                continue
            st.saved_us = position
            part = (task.table, task.generation_us)
            if st.position_us == position:
                moved = self._moved.get(part, {})
                moved.pop(task.key, None)
                if not moved:
                    self._moved.pop(part, None)
                    self._urgent.discard(part)
            else:  # it moved on while being written: stale from now on
                self._moved.setdefault(part, {})[task.key] = now_us

    # ------------------------------------------------------------ internals
    def _grid_of(self, group: tuple[str, int, Hashable], now_us: int) -> int:
        return self.busy_grid_us if self._busy_until.get(group, 0) > now_us else self.grid_us

    def _limit(self, now_us: int, grid_us: int) -> int:
        """The newest end a live window may have on `grid_us`. Planned well past its grid point (the
        loop was busy, or the last read was slow), a window ends on the newest point of a finer grid
        (`late_grid_us`: a fifth of the grid's step, half the busy grid's), not at the grid point
        before it, which would leave up to a step of readable rows for one more round trip. Tasks
        planned in separate calls within one fine step still share an end (and merge again). At most
        one read per grid step still: the next is due at the next grid point, where windows realign."""
        limit = windows.readable_limit(now_us, self.confidence_s, self.clock_ahead_s, grid_us)
        fine = windows.readable_limit(now_us, self.confidence_s, self.clock_ahead_s, self.late_grid_us)
        return fine if fine - limit >= self.late_grid_us else limit

    def _push(self, key: TaskKey, due_us: int) -> None:
        st = self.states[key]
        st.due_us = due_us
        self._seq += 1
        heapq.heappush(self._heap, (due_us, self._seq, key))

    def _moved_now(self, st: TaskState, now_us: int) -> None:
        if st.position_us is None or st.position_us == st.saved_us:
            return
        part = (st.task.table, st.task.generation_us)
        self._moved.setdefault(part, {}).setdefault(st.task.key, now_us)
        if st.finished:
            self._urgent.add(part)

    def _forget(self, key: TaskKey) -> None:
        self._unstarted.discard(key)
        part = (key[0], key[1])
        moved = self._moved.get(part)
        if moved is not None:
            moved.pop(key, None)
            if not moved:
                del self._moved[part]
                self._urgent.discard(part)

    def _read(self, members: list[TaskState], end: int, group: Hashable) -> Read:
        first = members[0]
        return Read(first.task.table, first.task.generation_us, first.position_us, end,
                    tuple(st.task.key for st in members),
                    tuple(s for st in members for s in st.task.streams), group)

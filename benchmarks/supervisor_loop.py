"""The supervisor's loop at cluster scale, as pure logic: 3,072 vnode tasks (4 tables × 768)
over 16 workers, with no service behind it.

The Supervisor is real; its I/O is faked (workers are objects that are always alive, their
pipes only pickle what they are sent, discovery and checkpoints return fixed data), and a fake
worker confirms each assignment the way a real one does (a Progress carrying the assignment's
seq and the keys it now holds). Measured:

- `first_plan_ms`: the first assignment of every task (plans of every table, first messages).
- `idle_loop_ms`: one loop iteration when nothing changed (median; the loop runs every 100 ms);
  `idle_replans`: table plans recomputed during 200 such iterations (want 0).
- `progress_msg_ms`: handling one worker's Progress report (a worker sends one a second).
- `status_ms`: the status summary (built every 0.5 s); `status_tasks_ms`: its task list (built when
  /status asks for it).
- `checkpoint_refresh_ms`: handling a checkpoint refresh (every 2 s; the CQL reads are faked).
- `change_loop_ms`: the iteration after one table's generation switch (its 768 tasks replaced).
- `assign_ms`: computing the plan of that switch (the part of `change_loop_ms` that plans).
- `assign_bytes_max`: the largest Assign message pickled for one worker in the first plan.
- `moved_other_tables`: tasks of the other tables whose worker changed in that switch (want 0);
  `tables_replanned`: table plans that switch recomputed (want 1).

The assignment messages go out from the supervisor's sender threads (relay.sender), which pickle
them; their CPU shares the process with the loop, so it shows in `first_plan_ms` and
`change_loop_ms` but never as a wait on a pipe.

    python -m benchmarks.supervisor_loop [--tasks 3072] [--workers 16]   (prints JSON)
"""
from __future__ import annotations

import argparse
import json
import pickle
import random
import statistics
import sys
import threading
import time

from relay.config import Config, TableConfig
from relay.messages import Assign, Progress
from relay.model import Generation
from relay.testing.ring import VnodeRing

VNODES_PER_TABLE = 768
SHARDS = 8
GENERATION_US = (int(time.time()) - 3600) * 1_000_000  # an hour ago: well inside the CDC TTL


class _Process:
    """A worker process that is always alive."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.exitcode = None

    def is_alive(self) -> bool:
        return True

    def kill(self) -> None:
        pass

    def join(self, timeout=None) -> None:
        pass


class _Conn:
    """A control pipe that pickles what it is sent (the cost a real pipe has) and keeps the last Assign."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.last_assign: Assign | None = None
        self.bytes: list[int] = []

    def send(self, msg) -> None:
        size = len(pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL))
        with self.lock:
            self.bytes.append(size)
            if isinstance(msg, Assign):
                self.last_assign = msg

    def poll(self, timeout=0) -> bool:
        return False

    def close(self) -> None:
        pass

    def fileno(self) -> int:  # never waited on: the benchmark does not call step_messages
        raise OSError("fake pipe")


class _Checkpoints:
    def __init__(self, position_us: int) -> None:
        self.positions = {i: position_us for i in range(VNODES_PER_TABLE * 4)}

    def load(self, table: str, start_us: int) -> dict[int, int]:
        return self.positions


class _Discovery:
    def __init__(self, gens: dict[str, list[Generation]]) -> None:
        self.gens = gens

    def generations(self, table) -> list[Generation]:
        return self.gens[table.name]

    def cdc_ttl_seconds(self, table) -> int:
        return 86400

    def drain_disappeared(self) -> list:
        return []


def _generation(table: str, start_us: int, vnodes: int, seed: int) -> Generation:
    rng = random.Random(seed)
    streams = [s for group in VnodeRing.random(vnodes, SHARDS, seed=seed).make_streams(rng) for s in group]
    return Generation(table, start_us, None, tuple(streams), tablets=False)


def _confirm(sup, slot) -> None:
    """What a worker does on an Assign: take the tasks, report at once with the assignment's seq."""
    msg = _wait_sent(sup, slot)
    if msg is None:
        return
    positions = {t.key: (GENERATION_US + 1_000_000, False, "") for t in msg.tasks}
    sup._on_message(slot, Progress(slot.index, slot.process.pid, msg.seq, positions))


def _wait_sent(sup, slot) -> Assign | None:
    """The newest Assign handed to the slot's pipe (a sender thread may deliver it a moment later)."""
    if slot.seq == 0:
        return None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        msg = slot.conn.last_assign
        if msg is not None and msg.seq == slot.seq:
            return msg
        time.sleep(0.0005)
    raise RuntimeError(f"worker {slot.index}: assignment {slot.seq} never reached its pipe")


def _loop_once(sup) -> None:
    """The steps of one loop iteration of Supervisor.run(), minus the wait for messages."""
    sup.step_signals()
    sup.step_discover()
    sup.step_first_start()
    sup.step_checkpoints()
    sup.step_assign()
    sup.step_reap()
    sup.step_heartbeats()


def _owners(sup) -> dict[tuple, int]:
    return {t.key: s.index for s in sup.slots for t in s.tasks}


def _settle(sup, rounds: int = 6) -> None:
    """Loop and confirm until every worker holds its whole plan (handover takes a round or two)."""
    for _ in range(rounds):
        _loop_once(sup)
        for slot in sup.slots:
            _confirm(sup, slot)


def measure(tasks: int = 3072, workers: int = 16) -> dict:
    from relay import metrics
    from relay.sender import Sender
    from relay.supervisor import Supervisor

    n_tables = max(1, tasks // VNODES_PER_TABLE)
    vnodes = tasks // n_tables
    names = [f"bench.outbox{i}" for i in range(n_tables)]
    cfg = Config(tables=tuple(TableConfig(name=n) for n in names))
    gens = {n: [_generation(n, GENERATION_US, vnodes, seed=i)] for i, n in enumerate(names)}

    sup = Supervisor(cfg, workers)
    sup.metrics = metrics.SupervisorMetrics()
    sup.discovery = _Discovery(gens)
    sup.checkpoints = _Checkpoints(GENERATION_US + 1_000_000)
    sup.session = None
    sup._next_dlq = float("inf")  # counting dead letters is a CQL query
    now = time.monotonic()
    for i, slot in enumerate(sup.slots):
        slot.process, slot.conn = _Process(10_000 + i), _Conn()
        slot.sender = Sender(slot.conn, f"bench-sender-{i}")
        slot.started_at = slot.last_heartbeat = now
    sup._spawn = lambda slot: None
    sup._handover_dirty = True

    # First plan: discovery, checkpoints, then the loop that assigns every task.
    sup.step_discover()
    sup.step_first_start()
    sup.step_checkpoints()
    t0 = time.perf_counter()
    sup.step_assign()
    first_plan_ms = (time.perf_counter() - t0) * 1e3
    for slot in sup.slots:
        _wait_sent(sup, slot)
    assign_bytes_max = max(max(s.conn.bytes, default=0) for s in sup.slots)
    _settle(sup)
    held = sum(len(s.hb_keys) for s in sup.slots)
    if held != n_tables * vnodes:
        raise RuntimeError(f"workers hold {held} tasks, not {n_tables * vnodes}")

    # Idle: nothing changes between iterations.
    idle = []
    replans = sup.planner.recomputed
    for _ in range(200):
        t0 = time.perf_counter()
        _loop_once(sup)
        idle.append(time.perf_counter() - t0)
    idle_replans = sup.planner.recomputed - replans

    # A worker's Progress report (positions advanced, same tasks, same seq).
    slot = sup.slots[0]
    keys = list(slot.hb_keys)
    progress = []
    for i in range(50):
        msg = Progress(slot.index, slot.process.pid, slot.seq,
                       {k: (GENERATION_US + 2_000_000 + i, False, "") for k in keys})
        t0 = time.perf_counter()
        sup._on_message(slot, msg)
        progress.append(time.perf_counter() - t0)

    status, status_tasks, refresh = [], [], []
    for _ in range(10):
        sup._next_status = 0.0
        t0 = time.perf_counter()
        sup.step_status()
        status.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        sup._task_rows()
        status_tasks.append(time.perf_counter() - t0)
        sup._next_checkpoints = 0.0
        t0 = time.perf_counter()
        sup.step_checkpoints()
        sup.step_assign()
        refresh.append(time.perf_counter() - t0)

    # One table's generation switch: generation 1 ends, generation 2 (new streams) begins.
    before = _owners(sup)
    switched = names[0]
    old = gens[switched][0]
    new_start = GENERATION_US + 3_000_000
    gens[switched] = [Generation(switched, old.start_us, new_start, old.streams, False),
                      _generation(switched, new_start, vnodes, seed=99)]
    sup._next_discovery = 0.0
    sup.step_discover()
    # Every task of the old generation reached its end (workers reported it).
    for s in sup.slots:
        positions = {k: (new_start, True, "") for k in s.hb_keys if k[0] == switched}
        positions.update({k: (GENERATION_US + 2_000_000, False, "") for k in s.hb_keys if k[0] != switched})
        sup._on_message(s, Progress(s.index, s.process.pid, s.seq, positions))
    sup.step_checkpoints()  # discovery made it due: it loads the new generation's checkpoints
    assign_s = []
    real_plan = sup.planner._plan_table

    def timed_plan(*a, **kw):
        t = time.perf_counter()
        try:
            return real_plan(*a, **kw)
        finally:
            assign_s.append(time.perf_counter() - t)

    sup.planner._plan_table = timed_plan
    recomputed = sup.planner.recomputed
    try:
        t0 = time.perf_counter()
        _loop_once(sup)
        change_loop_ms = (time.perf_counter() - t0) * 1e3
    finally:
        sup.planner._plan_table = real_plan
    tables_replanned = sup.planner.recomputed - recomputed
    _settle(sup)
    after = _owners(sup)
    moved_other = sum(1 for k, w in before.items() if k[0] != switched and after.get(k) != w)
    new_tasks = sum(1 for k in after if k[0] == switched and k[1] == new_start)
    if new_tasks != vnodes:
        raise RuntimeError(f"{new_tasks} tasks of the new generation assigned, not {vnodes}")
    for slot in sup.slots:
        slot.sender.close()
    ms = 1e3
    return {
        "tasks": n_tables * vnodes,
        "tables": n_tables,
        "workers": workers,
        "first_plan_ms": round(first_plan_ms, 2),
        "idle_loop_ms": round(statistics.median(idle) * ms, 4),
        "idle_loop_p99_ms": round(sorted(idle)[int(len(idle) * 0.99) - 1] * ms, 4),
        "idle_replans": idle_replans,
        "progress_msg_ms": round(statistics.median(progress) * ms, 4),
        "status_ms": round(statistics.median(status) * ms, 3),
        "status_tasks_ms": round(statistics.median(status_tasks) * ms, 3),
        "checkpoint_refresh_ms": round(statistics.median(refresh) * ms, 3),
        "change_loop_ms": round(change_loop_ms, 2),
        "assign_ms": round(sum(assign_s) * ms, 2),
        "assign_bytes_max": assign_bytes_max,
        "moved_other_tables": moved_other,
        "tables_replanned": tables_replanned,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.supervisor_loop")
    p.add_argument("--tasks", type=int, default=3072)
    p.add_argument("--workers", type=int, default=16)
    args = p.parse_args(argv)
    sys.stdout.write(json.dumps(measure(args.tasks, args.workers)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

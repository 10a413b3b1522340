"""The supervisor (DESIGN §2): discovery → generation barrier → assignment → workers.

Signal handlers only queue the signal; one `run()` loop does named steps: handle signals,
discover, assign, read worker messages, reap, check heartbeats, publish status. Workers are
spawned (never forked) and get their tasks over a control pipe, written by a thread per worker
(relay.sender) so that a worker busy in a long window never stalls the loop.

The loop works only when an input changes: a table's active generation is re-decided when
discovery, a checkpoint refresh or a worker's report touches it; a table's plan is recomputed
only when its task set changes (relay.assignment.TablePlans); the handover (who may be given
what) only when a plan or what a worker holds changes. A loop where nothing changed costs a few
comparisons per worker.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext

from relay.assignment import TablePlans
from relay.config import Config, parse_start_from
from relay.discovery import CdcNotEnabled
from relay.leases import EventQueue
from relay.messages import Assign, Beat, BootError, Lease, Progress
from relay.model import Generation, Task
from relay.ownership import Decision, Ownership
from relay.positions import generation_expired
from relay.sender import Sender
from relay.slots import SlotMap
from relay.worker import CDC_TTL_DEFAULT_S, EXIT_BOOT_ERROR, worker_main

log = logging.getLogger("relay.supervisor")

LOOP_INTERVAL_S = 0.1
CHECKPOINT_REFRESH_S = 2.0
STATUS_INTERVAL_S = 0.5
STATUS_WAIT_S = 1.0  # how long /status waits for the loop to list the tasks
HEALTHY_AFTER_S = 60.0  # a worker alive this long has its restart backoff reset


def _iso(us: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(us / 1e6, tz=UTC).isoformat(timespec="milliseconds")


@dataclass
class Slot:
    index: int
    process: mp.process.BaseProcess | None = None
    conn: Connection | None = None
    started_at: float = 0.0
    last_heartbeat: float = 0.0
    restarts: int = 0
    restart_at: float = 0.0
    sender: Sender | None = None
    tasks: list[Task] = field(default_factory=list)  # its tasks in the plan
    sent: tuple[Task, ...] | None = None  # the last assignment handed to its sender
    seq: int = 0  # of that assignment
    outstanding: dict[int, frozenset] = field(default_factory=dict)  # seq -> keys, of assignments not confirmed
    hb_seq: int = -1  # assignment the worker had applied at its last progress report
    hb_keys: set[tuple] = field(default_factory=set)  # tasks it held then
    idle_s: float = 0.0  # how long its loop had made no progress, at its last beat
    dlq_failing: str = ""
    clock_ahead_s: float = 0.0
    boot_failure: str = ""  # what its last process said as it gave up booting (a service unreachable)

    def held(self) -> set[tuple]:
        """Tasks this worker may still be working on: what it reported, and until it confirms
        the latest assignment, anything of every assignment sent since (it may have applied any
        of them; a newer one may also have replaced an older one before it went out)."""
        if self.process is None or not self.process.is_alive():
            return set()
        if not self.outstanding:
            return self.hb_keys
        return self.hb_keys.union(*self.outstanding.values())


@dataclass
class TaskView:
    task: Task
    position_us: int | None = None
    finished: bool = False
    worker: int | None = None
    error: str = ""


class Supervisor:
    def __init__(self, cfg: Config, workers: int, until_us: int | None = None, log_level: str = "INFO",
                 ctx: BaseContext | None = None) -> None:
        self.cfg = cfg
        self.n_workers = workers
        self.until_us = until_us
        self.log_level = log_level
        self.ctx = ctx or mp.get_context("spawn")  # relay.forkserver: how `relay run` starts its workers
        self.signals: queue.SimpleQueue[int] = queue.SimpleQueue()
        self.slots = [Slot(i) for i in range(workers)]
        self.views: dict[tuple, TaskView] = {}
        self.generations: dict[str, list[Generation]] = {}
        self.stopping = False
        self.stop_deadline = 0.0
        self.exit_code = 0
        self.boot_error: str | None = None
        self.discovered = False
        self.status_lock = threading.Condition()
        self.status: dict = {"state": "starting"}
        self._status_wanted = False  # /status asked for the task list
        self._status_version = 0
        self._task_status: dict = {"tasks": [], "lag_seconds": {}}
        self._loop_running = False
        self._next_discovery = 0.0
        self._next_checkpoints = 0.0
        self._assigned_keys: set[tuple] = set()
        self._expired_warned: set[tuple] = set()
        self._next_status = 0.0
        self._tasks_cache: dict[tuple, list[Task]] = {}
        self._complete: set[tuple] = set()  # generations known complete: that never changes back
        self.planner = TablePlans([s.index for s in self.slots])
        self._table_tasks: dict[str, dict[tuple, Task]] = {}  # table -> its active tasks, by key
        self._table_gen: dict[str, tuple | None] = {}  # table -> (start, end) of its active generation
        self._loaded: set[tuple] = set()  # generations whose every task has a view (views are never dropped)
        self._all_complete: dict[str, bool] = {}  # table -> every generation complete (for --until)
        self._dirty_tables: set[str] = set()  # tables whose active generation must be re-decided
        self._handover_dirty = False  # a plan or what a worker holds changed
        self._resend = False  # every worker gets its assignment again (e.g. a CDC TTL changed)
        self.ttl_by_table: dict[str, int] = {}
        self._first_start_done: set[str] = set()
        self._cdc_off_warned: set[str] = set()
        # Leases (DESIGN §5b). Without a group member (the loop's unit tests) every slot is ours.
        self.leases = None  # relay.leases.GroupMember, started by run()
        self.lease_events = EventQueue()
        self.ownership: Ownership | None = None
        self.slot_map = SlotMap(cfg.leases.slots)
        self._run_slots: frozenset[int] | None = None  # the slots whose tasks this replica runs; None: all
        self._run_version = 0
        self._pending_revokes: list[tuple[object, float]] = []  # (Revoked event, when it arrived)
        self._lease_decision: Decision | None = None
        self._lease_sent: float | None = None  # the validity deadline the workers were last sent
        self._next_first_start = 0.0
        self._lease_healthy = False

    def _tasks_of(self, gen: Generation) -> list[Task]:
        """Tasks of a generation, cut once: the loop asks for them many times a second."""
        from relay.discovery import tasks_of

        key = (gen.table, gen.start_us, gen.end_us)
        cached = self._tasks_cache.get(key)
        if cached is None:
            cached = self._tasks_cache[key] = tasks_of(gen)
        return cached

    # ------------------------------------------------------------------ lifecycle
    def install_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda s, _f: self.signals.put_nowait(s))

    def run(self) -> int:
        from relay import connect, metrics
        from relay.checkpoints import CheckpointStore
        from relay.discovery import Discovery

        self.metrics = metrics.SupervisorMetrics()
        self.session = None
        # Scylla and Kafka at once: each connection is mostly a wait on the network.
        connect.import_cql_driver()
        cql = connect.Pending(lambda: connect.cql_session(self.cfg), "cql-connect")
        try:
            # Workers need nothing from this process until their first Assign. Starting one waits
            # until the forkserver has imported the workers' modules (~0.2 s, once): the connection
            # above is under way meanwhile.
            for slot in self.slots:
                self._spawn(slot)
            self._join_group(cql.failed)
            # What the first loop steps import, while the connections complete (the first start
            # and the first Assign wait on them otherwise): the retry library alone is ~0.1 s.
            import relay.autoreplay  # noqa: F401
            import relay.positions  # noqa: F401
            import relay.retry  # noqa: F401
            import relay.schema  # noqa: F401
            self.session = cql.get()
            self._require_schema()
            self.discovery = Discovery(self.session, self.cfg)
            self.checkpoints = CheckpointStore(self.session, self.cfg.scylla.relay_keyspace, self.cfg.replica_id)
        except BaseException:
            self._kill_all()
            if self.leases is not None:
                self.leases.close()
            cql.discard(lambda session: session.cluster.shutdown())
            raise
        from relay.autoreplay import DlqMonitor

        self.dlq_monitor = DlqMonitor(self.cfg, self.session, self.may_auto_replay).start()  # /dlq, auto-replay
        from relay import heap

        heap.settle()
        with self.status_lock:
            self._loop_running = True
        try:
            while True:
                self.step_signals()
                self.step_leases()
                if self.stopping:
                    if self.step_drain():
                        break
                else:
                    self.step_discover()
                    self.step_first_start()
                    self.step_checkpoints()
                    self.step_assign()
                    self.step_reap()
                    self.step_heartbeats()
                    if self.boot_error:
                        log.error("a worker cannot start: %s; stopping relay", self.boot_error)
                        self.exit_code = 2
                        self._begin_stop(graceful=False)
                    elif self._until_reached():
                        log.info("every task has reached --until; stopping")
                        self._begin_stop(graceful=True)
                self.step_messages(LOOP_INTERVAL_S)
                self.step_status()
        finally:
            self.dlq_monitor.stop()
            with self.status_lock:
                self._loop_running = False
                self.status_lock.notify_all()
            self._kill_all()
            if self.leases is not None:
                log.info("workers stopped; leaving the leases group")  # the benchmark times the handover from here
                self.leases.close()  # LeaveGroup, after the workers' last checkpoints: peers take over now
            self.session.cluster.shutdown()
        return self.exit_code

    def dlq(self) -> dict:
        """/dlq: dead-letter statistics and the last auto-recovery round (read-only)."""
        monitor = getattr(self, "dlq_monitor", None)
        return monitor.dlq() if monitor is not None else {"stats": None}

    def _join_group(self, other_failed: Callable[[], BaseException | None] = lambda: None) -> None:
        """`other_failed`: the error of a start-up step running beside this one (Scylla's connection),
        which ends the wait for Kafka."""
        from relay.leases import GroupMember, KafkaUnreachable, ensure_topic

        lz = self.cfg.leases
        while True:  # Kafka down at start: wait for it (a signal still stops relay)
            try:
                ensure_topic(self.cfg)
                break
            except KafkaUnreachable as exc:
                if (error := other_failed()) is not None:
                    raise error from None
                log.warning("%s; retrying in 2s", exc)
                time.sleep(2.0)
                try:
                    sig = self.signals.get_nowait()
                except queue.Empty:
                    continue
                raise SystemExit(f"{signal.Signals(sig).name} while waiting for Kafka") from None
        self.ownership = Ownership(lz.duration_seconds, lz.renew_seconds, self.cfg.relay.shutdown_timeout_seconds)
        self._run_slots = frozenset()
        self.metrics.slots_total.set(lz.slots)
        self.metrics.slots_owned.set(0)
        self.leases = GroupMember(self.cfg, self.lease_events)
        self.leases.start()
        log.info("joining leases group %s (topic %s, %d slots)", self.cfg.leases_group_id, self.cfg.leases_topic,
                 lz.slots)

    def _require_schema(self) -> None:
        from relay.errors import UserError
        from relay.schema import has_cdc_log, require_relay_tables

        ks = self.cfg.scylla.relay_keyspace
        require_relay_tables(self.session, ks)
        for t in self.cfg.tables:
            if not has_cdc_log(self.session, t.keyspace, t.table):
                raise UserError(f"{self.cfg.source}: tables: {t.name} has no CDC log ({t.table}_scylla_cdc_log); "
                                f"enable CDC on it: ALTER TABLE {t.name} WITH cdc = {{'enabled': true}}")

    # ------------------------------------------------------------------ steps
    def step_signals(self) -> None:
        while True:
            try:
                sig = self.signals.get_nowait()
            except queue.Empty:
                return
            if self.stopping:
                log.warning("second signal: stopping immediately")
                self._kill_all()
                self.exit_code = self.exit_code or 1
                raise SystemExit(self.exit_code)
            log.info("%s: draining (finish windows, flush, checkpoint); send again to stop at once",
                     signal.Signals(sig).name)
            self._begin_stop(graceful=True)

    def _begin_stop(self, graceful: bool) -> None:
        self.stopping = True
        self.stop_deadline = time.monotonic() + self.cfg.relay.shutdown_timeout_seconds
        for slot in self.slots:
            if slot.process is not None and slot.process.is_alive():
                if graceful and slot.sender is not None:
                    slot.sender.stop()
                else:
                    slot.process.kill()

    def step_leases(self) -> None:
        """Group facts in (relay.leases), ownership decisions out: which slots' tasks run, when a
        revoke's drain is over, and the workers' publishing deadline."""
        from relay.leases import Assigned, Lost, Proven, Revoked

        o = self.ownership
        if o is None:
            return
        now = time.monotonic()
        m = self.metrics
        while True:
            try:
                ev = self.lease_events.get_nowait()
            except queue.Empty:
                break
            if isinstance(ev, Proven):
                o.proven(ev.sent_at)
            elif isinstance(ev, Assigned):
                o.assigned(ev.slots)
                m.rebalances.labels("assigned").inc()
            elif isinstance(ev, Revoked):
                o.revoked(ev.slots, now)
                self._pending_revokes.append((ev, now))
                m.rebalances.labels("revoked").inc()
            elif isinstance(ev, Lost):
                o.lost(ev.slots, now)
                m.rebalances.labels("lost").inc()
                m.slots_lost.inc(len(ev.slots))
                m.rebalance_seconds.observe(0.0)  # nothing to wait for: the tasks stop at once
        if o.draining:  # what the workers hold matters only to a drain (O(tasks): not on every loop)
            held: set[tuple] = set()
            for slot in self.slots:
                held |= slot.held()
            o.holding(self.slot_map.slots_of(held))
        d = self._lease_decision = o.decide(now)
        if d.run != self._run_slots:
            self._run_slots = d.run
            self._run_version += 1
            self._dirty_tables.update(self.generations)
            self._dirty_tables.update(self._table_tasks)
        if d.revoke_done and self._pending_revokes:
            if d.drain_timed_out:
                log.error("leases: revoked tasks were not checkpointed within shutdown_timeout_seconds; "
                          "handing their slots over anyway (the next owner re-reads, dedup drops repeats)")
            for ev, at in self._pending_revokes:
                m.rebalance_seconds.observe(now - at)
                ev.done.set()
            self._pending_revokes.clear()
        if d.healthy != self._lease_healthy and (d.run or not d.healthy):
            self._lease_healthy = d.healthy
            if d.healthy:
                log.info("leases: group session proven; workers publish for %d slot(s)", len(d.run))
            else:
                log.warning("leases: group session not proven (Kafka unreachable, frozen, or expelled): "
                            "workers publish nothing until it is")
        if d.valid_until != self._lease_sent:
            self._lease_sent = d.valid_until
            for slot in self.slots:
                if slot.sender is not None:
                    slot.sender.lease(Lease(d.valid_until))
        m.slots_owned.set(len(d.run))

    def may_auto_replay(self) -> bool:
        """DLQ auto-replay runs on one replica at a time (DESIGN §4b): the owner of slot 0, while its
        group session is proven. False before leases are joined."""
        d = self._lease_decision
        return d is not None and 0 in d.run and time.monotonic() < d.valid_until

    def step_drain(self) -> bool:
        """True once every worker has exited (or the shutdown timeout passed)."""
        alive = [s for s in self.slots if s.process is not None and s.process.is_alive()]
        if not alive:
            for s in self.slots:
                self._reaped(s)
            return True
        if time.monotonic() > self.stop_deadline:
            log.error("shutdown timeout: killing %d worker(s)", len(alive))
            self.exit_code = self.exit_code or 1
            return True
        return False

    def step_discover(self) -> None:
        now = time.monotonic()
        if now < self._next_discovery:
            return
        self._next_discovery = now + self.cfg.relay.generation_poll_seconds
        try:
            for table in self.cfg.tables:
                gens = self.discovery.generations(table)
                if not gens:
                    log.warning("%s: no CDC generation published yet", table.name)
                if gens != self.generations.get(table.name):
                    self._dirty_tables.add(table.name)
                self.generations[table.name] = gens
                try:
                    ttl = self.discovery.cdc_ttl_seconds(table)
                except CdcNotEnabled:
                    if table.name not in self._cdc_off_warned:
                        self._cdc_off_warned.add(table.name)
                        log.error("%s: CDC is not enabled on the table (its cdc options are gone): nothing new "
                                  "reaches its log; relay keeps reading what is there", table.name)
                    ttl = self.ttl_by_table.get(table.name, CDC_TTL_DEFAULT_S)
                if ttl != self.ttl_by_table.get(table.name):
                    self.ttl_by_table[table.name] = ttl
                    self._resend = self._handover_dirty = True  # workers learn the TTL with their next assignment
                    self._dirty_tables.add(table.name)  # expiry depends on it
            for table, _start in self.discovery.drain_disappeared():
                self.metrics.generations_disappeared.labels(table).inc()
            self.discovered = True
            self._next_checkpoints = 0.0
        except Exception as exc:  # noqa: BLE001 - discovery retries on its next tick
            log.warning("discovery failed: %s", exc)
            self._next_discovery = now + 2.0

    def step_first_start(self) -> None:
        """relay's first start on a table (no checkpoint at all): apply start_from once, as checkpoints,
        before any of its tasks runs. Every later decision reads them (relay.positions)."""
        from relay.positions import first_start, start_from_instant
        from relay.retry import Retrier, cql_errors

        if not self.discovered:
            return
        # With replicas, the owner of slot 0 alone decides (two replicas deciding "now" a few seconds
        # apart would overwrite each other's start); the others wait for its checkpoints.
        decider = self._run_slots is None or 0 in self._run_slots
        now = time.monotonic()
        if not decider and now < self._next_first_start:
            return
        self._next_first_start = now + CHECKPOINT_REFRESH_S
        for table, gens in self.generations.items():
            if table in self._first_start_done or not gens:
                continue
            try:
                if any(self.checkpoints.load(table, g.start_us) for g in gens):
                    self._first_start_done.add(table)
                    self._dirty_tables.add(table)
                    continue
                if not decider:
                    continue
                mode, lookback = parse_start_from(self.cfg.relay.start_from, self.cfg.source)
                instant = start_from_instant(mode, lookback, int(time.time() * 1e6),
                                             self.ttl_by_table.get(table, CDC_TTL_DEFAULT_S))
                writes = first_start(((g, self._tasks_of(g)) for g in gens), instant)
                retrier = Retrier(self.cfg)
                if writes:  # one unlogged batch per 100 rows of a partition, not a write per task
                    retrier.call("checkpoint_write", cql_errors(), self.checkpoints.save_many, writes)
                self._first_start_done.add(table)
                self._dirty_tables.add(table)
                log.info("%s: first start, start_from=%s: reading from %s (%d checkpoints written)", table,
                         self.cfg.relay.start_from, _iso(instant) if instant else "the oldest CDC row", len(writes))
            except Exception as exc:  # noqa: BLE001 - tried again next loop; no task of the table runs before
                log.warning("%s: deciding the first start failed: %s", table, exc)

    def step_checkpoints(self) -> None:
        """Refresh positions of the generations the barrier looks at, from Scylla."""
        now = time.monotonic()
        if now < self._next_checkpoints or not self.discovered:
            return
        self._next_checkpoints = now + CHECKPOINT_REFRESH_S
        try:
            for table, gens in self.generations.items():
                for gen in self._frontier(table, gens):
                    positions = self.checkpoints.load(table, gen.start_us)
                    views = self.views
                    for task in self._tasks_of(gen):
                        view = views.get(task.key)
                        if view is None:
                            view = views[task.key] = TaskView(task)
                        view.task = task
                        position = positions.get(task.task_id)
                        if position is not None and (view.position_us is None or position > view.position_us):
                            view.position_us = position
                # This read is O(tasks) anyway: re-deciding the table costs no more, and catches
                # what changes with time alone (a generation outliving the CDC TTL).
                self._dirty_tables.add(table)
        except Exception as exc:  # noqa: BLE001
            log.warning("reading checkpoints failed: %s", exc)

    def _frontier(self, table: str, gens: list[Generation]) -> list[Generation]:
        """The generations that are not known to be complete, oldest first (at most two needed)."""
        out = []
        for gen in gens:
            if not self._gen_complete(gen):
                out.append(gen)
            if len(out) == 2:
                break
        return out

    def _goal(self, gen: Generation) -> int | None:
        goals = [x for x in (gen.end_us, self.until_us) if x is not None]
        return min(goals) if goals else None

    def _gen_complete(self, gen: Generation) -> bool:
        """Complete for good: positions only grow, and expiry only comes closer."""
        key = (gen.table, gen.start_us, gen.end_us)
        if key in self._complete:
            return True
        if self._gen_complete_now(gen):
            self._complete.add(key)
            return True
        return False

    def _gen_complete_now(self, gen: Generation) -> bool:
        if self.until_us is not None and gen.start_us >= self.until_us:
            return True  # nothing of it is wanted
        goal = self._goal(gen)
        if goal is None or gen.end_us is None and self.until_us is None:
            return False
        ttl = self.ttl_by_table.get(gen.table, CDC_TTL_DEFAULT_S)
        if generation_expired(gen, int(time.time() * 1e6), ttl):
            if gen.key not in self._expired_warned:
                self._expired_warned.add(gen.key)
                self.metrics.generations_expired.labels(gen.table).inc()
                log.warning("%s: generation %s ended more than the CDC TTL (%ds) ago; its rows have expired, "
                            "skipped", gen.table, _iso(gen.start_us), ttl)
            return True
        for task in self._tasks_of(gen):
            view = self.views.get(task.key)
            if view is None or view.position_us is None or view.position_us < goal:
                return False
        return True

    def active_tasks(self) -> list[Task]:
        """Generation barrier: per table, only the oldest incomplete generation is read."""
        return [t for table in sorted(self._table_tasks) for t in self._table_tasks[table].values()]

    def _active_generation(self, table: str) -> Generation | None:
        if table not in self._first_start_done:
            return None  # start_from is not pinned yet
        for gen in self.generations.get(table, []):
            if self._gen_complete(gen):
                continue
            if not self._views_loaded(gen):
                return None  # wait for its checkpoints before deciding
            self.metrics.generation.labels(table).set(gen.start_us / 1e6)
            return gen
        return None

    def _views_loaded(self, gen: Generation) -> bool:
        key = (gen.table, gen.start_us, gen.end_us)
        if key not in self._loaded and all(t.key in self.views for t in self._tasks_of(gen)):
            self._loaded.add(key)
        return key in self._loaded

    def step_assign(self) -> None:
        if not self.discovered:
            return
        if self._dirty_tables:
            self._refresh_tables()
        if self._handover_dirty:
            self._handover()

    def _refresh_tables(self) -> None:
        """Re-decide the active generation of the tables an input touched, and re-plan those whose
        task set changed. Plans go by key: a task whose end becomes known stays where it is."""
        changed = False
        for table in sorted(self._dirty_tables):
            gen = self._active_generation(table)
            if self.until_us is not None:
                self._all_complete[table] = all(self._gen_complete(g) for g in self.generations.get(table, []))
            gen_key = None if gen is None else (gen.start_us, gen.end_us, self._run_version)
            if gen_key != self._table_gen.get(table):  # cut once per (start, end) and owned slots
                self._table_gen[table] = gen_key
                tasks = {t.key: t for t in self._tasks_of(gen) if self._runs(t, gen)} if gen is not None else {}
                changed = True
                self._table_tasks[table] = tasks
                self.planner.update(table, tasks.keys())
                for key, task in tasks.items():
                    self.views[key].task = task  # its end, once known (the generation's views are loaded)
        self._dirty_tables.clear()
        if not changed:
            return
        by_key = {k: t for tasks in self._table_tasks.values() for k, t in tasks.items()}
        for slot in self.slots:
            slot.tasks = [by_key[k] for k in self.planner.of_slot(slot.index)]
            for t in slot.tasks:
                self.views[t.key].worker = slot.index
        self._assigned_keys = set(by_key)
        self._handover_dirty = True

    def _runs(self, task: Task, gen: Generation) -> bool:
        """The task's slot is one this replica runs (all of them without leases)."""
        return self._run_slots is None or self.slot_map.of(task, gen.tablets) in self._run_slots

    def _handover(self) -> None:
        """Send each worker its planned tasks that no other live worker may still hold."""
        self._handover_dirty = False
        resend, self._resend = self._resend, False
        holder: dict[tuple, int] = {}  # key -> the one slot that may hold it, or -1 when several may
        for slot in self.slots:
            for key in slot.held():
                holder[key] = slot.index if holder.get(key, slot.index) == slot.index else -1
        for slot in self.slots:
            if slot.sender is None or slot.process is None or not slot.process.is_alive():
                continue
            sendable = tuple(t for t in slot.tasks if holder.get(t.key, slot.index) == slot.index)
            if sendable != slot.sent or resend:
                slot.seq += 1
                slot.outstanding[slot.seq] = frozenset(t.key for t in sendable)
                slot.sent = sendable
                slot.sender.assign(Assign(slot.seq, sendable, dict(self.ttl_by_table)))

    def _until_reached(self) -> bool:
        if self.until_us is None or not self.discovered:
            return False
        if int(time.time() * 1e6) < self.until_us:
            return False
        return all(self._all_complete.get(table, False) for table in self.generations)

    def step_messages(self, timeout: float) -> None:
        from multiprocessing.connection import wait

        conns = [s.conn for s in self.slots if s.conn is not None]
        for conn in wait([*conns, self.lease_events], timeout):
            if conn is self.lease_events:  # the next step_leases takes the events themselves
                self.lease_events.clear_wakeups()
                continue
            self._drain_messages(next(s for s in self.slots if s.conn is conn))

    def _drain_messages(self, slot: Slot) -> None:
        conn = slot.conn
        if conn is None:
            return
        try:
            while conn.poll():
                self._on_message(slot, conn.recv())
        except (EOFError, OSError):
            slot.conn = None

    def _on_message(self, slot: Slot, msg) -> None:
        if isinstance(msg, Beat):
            slot.last_heartbeat = time.monotonic()
            slot.idle_s = msg.idle_s
        elif isinstance(msg, Progress):
            slot.last_heartbeat = time.monotonic()
            if msg.assign_seq != slot.hb_seq or slot.hb_keys != msg.positions.keys():
                slot.hb_seq = msg.assign_seq
                slot.hb_keys = set(msg.positions)
                slot.outstanding = {seq: keys for seq, keys in slot.outstanding.items() if seq > msg.assign_seq}
                self._handover_dirty = True
            slot.dlq_failing = msg.dlq_failing
            slot.clock_ahead_s = msg.clock_ahead_s
            views, until = self.views, self.until_us
            for key, (position, finished, error) in msg.positions.items():
                view = views.get(key)
                if view is None:
                    continue
                old = view.position_us
                if position is not None and (old is None or position > old):
                    end = view.task.end_us
                    goal = end if until is None else until if end is None else min(end, until)
                    if goal is not None and (old or 0) < goal <= position:
                        self._dirty_tables.add(key[0])  # this may complete its generation
                    view.position_us = position
                view.finished = finished
                view.error = error
        elif isinstance(msg, BootError):
            if msg.fatal:
                self.boot_error = f"worker {msg.index}: {msg.message}"
            else:
                slot.boot_failure = msg.message

    def step_reap(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            proc = slot.process
            if proc is None:
                if now >= slot.restart_at:
                    self._spawn(slot)
                continue
            if proc.is_alive():
                if slot.restarts and now - slot.started_at > HEALTHY_AFTER_S:
                    slot.restarts = 0
                continue
            code = proc.exitcode
            self._drain_messages(slot)  # why it died, when it could say
            self._reaped(slot)
            if code == EXIT_BOOT_ERROR:
                self.boot_error = self.boot_error or f"worker {slot.index} exited with the boot-error code"
                continue
            delay = min(30.0, 0.5 * 2 ** slot.restarts)
            slot.restarts += 1
            slot.restart_at = now + delay
            how = f"signal {-code}" + (" (SIGKILL: out of memory?)" if code == -9 else "") if code and code < 0 \
                else f"exit code {code}"
            if slot.boot_failure:
                how, slot.boot_failure = f"{how}: could not start: {slot.boot_failure}", ""
            log.error("worker %d (pid %s) died with %s; restarting in %.1fs", slot.index, proc.pid, how, delay)
            self.metrics.worker_restarts.inc()

    def step_heartbeats(self) -> None:
        now = time.monotonic()
        timeout = self.cfg.relay.heartbeat_timeout_seconds
        for slot in self.slots:
            proc = slot.process
            if proc is None or not proc.is_alive():
                continue
            if now - max(slot.last_heartbeat, slot.started_at) > timeout:
                log.error("worker %d (pid %s) sent no heartbeat for %.0fs; killing it", slot.index, proc.pid, timeout)
                proc.kill()
            elif slot.idle_s > timeout:
                # It beats, but its loop is stuck beyond every bounded wait (each CQL request, Redis
                # call and publish poll is far shorter and ticks its progress).
                log.error("worker %d (pid %s) made no progress for %.0fs; killing it", slot.index, proc.pid,
                          slot.idle_s)
                self.metrics.workers_hung.inc()
                slot.idle_s = 0.0
                proc.kill()
        alive = sum(1 for s in self.slots if s.process is not None and s.process.is_alive())
        self.metrics.workers_alive.set(alive)

    def step_status(self) -> None:
        """The summary every 0.5 s (O(workers + generations)); the task list only when /status asks."""
        with self.status_lock:
            wanted = self._status_wanted
        now = time.monotonic()
        if not wanted and now < self._next_status:
            return
        self._next_status = now + STATUS_INTERVAL_S
        summary = self._status_summary(now)
        tasks = self._task_status
        if wanted:
            tasks = self._task_rows()
        with self.status_lock:
            self._task_status = tasks
            self.status = {**summary, **tasks}
            if wanted:
                self._status_wanted = False
                self._status_version += 1
                self.status_lock.notify_all()

    def _status_summary(self, now: float) -> dict:
        workers = [{"index": s.index, "pid": s.process.pid if s.process else None,
                    "alive": bool(s.process and s.process.is_alive()), "tasks": len(s.tasks),
                    "restarts": s.restarts,
                    "heartbeat_age_seconds": round(now - s.last_heartbeat, 1) if s.last_heartbeat
                    else None} for s in self.slots]
        gens = {t: [{"start_us": g.start_us, "end_us": g.end_us, "streams": len(g.streams),
                     "complete": self._gen_complete(g)} for g in gl] for t, gl in self.generations.items()}
        dlq_failing = [s.dlq_failing for s in self.slots if s.dlq_failing]
        ready = self.discovered and not self.stopping and not dlq_failing and all(
            w["alive"] and w["heartbeat_age_seconds"] is not None for w in workers)
        leases = None
        if self.ownership is not None:
            d = self._lease_decision
            # A member serving its slots (proven session), or a member with none (standby).
            ready = ready and d is not None and d.member and (not d.run or now < d.valid_until)
            leases = {**(self.leases.snapshot() if self.leases is not None else {}),
                      "slots": sorted(d.run) if d else [], "draining": sorted(d.draining) if d else [],
                      "valid_for_seconds": round(max(0.0, d.valid_until - now), 1) if d else 0.0,
                      "slots_total": self.cfg.leases.slots, "group_id": self.cfg.leases_group_id,
                      "topic": self.cfg.leases_topic}
        return {"state": "stopping" if self.stopping else ("running" if ready else "starting"),
                "replica": self.cfg.replica_id, "ready": ready, "workers": workers,
                "generations": gens, "until_us": self.until_us,
                "dead_letter_writes_failing": dlq_failing[0] if dlq_failing else None,
                "clock_ahead_seconds": max((s.clock_ahead_s for s in self.slots), default=0.0),
                "leases": leases}

    def _task_rows(self) -> dict:
        now_us = int(time.time() * 1e6)
        tasks = []
        lag: dict[str, float] = {}
        for key in sorted(self._assigned_keys):
            v = self.views[key]
            behind = None if v.position_us is None else max(0.0, (now_us - v.position_us) / 1e6)
            if behind is not None and not v.finished:
                lag[v.task.table] = max(lag.get(v.task.table, 0.0), behind)
            tasks.append({"table": v.task.table, "generation_us": v.task.generation_us, "task_id": v.task.task_id,
                          "streams": len(v.task.streams), "replica": self.cfg.replica_id, "worker": v.worker,
                          "slot": self.slot_map.known(key), "position_us": v.position_us,
                          "lag_seconds": behind, "finished": v.finished, "error": v.error or None})
        return {"tasks": tasks, "lag_seconds": lag}

    def snapshot(self) -> dict:
        """The status, with the task list as of now: the loop builds it when asked (it would cost
        the loop O(tasks) every 0.5 s otherwise). Called from the HTTP server's threads."""
        with self.status_lock:
            if self._loop_running:
                version = self._status_version
                self._status_wanted = True
                self.status_lock.wait_for(lambda: self._status_version != version or not self._loop_running,
                                          STATUS_WAIT_S)
            return dict(self.status)

    # ------------------------------------------------------------------ processes
    def _spawn(self, slot: Slot) -> None:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=worker_main, name=f"relay-worker-{slot.index}",
                                args=(slot.index, self.cfg, child, self.until_us, self.log_level), daemon=True)
        proc.start()
        child.close()
        slot.process, slot.conn = proc, parent
        slot.sender = Sender(parent, f"relay-sender-{slot.index}")
        slot.started_at = time.monotonic()
        slot.last_heartbeat = 0.0
        slot.sent = None
        slot.seq, slot.hb_seq, slot.hb_keys, slot.outstanding = 0, -1, set(), {}
        slot.idle_s, slot.dlq_failing = 0.0, ""
        if self._lease_sent is not None:
            slot.sender.lease(Lease(self._lease_sent))  # before its first assignment
        self._handover_dirty = True
        log.info("worker %d started (pid %d)", slot.index, proc.pid)

    def _reaped(self, slot: Slot) -> None:
        from relay.metrics import mark_dead

        if slot.process is not None:
            if slot.process.pid:
                mark_dead(slot.process.pid)
            slot.process.join(0)
        # Its process is gone, so a write in progress fails at once; never close a pipe a sender
        # thread may still be writing to (the descriptor could be reused under it).
        closed = slot.sender.close() if slot.sender is not None else True
        if slot.conn is not None and closed:
            slot.conn.close()
        slot.process, slot.conn, slot.sender, slot.sent = None, None, None, None
        slot.outstanding, slot.hb_keys = {}, set()
        self._handover_dirty = True  # what it held is free now

    def _kill_all(self) -> None:
        for slot in self.slots:
            if slot.process is not None and slot.process.is_alive():
                slot.process.kill()
                slot.process.join(5)
        if self.ctx.get_start_method() == "forkserver":
            from relay import forkserver

            forkserver.stop()

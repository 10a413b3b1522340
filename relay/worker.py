"""A worker process: read → map → dedup → produce → acks → mark dedup keys → dead letters →
checkpoint, for every assigned task (DESIGN §2–§4, §3b).

What to read next, how wide, which tasks share a query and when positions are saved is decided by
a pure `relay.schedule.Schedule`; this loop carries facts in (assignments, start positions, read
outcomes, the clock skew, an open breaker) and its decisions out. Reads are pipelined: up to
`MAX_INFLIGHT` are on the wire while the loop publishes the oldest, one at a time, so a control
message (new assignment, stop) is handled between windows and a stop ends on saved checkpoints.
Liveness is beaten by a thread of its own: a window that waits out a Kafka outage or retries CQL
must not look like a hung worker. The worker builds all its clients after it starts; it exits when
the supervisor dies.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from multiprocessing.connection import Connection

from relay.clock import SAMPLE_INTERVAL_S, ClockSkew
from relay.config import Config
from relay.fence import PAUSE_S as FENCE_PAUSE_S
from relay.fence import Fence, Fenced
from relay.messages import Assign, Beat, BootError, Lease, Progress, Stop
from relay.model import OutboxEvent, Task
from relay.schedule import MAX_READ_ROWS, Read, Schedule

log = logging.getLogger("relay.worker")

EXIT_BOOT_ERROR = 3
CDC_TTL_DEFAULT_S = 86400  # Scylla's default, until the supervisor tells the table's own
MAX_INFLIGHT = 8  # window reads on the wire per worker (each up to twenty IN queries)
BEAT_INTERVAL_S = 1.0
TTL_WARN_EVERY_S = 300.0
START_RETRY_S = 2.0
CHECKPOINT_RETRY_S = 2.0  # after a failed periodic save (its positions stay in memory until one succeeds)
# What only a worker imports (at boot): relay.forkserver imports it once, for every worker it forks.
PRELOAD = ("redis", "pybreaker", "stamina.instrumentation", "relay.checkpoints", "relay.deadletters", "relay.dedup",
           "relay.heap", "relay.mapping", "relay.parking", "relay.positions", "relay.publisher", "relay.reader",
           "relay.routing", "relay.schema")


def now_us() -> int:
    return time.time_ns() // 1000


class Worker:
    def __init__(self, index: int, cfg: Config, conn: Connection, until_us: int | None) -> None:
        self.index = index
        self.cfg = cfg
        self.conn = conn
        self.until_us = until_us
        r = cfg.relay
        self.schedule = Schedule(r.window_seconds, r.confidence_seconds, r.poll_interval_seconds,
                                 r.checkpoint_interval_seconds, group_of=self._group_of, until_us=until_us)
        self.inflight: deque[tuple[Read, object]] = deque()
        self.ttl_by_table: dict[str, int] = {}
        self.stopping = False
        self.parent = os.getppid()
        # A forked worker's parent process is the forkserver: the supervisor is multiprocessing's
        # parent, watched through its sentinel (a pipe the supervisor's death closes).
        self.supervisor = multiprocessing.parent_process()
        self.paused_until = 0.0
        self.assign_seq = 0
        self._checkpoint_cache: dict[tuple[str, int], tuple[float, dict[int, int]]] = {}
        self._saving = None  # the periodic checkpoint save in flight: (PendingSave, its rows)
        self._save_retry_at = 0.0
        self._start_retry_at = 0.0
        self._send_lock = threading.Lock()
        self._progress_at = time.monotonic()
        self._ttl_warned: dict[str, float] = {}
        self.skew = ClockSkew()
        self._next_skew = 0.0
        self.dlq_failing = ""
        self.routers: dict[str, object] = {}
        self._gauged_tables: set[str] = set()  # tables whose lag gauges this worker has set
        self.fence = Fence()  # self-fencing (DESIGN §5b): the supervisor's Lease messages move its deadline

    # ---------------------------------------------------------------- boot
    def boot(self) -> None:
        from relay import connect

        # Scylla's connection is mostly a wait on the network: the imports and the other clients
        # below take their CPU meanwhile.
        connect.import_cql_driver(hot_path=True)
        cql = connect.Pending(lambda: connect.cql_session(self.cfg, hot_path=True), "cql-connect")
        try:
            self._boot(cql)
        except BaseException:
            cql.discard(lambda session: session.cluster.shutdown())
            raise

    def _boot(self, cql) -> None:
        import stamina.instrumentation

        from relay import connect
        from relay.checkpoints import CheckpointStore
        from relay.deadletters import DeadLetterWriter
        from relay.dedup import Dedup
        from relay.mapping import Mapper
        from relay.metrics import WorkerMetrics
        from relay.parking import Parking
        from relay.publisher import BREAKER_STATES, Publisher
        from relay.reader import LogReader
        from relay.retry import Retrier
        from relay.routing import Router
        from relay.schema import require_relay_tables

        stamina.instrumentation.set_on_retry_hooks([])  # relay counts retries itself, without logging args
        if os.environ.get("RELAY_TESTING_NO_RETRY_WAIT"):
            stamina.set_testing(True, attempts=2)
        cfg = self.cfg
        self.metrics = WorkerMetrics()

        def on_retry(op: str) -> None:
            self.tick()  # a retry is progress: the loop is alive, waiting on purpose
            self.metrics.retries.labels(op).inc()

        self.retrier = Retrier(cfg, on_retry=on_retry)
        self.dedup = Dedup(connect.redis_client(cfg), cfg.redis.key_prefix, cfg.redis.dedup_ttl_seconds,
                           cfg.redis.on_outage)
        self._unmarked: list[OutboxEvent] = []

        def on_state(state: str) -> None:
            self.metrics.breaker_state.labels(str(self.index)).set(BREAKER_STATES.get(state, 0))
            self.metrics.breaker_transitions.labels(state).inc()

        def on_latency(event: OutboxEvent, seconds: float) -> None:
            self.metrics.publish_latency.labels(event.source).observe(seconds)
            self.metrics.e2e_latency.labels(event.source).observe(max(0.0, (now_us() - event.cdc_time_us) / 1e6))

        self.publisher = Publisher(cfg, on_acked=self._mark_acked, on_breaker_state=on_state, on_latency=on_latency)
        self.metrics.breaker_state.labels(str(self.index)).set(0)
        self.mappers = {t.name: Mapper(t) for t in cfg.tables}
        self.session = cql.get()
        ks = cfg.scylla.relay_keyspace
        # Workers start beside the supervisor's own schema check: without relay's tables, preparing
        # a statement would fail with the driver's traceback in the log, before that one-line error.
        require_relay_tables(self.session, ks)
        self.checkpoints = CheckpointStore(self.session, ks, f"{cfg.replica_id}/w{self.index}")
        self.parking = Parking(self.session, ks, cfg.dlq.order)
        self.dead_letters = DeadLetterWriter(self.session, ks, parking=self.parking)
        self.routers = {t.name: Router(self.session, t.name.split(".", 1)[0],
                                       t.name.split(".", 1)[1] + "_scylla_cdc_log") for t in cfg.tables}
        self.readers = {t.name: LogReader(self.session, t.name, cfg.scylla.bypass_cache, cfg.scylla.fetch_size,
                                          cfg.scylla.max_in_keys, router=self.routers[t.name],
                                          columns=self.mappers[t.name].columns)
                        for t in cfg.tables}
        self._clock_query = self.session.prepare("SELECT toUnixTimestamp(now()) FROM system.local")
        threading.Thread(target=self._beat_forever, name="beat", daemon=True).start()

    def tick(self) -> None:
        self._progress_at = time.monotonic()

    def _should_abort(self) -> bool:
        """Asked by the publisher while it waits for delivery reports (an outage may last long)."""
        self.tick()
        # The fence too: a large read that began just before the lease's deadline stops producing
        # within a hundred records of it, instead of sending the rest for slots a peer may own now.
        return self.stopping or self.orphaned() or self.fence.expired()

    def orphaned(self) -> bool:
        """The supervisor is gone (or the forkserver this worker came from: the supervisor reads its
        workers as dead then)."""
        return os.getppid() != self.parent or (self.supervisor is not None and not self.supervisor.is_alive())

    def _mark_acked(self, events: list[OutboxEvent]) -> None:
        from relay.dedup import DedupUnavailable

        before = self.dedup.unavailable
        try:
            self.dedup.mark(events)
        except DedupUnavailable:
            # Pause mode: kept until Redis takes them; no checkpoint passes them before (DESIGN §4).
            self._unmarked.extend(events)
        self._count_unavailable(events, before)

    def _mark_pending(self) -> None:
        """Write the marks an outage left unwritten. They leave the list only once Redis has them."""
        if self._unmarked:
            self.dedup.mark(self._unmarked)  # pause mode: raises DedupUnavailable until Redis answers
            self._unmarked = []

    def _count_unavailable(self, events, before: int) -> None:
        lost = self.dedup.unavailable - before
        if lost and events:
            self.metrics.dedup_unavailable.labels(events[0].source).inc(lost)

    # ---------------------------------------------------------------- loop
    def run(self) -> int:
        last_progress = 0.0
        while True:
            self.tick()
            if self.orphaned():
                log.error("worker %d: supervisor is gone; exiting", self.index)
                self.publisher.close(5)
                return 1
            if not self._handle_messages(0):
                return 1
            if self.stopping:
                self._drop_inflight("stopping")
                self.publisher.close(self.cfg.relay.shutdown_timeout_seconds)
                self.save_all()
                self._report()
                return 0
            now = time.monotonic()
            if now - last_progress >= 1.0:
                self._report()
                last_progress = now
            if now >= self._next_skew:
                self._sample_clock(now)
            self.schedule.clock_ahead_s = self.skew.ahead_s
            self._start_tasks(now)
            self._send_reads()
            if self.inflight:
                read, pending = self.inflight.popleft()
                self._process(read, pending)
            else:
                due = self.schedule.next_due_us()
                wait = 0.5 if due is None else (due - now_us()) / 1e6
                self._handle_messages(max(0.0, min(wait, 0.5)))
            self._save_due()

    def _send_reads(self) -> None:
        """Keep up to MAX_INFLIGHT reads on the wire: later reads travel while earlier ones publish."""
        if time.monotonic() < self.paused_until:
            return
        room = MAX_INFLIGHT - len(self.inflight)
        if room <= 0:
            return
        for read in self.schedule.plan(now_us(), room):
            try:
                pending = self.readers[read.table].start(read.streams, read.start_us, read.end_us)
            except Exception as exc:  # noqa: BLE001 - e.g. no host available: back off, never crash
                self.schedule.failed(read, f"{exc.__class__.__name__}: {exc}", now_us())
                continue
            self.inflight.append((read, pending))

    def _drop_inflight(self, why: str) -> None:
        while self.inflight:
            read, _ = self.inflight.popleft()
            self.schedule.released(read, now_us(), why)

    def _group_of(self, task: Task):
        """The replica set of a task's streams (a vnode's streams share one): the schedule merges only
        tasks of one replica set into a query, so it can go to a replica of them all."""
        return self.routers[task.table].replica_set(task.streams[0]) if task.streams else None

    def _beat_forever(self) -> None:
        while True:
            self._send(Beat(self.index, os.getpid(), round(time.monotonic() - self._progress_at, 3)))
            time.sleep(BEAT_INTERVAL_S)

    def _send(self, msg) -> None:
        with self._send_lock:  # the beat thread and the loop share the pipe
            try:
                self.conn.send(msg)
            except (BrokenPipeError, OSError):
                pass

    def _handle_messages(self, timeout: float) -> bool:
        try:
            while self.conn.poll(timeout):
                timeout = 0
                msg = self.conn.recv()
                if isinstance(msg, Assign):
                    self.assign_seq = msg.seq
                    self.ttl_by_table.update(msg.ttl_by_table)
                    self._assign(msg.tasks)
                    self._report()  # confirm at once: the supervisor waits for it before handing over
                elif isinstance(msg, Lease):
                    self.fence.update(msg.valid_until)
                elif isinstance(msg, Stop):
                    self.stopping = True
        except (EOFError, OSError):
            log.error("worker %d: control pipe closed; exiting", self.index)
            return False
        return True

    def _assign(self, tasks) -> None:
        gone = self.schedule.assign(tasks, now_us())
        if not gone:
            return
        # A revoked task's read in flight is dropped, not published: its next owner starts from the
        # checkpoint written here, and two workers must never publish one window side by side.
        keys = {st.task.key for st in gone}
        keep = deque()
        for read, pending in self.inflight:
            if keys.intersection(read.keys):
                self.schedule.released(read, now_us())
            else:
                keep.append((read, pending))
        self.inflight = keep
        rows = [(st.task, st.position_us) for st in gone
                if st.position_us is not None and st.position_us != st.saved_us]
        if rows:
            try:
                self._write_checkpoints(rows)  # the next owner starts where this one stopped
            except Exception:  # noqa: BLE001 - it then re-reads a few seconds, and dedup drops them
                log.warning("checkpoints of %d revoked tasks failed", len(rows))

    def ttl_of(self, table: str) -> int:
        return self.ttl_by_table.get(table, CDC_TTL_DEFAULT_S)

    def _report(self) -> None:
        states = self.schedule.states
        positions = {k: (s.position_us, s.finished, s.last_error) for k, s in states.items()}
        self._send(Progress(self.index, os.getpid(), self.assign_seq, positions, self.dlq_failing,
                            self.skew.ahead_s))
        lag: dict[str, float] = {}
        margin: dict[str, float] = {}
        t = now_us()
        for s in states.values():
            if s.position_us is None:
                continue
            table = s.task.table
            behind = 0.0 if s.finished else max(0.0, (t - s.position_us) / 1e6)
            lag[table] = max(lag.get(table, 0.0), behind)
            ttl = self.ttl_of(table)
            if ttl > 0 and not s.finished:
                m = (s.position_us - (t - ttl * 1_000_000)) / 1e6
                margin[table] = min(margin.get(table, m), m)
        # A table this worker no longer has tasks of (they moved to another worker or replica) reads as
        # no lag and a full TTL margin here, not as the last value: gauges keep it otherwise, and the
        # lag alert and autoscaling would see lag nobody has.
        for table in self._gauged_tables - lag.keys():
            self.metrics.task_lag.labels(table).set(0.0)
            if self.ttl_of(table) > 0:
                self.metrics.ttl_margin.labels(table).set(float(self.ttl_of(table)))
        self._gauged_tables = set(lag)
        for table, value in lag.items():
            self.metrics.task_lag.labels(table).set(value)
        now = time.monotonic()
        for table, value in margin.items():
            self.metrics.ttl_margin.labels(table).set(value)
            if value < self.cfg.relay.ttl_alert_margin_seconds and \
                    now - self._ttl_warned.get(table, -TTL_WARN_EVERY_S) >= TTL_WARN_EVERY_S:
                self._ttl_warned[table] = now
                log.warning("%s: a checkpoint is %.0fs from falling out of the CDC TTL: data may be lost",
                            table, value)

    def _sample_clock(self, now: float) -> None:
        self._next_skew = now + SAMPLE_INTERVAL_S
        try:
            sent = now_us()
            row = self.session.execute(self._clock_query).one()
            self.skew.add(sent, int(row[0]), now_us())
        except Exception as exc:  # noqa: BLE001 - keep the last estimate; try again next interval
            log.debug("clock sample failed: %s", exc)
            return
        self.metrics.clock_ahead.labels(str(self.index)).set(self.skew.ahead_s)
        if self.skew.warn(self.cfg.relay.confidence_seconds):
            log.warning("relay's clock runs %.3fs ahead of the cluster's; windows are held back by as much "
                        "(fix NTP: this eats into confidence_seconds=%s)", self.skew.ahead_s,
                        self.cfg.relay.confidence_seconds)

    # ---------------------------------------------------------------- starts and checkpoints
    def _start_tasks(self, now: float) -> None:
        """Start positions of newly assigned tasks: one checkpoint read per (table, generation)."""
        if now < self._start_retry_at:
            return
        pending = self.schedule.needs_start()
        if not pending:
            return
        from relay.positions import task_start
        from relay.retry import cql_errors

        t = now_us()
        for st in pending:
            task = st.task
            try:
                known = self._known_checkpoints(task.table, task.generation_us)
            except cql_errors() as exc:
                log.warning("%s: cannot read checkpoints (%s); retrying", task.table, exc)
                self._start_retry_at = time.monotonic() + START_RETRY_S
                return
            # start_from was applied by the supervisor, as checkpoints, before any task of the table ran.
            start = task_start(task, known.get(task.task_id), t, self.ttl_of(task.table))
            if start.expired_from_us is not None:
                log.warning("%s task %d: CDC rows from %s to %s have expired (TTL %ds) before relay read them: "
                            "they are lost", task.table, task.task_id, start.expired_from_us, start.position_us,
                            self.ttl_of(task.table))
            self.schedule.started(task.key, start.position_us, t)

    def _known_checkpoints(self, table: str, generation_us: int) -> dict[int, int]:
        from relay.retry import cql_errors

        # One read per generation serves all its tasks here (hundreds of vnodes at start-up);
        # kept briefly, since a task handed back later may have moved on elsewhere.
        key = (table, generation_us)
        cached = self._checkpoint_cache.get(key)
        if cached is None or time.monotonic() - cached[0] > 5.0:
            known = self.retrier.call("checkpoint_read", cql_errors(), self.checkpoints.load, table, generation_us)
            self._checkpoint_cache[key] = cached = (time.monotonic(), known)
        return cached[1]

    def _write_checkpoints(self, rows: list[tuple[Task, int]]) -> None:
        """Awaited, with retries: a revoke or a stop must leave the next owner these positions."""
        from relay.retry import cql_errors

        self._settle_save(block=True)  # the periodic save in flight lands first
        self.retrier.call("checkpoint_write", cql_errors(), self.checkpoints.save_many, rows)
        self._saved(rows)

    def _saved(self, rows: list[tuple[Task, int]]) -> None:
        self.schedule.saved(rows, now_us())
        by_table: dict[str, int] = {}
        for task, _ in rows:
            by_table[task.table] = by_table.get(task.table, 0) + 1
        for table, n in by_table.items():
            self.metrics.checkpoint_writes.labels(table).inc(n)

    def _settle_save(self, block: bool) -> bool:
        """Take the answer of the periodic save in flight, if it came (or wait for it when `block`).
        True when none is in flight any more."""
        if self._saving is None:
            return True
        pending, rows = self._saving
        if not (block or pending.done()):
            return False
        self._saving = None
        try:
            pending.wait()
        except Exception as exc:  # noqa: BLE001 - the positions stay unsaved in memory: written at the next attempt
            log.warning("writing %d checkpoints failed: %s: %s", len(rows), exc.__class__.__name__, exc)
            self._save_retry_at = time.monotonic() + CHECKPOINT_RETRY_S
            return True
        self._saved(rows)
        return True

    def _save_due(self) -> None:
        """Send the positions the schedule says are due, without waiting for them (one save in flight
        at most): the loop goes on reading and publishing meanwhile. A task that reached its
        generation's end is the exception: its position is written and awaited in the loop turn that
        finished it, before any report says so, since the supervisor's generation barrier acts on it."""
        if self.schedule.urgent():
            try:
                self._write_due(force=False)
            except Exception as exc:  # noqa: BLE001 - kept in memory and written at the next attempt
                log.warning("writing checkpoints failed: %s: %s", exc.__class__.__name__, exc)
                return
            self._report()  # the supervisor's generation barrier is waiting on these
            return
        if not self._settle_save(block=False) or time.monotonic() < self._save_retry_at:
            return
        rows = self.schedule.checkpoints(now_us())
        if not rows:
            return
        try:
            self._saving = (self.checkpoints.start_save(rows), rows)
        except Exception as exc:  # noqa: BLE001 - e.g. no host available: try again shortly
            log.warning("writing %d checkpoints failed: %s: %s", len(rows), exc.__class__.__name__, exc)
            self._save_retry_at = time.monotonic() + CHECKPOINT_RETRY_S

    def _write_due(self, force: bool) -> None:
        """The due positions (all moved ones when forced), awaited; asked for once the save in flight
        has landed, so what it wrote is not written again."""
        self._settle_save(block=True)
        rows = self.schedule.checkpoints(now_us(), force)
        if rows:
            self._write_checkpoints(rows)

    def save_all(self) -> None:
        """On a graceful stop: every position not yet saved, awaited."""
        try:
            self._write_due(force=True)
        except Exception as exc:  # noqa: BLE001 - the next start re-reads those windows; dedup drops them
            log.warning("final checkpoints failed: %s: %s", exc.__class__.__name__, exc)

    # ---------------------------------------------------------------- one read
    def _pause(self, seconds: float) -> None:
        """No reading for `seconds`: the loop's own clock and the schedule's."""
        self.paused_until = time.monotonic() + seconds
        self.schedule.paused_until_us = now_us() + int(seconds * 1_000_000)

    def _fenced(self, read: Read, reason: str) -> None:
        self.metrics.fence_events.inc()
        self._pause(FENCE_PAUSE_S)
        self.schedule.released(read, now_us(), reason)
        self._drop_inflight("fenced")

    def _process(self, read: Read, pending) -> None:
        """Relay one read, and turn every outcome into a fact for the schedule; never crash."""
        from cassandra import OperationTimedOut, ReadTimeout
        from pybreaker import CircuitBreakerError

        from relay.dedup import DedupUnavailable
        from relay.publisher import FatalProducerError, PublishAborted, TransientPublishError

        sch = self.schedule
        if self.stopping or time.monotonic() < self.paused_until:
            sch.released(read, now_us())  # re-read later from unchanged positions
            return
        where = f"{read.table} ({len(read.keys)} task{'s' if len(read.keys) > 1 else ''})"
        try:
            events = self._relay(read, pending)
        except ReadTooLarge:
            # Nothing was published; its tasks read again at once, alone and narrower.
            log.info("%s: window [%d, %d) brought more than %d rows: its tasks read alone", where, read.start_us,
                     read.end_us, MAX_READ_ROWS)
            sch.too_big(read, now_us())
        except CircuitBreakerError:
            # An open breaker pauses all reading in this worker until it may half-open.
            self._pause(min(self.cfg.breaker.reset_timeout_seconds, 5.0))
            sch.released(read, now_us(), "kafka breaker open")
            self._drop_inflight("kafka breaker open")
        except PublishAborted:
            if self.fence.expired() and not self.stopping:
                self._fenced(read, "lease deadline passed while producing")
            else:
                sch.released(read, now_us(), "stopping")  # re-read by whoever runs the tasks next
        except Fenced as exc:  # the lease is not proven: publish nothing, re-read once it is (or by the next owner)
            self._fenced(read, str(exc))
        except FatalProducerError as exc:
            log.error("worker %d: fatal producer error, rebuilding the producer: %s", self.index, exc)
            self.publisher.rebuild()
            sch.failed(read, str(exc), now_us())
        except TransientPublishError as exc:
            log.warning("%s: %s; window will be re-read", where, exc)
            sch.failed(read, str(exc), now_us())
        except DedupUnavailable as exc:
            log.warning("redis unavailable and on_outage=pause: waiting (%s)", exc)
            sch.failed(read, f"redis: {exc}", now_us())
        except DeadLetterWriteFailed as exc:
            sch.failed(read, str(exc), now_us())
        except (ReadTimeout, OperationTimedOut) as exc:
            log.warning("%s: %s: %s", where, exc.__class__.__name__, exc)
            sch.failed(read, f"{exc.__class__.__name__}: {exc}", now_us(), timed_out=True)
        except Exception as exc:  # noqa: BLE001 - a failing window must never kill the loop
            from relay.retry import cql_errors

            if isinstance(exc, cql_errors()):
                log.warning("%s: %s: %s", where, exc.__class__.__name__, exc)
            else:
                log.exception("%s: window failed", where)
            sch.failed(read, f"{exc.__class__.__name__}: {exc}", now_us())
        else:
            sch.done(read, events, now_us())

    def _read(self, read: Read, pending) -> tuple[list, int]:
        """The read's pages, and how many rows they hold."""
        from relay.retry import cql_errors

        first = [pending]  # the read sent ahead serves the first attempt only
        reader = self.readers[read.table]

        def attempt():
            handle, first[0] = first[0], None
            pages, rows = [], 0
            for page in reader.read_pages(read.streams, read.start_us, read.end_us, handle):
                pages.append(page)
                rows += len(page[1])
                if rows > MAX_READ_ROWS:
                    raise ReadTooLarge(f"more than {MAX_READ_ROWS} rows")
            return pages, rows

        return self.retrier.call("cql_read", cql_errors(), attempt)

    def _task_of_stream(self, read: Read) -> dict[bytes, tuple]:
        states = self.schedule.states
        return {s: key for key in read.keys if key in states for s in states[key].task.streams}

    def _relay(self, read: Read, pending) -> dict[tuple, int]:
        """Relay one read; returns each task's count of events (and poison) read, which sizes its next window."""
        from relay.publisher import FatalProducerError, TransientPublishError

        table = read.table
        m = self.metrics
        counts: dict[tuple, int] = {}
        skipped: dict[str, int] = {}
        t0 = time.monotonic()
        pages, rows = self._read(read, pending)
        m.cql_read.labels(table).observe(time.monotonic() - t0)
        if not rows:
            return counts  # an empty window touches neither Redis nor Kafka
        events, poisons = self.mappers[table].map_pages(pages, skipped)
        if len(read.keys) == 1:
            counts[read.keys[0]] = len(events) + len(poisons)
        else:  # a merged read: each task's own count
            owner = self._task_of_stream(read)
            for stream in [e.stream_id for e in events] + [p.event.stream_id for p in poisons]:
                key = owner[stream]
                counts[key] = counts.get(key, 0) + 1
        m.events_read.labels(table).inc(rows)
        for op, n in skipped.items():
            m.events_skipped.labels(table, op).inc(n)
        if not events and not poisons:
            return counts
        self.fence.check()  # raises Fenced past the lease's deadline: nothing below may publish

        # Marks an outage left unwritten go first: the dedup check below must see them.
        self._mark_pending()
        before = self.dedup.unavailable
        new, seen = self.dedup.split(events)
        new, parked = self.parking.hold(table, new, poisons)  # [dlq] order = "park-aggregate" (relay.parking)
        self._count_unavailable(events, before)
        if seen:
            m.events_deduplicated.labels(table).inc(len(seen))
        try:
            outcome = self.publisher.publish(new, self._should_abort)
        except (TransientPublishError, FatalProducerError) as exc:
            # What did settle counts: acks are marked already; events held back to keep their
            # aggregate's order, or refused for good, are dead letters now, not on the re-read.
            if exc.outcome.delivered:
                m.events_published.labels(table).inc(len(exc.outcome.delivered))
            if exc.outcome.failed:
                self._dead_letter(exc.outcome.failed)
            raise
        if outcome.delivered:
            m.events_published.labels(table).inc(len(outcome.delivered))
        failed = [(p.event, p.reason, p.message) for p in poisons] + parked + outcome.failed
        if failed:
            self._dead_letter(failed)
        self._mark_pending()  # pause mode: raises (no checkpoint) until Redis has every mark
        return counts

    def _dead_letter(self, failed: list[tuple[OutboxEvent, str, str]]) -> None:
        from relay.retry import dlq_errors

        for event, reason, message in failed:
            log.error("%s: dead-lettering event %s (aggregate %s): %s: %s", event.source, event.event_id or "?",
                      event.aggregate_id or "?", reason, message)
            try:
                self.retrier.call("dlq_write", dlq_errors(), self.dead_letters.write, event, reason, message)
            except dlq_errors() as exc:
                # Persisting: the window keeps its checkpoint and is re-read; /ready turns false.
                self.dlq_failing = f"{exc.__class__.__name__}: {str(exc)[:200]}"
                self.metrics.dlq_write_failures.labels(event.source).inc()
                log.error("%s: cannot write dead letters: %s; the window will be re-read (relay not ready)",
                          event.source, self.dlq_failing)
                self._report()
                raise DeadLetterWriteFailed(self.dlq_failing) from exc
            self.metrics.events_dead_lettered.labels(event.source, reason).inc()
        if self.dlq_failing:
            log.info("dead-letter writes succeed again")
            self.dlq_failing = ""
        self._mark_acked([e for e, _, _ in failed])


class ReadTooLarge(Exception):
    """A read brought more rows than a worker keeps in memory at once (relay.schedule.MAX_READ_ROWS)."""


class DeadLetterWriteFailed(Exception):
    """A dead-letter write failed after its retries."""


def worker_main(index: int, cfg: Config, conn: Connection, until_us: int | None, log_level: str) -> None:
    """Entry point of a worker process (forked by relay.forkserver, or spawned)."""
    import sys

    from relay import connect, forkserver

    forkserver.name_process(f"relay-worker-{index}")
    connect.without_numpy()
    # force: a worker forked from the supervisor (relay.forkserver) has its handlers already.
    logging.basicConfig(level=log_level, format=f"%(asctime)s %(levelname)s worker-{index} %(name)s: %(message)s",
                        force=True)
    logging.getLogger("cassandra").setLevel(logging.WARNING)
    # Ctrl-C reaches the whole process group; only the supervisor decides how to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    worker = Worker(index, cfg, conn, until_us)
    signal.signal(signal.SIGTERM, lambda *_: setattr(worker, "stopping", True))
    from confluent_kafka import KafkaException

    from relay.errors import ConfigError, UserError

    def give_up(error: BootError, code: int) -> None:
        try:
            conn.send(error)
        except OSError:
            pass
        sys.exit(code)

    try:
        worker.boot()
    except (ConfigError, KafkaException, ValueError) as exc:
        # Configuration the worker cannot run with: restarting would only loop.
        give_up(BootError(index, f"{exc.__class__.__name__}: {exc}"), EXIT_BOOT_ERROR)
    except UserError as exc:
        # A service it cannot reach yet: one line, said by the supervisor as it restarts this worker
        # (or not at all, when the supervisor itself stops on the same error).
        give_up(BootError(index, str(exc), fatal=False), 1)
    except Exception:  # noqa: BLE001 - e.g. Scylla briefly unreachable: the supervisor restarts us
        log.exception("worker %d: boot failed", index)
        sys.exit(1)
    from relay import heap

    heap.settle()
    heap.PeriodicCollector().start()
    code = worker.run()
    worker.session.cluster.shutdown()
    logging.shutdown()
    # Everything is flushed and closed; skip interpreter teardown, where the driver's libev
    # exit hook can stall a worker for seconds (and with it a graceful shutdown).
    os._exit(code)

"""A worker process: for each assigned task, read window → map → dedup → produce → acks →
mark dedup keys → dead letters → checkpoint → next window (DESIGN §2–§4).

Windows are processed one at a time on one thread, so a control message (new assignment,
stop) is handled between windows and a graceful stop always ends on a checkpoint. Liveness is
beaten by a thread of its own: a window that waits out a Kafka outage or retries CQL must not look
like a hung worker (an outage ends in "breaker open, reading paused, worker alive", never in a
kill loop). Where a task starts, how wide its windows are and when they are saved are decided by
pure functions (relay.positions, relay.windows); this loop carries facts in and decisions out.
The worker builds all its clients after it starts; it exits when the supervisor dies.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

from relay import windows
from relay.clock import SAMPLE_INTERVAL_S, ClockSkew
from relay.config import Config
from relay.messages import Assign, Beat, BootError, Progress, Stop
from relay.model import OutboxEvent, Task

log = logging.getLogger("relay.worker")

EXIT_BOOT_ERROR = 3
CDC_TTL_DEFAULT_S = 86400  # Scylla's default, until the supervisor tells the table's own
PREFETCH_WINDOWS = 8  # window reads in flight per worker
BEAT_INTERVAL_S = 1.0
TTL_WARN_EVERY_S = 300.0


@dataclass
class TaskState:
    task: Task
    window_s: float
    position_us: int | None = None
    next_at: float = 0.0
    failures: int = 0
    finished: bool = False  # reached the generation end (or --until)
    last_error: str = ""
    saved_us: int | None = None  # position last written to the checkpoint table
    saved_at: float = 0.0


@dataclass
class WindowResult:
    events: int = 0
    published: int = 0
    deduplicated: int = 0
    dead_lettered: int = 0
    skipped: dict[str, int] = field(default_factory=dict)


def now_us() -> int:
    return time.time_ns() // 1000


class Worker:
    def __init__(self, index: int, cfg: Config, conn: Connection, until_us: int | None) -> None:
        self.index = index
        self.cfg = cfg
        self.conn = conn
        self.until_us = until_us
        self.tasks: dict[tuple, TaskState] = {}
        self.ttl_by_table: dict[str, int] = {}
        self.stopping = False
        self.parent = os.getppid()
        self.paused_until = 0.0
        self.assign_seq = 0
        self._rr = 0
        self._checkpoint_cache: dict[tuple[str, int], tuple[float, dict[int, int]]] = {}
        self._send_lock = threading.Lock()
        self._progress_at = time.monotonic()
        self._ttl_warned: dict[str, float] = {}
        self.skew = ClockSkew()
        self._next_skew = 0.0
        self.dlq_failing = ""

    # ---------------------------------------------------------------- boot
    def boot(self) -> None:
        import stamina.instrumentation

        from relay import connect
        from relay.checkpoints import CheckpointStore
        from relay.deadletters import DeadLetterWriter
        from relay.dedup import Dedup
        from relay.mapping import Mapper
        from relay.metrics import WorkerMetrics
        from relay.publisher import BREAKER_STATES, Publisher
        from relay.reader import LogReader
        from relay.retry import Retrier

        stamina.instrumentation.set_on_retry_hooks([])  # relay counts retries itself, without logging args
        if os.environ.get("RELAY_TESTING_NO_RETRY_WAIT"):
            stamina.set_testing(True, attempts=2)
        cfg = self.cfg
        self.metrics = WorkerMetrics()

        def on_retry(op: str) -> None:
            self.tick()  # a retry is progress: the loop is alive, waiting on purpose
            self.metrics.retries.labels(op).inc()

        self.retrier = Retrier(cfg, on_retry=on_retry)
        self.session = connect.cql_session(cfg, hot_path=True)
        ks = cfg.scylla.relay_keyspace
        self.checkpoints = CheckpointStore(self.session, ks, f"{cfg.replica_id}/w{self.index}")
        self.dead_letters = DeadLetterWriter(self.session, ks)
        self.readers = {t.name: LogReader(self.session, t.name, cfg.scylla.bypass_cache, cfg.scylla.fetch_size,
                                             cfg.scylla.max_in_keys)
                        for t in cfg.tables}
        self.mappers = {t.name: Mapper(t) for t in cfg.tables}
        self.dedup = Dedup(connect.redis_client(cfg), cfg.redis.key_prefix, cfg.redis.dedup_ttl_seconds,
                           cfg.redis.on_outage)
        self._unmarked: list[OutboxEvent] = []
        self._clock_query = self.session.prepare("SELECT toUnixTimestamp(now()) FROM system.local")

        def on_state(state: str) -> None:
            self.metrics.breaker_state.labels(str(self.index)).set(BREAKER_STATES.get(state, 0))
            self.metrics.breaker_transitions.labels(state).inc()

        def on_latency(event: OutboxEvent, seconds: float) -> None:
            self.metrics.publish_latency.labels(event.source).observe(seconds)
            self.metrics.e2e_latency.labels(event.source).observe(max(0.0, (now_us() - event.cdc_time_us) / 1e6))

        self.publisher = Publisher(cfg, on_acked=self._mark_acked, on_breaker_state=on_state, on_latency=on_latency)
        self.metrics.breaker_state.labels(str(self.index)).set(0)
        threading.Thread(target=self._beat_forever, name="beat", daemon=True).start()

    def tick(self) -> None:
        self._progress_at = time.monotonic()

    def _should_abort(self) -> bool:
        """Asked by the publisher while it waits for delivery reports (an outage may last long)."""
        self.tick()
        return self.stopping or os.getppid() != self.parent

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
            if os.getppid() != self.parent:
                log.error("worker %d: supervisor is gone; exiting", self.index)
                self.publisher.close(5)
                return 1
            if not self._handle_messages(0):
                return 1
            if self.stopping:
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
            due = self._due(now, PREFETCH_WINDOWS)
            if not due:
                wait = min([s.next_at for s in self.tasks.values() if not s.finished] + [now + 0.5]) - now
                self._handle_messages(max(0.0, min(wait, 0.5)))
                continue
            # Send the reads of several due windows at once, then relay them one by one: later
            # reads travel while earlier windows are published.
            ready = []
            for st in due:
                end = self._guard(st, self._plan, st)
                if end is not None:
                    ready.append((st, end, self.readers[st.task.table].start(st.task.streams, st.position_us, end)))
            for st, end, future in ready:
                if self.stopping or time.monotonic() < self.paused_until:
                    break  # the rest are re-read later from their unchanged positions
                self._guard(st, self._window, st, end, future)

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
                elif isinstance(msg, Stop):
                    self.stopping = True
        except (EOFError, OSError):
            log.error("worker %d: control pipe closed; exiting", self.index)
            return False
        return True

    def _assign(self, tasks) -> None:
        keep = {t.key: t for t in tasks}
        for key in list(self.tasks):
            if key not in keep:
                try:
                    self._save(self.tasks[key])  # the next owner starts where this one stopped
                except Exception:  # noqa: BLE001 - it then re-reads a few empty seconds
                    log.warning("checkpoint of revoked task %s failed", key)
                del self.tasks[key]
        for key, task in keep.items():
            st = self.tasks.get(key)
            if st is None:
                self.tasks[key] = TaskState(task, self.cfg.relay.window_seconds)
            elif st.task != task:
                st.task = task  # e.g. the generation's end became known
                if st.finished and (task.end_us is None or (st.position_us or 0) < task.end_us):
                    st.finished = False

    def _due(self, now: float, limit: int) -> list[TaskState]:
        """Up to `limit` tasks whose next window may be read, round-robin."""
        if now < self.paused_until:
            return []
        states = list(self.tasks.values())
        out = []
        for i in range(len(states)):
            st = states[(self._rr + i) % len(states)]
            if not st.finished and st.next_at <= now:
                out.append(st)
                if len(out) == limit:
                    self._rr = (self._rr + i + 1) % len(states)
                    return out
        self._rr = 0
        return out

    def ttl_of(self, table: str) -> int:
        return self.ttl_by_table.get(table, CDC_TTL_DEFAULT_S)

    def _report(self) -> None:
        positions = {k: (s.position_us, s.finished, s.last_error) for k, s in self.tasks.items()}
        self._send(Progress(self.index, os.getpid(), self.assign_seq, positions, self.dlq_failing,
                            self.skew.ahead_s))
        lag: dict[str, float] = {}
        margin: dict[str, float] = {}
        t = now_us()
        for s in self.tasks.values():
            if s.position_us is None:
                continue
            table = s.task.table
            behind = 0.0 if s.finished else max(0.0, (t - s.position_us) / 1e6)
            lag[table] = max(lag.get(table, 0.0), behind)
            ttl = self.ttl_of(table)
            if ttl > 0 and not s.finished:
                m = (s.position_us - (t - ttl * 1_000_000)) / 1e6
                margin[table] = min(margin.get(table, m), m)
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

    # ---------------------------------------------------------------- one window
    def _guard(self, st: TaskState, fn, *args):
        """Run one step of a task; every failure becomes a back-off of that task, never a crash."""
        from pybreaker import CircuitBreakerError

        from relay.dedup import DedupUnavailable
        from relay.publisher import FatalProducerError, PublishAborted, TransientPublishError

        try:
            result = fn(*args)
            if fn == self._window:
                st.failures = 0
                st.last_error = ""
            return result
        except CircuitBreakerError:
            # An open breaker pauses all reading in this worker until it may half-open.
            self.paused_until = time.monotonic() + min(self.cfg.breaker.reset_timeout_seconds, 5.0)
            st.last_error = "kafka breaker open"
        except PublishAborted:
            st.last_error = "stopping"  # its window is re-read by whoever runs the task next
        except FatalProducerError as exc:
            log.error("worker %d: fatal producer error, rebuilding the producer: %s", self.index, exc)
            self.publisher.rebuild()
            self._backoff(st, str(exc))
        except TransientPublishError as exc:
            log.warning("%s task %d: %s; window will be re-read", st.task.table, st.task.task_id, exc)
            self._backoff(st, str(exc))
        except DedupUnavailable as exc:
            log.warning("redis unavailable and on_outage=pause: waiting (%s)", exc)
            self._backoff(st, f"redis: {exc}")
        except DeadLetterWriteFailed as exc:
            self._backoff(st, str(exc))
        except Exception as exc:  # noqa: BLE001 - a failing window must never kill the loop
            from relay.retry import cql_errors

            if isinstance(exc, cql_errors()):
                log.warning("%s task %d: %s: %s", st.task.table, st.task.task_id, exc.__class__.__name__, exc)
            else:
                log.exception("%s task %d: window failed", st.task.table, st.task.task_id)
            self._backoff(st, f"{exc.__class__.__name__}: {exc}")

    def _backoff(self, st: TaskState, error: str) -> None:
        st.failures += 1
        st.last_error = error[:300]
        st.next_at = time.monotonic() + min(10.0, 0.2 * 2 ** min(st.failures, 6))

    def _save(self, st: TaskState) -> None:
        from relay.retry import cql_errors

        if st.position_us is None or st.position_us == st.saved_us:
            return
        self.retrier.call("checkpoint_write", cql_errors(), self.checkpoints.save, st.task, st.position_us)
        self.metrics.checkpoint_writes.labels(st.task.table).inc()
        st.saved_us, st.saved_at = st.position_us, time.monotonic()

    def save_all(self) -> None:
        """On a graceful stop: write every position the deferred empty windows left unsaved."""
        for st in self.tasks.values():
            try:
                self._save(st)
            except Exception:  # noqa: BLE001 - the next start re-reads those (empty) windows
                log.warning("%s task %d: final checkpoint failed", st.task.table, st.task.task_id)

    def _start_position(self, task: Task) -> int:
        from relay.positions import task_start
        from relay.retry import cql_errors

        # One read per generation serves all its tasks here (hundreds of vnodes at start-up);
        # kept briefly, since a task handed back later may have moved on elsewhere.
        cache_key = (task.table, task.generation_us)
        cached = self._checkpoint_cache.get(cache_key)
        if cached is None or time.monotonic() - cached[0] > 5.0:
            known = self.retrier.call("checkpoint_read", cql_errors(), self.checkpoints.load, task.table,
                                      task.generation_us)
            self._checkpoint_cache[cache_key] = (time.monotonic(), known)
        else:
            known = cached[1]
        # start_from was applied by the supervisor, as checkpoints, before any task of the table ran.
        start = task_start(task, known.get(task.task_id), now_us(), self.ttl_of(task.table))
        if start.expired_from_us is not None:
            log.warning("%s task %d: CDC rows from %s to %s have expired (TTL %ds) before relay read them: "
                        "they are lost", task.table, task.task_id, start.expired_from_us, start.position_us,
                        self.ttl_of(task.table))
        return start.position_us

    def _goal(self, task: Task) -> int | None:
        goals = [x for x in (task.end_us, self.until_us) if x is not None]
        return min(goals) if goals else None

    def _plan(self, st: TaskState) -> int | None:
        """The end of the task's next window, or None when there is nothing to read yet."""
        task = st.task
        if st.position_us is None:
            st.position_us = self._start_position(task)
            st.saved_us, st.saved_at = None, time.monotonic()
        goal = self._goal(task)
        end = windows.window_end(st.position_us, st.window_s, now_us(), self.cfg.relay.confidence_seconds,
                                 self.skew.ahead_s, goal)
        if end is None:
            if goal is not None and st.position_us >= goal:
                st.finished = True
                self._save(st)
                self._report()
            else:
                st.next_at = time.monotonic() + self.cfg.relay.poll_interval_seconds
        return end

    def _window(self, st: TaskState, end: int, future=None) -> None:
        task = st.task
        started = time.monotonic()
        result = self._relay_window(st, end, future)
        st.position_us = end
        goal = self._goal(task)
        if windows.checkpoint_due(result.events, time.monotonic(), st.saved_at, goal is not None and end >= goal):
            self._save(st)
        st.window_s = windows.next_window_size(st.window_s, self.cfg.relay.window_seconds, result.events)
        caught_up = windows.caught_up(end, now_us(), self.cfg.relay.confidence_seconds,
                                      self.cfg.relay.poll_interval_seconds, self.skew.ahead_s)
        st.next_at = started + self.cfg.relay.poll_interval_seconds if caught_up else 0.0

    def _read(self, st: TaskState, end: int, future) -> list:
        from cassandra import OperationTimedOut, ReadTimeout

        from relay.retry import cql_errors

        task = st.task
        pending = [future]  # the prefetched first page serves the first attempt only

        def read():
            first, pending[0] = pending[0], None
            return list(self.readers[task.table].read(task.streams, st.position_us, end, first))

        try:
            return self.retrier.call("cql_read", cql_errors(), read)
        except (ReadTimeout, OperationTimedOut):
            # A read that keeps timing out gets a smaller window, not the same one again forever.
            st.window_s = windows.next_window_size(st.window_s, self.cfg.relay.window_seconds, 0, timed_out=True)
            raise

    def _relay_window(self, st: TaskState, end: int, future=None) -> WindowResult:
        from relay.mapping import Poison
        from relay.publisher import FatalProducerError, TransientPublishError

        task = st.task
        m = self.metrics
        res = WindowResult()
        t0 = time.monotonic()
        changes = self._read(st, end, future)
        m.cql_read.labels(task.table).observe(time.monotonic() - t0)
        events: list[OutboxEvent] = []
        poisons: list[Poison] = []
        mapper = self.mappers[task.table]
        for change in changes:
            for item in mapper.map(change, res.skipped):
                (poisons if isinstance(item, Poison) else events).append(item)
        res.events = len(events) + len(poisons)
        rows = sum(len(c.rows) for c in changes)
        if rows:
            m.events_read.labels(task.table).inc(rows)
        for op, n in res.skipped.items():
            m.events_skipped.labels(task.table, op).inc(n)
        if not res.events:
            return res

        # Marks an outage left unwritten go first: the dedup check below must see them.
        self._mark_pending()
        before = self.dedup.unavailable
        new, seen = self.dedup.split(events)
        self._count_unavailable(events, before)
        if seen:
            m.events_deduplicated.labels(task.table).inc(len(seen))
        try:
            outcome = self.publisher.publish(new, self._should_abort)
        except (TransientPublishError, FatalProducerError) as exc:
            # What did settle counts: acks are marked already; events held back to keep their
            # aggregate's order, or refused for good, are dead letters now, not on the re-read.
            if exc.outcome.delivered:
                m.events_published.labels(task.table).inc(len(exc.outcome.delivered))
            if exc.outcome.failed:
                self._dead_letter(exc.outcome.failed)
            raise
        if outcome.delivered:
            m.events_published.labels(task.table).inc(len(outcome.delivered))
        failed = [(p.event, p.reason, p.message) for p in poisons] + outcome.failed
        if failed:
            self._dead_letter(failed)
        self._mark_pending()  # pause mode: raises (no checkpoint) until Redis has every mark
        res.published = len(outcome.delivered)
        res.deduplicated = len(seen)
        res.dead_lettered = len(failed)
        return res

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


class DeadLetterWriteFailed(Exception):
    """A dead-letter write failed after its retries."""


def worker_main(index: int, cfg: Config, conn: Connection, until_us: int | None, log_level: str) -> None:
    """Entry point of a spawned worker process."""
    import sys

    logging.basicConfig(level=log_level, format=f"%(asctime)s %(levelname)s worker-{index} %(name)s: %(message)s")
    logging.getLogger("cassandra").setLevel(logging.WARNING)
    # Ctrl-C reaches the whole process group; only the supervisor decides how to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    worker = Worker(index, cfg, conn, until_us)
    signal.signal(signal.SIGTERM, lambda *_: setattr(worker, "stopping", True))
    from confluent_kafka import KafkaException

    from relay.errors import ConfigError

    try:
        worker.boot()
    except (ConfigError, KafkaException, ValueError) as exc:
        # Configuration the worker cannot run with: restarting would only loop.
        try:
            conn.send(BootError(index, f"{exc.__class__.__name__}: {exc}"))
        except OSError:
            pass
        sys.exit(EXIT_BOOT_ERROR)
    except Exception:  # noqa: BLE001 - e.g. Scylla briefly unreachable: the supervisor restarts us
        log.exception("worker %d: boot failed", index)
        sys.exit(1)
    code = worker.run()
    worker.session.cluster.shutdown()
    logging.shutdown()
    # Everything is flushed and closed; skip interpreter teardown, where the driver's libev
    # exit hook can stall a worker for seconds (and with it a graceful shutdown).
    os._exit(code)

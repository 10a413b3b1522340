"""The supervisor's assignment loop as logic: per-table plans, work only on change, the handover rule,
and a worker that never reads its pipe. No service: workers are objects that are always alive,
discovery and checkpoints return fixed data, and the test plays the workers' Progress reports
(what tests/test_relay_e2e.py checks with real processes)."""
from __future__ import annotations

import multiprocessing as mp
import threading
from types import SimpleNamespace

import pytest

from relay.config import Config, TableConfig
from relay.messages import Assign, Progress
from relay.model import Generation
from relay.sender import Sender
from relay.streams import make_stream_id
from relay.supervisor import Supervisor

GEN_US = 1_767_225_600_000_000
NEXT_US = GEN_US + 3_600_000_000


class NoMetric:
    def labels(self, *_a):
        return self

    def set(self, *_a):
        pass

    def inc(self, *_a):
        pass


class AliveProcess:
    def __init__(self, pid: int) -> None:
        self.pid, self.exitcode = pid, None

    def is_alive(self) -> bool:
        return True


class RecordingPipe:
    """Keeps what the supervisor writes; a worker that reads at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.assigns: list[Assign] = []

    def send(self, msg) -> None:
        with self.lock:
            self.assigns.append(msg)


class Fakes:
    def __init__(self, gens: dict[str, list[Generation]]) -> None:
        self.gens = gens

    # discovery
    def generations(self, table):
        return self.gens[table.name]

    def cdc_ttl_seconds(self, table):
        return 0  # rows kept forever: nothing expires under a fixed GEN_US

    def drain_disappeared(self):
        return []

    # checkpoints: every task at its generation's start
    def load(self, table, start_us):
        return {i: start_us for i in range(10_000)}


def generation(table: str, start_us: int, vnodes: int, end_us: int | None = None, salt: int = 0,
               shards: int = 1) -> Generation:
    streams = tuple(make_stream_id(-2**62 + i * 2**52 + shard * 2**40 + salt, i, 7)
                    for i in range(vnodes) for shard in range(shards))
    return Generation(table, start_us, end_us, streams, tablets=False)


def supervisor(tables: dict[str, int], workers: int = 4, pipes: dict | None = None,
               shards: int = 1) -> tuple[Supervisor, Fakes]:
    cfg = Config(tables=tuple(TableConfig(name=n) for n in tables))
    sup = Supervisor(cfg, workers)
    sup.metrics = SimpleNamespace(generation=NoMetric(), generations_expired=NoMetric(),
                                  generations_disappeared=NoMetric(), workers_alive=NoMetric())
    fakes = Fakes({name: [generation(name, GEN_US, n, shards=shards)] for name, n in tables.items()})
    sup.discovery = sup.checkpoints = fakes
    for slot in sup.slots:
        slot.process = AliveProcess(1000 + slot.index)
        slot.conn = (pipes or {}).get(slot.index) or RecordingPipe()
        slot.sender = Sender(slot.conn, f"test-sender-{slot.index}")
    sup._handover_dirty = True
    sup.step_discover()
    sup.step_first_start()
    sup.step_checkpoints()
    return sup, fakes


def last_assign(slot) -> Assign:
    assert slot.sender.flush(30)
    return slot.conn.assigns[-1]


def report(sup: Supervisor, slot, seq: int | None = None, keys=None, position=None) -> None:
    """The slot's worker reports: by default, that it applied its newest assignment."""
    if seq is None:
        msg = last_assign(slot)
        seq, keys = msg.seq, [t.key for t in msg.tasks]
    sup._on_message(slot, Progress(slot.index, slot.process.pid, seq,
                                   {k: (position or k[1], False, "") for k in keys}))


def settle(sup: Supervisor) -> None:
    for _ in range(4):
        sup.step_assign()
        for slot in sup.slots:
            report(sup, slot)


def owners(sup: Supervisor) -> dict[tuple, int]:
    out = {}
    for slot in sup.slots:
        for key in slot.hb_keys:
            assert key not in out, f"{key} held by workers {out[key]} and {slot.index}"
            out[key] = slot.index
    return out


@pytest.fixture(autouse=True)
def _close_senders():
    made: list[Supervisor] = []
    real_init = Supervisor.__init__

    def init(self, *a, **kw):
        real_init(self, *a, **kw)
        made.append(self)

    Supervisor.__init__ = init
    yield
    Supervisor.__init__ = real_init
    for sup in made:
        for slot in sup.slots:
            if slot.sender is not None:
                slot.sender.close()


def test_every_task_is_held_by_exactly_one_worker():
    sup, _ = supervisor({"a.outbox": 48, "b.outbox": 7}, workers=4)
    settle(sup)
    held = owners(sup)
    assert len(held) == 55
    assert held == {t.key: s.index for s in sup.slots for t in s.tasks}


def test_loops_where_nothing_changed_recompute_nothing_and_send_nothing():
    sup, _ = supervisor({"a.outbox": 64, "b.outbox": 64}, workers=4)
    settle(sup)
    replans, handovers = sup.planner.recomputed, []
    real = sup._handover
    sup._handover = lambda: (handovers.append(1), real())
    sent = {s.index: len(s.conn.assigns) for s in sup.slots}
    for i in range(20):
        sup.step_assign()
        for slot in sup.slots:  # positions advance; the task sets do not
            report(sup, slot, slot.seq, list(slot.hb_keys), position=GEN_US + (i + 1) * 1_000_000)
    assert sup.planner.recomputed == replans
    assert handovers == []
    assert {s.index: len(s.conn.assigns) for s in sup.slots} == sent


def test_one_tables_generation_switch_moves_none_of_the_other_tables_tasks():
    sup, fakes = supervisor({"a.outbox": 32, "b.outbox": 32, "c.outbox": 5}, workers=4)
    settle(sup)
    before = owners(sup)
    replans = sup.planner.recomputed
    # a.outbox: its generation ends and a new one (other streams) begins.
    old = fakes.gens["a.outbox"][0]
    fakes.gens["a.outbox"] = [generation("a.outbox", GEN_US, 32, end_us=NEXT_US),
                              generation("a.outbox", NEXT_US, 40, salt=1)]
    sup._next_discovery = 0.0
    sup.step_discover()
    sup.step_checkpoints()
    settle(sup)  # workers learn the end, read up to it, report; the barrier opens
    for slot in sup.slots:
        keys = [k for k in slot.hb_keys if k[0] == "a.outbox" and k[1] == old.start_us]
        sup._on_message(slot, Progress(slot.index, slot.process.pid, slot.seq,
                                       {k: (NEXT_US if k in keys else k[1], k in keys, "") for k in slot.hb_keys}))
    settle(sup)
    after = owners(sup)
    assert {k: w for k, w in after.items() if k[0] != "a.outbox"} == \
        {k: w for k, w in before.items() if k[0] != "a.outbox"}
    assert sorted(k[2] for k in after if k[0] == "a.outbox") == list(range(40))
    assert all(k[1] == NEXT_US for k in after if k[0] == "a.outbox")
    assert sup.planner.recomputed == replans + 1, "only a.outbox was re-planned"


def test_a_task_goes_to_its_new_worker_only_after_the_old_one_let_go():
    sup, _ = supervisor({"a.outbox": 16}, workers=2)
    settle(sup)
    key = next(iter(sup.slots[1].hb_keys))
    # Worker 0 still holds a task the plan gives to worker 1 (e.g. the plan moved it).
    sup.slots[1].hb_keys.discard(key)
    sup._on_message(sup.slots[0], Progress(0, 1000, sup.slots[0].seq, {**{k: (GEN_US, False, "")
                                                                       for k in sup.slots[0].hb_keys},
                                                                    key: (GEN_US, False, "")}))
    sup.slots[1].sent = None  # worker 1 is to get its assignment again
    sup._handover_dirty = True
    sup.step_assign()
    assert key not in {t.key for t in last_assign(sup.slots[1]).tasks}
    # Worker 0 confirms it no longer holds it: worker 1 gets it.
    report(sup, sup.slots[0], sup.slots[0].seq, [k for k in sup.slots[0].hb_keys if k != key])
    sup.step_assign()
    assert key in {t.key for t in last_assign(sup.slots[1]).tasks}


def test_every_unconfirmed_assignment_counts_as_held():
    """A worker may apply any assignment sent since its last report (a newer one may have replaced
    an older one before it went out): until it confirms the newest, all of them count."""
    sup, _ = supervisor({"a.outbox": 16}, workers=2)
    settle(sup)
    w0, w1 = sup.slots
    key = next(iter(w1.hb_keys))
    w1.hb_keys.discard(key)
    # Worker 0 was sent assignment 7 with the task and 8 without it; it has confirmed neither.
    w0.hb_seq = w0.seq
    w0.outstanding = {w0.seq + 1: frozenset({key}), w0.seq + 2: frozenset()}
    confirmed, w0.seq = w0.seq, w0.seq + 2
    assert key in w0.held()
    w1.sent, sup._handover_dirty = None, True
    sup.step_assign()
    assert key not in {t.key for t in last_assign(w1).tasks}
    report(sup, w0, confirmed + 1, list(w0.hb_keys | {key}))  # it applied 7 (holds the task)
    sup.step_assign()
    assert key not in {t.key for t in last_assign(w1).tasks}
    report(sup, w0, confirmed + 2, [k for k in w0.hb_keys if k != key])  # it applied 8: let go
    sup.step_assign()
    assert key in {t.key for t in last_assign(w1).tasks}


def test_a_worker_that_never_reads_its_pipe_does_not_stall_the_loop():
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()  # child: the worker's end, never read
    # 3,000 vnodes x 16 shards: an assignment of about 1 MB, far more than a pipe holds.
    sup, _ = supervisor({"a.outbox": 3000}, workers=1, pipes={0: parent}, shards=16)
    done = threading.Event()

    def loops():
        for _ in range(5):  # each one sends the whole (large) assignment again
            sup._resend = sup._handover_dirty = True
            sup.step_assign()
        done.set()

    thread = threading.Thread(target=loops, daemon=True)
    thread.start()
    # A hang guard, not a timing: the loop must return although no write can complete.
    assert done.wait(60), "the loop blocked on a full pipe"
    slot = sup.slots[0]
    assert slot.seq == 5
    # The one being written when the worker stopped reading (if any), then only the newest.
    received = [child.recv()]
    while received[-1].seq != 5:
        received.append(child.recv())
    assert len(received) <= 2, [m.seq for m in received]
    assert len(received[-1].tasks) == 3000 and len(received[-1].tasks[0].streams) == 16
    assert slot.sender.flush(30) and not child.poll(0)
    sup.slots[0].sender.close()
    parent.close()
    child.close()


def test_the_task_list_of_status_is_built_only_when_asked():
    sup, _ = supervisor({"a.outbox": 8}, workers=2)
    settle(sup)
    built = []
    real = sup._task_rows
    sup._task_rows = lambda: (built.append(1), real())[1]
    sup._next_status = 0.0
    sup.step_status()
    assert built == [] and "workers" in sup.status
    sup._loop_running = True
    result = {}
    asker = threading.Thread(target=lambda: result.update(sup.snapshot()))
    asker.start()
    while not sup._status_wanted and asker.is_alive():
        asker.join(0.01)
    sup.step_status()  # the loop's next turn answers
    asker.join(30)
    assert built == [1]
    assert len(result["tasks"]) == 8 and [w["tasks"] for w in result["workers"]] == [4, 4]


class DeadProcess:
    def __init__(self, pid: int, exitcode: int) -> None:
        self.pid, self.exitcode = pid, exitcode

    def is_alive(self) -> bool:
        return False

    def join(self, _timeout=None) -> None:
        pass


class SaidBeforeExit(RecordingPipe):
    """The pipe of a worker that sent these messages, then exited."""

    def __init__(self, *messages) -> None:
        super().__init__()
        self.unread = list(messages)
        self.closed = False

    def poll(self, _timeout=0) -> bool:
        return bool(self.unread)

    def recv(self):
        return self.unread.pop(0)

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("fatal", [False, True])
def test_a_worker_that_could_not_start_is_restarted_with_its_reason_or_stops_relay(fatal, caplog, monkeypatch):
    """A service it could not reach (fatal=False): the restart line says why, in the same line; relay
    goes on. A configuration it cannot run with (fatal=True): relay stops with that message."""
    from relay import metrics
    from relay.messages import BootError
    from relay.worker import EXIT_BOOT_ERROR

    monkeypatch.setattr(metrics, "mark_dead", lambda pid: None)
    sup, _ = supervisor({"ks.a": 4}, workers=2)
    sup.metrics.worker_restarts = NoMetric()
    slot = sup.slots[1]
    slot.sender.close()
    why = "cannot connect to Scylla/Cassandra at 10.0.0.9:9042: timed out"
    slot.conn = SaidBeforeExit(BootError(1, why, fatal=fatal))
    slot.process = DeadProcess(1001, EXIT_BOOT_ERROR if fatal else 1)
    with caplog.at_level("ERROR", logger="relay.supervisor"):
        sup.step_reap()
    assert slot.process is None
    if fatal:
        assert sup.boot_error == f"worker 1: {why}"
        assert not [r for r in caplog.records if "restarting" in r.getMessage()]
    else:
        assert sup.boot_error is None
        lines = [r.getMessage() for r in caplog.records]
        assert lines == [f"worker 1 (pid 1001) died with exit code 1: could not start: {why}; restarting in 0.5s"]
        assert slot.boot_failure == "", "said once, not again at the next death"

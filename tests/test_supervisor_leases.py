"""The supervisor's side of leases as logic (DESIGN §5b): group events in, tasks planned only among
owned slots, a revoke released only once the workers let go of the slot's tasks, Lease deadlines
out. No service: the helpers of test_supervisor_loop play discovery, checkpoints and workers; the
real group is in tests/test_replicas.py."""
from __future__ import annotations

import threading
import time

from test_supervisor_loop import NoMetric, last_assign, report, settle, supervisor

from relay.leases import Assigned, Lost, Proven, Revoked
from relay.messages import Assign, Lease
from relay.ownership import Ownership


class NoHistogram(NoMetric):
    def observe(self, *_a):
        pass


def with_leases(tables: dict[str, int], workers: int = 2, slots: int = 8):
    sup, fakes = supervisor(tables, workers=workers)
    sup.slot_map.slots = slots
    sup.ownership = Ownership(10.0, 3.0, 30.0)
    sup._run_slots = frozenset()
    sup._run_version += 1
    sup._dirty_tables.update(tables)
    for name in ("rebalances", "slots_lost", "slots_owned"):
        setattr(sup.metrics, name, NoMetric())
    sup.metrics.rebalance_seconds = NoHistogram()
    return sup, fakes


def planned(sup) -> set[tuple]:
    return {t.key for s in sup.slots for t in s.tasks}


def slot_of_key(sup, key) -> int:
    return sup.slot_map.known(key)


def leases_sent(slot) -> list[Lease]:
    assert slot.sender.flush(30)
    return [m for m in slot.conn.assigns if isinstance(m, Lease)]


def step(sup) -> None:
    sup.step_leases()
    settle(sup)
    sup.step_leases()


def test_nothing_runs_before_the_first_assignment_then_only_owned_slots():
    sup, _ = with_leases({"a.outbox": 32})
    step(sup)
    assert planned(sup) == set()
    assert not sup.may_auto_replay()
    sup.lease_events.put(Assigned(frozenset({0, 1, 2})))
    step(sup)
    keys = planned(sup)
    assert keys and {slot_of_key(sup, k) for k in keys} <= {0, 1, 2}
    all_tasks = {t.key for t in sup._tasks_of(sup.generations["a.outbox"][0])}
    assert keys == {k for k in all_tasks if sup.slot_map.of(sup.views[k].task, False) in {0, 1, 2}}
    assert not sup.may_auto_replay()  # slot 0 owned, but no proof yet
    assert [m.valid_until for m in leases_sent(sup.slots[0])] == [0.0]  # fenced: nothing proven


def test_proof_sends_a_deadline_and_enables_auto_replay_for_the_owner_of_slot_0():
    sup, _ = with_leases({"a.outbox": 32})
    sup.lease_events.put(Assigned(frozenset({0, 3})))
    sent_at = time.monotonic()
    sup.lease_events.put(Proven(sent_at))
    step(sup)
    for slot in sup.slots:
        assert leases_sent(slot)[-1].valid_until == sent_at + 10.0 - 3.0
    assert sup.may_auto_replay()
    sup.lease_events.put(Lost(frozenset({0, 3})))
    step(sup)
    assert not sup.may_auto_replay()
    assert planned(sup) == set()
    for slot in sup.slots:
        assert leases_sent(slot)[-1].valid_until == 0.0  # fenced at once


def test_revoke_is_released_only_after_the_workers_let_go():
    sup, _ = with_leases({"a.outbox": 32})
    sup.lease_events.put(Assigned(frozenset(range(8))))
    step(sup)
    before = planned(sup)
    moving = {slot_of_key(sup, k) for k in before}.pop()
    done = threading.Event()
    sup.lease_events.put(Revoked(frozenset({moving}), done))
    sup.step_leases()
    assert not done.is_set()  # the workers still hold the slot's tasks
    sup.step_assign()  # re-planned without them and handed over ...
    assert all(slot_of_key(sup, k) != moving for k in planned(sup))
    sup.step_leases()
    assert not done.is_set()  # ... but not yet confirmed by the workers
    for slot in sup.slots:
        report(sup, slot)  # each applied its new assignment (after checkpointing what it let go)
    sup.step_leases()
    assert done.is_set()
    assert planned(sup) == {k for k in before if slot_of_key(sup, k) != moving}
    assert all(isinstance(last_assign(s), Assign) for s in sup.slots)

"""`relay.assignment.assign`: pure, stable, balanced, and moving few tasks when a slot comes or goes (DESIGN §2)."""
from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from relay.assignment import TablePlans, assign

# Task keys as the supervisor builds them: (table, generation start µs, task id).
GENERATION_US = 1_767_225_600_000_000


def tasks_of(n: int, table: str = "shop.outbox") -> list[tuple[str, int, int]]:
    return [(table, GENERATION_US, i) for i in range(n)]


def owners(plan: dict) -> dict:
    """task -> slot; fails if a task is placed twice."""
    out = {}
    for slot, tasks in plan.items():
        for t in tasks:
            assert t not in out, f"task {t} placed on {out[t]} and on {slot}"
            out[t] = slot
    return out


def moved(before: dict, after: dict) -> int:
    return sum(1 for t, slot in after.items() if before[t] != slot)


def check_plan(tasks: list, slots: list, plan: dict) -> None:
    assert set(plan) == set(slots), "every slot appears in the plan, even an empty one"
    placed = Counter(t for ts in plan.values() for t in ts)
    assert set(placed) == set(tasks), "every task is placed"
    assert max(placed.values(), default=1) == 1, f"placed twice: {[t for t, n in placed.items() if n > 1][:3]}"
    loads = [len(ts) for ts in plan.values()]
    assert max(loads) - min(loads) <= 1, f"{len(tasks)} tasks on {len(slots)} slots: loads {sorted(loads)}"


# --------------------------------------------------------------------------- determinism

def test_same_input_same_plan():
    tasks, slots = tasks_of(300), list(range(7))
    first = assign(tasks, slots)
    for _ in range(3):
        assert assign(tasks, slots) == first
    # A fresh list object with equal contents gives the same plan too (nothing depends on identity).
    assert assign(list(tasks_of(300)), list(range(7))) == first


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_input_order_does_not_matter(seed):
    tasks, slots = tasks_of(257), [f"worker-{i}" for i in range(9)]
    reference = owners(assign(tasks, slots))
    rng = random.Random(seed)
    shuffled_tasks, shuffled_slots = tasks[:], slots[:]
    rng.shuffle(shuffled_tasks)
    rng.shuffle(shuffled_slots)
    plan = assign(shuffled_tasks, shuffled_slots)
    assert owners(plan) == reference
    # The per-slot lists are ordered too, so equal plans compare equal as plain data.
    assert plan == assign(tasks, slots)


def test_plan_depends_on_the_tasks_not_on_their_position():
    """Removing one task must not reshuffle everything: the plan is a function of task identity."""
    tasks, slots = tasks_of(200), list(range(5))
    before = owners(assign(tasks, slots))
    after = owners(assign(tasks[1:], slots))
    assert moved(before, after) <= 200 / 5, "dropping one task moved more than one slot's worth of tasks"


def test_duplicate_tasks_are_placed_once():
    tasks = tasks_of(10)
    plan = assign(tasks + tasks[:4], [0, 1, 2])
    check_plan(tasks, [0, 1, 2], plan)


# --------------------------------------------------------------------------- balance

@pytest.mark.parametrize("n_tasks", [1, 2, 3, 7, 16, 17, 64, 100, 255, 256, 257, 1000])
@pytest.mark.parametrize("n_slots", [1, 2, 3, 4, 5, 8, 13, 16, 32])
def test_every_task_placed_once_and_loads_differ_by_at_most_one(n_tasks, n_slots):
    tasks, slots = tasks_of(n_tasks), list(range(n_slots))
    check_plan(tasks, slots, assign(tasks, slots))


@pytest.mark.parametrize("make", [lambda i: i, lambda i: f"task-{i}", lambda i: ("a.b", 0, i, b"\x01" * 16)],
                         ids=["int", "str", "tuple-with-bytes"])
def test_balance_with_other_hashable_task_and_slot_types(make):
    tasks = [make(i) for i in range(101)]
    slots = [("replica-a", 0), ("replica-a", 1), ("replica-b", 0), ("replica-b", 1)]
    check_plan(tasks, slots, assign(tasks, slots))


def test_zero_tasks():
    plan = assign([], [0, 1, 2])
    assert plan == {0: [], 1: [], 2: []}


def test_one_slot_gets_everything():
    tasks = tasks_of(50)
    plan = assign(tasks, ["only"])
    assert list(plan) == ["only"]
    assert sorted(plan["only"]) == sorted(tasks)


def test_more_slots_than_tasks():
    tasks, slots = tasks_of(5), list(range(12))
    plan = assign(tasks, slots)
    check_plan(tasks, slots, plan)
    assert sorted(len(ts) for ts in plan.values()) == [0] * 7 + [1] * 5


def test_tasks_spread_over_slots_rather_than_filling_the_first():
    """Rendezvous placement: with spare room every slot still gets some of a large task set."""
    plan = assign(tasks_of(64), list(range(4)))
    assert all(len(ts) == 16 for ts in plan.values())
    # Not a contiguous cut of the task ids (what a naive round-robin-by-chunks would give).
    firsts = sorted(ts[0][2] for ts in plan.values())
    assert firsts != [0, 16, 32, 48]


# --------------------------------------------------------------------------- movement

def add_slot_limit(n_tasks: int, n_slots: int) -> int:
    """A new slot needs about n_tasks/(n_slots+1) tasks; allow 60% extra churn."""
    return math.ceil(n_tasks / (n_slots + 1) * 1.6)


def remove_slot_extra_limit(n_tasks: int, n_slots: int) -> int:
    """Beyond the removed slot's own tasks, at most one more slot's worth may move."""
    return math.ceil(n_tasks / n_slots)


def movement_violations(task_counts, slot_counts) -> list[str]:
    bad = []
    for n_tasks in task_counts:
        tasks = tasks_of(n_tasks)
        for n_slots in slot_counts:
            small = owners(assign(tasks, list(range(n_slots))))
            big = owners(assign(tasks, list(range(n_slots + 1))))
            # Adding slot n_slots.
            n = moved(small, big)
            if n > add_slot_limit(n_tasks, n_slots):
                bad.append(f"add: {n_tasks} tasks, {n_slots}->{n_slots + 1} slots moved {n} "
                           f"(limit {add_slot_limit(n_tasks, n_slots)})")
            # Removing a worker removes the highest index (workers are 0..N-1): only its tasks move.
            for gone in (n_slots,):
                after = owners(assign(tasks, [s for s in range(n_slots + 1) if s != gone]))
                extra = sum(1 for t, s in big.items() if s != gone and after[t] != s)
                limit = 0
                if extra > limit:
                    bad.append(f"remove slot {gone}: {n_tasks} tasks, {n_slots + 1}->{n_slots} slots moved {extra} "
                               f"tasks besides the removed slot's (limit {limit})")
    return bad


def test_movement_is_small_for_large_task_sets():
    """768 tasks = a 3-node cluster with 256 vnodes each; 2048 a bigger one."""
    assert movement_violations([768, 2048], range(1, 13)) == []


def test_removed_slot_tasks_all_move_and_others_mostly_stay():
    tasks = tasks_of(1000)
    before = owners(assign(tasks, list(range(8))))
    after = owners(assign(tasks, list(range(7))))
    assert all(after[t] != 7 for t in tasks)
    assert all(after[t] == before[t] for t in tasks if before[t] != 7), "only the last worker's tasks move"
    # A slot removed from the middle is still a valid, balanced plan (just with more churn).
    middle = assign(tasks, [s for s in range(8) if s != 3])
    assert sorted(len(v) for v in middle.values()) == [142] + [143] * 6  # 1000 = 142 + 6 x 143
    assert sum(len(v) for v in middle.values()) == 1000


def test_adding_a_slot_fills_it_with_its_share():
    tasks = tasks_of(600)
    before = owners(assign(tasks, list(range(5))))
    plan = assign(tasks, list(range(6)))
    after = owners(plan)
    assert len(plan[5]) == 100
    # Every task now on the new slot had to move; the rest of the churn is bounded.
    assert moved(before, after) <= add_slot_limit(600, 5)


def test_movement_is_small_for_realistic_small_task_sets():
    """16 vnodes x 1-16 workers is the local stack's shape; 64-256 tasks a one-node Scylla."""
    violations = movement_violations([16, 64, 100, 256], range(1, 13))
    assert violations == [], f"{len(violations)} cases over the limit, e.g. {violations[:5]}"


# --------------------------------------------------------------------------- per-table plans (TablePlans)

def table_owners(plans: TablePlans) -> dict:
    return {k: s for s in plans.slots for k in plans.of_slot(s)}


def test_a_salt_moves_only_the_remainder_seats():
    """Salting changes which slots get the remainder, never the balance."""
    tasks = tasks_of(100)
    for salt in ("shop.outbox", "billing.outbox", ""):
        check_plan(tasks, list(range(16)), assign(tasks, list(range(16)), salt=salt))
    loads = {salt: sorted(s for s, ts in assign(tasks, list(range(16)), salt=salt).items() if len(ts) == 7)
             for salt in ("a.t", "b.t", "c.t", "d.t")}
    assert len({tuple(v) for v in loads.values()}) > 1, f"every salt put the remainder on the same slots: {loads}"


def test_small_tables_spread_over_the_workers():
    """Ten one-task tables on 16 workers: not all on worker 0 (nor on any single one)."""
    plans = TablePlans(range(16))
    for i in range(10):
        plans.update(f"ks.t{i}", [(f"ks.t{i}", GENERATION_US, 0)])
    per_slot = Counter(table_owners(plans).values())
    assert max(per_slot.values()) < 10
    assert len(per_slot) >= 4, f"ten one-task tables landed on {dict(per_slot)}"


def test_one_tables_generation_switch_moves_none_of_another_tables_tasks():
    plans = TablePlans(range(16))
    for table in ("a.outbox", "b.outbox", "c.outbox"):
        plans.update(table, tasks_of(768, table))
    before = table_owners(plans)
    recomputed = plans.recomputed
    # a.outbox switches generation: all its keys are new.
    plans.update("a.outbox", [("a.outbox", GENERATION_US + 1, i) for i in range(768)])
    after = table_owners(plans)
    assert plans.recomputed == recomputed + 1, "only the switched table is re-planned"
    assert {k: s for k, s in before.items() if k[0] != "a.outbox"} == \
        {k: s for k, s in after.items() if k[0] != "a.outbox"}
    assert sum(1 for k in after if k[0] == "a.outbox") == 768


def test_a_tablet_split_in_one_table_moves_none_of_another_tables_tasks():
    plans = TablePlans(range(5))
    plans.update("a.outbox", tasks_of(40, "a.outbox"))
    plans.update("b.outbox", tasks_of(33, "b.outbox"))
    before = table_owners(plans)
    plans.update("b.outbox", [("b.outbox", GENERATION_US + 7, i) for i in range(66)])  # each stream split in two
    after = table_owners(plans)
    assert all(after[k] == s for k, s in before.items() if k[0] == "a.outbox")


def test_each_table_balanced_and_the_totals_too():
    plans = TablePlans(range(16))
    sizes = {"a.outbox": 768, "b.outbox": 770, "c.outbox": 20, "d.outbox": 3}
    for table, n in sizes.items():
        plans.update(table, tasks_of(n, table))
    owners_ = table_owners(plans)
    for table in sizes:
        loads = Counter(s for k, s in owners_.items() if k[0] == table)
        per_slot = [loads.get(s, 0) for s in range(16)]
        assert max(per_slot) - min(per_slot) <= 1, f"{table}: {per_slot}"
    totals = Counter(owners_.values())
    spread = max(totals[s] for s in range(16)) - min(totals[s] for s in range(16))
    assert spread <= len(sizes), f"totals {sorted(totals.values())}"  # each table adds at most one


def test_same_tasks_no_recompute_and_same_plan():
    plans = TablePlans(range(8))
    keys = tasks_of(256, "a.outbox")
    assert plans.update("a.outbox", keys)
    first = table_owners(plans)
    assert not plans.update("a.outbox", list(reversed(keys)))
    assert plans.recomputed == 1
    assert table_owners(plans) == first
    # A fresh TablePlans, tables added in another order, gives the same plan: a function of the inputs.
    other = TablePlans(reversed(range(8)))
    other.update("b.outbox", tasks_of(10, "b.outbox"))
    other.update("a.outbox", keys)
    assert {k: s for k, s in table_owners(other).items() if k[0] == "a.outbox"} == first


def test_a_table_without_tasks_leaves_the_plans():
    plans = TablePlans(range(3))
    plans.update("a.outbox", tasks_of(9, "a.outbox"))
    assert plans.update("a.outbox", [])
    assert plans.tables() == [] and all(plans.of_slot(s) == [] for s in range(3))
    assert plans.owner(("a.outbox", GENERATION_US, 0)) is None


def test_adding_a_worker_moves_about_its_share_per_table():
    plans = TablePlans(range(4))
    for table in ("a.outbox", "b.outbox"):
        plans.update(table, tasks_of(768, table))
    before = table_owners(plans)
    assert plans.set_slots(range(5))
    after = table_owners(plans)
    for table in ("a.outbox", "b.outbox"):
        n = sum(1 for k, s in after.items() if k[0] == table and before[k] != s)
        assert n <= add_slot_limit(768, 4), f"{table}: {n} moved"
        assert all(after[k] == 4 for k, s in before.items() if k[0] == table and after[k] != s), \
            "only the new worker takes tasks"


def test_the_plan_is_the_same_in_another_process_with_another_hash_seed():
    """Plans must not depend on Python's per-process string hashing (a restarted supervisor plans the same)."""
    import json
    import os
    import subprocess
    import sys

    code = ("import json; from relay.assignment import assign; "
            "tasks = [('shop.outbox', 1, i) for i in range(100)]; "
            "print(json.dumps(assign(tasks, list(range(7)), salt='shop.outbox')))")
    outs = []
    for seed in ("1", "987654"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        outs.append(subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True,
                                   text=True).stdout)
    here = assign([("shop.outbox", 1, i) for i in range(100)], list(range(7)), salt="shop.outbox")
    assert outs[0] == outs[1]
    assert json.loads(outs[0]) == {str(k): [list(t) for t in v] for k, v in here.items()}

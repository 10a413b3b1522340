"""`relay.assignment.assign`: pure, stable, balanced, and moving few tasks when a slot comes or goes (DESIGN §2)."""
from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from relay.assignment import assign

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

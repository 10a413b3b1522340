"""Tasks → worker slots: pure, stable, balanced, planned per table.

`assign` builds the plan for slots [s0, …, sn] slot by slot: everything starts on s0, and each
next slot takes its share from the others, choosing the tasks that rank it highest (a hash of
task and slot). At each step every slot has a target, ⌊T/k⌋ or ⌊T/k⌋+1; the remainder seats go
to the slots that rank highest for `salt`, so plans salted differently put their remainders on
different slots. The plan for n slots is a step on the way to the plan for n+1: adding a slot at
the end moves only what the new slot takes (its share; with fewer tasks than slots, a remainder
seat may move too), and removing the last slot moves only its own tasks. Same input → same plan;
loads differ by at most one.

`TablePlans` plans each table on its own, salted by its name: a table's generation switch or
tablet split moves none of another table's tasks, and small tables do not all pile onto the same
slots. A table's plan is recomputed only when its own task set (or the slot set) changes.
"""
from __future__ import annotations

import hashlib
from collections.abc import Hashable, Iterable, Sequence
from typing import TypeVar

K = TypeVar("K", bound=Hashable)


def _h64(item: Hashable) -> int:
    """A hash of the item's repr that is the same in every process and Python run."""
    return int.from_bytes(hashlib.blake2b(repr(item).encode(), digest_size=8).digest(), "big")


def _pair(a: int, b: int) -> int:
    # hash() of a tuple of ints is the same in every process (only str/bytes hashing is salted)
    # and ~10x cheaper than a blake2b per pair.
    return hash((a, b))


def _natural(slots: Iterable[Hashable]) -> list[Hashable]:
    try:  # the slots' natural order (worker 0, 1, 2, …), whatever order they came in
        return sorted(set(slots))  # type: ignore[type-var]
    except TypeError:
        return sorted(set(slots), key=repr)


def assign(tasks: Sequence[K], slots: Sequence[Hashable], salt: Hashable = "") -> dict[Hashable, list[K]]:
    """Map each slot to its tasks (sorted by repr); every task is placed exactly once."""
    slot_list = _natural(slots)
    plan: dict[Hashable, list[K]] = {s: [] for s in slot_list}
    if not slot_list:
        return plan
    ordered = sorted(set(tasks), key=repr)
    total = len(ordered)
    task_h = [_h64(t) for t in ordered]
    slot_h = [_h64(s) for s in slot_list]
    salt_h = _h64(salt)
    extra_rank = [(_pair(salt_h, h), -i) for i, h in enumerate(slot_h)]
    rankings: dict[int, list[int]] = {}

    def ranking(slot: int) -> list[int]:
        """Task indexes, the ones that score `slot` highest first."""
        if slot not in rankings:
            h = slot_h[slot]
            scores = [_pair(th, h) for th in task_h]
            rankings[slot] = sorted(range(total), key=scores.__getitem__, reverse=True)
        return rankings[slot]

    owner = [0] * total
    load = [total] + [0] * (len(slot_list) - 1)
    for k in range(1, len(slot_list)):
        share, extra = divmod(total, k + 1)
        favoured = set(sorted(range(k + 1), key=extra_rank.__getitem__, reverse=True)[:extra])
        target = [share + (i in favoured) for i in range(k + 1)]
        # The new slot fills up first; an older slot can also be short when the task count is
        # small (its remainder seat moved to another slot), and fills up after it.
        for receiver in [k] + [j for j in range(k) if load[j] < target[j]]:
            need = target[receiver] - load[receiver]
            for t in ranking(receiver) if need > 0 else ():
                donor = owner[t]
                if donor != receiver and load[donor] > target[donor]:
                    owner[t] = receiver
                    load[donor] -= 1
                    load[receiver] += 1
                    need -= 1
                    if need == 0:
                        break
    for t, task in enumerate(ordered):
        plan[slot_list[owner[t]]].append(task)
    return plan


class TablePlans:
    """The plan of every table over one slot set, each table recomputed only when its own tasks change.

    Keys are task keys `(table, generation, task id)`; `update` takes one table's current keys."""

    def __init__(self, slots: Sequence[Hashable]) -> None:
        self.slots: tuple[Hashable, ...] = tuple(_natural(slots))
        self._keys: dict[str, frozenset] = {}
        self._plans: dict[str, dict[Hashable, list]] = {}
        self._owner: dict[Hashable, Hashable] = {}
        self.recomputed = 0  # table plans computed so far (a test's and a benchmark's window on the work done)

    def update(self, table: str, keys: Iterable[Hashable]) -> bool:
        """Set the table's task keys; True when its plan changed (it was recomputed)."""
        keys = keys if isinstance(keys, frozenset) else frozenset(keys)
        if self._keys.get(table) == keys:
            return False
        for key in self._keys.get(table, ()):
            self._owner.pop(key, None)
        if keys:
            self._keys[table] = keys
            plan = self._plans[table] = self._plan_table(table, keys)
            for slot, ks in plan.items():
                for key in ks:
                    self._owner[key] = slot
        else:
            self._keys.pop(table, None)
            self._plans.pop(table, None)
        return True

    def set_slots(self, slots: Sequence[Hashable]) -> bool:
        """A new slot set re-plans every table (each one still moving only about a slot's share)."""
        new = tuple(_natural(slots))
        if new == self.slots:
            return False
        self.slots = new
        tables = dict(self._keys)
        self._keys.clear()
        for table, keys in tables.items():
            self.update(table, keys)
        return True

    def _plan_table(self, table: str, keys: frozenset) -> dict[Hashable, list]:
        self.recomputed += 1
        return assign(list(keys), self.slots, salt=table)

    def owner(self, key: Hashable) -> Hashable | None:
        return self._owner.get(key)

    def of_slot(self, slot: Hashable) -> list:
        """The slot's keys, table by table (tables in name order)."""
        return [k for table in sorted(self._plans) for k in self._plans[table].get(slot, ())]

    def tables(self) -> list[str]:
        return sorted(self._plans)

"""Tasks → worker slots: a pure, stable, balanced function.

The plan for slots [s0, …, sn] is built slot by slot: everything starts on s0, and each next
slot takes its share from the others, choosing the tasks that rank it highest (a hash of task
and slot). So the plan for n slots is a step on the way to the plan for n+1: adding a slot at
the end moves only what the new slot takes (the ideal T/(n+1)), and removing the last slot moves
only its own tasks. Same input → same plan; loads differ by at most one.
"""
from __future__ import annotations

import hashlib
from collections.abc import Hashable, Sequence
from typing import TypeVar

K = TypeVar("K", bound=Hashable)


def _score(task: Hashable, slot: Hashable) -> int:
    digest = hashlib.blake2b(repr((task, slot)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def assign(tasks: Sequence[K], slots: Sequence[Hashable]) -> dict[Hashable, list[K]]:
    """Map each slot to its tasks (sorted); every task is placed exactly once."""
    plan: dict[Hashable, list[K]] = {s: [] for s in slots}
    if not slots:
        return plan
    try:  # the slots' natural order (worker 0, 1, 2, …), whatever order they came in
        slots = sorted(set(slots))  # type: ignore[type-var]
    except TypeError:
        slots = sorted(set(slots), key=repr)
    ordered = sorted(set(tasks), key=repr)
    owner: dict[K, Hashable] = {t: slots[0] for t in ordered}
    load: dict[Hashable, int] = {slots[0]: len(ordered)}
    total = len(ordered)
    for k, slot in enumerate(slots[1:], start=1):
        load[slot] = 0
        floor, ceil = total // (k + 1), -(-total // (k + 1))
        ranked = sorted(ordered, key=lambda t: (_score(t, slot), repr(t)), reverse=True)
        # First from slots above the new ceiling, then (when T does not divide evenly) from
        # slots at the ceiling, until the new slot holds its floor share.
        for limit in (ceil, floor):
            for task in ranked:
                if load[slot] >= floor:
                    break
                donor = owner[task]
                if donor != slot and load[donor] > limit:
                    owner[task] = slot
                    load[donor] -= 1
                    load[slot] += 1
    for task in ordered:
        plan[owner[task]].append(task)
    return plan

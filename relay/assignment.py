"""Tasks → worker slots: a pure, stable, balanced function.

Rendezvous hashing with bounded load: each task ranks the slots by hash(task, slot) and
takes the best-ranked slot that still has room (capacity ceil(tasks / slots)). The same
input always gives the same plan; adding or removing a slot moves few tasks, because
each task's ranking of the other slots does not change.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Hashable, Sequence
from typing import TypeVar

K = TypeVar("K", bound=Hashable)


def _score(task: Hashable, slot: Hashable) -> int:
    digest = hashlib.blake2b(repr((task, slot)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def assign(tasks: Sequence[K], slots: Sequence[Hashable]) -> dict[Hashable, list[K]]:
    """Map each slot to its tasks. Loads differ by at most one; every task is placed once."""
    plan: dict[Hashable, list[K]] = {s: [] for s in slots}
    if not slots:
        return plan
    ordered = sorted(set(tasks), key=lambda t: (_score(t, "order"), repr(t)))
    capacity = math.ceil(len(ordered) / len(slots)) if ordered else 0
    # Slots that may take capacity tasks; the rest take capacity-1, so loads differ by <= 1.
    full_slots = len(ordered) - (capacity - 1) * len(slots) if ordered else 0
    full = 0
    for task in ordered:
        for slot in sorted(slots, key=lambda s: _score(task, s), reverse=True):
            load = len(plan[slot])
            if load < capacity - 1 or (load == capacity - 1 and full < full_slots):
                if load == capacity - 1:
                    full += 1
                plan[slot].append(task)
                break
    for slot in plan:
        plan[slot].sort(key=repr)
    return plan

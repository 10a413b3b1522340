"""relay.heap: what a started process does to the garbage collector, and that cycles still go."""
from __future__ import annotations

import gc
import weakref

from relay import heap


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def test_settle_freezes_the_start_yet_new_cycles_are_still_collected():
    thresholds = gc.get_threshold()
    try:
        heap.settle()
        assert gc.get_freeze_count() > 0, "the start's objects were not frozen"
        assert gc.get_threshold() == thresholds
        a, b = Node(), Node()
        a.other, b.other = b, a
        gone = weakref.ref(a)
        del a, b
        assert gone() is not None  # a cycle outlives its references until a collection
        keep = [[] for _ in range(100_000)]  # allocations alone trigger collections
        assert gone() is None, "no automatic collection after 100,000 allocations"
        del keep
    finally:
        gc.unfreeze()

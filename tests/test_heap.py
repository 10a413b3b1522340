"""relay.heap: what a started process does to the garbage collector, and that cycles still go."""
from __future__ import annotations

import gc
import weakref

from relay import heap


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def test_settle_freezes_the_start_and_raises_the_thresholds_yet_cycles_are_still_collected():
    before = gc.get_threshold()
    try:
        heap.settle()
        assert gc.get_threshold() == heap.THRESHOLDS
        assert gc.get_freeze_count() > 0, "the start's objects were not frozen"
        a, b = Node(), Node()
        a.other, b.other = b, a
        gone = weakref.ref(a)
        del a, b
        assert gone() is not None  # a cycle outlives its references until a collection
        keep = [[] for _ in range(heap.THRESHOLDS[0] * 2)]  # allocations alone trigger one
        assert gone() is None, "no automatic collection within twice the first threshold"
        del keep
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)

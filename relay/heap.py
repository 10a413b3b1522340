"""The cyclic garbage collector, set for relay's long-running processes once they have started.

A worker's heap after its start holds hundreds of thousands of objects that live as long as the
process (modules, the driver's schema and token metadata: more on a cluster with many tables),
and a window allocates a dozen containers per event (rows, events, headers, reports). With
CPython's default thresholds (700, 10, 10) every full collection walks that whole heap again, and
the events of a window are walked once per generation on their way. Measured on 200,000-event
drains with 1 worker (benchmarks.backlog.run_relay, alternating with and without): relay's CPU
10.2–11.5 s with the defaults, 9.4–9.8 s with this (−6 µs per event); 7–8 % more events/s.

So, once the process has started:
- `gc.freeze()` moves what exists to the permanent generation, which no collection walks again
  (what is garbage then was collected just before);
- a larger first threshold lets a window's events die by reference count, as they do, before a
  collection walks them. Cycles are still collected, every 20,000 allocations at most.

relay's hot path makes no reference cycles on purpose; what cycles appear (tracebacks, the
clients' internals) are small and still collected.
"""
from __future__ import annotations

import gc

THRESHOLDS = (20_000, 20, 20)


def settle() -> None:
    """Collect the start's garbage, freeze what is left, and raise the thresholds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)

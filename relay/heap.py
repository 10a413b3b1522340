"""The cyclic garbage collector, set for relay's long-running processes once they have started.

A process's heap after its start holds tens of thousands of objects that live as long as it does
(modules, the driver's token metadata and the schema of relay's own tables: 37,000-46,000 once
sessions stopped loading the whole cluster's schema, hundreds of thousands before). With CPython's
defaults every full collection walks that whole heap again, and a window allocates a dozen
containers per event (rows, events, headers, reports), so full collections come often.
`gc.freeze()` after the start moves what exists to the permanent generation, which no collection
walks again. It is not preceded by a collection: one took ~30 ms per process and found 120-340
objects of garbage among the 37,000-46,000 the start leaves (frozen with the rest, they stay).

Measured on 200,000-event drains with 1 worker (benchmarks.backlog.run_relay, variants alternated,
two rounds): worker CPU 9.4–9.6 s with the defaults, 7.8–8.3 s frozen, peak RSS unchanged
(257 → 250 MB). Raising the first threshold as well (5,000 or 20,000) saved nothing more and
held 80 MB more per worker, so the thresholds stay CPython's in the supervisor.

Workers go further: no automatic collection at all, a full one every `COLLECT_EVERY_S` instead.
Their collections found almost nothing to free: over a drain of 200,000 events, 1,729 young
collections freed 2,580 objects in all, yet the three generations' collections took 0.26, 0.20
and 0.37 s of the worker's main thread (~4 µs per event), walking the live window's rows and
events again and again. The one steady source of cycles was the driver's request timers (each
finished read held its last page of rows until a full collection: the 80 MB above); relay's
sessions hold requests weakly from their timers now (relay.connect.without_timer_cycles), so
workers create few cycles, and a full collection every 10 s frees them. Alternated drains, five
rounds: worker CPU 7.0–8.1 s with CPython's collector, 6.9–7.6 s collecting every 10 s, peak
RSS 248–255 MB either way (without the timer fix, collecting every 10 s held 342–349 MB).
"""
from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

COLLECT_EVERY_S = 10.0


def settle() -> None:
    """Freeze what the start built."""
    gc.freeze()


class CollectionClock:
    """When the next full collection is due: every `every_s` seconds. Pure: fed `now`."""

    def __init__(self, every_s: float, now: float) -> None:
        if every_s <= 0:
            raise ValueError("every_s must be positive")
        self.every_s = every_s
        self.next_at = now + every_s

    def wait_s(self, now: float) -> float:
        return max(0.0, self.next_at - now)

    def due(self, now: float) -> bool:
        """True once per period; the next period starts from `now` (a late collection is not repeated)."""
        if now < self.next_at:
            return False
        self.next_at = now + self.every_s
        return True


class PeriodicCollector:
    """Automatic collection off; a daemon thread collects every `every_s` seconds instead."""

    def __init__(self, every_s: float = COLLECT_EVERY_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.schedule = CollectionClock(every_s, clock())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gc", daemon=True)
        self.collections = 0

    def start(self) -> PeriodicCollector:
        gc.disable()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Back to automatic collection (tests; a worker keeps its collector until it exits)."""
        self._stop.set()
        self._thread.join()
        gc.enable()

    def _run(self) -> None:
        while not self._stop.wait(self.schedule.wait_s(self.clock())):
            if self.schedule.due(self.clock()):
                try:
                    gc.collect()
                    self.collections += 1
                except Exception:  # noqa: BLE001 - a finalizer's error must not end the collections
                    log.exception("garbage collection failed")

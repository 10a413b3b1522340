"""Self-fencing on the worker's side (DESIGN §5b): publish only before the lease's validity deadline.

The supervisor sends `Lease(valid_until)` (relay.messages) whenever its proven group session moves the
deadline; the worker checks it on its own monotonic clock right before a read's events are deduplicated
and produced. A replica frozen past its session therefore publishes nothing for slots a peer may own
by now, whether the supervisor, the worker or both were frozen. A refused read is released (read again
from the unchanged checkpoint by whoever owns its task next); checkpoint writes are never fenced.
"""
from __future__ import annotations

import time

PAUSE_S = 0.5  # reading pauses this long after a refusal, instead of re-reading in a tight loop


class Fenced(Exception):
    """The lease's validity deadline has passed: this read's events must not be published."""


class Fence:
    def __init__(self, clock=time.monotonic) -> None:
        self.valid_until = 0.0  # nothing is published before the supervisor's first proven lease
        self.clock = clock
        self.refused = 0

    def update(self, valid_until: float) -> None:
        self.valid_until = valid_until

    def expired(self) -> bool:
        return self.clock() >= self.valid_until

    def check(self) -> None:
        if self.expired():
            self.refused += 1
            raise Fenced(f"lease not proven (valid until {self.valid_until:.1f}, now {self.clock():.1f})")

"""The cyclic garbage collector, set for relay's long-running processes once they have started.

A worker's heap after its start holds hundreds of thousands of objects that live as long as the
process (modules, the driver's schema and token metadata: more on a cluster with many tables).
With CPython's defaults every full collection walks that whole heap again, and a window allocates
a dozen containers per event (rows, events, headers, reports), so full collections come often.
`gc.freeze()` after the start moves what exists to the permanent generation, which no collection
walks again; what was garbage then is collected just before.

Measured on 200,000-event drains with 1 worker (benchmarks.backlog.run_relay, variants alternated,
two rounds): worker CPU 9.4–9.6 s with the defaults, 7.8–8.3 s frozen, peak RSS unchanged
(257 → 250 MB). Raising the first threshold as well (5,000 or 20,000) saved nothing more and
held 80 MB more per worker (cycles in the clients' per-request objects wait longer), so the
thresholds stay CPython's.
"""
from __future__ import annotations

import gc


def settle() -> None:
    """Collect the start's garbage, then freeze what is left."""
    gc.collect()
    gc.freeze()

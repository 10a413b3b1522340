"""Scylla-CDC emulation on Cassandra, for tests, demos and benchmarks (see emulator.py)."""

from relay.testing.emulator import (
    OP_INSERT,
    OP_PARTITION_DELETE,
    OP_ROW_DELETE,
    OP_UPDATE,
    CdcEmulator,
    CdcWriteRejected,
    Generation,
    Op,
    TabletStreamSet,
    now_micros,
)

__all__ = [
    "OP_INSERT", "OP_PARTITION_DELETE", "OP_ROW_DELETE", "OP_UPDATE", "CdcEmulator", "CdcWriteRejected",
    "Generation", "Op", "TabletStreamSet", "now_micros",
]

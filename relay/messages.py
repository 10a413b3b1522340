"""Messages on the control pipe between the supervisor and a worker (DESIGN §2)."""
from __future__ import annotations

from dataclasses import dataclass, field

from relay.model import Task

TaskKey = tuple[str, int, int]


# supervisor -> worker
@dataclass(frozen=True)
class Assign:
    """The worker's whole task set (tasks not listed are let go, after a final checkpoint)."""

    seq: int
    tasks: tuple[Task, ...]
    ttl_by_table: dict[str, int] = field(default_factory=dict)  # CDC TTL seconds, 0 = no expiry


@dataclass(frozen=True)
class Lease:
    """Self-fencing (DESIGN §5b): publish only while time.monotonic() < valid_until (the host's
    monotonic clock, shared by the supervisor and its workers). 0 = publish nothing. Refreshed from
    the replica's proven group session; checkpoint writes are never fenced."""

    valid_until: float


@dataclass(frozen=True)
class Stop:
    """Finish the current window, flush, checkpoint, exit 0."""


# worker -> supervisor
@dataclass(frozen=True)
class Beat:
    """Liveness, from a thread that never waits behind a window. `idle_s`: time since the worker's
    loop last made progress (a long publish or CQL retry still ticks it); a loop stuck beyond every
    bounded wait is hung even though the process beats."""

    index: int
    pid: int
    idle_s: float


@dataclass(frozen=True)
class Progress:
    """Task positions, sent by the worker's loop between windows and right after each Assign."""

    index: int
    pid: int
    assign_seq: int
    positions: dict[TaskKey, tuple[int | None, bool, str]]  # key -> (position µs, finished, last error)
    dlq_failing: str = ""  # the last dead-letter write error while writes keep failing, else ""
    clock_ahead_s: float = 0.0


@dataclass(frozen=True)
class BootError:
    index: int
    message: str
    fatal: bool = True  # configuration it cannot run with; else (a service unreachable) it is restarted

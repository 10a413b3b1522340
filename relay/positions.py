"""Where a task starts reading (DESIGN §3): one place decides, from checkpoints read from Scylla.

Two decisions, both pure (facts and `now` in, positions out):

- `first_start`: a table that has no checkpoint at all is relay's first start on it. Only then does
  `start_from` apply. The instant it names is fixed once, and written as checkpoints of every
  generation it cuts (and of every generation wholly before it, at their end) *before* any task
  runs, so no later decision - a restart, a new generation, another worker - can re-decide "now".
- `task_start`: every other task starts at its checkpoint or, when it has none, at its own start
  (the generation's or the tablet stream set's): a new generation, a tablet split, a checkpoint row
  missing while its siblings have one. Never at wall-clock now: that is how events get skipped.

Expiry: rows older than the table's CDC TTL are gone (TTL 0 = kept forever), so a start before
`now - ttl` moves to that instant, and the caller warns that data was lost.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from relay.model import Generation, Task


def ms_floor(us: int) -> int:
    """minTimeuuid() takes milliseconds: positions are kept on millisecond boundaries."""
    return us - us % 1000


def oldest_live_us(now_us: int, ttl_s: int) -> int | None:
    """The oldest instant whose CDC rows may still exist, or None when the table keeps them forever."""
    return now_us - ttl_s * 1_000_000 if ttl_s > 0 else None


def start_from_instant(mode: str, lookback_s: float, now_us: int, ttl_s: int) -> int:
    """The instant `start_from` names, on relay's first start on a table."""
    if mode == "now":
        return ms_floor(now_us)
    if mode == "lookback":
        return ms_floor(now_us - int(lookback_s * 1_000_000))
    oldest = oldest_live_us(now_us, ttl_s)
    return ms_floor(oldest) if oldest is not None else 0  # earliest: everything still in the log


def first_start(generations: Iterable[tuple[Generation, list[Task]]], instant_us: int) -> list[tuple[Task, int]]:
    """The checkpoints that pin relay's first start on a table at `instant_us`.

    A generation that ended at or before the instant is recorded as complete (its end); the first one
    that does not starts at the instant (or at its own start, if later): written even then, so that a
    restart finds checkpoints and never re-decides. Later generations need nothing: their tasks start
    at their own start."""
    out: list[tuple[Task, int]] = []
    for gen, tasks in generations:
        if gen.end_us is not None and gen.end_us <= instant_us:
            out.extend((t, gen.end_us) for t in tasks)
        else:
            out.extend((t, max(instant_us, gen.start_us)) for t in tasks)
            break
    return out


@dataclass(frozen=True)
class Start:
    position_us: int
    expired_from_us: int | None = None  # set when rows from the wanted start up to here are gone (TTL)


def task_start(task: Task, checkpoint_us: int | None, now_us: int, ttl_s: int) -> Start:
    """A task's first position in this process: its checkpoint, else its own start; clamped to the TTL."""
    start = checkpoint_us if checkpoint_us is not None else task.generation_us
    expired = None
    oldest = oldest_live_us(now_us, ttl_s)
    if oldest is not None and start < oldest and (task.end_us is None or start < task.end_us):
        expired = start
        start = oldest
    if task.end_us is not None:
        start = min(start, task.end_us)
    return Start(ms_floor(start), expired)


def generation_expired(gen: Generation, now_us: int, ttl_s: int) -> bool:
    """True when every row of a closed generation has outlived the CDC TTL."""
    oldest = oldest_live_us(now_us, ttl_s)
    return gen.end_us is not None and oldest is not None and gen.end_us < oldest

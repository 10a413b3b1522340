"""Window decisions of a task (DESIGN §3): where the newest readable instant is, where the next
window ends, how wide it is, when a caught-up task may read again. Pure: fed positions, clocks and
outcomes (relay.schedule acts on the answers).
"""
from __future__ import annotations

MAX_EVENTS_PER_WINDOW = 20_000  # above this a window shrinks, bounding a worker's memory while catching up
MIN_WINDOW_S = 0.05
CATCH_UP_GROWTH = 8  # a light window may grow to this many times [relay] window_seconds


def readable_limit(now_us: int, confidence_s: float, clock_ahead_s: float, grid_us: int = 0) -> int:
    """The newest instant that may be read: rows younger than the confidence window may still arrive
    with older timestamps, so reading stops `confidence_s` before now - and before the *cluster's* now
    when relay's clock runs ahead of it. With a grid, the limit snaps down to it: live tasks then all
    end their windows on the same instants, so one query can serve many of them (DESIGN §3b)."""
    limit = now_us - int((confidence_s + max(0.0, clock_ahead_s)) * 1_000_000)
    if grid_us > 0:
        limit -= limit % grid_us
    return limit


def window_end(position_us: int, window_s: float, limit_us: int, goal_us: int | None) -> int | None:
    """The end of the next window, given the newest readable instant (`readable_limit`, computed
    once for many tasks), or None when nothing may be read yet."""
    end = min(position_us + int(window_s * 1_000_000), limit_us)
    if goal_us is not None:
        end = min(end, goal_us)
    end -= end % 1000  # minTimeuuid() takes milliseconds
    return end if end > position_us else None


def next_window_size(current_s: float, base_s: float, events: int, timed_out: bool = False) -> float:
    """Shrink a window that carried too much (memory) or whose read timed out (a read that keeps
    timing out must get smaller, not be retried whole forever); grow light ones back while catching
    up, since each window costs a query, a flush and a checkpoint whatever it holds."""
    if timed_out:
        return max(MIN_WINDOW_S, current_s / 4)
    if events > MAX_EVENTS_PER_WINDOW:
        return max(MIN_WINDOW_S, current_s / 2)
    if events < MAX_EVENTS_PER_WINDOW / 4:
        return min(base_s * CATCH_UP_GROWTH, current_s * 2)
    return current_s


def next_readable_at(position_us: int, confidence_s: float, clock_ahead_s: float, grid_us: int) -> int:
    """The wall-clock instant (µs) at which a window starting at `position_us` first has a non-empty
    end: the next grid point after the position, plus the confidence window."""
    step = grid_us or 1000
    nxt = position_us - position_us % step + step
    return nxt + int((confidence_s + max(0.0, clock_ahead_s)) * 1_000_000)

"""Window decisions (relay.windows), with explicit clocks."""
from __future__ import annotations

from relay import windows

S = 1_000_000
NOW = 1_800_000_000 * S


def test_window_stops_at_the_confidence_bound():
    assert windows.window_end(NOW - 60 * S, 10, windows.readable_limit(NOW, 10, 0), None) == NOW - 50 * S
    assert windows.window_end(NOW - 12 * S, 10, windows.readable_limit(NOW, 10, 0), None) == NOW - 10 * S


def test_clock_running_ahead_holds_the_window_back():
    assert windows.window_end(NOW - 12 * S, 10, windows.readable_limit(NOW, 10, 1.5), None) == NOW - 11_500_000
    assert windows.window_end(NOW - 11 * S, 10, windows.readable_limit(NOW, 10, 1.5), None) is None
    # A clock behind the cluster's does not let relay read closer to now.
    assert windows.window_end(NOW - 12 * S, 10, windows.readable_limit(NOW, 10, -5), None) == NOW - 10 * S


def test_window_stops_at_the_goal_and_on_milliseconds():
    limit = windows.readable_limit(NOW, 10, 0)
    assert windows.window_end(NOW - 60 * S, 10, limit, NOW - 55 * S + 1234) == NOW - 55 * S + 1000
    assert windows.window_end(NOW - 60 * S, 10, limit, NOW - 60 * S) is None


def test_window_sizes():
    assert windows.next_window_size(10, 10, 100) == 20
    assert windows.next_window_size(80, 10, 0) == 80, "growth is capped at 8x"
    assert windows.next_window_size(10, 10, windows.MAX_EVENTS_PER_WINDOW + 1) == 5
    assert windows.next_window_size(10, 10, windows.MAX_EVENTS_PER_WINDOW // 2) == 10


def test_a_read_that_times_out_shrinks_until_the_floor():
    size = 10.0
    for _ in range(20):
        size = windows.next_window_size(size, 10, 0, timed_out=True)
    assert size == windows.MIN_WINDOW_S


def test_grid_snaps_the_readable_limit_down():
    grid = 250_000
    limit = windows.readable_limit(NOW + 100_000, 10, 0, grid)
    assert limit % grid == 0 and NOW - 10 * S - grid < limit <= NOW + 100_000 - 10 * S
    later = windows.readable_limit(NOW + 100_000, 10, 0, grid)
    assert windows.window_end(NOW - 20 * S, 10, later, None) == NOW - 10 * S
    assert windows.window_end(NOW - 10 * S, 10, later, None) is None, "no partial grid step"


def test_next_readable_at_is_the_next_grid_point_plus_confidence():
    grid = 250_000
    assert windows.next_readable_at(NOW, 10, 0, grid) == NOW + grid + 10 * S
    assert windows.next_readable_at(NOW + 1, 10, 0.5, grid) == NOW + grid + 10_500_000
    pos = NOW - 10 * S
    at = windows.next_readable_at(pos, 10, 0, grid)
    assert windows.window_end(pos, 10, windows.readable_limit(at, 10, 0, grid), None) == pos + grid
    assert windows.window_end(pos, 10, windows.readable_limit(at - 1, 10, 0, grid), None) is None

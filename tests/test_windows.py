"""Window decisions (relay.windows), with explicit clocks."""
from __future__ import annotations

from relay import windows

S = 1_000_000
NOW = 1_800_000_000 * S


def test_window_stops_at_the_confidence_bound():
    assert windows.window_end(NOW - 60 * S, 10, NOW, 10, 0, None) == NOW - 50 * S
    assert windows.window_end(NOW - 12 * S, 10, NOW, 10, 0, None) == NOW - 10 * S


def test_clock_running_ahead_holds_the_window_back():
    assert windows.window_end(NOW - 12 * S, 10, NOW, 10, 1.5, None) == NOW - 11_500_000
    assert windows.window_end(NOW - 11 * S, 10, NOW, 10, 1.5, None) is None
    # A clock behind the cluster's does not let relay read closer to now.
    assert windows.window_end(NOW - 12 * S, 10, NOW, 10, -5, None) == NOW - 10 * S


def test_window_stops_at_the_goal_and_on_milliseconds():
    assert windows.window_end(NOW - 60 * S, 10, NOW, 10, 0, NOW - 55 * S + 1234) == NOW - 55 * S + 1000
    assert windows.window_end(NOW - 60 * S, 10, NOW, 10, 0, NOW - 60 * S) is None


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


def test_checkpoint_due():
    assert windows.checkpoint_due(1, 100.0, 99.9, False)
    assert not windows.checkpoint_due(0, 100.0, 99.0, False)
    assert windows.checkpoint_due(0, 100.0, 100.0 - windows.EMPTY_CHECKPOINT_INTERVAL_S, False)
    assert windows.checkpoint_due(0, 100.0, 99.9, True), "the goal is always saved"


def test_caught_up():
    assert windows.caught_up(NOW - 10 * S, NOW, 10, 0.5, 0)
    assert not windows.caught_up(NOW - 11 * S, NOW, 10, 0.5, 0)

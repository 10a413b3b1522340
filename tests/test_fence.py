"""The worker's side of self-fencing (relay.fence), on a fake clock."""
from __future__ import annotations

import pytest

from relay.fence import Fence, Fenced


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_nothing_is_published_before_the_first_proven_lease():
    fence = Fence(Clock())
    assert fence.expired()
    with pytest.raises(Fenced):
        fence.check()
    assert fence.refused == 1


def test_publishing_stops_at_the_deadline_and_resumes_when_it_moves():
    clock = Clock()
    fence = Fence(clock)
    fence.update(107.0)
    fence.check()
    assert not fence.expired() and fence.refused == 0
    clock.t = 106.999
    assert not fence.expired()
    clock.t = 107.0  # the deadline itself is already too late
    assert fence.expired(), "the publisher's abort hook sees it without a refusal being counted"
    assert fence.refused == 0
    with pytest.raises(Fenced, match="valid until 107.0"):
        fence.check()
    assert fence.refused == 1
    fence.update(110.0)  # a later proof
    assert not fence.expired()
    fence.check()

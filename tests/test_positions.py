"""Start positions (relay.positions): start_from applies once, on a table's first start; every other
task starts at its checkpoint or its own start, never at wall-clock now."""
from __future__ import annotations

import pytest

from relay.model import Generation, Task
from relay.positions import first_start, generation_expired, start_from_instant, task_start

S = 1_000_000
NOW = 1_800_000_000 * S  # an instant in 2027
DAY = 86400


def gen(start_s: float, end_s: float | None, n: int = 3) -> tuple[Generation, list[Task]]:
    start = NOW + int(start_s * S)
    end = None if end_s is None else NOW + int(end_s * S)
    g = Generation("ks.t", start, end, tuple(bytes([i]) * 16 for i in range(n)), False)
    return g, [Task("ks.t", start, i, (bytes([i]) * 16,), end) for i in range(n)]


@pytest.mark.parametrize("mode,lookback,expect", [
    ("now", 0, NOW), ("lookback", 30, NOW - 30 * S), ("earliest", 0, NOW - DAY * S)])
def test_start_from_instant(mode, lookback, expect):
    assert start_from_instant(mode, lookback, NOW + 123, DAY) == expect


def test_earliest_without_ttl_reads_everything():
    assert start_from_instant("earliest", 0, NOW, 0) == 0


def test_first_start_closes_earlier_generations_and_pins_the_cut_one():
    old, cut, future = gen(-300, -100), gen(-100, 50), gen(50, None)
    writes = first_start([old, cut, future], NOW)
    by_gen = {}
    for task, pos in writes:
        by_gen.setdefault(task.generation_us, set()).add(pos)
    assert by_gen == {old[0].start_us: {old[0].end_us}, cut[0].start_us: {NOW}}
    assert len(writes) == 6, "every task of both generations, so none is left to re-decide"


def test_first_start_before_every_generation_pins_the_first_at_its_own_start():
    g1, g2 = gen(10, 20), gen(20, None)
    writes = first_start([g1, g2], NOW)
    assert {pos for _, pos in writes} == {g1[0].start_us}
    assert {t.generation_us for t, _ in writes} == {g1[0].start_us}


def test_task_without_checkpoint_starts_at_its_generation_not_now():
    g, tasks = gen(-60, None)
    assert task_start(tasks[0], None, NOW, DAY).position_us == g.start_us


def test_task_resumes_at_its_checkpoint():
    _, tasks = gen(-60, None)
    assert task_start(tasks[1], NOW - 5 * S, NOW, DAY).position_us == NOW - 5 * S


def test_start_before_the_ttl_moves_to_the_oldest_live_row_and_says_so():
    _, tasks = gen(-2 * DAY, None)
    start = task_start(tasks[0], None, NOW, DAY)
    assert start.position_us == NOW - DAY * S
    assert start.expired_from_us == tasks[0].generation_us


def test_no_ttl_never_expires():
    _, tasks = gen(-30 * DAY, None)
    start = task_start(tasks[0], None, NOW, 0)
    assert start.position_us == tasks[0].generation_us and start.expired_from_us is None


def test_start_never_passes_the_generation_end():
    _, tasks = gen(-100, -50)
    assert task_start(tasks[0], tasks[0].end_us + 7 * S, NOW, DAY).position_us == tasks[0].end_us


def test_generation_expiry_uses_the_table_ttl():
    g, _ = gen(-3 * DAY, -2 * DAY)
    assert generation_expired(g, NOW, DAY)
    assert not generation_expired(g, NOW, 3 * DAY)
    assert not generation_expired(g, NOW, 0), "ttl 0: rows never expire"
    open_gen, _ = gen(-3 * DAY, None)
    assert not generation_expired(open_gen, NOW, DAY), "an open generation is being written"

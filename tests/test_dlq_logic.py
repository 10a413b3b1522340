"""Pure decisions of the dead-letter lifecycle, in milliseconds: selection and order of a replay,
its waves, the rate limit, parking, the log replay's slices, --since/--until parsing."""
from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta

import pytest

from relay import timeuuid
from relay.cdcreplay import slices
from relay.commands.dlq import parse_when
from relay.dlqreplay import Selection, plan, waves
from relay.dlqstore import DeadLetter
from relay.errors import UserError
from relay.model import OutboxEvent
from relay.parking import split_parked
from relay.ratelimit import RateLimit, chunk_size

T = "ks.outbox"


def letter(us: int, agg: str | None, status: str = "pending", event_type: str = "created",
           error_class: str = "MSG_SIZE_TOO_LARGE") -> DeadLetter:
    return DeadLetter(T, date(2025, 1, 1), timeuuid.from_micros(us), b"s", 0, str(uuid.uuid4()), "order", agg,
                      event_type, "topic", (agg or "").encode(), b"p", {}, error_class, "m", 1, None, None, status)


def test_plan_filters_orders_and_limits():
    ds = [letter(30, "a"), letter(10, "b"), letter(20, "a", "parked"), letter(40, "c", "replayed"),
          letter(50, "c", "discarded"), letter(60, "d", event_type="paid"), letter(70, "e", "failed")]
    p = plan(ds, Selection(T))
    assert [d.cdc_us for d in p.todo] == [10, 20, 30, 60] and [d.cdc_us for d in p.already] == [40]
    assert [d.cdc_us for d in plan(ds, Selection(T, limit=2)).todo] == [10, 20]
    assert [d.cdc_us for d in plan(ds, Selection(T, since_us=20, until_us=60)).todo] == [20, 30]
    assert [d.cdc_us for d in plan(ds, Selection(T, aggregate_id="a")).todo] == [20, 30]
    assert [d.cdc_us for d in plan(ds, Selection(T, event_type="paid")).todo] == [60]
    assert [d.cdc_us for d in plan(ds, Selection(T, statuses=frozenset({"failed"}))).todo] == [70]
    assert plan(ds, Selection(T, error_class="X")).todo == []
    assert plan(ds, Selection("other.t")).todo == []


def test_plan_with_eligibility_stops_an_aggregate_at_its_first_ineligible_letter():
    ds = [letter(10, "a", error_class="missing_payload"), letter(20, "a", "parked", error_class="PARKED"),
          letter(30, "b"), letter(40, "b", "parked", error_class="PARKED")]
    p = plan(ds, Selection(T), eligible=lambda d: d.error_class != "missing_payload")
    assert [d.cdc_us for d in p.todo] == [30, 40] and [d.cdc_us for d in p.held] == [10, 20]


def test_waves_take_one_letter_per_aggregate_and_skip_blocked_ones():
    ds = sorted([letter(1, "a"), letter(2, "b"), letter(3, "a"), letter(4, "a"), letter(5, "b"), letter(6, None)],
                key=lambda d: d.order)
    blocked: set[str] = set()
    seen = []
    for wave in waves(ds, blocked):
        seen.append([d.cdc_us for d in wave])
        if 2 in seen[-1]:
            blocked.add("b")  # b's first replay failed: its later letter must not overtake it
    assert seen == [[1, 2, 6], [3], [4]]


def test_rate_limit_spreads_chunks():
    limit = RateLimit(10, burst=1)
    assert chunk_size(2, 5000) == 1 and chunk_size(None, 5000) == 5000 and chunk_size(2000, 5000) == 500
    now, sent = 0.0, 0
    while sent < 21:
        delay = limit.wait(now)
        if delay:
            now += delay
        else:
            sent += 1
    assert now == pytest.approx(2.0)  # 1 at once, then 20 more at 10/s


def test_split_parked_holds_parked_aggregates_and_what_follows_a_poison():
    def ev(us: int, agg: str) -> OutboxEvent:
        return OutboxEvent(T, b"s", timeuuid.from_micros(us), us, 0, str(us), "order", agg, "c", "t", agg.encode(),
                           b"")
    events = [ev(1, "a"), ev(2, "b"), ev(3, "c"), ev(4, "b"), ev(5, "c")]
    publish, held = split_parked(events, {"a"}, {"c": (3, b"s", -1)})
    assert [e.cdc_time_us for e in publish] == [2, 4] and [e.cdc_time_us for e in held] == [1, 3, 5]


def test_slices_cover_the_range_once_on_whole_milliseconds():
    parts = list(slices(1_500, 130_000_700, 60_000_000))
    assert parts[0][0] == 1_000 and parts[-1][1] == 130_001_000
    assert all(a < b and a % 1000 == 0 and b % 1000 == 0 for a, b in parts)
    assert all(parts[i][1] == parts[i + 1][0] for i in range(len(parts) - 1))


def test_since_until_parse_seconds_ago_and_iso():
    now = datetime(2025, 1, 1, 12, tzinfo=UTC)
    assert parse_when("60", "--since", now) == int((now - timedelta(seconds=60)).timestamp() * 1e6)
    assert parse_when("2025-01-01T11:00:00Z", "--since", now) == int((now - timedelta(hours=1)).timestamp() * 1e6)
    assert parse_when("2025-01-01T11:00:00", "--since", now) == int((now - timedelta(hours=1)).timestamp() * 1e6)
    for bad in ("yesterday", "-5"):
        with pytest.raises(UserError, match="--since"):
            parse_when(bad, "--since", now)

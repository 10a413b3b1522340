"""The delivery audit every delivery test relies on: each check must fail when it should."""
from __future__ import annotations

import pytest
from harness import Delivered, audit, split_copies

WRITTEN = {"a": ["a1", "a2", "a3"], "b": ["b1", "b2"]}


def deliver(*items: tuple[str, str, int]) -> Delivered:
    """(aggregate key, event id, partition) in the order a consumer reads them."""
    return Delivered([(agg.encode(), {"id": eid}, b"") for agg, eid, _ in items],
                     [("t", p) for _, _, p in items])


GOOD = [("a", "a1", 0), ("a", "a2", 0), ("b", "b1", 1), ("a", "a3", 0), ("b", "b2", 1)]


def test_a_clean_delivery_has_no_problems():
    assert audit(WRITTEN, deliver(*GOOD)).problems() == []


def test_lost():
    report = audit(WRITTEN, deliver(*GOOD[:-1]))
    assert report.lost == ["b2"] and report.problems()


def test_duplicate_of_the_newest_is_a_duplicate_not_disorder():
    report = audit(WRITTEN, deliver(*GOOD, ("b", "b2", 1)))
    assert report.duplicated == {"b2": 1} and not report.out_of_order
    assert report.problems() and not report.problems(allow_duplicates=True)


def test_unexpected():
    report = audit(WRITTEN, deliver(*GOOD, ("c", "c1", 2)))
    assert report.unexpected == ["c1"] and report.problems()


def test_first_deliveries_out_of_order():
    report = audit(WRITTEN, deliver(("a", "a2", 0), ("a", "a1", 0), ("a", "a3", 0), ("b", "b1", 1), ("b", "b2", 1)))
    assert report.out_of_order and report.problems(allow_duplicates=True)


def test_an_old_record_republished_after_a_newer_one_is_out_of_order():
    # First deliveries are in order; the copy of a1 after a2 is what a consumer would apply last.
    report = audit(WRITTEN, deliver(*GOOD, ("a", "a1", 0)))
    assert report.out_of_order and "#0" in report.out_of_order[0] and report.reordered == ["a1"]
    assert report.problems(allow_duplicates=True)


def test_an_aggregate_in_two_partitions():
    items = [("a", "a1", 0), ("a", "a2", 2), ("b", "b1", 1), ("a", "a3", 0), ("b", "b2", 1)]
    report = audit(WRITTEN, deliver(*items))
    assert report.split == {"a": {("t", 0), ("t", 2)}} and report.problems()


def test_a_record_under_another_key():
    report = audit(WRITTEN, deliver(("a", "a1", 0), ("b", "a2", 0), ("a", "a3", 0), ("b", "b1", 1), ("b", "b2", 1)))
    assert report.wrong_key and not report.out_of_order and report.problems()


def test_a_replayed_run_counts_every_record_that_comes_after_a_newer_one():
    # What a crash between ack and dedup mark leaves: a2, a3 again after a3.
    report = audit(WRITTEN, deliver(*GOOD, ("a", "a2", 0), ("a", "a3", 0)))
    assert report.reordered == ["a2"] and report.duplicated == {"a2": 1, "a3": 1}


def test_split_copies_separates_first_deliveries_from_later_ones():
    first, later = split_copies(deliver(*GOOD, ("a", "a2", 0), ("a", "a3", 0)))
    assert audit(WRITTEN, first).problems() == []
    assert [h["id"] for _, h, _ in later.records] == ["a2", "a3"] and later.partitions == [("t", 0), ("t", 0)]
    assert not audit(WRITTEN, later).out_of_order


def test_every_record_needs_its_partition():
    # Without partitions the aggregate-in-two-partitions check would be blind.
    with pytest.raises(AssertionError):
        Delivered([(b"a", {"id": "a1"}, b"")], [])

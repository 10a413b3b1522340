"""The delivery audit every delivery test relies on: each check must fail when it should."""
from __future__ import annotations

from harness import Delivered, audit

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


def test_an_old_record_republished_after_a_newer_one_is_reported():
    # First deliveries are in order; the copy of a1 after a3 is what a consumer would apply last.
    report = audit(WRITTEN, deliver(*GOOD, ("a", "a1", 0)))
    assert report.redelivered_behind and "#0" in report.redelivered_behind[0]
    assert not report.out_of_order
    assert report.problems(), "a copy behind newer records fails every test that forbids duplicates"
    assert not report.problems(allow_duplicates=True), "and only those"


def test_a_first_delivery_behind_a_newer_one_fails_even_with_duplicates_allowed():
    report = audit(WRITTEN, deliver(("a", "a1", 0), ("a", "a3", 0), ("a", "a2", 0), ("a", "a3", 0),
                                    ("b", "b1", 1), ("b", "b2", 1)))
    assert report.out_of_order and report.problems(allow_duplicates=True)


def test_an_aggregate_in_two_partitions():
    items = [("a", "a1", 0), ("a", "a2", 2), ("b", "b1", 1), ("a", "a3", 0), ("b", "b2", 1)]
    report = audit(WRITTEN, deliver(*items))
    assert report.split == {"a": {("t", 0), ("t", 2)}} and report.problems()


def test_a_record_under_another_key():
    report = audit(WRITTEN, deliver(("a", "a1", 0), ("b", "a2", 0), ("a", "a3", 0), ("b", "b1", 1), ("b", "b2", 1)))
    assert report.out_of_order and report.problems()

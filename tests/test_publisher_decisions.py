"""The window logic of relay.delivery: per-event facts in produce order → decisions (pure, no services)."""
from __future__ import annotations

from relay.delivery import Report, Status, decide

A, B = ("t", b"A"), ("t", b"B")


def ok(key):
    return Report(key, Status.ACKED)


def r(key, status, error="ERR", alone=False):
    return Report(key, status, error, "msg", alone=alone)


def test_all_acked_is_settled():
    d = decide([ok(A), ok(B), ok(A)])
    assert d.delivered == [0, 1, 2] and d.settled and not d.dead_letter


def test_transient_failure_before_a_later_ack_of_the_same_aggregate_is_never_re_read():
    # A1 failed transiently, A2 got through: re-reading would publish A1 after A2.
    d = decide([r(A, Status.TRANSIENT, "_MSG_TIMED_OUT"), ok(A)])
    assert d.delivered == [1]
    assert [i for i, *_ in d.dead_letter] == [0] and d.dead_letter[0][1] == "_MSG_TIMED_OUT"
    assert "reorder" in d.dead_letter[0][2]
    assert d.reread == []


def test_transient_failure_without_a_later_ack_waits_for_the_re_read():
    d = decide([ok(A), r(A, Status.TRANSIENT), r(A, Status.TRANSIENT), ok(B)])
    assert d.delivered == [0, 3] and d.reread == [1, 2] and not d.dead_letter and not d.settled


def test_other_aggregates_do_not_hold_each_other():
    d = decide([r(A, Status.TRANSIENT), ok(B), ok(B)])
    assert d.reread == [0] and d.delivered == [1, 2] and not d.dead_letter


def test_missing_reports_count_as_not_delivered():
    d = decide([ok(A), r(B, Status.MISSING), r(A, Status.MISSING)])
    assert d.reread == [1, 2]


def test_permanent_errors_dead_letter_only_that_event_and_the_aggregate_flows_on():
    d = decide([r(A, Status.PERMANENT, "UNKNOWN_TOPIC_OR_PART"), ok(A)])
    assert d.dead_letter == [(0, "UNKNOWN_TOPIC_OR_PART", "msg")] and d.delivered == [1] and d.settled


def test_a_suspect_that_travelled_alone_is_its_own_culprit():
    d = decide([ok(A), r(A, Status.SUSPECT, "MSG_SIZE_TOO_LARGE", alone=True), ok(A)])
    assert d.dead_letter == [(1, "MSG_SIZE_TOO_LARGE", "msg")] and d.settled


def test_suspects_of_a_refused_batch_are_retried_alone_in_order():
    d = decide([r(A, Status.SUSPECT), r(B, Status.SUSPECT), r(A, Status.SUSPECT), ok(B)])
    # B's suspect was overtaken by a later B that got through; A's may still go, in order.
    assert d.retry_alone == [0, 2]
    assert [i for i, *_ in d.dead_letter] == [1]


def test_retry_loop_settles_the_window_one_suspect_at_a_time():
    reports = [r(A, Status.SUSPECT), r(A, Status.SUSPECT), r(A, Status.SUSPECT)]
    alone_results = {0: ok(A), 1: r(A, Status.SUSPECT, "MSG_SIZE_TOO_LARGE", alone=True), 2: ok(A)}
    produced = []
    while True:
        d = decide(reports)
        if not d.retry_alone:
            break
        i = d.retry_alone[0]
        produced.append(i)
        reports[i] = alone_results[i]
    assert produced == [0, 1, 2]
    assert d.delivered == [0, 2] and [i for i, *_ in d.dead_letter] == [1] and d.settled


def test_a_suspect_behind_an_event_waiting_for_the_re_read_waits_too():
    d = decide([r(A, Status.TRANSIENT), r(A, Status.SUSPECT), r(B, Status.SUSPECT)])
    assert d.reread == [0, 1] and d.retry_alone == [2]


def test_a_retried_suspect_that_fails_transiently_holds_back_its_successors():
    reports = [r(A, Status.SUSPECT), r(A, Status.SUSPECT)]
    assert decide(reports).retry_alone == [0, 1]
    reports[0] = r(A, Status.TRANSIENT, alone=True)  # its retry did not get through
    d = decide(reports)
    assert d.reread == [0, 1] and d.retry_alone == []

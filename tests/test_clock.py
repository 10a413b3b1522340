"""Clock skew (relay.clock): pure estimates from samples, plus one real sample from the server."""
from __future__ import annotations

import time

from relay.clock import ClockSkew

S = 1_000_000
T = 1_800_000_000 * S


def test_no_samples_no_skew():
    assert ClockSkew().ahead_s == 0.0


def test_relay_ahead_is_measured_from_the_midpoint():
    skew = ClockSkew()
    skew.add(T, (T - 2 * S) // 1000 + 5, T + 10_000)  # server 2 s behind, 10 ms round trip
    assert 1.98 < skew.ahead_s < 2.0
    assert skew.warn(confidence_s=2) and not skew.warn(confidence_s=10)


def test_relay_behind_counts_as_zero():
    skew = ClockSkew()
    skew.add(T, (T + 3 * S) // 1000, T + 1000)
    assert skew.ahead_s == 0.0


def test_the_most_precise_sample_wins():
    skew = ClockSkew()
    skew.add(T, (T - 1 * S) // 1000, T + 2 * S)  # a 2 s round trip says little
    skew.add(T + 10 * S, (T + 10 * S - 500_000) // 1000, T + 10 * S + 2_000)
    assert 0.49 < skew.ahead_s < 0.5


def test_a_real_sample_from_the_server(cql):
    skew = ClockSkew()
    sent = time.time_ns() // 1000
    server_ms = cql.execute("SELECT toUnixTimestamp(now()) FROM system.local").one()[0]
    skew.add(sent, int(server_ms), time.time_ns() // 1000)
    assert skew.samples, "the server answered with its clock"
    assert skew.ahead_s < 1.0, "the stack runs on this machine's clock"

"""Which worker counts the benchmark profiles and runs what-ifs at: the ones its summary names."""
from __future__ import annotations

from benchmarks.__main__ import _best_workers, _cheapest_workers
from benchmarks.report import summary


def test_profiled_and_what_if_counts_are_the_summarys_cheapest_and_fastest():
    # Two drains per count (as --smoke): the lower of two CPU figures (10 µs at 1 worker) would pick
    # 1 worker; the medians (20 against 15.5 µs) pick 2, and so does the summary.
    drains = {"1": [{"cpu_us_per_event": 10.0, "events_per_s": 900.0},
                    {"cpu_us_per_event": 30.0, "events_per_s": 1500.0}],
              "2": [{"cpu_us_per_event": 15.0, "events_per_s": 1000.0},
                    {"cpu_us_per_event": 16.0, "events_per_s": 1100.0}]}
    results = {"relay_drains": drains,
               "relay": {w: {**ds[0], "worker_peak_rss_mb": [100.0]} for w, ds in drains.items()}}
    head = summary(results)
    assert _cheapest_workers(results) == 2 == int(min(head["relay_cpu_us_per_event"],
                                                      key=head["relay_cpu_us_per_event"].get))
    assert _best_workers(results) == 1 == head["relay_best_workers"]
    assert _cheapest_workers({}) is None and _best_workers({}) is None

"""Issue 9's target table: each figure with the value measured on main before the work
(d36b8fc, the issue's "today"), its target and moonshot, and pass/fail for this run.

`evaluate(summary)` reads the figures from the summary's top-level keys (report.summary) and
returns the `targets` block of latest.json; a figure not measured in the run has value None
and pass None (neither passed nor failed).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    key: str  # the summary's top-level key holding the value
    label: str
    unit: str
    today: float | None
    target: float | None
    moonshot: float | None
    lower_is_better: bool = True
    note: str = ""


TARGETS = (
    Target("idle_cpu_cores_768", "idle relay CPU, 768 vnode tasks, default settings", "cores", 0.98, 0.15, 0.05,
           note="all relay processes, no traffic, every task caught up"),
    Target("idle_reads_per_s_768", "idle CQL window reads/s, 768 vnode tasks", "reads/s", 1500, None, None,
           note="no target of its own: what the idle CPU is made of (Java/Go libraries: ~25/s, 30-60 s stale)"),
    Target("latency_768_p99_over_confidence_s", "p99 − confidence, 768 tasks, half of max rate", "s", 1.63, 0.5,
           0.2, note="max rate = what the 'max' point's writers reached asking for relay's best drain rate (the "
           "pipeline's ceiling here: the writers'); today: 256 tasks, confidence 2 s, 1,128/s achieved of 3,156/s "
           "asked"),
    Target("latency_768_max_p99_over_confidence_s", "p99 − confidence, 768 tasks, at the max rate", "s", None, None,
           None, note="no target of its own: writers flat out, both cores saturated: the machine's latency"),
    Target("latency_768_low_rate_p99_over_confidence_s", "p99 − confidence, 768 tasks, 100 events/s", "s", 1.63,
           0.5, 0.2, note="today: the 256-task figure (no low-rate point was measured)"),
    Target("cpu_us_per_event_best", "relay CPU per event, backlog drain (best worker count)", "µs", 54.6, 35, 25,
           note="the median of each worker count's drains (--repeat), then the least of those"),
    Target("relay_vs_raw_read", "relay / raw read, same rows, same run", "×", 0.49, 0.6, 0.8,
           lower_is_better=False),
    Target("relay_vs_naive", "relay / naive relay", "×", 7.3, 10, 15, lower_is_better=False,
           note="medians: the fastest worker count's drains over the naive relay's runs"),
    Target("redis_bytes_per_key", "Redis memory per dedup key (per delivered event)", "B", 132, 100, None,
           note="INFO used_memory growth over a drain / events delivered (median of the drains)"),
    Target("supervisor_loop_ms_3072x16", "supervisor loop, 3,072 tasks × 16 workers, nothing changing", "ms", 11,
           1, None, note="today: every 100 ms; target O(changes), < 1 ms when nothing changes"),
)


def _meets(value: float, bound: float | None, lower_is_better: bool) -> bool | None:
    if bound is None:
        return None
    return value <= bound if lower_is_better else value >= bound


def evaluate(summary: dict) -> dict:
    out = {}
    for t in TARGETS:
        value = summary.get(t.key)
        measured = isinstance(value, int | float) and not isinstance(value, bool)
        # A censored figure (a latency with events never delivered) has no value but fails.
        censored = bool(summary.get(f"{t.key}_censored"))
        out[t.key] = {
            "label": t.label, "unit": t.unit, "value": value, "censored": censored, "today": t.today,
            "target": t.target, "moonshot": t.moonshot, "better": "lower" if t.lower_is_better else "higher",
            "pass": (_meets(value, t.target, t.lower_is_better) if measured
                     else False if censored and t.target is not None else None),
            "moonshot_pass": (_meets(value, t.moonshot, t.lower_is_better) if measured
                              else False if censored and t.moonshot is not None else None),
            "note": t.note,
        }
    return out

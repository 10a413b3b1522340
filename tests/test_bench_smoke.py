"""The benchmark harness runs end to end on tiny sizes (numbers meaningless; `make bench` measures)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = pytest.mark.serial


def test_benchmark_smoke_run(tmp_path, cql, kafka_bootstrap, redis_url):
    res = subprocess.run([sys.executable, "-m", "benchmarks", "--smoke", "--out", str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    data = json.loads((tmp_path / "latest.json").read_text())
    for key in ("relay_events_per_s", "raw_read_events_per_s", "raw_produce_events_per_s", "naive_events_per_s",
                "relay_cpu_us_per_event", "latency_p50_s", "latency_p99_s", "confidence_s",
                "discovery_6144_streams_s", "machine"):
        assert key in data, key
    # issue 9's figures: top-level keys (None at the smoke run's size) and the targets block
    for key in ("idle_cpu_cores_768", "idle_reads_per_s_768", "latency_768_p99_s", "latency_768_low_rate_p99_s",
                "cpu_us_per_event_best", "redis_bytes_per_key", "supervisor_loop_ms_3072x16"):
        assert key in data, key
    for key in ("idle_cpu_cores_768", "latency_768_p99_over_confidence_s",
                "latency_768_low_rate_p99_over_confidence_s", "cpu_us_per_event_best", "relay_vs_raw_read",
                "relay_vs_naive", "redis_bytes_per_key", "supervisor_loop_ms_3072x16"):
        assert {"value", "today", "target", "moonshot", "pass"} <= set(data["targets"][key]), key
    # the live run measured idle cost and both latency points, with the load from processes of its own
    assert data["idle_cpu_cores"] is not None and data["idle_reads_per_s"] > 0
    points = data["details"]["live"]["points"]
    assert set(points) == {"max", "half", "low"}
    assert all(p["complete"] and p["loadgen_processes"] >= 1 and p["achieved_rate"] for p in points.values())
    # where a window's time went at each point: its read and its events' acks (means from relay's histograms)
    assert all(p["cost"]["read_mean_ms"] > 0 and p["cost"]["ack_mean_ms"] > 0 for p in points.values())
    # 'max' asks for relay's best drain rate; 'half' asks half of what the 'max' writers reached
    assert points["max"]["asked_rate"] == pytest.approx(max(data["relay_events_per_s"].values()), rel=0.01)
    assert points["half"]["asked_rate"] == pytest.approx(points["max"]["achieved_rate"] / 2, rel=0.01)
    assert "latency_768_max_p99_s" in data and "latency_768_max_p99_over_confidence_s" in data["targets"]
    assert set(data["relay_events_per_s"]) == {"1", "2"}
    assert all(rate > 0 for rate in data["relay_events_per_s"].values())
    assert data["all_delivered"] is True
    # each worker count drained twice (--smoke repeats 2), its figures the medians; the naive relay ran twice
    drains = data["details"]["relay_drains"]
    assert {w: len(ds) for w, ds in drains.items()} == {"1": 2, "2": 2} == data["relay_drains_per_worker_count"]
    for w, ds in drains.items():
        assert all(d["complete"] for d in ds)
        assert min(d["cpu_us_per_event"] for d in ds) <= data["relay_cpu_us_per_event"][w] \
            <= max(d["cpu_us_per_event"] for d in ds)
    assert len(data["details"]["naive_runs"]) == 2 and all(r["complete"] for r in data["details"]["naive_runs"])
    # the cheapest drain ran once more under py-spy, after the measured drains: where its CPU goes
    details = data["details"]
    cheapest = min(data["relay_cpu_us_per_event"], key=data["relay_cpu_us_per_event"].get)
    assert details["profiled_drain"]["complete"]
    sampled = details["sampled_profile"]
    assert sampled["workers"] == int(cheapest) and sampled["samples"] > 0
    threads = {r["name"] for r in sampled["threads"]}
    assert {"worker: main thread", "supervisor: main thread"} <= threads, threads
    # The worker's main-thread samples are split by stage. (Its functions need not make the top 15 of
    # a 1,000-event drain, where the supervisor's start weighs as much: ties made that check flaky.)
    assert sum(r["samples"] for r in sampled["worker_main_stages"]) == \
        next(r["samples"] for r in sampled["threads"] if r["name"] == "worker: main thread") > 0
    md = (tmp_path / "latest.md").read_text()
    assert md.startswith("# relay benchmark results") and "## Where the per-event CPU goes (py-spy" in md
    assert (tmp_path / "throughput.png").stat().st_size > 1000

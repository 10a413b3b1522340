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
    assert set(data["relay_events_per_s"]) == {"1", "2"}
    assert all(rate > 0 for rate in data["relay_events_per_s"].values())
    assert data["all_delivered"] is True
    assert (tmp_path / "latest.md").read_text().startswith("# relay benchmark results")
    assert (tmp_path / "throughput.png").stat().st_size > 1000

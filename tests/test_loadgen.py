"""`relay loadgen` against the real Cassandra: rows, emulated CDC log rows, per-aggregate order, pacing."""
from __future__ import annotations

import io
import json
import re
import time
from collections import defaultdict
from pathlib import Path

import pytest
from harness import write_config

from relay import config, timeuuid
from relay.cli import main
from relay.commands import loadgen
from relay.progress import Progress


def loadgen_config(tmp_path: Path, keyspace: str) -> Path:
    return write_config(tmp_path / "relay.toml", keyspace, topic="loadgen.{aggregate_type}")


class FakeTime:
    """loadgen's `time` with a monotonic clock that only its own sleeps move: pacing without wall-clock
    thresholds (the wall clock still stamps the rows)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def __getattr__(self, name):
        return getattr(time, name)


def log_rows(cql, keyspace: str, table: str = "outbox"):
    return list(cql.execute(f'SELECT "cdc$time", "cdc$operation", "cdc$end_of_batch", aggregate_id, id, payload '
                            f"FROM {keyspace}.{table}_scylla_cdc_log"))


def seqs_by_aggregate_in_cdc_order(rows) -> dict[str, list[int]]:
    by_agg: dict[str, list] = defaultdict(list)
    for row in rows:
        by_agg[row.aggregate_id].append(row)
    return {agg: [json.loads(r.payload)["seq"] for r in sorted(rs, key=lambda r: timeuuid.to_micros(r[0]))]
            for agg, rs in by_agg.items()}


def test_emulated_load_writes_rows_and_log_in_aggregate_order(cql, keyspace, tmp_path):
    cfg = config.load(loadgen_config(tmp_path, keyspace))
    table = f"{keyspace}.outbox"
    out = io.StringIO()
    progress = Progress(total=230, label="t", stream=out, tty=False, interval=0.0)

    result = loadgen.generate(cfg, table, 230, 7, emulate=True, payload_bytes=400, concurrency=16,
                              event_types=("created", "updated", "shipped"), progress=progress)

    assert (result.events, result.aggregates) == (230, 7)
    assert progress.done == 230 and "230/230" in out.getvalue().splitlines()[-1]
    base = list(cql.execute(f"SELECT aggregate_id, id, aggregate_type, event_type, payload, created_at "
                            f"FROM {keyspace}.outbox"))
    assert len(base) == 230
    assert {r.aggregate_id for r in base} == {f"agg-{i:06d}" for i in range(7)}
    assert {r.aggregate_type for r in base} == {"order"}
    for r in base:
        body = json.loads(r.payload)
        assert body["aggregate"] == r.aggregate_id and body["run"] == result.run_id
        assert abs(len(r.payload) - 400) <= 2
        assert r.event_type == ("created" if body["seq"] == 0 else ("updated", "shipped")[(body["seq"] - 1) % 2])
        # created_at is the write time (ms precision) and the id is a timeuuid of that same write
        assert abs(r.created_at.timestamp() * 1e6 - timeuuid.to_micros(r.id)) < 1000

    logs = log_rows(cql, keyspace)
    assert len(logs) == 230
    assert {r[1] for r in logs} == {2} and all(r[2] is True for r in logs)
    assert {r.id for r in logs} == {r.id for r in base}
    # Scylla's cdc$time is the write timestamp: the event id carries the same microsecond.
    assert all(timeuuid.to_micros(r[0]) == timeuuid.to_micros(r.id) for r in logs)
    seqs = seqs_by_aggregate_in_cdc_order(logs)
    assert len(seqs) == 7
    for agg, got in seqs.items():
        expected_count = len(range(int(agg[4:]), 230, 7))
        assert got == list(range(expected_count)), agg

    generations = list(cql.execute(f"SELECT time FROM {keyspace}.cdc_generation_timestamps"))
    assert len(generations) == 1


def test_cli_reuses_the_emulated_table_and_paces(cql, keyspace, tmp_path, capsys, monkeypatch):
    path = loadgen_config(tmp_path, keyspace)
    cfg = config.load(path)
    loadgen.generate(cfg, f"{keyspace}.outbox", 10, 5, emulate=True)
    capsys.readouterr()
    fake = FakeTime()
    monkeypatch.setattr(loadgen, "time", fake)

    rc = main(["loadgen", "--config", str(path), "--table", f"{keyspace}.outbox", "--events", "40",
               "--aggregates", "4", "--rate", "100", "--emulate-cdc", "--payload-bytes", "50",
               "--event-types", "a,b"])

    assert rc == 0
    err = capsys.readouterr().err.strip().splitlines()
    m = re.search(r"wrote 40 events over 4 aggregates in ([\d.]+) s \(([\d,]+) events/s\)", err[-1])
    assert m, err
    # 40 events at 100/s in slices of 4: the last slice is due 0.36 s after the start, and the
    # summary reports the paced time and rate.
    assert sum(fake.slept) == pytest.approx(0.36) and float(m.group(1)) == pytest.approx(0.36, abs=0.01)
    assert int(m.group(2).replace(",", "")) == 111
    logs = log_rows(cql, keyspace)
    assert len(logs) == 50
    assert len(list(cql.execute(f"SELECT time FROM {keyspace}.cdc_generation_timestamps"))) == 1, \
        "an existing generation is reused"
    runs: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in sorted(logs, key=lambda r: timeuuid.to_micros(r[0])):
        body = json.loads(r.payload)
        runs[body["run"]][r.aggregate_id].append(body["seq"])
    assert sorted(len(v) for v in runs.values()) == [4, 5]
    for per_agg in runs.values():
        for got in per_agg.values():
            assert got == sorted(got) and got[0] == 0


def test_plain_cql_load_into_existing_table(cql, keyspace, tmp_path):
    cfg = config.load(loadgen_config(tmp_path, keyspace))
    for stmt in loadgen.outbox_statements(cfg, cfg.table(f"{keyspace}.outbox")):
        cql.execute(stmt)

    result = loadgen.generate(cfg, f"{keyspace}.outbox", 60, 3, concurrency=8)

    assert result.events == 60
    rows = list(cql.execute(f"SELECT aggregate_id, id, payload, WRITETIME(payload) AS wt FROM {keyspace}.outbox"))
    assert len(rows) == 60
    for agg in {r.aggregate_id for r in rows}:
        mine = sorted((r for r in rows if r.aggregate_id == agg), key=lambda r: r.wt)
        assert [json.loads(r.payload)["seq"] for r in mine] == list(range(20))
        assert all(r.wt == timeuuid.to_micros(r.id) for r in mine), "written at the event id's timestamp"
    assert not cql.cluster.metadata.keyspaces[keyspace].tables.get("outbox_scylla_cdc_log")


def test_unknown_table_is_a_one_line_user_error(keyspace, tmp_path, capsys):
    path = loadgen_config(tmp_path, keyspace)
    rc = main(["loadgen", "--config", str(path), "--table", "nope.outbox", "--events", "5", "--aggregates", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("relay: ") and "nope.outbox" in err[0]


def test_missing_table_without_emulation_is_a_user_error(keyspace, tmp_path, capsys):
    path = loadgen_config(tmp_path, keyspace)
    rc = main(["loadgen", "--config", str(path), "--table", f"{keyspace}.outbox", "--events", "5",
               "--aggregates", "1", "--log-level", "ERROR"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("relay: ")]
    assert rc == 2
    assert len(err) == 1 and "does not exist" in err[0] and "--emulate-cdc" in err[0]


@pytest.mark.parametrize("aggregates,concurrency,rate,expected", [
    (1000, 64, 0, 256), (3, 64, 0, 3), (1000, 64, 50, 5), (1000, 1, 0.5, 1)])
def test_slices_never_hold_two_events_of_one_aggregate(aggregates, concurrency, rate, expected):
    size = loadgen.slice_size(aggregates, concurrency, rate)
    assert size == expected
    clock = loadgen.Clock()
    events = loadgen.plan(50, aggregates, ("x",), "r", 10, clock, start=7, count=size)
    assert len({e.aggregate_id for e in events}) == len(events)
    stamps = [e.timestamp_us for e in events]
    assert stamps == sorted(set(stamps))


def test_clock_never_repeats_or_goes_back():
    now = iter([100, 100, 90, 200])
    clock = loadgen.Clock(now=lambda: next(now))
    assert [clock.next() for _ in range(4)] == [100, 101, 102, 200]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_on_a_terminal_redraws_one_line():
    out, clock = io.StringIO(), FakeClock()
    p = Progress(total=100, label="job", stream=out, tty=True, clock=clock)
    clock.now = 1.0
    p.update(25)
    clock.now = 2.0
    p.update(25)
    p.close("job: done")
    frames = out.getvalue().split("\r")
    assert frames[0] == "" and len(frames) == 4
    assert frames[1] == "job: 25/100 events (25%), 25.0/s, 1.0s, ETA 3.0s"
    assert frames[2] == "job: 50/100 events (50%), 25.0/s, 2.0s, ETA 2.0s"
    # the summary blanks what is left of the longer line before it, and ends the line
    assert frames[3].endswith("\n") and frames[3].rstrip() == "job: done" and len(frames[3]) == len(frames[2]) + 1


def test_progress_in_logs_writes_a_line_every_interval():
    out, clock = io.StringIO(), FakeClock()
    p = Progress(total=None, label="job", unit="records", stream=out, tty=False, interval=2.0, clock=clock)
    for second in range(1, 6):
        clock.now = float(second)
        p.update(10)
    assert p.close() == "job: 50 records, 10.0/s, 5.0s"
    p.close()
    assert out.getvalue().splitlines() == ["job: 20 records, 10.0/s, 2.0s", "job: 40 records, 10.0/s, 4.0s",
                                           "job: 50 records, 10.0/s, 5.0s"]
    assert "\r" not in out.getvalue()

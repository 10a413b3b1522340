"""What the database alone takes to serve relay's live reads, under the write load of a latency point:

    .venv/bin/python -m benchmarks.live_reads [--rate 600] [--seconds 40] [--vnodes 768] [--shards 4]

No relay runs. On a table like the live run's (vnodes × shards streams, emulated CDC), one
process replays the reads relay's workers make once every task is caught up: on each poll
grid step (relay's default poll_interval_seconds), every stream read for that step's
[start, end) window, confidence seconds behind now, in one read per worker of relay's default
count (at most relay.schedule.MAX_READ_STREAMS streams each, as relay merges caught-up tasks;
relay.reader splits each read into IN lists of at most 100), all of a step's reads sent at once. Reported: the time
from a step's start until each of its reads has all its rows (p50/p90/p99/max), first with
no writes, then while loadgen processes write at `--rate` (as benchmarks.live's points do).

relay's own latency over the confidence window cannot be below this read time plus the grid
wait (up to one poll interval); comparing the two shows what is the database's and what is relay's.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

from benchmarks import common, live, loadproc
from benchmarks.common import Stack, log


def _quantiles(values: list[float]) -> dict:
    v = sorted(values)
    if not v:
        return {"reads": 0}
    return {"reads": len(v), **{f"p{q}_s": round(live.percentile(v, q), 3) for q in (50, 90, 99)},
            "max_s": round(v[-1], 3)}


def measure(stack: Stack, *, rate: float, seconds: float, idle_seconds: float, vnodes: int, shards: int,
            processes: int) -> dict:
    from relay import config as relay_config
    from relay import connect
    from relay.mapping import Mapper
    from relay.reader import LogReader
    from relay.schedule import MAX_READ_STREAMS

    run_id = f"blr_{int(time.time())}"
    workdir = Path(tempfile.mkdtemp(prefix=f"{run_id}-"))
    try:
        config, table, shape = live.prepare(stack, workdir, run_id, vnodes=vnodes, shards=shards, point_names=["w"])
        cfg = relay_config.load(config)
        session = connect.cql_session(cfg, hot_path=True)
        keyspace = table.split(".")[0]
        streams = sorted(s for row in session.execute(f"SELECT streams FROM {keyspace}.cdc_streams_descriptions_v2")
                         for s in row[0])
        per_read = min(MAX_READ_STREAMS, -(-len(streams) // cfg.worker_count))  # each worker's share
        reads = [tuple(streams[i:i + per_read]) for i in range(0, len(streams), per_read)]
        # The columns relay's workers read (only those the mapping needs).
        reader = LogReader(session, table, cfg.scylla.bypass_cache, cfg.scylla.fetch_size, cfg.scylla.max_in_keys,
                           columns=Mapper(cfg.table(table)).columns)
        step_us = int(cfg.relay.poll_interval_seconds * 1e6)
        confidence_us = int(cfg.relay.confidence_seconds * 1e6)
        phase = ["idle"]
        took: dict[str, list[float]] = {"idle": [], "load": []}
        rows = {"idle": 0, "load": 0}
        stop = threading.Event()
        failures: list[BaseException] = []

        def replay() -> None:
            try:
                while not stop.is_set():
                    end = (time.time_ns() // 1000 - confidence_us) // step_us * step_us
                    t0 = time.monotonic()
                    name = phase[0]
                    pending = [(r, reader.start(r, end - step_us, end)) for r in reads]
                    for r, handle in pending:
                        for _names, page in reader.read_pages(r, end - step_us, end, handle):
                            rows[name] += len(page)
                        took[name].append(time.monotonic() - t0)
                    due = (end + step_us + confidence_us) / 1e6
                    time.sleep(max(0.0, due - time.time()))
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                failures.append(exc)

        log(f"live reads: {len(streams):,} streams in {len(reads)} reads every {step_us / 1e6:.2f}s; "
            f"{idle_seconds:.0f}s without writes, then {seconds:.0f}s of loadgen at {rate:,.0f}/s")
        thread = threading.Thread(target=replay, name="live-reads", daemon=True)
        thread.start()
        time.sleep(idle_seconds)
        phase[0] = "load"
        load = loadproc.run_load(config, table, rate=rate, seconds=seconds, aggregates=5000, processes=processes,
                                 workdir=workdir, tag="w", aggregate_type="w")
        time.sleep(cfg.relay.confidence_seconds + 2)  # the reads of the load's last rows
        stop.set()
        thread.join(30)
        session.cluster.shutdown()
        if failures:
            raise RuntimeError(f"live reads failed: {failures[0]}") from failures[0]
        return {"streams": len(streams), "reads_per_step": len(reads), "streams_per_read": per_read,
                "poll_interval_s": step_us / 1e6, "asked_rate": rate, "achieved_rate": load.achieved_rate,
                "loadgen_processes": processes, "idle": {**_quantiles(took["idle"]), "rows": rows["idle"]},
                "load": {**_quantiles(took["load"]), "rows": rows["load"]}}
    finally:
        common.drop_keyspaces(stack, run_id)
        topics = common.list_topics(stack.kafka, run_id)
        if topics:
            common.delete_topics(stack.kafka, topics)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.live_reads", description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=600.0, help="loadgen events/s during the load phase")
    p.add_argument("--seconds", type=float, default=40.0, help="load phase duration")
    p.add_argument("--idle-seconds", type=float, default=20.0)
    p.add_argument("--vnodes", type=int, default=768)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--processes", type=int, default=2, help="loadgen processes")
    a = p.parse_args(argv)
    out = measure(Stack.from_env(), rate=a.rate, seconds=a.seconds, idle_seconds=a.idle_seconds, vnodes=a.vnodes,
                  shards=a.shards, processes=a.processes)
    print(json.dumps(out, indent=1))
    os._exit(0)  # the driver's libev exit hook can stall an exiting process for seconds


if __name__ == "__main__":
    raise SystemExit(main())

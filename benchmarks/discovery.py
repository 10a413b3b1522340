"""Discovery at scale: a generation of vnodes × shards streams (default 768 × 8 = 6,144, a
3-node cluster with 256 tokens and 8 shards each), then in a fresh process:
`Discovery.generations()` + `tasks_of` + `relay.assignment.assign(…, 4 slots)`, with its
peak RSS.

    python -m benchmarks.discovery measure --config C   (the fresh process; prints JSON)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from benchmarks import common
from benchmarks.common import Stack, log


def build_and_measure(stack: Stack, workdir: Path, keyspace: str, *, vnodes: int = 768, shards: int = 8,
                      slots: int = 4) -> dict:
    from relay import config as relay_config
    from relay.commands import loadgen
    from relay.schema import replication_literal
    from relay.testing import CdcEmulator, now_micros

    config = common.write_config(workdir / "discovery.toml", stack, keyspace=keyspace, relay_keyspace=keyspace,
                                 tables=[f"{keyspace}.outbox"], topic=f"{keyspace}.{{aggregate_type}}",
                                 key_prefix=f"{keyspace}:")
    cfg = relay_config.load(config)
    session = loadgen.plain_session(cfg)
    try:
        emu = CdcEmulator(session, keyspace, keyspace,
                          replication=replication_literal(cfg.scylla.relay_replication))
        emu.create_metadata_tables()
        t0 = time.perf_counter()
        gen = emu.open_generation(now_micros() - 1_000_000, vnodes=vnodes, shards=shards, seed=11)
        build_s = time.perf_counter() - t0
    finally:
        session.cluster.shutdown()
    streams = sum(len(s) for s in gen.streams_by_vnode.values())
    log(f"discovery: published a generation of {vnodes} vnodes x {shards} shards = {streams:,} streams "
        f"in {build_s:.1f}s; measuring in a fresh process")
    t0 = time.perf_counter()
    out = common.run_json([common.python(), "-m", "benchmarks.discovery", "measure", "--config", str(config),
                           "--slots", str(slots)], log_path=workdir / "discovery.log", timeout=600)
    out["process_wall_s"] = round(time.perf_counter() - t0, 3)
    out["build_s"] = round(build_s, 2)
    out["vnodes"] = vnodes
    out["shards"] = shards
    log(f"discovery: generations {out['generations_s']}s + tasks_of {out['tasks_of_s']}s + assign "
        f"{out['assign_s']}s = {out['total_s']}s for {out['streams']:,} streams / {out['tasks']} tasks; "
        f"peak RSS {out['peak_rss_mb']} MB")
    return out


def measure(config: str, slots: int) -> dict:
    t_import = time.perf_counter()
    import logging

    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    from relay import config as relay_config
    from relay import connect
    from relay.assignment import assign
    from relay.discovery import Discovery, tasks_of

    import_s = time.perf_counter() - t_import
    cfg = relay_config.load(config)
    t0 = time.perf_counter()
    session = connect.cql_session(cfg)  # what the supervisor uses (asyncio reactor)
    connect_s = time.perf_counter() - t0
    table = cfg.tables[0]
    disc = Discovery(session, cfg)

    t0 = time.perf_counter()
    gens = disc.generations(table)
    generations_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    tasks = [t for g in gens for t in tasks_of(g)]
    tasks_of_s = time.perf_counter() - t0
    keys = [t.key for t in tasks]
    t0 = time.perf_counter()
    plan = assign(keys, list(range(slots)))  # by key, as the supervisor plans
    assign_s = time.perf_counter() - t0
    loads = sorted(len(v) for v in plan.values())

    # What the supervisor repeats while running: generations() every generation_poll_seconds
    # (streams cached), tasks_of() several times and assign() once per 0.1 s loop.
    t0 = time.perf_counter()
    disc.generations(table)
    regen_s = time.perf_counter() - t0
    reps = 5
    t0 = time.perf_counter()
    for _ in range(reps):
        for g in gens:
            tasks_of(g)
    tasks_of_repeat_s = (time.perf_counter() - t0) / reps
    t0 = time.perf_counter()
    for _ in range(reps):
        assign(keys, list(range(slots)))
    assign_repeat_s = (time.perf_counter() - t0) / reps
    t0 = time.perf_counter()
    assign(tasks, list(range(slots)))  # whole Task objects (repr includes every stream id)
    assign_tasks_s = time.perf_counter() - t0

    from benchmarks.common import self_peak_rss_kb

    peak = self_peak_rss_kb()
    session.cluster.shutdown()
    return {
        "generations": len(gens),
        "streams": sum(len(g.streams) for g in gens),
        "tasks": len(tasks),
        "slots": slots,
        "slot_loads": [loads[0], loads[-1]],
        "import_s": round(import_s, 3),
        "connect_s": round(connect_s, 3),
        "generations_s": round(generations_s, 4),
        "tasks_of_s": round(tasks_of_s, 4),
        "assign_s": round(assign_s, 4),
        "total_s": round(generations_s + tasks_of_s + assign_s, 4),
        "generations_cached_s": round(regen_s, 4),
        "tasks_of_repeat_s": round(tasks_of_repeat_s, 4),
        "assign_repeat_s": round(assign_repeat_s, 4),
        "assign_task_objects_s": round(assign_tasks_s, 4),
        "peak_rss_mb": round(peak / 1024, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.discovery")
    p.add_argument("command", choices=["measure"])
    p.add_argument("--config", required=True)
    p.add_argument("--slots", type=int, default=4)
    args = p.parse_args(argv)
    out = measure(args.config, args.slots)
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())

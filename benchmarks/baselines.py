"""Baselines on the same CDC log rows and the same services, each in one fresh process.

    python -m benchmarks.baselines read    --config C --until US
    python -m benchmarks.baselines produce --config C --until US
    python -m benchmarks.baselines naive   --config C --until US --limit 5000

- read: relay's own Discovery + tasks_of + LogReader (the mapping's columns, as a worker reads
  them), one task's window of window_seconds after another from the generation start to
  --until, on the hot-path (libev) session workers use; nothing is published. It reads what
  relay reads, not the way relay schedules it (relay merges light tasks into fewer queries).
- produce: reads and maps the same rows first (untimed for the produce figure, but timed as
  stages), then produces exactly those records (topics, keys, headers, payloads) with
  `relay.connect.producer_config(cfg)` and waits for every delivery report. Also times
  Redis dedup check + mark of those events (relay's Dedup class, a throw-away prefix).
- naive: reads each window and publishes each event with `flush()` after each produce
  (a synchronous wait for its delivery report) before the next; stops after --limit events.

Each prints one JSON line on stdout; progress goes to stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from benchmarks import common
from benchmarks.common import log, self_cpu_s, self_peak_rss_kb

# --------------------------------------------------------------------------- orchestrator side


def _config(stack, workdir, bl, tag: str):
    """A config reading the backlog's table, whose topic template points at a topic of the baseline's own."""
    ks = bl.keyspace
    return common.write_config(workdir / f"{tag}.toml", stack, keyspace=ks, relay_keyspace=ks, tables=[bl.table],
                               topic=f"{ks}.{tag}.{{aggregate_type}}", key_prefix=f"{ks}:{tag}:")


def _child(kind: str, config, bl, workdir, *extra: str) -> dict:
    common.wait_quiet(kind)
    cmd = [common.python(), "-m", "benchmarks.baselines", kind, "--config", str(config), "--until", str(bl.until_us),
           *extra]
    if os.environ.get("BENCH_PROFILE"):
        cmd += ["--profile", str(workdir / f"{kind}.prof")]
    return common.run_json(cmd, log_path=workdir / f"baseline-{kind}.log")


def run_raw_read(stack, workdir, bl) -> dict:
    log(f"raw read: {bl.events:,} rows with Discovery + LogReader in one process")
    out = _child("read", _config(stack, workdir, bl, "rawread"), bl, workdir)
    log(f"raw read: {out['events_per_s']:,.0f} rows/s ({out['rows']:,} rows, {out['queries']:,} queries in "
        f"{out['seconds']:.1f}s, CPU {out['cpu_us_per_event']} µs/row)")
    return out


def run_raw_produce(stack, workdir, bl) -> dict:
    topic = f"{bl.keyspace}.raw.order"
    common.create_topics(stack.kafka, [topic])
    log("raw produce: reading and mapping the rows, then producing them with relay's producer settings")
    out = _child("produce", _config(stack, workdir, bl, "raw"), bl, workdir,
                 "--redis-prefix", f"{bl.keyspace}:rawdedup:")
    common.redis_delete_prefix(stack, f"{bl.keyspace}:rawdedup:")
    rep = common.read_topic(stack.kafka, topic)
    out["delivered"] = rep.to_dict()
    out["complete"] = rep.distinct_ids == bl.events and rep.duplicates == 0
    log(f"raw produce: {out['events_per_s']:,.0f} events/s ({out['events']:,} in {out['seconds']:.1f}s, CPU "
        f"{out['cpu_us_per_event']} µs/event); stages µs/event {out['stage_us_per_event']}; "
        f"delivered {rep.distinct_ids:,} ids")
    return out


def run_naive(stack, workdir, bl, limit: int, tag: str = "naive") -> dict:
    """`tag` names the run's topic: repeated runs relay the same events, each into a topic of its own."""
    topic = f"{bl.keyspace}.{tag}.order"
    common.create_topics(stack.kafka, [topic])
    limit = min(limit, bl.events)
    log(f"naive relay ({tag}): {limit:,} events, flush() after each produce")
    out = _child("naive", _config(stack, workdir, bl, tag), bl, workdir, "--limit", str(limit))
    rep = common.read_topic(stack.kafka, topic)
    out["delivered"] = rep.to_dict()
    out["complete"] = rep.distinct_ids == out["events"] == limit and rep.duplicates == 0
    log(f"naive relay: {out['events_per_s']:,.0f} events/s ({out['ms_per_event']} ms/event)")
    return out


# --------------------------------------------------------------------------- the measuring child


def _setup(config: str):
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from relay import config as relay_config
    from relay import connect

    cfg = relay_config.load(config)
    session = connect.cql_session(cfg, hot_path=True)  # the workers' session: libev reactor, tuple rows
    return cfg, session


def windows(cfg, session, until_us: int):
    """(task, start, end) in the order relay's windows cover them: [generation start, until) in
    steps of window_seconds, ms-aligned as relay aligns them."""
    from relay.discovery import Discovery, tasks_of

    table = cfg.tables[0]
    step = int(cfg.relay.window_seconds * 1_000_000)
    until_us -= until_us % 1000
    for gen in Discovery(session, cfg).generations(table):
        if gen.start_us >= until_us:
            continue
        for task in tasks_of(gen):
            pos = task.generation_us - task.generation_us % 1000
            goal = min(x for x in (task.end_us, until_us) if x is not None)
            while pos < goal:
                end = min(pos + step, goal)
                end -= end % 1000
                yield task, pos, end
                pos = end


def _reader(cfg, session):
    """relay's reader as a worker builds it: the same columns (the mapping's), fetched the same way."""
    from relay.mapping import Mapper
    from relay.reader import LogReader

    t = cfg.tables[0]
    return LogReader(session, t.name, cfg.scylla.bypass_cache, cfg.scylla.fetch_size, cfg.scylla.max_in_keys,
                     columns=Mapper(t).columns)


def raw_read(cfg, session, until_us: int) -> dict:
    reader = _reader(cfg, session)
    rows = changes = queries = 0
    c0, t0 = self_cpu_s(), time.perf_counter()
    for task, start, end in windows(cfg, session, until_us):
        for change in list(reader.read(task.streams, start, end)):  # relay materializes each window too
            changes += 1
            rows += len(change.rows)
        queries += 1
    seconds = time.perf_counter() - t0
    cpu = self_cpu_s() - c0
    return {"rows": rows, "changes": changes, "queries": queries, "seconds": round(seconds, 3),
            "events_per_s": round(rows / seconds, 1), "cpu_s": round(cpu, 2),
            "cpu_us_per_event": round(cpu / max(rows, 1) * 1e6, 1), "peak_rss_mb": round(self_peak_rss_kb() / 1024, 1)}


def read_events(cfg, session, until_us: int, limit: int | None = None):
    """All events of the range, mapped by relay's Mapper, per window; with stage timings."""
    from relay.mapping import Mapper, Poison

    reader = _reader(cfg, session)
    mapper = Mapper(cfg.tables[0])
    batches = []
    read_s = map_s = 0.0
    n = 0
    for task, start, end in windows(cfg, session, until_us):
        t0 = time.perf_counter()
        changes = list(reader.read(task.streams, start, end))
        t1 = time.perf_counter()
        skipped: dict[str, int] = {}
        events = [e for c in changes for e in mapper.map(c, skipped) if not isinstance(e, Poison)]
        t2 = time.perf_counter()
        read_s += t1 - t0
        map_s += t2 - t1
        if events:
            batches.append(events)
            n += len(events)
        if limit is not None and n >= limit:
            break
    return batches, read_s, map_s


def _producer(cfg, on_delivery_errors: list):
    from confluent_kafka import Producer

    from relay.connect import producer_config

    return Producer(producer_config(cfg, error_cb=on_delivery_errors.append))


def raw_produce(cfg, session, until_us: int, redis_prefix: str | None) -> dict:
    batches, read_s, map_s = read_events(cfg, session, until_us)
    events = [e for b in batches for e in b]
    n = len(events)
    stages = {"read_s": round(read_s, 3), "map_s": round(map_s, 3)}
    # Stage: Redis dedup as relay does it (MGET per window, SET EX pipelined per ack batch of ≤500).
    if redis_prefix:
        from relay import connect
        from relay.dedup import Dedup

        dedup = Dedup(connect.redis_client(cfg), redis_prefix, cfg.redis.dedup_ttl_seconds, "fail-open")
        t0 = time.perf_counter()
        for b in batches:
            new, _ = dedup.split(b)
            for i in range(0, len(new), 500):
                dedup.mark(new[i:i + 500])
        stages["dedup_s"] = round(time.perf_counter() - t0, 3)
        stages["dedup_unavailable"] = dedup.unavailable
    # Stage: building the header lists (done inside produce() calls by relay).
    t0 = time.perf_counter()
    for e in events:
        e.kafka_headers()
    stages["headers_s"] = round(time.perf_counter() - t0, 3)

    errors: list = []
    producer = _producer(cfg, errors)
    acked = failed = 0

    def report(err, _msg):
        nonlocal acked, failed
        if err is None:
            acked += 1
        else:
            failed += 1

    c0, t0 = self_cpu_s(), time.perf_counter()
    for i, e in enumerate(events):
        while True:
            try:
                producer.produce(e.topic, key=e.key, value=e.payload, headers=e.kafka_headers(), on_delivery=report)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 500 == 499:
            producer.poll(0)
    while acked + failed < n:
        producer.poll(0.05)
    seconds = time.perf_counter() - t0
    cpu = self_cpu_s() - c0
    stages["produce_s"] = round(seconds, 3)
    return {"events": n, "acked": acked, "failed": failed, "seconds": round(seconds, 3),
            "events_per_s": round(n / seconds, 1), "cpu_s": round(cpu, 2),
            "cpu_us_per_event": round(cpu / max(n, 1) * 1e6, 1), "stages": stages,
            "stage_us_per_event": {k[:-2]: round(v / max(n, 1) * 1e6, 2) for k, v in stages.items()
                                   if k.endswith("_s")},
            "peak_rss_mb": round(self_peak_rss_kb() / 1024, 1)}


def naive(cfg, session, until_us: int, limit: int) -> dict:
    from relay.mapping import Mapper, Poison

    reader = _reader(cfg, session)
    mapper = Mapper(cfg.tables[0])
    errors: list = []
    producer = _producer(cfg, errors)
    state = {"acked": 0, "failed": 0}

    def report(err, _msg):
        state["acked" if err is None else "failed"] += 1

    n = 0
    c0, t0 = self_cpu_s(), time.perf_counter()
    for task, start, end in windows(cfg, session, until_us):
        for change in reader.read(task.streams, start, end):
            for e in mapper.map(change, {}):
                if isinstance(e, Poison):
                    continue
                producer.produce(e.topic, key=e.key, value=e.payload, headers=e.kafka_headers(), on_delivery=report)
                producer.flush()  # wait for this record's delivery report before the next
                n += 1
                if n >= limit:
                    break
            if n >= limit:
                break
        if n >= limit:
            break
    seconds = time.perf_counter() - t0
    cpu = self_cpu_s() - c0
    return {"events": n, **state, "seconds": round(seconds, 3), "events_per_s": round(n / seconds, 1),
            "cpu_s": round(cpu, 2), "cpu_us_per_event": round(cpu / max(n, 1) * 1e6, 1),
            "ms_per_event": round(seconds / max(n, 1) * 1e3, 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.baselines")
    p.add_argument("kind", choices=["read", "produce", "naive"])
    p.add_argument("--config", required=True)
    p.add_argument("--until", type=int, required=True, help="end of the range, µs since the epoch")
    p.add_argument("--limit", type=int, default=5000, help="naive: events to relay")
    p.add_argument("--redis-prefix", default=None, help="produce: also time Redis dedup under this prefix")
    p.add_argument("--profile", default=None, help="write a cProfile of the measurement to this file")
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    cfg, session = _setup(args.config)
    connect_s = time.perf_counter() - t_start
    prof = None
    if args.profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    if args.kind == "read":
        out = raw_read(cfg, session, args.until)
    elif args.kind == "produce":
        out = raw_produce(cfg, session, args.until, args.redis_prefix)
    else:
        out = naive(cfg, session, args.until, args.limit)
    if prof is not None:
        prof.disable()
        prof.dump_stats(args.profile)
    out["connect_s"] = round(connect_s, 3)
    session.cluster.shutdown()
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip the driver's libev atexit hook, which can stall an exiting process for 5 s


if __name__ == "__main__":
    sys.exit(main())

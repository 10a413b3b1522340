"""Throughput: write one backlog, then let `relay run --until` drain all of it from scratch
with 1, 2, 4 … workers, each run with a fresh relay keyspace, Redis prefix and topic.

Measured per run: wall time (process start → exit), when publishing began and ended (the
first/last record's broker LogAppendTime), CPU of relay's processes (wait4 rusage of the
supervisor, which reaps its workers; /proc samples per process and per thread), peak RSS
per worker (VmHWM), Redis memory per delivered event, and delivery (records in the topic,
distinct `id` headers, duplicates).
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import common
from benchmarks.common import Stack, log


@dataclass
class Backlog:
    keyspace: str
    table: str  # keyspace.outbox
    events: int
    aggregates: int
    payload_bytes: int
    vnodes: int
    shards: int
    streams: int
    tasks: int
    first_us: int
    last_us: int
    until_us: int  # first millisecond after the last event: relay's --until and the baselines' end
    load_seconds: float
    load_events_per_s: float
    config: str  # the config used for loading (outbox + generation tables in `keyspace`)

    def to_dict(self) -> dict:
        return asdict(self)


def write_backlog(stack: Stack, workdir: Path, keyspace: str, *, events: int, aggregates: int, vnodes: int,
                  shards: int, payload_bytes: int = 1000, concurrency: int = 128) -> Backlog:
    """A fresh keyspace with the emulated generation tables, one generation of vnodes × shards
    streams, and `events` outbox rows written once through `relay.commands.loadgen.generate`."""
    from relay import config as relay_config
    from relay.commands import loadgen
    from relay.progress import Progress
    from relay.schema import replication_literal
    from relay.testing import CdcEmulator, now_micros

    table = f"{keyspace}.outbox"
    config = common.write_config(workdir / "load.toml", stack, keyspace=keyspace, relay_keyspace=keyspace,
                                 tables=[table], topic=f"{keyspace}.{{aggregate_type}}", key_prefix=f"{keyspace}:")
    cfg = relay_config.load(config)
    # The generation first, so its shape is ours (loadgen would open a 16 × 2 one if none existed).
    session = loadgen.plain_session(cfg)
    try:
        emu = CdcEmulator(session, keyspace, keyspace,
                          replication=replication_literal(cfg.scylla.relay_replication))
        emu.create_metadata_tables()
        gen = emu.open_generation(now_micros() - 2_000_000, vnodes=vnodes, shards=shards, seed=7)
    finally:
        session.cluster.shutdown()
    streams = sum(len(s) for s in gen.streams_by_vnode.values())
    log(f"backlog: keyspace {keyspace}, generation of {vnodes} vnodes x {shards} shards = {streams} streams; "
        f"writing {events:,} events (~{payload_bytes} B payloads, {aggregates:,} aggregates)")
    progress = Progress(total=events, label="backlog", interval=10.0)
    try:
        result = loadgen.generate(cfg, table, events, aggregates, emulate=True, payload_bytes=payload_bytes,
                                  concurrency=concurrency, progress=progress)
    except BaseException:
        progress.close()
        raise
    progress.close(result.summary())
    until = result.last_timestamp_us + 1000
    until -= until % 1000
    return Backlog(keyspace, table, events, min(aggregates, events), payload_bytes, vnodes, shards, streams,
                   len(gen.streams_by_vnode), result.first_timestamp_us, result.last_timestamp_us, until,
                   result.seconds, result.events_per_second, str(config))


def until_iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, tz=UTC).isoformat()


def relay_command(config: Path, workers: int | None, until_us: int | None, profile: bool | None = None) -> list[str]:
    """`python -m relay run …` (workers None: relay's default), or the same through
    benchmarks.profiling when `profile` (default: BENCH_PROFILE is set): each worker then runs
    under cProfile and leaves a .prof file in BENCH_PROFILE_DIR."""
    if profile is None:
        profile = bool(os.environ.get("BENCH_PROFILE"))
    module = "benchmarks.profiling" if profile else "relay"
    cmd = [common.python(), "-m", module, "run", "--config", str(config)]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    if until_us is not None:
        cmd += ["--until", until_iso(until_us)]
    return cmd


def wait_confidence(backlog: Backlog, confidence_s: float) -> None:
    """relay reads a window only once it is older than the confidence window: start the drain
    when the whole backlog already is, so no run waits for the clock."""
    ready_at = backlog.until_us / 1e6 + confidence_s + 0.5
    delay = ready_at - time.time()
    if delay > 0:
        log(f"waiting {delay:.1f}s until the backlog is older than the confidence window")
        time.sleep(delay)


def run_relay(stack: Stack, workdir: Path, backlog: Backlog, workers: int, *, variant: str = "",
              extra_env: dict[str, str] | None = None, on_start=None) -> dict:
    """Drain the backlog once; `variant`/`extra_env` name and set relay config overrides for a what-if run
    (RELAY_<SECTION>__<KEY> variables, e.g. RELAY_KAFKA__PRODUCER__LINGER_MS=0). `on_start(pid)` is
    called once, as soon as relay's process exists (e.g. to attach a profiler)."""
    ks = backlog.keyspace
    tag = f"w{workers}" + (f"_{variant}" if variant else "")
    topic = f"{ks}.{tag}.order"
    prefix = f"{ks}:{tag}:"
    config = common.write_config(workdir / f"relay-{tag}.toml", stack, keyspace=ks, relay_keyspace=f"{ks}_{tag}",
                                 tables=[backlog.table], topic=f"{ks}.{tag}.{{aggregate_type}}", key_prefix=prefix)
    common.apply_relay_schema(config)
    common.create_topics(stack.kafka, [topic])
    wait_confidence(backlog, 10.0)
    services_before = common.wait_quiet(f"relay {tag}")
    r = common.redis_client(stack)
    mem_before = common.redis_used_memory(r)
    env = dict(os.environ, **(extra_env or {}))
    if env.get("BENCH_PROFILE"):
        env["BENCH_PROFILE_DIR"] = str(workdir / f"profile-{tag}")
        Path(env["BENCH_PROFILE_DIR"]).mkdir(parents=True, exist_ok=True)
    log(f"relay {tag}: draining {backlog.events:,} events with {workers} worker(s) -> topic {topic}")
    command = relay_command(config, workers, backlog.until_us, bool(env.get("BENCH_PROFILE")))
    started: list[int] = []

    def during(_sampler, proc) -> None:
        if on_start is not None and not started:
            started.append(proc.pid)
            on_start(proc.pid)

    run = common.run_and_sample(command, env=env, log_path=workdir / f"relay-{tag}.log", timeout=3600,
                                during=during)
    if run.returncode != 0:
        tail = (workdir / f"relay-{tag}.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"relay {tag} exited with {run.returncode}:\n{tail}")
    common.remove_metrics_dir(run.sampler.root)
    mem_after = common.redis_used_memory(r)
    keys = common.redis_key_count(r, prefix)
    topic_rep = common.read_topic(stack.kafka, topic)
    n = backlog.events
    s = run.sampler
    sup = s.by_role("supervisor")
    workers_s = sorted(s.by_role("worker"), key=lambda p: p.first_seen)
    helpers = s.by_role("helper")
    sampled_cpu = sum(p.cpu_s for p in s.procs.values())
    out = {
        "workers": workers,
        "variant": variant or None,
        "env": extra_env or {},
        "topic": topic,
        "wall_s": round(run.wall_s, 3),
        "events_per_s": round(n / run.wall_s, 1),
        "startup_s": _round(topic_rep.first_append_s - run.started_at if topic_rep.first_append_s else None),
        "publish_span_s": _round(topic_rep.last_append_s - topic_rep.first_append_s
                                 if topic_rep.first_append_s else None),
        "tail_s": _round(run.exited_at - topic_rep.last_append_s if topic_rep.last_append_s else None),
        "cpu_s": round(run.cpu_s, 2),
        "cpu_s_per_1000_events": round(run.cpu_s / n * 1000, 4),
        "cpu_us_per_event": round(run.cpu_s / n * 1e6, 1),
        "cpu_sampled_s": round(sampled_cpu, 2),
        "supervisor_cpu_s": round(sum(p.cpu_s for p in sup), 2),
        "worker_cpu_s": [round(p.cpu_s, 2) for p in workers_s],
        "helper_cpu_s": round(sum(p.cpu_s for p in helpers), 2),
        "worker_threads_cpu_s": [{k: round(v, 2) for k, v in s.thread_breakdown(p).items()} for p in workers_s],
        "worker_peak_rss_mb": [round(p.hwm_kb / 1024, 1) for p in workers_s],
        "supervisor_peak_rss_mb": round(max((p.hwm_kb for p in sup), default=0) / 1024, 1),
        "worker_processes_seen": len(workers_s),
        # Per delivered event, whatever the dedup format (a key per event, or members of shared sets):
        # used_memory after - before the run (other clients of the same Redis add noise).
        "redis_keys": keys,
        "redis_used_memory_delta_bytes": mem_after - mem_before,
        "redis_bytes_per_event": (round((mem_after - mem_before) / topic_rep.distinct_ids, 1)
                                  if topic_rep.distinct_ids else None),
        "delivered": topic_rep.to_dict(),
        "complete": topic_rep.distinct_ids == n and topic_rep.duplicates == 0,
        "machine_cpu": run.machine,
        "services_cores_before": None if services_before is None else round(services_before, 2),
    }
    status = "OK" if out["complete"] else "INCOMPLETE"
    log(f"relay {tag}: {out['events_per_s']:,.0f} events/s over {run.wall_s:.1f}s (publishing "
        f"{out['publish_span_s']}s), CPU {run.cpu_s:.1f}s = {out['cpu_us_per_event']} µs/event; delivered "
        f"{topic_rep.distinct_ids:,}/{n:,} distinct ids, {topic_rep.duplicates} duplicates: {status}")
    return out


def _round(x: float | None, nd: int = 2) -> float | None:
    return None if x is None else round(x, nd)

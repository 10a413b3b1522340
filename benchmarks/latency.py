"""End-to-end latency under a steady load.

relay runs live (no --until) on a table of its own with confidence_seconds=2, window_seconds=1,
poll_interval_seconds=0.1, publishing to a topic created with
`message.timestamp.type=LogAppendTime`. loadgen writes at a fixed rate for the configured time
(it is stopped at the deadline even if it wrote fewer events than planned); then relay gets up
to DRAIN_S to publish the rest. Each record's latency is its broker append time minus its
`cdc_time` header (the outbox write's timestamp, µs); both clocks are this machine's. An event
not delivered by the end counts as "slower than everything seen" in the percentiles (a
censored value, reported as null with `*_censored`).
"""
from __future__ import annotations

import math
import os
import signal
import threading
import time
import urllib.request
from pathlib import Path

from benchmarks import common
from benchmarks.backlog import relay_command
from benchmarks.common import Stack, log

CONFIDENCE_S = 2.0
WINDOW_S = 1.0
POLL_S = 0.1
DRAIN_S = 60.0  # after the load: how long relay may take to publish what is left


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list (math.inf allowed at the end)."""
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


class _TimeUp(Exception):
    pass


class _Deadline:
    """A loadgen progress sink that stops loadgen at a deadline (raising from update(), which
    loadgen calls after each slice it has written) and counts what was written."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.done = 0

    def update(self, n: int) -> None:
        self.done += n
        if time.monotonic() >= self.deadline:
            raise _TimeUp

    def close(self, *_a) -> None:
        pass


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def _caught_up(port: int) -> bool:
    """Every task has a position and none is further behind than confidence + window + 1.5 s."""
    import json

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as resp:
            status = json.loads(resp.read())
    except (OSError, ValueError):
        return False
    tasks = status.get("tasks") or []
    lag = status.get("lag_seconds") or {}
    return (bool(tasks) and all(t.get("position_us") is not None for t in tasks)
            and max(lag.values(), default=0.0) <= CONFIDENCE_S + WINDOW_S + 1.5)


def _metric(port: int, name: str) -> float | None:
    """Sum of a metric's samples on relay's /metrics (e.g. windows = relay_checkpoint_writes_total)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith((name + "{", name + " ")))


def _tree_cpu(sampler) -> float:
    return sum(p.cpu_s for p in list(sampler.procs.values())) if sampler is not None else 0.0


WINDOWS_METRIC = "relay_cql_read_duration_seconds_count"  # one observation per window read
CHECKPOINTS_METRIC = "relay_checkpoint_writes_total"
IDLE_S = 5.0  # relay measured idle (caught up, no load) for this long before the load starts


def _topic_end(bootstrap: str, topic: str) -> int:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-watermarks"})
    try:
        md = c.list_topics(topic, timeout=10)
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                   for p in md.topics[topic].partitions)
    finally:
        c.close()


def run_latency(stack: Stack, workdir: Path, keyspace: str, *, rate: float, seconds: float, workers: int,
                aggregates: int, payload_bytes: int = 1000, tag: str = "lat") -> dict:
    from relay import config as relay_config
    from relay.commands import loadgen

    table = f"{keyspace}.outbox_{tag}"
    topic = f"{keyspace}.{tag}.order"
    config = common.write_config(
        workdir / f"latency-{tag}.toml", stack, keyspace=keyspace, relay_keyspace=f"{keyspace}_{tag}",
        tables=[table], topic=f"{keyspace}.{tag}.{{aggregate_type}}", key_prefix=f"{keyspace}:{tag}:",
        relay={"window_seconds": WINDOW_S, "confidence_seconds": CONFIDENCE_S, "poll_interval_seconds": POLL_S,
               "generation_poll_seconds": 5,
               # a fresh table in a generation that began minutes ago: don't scan the empty past first
               "start_from": "now"})
    cfg = relay_config.load(config)
    common.apply_relay_schema(config)
    common.create_topics(stack.kafka, [topic])
    # The live table and its emulated log exist before relay starts (the generation is the backlog's).
    session = loadgen.plain_session(cfg)
    try:
        loadgen.prepare_emulation(session, cfg, cfg.table(table))
    finally:
        session.cluster.shutdown()

    port = common.metrics_port(config)
    log(f"latency {tag}: relay ({workers} worker(s), confidence {CONFIDENCE_S}s, window {WINDOW_S}s, poll "
        f"{POLL_S}s); loadgen at {rate:,.0f} events/s for {seconds:.0f}s")
    result: dict = {}
    stop = threading.Event()

    def on_tick(sampler, proc) -> None:
        result.setdefault("sampler", sampler)
        if stop.is_set() and not result.get("signalled"):
            result["signalled"] = True
            os.killpg(proc.pid, signal.SIGTERM)

    def drive() -> None:
        try:
            deadline = time.monotonic() + 120
            while not _ready(port):
                if time.monotonic() > deadline:
                    raise RuntimeError("relay did not become ready within 120s")
                time.sleep(0.2)
            # Start the load only once every task has a position near now (an event written before
            # its task's start position would never be read, with start_from = "now").
            t_ready = time.monotonic()
            while not _caught_up(port):
                if time.monotonic() - t_ready > 180:
                    raise RuntimeError("relay's tasks did not all reach the present within 180s")
                time.sleep(0.25)
            result["catch_up_s"] = round(time.monotonic() - t_ready, 1)
            # Idle cost: CPU of relay's processes, windows read and checkpoints written per second, no load.
            windows0, cps0 = _metric(port, WINDOWS_METRIC), _metric(port, CHECKPOINTS_METRIC)
            cpu0, t0 = _tree_cpu(result.get("sampler")), time.monotonic()
            time.sleep(IDLE_S)
            windows1, cps1 = _metric(port, WINDOWS_METRIC), _metric(port, CHECKPOINTS_METRIC)
            cpu1, t1 = _tree_cpu(result.get("sampler")), time.monotonic()
            result["idle_cpu_cores"] = round((cpu1 - cpu0) / (t1 - t0), 3)
            if windows0 is not None and windows1 is not None:
                result["idle_windows_per_s"] = round((windows1 - windows0) / (t1 - t0), 1)
            if cps0 is not None and cps1 is not None:
                result["idle_checkpoints_per_s"] = round((cps1 - cps0) / (t1 - t0), 1)
            sink = _Deadline(seconds)
            t0 = t_load0 = time.monotonic()
            try:
                loadgen.generate(cfg, table, max(1, int(rate * seconds * 1.05) + 10), aggregates, rate=rate,
                                 emulate=True, payload_bytes=payload_bytes, concurrency=64, progress=sink)
            except _TimeUp:
                pass
            load_s = time.monotonic() - t0
            result["load"] = {"events": sink.done, "load_seconds": round(load_s, 3),
                              "achieved_rate": round(sink.done / load_s, 1)}
            t_drain = time.monotonic()
            while (_topic_end(stack.kafka, topic) < sink.done
                   and time.monotonic() - t_drain < DRAIN_S + CONFIDENCE_S):
                time.sleep(0.5)
            result["drain_s"] = round(time.monotonic() - t_drain, 1)
            windows2, cps2 = _metric(port, WINDOWS_METRIC), _metric(port, CHECKPOINTS_METRIC)
            cpu2, t2 = _tree_cpu(result.get("sampler")), time.monotonic()
            result["load_cpu_cores"] = round((cpu2 - cpu1) / (t2 - t_load0), 3)
            if windows1 is not None and windows2 is not None:
                result["load_windows_per_s"] = round((windows2 - windows1) / (t2 - t_load0), 1)
            if cps1 is not None and cps2 is not None:
                result["load_checkpoints_per_s"] = round((cps2 - cps1) / (t2 - t_load0), 1)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            result["error"] = exc
        finally:
            stop.set()

    driver = threading.Thread(target=drive, name="latency-driver", daemon=True)
    driver.start()
    try:
        env = dict(os.environ)
        if env.get("BENCH_PROFILE"):
            env["BENCH_PROFILE_DIR"] = str(workdir / f"profile-{tag}")
        run = common.run_and_sample(relay_command(config, workers, None), log_path=workdir / f"relay-{tag}.log",
                                    env=env, timeout=seconds + DRAIN_S + 600, during=on_tick)
    finally:
        stop.set()
    driver.join(30)
    common.remove_metrics_dir(run.sampler.root)
    if "error" in result:
        raise RuntimeError(f"latency run failed: {result['error']}") from result["error"]
    if "load" not in result:
        tail = (workdir / f"relay-{tag}.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"relay exited ({run.returncode}) before the load ran:\n{tail}")
    events = result["load"]["events"]
    rep = common.read_topic(stack.kafka, topic, latencies=True)
    missing = max(0, events - rep.distinct_ids)
    lat = sorted(x for _, x in rep.latencies_s) + [math.inf] * missing
    # Is relay keeping up? Compare the first and the last quarter of the load (by write time): a
    # steady state has similar latencies; a growing backlog shows up as a later quarter far slower.
    by_write = [x for _, x in sorted(rep.latencies_s)] + [math.inf] * missing
    q = max(1, len(by_write) // 4)
    first_q, last_q = sorted(by_write[:q]), sorted(by_write[-q:])
    p = {name: percentile(lat, v) for name, v in (("p50", 50), ("p95", 95), ("p99", 99))}
    out = {
        "workers": workers,
        "target_rate": round(rate, 1),
        "seconds": seconds,
        **result["load"],
        "drain_s": result.get("drain_s"),
        "catch_up_s": result.get("catch_up_s"),
        "idle_cpu_cores": result.get("idle_cpu_cores"),
        "idle_windows_per_s": result.get("idle_windows_per_s"),
        "load_cpu_cores": result.get("load_cpu_cores"),
        "load_windows_per_s": result.get("load_windows_per_s"),
        "idle_checkpoints_per_s": result.get("idle_checkpoints_per_s"),
        "load_checkpoints_per_s": result.get("load_checkpoints_per_s"),
        "confidence_s": CONFIDENCE_S,
        "window_s": WINDOW_S,
        "poll_interval_s": POLL_S,
        "records": rep.records,
        "distinct_ids": rep.distinct_ids,
        "duplicates": rep.duplicates,
        "not_delivered": missing,
        "complete": missing == 0 and rep.duplicates == 0,
        **{f"{k}_s": _r(v) for k, v in p.items()},
        **{f"{k}_censored": v == math.inf for k, v in p.items()},
        "max_observed_s": _r(max((x for _, x in rep.latencies_s), default=None)),
        "min_s": _r(lat[0] if lat else None),
        "p50_first_quarter_s": _r(percentile(first_q, 50)),
        "p50_last_quarter_s": _r(percentile(last_q, 50)),
        "steady": bool(lat) and missing == 0 and abs(percentile(last_q, 50) - percentile(first_q, 50)) < 1.0,
        "relay_exit_code": run.returncode,
        "relay_cpu_s": round(run.cpu_s, 2),
        "relay_cpu_us_per_event": round(run.cpu_s / max(events, 1) * 1e6, 1),
        "relay_wall_s": round(run.wall_s, 1),
        "measure": "broker LogAppendTime - cdc_time header",
    }
    log(f"latency {tag}: achieved {out['achieved_rate']:,.0f}/s; p50 {_show(p['p50'])} p95 {_show(p['p95'])} "
        f"p99 {_show(p['p99'])} (confidence {CONFIDENCE_S}s); p50 first/last quarter "
        f"{_show(out['p50_first_quarter_s'])}/{_show(out['p50_last_quarter_s'])} "
        f"({'steady' if out['steady'] else 'NOT keeping up: latency grows'}); "
        f"delivered {rep.distinct_ids:,}/{events:,}")
    return out


def _r(x: float | None) -> float | None:
    return None if x is None or x == math.inf else round(x, 3)


def _show(x: float | None) -> str:
    return "never" if x is None or x == math.inf else f"{x:.3f}s"

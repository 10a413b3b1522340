"""relay in live mode at cluster scale: idle cost, then latency under a steady load.

One relay process (`relay run`, no --until) with DEFAULT [relay] settings (window, confidence,
poll, start position: whatever relay.config says; the worker count is relay's default too
unless --live-workers is given) reads one table of its own in a keyspace of its own, whose
emulated CDC generation has `vnodes × shards` streams (default 768 × 4: three nodes of 256
vnodes, 4 shards each; one task per vnode). In that one process, in order:

1. **idle**: once every task has a position within confidence + window + poll (+1.5 s) of
   now, and one window + poll later, `idle_seconds` with no traffic: CPU of relay's processes (all of them, from /proc),
   CQL window reads/s (`relay_cql_read_duration_seconds_count`) and checkpoint writes/s
   (`relay_checkpoint_writes_total`) from relay's /metrics;
2. **latency points**: for each (name, rate), loadgen in processes of its own
   (benchmarks.loadproc) writes for `seconds` at that rate, with aggregate_type = the point's
   name, so each point's records land in a topic of their own (created beforehand with
   `message.timestamp.type=LogAppendTime`); then relay has confidence + window + DRAIN_S to
   publish the rest before the next point starts. A point's rate may be a rule over the points
   before it (`half_of_achieved`: half of what the writers reached at an earlier point: the
   'half' point asks half of the 'max' point's achieved rate, the max rate of the pipeline here).

Latency of a record = broker append time − its `cdc_time` header (the outbox write's
timestamp, µs); both clocks are this machine's. An event not delivered by the end counts as
slower than everything seen (a censored value, reported as null with `*_censored`).
"""
from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from benchmarks import common, loadproc
from benchmarks.backlog import relay_command
from benchmarks.common import Stack, log

DRAIN_S = 60.0  # after a point's load (and confidence + window): how long relay may take to publish the rest
READS_METRIC = "relay_cql_read_duration_seconds_count"  # one observation per CQL window read
READ_SECONDS_METRIC = "relay_cql_read_duration_seconds_sum"  # from sending a window's queries to its rows
ACKS_METRIC = "relay_publish_latency_seconds_count"  # one observation per event acknowledged
ACK_SECONDS_METRIC = "relay_publish_latency_seconds_sum"  # produce() to its delivery report
CHECKPOINTS_METRIC = "relay_checkpoint_writes_total"
METER_METRICS = (READS_METRIC, READ_SECONDS_METRIC, ACKS_METRIC, ACK_SECONDS_METRIC, CHECKPOINTS_METRIC)
SETTLE_S = 2.0  # at least, after every task is caught up: one window + poll more, so each task has cycled once


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list (math.inf allowed at the end)."""
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def _get(port: int, path: str, timeout: float = 5.0) -> bytes | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
            return resp.read() if resp.status == 200 else None
    except OSError:
        return None


def _metrics(port: int, names: tuple[str, ...]) -> dict[str, float | None]:
    """Sum of each metric's samples on relay's /metrics (one scrape); None if /metrics did not answer.
    A counter nothing has incremented yet has no samples (multiprocess mode), so absent = 0 here; the
    run records at its end whether each metric was seen at all (a renamed metric would read 0)."""
    text = _get(port, "/metrics")
    if text is None:
        return dict.fromkeys(names)
    lines = text.decode().splitlines()
    return {name: sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith((name + "{", name + " ")))
            for name in names}


def _caught_up(port: int, max_lag_s: float) -> tuple[bool, float | None]:
    """(every task has a position no further behind than max_lag_s, the largest lag seen)."""
    body = _get(port, "/status")
    try:
        status = json.loads(body) if body else {}
    except ValueError:
        return False, None
    tasks = status.get("tasks") or []
    lags = [t.get("lag_seconds") for t in tasks]
    if not tasks or any(x is None for x in lags):
        return False, None
    worst = max(lags)
    return worst <= max_lag_s, worst


def _topic_end(bootstrap: str, topic: str) -> int:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-watermarks"})
    try:
        md = c.list_topics(topic, timeout=10)
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                   for p in md.topics[topic].partitions)
    finally:
        c.close()


class _Meter:
    """relay's cost between two moments: CPU of its process tree by role and thread kind (fresh
    /proc reads), its read and checkpoint counters, and where the machine's CPU went meanwhile."""

    def __init__(self, root: int, port: int) -> None:
        self.root, self.port = root, port

    def take(self) -> dict:
        sampler = common.TreeSampler(self.root)
        sampler.sample()
        roles: dict[str, float] = {}
        threads = {"main": 0.0, "librdkafka": 0.0, "other": 0.0}
        for p in sampler.procs.values():
            roles[p.role] = roles.get(p.role, 0.0) + p.cpu_s
            if p.role == "worker":
                for k, v in sampler.thread_breakdown(p).items():
                    threads[k] += v
        m = _metrics(self.port, METER_METRICS)
        return {"t": time.monotonic(), "cpu": sum(roles.values()), "roles": roles, "threads": threads,
                "reads": m[READS_METRIC], "read_s": m[READ_SECONDS_METRIC], "acks": m[ACKS_METRIC],
                "ack_s": m[ACK_SECONDS_METRIC], "checkpoints": m[CHECKPOINTS_METRIC],
                "machine": common.CpuSnapshot.take()}

    @staticmethod
    def between(a: dict, b: dict, extra_cpu_s: float = 0.0) -> dict:
        """Rates from a to b. extra_cpu_s = CPU of other measured processes (loadgen) in the interval."""
        dt = max(b["t"] - a["t"], 1e-9)

        def rate(key: str) -> float | None:
            return None if a[key] is None or b[key] is None else round((b[key] - a[key]) / dt, 1)

        def mean_ms(total: str, count: str) -> float | None:
            """Mean of a histogram over the interval: what one window read (or one ack) took, in ms."""
            if any(x[k] is None for x in (a, b) for k in (total, count)) or b[count] <= a[count]:
                return None
            return round((b[total] - a[total]) / (b[count] - a[count]) * 1000, 1)

        cpu = b["cpu"] - a["cpu"]
        return {"seconds": round(dt, 1), "cpu_cores": round(cpu / dt, 3),
                "cpu_cores_by_role": {k: round((b["roles"].get(k, 0.0) - v) / dt, 3) for k, v in a["roles"].items()},
                "worker_thread_cores": {k: round((b["threads"][k] - v) / dt, 3) for k, v in a["threads"].items()},
                "reads_per_s": rate("reads"), "checkpoints_per_s": rate("checkpoints"),
                # Where a window's time goes at this load: its CQL read, then each event's produce → ack.
                "read_mean_ms": mean_ms("read_s", "reads"), "ack_mean_ms": mean_ms("ack_s", "acks"),
                "machine_cpu": a["machine"].until(b["machine"], cpu + extra_cpu_s)}


def prepare(stack: Stack, workdir: Path, run_id: str, *, vnodes: int, shards: int, point_names: list[str],
            settings: dict | None = None) -> tuple[Path, str, dict]:
    """A keyspace `<run>_live` with the emulated metadata tables, a fresh vnodes × shards
    generation, the outbox table and its emulated log; relay's schema; one topic per point."""
    from relay import config as relay_config
    from relay.commands import loadgen
    from relay.schema import replication_literal
    from relay.testing import CdcEmulator, now_micros

    ks = f"{run_id}_live"
    table = f"{ks}.outbox"
    config = common.write_config(workdir / "live.toml", stack, keyspace=ks, relay_keyspace=f"{ks}_relay",
                                 tables=[table], topic=f"{run_id}.live.{{aggregate_type}}",
                                 key_prefix=f"{run_id}:live:", relay=settings, defaults=True)
    cfg = relay_config.load(config)
    session = loadgen.plain_session(cfg)
    try:
        emu = CdcEmulator(session, ks, ks, replication=replication_literal(cfg.scylla.relay_replication))
        emu.create_metadata_tables()
        gen = emu.open_generation(now_micros() - 1_000_000, vnodes=vnodes, shards=shards, seed=13)
        loadgen.prepare_emulation(session, cfg, cfg.table(table))
    finally:
        session.cluster.shutdown()
    common.apply_relay_schema(config)
    common.create_topics(stack.kafka, [f"{run_id}.live.{name}" for name in point_names])
    r = cfg.relay
    shape = {"vnodes": vnodes, "shards": shards, "streams": sum(len(s) for s in gen.streams_by_vnode.values()),
             "tasks": len(gen.streams_by_vnode), "window_s": r.window_seconds, "confidence_s": r.confidence_seconds,
             "poll_interval_s": r.poll_interval_seconds, "start_from": r.start_from,
             "workers": cfg.worker_count}
    return config, table, shape


# A point's rate: events/s, or a rule computing it from the points measured before it.
Rate = float | Callable[[dict], float | None]


def half_of_achieved(point: str) -> Callable[[dict], float | None]:
    """Half of the rate the writers reached at an earlier point: where the writers asked for more
    than this machine can write, a rate it can sustain beside relay (writes cost the database and
    the emulating writer far more CPU than relay's reads of them)."""

    def rule(measured: dict) -> float | None:
        done = measured.get(point)
        achieved = done["load"].achieved_rate if done else None
        return achieved / 2 if achieved else None

    return rule


def run_live(stack: Stack, workdir: Path, run_id: str, *, vnodes: int, shards: int, workers: int | None,
             idle_seconds: float, points: list[tuple[str, Rate, int]], seconds: float, aggregates: int,
             payload_bytes: int = 1000, settings: dict | None = None) -> dict:
    """points: (name, rate events/s or a rule over the points before it, loadgen processes);
    settings: [relay] overrides (none = relay's defaults). Returns {"shape", "idle", "points": {name: …}, …}."""
    config, table, shape = prepare(stack, workdir, run_id, vnodes=vnodes, shards=shards,
                                   point_names=[p[0] for p in points], settings=settings)
    shape["settings_overridden"] = dict(settings or {})
    if workers:
        shape["workers"] = workers
    conf, window, poll = shape["confidence_s"], shape["window_s"], shape["poll_interval_s"]
    max_lag = conf + window + poll + 1.5
    port = common.metrics_port(config)
    kind = "overridden" if settings else "default"
    log(f"live: relay with {kind} settings ({shape['workers']} workers, window {window}s, confidence {conf}s, "
        f"poll {poll}s) on {shape['tasks']} tasks ({vnodes} vnodes x {shards} shards = {shape['streams']} streams)")
    state: dict = {"points": {}}
    stop = threading.Event()

    def on_tick(_sampler, proc) -> None:
        state.setdefault("pid", proc.pid)
        if stop.is_set() and not state.get("signalled"):
            state["signalled"] = True
            os.killpg(proc.pid, signal.SIGTERM)

    def drive() -> None:
        try:
            t0 = time.monotonic()
            while "pid" not in state or _get(port, "/ready", 2) is None:
                if time.monotonic() - t0 > 120:
                    raise RuntimeError("relay did not become ready within 120s")
                time.sleep(0.5)
            meter = _Meter(state["pid"], port)
            t_ready = time.monotonic()
            while True:  # /status lists every task: poll it gently (its cost lands on relay's supervisor)
                ok, worst = _caught_up(port, max_lag)
                if ok:
                    break
                if time.monotonic() - t_ready > 300:
                    raise RuntimeError(f"relay's tasks did not all get within {max_lag:.1f}s of now in 300s "
                                       f"(worst lag {worst})")
                time.sleep(1.0)
            state["catch_up_s"] = round(time.monotonic() - t_ready, 1)
            state["ready_s"] = round(t_ready - t0, 1)
            time.sleep(max(SETTLE_S, window + poll))
            if idle_seconds > 0:
                log(f"live: every task caught up (worst lag {worst:.1f}s); idle for {idle_seconds:.0f}s")
                a = meter.take()
                time.sleep(idle_seconds)
                state["idle"] = _Meter.between(a, meter.take())
                i = state["idle"]
                log(f"live idle: {i['cpu_cores']:.3f} cores, {i['reads_per_s']} reads/s, "
                    f"{i['checkpoints_per_s']} checkpoints/s over {i['seconds']}s")
            for name, rate_rule, nproc in points:
                rate = rate_rule(state["points"]) if callable(rate_rule) else rate_rule
                if rate is None:
                    log(f"live {name}: skipped (the point it depends on did not tell a rate)")
                    state.setdefault("skipped", []).append(name)
                    continue
                log(f"live {name}: loadgen at {rate:,.0f} events/s for {seconds:.0f}s in {nproc} process(es)")
                a = meter.take()
                load = loadproc.run_load(config, table, rate=rate, seconds=seconds, aggregates=aggregates,
                                         processes=nproc, workdir=workdir, tag=name, payload_bytes=payload_bytes,
                                         aggregate_type=name)
                t_drain = time.monotonic()
                topic = f"{run_id}.live.{name}"
                while not (drained := _topic_end(stack.kafka, topic) >= load.events):
                    if time.monotonic() - t_drain > DRAIN_S + conf + window:
                        break
                    time.sleep(0.5)
                cost = _Meter.between(a, meter.take(), extra_cpu_s=load.cpu_s)
                state["points"][name] = {"load": load, "drain_s": round(time.monotonic() - t_drain, 1),
                                         "drained": drained, "cost": cost}
            text = (_get(port, "/metrics") or b"").decode()
            state["metrics_missing"] = [m for m in (READS_METRIC, CHECKPOINTS_METRIC) if m not in text]
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            state["error"] = exc
        finally:
            stop.set()

    driver = threading.Thread(target=drive, name="live-driver", daemon=True)
    driver.start()
    env = dict(os.environ)
    if env.get("BENCH_PROFILE"):
        env["BENCH_PROFILE_DIR"] = str(workdir / "profile-live")
    budget = 120 + 300 + idle_seconds + len(points) * (seconds + DRAIN_S + conf + window + 240)
    try:
        run = common.run_and_sample(relay_command(config, workers, None), log_path=workdir / "relay-live.log",
                                    env=env, timeout=budget, during=on_tick)
    finally:
        stop.set()
    driver.join(60)
    common.remove_metrics_dir(run.sampler.root)
    if "error" in state:
        raise RuntimeError(f"live run failed: {state['error']}") from state["error"]
    out: dict = {"shape": shape, "catch_up_s": state.get("catch_up_s"), "ready_s": state.get("ready_s"),
                 "idle": state.get("idle"), "relay_exit_code": run.returncode, "relay_cpu_s": round(run.cpu_s, 2),
                 "relay_wall_s": round(run.wall_s, 1), "metrics_missing": state.get("metrics_missing"),
                 "points": {}}
    for name, _rate, _n in points:
        p = state["points"].get(name)
        if p is None and name in state.get("skipped", ()):
            continue
        if p is None:
            tail = (workdir / "relay-live.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"relay exited ({run.returncode}) before point {name} ran:\n{tail}")
        out["points"][name] = _latency(stack, f"{run_id}.live.{name}", p, shape)
    return out


def _latency(stack: Stack, topic: str, p: dict, shape: dict) -> dict:
    load: loadproc.LoadResult = p["load"]
    conf = shape["confidence_s"]
    rep = common.read_topic(stack.kafka, topic, latencies=True)
    events = load.events
    missing = max(0, events - rep.distinct_ids)
    lat = sorted(x for _, x in rep.latencies_s) + [math.inf] * missing
    # Is relay keeping up? Compare the first and the last quarter of the load (by write time): a
    # steady state has similar latencies; a growing backlog shows up as a later quarter far slower.
    by_write = [x for _, x in sorted(rep.latencies_s)] + [math.inf] * missing
    q = max(1, len(by_write) // 4)
    first_q, last_q = sorted(by_write[:q]), sorted(by_write[-q:])
    pct = {name: percentile(lat, v) for name, v in (("p50", 50), ("p95", 95), ("p99", 99))}
    cost = p["cost"]
    out = {
        **load.to_dict(),
        "target_rate": round(load.asked_rate, 1),  # the name older results used
        "workers": shape["workers"],
        "tasks": shape["tasks"],
        "drain_s": p["drain_s"],
        # False: relay had not published this point's events when the next phase began (they may have
        # been published during it, which then ran with relay still behind)
        "drained_in_time": p["drained"],
        "confidence_s": conf,
        "window_s": shape["window_s"],
        "poll_interval_s": shape["poll_interval_s"],
        "records": rep.records,
        "distinct_ids": rep.distinct_ids,
        "duplicates": rep.duplicates,
        "not_delivered": missing,
        "complete": missing == 0 and rep.duplicates == 0,
        **{f"{k}_s": _r(v) for k, v in pct.items()},
        **{f"{k}_censored": v == math.inf for k, v in pct.items()},
        **{f"{k}_over_confidence_s": (None if v is None or v == math.inf else round(v - conf, 3))
           for k, v in pct.items()},
        "max_observed_s": _r(max((x for _, x in rep.latencies_s), default=None)),
        "min_s": _r(lat[0] if lat else None),
        "p50_first_quarter_s": _r(percentile(first_q, 50)),
        "p50_last_quarter_s": _r(percentile(last_q, 50)),
        "steady": bool(lat) and missing == 0 and abs(percentile(last_q, 50) - percentile(first_q, 50)) < 1.0,
        "load_cpu_cores": cost["cpu_cores"],
        "load_reads_per_s": cost["reads_per_s"],
        "load_checkpoints_per_s": cost["checkpoints_per_s"],
        "cost": cost,
        "relay_cpu_us_per_event": round(cost["cpu_cores"] * cost["seconds"] / max(events, 1) * 1e6, 1),
        "measure": "broker LogAppendTime - cdc_time header",
        "slow_seconds": _slow_seconds(rep.latencies_s, pct["p99"]),
    }
    log(f"live {topic}: asked {load.asked_rate:,.0f}/s, achieved {_show_rate(out['achieved_rate'])} "
        f"({load.processes} loadgen process(es)); p50 {_show(pct['p50'])} p99 {_show(pct['p99'])} (confidence "
        f"{conf}s); p50 first/last quarter {_show(out['p50_first_quarter_s'])}/{_show(out['p50_last_quarter_s'])} "
        f"({'steady' if out['steady'] else 'NOT keeping up'}); delivered {rep.distinct_ids:,}/{events:,}")
    return out


def _slow_seconds(latencies: list[tuple[float, float]], p99: float | None, top: int = 10) -> dict:
    """Where the tail comes from: the write seconds holding the events slower than the p99, worst
    first. A few seconds holding most of them point at stalls (a flush, a pause); many seconds
    holding one or two each, at every window's spread."""
    if not latencies or p99 is None or p99 == math.inf:
        return {}
    t0 = min(t for t, _ in latencies)
    slow: dict[int, list[float]] = {}
    for t, x in latencies:
        if x > p99:
            slow.setdefault(int(t - t0), []).append(x)
    worst = sorted(slow.items(), key=lambda kv: -len(kv[1]))[:top]
    return {"seconds_with_slow_events": len(slow), "events_slower_than_p99": sum(len(v) for v in slow.values()),
            "worst": [{"second": sec, "events": len(v), "max_s": round(max(v), 3)} for sec, v in worst]}


def _r(x: float | None) -> float | None:
    return None if x is None or x == math.inf else round(x, 3)


def _show(x: float | None) -> str:
    return "never" if x is None or x == math.inf else f"{x:.3f}s"


def _show_rate(x: float | None) -> str:
    return "–" if x is None else f"{x:,.0f}/s"

"""Results → `latest.json` (all numbers), `latest.md` (the tables) and `throughput.png`."""
from __future__ import annotations

import json
from pathlib import Path


def summary(results: dict) -> dict:
    """The headline keys (stable names, for tests and dashboards) on top of the detailed results."""
    from benchmarks import targets

    relay_runs = results.get("relay", {})
    # Each worker count's figures: the medians of its drains (one drain each in older result files).
    drains = results.get("relay_drains") or {w: [r] for w, r in relay_runs.items()}
    rates = {str(w): median([d["events_per_s"] for d in ds]) for w, ds in drains.items()}
    best_w, best = max(rates.items(), key=lambda kv: kv[1]) if rates else (None, None)
    cpu = {str(w): median([d["cpu_us_per_event"] for d in ds]) for w, ds in drains.items()}
    cheapest_w = min(cpu, key=cpu.get) if cpu else None
    raw_read = results.get("raw_read", {}).get("events_per_s")
    raw_produce = results.get("raw_produce", {}).get("events_per_s")
    naive = median([r["events_per_s"] for r in results.get("naive_runs") or [results.get("naive", {})]
                     if r.get("events_per_s")])
    events = results.get("backlog", {}).get("events")
    spans = {str(w): median([round(events / d["publish_span_s"], 1) for d in ds if d.get("publish_span_s")])
             for w, ds in drains.items()} if events else {}
    span_best = max((v for v in spans.values() if v), default=None)
    live = results.get("live", {})
    shape = live.get("shape", {})
    idle = live.get("idle") or {}
    half = live.get("points", {}).get("half", {})
    low = live.get("points", {}).get("low", {})
    top = live.get("points", {}).get("max", {})
    at_768 = shape.get("vnodes") == 768
    disc = results.get("discovery", {})
    sup = results.get("supervisor_loop", {})
    redis_per_event = median([r.get("redis_bytes_per_event") for r in relay_runs.values()])
    out = {
        "relay_events_per_s": rates,
        "relay_best_workers": int(best_w) if best_w else None,
        "relay_publish_span_events_per_s": spans,
        "relay_cpu_us_per_event": cpu,
        "relay_drains_per_worker_count": {str(w): len(ds) for w, ds in drains.items()},
        "relay_cpu_s_per_1000_events": {str(w): round(v / 1000, 4) if v is not None else None for w, v in cpu.items()},
        "relay_worker_peak_rss_mb": {str(w): max(r["worker_peak_rss_mb"] or [0]) for w, r in relay_runs.items()},
        # the worker count with the least CPU per event (the "best worker count" for CPU)
        "cpu_us_per_event_best": cpu[cheapest_w] if cheapest_w else None,
        "cpu_us_per_event_best_workers": int(cheapest_w) if cheapest_w else None,
        # Redis: used_memory growth per delivered event (one dedup entry each, whatever the format); median of drains
        "redis_bytes_per_event": redis_per_event,
        "redis_bytes_per_key": redis_per_event,
        "redis_bytes_per_dedup_key": redis_per_event,
        "raw_read_events_per_s": raw_read,
        "raw_produce_events_per_s": raw_produce,
        "naive_events_per_s": naive,
        "relay_vs_raw_read": _ratio(best, raw_read),
        "relay_vs_raw_produce": _ratio(best, raw_produce),
        "relay_vs_naive": _ratio(best, naive),
        # Like for like: the baselines time their loops only, relay's headline rate its whole process
        # (interpreter, imports, connections, group join and exit included); this one is relay's best
        # rate from its first to its last record appended.
        "relay_vs_naive_publishing": _ratio(span_best, naive),
        # live mode: one relay with default settings on vnodes x shards tasks (768 x 4 in a full run)
        "live_vnodes": shape.get("vnodes"),
        "live_shards": shape.get("shards"),
        "live_tasks": shape.get("tasks"),
        "live_workers": shape.get("workers"),
        "idle_cpu_cores": idle.get("cpu_cores"),
        "idle_reads_per_s": idle.get("reads_per_s"),
        "idle_checkpoints_per_s": idle.get("checkpoints_per_s"),
        "idle_cpu_cores_768": idle.get("cpu_cores") if at_768 else None,
        "idle_reads_per_s_768": idle.get("reads_per_s") if at_768 else None,
        "idle_checkpoints_per_s_768": idle.get("checkpoints_per_s") if at_768 else None,
        "confidence_s": shape.get("confidence_s"),
        **_point_keys("latency_768", half if at_768 else {}),
        **_point_keys("latency_768_low_rate", low if at_768 else {}),
        **_point_keys("latency_768_max", top if at_768 else {}),
        # the same figures for whatever the live run's size was (smoke: a few vnodes)
        "latency_p50_s": half.get("p50_s"),
        "latency_p95_s": half.get("p95_s"),
        "latency_p99_s": half.get("p99_s"),
        "latency_p99_over_confidence_s": half.get("p99_over_confidence_s"),
        "latency_asked_rate": half.get("asked_rate"),
        "latency_rate": half.get("achieved_rate"),
        "latency_steady": half.get("steady"),
        "latency_low_rate_asked_rate": low.get("asked_rate"),
        "latency_low_rate": low.get("achieved_rate"),
        "latency_low_rate_p50_s": low.get("p50_s"),
        "latency_low_rate_p99_s": low.get("p99_s"),
        "latency_low_rate_p99_over_confidence_s": low.get("p99_over_confidence_s"),
        "latency_low_rate_steady": low.get("steady"),
        "latency_idle_cpu_cores": idle.get("cpu_cores"),
        "latency_idle_windows_per_s": idle.get("reads_per_s"),
        "supervisor_loop_ms_3072x16": (sup.get("idle_loop_ms") if (sup.get("tasks"), sup.get("workers"))
                                       == (3072, 16) else None),
        "supervisor_change_loop_ms_3072x16": (sup.get("change_loop_ms") if (sup.get("tasks"), sup.get("workers"))
                                              == (3072, 16) else None),
        # 768 vnodes x 8 shards = 6,144 streams nominally; Scylla (and the emulation) give no stream to a
        # shard owning no token of a short vnode range, so the real count is a little lower (see streams).
        "discovery_6144_streams_s": (disc.get("total_s") if (disc.get("vnodes"), disc.get("shards")) == (768, 8)
                                     else None),
        "discovery_streams": disc.get("streams"),
        "discovery_s": disc.get("total_s"),
        "discovery_peak_rss_mb": disc.get("peak_rss_mb"),
        "what_if_events_per_s": {k: r["events_per_s"] for k, r in results.get("what_if", {}).items()},
        "all_delivered": all(r.get("complete") for r in [*relay_runs.values(), *results.get("what_if", {}).values(),
                                                         *(d for ds in drains.values() for d in ds),
                                                         *results.get("naive_runs", [])])
        and all(
            results.get(k, {}).get("complete", True) for k in ("raw_produce", "naive")),
        "machine": results.get("machine", {}),
    }
    out["targets"] = targets.evaluate(out)
    return {**out, "details": results}


def _point_keys(prefix: str, p: dict) -> dict:
    """The headline figures of one latency point under `prefix` (all None when it did not run)."""
    return {f"{prefix}_p50_s": p.get("p50_s"), f"{prefix}_p99_s": p.get("p99_s"),
            f"{prefix}_p99_censored": p.get("p99_censored"),
            f"{prefix}_p99_over_confidence_s": p.get("p99_over_confidence_s"),
            f"{prefix}_p99_over_confidence_s_censored": p.get("p99_censored"),
            f"{prefix}_asked_rate": p.get("asked_rate"), f"{prefix}_achieved_rate": p.get("achieved_rate"),
            f"{prefix}_steady": p.get("steady")}


def median(values):
    xs = sorted(v for v in values if v is not None)
    if not xs:
        return None
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else round((xs[mid - 1] + xs[mid]) / 2, 1)


def _ratio(a, b):
    return round(a / b, 3) if a and b else None


def _first(values):
    return next((v for v in values if v is not None), None)


def _cores(m: dict | None) -> str:
    if not m:
        return "–"
    return (f"{m['machine_cores']:.2f} / {m['services_cores']:.2f} / {m['measured_cores']:.2f} / "
            f"{m['other_cores']:.2f}")


def first_nice(live: dict) -> str:
    return str(next((p.get("loadgen_nice") for p in live["points"].values() if "loadgen_nice" in p), "0"))


def _fmt(x, nd: int = 0, unit: str = "") -> str:
    if x is None:
        return "–"
    if isinstance(x, float | int):
        return f"{x:,.{nd}f}{unit}"
    return str(x)


def _target_value(t: dict) -> str:
    if t["censored"]:
        return "never (events undelivered)"
    v = t["value"]
    if v is None:
        return "not measured"
    return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.1f}"


def _g(x) -> str:
    return "–" if x is None else format(x, ",g")


def _bound(x, lower: bool) -> str:
    return "–" if x is None else f"{'≤' if lower else '≥'} {_g(x)}"


def _verdict(t: dict) -> str:
    if t["pass"] is None:
        return "–"
    if t["moonshot_pass"]:
        return "**pass (moonshot)**"
    return "**pass**" if t["pass"] else "**FAIL**"


def targets_md(s: dict) -> list[str]:
    smoke = ["**SMOKE RUN: tiny sizes, the figures and verdicts mean nothing.**", ""] if s["details"].get("smoke") \
        else []
    lines = ["## Targets (issue 9)", "", *smoke,
             "| figure | key | this run | today (d36b8fc) | target | moonshot | result |",
             "|---|---|---:|---:|---:|---:|---|"]
    for key, t in s["targets"].items():
        lower = t["better"] == "lower"
        lines.append(f"| {t['label']} ({t['unit']}) | `{key}` | {_target_value(t)} | {_g(t['today'])} | "
                     f"{_bound(t['target'], lower)} | {_bound(t['moonshot'], lower)} | {_verdict(t)} |")
    lines += ["", "Notes on the figures: " + "; ".join(f"`{k}`: {t['note']}" for k, t in s["targets"].items()
                                                      if t["note"]) + ".", ""]
    return lines


def replicas_md(d: dict) -> list[str]:
    rep = d.get("replicas")
    if not rep:
        return []
    one, three = rep["drain"][:2]
    one_x3 = rep["drain"][2] if len(rep["drain"]) > 2 else None
    lv = rep.get("live", {})
    delay = rep.get("broker_initial_rebalance_delay_ms")
    lines = ["## Replicas sharing slots (issue 10)", "",
             f"The backlog drained by 1 replica, then by 3 (`relay run` each, 1 worker, {rep['slots']} slots, default "
             "`[leases]`), and a live group of 3 on an idle table (default settings): SIGKILL of one replica's "
             "process group, a 4th joining, SIGTERM of one. Times are until the remaining replicas own every slot "
             "(read from their /status).", "",
             "| figure | value | target |", "|---|---:|---|",
             f"| drain, 1 replica | {_fmt(one['events_per_s'])} events/s, {_fmt(one['cpu_us_per_event'], 1)} µs/event, "
             f"{one['delivered']['distinct_ids']:,} ids, {one['delivered']['duplicates']} dup | |",
             f"| drain, 3 replicas | {_fmt(three['events_per_s'])} events/s, "
             f"{_fmt(three['cpu_us_per_event'], 1)} µs/event, {three['delivered']['distinct_ids']:,} ids, "
             f"{three['delivered']['duplicates']} dup | |",
             *([f"| drain, 1 replica of 3 workers | {_fmt(one_x3['events_per_s'])} events/s, "
                f"{_fmt(one_x3['cpu_us_per_event'], 1)} µs/event, {one_x3['delivered']['distinct_ids']:,} ids, "
                f"{one_x3['delivered']['duplicates']} dup | |"] if one_x3 else []),
             "| CPU per event, 3 replicas / 1, from each replica's /ready to its exit (coordination) | "
             f"**{_fmt(rep.get('cpu_after_ready_ratio_3_vs_1'), 2)}×** "
             f"({_fmt(three.get('cpu_after_ready_us_per_event'), 1)} / "
             f"{_fmt(one.get('cpu_after_ready_us_per_event'), 1)} µs) | ≤ 1.1× |",
             *([f"| CPU per event, 3 replicas of 1 worker / 1 replica of 3 workers, from /ready (the same "
                "parallelism on the same cores: what sharing through the group costs) | "
                f"**{_fmt(rep.get('cpu_after_ready_ratio_3_vs_1x3'), 2)}×** "
                f"({_fmt(three.get('cpu_after_ready_us_per_event'), 1)} / "
                f"{_fmt(one_x3.get('cpu_after_ready_us_per_event'), 1)} µs) | |"] if one_x3 else []),
             f"| CPU per event, 3 replicas / 1, whole processes (each replica's start included; boot CPU per "
             f"replica {', '.join(_fmt(b, 2) for b in three.get('boot_cpu_s_per_replica') or [])} s) | "
             f"{_fmt(rep['cpu_per_event_ratio_3_vs_1'], 2)}× | |",
             f"| takeover after SIGKILL | **{_fmt(lv.get('takeover_after_sigkill_s'), 1)} s** "
             "| ≤ duration + 5 s = 15 s |",
             "| graceful leave (SIGTERM): from its final checkpoint (log line before LeaveGroup) until peers own "
             f"its slots | **{_fmt(lv.get('takeover_after_final_checkpoint_s'), 1)} s** | ≤ 2 s |",
             "| graceful leave (SIGTERM): from the signal, its drain included | "
             f"{_fmt(lv.get('takeover_after_sigterm_s'), 1)} s | |",
             f"| a 4th joins: until balanced (max − min ≤ 1) | **{_fmt(lv.get('join_to_balanced_s'), 1)} s** "
             "| report |",
             f"| start: first replica ready / three balanced | {_fmt(lv.get('first_ready_s'), 1)} s / "
             f"{_fmt(lv.get('three_balanced_s'), 1)} s | |", ""]
    if delay is not None:
        lines += [f"The stack's broker sets `group.initial.rebalance.delay.ms` = {delay}; a broker with Kafka's "
                  "default (3,000 ms) delays the first member of an empty group by that much.", ""]
    return lines


def live_md(d: dict) -> list[str]:
    live = d.get("live")
    if not live:
        return []
    sh = live["shape"]
    over = sh.get("settings_overridden") or {}
    settings = ("default `[relay]` settings except " + ", ".join(f"`{k} = {v}`" for k, v in over.items())
                if over else "DEFAULT `[relay]` settings")
    lines = [f"## Live mode: {sh['tasks']} tasks, {'overridden' if over else 'default'} settings", "",
             f"One `relay run` with {settings} ({sh['workers']} workers, window {sh['window_s']} s, "
             f"confidence {sh['confidence_s']} s, poll {sh['poll_interval_s']} s, start_from {sh['start_from']}) on "
             f"a table of its own whose generation has {sh['vnodes']} vnodes × {sh['shards']} shards = "
             f"{sh['streams']:,} streams ({sh['tasks']} tasks: 3 nodes × 256 vnodes when 768). relay was ready "
             f"{_fmt(live.get('ready_s'), 1)} s after start; every task was within confidence + window + poll of "
             f"now {_fmt(live.get('catch_up_s'), 1)} s later.", ""]
    rows = []
    idle = live.get("idle")
    if idle:
        rows.append(("idle (no traffic)", idle))
    for name, p in live["points"].items():
        rows.append((f"{name}: {_fmt(p['asked_rate'])}/s asked", p["cost"]))
    if rows:
        lines += ["relay's own cost (all its processes, from /proc; reads = `relay_cql_read_duration_seconds_count`, "
                  "checkpoints = `relay_checkpoint_writes_total`, both from relay's /metrics; *read ms* = the mean "
                  "of `relay_cql_read_duration_seconds` over the phase, a worker's wait for a window's rows, and "
                  "*ack ms* the mean of `relay_publish_latency_seconds`, produce() to delivery report, per event):",
                  "", "| phase | s | relay cores | supervisor / workers cores | worker threads main / librdkafka / "
                  "other cores | CQL reads/s | read ms | ack ms | checkpoints/s | machine busy / services / "
                  "measured / other cores |",
                  "|---|---:|---:|---|---|---:|---:|---:|---:|---|"]
        for label, c in rows:
            r = c["cpu_cores_by_role"]
            t = c["worker_thread_cores"]
            lines.append(f"| {label} | {c['seconds']:.0f} | **{c['cpu_cores']:.3f}** | "
                         f"{r.get('supervisor', 0):.3f} / {r.get('worker', 0):.3f} | "
                         f"{t['main']:.3f} / {t['librdkafka']:.3f} / {t['other']:.3f} | "
                         f"{_fmt(c['reads_per_s'], 1)} | {_fmt(c.get('read_mean_ms'), 1)} | "
                         f"{_fmt(c.get('ack_mean_ms'), 1)} | {_fmt(c['checkpoints_per_s'], 1)} | "
                         f"{_cores(c.get('machine_cpu'))} |")
        lines += ["", "Under load, *measured* includes the loadgen processes (their CPU is in the point's table)."
                  + (f" **Not seen on relay's /metrics: {', '.join(live['metrics_missing'])}** (read as 0)."
                     if live.get("metrics_missing") else ""), ""]
    if live["points"]:
        lines += ["### Latency (steady load from loadgen processes of their own, at a lower CPU priority: nice "
                  f"{first_nice(live)})", "",
                  "| point | asked | achieved | loadgen processes (CPU s) | p50 s | p95 s | p99 s | **p99 − confidence "
                  "s** | max seen s | p50 first / last quarter s | steady | delivered | relay CPU µs/event |",
                  "|---|---:|---:|---|---:|---:|---:|---:|---:|---|---|---|---:|"]
        for name, p in live["points"].items():
            never = f"> {_fmt(p['max_observed_s'], 1)} (never)"
            pct = [never if p.get(f"{q}_censored") else _fmt(p[f"{q}_s"], 3) for q in ("p50", "p95", "p99")]
            over = "never" if p.get("p99_censored") else _fmt(p["p99_over_confidence_s"], 3)
            lines.append(
                f"| {name} | {_fmt(p['asked_rate'])}/s | {_fmt(p['achieved_rate'])}/s | "
                f"{p['loadgen_processes']} ({p['loadgen_cpu_s']:.1f}) | {' | '.join(pct)} | **{over}** | "
                f"{_fmt(p['max_observed_s'], 3)} | {_fmt(p['p50_first_quarter_s'], 2)} / "
                f"{_fmt(p['p50_last_quarter_s'], 2)} | {'yes' if p['steady'] else '**no**'} | "
                f"{p['distinct_ids']:,}/{p['events']:,}, {p['duplicates']} dup | "
                f"{_fmt(p['relay_cpu_us_per_event'])} |")
        for name, p in live["points"].items():
            if not p.get("drained_in_time", True):
                lines += ["", f"**Point `{name}`: relay had not published all its events {p['drain_s']:.0f} s after "
                          "the load ended; the rest came later (the next phase ran with relay behind).**"]
        first = next(iter(live["points"].values()))
        lines += ["", f"Latency = broker LogAppendTime − `cdc_time` header, over {first['load_seconds'] or 0:.0f} s "
                  "of load per point (achieved = events / first → last write), then up to confidence + window + "
                  "60 s for relay to publish the rest; an event still unpublished then counts as slower than all "
                  "(\"never\"). The confidence window is the floor: a row is read only once it is that old. "
                  "*Steady* = the last quarter's p50 is within 1 s of the first quarter's. The points run one "
                  "after the other in the same relay process, each into a topic of its own.", ""]
    return lines


def supervisor_md(d: dict) -> list[str]:
    sup = d.get("supervisor_loop")
    if not sup:
        return []
    keys = [k for k in ("idle_loop_ms", "idle_loop_p99_ms", "change_loop_ms", "assign_ms", "first_plan_ms",
                        "progress_msg_ms", "status_ms", "assign_bytes_max", "moved_other_tables") if k in sup]
    return ["## Supervisor loop at scale (`benchmarks/supervisor_loop.py`, no services)", "",
            f"{sup.get('tasks')} tasks ({sup.get('tables')} tables) × {sup.get('workers')} workers.", "",
            "| " + " | ".join(keys) + " |", "|" + "---:|" * len(keys),
            "| " + " | ".join(_fmt(sup[k], 3) if isinstance(sup[k], float) else _fmt(sup[k]) for k in keys) + " |",
            ""]


def sampled_profile_md(d: dict) -> list[str]:
    sp = d.get("sampled_profile")
    if not sp:
        return ["## Where the per-event CPU goes", "", "Not measured in this run (the `profile` step was skipped or "
                "failed, see the errors): it drains the backlog once more under py-spy.", ""]
    w = sp["workers"]
    run = d.get("profiled_drain") or {}
    unprofiled = (d.get("relay") or {}).get(str(w)) or {}
    threads = ", ".join(f"{t.get('main', 0):.1f} / {t.get('librdkafka', 0):.1f} / {t.get('other', 0):.1f}"
                        for t in unprofiled.get("worker_threads_cpu_s") or [])
    lines = ["## Where the per-event CPU goes (py-spy, `benchmarks/sampling.py`)", "",
             f"The cheapest drain ({w} worker(s)) once more, after the measured ones, sampled by py-spy at "
             f"{sp['rate_hz']} Hz in every relay process and thread (`--gil`: only a thread holding the GIL counts, "
             f"so waits for rows, acks and Redis do not; C work that releases the GIL, such as librdkafka's own "
             f"threads, is not seen). µs/event = samples / rate / {sp['events']:,} events. This drain: "
             f"{_fmt(run.get('events_per_s'))} events/s, {_fmt(run.get('cpu_us_per_event'), 1)} µs/event of CPU "
             f"(wait4); sampled: **{sp['us_per_event']} µs/event**. On a busy machine a thread holding the GIL "
             "while it waits for a core is counted too, so the sampled sum can exceed the CPU: compare rows "
             "with each other."
             + (f" The unprofiled drain's worker threads (main / librdkafka / other): {threads} s CPU." if threads
                else ""), ""]
    for title, key in (("process and thread", "threads"), ("worker main thread, by stage", "worker_main_stages"),
                       ("function (own samples)", "own"), ("relay function (cumulative)", "relay_cumulative")):
        rows = sp.get(key) or []
        lines += [f"| {title} | µs/event | share |", "|---|---:|---:|"]
        total = sum(r["us_per_event"] for r in rows) if key in ("threads", "worker_main_stages") else sp["us_per_event"]
        lines += [f"| {r['name'].replace('|', '/')} | {r['us_per_event']:.2f} | "
                  f"{(r['us_per_event'] / total * 100 if total else 0):.0f}% |" for r in rows]
        lines.append("")
    return lines


def profile_md(d: dict) -> list[str]:
    prof = d.get("profile")
    if not prof:
        return []
    lines = ["## Profile: where the per-event time goes", ""]
    top = prof.get("drain")
    if top:
        lines += [f"relay drain with {prof['drain_workers']} worker(s), workers' main threads under cProfile "
                  f"(the driver's I/O thread and librdkafka's threads are not in it: see the thread split above), "
                  f"{top['events']:,} events: **{top['total_own_us_per_event']} µs/event** of profiled wall time "
                  "in those threads (cProfile slows Python code, so these µs are larger than unprofiled ones; "
                  "compare them with each other). Wall time, not CPU: waits show up too (a lock's `acquire` = "
                  "waiting for the driver's I/O thread or a future, `poll`/`flush` = waiting for librdkafka); "
                  "the large libraries are imported before the profiler starts.", "",
                  "| function | own µs/event | cumulative µs/event | calls/event |", "|---|---:|---:|---:|"]
        lines += [f"| `{r['function']}` | {r['own_us_per_event']:.2f} | {r['cum_us_per_event']:.2f} | "
                  f"{r['calls_per_event']:.3f} |" for r in top["top"]]
        lines.append("")
    files = prof.get("files") or {}
    if files:
        lines += ["Full summaries (top functions by own and by cumulative time): "
                  + ", ".join(f"`{Path(f).name}`" for f in files.values()) + " beside this file.", ""]
    return lines


def markdown(s: dict) -> str:
    d = s["details"]
    m = s["machine"]
    b = d.get("backlog", {})
    lines = [
        "# relay benchmark results",
        "",
        f"Run `{d.get('run_id', '?')}` at {d.get('started', '?')} on {m.get('cores')} cores ({m.get('cpu')}), "
        f"{m.get('memory_gib')} GiB; Python {m.get('python')}, confluent-kafka {m.get('confluent_kafka')} "
        f"(librdkafka {m.get('librdkafka')}), scylla-driver {m.get('scylla_driver')}; Cassandra {m.get('cassandra')}, "
        f"Kafka {m.get('kafka')}, Redis {m.get('redis')} on the same machine (loopback). Load average at start: "
        f"{m.get('load_average_at_start')}. relay at commit `{m.get('relay_commit')}`"
        + (f" with local changes to {', '.join(m['relay_dirty_files'])}" if m.get("relay_dirty_files") else "")
        + f". Command: `{d.get('command', 'python -m benchmarks')}`; {_fmt(d.get('total_s'))} s in all.",
        "",
    ]
    lines += targets_md(s)
    if b:
        lines += [
            f"Backlog: **{b['events']:,} events**, ~{b['payload_bytes']} B payloads, {b['aggregates']:,} aggregates, "
            f"one generation of {b['vnodes']} vnodes × {b['shards']} shards = {b['streams']} streams "
            f"({b['tasks']} tasks); written once in {b['load_seconds']:.1f} s "
            f"({b['load_events_per_s']:,.0f} events/s, emulated CDC).",
            "",
        ]
    lines += ["## Throughput (drain the whole backlog from scratch)", "",
              "| what | events/s | vs relay best | CPU µs/event | CPU s / 1,000 events | notes |",
              "|---|---:|---:|---:|---:|---|"]
    best = max(s["relay_events_per_s"].values(), default=None)
    for w, r in d.get("relay", {}).items():
        ds = (d.get("relay_drains") or {}).get(w) or [r]
        rate, cpu_us = s["relay_events_per_s"][w], s["relay_cpu_us_per_event"][w]
        spread = ""
        if len(ds) > 1:
            rates = sorted(x["events_per_s"] for x in ds)
            cpus = sorted(x["cpu_us_per_event"] for x in ds)
            spread = (f"median of {len(ds)} drains (events/s {_fmt(rates[0])}–{_fmt(rates[-1])}, µs/event "
                      f"{_fmt(cpus[0], 1)}–{_fmt(cpus[-1], 1)}), all complete: "
                      f"{'yes' if all(x['complete'] for x in ds) else '**NO**'}; the median-CPU drain: ")
        note = (spread + f"wall {r['wall_s']:.1f} s = start {_fmt(r['startup_s'], 1)} s + publishing "
                f"{_fmt(r['publish_span_s'], 1)} s + exit {_fmt(r['tail_s'], 1)} s; "
                f"delivered {r['delivered']['distinct_ids']:,} ids, {r['delivered']['duplicates']} dup"
                + ("" if r["complete"] else " **INCOMPLETE**"))
        lines.append(f"| relay, {w} worker{'s' if int(w) > 1 else ''} | {_fmt(rate)} | "
                     f"{_fmt(rate / best if best else None, 2)}× | {_fmt(cpu_us, 1)} | "
                     f"{_fmt(cpu_us / 1000 if cpu_us is not None else None, 3)} | {note} |")
    for key, label in (("raw_read", "raw read (Discovery + LogReader, 1 process)"),
                       ("raw_produce", "raw produce (same records, 1 producer)"),
                       ("naive", "naive relay (flush() per event)")):
        r = d.get(key)
        if not r:
            continue
        n = r.get("rows", r.get("events"))
        note = f"{n:,} events in {r['seconds']:.2f} s"
        if key == "raw_read":
            note += f", {r['queries']:,} queries"
        if key == "naive":
            note += f" ({r['ms_per_event']} ms/event)"
            runs = d.get("naive_runs") or []
            if len(runs) > 1:
                rates = sorted(x["events_per_s"] for x in runs)
                note += f"; the median of {len(runs)} runs ({_fmt(rates[0])}–{_fmt(rates[-1])} events/s)"
        lines.append(f"| {label} | {_fmt(r['events_per_s'])} | "
                     f"{_fmt(r['events_per_s'] / best if best else None, 2)}× | {_fmt(r['cpu_us_per_event'], 1)} | "
                     f"{_fmt(r['cpu_us_per_event'] / 1000, 3)} | {note} |")
    lines += ["",
              f"Ratios (the fastest worker count's median): relay / raw read = **{_fmt(s['relay_vs_raw_read'], 2)}**, "
              f"relay / raw produce = **{_fmt(s['relay_vs_raw_produce'], 2)}**, "
              f"relay / naive = **{_fmt(s['relay_vs_naive'], 1)}** (relay's whole process against the naive "
              f"relay's loop; from relay's first to its last record appended: "
              f"{_fmt(s.get('relay_vs_naive_publishing'), 1)}). Least CPU per event: "
              f"**{_fmt(s['cpu_us_per_event_best'], 1)} µs** with {_fmt(s['cpu_us_per_event_best_workers'])} "
              f"worker(s).", ""]
    if d.get("relay"):
        lines += ["### relay processes", "",
                  "| workers | CPU total s (wait4) | supervisor s | workers s | worker threads: main / librdkafka / "
                  "other s | peak RSS per worker MB | supervisor RSS MB | Redis B/event (used_memory Δ) | "
                  "Redis keys | machine busy / services / relay / other cores |",
                  "|---:|---:|---:|---:|---|---|---:|---:|---:|---|"]
        for w, r in d["relay"].items():
            threads = ", ".join(f"{t['main']:.1f}/{t['librdkafka']:.1f}/{t['other']:.1f}"
                                for t in r["worker_threads_cpu_s"])
            lines.append(f"| {w} | {r['cpu_s']:.1f} | {r['supervisor_cpu_s']:.1f} | "
                         f"{', '.join(f'{x:.1f}' for x in r['worker_cpu_s'])} | {threads} | "
                         f"{', '.join(f'{x:.0f}' for x in r['worker_peak_rss_mb'])} | "
                         f"{r['supervisor_peak_rss_mb']:.0f} | {_fmt(r.get('redis_bytes_per_event'), 1)} | "
                         f"{_fmt(r.get('redis_keys'))} | {_cores(r.get('machine_cpu'))} |")
        lines += ["", "Redis B/event = INFO `used_memory` after − before the drain / events delivered: format-agnostic "
                  "(a key per event or members of shared sets), includes the keyspace's own growth, and other "
                  "clients of the same Redis add noise; the target figure is the median of the drains.", ""]
    if d.get("what_if"):
        lines += ["### What-if runs (relay unchanged, one config override)", "",
                  "| variant | workers | events/s | vs same workers, defaults | publishing s | CPU µs/event | "
                  "override | delivered |", "|---|---:|---:|---:|---:|---:|---|---|"]
        for name, r in d["what_if"].items():
            base = d.get("relay", {}).get(str(r["workers"]), {}).get("events_per_s")
            env = ", ".join(f"`{k}={v}`" for k, v in r["env"].items())
            lines.append(f"| {name}: {r.get('description', '')} | {r['workers']} | {_fmt(r['events_per_s'])} | "
                         f"{_fmt(r['events_per_s'] / base if base else None, 2)}× | {_fmt(r['publish_span_s'], 1)} | "
                         f"{_fmt(r['cpu_us_per_event'], 1)} | {env} | {r['delivered']['distinct_ids']:,} ids, "
                         f"{r['delivered']['duplicates']} dup{'' if r['complete'] else ' **INCOMPLETE**'} |")
        lines.append("")
    st = d.get("raw_produce", {}).get("stage_us_per_event")
    if st:
        lines += ["### Stage costs in one process (µs of wall time per event, same events)", "",
                  "| " + " | ".join(st) + " |", "|" + "---:|" * len(st),
                  "| " + " | ".join(f"{v:.1f}" for v in st.values()) + " |", ""]
    lines += live_md(d)
    lines += replicas_md(d)
    lines += supervisor_md(d)
    disc = d.get("discovery")
    if disc:
        lines += ["## Discovery at scale (fresh process)", "",
                  "| streams | vnodes × shards | tasks | generations() s | tasks_of s | assign(4 slots) s | total s | "
                  "peak RSS MB | process wall s | cached generations() s | tasks_of + assign again s |",
                  "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
                  f"| {disc['streams']:,} | {disc['vnodes']} × {disc['shards']} | {disc['tasks']} | "
                  f"{disc['generations_s']:.3f} | {disc['tasks_of_s']:.3f} | {disc['assign_s']:.3f} | "
                  f"**{disc['total_s']:.3f}** | {disc['peak_rss_mb']:.0f} | {disc['process_wall_s']:.2f} | "
                  f"{disc['generations_cached_s']:.3f} | {disc['assign_repeat_s'] + disc['tasks_of_repeat_s']:.3f} |",
                  ""]
    lines += sampled_profile_md(d)
    lines += profile_md(d)
    if d.get("errors"):
        lines += ["## Steps that failed", ""] + [f"- {k}: {v.splitlines()[0] if v else ''}"
                                                  for k, v in d["errors"].items()] + [""]
    if d.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in d["notes"]] + [""]
    return "\n".join(lines)


def plot(s: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = {int(w): v for w, v in s["relay_events_per_s"].items()}
    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=120)
    if rates:
        ws = sorted(rates)
        ax.plot(ws, [rates[w] for w in ws], "o-", color="tab:blue", lw=2, label="relay (process start → exit)")
        span = {int(w): v for w, v in s["relay_publish_span_events_per_s"].items() if v}
        if span:
            ax.plot(sorted(span), [span[w] for w in sorted(span)], "s--", color="tab:blue", alpha=0.5,
                    label="relay (first → last publish)")
        ax.set_xticks(ws)
    styles = (("raw_read_events_per_s", "raw read", "tab:green"),
              ("raw_produce_events_per_s", "raw produce", "tab:orange"),
              ("naive_events_per_s", "naive relay (flush per event)", "tab:red"))
    for key, label, color in styles:
        if s.get(key):
            ax.axhline(s[key], color=color, ls=":", lw=1.5, label=f"{label}: {s[key]:,.0f}/s")
    ax.set_xlabel("relay worker processes")
    ax.set_ylabel("events / s (log scale)")
    ax.set_yscale("log")  # raw produce is an order of magnitude above the rest
    from matplotlib.ticker import FuncFormatter

    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,.0f}"))
    b = s["details"].get("backlog", {})
    ax.set_title(f"relay throughput, {b.get('events', 0):,} events of ~{b.get('payload_bytes', '?')} B "
                 f"({s['machine'].get('cores')} cores, all services local)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write(results: dict, out_dir: Path) -> tuple[dict, str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    s = summary(results)
    md = markdown(s)
    (out_dir / "latest.json").write_text(json.dumps(s, indent=1, default=str) + "\n")
    (out_dir / "latest.md").write_text(md + "\n")
    try:
        plot(s, out_dir / "throughput.png")
    except ImportError:
        print("matplotlib is missing: no plot (pip install -e '.[bench]')")
    return s, md


if __name__ == "__main__":  # re-render latest.md / throughput.png from a results directory's latest.json
    import sys

    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "results"
    write(json.loads((out_dir / "latest.json").read_text())["details"], out_dir)
    print(f"rendered {out_dir / 'latest.md'} and {out_dir / 'throughput.png'}")

"""`python -m benchmarks` (what `make bench` runs): every measurement in one run, on the local stack.

    python -m benchmarks                     # N=200,000, workers 1,2,4; live mode at 768 tasks
    python -m benchmarks --events 20000 --workers 1,2 --latency-seconds 20 --idle-seconds 10
    python -m benchmarks --smoke             # tiny: checks the suite end to end in about two minutes
    python -m benchmarks --skip naive,discovery

Environment defaults: BENCH_EVENTS, BENCH_AGGREGATES, BENCH_WORKERS, BENCH_LATENCY_SECONDS,
BENCH_IDLE_SECONDS, BENCH_NAIVE_EVENTS; BENCH_PROFILE=1 runs relay's workers under cProfile
(see profiling.py). See benchmarks/README.md for how to read the output.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

from benchmarks import common
from benchmarks.common import Stack, log

# live = idle + latency (one relay process); --skip idle or latency drops one half of it.
STEPS = ("raw-read", "raw-produce", "relay", "what-if", "profile", "naive", "idle", "latency", "live", "replicas",
         "discovery", "supervisor-loop")
# The live run's relay settings in a smoke run (a full run uses relay's defaults): small windows keep it short.
SMOKE_LIVE_SETTINGS = "window_seconds=1,confidence_seconds=2,poll_interval_seconds=0.1"
DEFAULT_OUT = common.REPO / "benchmarks" / "results"
# What-if runs: relay unchanged, one config override, at 1 worker and the best worker count
# (skip with --skip what-if).
WHAT_IF = {"window60": ({"RELAY_RELAY__WINDOW_SECONDS": "60"},
                        "window_seconds = 60 instead of 10: about a sixth of the windows for the same rows, so the "
                        "difference is what relay spends per window (query, flush, Redis round trips, checkpoint)")}


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description="relay benchmarks on the local stack")
    p.add_argument("--events", type=int, default=None,
                   help="backlog size (default $BENCH_EVENTS or 200000; smoke: 1000)")
    p.add_argument("--aggregates", type=int, default=None, help="default $BENCH_AGGREGATES or 5000 (smoke: 100)")
    p.add_argument("--payload-bytes", type=int, default=1000)
    p.add_argument("--workers", default=None, help="comma-separated worker counts (default $BENCH_WORKERS or 1,2,4)")
    p.add_argument("--vnodes", type=int, default=256,
                   help="vnodes of the backlog's generation (default 256: one Scylla node's num_tokens)")
    p.add_argument("--shards", type=int, default=2, help="shards per vnode = streams per task (default 2)")
    p.add_argument("--live-vnodes", type=int, default=None,
                   help="vnodes of the live run's generation (default 768: 3 nodes x 256 vnodes; smoke: 16)")
    p.add_argument("--live-shards", type=int, default=4, help="shards per vnode in the live run (default 4)")
    p.add_argument("--live-workers", "--latency-workers", dest="live_workers", type=int, default=None,
                   help="relay workers in the live run (default: relay's default, [relay] workers = CPU count)")
    p.add_argument("--live-settings", default=None,
                   help="comma-separated [relay] overrides for the live run, e.g. window_seconds=1 (default none: "
                        f"relay's defaults; smoke: {SMOKE_LIVE_SETTINGS})")
    p.add_argument("--idle-seconds", type=float, default=None,
                   help="idle measurement (default $BENCH_IDLE_SECONDS or 30; smoke: 3)")
    p.add_argument("--latency-seconds", type=float, default=None,
                   help="load duration of each latency point (default $BENCH_LATENCY_SECONDS or 60; smoke: 5)")
    p.add_argument("--latency-rate", type=float, default=None,
                   help="events/s the 'max' latency point asks for (default: relay's best drain rate); the "
                        "'half' point asks half of what it achieved")
    p.add_argument("--latency-low-rate", "--latency-light-rate", dest="latency_low_rate", type=float,
                   default=100.0, help="events/s of the second latency point (default 100; 0 = don't run it)")
    p.add_argument("--loadgen-processes", type=int, default=0,
                   help="loadgen processes per latency point (default 0: enough for the rate, at most 4)")
    p.add_argument("--naive-events", type=int, default=None, help="default $BENCH_NAIVE_EVENTS or 5000 (smoke: 100)")
    p.add_argument("--repeat", type=int, default=None,
                   help="drains per worker count and naive runs, interleaved; figures are their medians "
                        "(default $BENCH_REPEAT or 3; smoke: 2)")
    p.add_argument("--discovery-vnodes", type=int, default=768)
    p.add_argument("--discovery-shards", type=int, default=8)
    p.add_argument("--loadgen-concurrency", type=int, default=128)
    p.add_argument("--skip", default="", help=f"comma-separated steps to skip: {', '.join(STEPS)}")
    p.add_argument("--smoke", action="store_true", help="tiny sizes and 5 s latency: checks that everything runs")
    p.add_argument("--out", type=Path, default=None,
                   help="results directory (default benchmarks/results; smoke: benchmarks/results/smoke)")
    p.add_argument("--keep", action="store_true", help="keep the run's keyspaces, topics and Redis keys")
    p.add_argument("--profile", action="store_true", help="run relay's workers under cProfile (= BENCH_PROFILE=1)")
    a = p.parse_args(argv)
    smoke = a.smoke
    a.events = a.events or (1000 if smoke else _env_int("BENCH_EVENTS", 200_000))
    a.aggregates = a.aggregates or (100 if smoke else _env_int("BENCH_AGGREGATES", 5000))
    workers = a.workers or ("1,2" if smoke else os.environ.get("BENCH_WORKERS", "1,2,4"))
    a.workers = [int(w) for w in workers.split(",") if w.strip()]
    if a.latency_seconds is None:
        a.latency_seconds = 5.0 if smoke else float(os.environ.get("BENCH_LATENCY_SECONDS", 60))
    if a.idle_seconds is None:
        a.idle_seconds = 3.0 if smoke else float(os.environ.get("BENCH_IDLE_SECONDS", 30))
    a.naive_events = a.naive_events or (100 if smoke else _env_int("BENCH_NAIVE_EVENTS", 5000))
    a.repeat = a.repeat or (2 if smoke else _env_int("BENCH_REPEAT", 3))
    if smoke and a.vnodes == 256:
        a.vnodes = 16
    a.live_vnodes = a.live_vnodes or (16 if smoke else 768)
    if a.live_settings is None:
        a.live_settings = SMOKE_LIVE_SETTINGS if smoke else ""
    try:
        a.live_settings = _settings(a.live_settings)
    except ValueError as exc:
        p.error(f"--live-settings: {exc}")
    a.skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    unknown = a.skip - set(STEPS)
    if unknown:
        p.error(f"--skip: unknown step(s) {', '.join(sorted(unknown))}; known: {', '.join(STEPS)}")
    if a.events < 1 or a.aggregates < 1 or not a.workers or min(a.workers) < 1 or a.repeat < 1:
        p.error("--events, --aggregates, --workers and --repeat must be positive")
    a.out = a.out or (DEFAULT_OUT / "smoke" if smoke else DEFAULT_OUT)
    if a.profile:
        os.environ["BENCH_PROFILE"] = "1"
    return a


def _settings(text: str) -> dict:
    """'window_seconds=1,start_from=now' -> {"window_seconds": 1.0, "start_from": "now"}."""
    out: dict = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{item!r} is not KEY=VALUE")
        try:
            out[key.strip()] = int(value) if value.strip().lstrip("-").isdigit() else float(value)
        except ValueError:
            out[key.strip()] = value.strip()
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from benchmarks import backlog, baselines, report

    stack = Stack.from_env()
    if args.smoke:
        os.environ.setdefault("BENCH_QUIET_MAX_WAIT_S", "0")  # the smoke run checks the suite, not figures
    common.precompile_relay()
    run_id = time.strftime("bench_%m%d_%H%M%S")
    workdir = common.WORKDIR / run_id
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict = {"run_id": run_id, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "smoke": args.smoke,
                     "args": {k: (sorted(v) if isinstance(v, set) else str(v) if isinstance(v, Path) else v)
                              for k, v in vars(args).items()},
                     "notes": [], "errors": {},
                     "command": " ".join(["python -m benchmarks", *(sys.argv[1:] if argv is None else argv)])}
    log(f"run {run_id}: {args.events:,} events, workers {args.workers}; live mode on {args.live_vnodes} vnodes x "
        f"{args.live_shards} shards: idle {args.idle_seconds:.0f}s, latency {args.latency_seconds:.0f}s per point; "
        f"work files in {workdir}")
    results["machine"] = common.machine_info(stack)
    t_all = time.monotonic()
    try:
        bl = backlog.write_backlog(stack, workdir, run_id, events=args.events, aggregates=args.aggregates,
                                   vnodes=args.vnodes, shards=args.shards, payload_bytes=args.payload_bytes,
                                   concurrency=args.loadgen_concurrency)
        results["backlog"] = bl.to_dict()

        def step(name: str, fn):
            if name in args.skip:
                return None
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - one failed measurement must not lose the others
                traceback.print_exc()
                results["errors"][name] = f"{exc.__class__.__name__}: {exc}"[:2000]
                log(f"{name} FAILED: {exc}")
                return None

        r = step("raw-read", lambda: baselines.run_raw_read(stack, workdir, bl))
        if r:
            results["raw_read"] = r
        r = step("raw-produce", lambda: baselines.run_raw_produce(stack, workdir, bl))
        if r:
            results["raw_produce"] = r
        if "relay" not in args.skip:
            # One drain of a worker count swings by a third on a shared machine (a compaction, a busy
            # neighbour): each count drains `repeat` times, in rounds, and its figures are the medians.
            drains: dict[str, list[dict]] = {}
            for i in range(args.repeat):
                for w in args.workers:
                    variant = f"d{i + 1}" if args.repeat > 1 else ""
                    r = step("relay", lambda w=w, variant=variant: backlog.run_relay(stack, workdir, bl, w,
                                                                                     variant=variant))
                    if r:
                        drains.setdefault(str(w), []).append(r)
            results["relay"] = {w: median_run(rs, "cpu_us_per_event") for w, rs in drains.items()}
            results["relay_drains"] = {w: [_drain_figures(r) for r in rs] for w, rs in drains.items()}
        if "what-if" not in args.skip and results.get("relay"):
            results["what_if"] = {}
            best = _best_workers(results)
            for w in sorted({min(args.workers), best}):
                for name, (env, why) in WHAT_IF.items():
                    r = step("what-if", lambda env=env, name=name, w=w: backlog.run_relay(
                        stack, workdir, bl, w, variant=name, extra_env=env))
                    if r:
                        r["description"] = why
                        results["what_if"][f"{name}_w{w}"] = r
        cheapest = _cheapest_workers(results)
        if cheapest is not None and "profile" not in args.skip and not os.environ.get("BENCH_PROFILE"):
            r = step("profile", lambda: sampled_drain(stack, workdir, bl, cheapest))
            if r:
                results["profiled_drain"], results["sampled_profile"] = r
        naive = []
        for i in range(args.repeat):
            r = step("naive", lambda i=i: baselines.run_naive(stack, workdir, bl, args.naive_events,
                                                              tag=f"naive{i + 1}" if args.repeat > 1 else "naive"))
            if r:
                naive.append(r)
        if naive:
            results["naive"] = median_run(naive, "events_per_s")
            results["naive_runs"] = [_drain_figures(r) for r in naive]
        if "live" not in args.skip and not {"idle", "latency"} <= args.skip:
            r = step("live", lambda: run_live(args, results, bl, stack, workdir, run_id))
            if r:
                results["live"] = r
        if "replicas" not in args.skip and not args.smoke:
            r = step("replicas", lambda: run_replicas(stack, workdir, bl))
            if r:
                results["replicas"] = r
        if "discovery" not in args.skip:
            from benchmarks import discovery

            r = step("discovery", lambda: discovery.build_and_measure(
                stack, workdir, f"{run_id}_disc", vnodes=args.discovery_vnodes, shards=args.discovery_shards))
            if r:
                results["discovery"] = r
        r = step("supervisor-loop", lambda: supervisor_loop(results, workdir))
        if r:
            results["supervisor_loop"] = r
        if os.environ.get("BENCH_PROFILE"):
            best = _best_workers(results)
            results["profile"] = profile_results(results, workdir, args.out, best, f"w{best}")
    finally:
        results["total_s"] = round(time.monotonic() - t_all, 1)
        end_rev = common._relay_revision()
        if list(end_rev) != [results["machine"].get("relay_commit"), results["machine"].get("relay_dirty_files")]:
            results["notes"].append(f"relay's code changed during the run (now commit {end_rev[0]}, local changes "
                                    f"{end_rev[1] or 'none'}): runs may have used different code")
        results["notes"] += standing_notes(args, results)
        if not args.keep:
            cleanup(stack, run_id)
    summary, md = report.write(results, args.out)
    print()
    print(md)
    log(f"wrote {args.out / 'latest.md'}, {args.out / 'latest.json'}, {args.out / 'throughput.png'} "
        f"in {results['total_s']:.0f}s")
    if results["errors"]:
        log(f"steps that failed: {', '.join(results['errors'])}")
        return 1
    if not summary["all_delivered"]:
        log("some run did not deliver every event exactly once: see the tables")
        return 1
    return 0


def run_replicas(stack: Stack, workdir: Path, bl) -> dict:
    """Issue 10's figures on the same backlog: drained by 1 replica, by 3 (1 worker each), and by 1
    of 3 workers (fresh keyspace, topic and dedup prefix each), and a live group of 3 on a table of its own: takeover
    after SIGKILL, a 4th joining, graceful leave (benchmarks.replicas)."""
    from benchmarks import replicas

    out: dict = {"slots": replicas.SLOTS, "broker_initial_rebalance_delay_ms": replicas._initial_delay()}
    out["drain"] = [replicas.drain(stack, workdir, bl, n, w) for n, w in replicas.DRAINS]
    out.update(replicas.ratios(*out["drain"]))
    out["live"] = replicas.live(stack, workdir, bl)
    return out


def median_run(runs: list[dict], key: str) -> dict:
    """The run whose `key` is the median (the lower middle of an even count)."""
    return sorted(runs, key=lambda r: r[key])[(len(runs) - 1) // 2]


def _drain_figures(r: dict) -> dict:
    return {k: r.get(k) for k in ("events_per_s", "cpu_us_per_event", "publish_span_s", "startup_s",
                                  "ms_per_event", "complete")}


def _pick_workers(results: dict, key: str, pick) -> int | None:
    """The worker count whose drains' median `key` is the least or the most (`pick`), by the same
    medians the report's summary ranks counts by: the profiled and what-if drains then run at the
    counts the summary names."""
    from benchmarks.report import median

    drains = results.get("relay_drains") or {}
    medians = {w: median([d.get(key) for d in ds]) for w, ds in drains.items()}
    medians = {w: v for w, v in medians.items() if v is not None}
    return int(pick(medians, key=medians.get)) if medians else None


def _cheapest_workers(results: dict) -> int | None:
    """The worker count whose drains cost the least CPU per event (the CPU target's "best")."""
    return _pick_workers(results, "cpu_us_per_event", min)


def _best_workers(results: dict) -> int | None:
    """The fastest worker count."""
    return _pick_workers(results, "events_per_s", max)


def latency_rate(args, results: dict, bl) -> tuple[float, str]:
    if args.latency_rate:
        return args.latency_rate, f"{args.latency_rate:,.0f} events/s (--latency-rate)"
    from benchmarks.report import median

    w = _best_workers(results)
    if w is None:
        rate = bl.load_events_per_s
        return rate, f"{rate:,.0f} events/s = loadgen's backlog rate (no relay throughput measured)"
    # the summary's relay rate: the fastest worker count's median drain
    best = median([d.get("events_per_s") for d in results["relay_drains"][str(w)]])
    return best, f"{best:,.0f} events/s = relay's best drain rate ({w} worker(s), median of its drains)"


def run_live(args, results: dict, bl, stack: Stack, workdir: Path, run_id: str) -> dict:
    """Idle cost, then the latency points, in one relay process on a live_vnodes x live_shards generation."""
    from benchmarks import live, loadproc

    points = []
    if "latency" not in args.skip:
        rate, why = latency_rate(args, results, bl)
        procs = args.loadgen_processes or loadproc.processes_for(rate, bl.load_events_per_s)
        # The max rate of the pipeline is the lower of relay's (its best drain rate) and the writers'
        # beside relay. Writing costs this machine far more CPU than relay's reading (the database ~1 ms
        # and the emulating writer ~0.5 ms per event), so here the writers are the ceiling, far below
        # relay's: 'max' asks for relay's rate and measures what the writers reach (both cores
        # saturated, its latency is the machine's); 'half' asks half of that.
        results["notes"].append(f"latency point 'max': {why}, written by {procs} loadgen process(es) "
                                f"(one process wrote {bl.load_events_per_s:,.0f}/s during the backlog); its "
                                "achieved rate is the max rate of the pipeline on this machine")
        points.append(("max", rate, procs))
        points.append(("half", live.half_of_achieved("max"), procs))
        results["notes"].append("latency point 'half': half of the rate the 'max' point's writers reached, "
                                "i.e. half of the max rate (the issue's 'half of max rate')")
        low = args.latency_low_rate
        if low:
            points.append(("low", low, args.loadgen_processes or loadproc.processes_for(low, bl.load_events_per_s)))
    if args.live_settings:
        results["notes"].append("the live run's relay settings were overridden: "
                                + ", ".join(f"{k} = {v}" for k, v in args.live_settings.items())
                                + " (figures are not at relay's defaults)")
    return live.run_live(stack, workdir, run_id, vnodes=args.live_vnodes, shards=args.live_shards,
                         workers=args.live_workers, idle_seconds=0.0 if "idle" in args.skip else args.idle_seconds,
                         points=points, seconds=args.latency_seconds, aggregates=args.aggregates,
                         payload_bytes=args.payload_bytes, settings=args.live_settings)


def supervisor_loop(results: dict, workdir: Path, tasks: int = 3072, workers: int = 16) -> dict | None:
    """benchmarks/supervisor_loop.py's measure(tasks, workers), in a fresh process; a note if it is missing."""
    import importlib.util

    if importlib.util.find_spec("benchmarks.supervisor_loop") is None:
        results["notes"].append("benchmarks/supervisor_loop.py is missing: supervisor_loop_ms_3072x16 was not "
                                "measured")
        return None
    log(f"supervisor loop: {tasks} tasks x {workers} workers (benchmarks.supervisor_loop, no services)")
    code = ("import json, sys\nfrom benchmarks.supervisor_loop import measure\n"
            f"sys.stdout.write(json.dumps(measure(tasks={tasks}, workers={workers})) + '\\n')\n")
    out = common.run_json([common.python(), "-c", code], log_path=workdir / "supervisor-loop.log", timeout=900)
    log(f"supervisor loop: {out}")
    return out


def standing_notes(args, results: dict) -> list[str]:
    notes = ["Cassandra, Kafka, Redis, loadgen and relay share this machine's cores; absolute numbers are for "
             "comparing runs and baselines on the same machine, not for sizing a Scylla cluster.",
             "relay runs drain the whole backlog from generation start with fresh checkpoints, dedup prefix and "
             "topic; events/s = backlog / (process start → exit), which includes interpreter start, worker spawn "
             "and shutdown; 'publishing' is first → last record by broker LogAppendTime.",
             "CPU of relay = wait4 rusage of the supervisor (its own + the workers it reaped); per-process and "
             "per-thread figures are /proc samples taken every 0.2 s.",
             f"naive relay ran on the first {args.naive_events:,} events of the backlog.",
             "Payloads are loadgen's JSON padded with 'x' to ~1 KB: lz4 compresses them far better than real data."]
    if args.smoke:
        notes.insert(0, "SMOKE RUN: tiny sizes, numbers are meaningless.")
    return notes


def sampled_drain(stack: Stack, workdir: Path, bl, workers: int) -> tuple[dict, dict]:
    """The cheapest drain once more, after the measured ones, under py-spy (benchmarks/sampling.py):
    where its per-event CPU goes, by process, thread, stage and function. The measured drains
    stay unobserved."""
    from benchmarks import backlog, sampling

    spy = sampling.Sampler(workdir / f"py-spy-w{workers}.raw")
    run = backlog.run_relay(stack, workdir, bl, workers, variant="sampled", on_start=spy.attach)
    summary = sampling.summarize(spy.wait(), bl.events, spy.rate_hz)
    summary["workers"] = workers
    summary["raw"] = str(spy.out)
    return run, summary


def profile_results(results: dict, workdir: Path, out: Path, workers: int | None, tag: str) -> dict:
    """Summaries of every profile of the run, and where the per-event time of drain `tag` went."""
    from benchmarks.profiling import top_functions

    prof: dict = {"files": summarize_profiles(workdir, out)}
    if workers is not None:
        prof["drain_workers"] = workers
        prof["drain"] = top_functions(sorted((workdir / f"profile-{tag}").glob("worker*.prof")),
                                      results["backlog"]["events"])
    return prof


def summarize_profiles(workdir: Path, out: Path) -> dict:
    from benchmarks.profiling import summarize

    found = {}
    out.mkdir(parents=True, exist_ok=True)
    for d in sorted(workdir.glob("profile-*")):
        for role in ("worker", "supervisor"):
            files = sorted(d.glob(f"{role}*.prof"))
            if files:
                name = f"{d.name}-{role}s" if role == "worker" else f"{d.name}-{role}"
                target = out / f"{name}.txt"
                target.write_text(summarize(files))
                found[name] = str(target)
    for prof in sorted(workdir.glob("*.prof")):
        text = summarize([prof])
        target = out / f"profile-{prof.stem}.txt"
        target.write_text(text)
        found[prof.stem] = str(target)
    return found


def cleanup(stack: Stack, run_id: str) -> None:
    log(f"cleanup: dropping keyspaces {run_id}*, topics {run_id}.*, Redis keys {run_id}:*")
    for what, fn in (("keyspaces", lambda: common.drop_keyspaces(stack, run_id)),
                     ("topics", lambda: common.delete_topics(stack.kafka, common.list_topics(stack.kafka,
                                                                                             run_id + "."))),
                     # relay.slots.<relay keyspace>: the leases topic of each relay run (DESIGN §5b)
                     ("leases topics", lambda: common.delete_topics(
                         stack.kafka, common.list_topics(stack.kafka, f"relay.slots.{run_id}"))),
                     ("redis", lambda: common.redis_delete_prefix(stack, run_id + ":"))):
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - cleanup is best effort
            log(f"cleanup of {what} failed: {exc}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)


"""`python -m benchmarks` (what `make bench` runs): every measurement in one run, on the local stack.

    python -m benchmarks                     # N=200,000, workers 1,2,4, 60 s latency
    python -m benchmarks --events 20000 --workers 1,2 --latency-seconds 20
    python -m benchmarks --smoke             # tiny: checks the suite end to end in about a minute
    python -m benchmarks --skip naive,discovery

Environment defaults: BENCH_EVENTS, BENCH_AGGREGATES, BENCH_WORKERS, BENCH_LATENCY_SECONDS,
BENCH_NAIVE_EVENTS; BENCH_PROFILE=1 runs relay's workers under cProfile (see profiling.py).
See benchmarks/README.md for how to read the output.
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

STEPS = ("raw-read", "raw-produce", "relay", "what-if", "naive", "latency", "discovery")
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
    p.add_argument("--latency-seconds", type=float, default=None,
                   help="steady-load duration (default $BENCH_LATENCY_SECONDS or 60; smoke: 5)")
    p.add_argument("--latency-rate", type=float, default=None,
                   help="events/s for the latency run (default: half of relay's best, capped at loadgen's rate)")
    p.add_argument("--latency-workers", type=int, default=None, help="default: the best worker count")
    p.add_argument("--latency-light-rate", type=float, default=100.0,
                   help="if relay does not keep up at the main latency rate, measure again at this rate "
                        "(default 100 events/s; 0 = don't)")
    p.add_argument("--naive-events", type=int, default=None, help="default $BENCH_NAIVE_EVENTS or 5000 (smoke: 100)")
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
    a.naive_events = a.naive_events or (100 if smoke else _env_int("BENCH_NAIVE_EVENTS", 5000))
    if smoke and a.vnodes == 256:
        a.vnodes = 16
    a.skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    unknown = a.skip - set(STEPS)
    if unknown:
        p.error(f"--skip: unknown step(s) {', '.join(sorted(unknown))}; known: {', '.join(STEPS)}")
    if a.events < 1 or a.aggregates < 1 or not a.workers or min(a.workers) < 1:
        p.error("--events, --aggregates and --workers must be positive")
    a.out = a.out or (DEFAULT_OUT / "smoke" if smoke else DEFAULT_OUT)
    if a.profile:
        os.environ["BENCH_PROFILE"] = "1"
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from benchmarks import backlog, baselines, report

    stack = Stack.from_env()
    run_id = time.strftime("bench_%m%d_%H%M%S")
    workdir = common.WORKDIR / run_id
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict = {"run_id": run_id, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "smoke": args.smoke,
                     "args": {k: (sorted(v) if isinstance(v, set) else str(v) if isinstance(v, Path) else v)
                              for k, v in vars(args).items()},
                     "notes": [], "errors": {}}
    log(f"run {run_id}: {args.events:,} events, workers {args.workers}, latency {args.latency_seconds:.0f}s; "
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
            results["relay"] = {}
            for w in args.workers:
                r = step("relay", lambda w=w: backlog.run_relay(stack, workdir, bl, w))
                if r:
                    results["relay"][str(w)] = r
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
        r = step("naive", lambda: baselines.run_naive(stack, workdir, bl, args.naive_events))
        if r:
            results["naive"] = r
        if "latency" not in args.skip:
            from benchmarks import latency

            rate, why = latency_rate(args, results, bl)
            workers = args.latency_workers or _best_workers(results) or max(args.workers)
            results["notes"].append(f"latency load: {why}")
            r = step("latency", lambda: latency.run_latency(stack, workdir, run_id, rate=rate,
                                                            seconds=args.latency_seconds, workers=workers,
                                                            aggregates=args.aggregates,
                                                            payload_bytes=args.payload_bytes))
            if r:
                results["latency"] = r
            light = args.latency_light_rate
            if r and not r["steady"] and light and light < rate:
                results["notes"].append(f"relay did not keep up at {rate:,.0f} events/s with the latency config; "
                                        f"a second latency point ran at a light load of {light:,.0f} events/s")
                r2 = step("latency", lambda: latency.run_latency(stack, workdir, run_id, rate=light,
                                                                 seconds=args.latency_seconds, workers=workers,
                                                                 aggregates=args.aggregates,
                                                                 payload_bytes=args.payload_bytes, tag="light"))
                if r2:
                    results["latency_light"] = r2
        if "discovery" not in args.skip:
            from benchmarks import discovery

            r = step("discovery", lambda: discovery.build_and_measure(
                stack, workdir, f"{run_id}_disc", vnodes=args.discovery_vnodes, shards=args.discovery_shards))
            if r:
                results["discovery"] = r
        if os.environ.get("BENCH_PROFILE"):
            results["profiles"] = summarize_profiles(workdir, args.out)
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


def _best_workers(results: dict) -> int | None:
    runs = results.get("relay") or {}
    if not runs:
        return None
    return int(max(runs.items(), key=lambda kv: kv[1]["events_per_s"])[0])


def latency_rate(args, results: dict, bl) -> tuple[float, str]:
    if args.latency_rate:
        return args.latency_rate, f"{args.latency_rate:,.0f} events/s (--latency-rate)"
    loadgen_max = bl.load_events_per_s
    runs = results.get("relay") or {}
    if not runs:
        rate = loadgen_max / 4
        return rate, f"{rate:,.0f} events/s = a quarter of loadgen's rate (no relay throughput measured)"
    best = max(r["events_per_s"] for r in runs.values())
    half = best / 2
    if half > loadgen_max:
        return loadgen_max, (f"{loadgen_max:,.0f} events/s: half of relay's best ({half:,.0f}/s) is more than "
                             f"loadgen wrote during the backlog, so loadgen's rate caps it")
    return half, f"{half:,.0f} events/s = half of relay's best throughput ({best:,.0f}/s)"


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


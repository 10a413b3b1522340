"""`python -m benchmarks.profiling run …` = `python -m relay run …` with every worker and the
supervisor's run loop under cProfile (the benchmark sets BENCH_PROFILE=1 to use it). Each
writes `$BENCH_PROFILE_DIR/worker<i>-<pid>.prof` / `supervisor-<pid>.prof` when it ends;
`summarize` prints the top functions.

cProfile sees the worker's main thread only: the driver's I/O loop thread (row decoding)
and librdkafka's threads are not in it; the per-thread CPU split in the results covers them.
Nothing in relay/ is changed: the supervisor's reference to `worker_main` is swapped for a
wrapper before the CLI runs, and spawned workers unpickle the wrapper by its module name.
"""
from __future__ import annotations

import io
import os
import pstats
import re
import sys
from pathlib import Path

# Imported before the profiler starts, so one-off import time does not land on the per-event
# figures (relay's worker imports them lazily; importing them earlier changes nothing else).
PRELOAD = ("numpy", "cassandra.cluster", "cassandra.io.libevreactor", "cassandra.concurrent", "confluent_kafka",
           "redis", "prometheus_client", "stamina", "pybreaker")


def _preload() -> None:
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a library relay no longer uses, or the bench extra absent
            pass


def profiled_worker_main(index, cfg, conn, until_us, log_level) -> None:
    import cProfile

    from relay.worker import worker_main

    _preload()

    out = _profile_dir() / f"worker{index}-{os.getpid()}.prof"
    prof = cProfile.Profile()
    done = False

    def dump() -> None:
        nonlocal done
        if not done:
            done = True
            prof.disable()
            prof.dump_stats(out)

    real_exit = os._exit

    def exit_after_dump(code: int) -> None:  # worker_main may end with os._exit (no finally runs then)
        dump()
        real_exit(code)

    os._exit = exit_after_dump
    prof.enable()
    try:
        worker_main(index, cfg, conn, until_us, log_level)
    finally:
        dump()


def _profile_dir() -> Path:
    import tempfile

    path = Path(os.environ.get("BENCH_PROFILE_DIR") or tempfile.gettempdir())
    path.mkdir(parents=True, exist_ok=True)
    return path


def profiled(fn, name: str):
    """fn under cProfile, dumped to $BENCH_PROFILE_DIR/<name>-<pid>.prof when it returns or raises."""
    import cProfile
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        prof = cProfile.Profile()
        prof.enable()
        try:
            return fn(*args, **kwargs)
        finally:
            prof.disable()
            prof.dump_stats(_profile_dir() / f"{name}-{os.getpid()}.prof")

    return wrapper


def summarize(paths: list[Path], top: int = 30) -> str:
    """Top functions by own time and by cumulative time, merged over the given .prof files."""
    paths = [p for p in paths if p.exists()]
    if not paths:
        return "(no profiles)"
    stats = pstats.Stats(str(paths[0]), stream=io.StringIO())
    for p in paths[1:]:
        stats.add(str(p))
    buf = io.StringIO()
    stats.stream = buf
    stats.strip_dirs()
    buf.write(f"# {len(paths)} profile(s): {', '.join(p.name for p in paths)}\n\n## by own time (tottime)\n")
    stats.sort_stats("tottime").print_stats(top)
    buf.write("\n## by cumulative time\n")
    stats.sort_stats("cumulative").print_stats(top)
    return buf.getvalue()


def top_functions(paths: list[Path], events: int, top: int = 15) -> dict:
    """The functions with the most own time over the given .prof files, per event: own µs,
    cumulative µs and calls per event (where the per-event time of the main thread goes)."""
    paths = [p for p in paths if p.exists()]
    if not paths or events <= 0:
        return {}
    stats = pstats.Stats(str(paths[0]), stream=io.StringIO())
    for p in paths[1:]:
        stats.add(str(p))
    stats.strip_dirs()
    merged: dict[str, list[float]] = {}  # one row per function across processes (builtins carry an address)
    for (file, line, name), (_cc, calls, own, cum, _callers) in stats.stats.items():
        key = re.sub(r" at 0x[0-9a-f]+", "", f"{name} ({file}:{line})")
        row = merged.setdefault(key, [0, 0.0, 0.0])
        row[0] += calls
        row[1] += own
        row[2] += cum
    rows = [{"function": key, "own_us_per_event": round(own / events * 1e6, 2),
             "cum_us_per_event": round(cum / events * 1e6, 2), "calls_per_event": round(calls / events, 3)}
            for key, (calls, own, cum) in merged.items()]
    rows.sort(key=lambda r: r["own_us_per_event"], reverse=True)
    total_own = sum(own for (_cc, _calls, own, _cum, _callers) in stats.stats.values())
    return {"events": events, "profiles": [p.name for p in paths],
            "total_own_us_per_event": round(total_own / events * 1e6, 2), "top": rows[:top]}


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "summarize":
        print(summarize([Path(p) for p in sys.argv[2:]]))
        sys.exit(0)
    import relay.supervisor
    from benchmarks.profiling import profiled_worker_main as wrapper  # pickled as benchmarks.profiling.…

    relay.supervisor.worker_main = wrapper
    relay.supervisor.Supervisor.run = profiled(relay.supervisor.Supervisor.run, "supervisor")
    from relay.cli import main

    sys.exit(main())

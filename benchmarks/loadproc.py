"""Steady load from loadgen processes of their own, so relay is never starved by a writer in
the orchestrator (one Python process writing emulated CDC tops out near the rates asked for).

    python -m benchmarks.loadproc --config C --table T --rate R --seconds S --aggregates A --part I

One child = `relay.commands.loadgen.generate(…, emulate=True, rate=R)`, stopped at its deadline
(S seconds after its first slice is written) even if it wrote fewer events than planned; it
prints one JSON line: events written and the first/last write timestamps (µs, = `cdc_time`).
Children of one load get disjoint aggregates (`agg-<part>-NNNNNN`), so per-aggregate order
holds across them as within one. `run_load` starts several at rate R/n each and sums them.

Children start writing together: each boots (imports, connects, prepares), says so with a file,
and waits for the parent's start time. Booting costs a child about a second of CPU, and the
database authenticates its connections; a child that started writing first would have its
events' latency measured while its siblings still boot beside relay.

Children run at a lower CPU priority (nice LOADGEN_NICE): they stand in for the application's
writers, which in production run on machines of their own. On this 2-core box an emulated write
costs the writer ~0.5 ms of CPU, so at full priority the writers take the CPU the measured relay
and the database need, and the latency measured would be the machine's saturation, not relay's.
The rate they achieve is reported beside the rate asked.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import common

LOADGEN_NICE = 10
START_TIMEOUT_S = 120.0  # for every child to boot
START_DELAY_S = 0.1  # from the last child ready to the common start: they poll for it every 10 ms


@dataclass
class LoadResult:
    asked_rate: float
    processes: int
    events: int
    first_us: int | None
    last_us: int | None
    cpu_s: float  # the children's own CPU (wait4 rusage)
    wall_s: float  # first child started → last child exited
    parts: list[dict] = field(default_factory=list)

    @property
    def write_span_s(self) -> float | None:
        if self.first_us is None or self.last_us is None or self.last_us <= self.first_us:
            return None
        return (self.last_us - self.first_us) / 1e6

    @property
    def achieved_rate(self) -> float | None:
        span = self.write_span_s
        return round(self.events / span, 1) if span else None

    def to_dict(self) -> dict:
        return {"asked_rate": round(self.asked_rate, 1), "achieved_rate": self.achieved_rate,
                "events": self.events, "load_seconds": _r(self.write_span_s), "loadgen_processes": self.processes,
                "loadgen_cpu_s": round(self.cpu_s, 2), "loadgen_nice": LOADGEN_NICE,
                "loadgen_wall_s": round(self.wall_s, 2),
                "first_write_us": self.first_us, "last_write_us": self.last_us, "parts": self.parts}


def processes_for(rate: float, per_process_rate: float | None, maximum: int = 4) -> int:
    """Enough children for `rate` if each writes ~70 % of what one process managed alone
    (the backlog's loadgen rate), between 1 and `maximum` (the machine has few cores)."""
    if not per_process_rate or per_process_rate <= 0:
        return 1
    return max(1, min(maximum, math.ceil(rate / (0.7 * per_process_rate))))


def run_load(config: Path, table: str, *, rate: float, seconds: float, aggregates: int, processes: int,
             workdir: Path, tag: str, payload_bytes: int = 1000, aggregate_type: str = "order",
             concurrency: int = 64) -> LoadResult:
    """n loadgen children at rate/n each, for `seconds`; blocks until every child has exited."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.pop("BENCH_PROFILE", None)  # the load is not what is profiled
    children = []
    t0 = time.monotonic()
    go_file = workdir / f"loadgen-{tag}.go"
    readies = [workdir / f"loadgen-{tag}-{part}.ready" for part in range(processes)]
    for stale in (go_file, *readies):  # an earlier load of the same tag
        stale.unlink(missing_ok=True)
    for part in range(processes):
        cmd = [common.python(), "-m", "benchmarks.loadproc", "--config", str(config), "--table", table,
               "--rate", str(rate / processes), "--seconds", str(seconds),
               "--aggregates", str(max(1, aggregates // processes)), "--part", str(part),
               "--payload-bytes", str(payload_bytes), "--aggregate-type", aggregate_type,
               "--concurrency", str(concurrency), "--ready-file", str(readies[part]),
               "--go-file", str(go_file)]
        log_path = workdir / f"loadgen-{tag}-{part}.log"
        err = open(log_path, "wb")  # noqa: SIM115 - closed once the child has exited
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, cwd=common.REPO, env=env,
                                start_new_session=True)
        children.append((proc, err, log_path))
    _start_together([(proc, ready) for (proc, _err, _log), ready in zip(children, readies, strict=True)], go_file)
    parts: list[dict] = []
    cpu = 0.0
    failures = []
    deadline = time.monotonic() + seconds + 180
    for proc, err, log_path in children:
        try:
            out = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))[0]
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            out = proc.communicate()[0]
        finally:
            err.close()
        if proc.returncode != 0:
            failures.append(f"{log_path.name}: exit {proc.returncode}: "
                            f"{log_path.read_text(errors='replace')[-800:]}")
            continue
        part = json.loads(out.decode().strip().splitlines()[-1])
        parts.append(part)
        cpu += part.get("cpu_s", 0.0)  # each child reports its own rusage
    wall = time.monotonic() - t0
    if failures:
        raise RuntimeError("loadgen child failed: " + " | ".join(failures))
    firsts = [p["first_us"] for p in parts if p.get("first_us")]
    lasts = [p["last_us"] for p in parts if p.get("last_us")]
    return LoadResult(rate, processes, sum(p["events"] for p in parts), min(firsts, default=None),
                      max(lasts, default=None), cpu, wall, parts)


def _start_together(children: list[tuple[subprocess.Popen, Path]], go_file: Path) -> None:
    """Once every child is ready (or has exited: its failure is reported from its exit code), write
    the start time they all wait for."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if all(ready.exists() or proc.poll() is not None for proc, ready in children):
            break
        time.sleep(0.02)
    tmp = go_file.with_suffix(".tmp")
    tmp.write_text(repr(time.time() + START_DELAY_S))
    tmp.rename(go_file)  # whole, at once: a child never reads half a number


def _wait_for_start(ready_file: Path, go_file: Path) -> None:
    ready_file.touch()
    deadline = time.monotonic() + START_TIMEOUT_S + 10
    while not go_file.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"no start time in {go_file} after {START_TIMEOUT_S + 10:.0f}s")
        time.sleep(0.01)
    time.sleep(max(0.0, float(go_file.read_text()) - time.time()))


# --------------------------------------------------------------------------- the child


class _TimeUp(Exception):
    pass


class _Deadline:
    """A loadgen progress sink: counts what was written and stops loadgen (by raising from
    update(), which loadgen calls after each slice) `seconds` after the first slice landed."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline: float | None = None
        self.done = 0

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.deadline is None:
            self.deadline = now + self.seconds
        elif now >= self.deadline:
            raise _TimeUp

    def close(self, *_a) -> None:
        pass


def child(args: argparse.Namespace) -> dict:
    import logging
    import resource

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    os.nice(args.nice)
    from relay import config as relay_config
    from relay.commands import loadgen

    part = args.part
    # Disjoint aggregates per child: loadgen names them through this module function.
    loadgen.aggregate_name = lambda index: f"agg-{part}-{index:06d}"
    stamps: list[int] = []
    real_plan = loadgen.plan

    def plan(*a, **kw):  # the write timestamps of the first and the last slice (= each event's cdc_time)
        batch = real_plan(*a, **kw)
        if batch:
            if not stamps:
                stamps.append(batch[0].timestamp_us)
            stamps[1:] = [batch[-1].timestamp_us]
        return batch

    loadgen.plan = plan
    if args.go_file:
        real_shape_of = loadgen.shape_of

        def shape_of(*a, **kw):  # loadgen's last step before its clock starts: connected, prepared
            shape = real_shape_of(*a, **kw)
            _wait_for_start(Path(args.ready_file), Path(args.go_file))
            return shape

        loadgen.shape_of = shape_of
    cfg = relay_config.load(args.config)
    sink = _Deadline(args.seconds)
    planned = max(1, int(args.rate * args.seconds * 1.2) + 10)
    try:
        loadgen.generate(cfg, args.table, planned, args.aggregates, rate=args.rate, emulate=True,
                         payload_bytes=args.payload_bytes, aggregate_type=args.aggregate_type,
                         concurrency=args.concurrency, progress=sink)
    except _TimeUp:
        pass
    ru = resource.getrusage(resource.RUSAGE_SELF)
    first, last = (stamps[0], stamps[-1]) if stamps else (None, None)
    span = (last - first) / 1e6 if first and last and last > first else None
    return {"part": part, "asked_rate": args.rate, "events": sink.done, "first_us": first, "last_us": last,
            "achieved_rate": round(sink.done / span, 1) if span else None,
            "cpu_s": round(ru.ru_utime + ru.ru_stime, 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.loadproc")
    p.add_argument("--config", required=True)
    p.add_argument("--table", required=True)
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--aggregates", type=int, required=True)
    p.add_argument("--part", type=int, default=0)
    p.add_argument("--payload-bytes", type=int, default=1000)
    p.add_argument("--aggregate-type", default="order")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--nice", type=int, default=LOADGEN_NICE, help="CPU niceness increment of this writer")
    p.add_argument("--ready-file", help="created once booted (with --go-file)")
    p.add_argument("--go-file", help="wait for this file, then start writing at the time it holds")
    out = child(p.parse_args(argv))
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip the driver's libev atexit hook, which can stall an exiting process for 5 s


def _r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)


if __name__ == "__main__":
    sys.exit(main())

"""Where relay's per-event CPU goes: py-spy samples a drain's processes and threads.

`Sampler.attach(pid)` starts `py-spy record --gil --subprocesses --nonblocking` on relay's
supervisor (its workers are followed); `summarize` turns the raw stacks into µs per event by
process and thread, by pipeline stage of the worker's main thread, and by function.

Why py-spy and not cProfile: it samples every thread (the driver's I/O thread decodes the rows,
the supervisor's threads renew leases), it does not slow the code it watches (`--nonblocking`:
the process is not paused to read its stacks), and `--gil` keeps only the samples of a thread
holding the GIL, i.e. running Python or a C call that did not release it: a thread waiting for
rows, acks or Redis is not counted. What it cannot see: C work done without the GIL (librdkafka's
own threads, the parts of the driver's decoding and of `produce` that release it); the per-thread
CPU split of the unprofiled drain covers those. Samples of a thread that holds the GIL while the
machine has no free core are counted too, so on a busy machine the sum exceeds the CPU used:
compare the rows with each other.
"""
from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

RATE_HZ = 200
_PROCESS = re.compile(r"^process \d+:")
_LINE = re.compile(r":\d+\)$")

# The worker main thread's stages, by the first of these functions found in a sample's stack
# (innermost first in this order: a Redis mark inside an ack poll counts as the mark).
STAGES = (
    ("dedup: mark acked (Redis)", ("Dedup.mark",)),
    ("dedup: check (Redis)", ("Dedup.split",)),
    ("delivery reports (callbacks)", ("_Window.callback", "Publisher._collect")),
    ("headers", ("OutboxEvent.kafka_headers",)),
    ("produce and wait for acks (librdkafka calls)", ("Publisher._publish", "Publisher._produce")),
    ("map rows to events", ("Mapper.",)),
    ("read: pages and queries (driver calls)", ("LogReader.", "ResultSet.")),
    ("checkpoints", ("Checkpoint",)),
)
START = "start: imports, connections (before and in Worker.boot)"


def py_spy() -> str | None:
    """py-spy next to this interpreter (the venv's bin) or on PATH."""
    import sys

    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


class Sampler:
    """py-spy on one process tree, from `attach` until the process exits."""

    def __init__(self, out: Path, rate_hz: int = RATE_HZ) -> None:
        self.out = out
        self.rate_hz = rate_hz
        self.proc: subprocess.Popen | None = None
        self.log = out.with_suffix(".log")

    def attach(self, pid: int) -> None:
        exe = py_spy()
        if exe is None:
            raise RuntimeError("py-spy is not installed (pip install -e '.[bench]')")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        cmd = [exe, "record", "--pid", str(pid), "--subprocesses", "--gil", "--nonblocking", "--function",
               "--rate", str(self.rate_hz), "--format", "raw", "--output", str(self.out)]
        # The interpreter may not be far enough into its start to be recognised: try again a few times.
        for _ in range(20):
            with open(self.log, "wb") as fh:
                self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
            time.sleep(0.1)
            if self.proc.poll() is None or self.out.exists():
                return
        raise RuntimeError(f"py-spy could not attach to pid {pid}: {self.log.read_text(errors='replace')[-500:]}")

    def wait(self, timeout: float = 30.0) -> Path:
        """After the watched process exited: py-spy writes its file and stops."""
        if self.proc is None:
            raise RuntimeError("py-spy was never attached")
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes what it has on SIGINT (on SIGTERM: nothing)
            self.proc.wait(10)
        if not self.out.exists():
            raise RuntimeError(f"py-spy wrote no samples: {self.log.read_text(errors='replace')[-500:]}")
        return self.out


def _function(frame: str) -> str:
    return _LINE.sub(")", frame)


def _own_frames(frames: list[str]) -> list[str]:
    """A process forked by relay.forkserver starts inside the frames its parent was in when it
    forked (the supervisor's start): only what follows the forkserver's own frames is its work."""
    for i in range(len(frames) - 1, -1, -1):
        if "multiprocessing/forkserver.py" in frames[i]:
            return frames[i + 1:] or frames[i:]
    return frames


def _process(frames: list[str]) -> str:
    """The sample's own process: the last `process PID:"cmdline"` frame py-spy put before its stack."""
    procs = [f for f in frames if _PROCESS.match(f)]
    return procs[-1].split(":", 1)[0] if procs else ""


def _worker_processes(lines: list[str]) -> set[str]:
    """Processes that are workers: spawned ones run spawn_main; forked ones (relay.forkserver) keep
    relay's command line, but their main thread's stacks run worker_main."""
    out = set()
    for line in lines:
        frames = line.rpartition(" ")[0].split(";")
        if "worker_main (" in line or any("spawn_main" in f for f in frames if _PROCESS.match(f)):
            out.add(_process(frames))
    return out


def _thread(frames: list[str], workers: set[str]) -> str:
    """The process role and thread a sample's stack belongs to (`workers`: see _worker_processes)."""
    worker = _process(frames) in workers
    names = "\n".join(frames)
    if worker:
        if "worker_main (" in names:
            return "worker: main thread"
        if "_run_loop (" in names or "asyncio" in names:
            return "worker: driver I/O thread (row decoding)"
        return "worker: other threads"
    if "multiprocessing/forkserver.py" in names:
        return "forkserver: the workers' own imports (once)"
    if "Supervisor.run (" in names or "relay/cli.py" in names or "relay/__main__.py" in names:
        return "supervisor: main thread"
    return "supervisor: other threads (leases, driver, HTTP)"


def _stage(frames: list[str]) -> str:
    if not any(f.startswith("Worker.run (") for f in frames) or any(f.startswith("Worker.boot (") for f in frames):
        return START
    for name, marks in STAGES:
        if any(m in f for f in frames for m in marks):
            return name
    return "other (the loop, metrics, messages)"


def summarize(raw: Path, events: int, rate_hz: int = RATE_HZ, top: int = 15) -> dict:
    """µs per event (samples / rate / events) by thread, by worker main-thread stage and by function."""
    per_sample_us = 1e6 / rate_hz / events
    threads: Counter = Counter()
    stages: Counter = Counter()
    own: Counter = Counter()
    cumulative: Counter = Counter()
    total = 0
    lines = raw.read_text(errors="replace").splitlines()
    workers = _worker_processes(lines)
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = _own_frames([f for f in stack.split(";") if not _PROCESS.match(f)])
        if not frames:
            continue
        full = stack.split(";")
        total += n
        thread = _thread(full, workers)
        threads[thread] += n
        if thread == "worker: main thread":
            stages[_stage(frames)] += n
        own[_function(frames[-1])] += n
        for f in {_function(f) for f in frames}:
            if "relay/" in f:
                cumulative[f] += n

    def rows(counter: Counter, limit: int | None = None) -> list[dict]:
        return [{"name": k, "us_per_event": round(v * per_sample_us, 2), "samples": v}
                for k, v in counter.most_common(limit)]

    return {"events": events, "rate_hz": rate_hz, "samples": total,
            "us_per_event": round(total * per_sample_us, 2),
            "threads": rows(threads), "worker_main_stages": rows(stages),
            "own": rows(own, top), "relay_cumulative": rows(cumulative, top)}

"""Replicas sharing tables through lease slots (DESIGN §5b), measured on the local stack:

    .venv/bin/python -m benchmarks.replicas [--events 20000] [--out benchmarks/results/replicas.json]

- drain: one backlog drained with `--until` by 1 replica, then (fresh relay keyspace, topic and
  dedup prefix) by 3 replicas at once, then by 1 replica of 3 workers (the same parallelism as
  the 3, without sharing); CPU per event of all their processes (wait4 rusage), wall
  time, and what the topic holds (delivery is judged by reading it back).
- live: 3 replicas (`relay run`, 1 worker each, default [leases]) on an idle table: time from the
  start to the first /ready and to a balanced group; SIGKILL of one replica's process group → the
  others own every slot (takeover, bounded by the session timeout); a 4th joins → balanced again;
  SIGTERM of one → the others own every slot (graceful leave: LeaveGroup after the drain).

`make bench` runs both on the run's backlog (section "Replicas sharing slots" of latest.md); run alone,
this module writes its own JSON and a summary on stdout. The local stack's Kafka sets
group.initial.rebalance.delay.ms = 0; a broker with the default (3 s) delays the first member of an
empty group by that much (reported as `broker_initial_rebalance_delay_ms`).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

from benchmarks import common
from benchmarks.backlog import relay_command, wait_confidence, write_backlog
from benchmarks.common import Stack, log

SLOTS = 64
# (replicas, workers each): 1 replica, 3 replicas, and 1 replica with as many workers as the 3 have.
DRAINS = ((1, 1), (3, 1), (1, 3))


def _config(stack: Stack, workdir: Path, backlog, tag: str, defaults: bool = False,
            workers: int = 1) -> tuple[Path, str, str]:
    ks = backlog.keyspace
    topic, prefix = f"{ks}.{tag}.order", f"{ks}:{tag}:"
    config = common.write_config(workdir / f"relay-{tag}.toml", stack, keyspace=ks, relay_keyspace=f"{ks}_{tag}",
                                 tables=[backlog.table], topic=topic, key_prefix=prefix, defaults=defaults,
                                 relay={"workers": workers})
    common.apply_relay_schema(config)
    common.create_topics(stack.kafka, [topic])
    return config, topic, prefix


def drain(stack: Stack, workdir: Path, backlog, replicas: int, workers: int = 1) -> dict:
    tag = f"x{replicas}" if workers == 1 else f"x{replicas}w{workers}"
    config, topic, _ = _config(stack, workdir, backlog, tag, workers=workers)
    wait_confidence(backlog, 10.0)
    common.wait_quiet(f"drain {tag}")
    runs: list = [None] * replicas
    errors: list = []

    boot_cpu: list[float | None] = [None] * replicas  # the replica's CPU when it first answered /ready

    def one(i: int) -> None:
        port = common.free_port()
        env = dict(os.environ, RELAY_RELAY__REPLICA_ID=f"{tag}-{i}", RELAY_METRICS__PORT=str(port))

        def during(sampler, _proc) -> None:
            if boot_cpu[i] is None and _ready(port):
                sampler.sample()
                boot_cpu[i] = sum(p.cpu_s for p in sampler.procs.values())
        try:
            runs[i] = common.run_and_sample(relay_command(config, workers, backlog.until_us), env=env,
                                            log_path=workdir / f"relay-{tag}-{i}.log", timeout=3600, during=during)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    log(f"drain: {backlog.events:,} events by {replicas} replica(s) of {workers} worker(s) -> {topic}")
    threads = [threading.Thread(target=one, args=(i,)) for i in range(replicas)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    if errors:
        raise errors[0]
    codes = [r.returncode for r in runs]
    for r in runs:
        common.remove_metrics_dir(r.sampler.root)
    rep = common.read_topic(stack.kafka, topic)
    cpu = sum(r.cpu_s for r in runs)
    # Each replica's own start (interpreter, imports, connections, joining the group) is a fixed
    # cost per process, not a cost of sharing the work: the coordination figure leaves it out.
    boot = sum(b for b in boot_cpu if b is not None) if None not in boot_cpu else None
    out = {"replicas": replicas, "workers": workers, "exit_codes": codes, "wall_s": round(wall, 2),
           "events_per_s": round(backlog.events / wall, 1), "cpu_s": round(cpu, 2),
           "cpu_us_per_event": round(cpu / backlog.events * 1e6, 1),
           "cpu_s_per_replica": [round(r.cpu_s, 2) for r in runs],
           "boot_cpu_s_per_replica": [None if b is None else round(b, 2) for b in boot_cpu],
           "cpu_after_ready_us_per_event": None if boot is None else round((cpu - boot) / backlog.events * 1e6, 1),
           "delivered": rep.to_dict(), "complete": rep.distinct_ids == backlog.events}
    log(f"drain {tag}: {out['events_per_s']:,.0f} events/s, {out['cpu_us_per_event']} µs CPU/event "
        f"({out['cpu_after_ready_us_per_event']} after each replica was ready; boot CPU "
        f"{out['boot_cpu_s_per_replica']} s), {rep.distinct_ids:,}/{backlog.events:,} delivered, "
        f"{rep.duplicates} duplicates, exits {codes}")
    return out


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as resp:
            return resp.status == 200
    except OSError:  # not listening yet, or 503 (HTTPError is an OSError)
        return False


LEAVING = "workers stopped; leaving the leases group"  # relay.supervisor logs it before LeaveGroup


def _logged_at(path: Path, text: str) -> float | None:
    """Wall-clock time of the first log line containing `text` (relay's `asctime`, local time, ms)."""
    from datetime import datetime

    for line in path.read_text(errors="replace").splitlines():
        if text in line:
            return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return None


class Replica:
    def __init__(self, config: Path, name: str, workdir: Path) -> None:
        self.name, self.port = name, common.free_port()
        env = dict(os.environ, RELAY_RELAY__REPLICA_ID=name, RELAY_METRICS__PORT=str(self.port),
                   PYTHONUNBUFFERED="1")
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.log_path = workdir / f"live-{name}.log"
        self.log = open(self.log_path, "wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(relay_command(config, 1, None), stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=common.REPO, env=env, start_new_session=True)

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=3) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, b""
        except OSError:
            return 0, b""

    def slots(self) -> list[int]:
        code, body = self.get("/status")
        return (json.loads(body).get("leases") or {}).get("slots", []) if code == 200 else []

    def ready(self) -> bool:
        return self.get("/ready")[0] == 200

    def kill(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        self.kill(signal.SIGKILL)
        self.proc.wait(30)
        self.log.close()
        common.remove_metrics_dir(self.proc.pid)


def _until(predicate, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)
    return time.monotonic() - t0


def _covers(reps) -> bool:
    return sorted(s for r in reps for s in r.slots()) == list(range(SLOTS))


def _balanced(reps) -> bool:
    counts = [len(r.slots()) for r in reps]
    return sum(counts) == SLOTS and _covers(reps) and max(counts) - min(counts) <= 1


def live(stack: Stack, workdir: Path, backlog) -> dict:
    config, _, _ = _config(stack, workdir, backlog, "live", defaults=True)
    reps = [Replica(config, f"live-{i}", workdir) for i in range(3)]
    out: dict = {}
    try:
        out["first_ready_s"] = round(_until(lambda: any(r.ready() for r in reps), 120, "a replica ready"), 2)
        out["three_balanced_s"] = round(_until(lambda: _balanced(reps), 120, "three replicas balanced")
                                        + out["first_ready_s"], 2)
        _until(lambda: all(r.ready() for r in reps), 120, "every replica ready")
        victim = reps.pop()
        victim.kill(signal.SIGKILL)
        out["takeover_after_sigkill_s"] = round(_until(lambda: _covers(reps), 120, "takeover after SIGKILL"), 2)
        victim.stop()
        joiner = Replica(config, "live-3", workdir)
        reps.append(joiner)
        out["join_to_balanced_s"] = round(_until(lambda: _balanced(reps), 120, "the 4th balanced in"), 2)
        leaver = reps.pop(0)
        leaver.kill(signal.SIGTERM)
        out["takeover_after_sigterm_s"] = round(_until(lambda: _covers(reps), 120, "takeover after SIGTERM"), 2)
        covered_at = time.time()
        out["sigterm_exit_code"] = leaver.proc.wait(60)
        leaving_at = _logged_at(leaver.log_path, LEAVING)
        out["takeover_after_final_checkpoint_s"] = None if leaving_at is None else round(covered_at - leaving_at, 2)
        leaver.stop()
    finally:
        for r in reps:
            r.stop()
    log("live: " + ", ".join(f"{k} {v}" for k, v in out.items()))
    return out


def ratios(one: dict, three: dict, one_x3: dict | None = None) -> dict:
    """3 replicas of 1 worker against 1 replica of 1 worker, and (one_x3) against 1 replica of 3
    workers: the same parallelism on the same cores, so what differs is the sharing itself."""
    def after(run: dict | None) -> float | None:
        return run.get("cpu_after_ready_us_per_event") if run else None

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 2) if a is not None and b else None

    return {"cpu_per_event_ratio_3_vs_1": round(three["cpu_us_per_event"] / one["cpu_us_per_event"], 2),
            "cpu_after_ready_ratio_3_vs_1": ratio(after(three), after(one)),
            "cpu_after_ready_ratio_3_vs_1x3": ratio(after(three), after(one_x3))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.replicas", description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--aggregates", type=int, default=2_000)
    p.add_argument("--vnodes", type=int, default=64)
    p.add_argument("--skip", default="", help="drain and/or live")
    p.add_argument("--out", type=Path, default=common.REPO / "benchmarks" / "results" / "replicas.json")
    a = p.parse_args(argv)
    stack = Stack.from_env()
    common.precompile_relay()
    run_id = f"brep_{uuid.uuid4().hex[:8]}"
    workdir = Path(tempfile.mkdtemp(prefix=f"{run_id}-"))
    result: dict = {"run_id": run_id, "events": a.events, "vnodes": a.vnodes, "slots": SLOTS,
                    "broker_initial_rebalance_delay_ms": _initial_delay(), "machine": common.machine_info(stack)}
    try:
        backlog = write_backlog(stack, workdir, run_id, events=a.events, aggregates=a.aggregates, vnodes=a.vnodes,
                                shards=2)
        if "drain" not in a.skip:
            result["drain"] = [drain(stack, workdir, backlog, n, w) for n, w in DRAINS]
            result.update(ratios(*result["drain"]))
        if "live" not in a.skip:
            result["live"] = live(stack, workdir, backlog)
    finally:
        common.drop_keyspaces(stack, run_id)
        topics = common.list_topics(stack.kafka, run_id) + common.list_topics(stack.kafka, f"relay.slots.{run_id}")
        if topics:
            common.delete_topics(stack.kafka, topics)
        common.redis_delete_prefix(stack, run_id)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1))
    log(f"written {a.out}")
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1))
    return 0


def _initial_delay() -> int | None:
    """The broker's group.initial.rebalance.delay.ms, when the local stack's config says."""
    conf = common.REPO / "deploy" / "local" / "conf" / "kafka.properties"
    try:
        for line in conf.read_text().splitlines():
            if line.startswith("group.initial.rebalance.delay.ms="):
                return int(line.split("=", 1)[1])
    except OSError:
        pass
    return None


if __name__ == "__main__":
    raise SystemExit(main())

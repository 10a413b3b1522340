"""Shared pieces of the benchmark suite: stack endpoints, relay configs, Kafka topics, Redis
accounting, the relay process sampler (/proc) and machine facts.

Nothing here changes relay; every measurement goes through the real local stack.
"""
from __future__ import annotations

import collections
import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORKDIR = REPO / ".stack" / "bench"  # configs and logs of each run (.stack/ is ignored by git)
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- stack

@dataclass(frozen=True)
class Stack:
    cql_port: int
    kafka: str
    redis_url: str
    cql_user: str = "relay"  # the stack's non-superuser role (deploy/local/stack)
    cql_password: str = "relay"

    @classmethod
    def from_env(cls) -> Stack:
        return cls(int(os.environ.get("RELAY_STACK_CASSANDRA_PORT", "9042")),
                   f"127.0.0.1:{os.environ.get('RELAY_STACK_KAFKA_PORT', '9092')}",
                   f"redis://127.0.0.1:{os.environ.get('RELAY_STACK_REDIS_PORT', '6379')}/0",
                   os.environ.get("RELAY_STACK_CQL_USER", "relay"), os.environ.get("RELAY_STACK_CQL_PASSWORD", "relay"))

    def relay_environ(self) -> dict[str, str]:
        """A relay config from the environment alone, for the suite's own look-ups."""
        return {"RELAY_KAFKA__BOOTSTRAP_SERVERS": self.kafka, "RELAY_SCYLLA__PORT": str(self.cql_port),
                "RELAY_SCYLLA__USERNAME": self.cql_user, "RELAY_SCYLLA__PASSWORD": self.cql_password}


def precompile_relay() -> None:
    """Byte-compile relay's modules, as installing the package does: a checkout run with
    PYTHONDONTWRITEBYTECODE (or just edited) would otherwise compile ~40 modules in every process
    it starts, ~0.1 s of CPU each, which no installed relay pays."""
    import compileall

    compileall.compile_dir(str(REPO / "relay"), quiet=1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The [relay] settings of the drain runs, written out so the throughput figures stay comparable
# when relay's defaults move. Live-mode runs (idle, latency) use relay's defaults instead.
DRAIN_RELAY_SETTINGS = {"window_seconds": 10, "confidence_seconds": 10, "poll_interval_seconds": 0.5,
                        "shutdown_timeout_seconds": 60, "generation_poll_seconds": 10}


def write_config(path: Path, stack: Stack, *, keyspace: str, relay_keyspace: str, tables: list[str], topic: str,
                 key_prefix: str, relay: dict | None = None, partitions: int = 6, defaults: bool = False) -> Path:
    """A relay.toml: the outbox tables and the emulated generation tables live in `keyspace`
    (cdc_metadata_keyspace = tablets_metadata_keyspace = keyspace, as tests/harness.py does).
    defaults=True: [relay] holds only `relay` (everything else at relay's defaults)."""
    section = {**({} if defaults else DRAIN_RELAY_SETTINGS), **(relay or {})}
    relay_lines = "\n".join(f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v!r}" for k, v in section.items())
    table_lines = "\n".join(f'[[tables]]\nname = "{t}"\ntopic = "{topic}"\n' for t in tables)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"""# written by `python -m benchmarks`
[scylla]
contact_points = ["127.0.0.1"]
port = {stack.cql_port}
username = "{stack.cql_user}"
password = "{stack.cql_password}"
consistency = "ONE"
relay_keyspace = "{relay_keyspace}"
relay_replication = {{ class = "SimpleStrategy", replication_factor = 1 }}   # the stack is one node
cdc_metadata_keyspace = "{keyspace}"
tablets_metadata_keyspace = "{keyspace}"

{table_lines}
[kafka]
bootstrap_servers = "{stack.kafka}"
topic_partitions = {partitions}

[redis]
url = "{stack.redis_url}"
key_prefix = "{key_prefix}"

[relay]
{relay_lines}

[metrics]
host = "127.0.0.1"
port = {free_port()}
""")
    return path


def metrics_port(config: Path) -> int:
    return int(config.read_text().split("[metrics]")[1].split("port = ")[1].split()[0])


def apply_relay_schema(config: Path) -> None:
    from relay import config as relay_config
    from relay import connect, schema

    cfg = relay_config.load(config)
    session = connect.cql_session(cfg)
    try:
        schema.apply(session, cfg)
    finally:
        session.cluster.shutdown()


def drop_keyspaces(stack: Stack, prefix: str) -> list[str]:
    """Drop every keyspace whose name starts with `prefix` (a run's keyspaces all start with its id)."""
    from relay import config as relay_config
    from relay import connect

    cfg = relay_config.load(environ=stack.relay_environ())
    session = connect.cql_session(cfg)
    try:
        names = sorted(r[0] for r in session.execute("SELECT keyspace_name FROM system_schema.keyspaces")
                       if r[0].startswith(prefix))
        for ks in names:
            session.execute(f"DROP KEYSPACE IF EXISTS {ks}", timeout=120)
        return names
    finally:
        session.cluster.shutdown()


# --------------------------------------------------------------------------- kafka

def create_topics(bootstrap: str, topics: list[str], partitions: int = 6, log_append_time: bool = True) -> None:
    """Create the topics before relay starts; LogAppendTime makes each record's timestamp the
    broker's append time, which the suite uses for latency and for when publishing began/ended."""
    from confluent_kafka.admin import AdminClient, NewTopic

    if not topics:
        return
    admin = AdminClient({"bootstrap.servers": bootstrap})
    conf = {"message.timestamp.type": "LogAppendTime"} if log_append_time else {}
    futures = admin.create_topics([NewTopic(t, num_partitions=partitions, replication_factor=1, config=conf)
                                   for t in topics])
    for f in futures.values():
        f.result(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # metadata can lag the creation a little
        md = admin.list_topics(timeout=10)
        if all(t in md.topics and len(md.topics[t].partitions) == partitions for t in topics):
            return
        time.sleep(0.2)


def delete_topics(bootstrap: str, topics: list[str]) -> None:
    from confluent_kafka.admin import AdminClient

    if not topics:
        return
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.delete_topics(topics, operation_timeout=30).values():
        try:
            f.result(timeout=60)
        except Exception:  # noqa: BLE001 - cleanup is best effort
            pass


def list_topics(bootstrap: str, prefix: str) -> list[str]:
    from confluent_kafka.admin import AdminClient

    return sorted(t for t in AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics
                  if t.startswith(prefix))


@dataclass
class TopicReport:
    """What a topic holds, read back by a consumer (delivery is judged here, never by relay's counters)."""

    records: int = 0
    distinct_ids: int = 0
    duplicates: int = 0
    first_append_s: float | None = None  # broker LogAppendTime, epoch seconds
    last_append_s: float | None = None
    latencies_s: list[tuple[float, float]] = field(default_factory=list)  # (cdc_time s, append time - cdc_time)

    def to_dict(self) -> dict:
        return {"records": self.records, "distinct_ids": self.distinct_ids, "duplicates": self.duplicates,
                "first_append_s": self.first_append_s, "last_append_s": self.last_append_s}


def read_topic(bootstrap: str, topic: str, timeout: float = 120.0, latencies: bool = False) -> TopicReport:
    """Every record of `topic` up to the high watermarks seen at the start."""
    from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME, Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         "fetch.max.bytes": 16 << 20, "max.partition.fetch.bytes": 4 << 20,
                         "queued.max.messages.kbytes": 16384})
    rep = TopicReport()
    try:
        md = consumer.list_topics(topic, timeout=10)
        if md.topics[topic].error is not None:
            return rep
        parts = [TopicPartition(topic, p, 0) for p in md.topics[topic].partitions]
        ends = {p.partition: consumer.get_watermark_offsets(p, timeout=10)[1] for p in parts}
        remaining = {p for p, end in ends.items() if end > 0}
        consumer.assign(parts)
        ids: collections.Counter = collections.Counter()
        first = last = None
        lat = rep.latencies_s
        deadline = time.monotonic() + timeout
        while remaining and time.monotonic() < deadline:
            for msg in consumer.consume(2000, 1.0):
                if msg.error() is not None:
                    continue
                kind, ts_ms = msg.timestamp()
                cdc_us = None
                for k, v in msg.headers() or ():
                    if k == "id":
                        ids[v] += 1
                    elif k == "cdc_time":
                        cdc_us = int(v)
                if kind == TIMESTAMP_LOG_APPEND_TIME or latencies:
                    first = ts_ms if first is None or ts_ms < first else first
                    last = ts_ms if last is None or ts_ms > last else last
                    if latencies and cdc_us is not None:
                        lat.append((cdc_us / 1e6, ts_ms / 1e3 - cdc_us / 1e6))
                if msg.offset() + 1 >= ends[msg.partition()]:
                    remaining.discard(msg.partition())
        if remaining:
            raise RuntimeError(f"{topic}: could not read partitions {sorted(remaining)} to the end in {timeout}s")
        rep.records = sum(ids.values())
        rep.distinct_ids = len(ids)
        rep.duplicates = rep.records - rep.distinct_ids
        rep.first_append_s = first / 1e3 if first is not None else None
        rep.last_append_s = last / 1e3 if last is not None else None
        return rep
    finally:
        consumer.close()


# --------------------------------------------------------------------------- redis

def redis_client(stack: Stack):
    import redis

    return redis.Redis.from_url(stack.redis_url)


def redis_used_memory(r) -> int:
    return int(r.info("memory")["used_memory"])


def redis_key_count(r, prefix: str) -> int:
    """Keys under a prefix, whatever they hold (one per event, or sets of many): for the record only."""
    return sum(1 for _ in r.scan_iter(match=prefix.encode() + b"*", count=5000))


def redis_delete_prefix(stack: Stack, prefix: str) -> int:
    r = redis_client(stack)
    n = 0
    batch: list[bytes] = []
    for k in r.scan_iter(match=prefix.encode() + b"*", count=5000):
        batch.append(k)
        if len(batch) >= 5000:
            n += r.unlink(*batch)
            batch = []
    if batch:
        n += r.unlink(*batch)
    return n


# --------------------------------------------------------------------------- processes

@dataclass
class ProcSample:
    pid: int
    role: str  # supervisor | worker | helper
    cpu_s: float = 0.0  # own utime + stime at the last sample
    children_cpu_s: float = 0.0  # cutime + cstime: children it has reaped
    hwm_kb: int = 0  # VmHWM: peak RSS
    rss_kb: int = 0
    threads: dict[int, tuple[str, float]] = field(default_factory=dict)  # tid -> (comm, cpu s)
    first_seen: float = 0.0
    last_seen: float = 0.0


def _read(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return None


def _stat_fields(text: str) -> list[str]:
    return text.rsplit(")", 1)[1].split()  # comm may contain spaces and parentheses


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        text = _read(f"/proc/{pid}/task/{tid}/children")
        if text:
            out.extend(int(x) for x in text.split())
    return out


def _role(pid: int, root: int) -> str:
    if pid == root:
        return "supervisor"
    cmd = (_read(f"/proc/{pid}/cmdline") or "").replace("\0", " ")
    # A spawned worker runs spawn_main; a forked one (relay.forkserver) keeps relay's command line
    # and names itself relay-worker-N once it starts.
    if "spawn_main" in cmd or (_read(f"/proc/{pid}/comm") or "").startswith("relay-worker"):
        return "worker"
    return "helper"  # multiprocessing's resource tracker, relay's forkserver


class TreeSampler:
    """Samples a process tree from /proc: CPU (utime+stime) of each process and each thread,
    peak RSS (VmHWM). Values are those of the last sample before a process exits, so sample
    often (the total CPU also comes exactly from wait4's rusage; see run_and_sample)."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.procs: dict[int, ProcSample] = {}

    def sample(self) -> None:
        now = time.monotonic()
        pids = [self.root]
        i = 0
        while i < len(pids):
            pids.extend(c for c in _children(pids[i]) if c not in pids)
            i += 1
        for pid in pids:
            stat = _read(f"/proc/{pid}/stat")
            if stat is None:
                continue
            f = _stat_fields(stat)
            p = self.procs.get(pid)
            if p is None:
                p = self.procs[pid] = ProcSample(pid, _role(pid, self.root), first_seen=now)
            elif p.role == "helper":  # a forked worker names itself a moment after it exists
                p.role = _role(pid, self.root)
            p.cpu_s = (int(f[11]) + int(f[12])) / CLK_TCK
            p.children_cpu_s = (int(f[13]) + int(f[14])) / CLK_TCK
            p.last_seen = now
            status = _read(f"/proc/{pid}/status") or ""
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    p.hwm_kb = max(p.hwm_kb, int(line.split()[1]))
                elif line.startswith("VmRSS:"):
                    p.rss_kb = int(line.split()[1])
            try:
                tids = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue
            for tid in tids:
                t = _read(f"/proc/{pid}/task/{tid}/stat")
                if t is None:
                    continue
                comm = t[t.index("(") + 1:t.rindex(")")]
                tf = _stat_fields(t)
                p.threads[int(tid)] = (comm, (int(tf[11]) + int(tf[12])) / CLK_TCK)

    def by_role(self, role: str) -> list[ProcSample]:
        return [p for p in self.procs.values() if p.role == role]

    def thread_breakdown(self, p: ProcSample) -> dict[str, float]:
        """CPU seconds of a process by thread kind: main (Python's main thread), librdkafka
        (rdk:* threads), other (driver I/O loop, prometheus, …)."""
        out = {"main": 0.0, "librdkafka": 0.0, "other": 0.0}
        for tid, (comm, cpu) in p.threads.items():
            kind = "main" if tid == p.pid else "librdkafka" if comm.startswith("rdk:") else "other"
            out[kind] += cpu
        return out


def machine_cpu_s() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot, from /proc/stat."""
    f = (_read("/proc/stat") or "cpu 0 0 0 0 0 0 0 0").splitlines()[0].split()[1:]
    v = [int(x) for x in f] + [0] * 10
    user, nice, system, _idle, _iowait, irq, softirq, steal = v[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK, steal / CLK_TCK


_SERVICE_PIDS: list[int] | None = None


def service_pids() -> list[int]:
    """The local stack's services (Cassandra, Kafka, Redis): pids from $RELAY_STACK_DIR (default
    .stack/) pid files, else (a git worktree whose stack runs from another checkout) the owners
    of the sockets listening on the stack's ports. Found once per run."""
    global _SERVICE_PIDS
    if _SERVICE_PIDS is None:
        state = Path(os.environ.get("RELAY_STACK_DIR", REPO / ".stack"))
        pids = [(_read(str(state / f"{name}.pid")) or "").strip().split("\n")[0] for name in
                ("cassandra", "kafka", "redis")]
        found = [int(p) for p in pids if p.isdigit() and os.path.exists(f"/proc/{p}")]
        if not found:
            s = Stack.from_env()
            found = _listening_pids({s.cql_port, int(s.kafka.rsplit(":", 1)[1]),
                                     int(s.redis_url.rsplit(":", 1)[1].split("/")[0])})
        _SERVICE_PIDS = found
    return _SERVICE_PIDS


def _listening_pids(ports: set[int]) -> list[int]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in (_read(table) or "").splitlines()[1:]:
            f = line.split()
            if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) in ports:
                inodes.add(f"socket:[{f[9]}]")
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    pids.append(int(pid))
                    break
            except OSError:
                continue
    return pids


def services_cpu_s() -> float:
    """CPU seconds so far of the local stack's services (Cassandra, Kafka, Redis)."""
    total = 0.0
    for pid in service_pids():
        stat = _read(f"/proc/{pid}/stat")
        if stat:
            f = _stat_fields(stat)
            total += (int(f[11]) + int(f[12])) / CLK_TCK
    return total


QUIET_CORES = 0.3  # the services' CPU below which the machine counts as quiet


def wait_quiet(what: str, cores: float = QUIET_CORES, max_wait: float | None = None) -> float | None:
    """Before a measured run: wait (at most `max_wait`) until the stack's services use less than
    `cores` over 2 s. After a backlog is written Cassandra compacts for a minute or more; on two
    cores that work would be counted against whatever runs beside it (its CPU, its caches).
    Returns the services' cores over the last 2 s (the run reports it), None when skipped:
    `max_wait` defaults to $BENCH_QUIET_MAX_WAIT_S or 90; 0 skips the wait (the smoke run)."""
    if max_wait is None:
        max_wait = float(os.environ.get("BENCH_QUIET_MAX_WAIT_S", "90"))
    if max_wait <= 0:
        return None
    t0 = time.monotonic()
    while True:
        before, at = services_cpu_s(), time.monotonic()
        time.sleep(2.0)
        used = (services_cpu_s() - before) / (time.monotonic() - at)
        if used < cores or time.monotonic() - t0 > max_wait:
            if time.monotonic() - t0 > 3.0:
                log(f"{what}: waited {time.monotonic() - t0:.0f}s for the services to go quiet "
                    f"({used:.2f} cores now)")
            return used


@dataclass
class CpuSnapshot:
    """Where the machine's CPU went between two moments: to detect runs disturbed by other work."""

    t: float
    machine: float
    steal: float
    services: float
    me: float

    @classmethod
    def take(cls) -> CpuSnapshot:
        machine, steal = machine_cpu_s()
        return cls(time.monotonic(), machine, steal, services_cpu_s(), self_cpu_s())

    def until(self, later: CpuSnapshot, measured_cpu_s: float) -> dict:
        """Average cores used by: the machine, the stack services, the measured processes, this
        orchestrator, and everything else (other users of the machine) over the interval."""
        dt = max(later.t - self.t, 1e-9)
        machine = (later.machine - self.machine) / dt
        services = (later.services - self.services) / dt
        me = (later.me - self.me) / dt
        measured = measured_cpu_s / dt
        return {"machine_cores": round(machine, 2), "services_cores": round(services, 2),
                "measured_cores": round(measured, 2), "orchestrator_cores": round(me, 2),
                "other_cores": round(max(0.0, machine - services - measured - me), 2),
                "steal_cores": round((later.steal - self.steal) / dt, 2)}


@dataclass
class ProcessRun:
    returncode: int
    wall_s: float
    started_at: float  # epoch seconds
    exited_at: float
    cpu_s: float  # wait4 rusage: the root process plus every descendant it reaped
    maxrss_kb: int
    sampler: TreeSampler
    machine: dict = field(default_factory=dict)  # CpuSnapshot.until(): who else used the CPU meanwhile


def run_and_sample(cmd: list[str], *, log_path: Path, env: dict | None = None, timeout: float = 3600,
                   interval: float = 0.2, during=None) -> ProcessRun:
    """Run cmd as its own process group, sample its tree every `interval` s until it exits,
    then collect its rusage with wait4 (exact CPU of it and of the children it reaped).
    `during(sampler)` may be a callable invoked on each tick (e.g. to stop it)."""
    env = dict(os.environ if env is None else env, PYTHONUNBUFFERED="1")
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as fh:
        started_at = time.time()
        snap = CpuSnapshot.take()
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env=env,
                                start_new_session=True)
        sampler = TreeSampler(proc.pid)
        try:
            while True:
                sampler.sample()
                pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
                if pid == proc.pid:
                    break
                if time.monotonic() - t0 > timeout:
                    os.killpg(proc.pid, 9)
                    pid, status, ru = os.wait4(proc.pid, 0)
                    proc.returncode = os.waitstatus_to_exitcode(status)
                    raise RuntimeError(f"{' '.join(cmd[:4])}… did not finish within {timeout:.0f}s; see {log_path}")
                if during is not None:
                    during(sampler, proc)
                time.sleep(interval)
        except BaseException:
            if proc.returncode is None:
                try:
                    os.killpg(proc.pid, 9)
                except ProcessLookupError:
                    pass
            raise
        wall = time.monotonic() - t0
        exited_at = time.time()
        proc.returncode = os.waitstatus_to_exitcode(status)
    cpu = ru.ru_utime + ru.ru_stime
    return ProcessRun(proc.returncode, wall, started_at, exited_at, cpu, ru.ru_maxrss, sampler,
                      snap.until(CpuSnapshot.take(), cpu))


def remove_metrics_dir(supervisor_pid: int) -> None:
    """`relay run` keeps its Prometheus files in <tmp>/relay-metrics-<pid>; drop those of our runs."""
    import shutil
    import tempfile

    shutil.rmtree(os.path.join(tempfile.gettempdir(), f"relay-metrics-{supervisor_pid}"), ignore_errors=True)


def run_json(cmd: list[str], *, log_path: Path, timeout: float = 3600) -> dict:
    """Run a benchmark child that prints one JSON object as its last stdout line."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as err:
        res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, cwd=REPO, env=env, timeout=timeout)
    if res.returncode != 0:
        tail = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{' '.join(cmd[2:5])} failed with exit {res.returncode}:\n{tail}")
    return json.loads(res.stdout.decode().strip().splitlines()[-1])


def self_cpu_s() -> float:
    """CPU seconds of this process so far, all threads (librdkafka's and the driver's included)."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def self_peak_rss_kb() -> int:
    """VmHWM of this process. Not getrusage's ru_maxrss: Linux keeps that across execve, so a child
    forked from a big parent would report the parent's size."""
    for line in (_read("/proc/self/status") or "").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


# --------------------------------------------------------------------------- machine

def machine_info(stack: Stack) -> dict:
    import confluent_kafka

    info: dict = {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "confluent_kafka": getattr(confluent_kafka, "__version__", None) or str(confluent_kafka.version()),
        "librdkafka": confluent_kafka.libversion()[0],
    }
    try:
        import cassandra

        info["scylla_driver"] = cassandra.__version__
    except Exception:  # noqa: BLE001
        pass
    try:
        info["redis"] = redis_client(stack).info("server")["redis_version"]
    except Exception:  # noqa: BLE001
        info["redis"] = None
    info["relay_commit"], info["relay_dirty_files"] = _relay_revision()
    info["cassandra"] = _cassandra_version(stack)
    info["kafka"] = _kafka_version()
    info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    return info


def _relay_revision() -> tuple[str | None, list[str]]:
    """The commit relay ran from, and files of relay/ that differ from it (read-only git calls)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "relay"], cwd=REPO, capture_output=True,
                               text=True, timeout=10).stdout.splitlines()
        return head, [line[3:] for line in dirty]
    except (OSError, subprocess.SubprocessError):
        return None, []


def _cpu_model() -> str | None:
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return None


def _cassandra_version(stack: Stack) -> str | None:
    try:
        from relay import config as relay_config
        from relay import connect

        cfg = relay_config.load(environ=stack.relay_environ())
        session = connect.cql_session(cfg)
        try:
            return session.execute("SELECT release_version FROM system.local").one()[0]
        finally:
            session.cluster.shutdown()
    except Exception:  # noqa: BLE001
        return None


def _kafka_version() -> str | None:
    """The broker's version, from the jar path of the local stack's running broker."""
    pid_text = _read(str(REPO / ".stack" / "kafka.pid"))
    if pid_text and pid_text.strip().isdigit():
        cmd = (_read(f"/proc/{pid_text.strip()}/cmdline") or "").replace("\0", " ")
        m = re.search(r"kafka[-_](?:2\.\d+-)?(\d+\.\d+\.\d+)", cmd)
        if m:
            return m.group(1)
    m = re.search(r'KAFKA_VERSION = "([^"]+)"', _read(str(REPO / "deploy" / "local" / "stack")) or "")
    return m.group(1) if m else None


def python() -> str:
    return sys.executable

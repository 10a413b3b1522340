"""Helpers the fixtures and tests build on: a config writer, an emulated outbox, relay processes,
a topic reader and the delivery audit.

Everything here talks to the real stack; the only emulated part is Scylla's writing of CDC log rows
(relay.testing). Delivery is judged by consuming the topics (`consume_all` + `audit`).
"""
from __future__ import annotations

import atexit
import collections
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from conftest import (
    CQL_PASSWORD,
    CQL_PORT,
    CQL_USER,
    KAFKA_BOOTSTRAP,
    REDIS_URL,
    RELAY_ENV,
    REPLICATION,
)

from relay.testing import CdcEmulator, now_micros


def outbox_ddl(keyspace: str, name: str = "outbox", extra_columns: str = "") -> str:
    """The outbox table of relay's default column mapping (DESIGN §6)."""
    extra = f"{extra_columns}, " if extra_columns else ""
    return (f"CREATE TABLE {keyspace}.{name} (aggregate_id text, id timeuuid, aggregate_type text, "
            f"event_type text, payload blob, created_at timestamp, headers map<text, text>, {extra}"
            f"PRIMARY KEY ((aggregate_id), id))")


def wait_for(predicate: Callable[[], object], timeout: float, what: str,
             failed: Callable[[], str | None] = lambda: None, interval: float = 0.2) -> None:
    """Poll until `predicate()` is true. `failed()` may name a reason to stop early (e.g. the process
    died); connection errors count as "not yet". The timeout only ends a hang: it asserts nothing."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except OSError:
            pass
        reason = failed()
        if reason:
            raise AssertionError(f"{reason} while waiting for {what}")
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def wait_for_clock(us: int) -> None:
    """Until this machine's clock (the one the emulator stamps writes with) has passed `us`."""
    while now_micros() <= us:
        time.sleep(min(0.05, max(0.0, (us - now_micros()) / 1e6)))


# --------------------------------------------------------------------------- configuration

def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML for {value!r}")


def _section(header: str, values: Mapping) -> str:
    return "\n".join([header, *(f"{k} = {toml_value(v)}" for k, v in values.items() if v is not None)]) + "\n"


def _merged(base: dict, override: Mapping | None) -> dict:
    """`override` wins; a None in it removes the key."""
    out = {**base, **(override or {})}
    return {k: v for k, v in out.items() if v is not None}


# Quick windows for tests; every other [relay] key keeps relay's default.
QUICK = {"window_seconds": 2, "confidence_seconds": 1, "poll_interval_seconds": 0.2,
         "shutdown_timeout_seconds": 20, "generation_poll_seconds": 1}


def write_config(path: Path, keyspace: str, *, tables: tuple[str, ...] = ("outbox",), topic: str | None = None,
                 columns: Mapping | None = None, workers: int = 2, bootstrap: str = KAFKA_BOOTSTRAP,
                 redis_url: str = REDIS_URL, scylla: Mapping | None = None, kafka: Mapping | None = None,
                 redis: Mapping | None = None, relay: Mapping | None = None, credentials: bool = True,
                 dlq: Mapping | None = None) -> Path:
    """A relay.toml for one test: relay's tables and the emulated generation tables live in the test's
    own keyspace, topics are `{keyspace}.{aggregate_type}` unless `topic` says otherwise, the dedup
    prefix is the keyspace, and /metrics listens on a port of the kernel's choosing (read back by
    RelayProcess). relay logs in as the stack's role (unless `credentials=False`: then only the
    environment can give it a login) and keeps one replica (the stack is one node).
    `scylla`, `kafka`, `redis` and `relay` override keys of their section; None removes one; `dlq`
    writes a [dlq] section."""
    scylla_base = {"contact_points": ["127.0.0.1"], "port": CQL_PORT, "consistency": "ONE",
                   "relay_keyspace": keyspace, "relay_replication": REPLICATION,
                   "cdc_metadata_keyspace": keyspace, "tablets_metadata_keyspace": keyspace}
    if credentials:
        scylla_base |= {"username": CQL_USER, "password": CQL_PASSWORD}
    parts = [_section("[scylla]", _merged(scylla_base, scylla))]
    for name in tables:
        parts.append(_section("[[tables]]", {"name": f"{keyspace}.{name}",
                                             "topic": topic or f"{keyspace}.{{aggregate_type}}"}))
        if columns:
            parts.append(_section("[tables.columns]", columns))
    parts.append(_section("[kafka]", _merged({"bootstrap_servers": bootstrap, "topic_partitions": 3}, kafka)))
    parts.append(_section("[redis]", _merged({"url": redis_url, "key_prefix": f"{keyspace}:"}, redis)))
    parts.append(_section("[relay]", _merged({"workers": workers, **QUICK}, relay)))
    parts.append(_section("[metrics]", {"host": "127.0.0.1", "port": 0}))
    if dlq:
        parts.append(_section("[dlq]", dlq))
    path.write_text("\n".join(parts))
    return path


# --------------------------------------------------------------------------- ports

class ReservedPort:
    """A loopback port bound by the test and never listened on: nobody else gets it, and a connection
    to it is refused (a service that is down). Close it to hand the port to a process of the test's."""

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.port: int = self.socket.getsockname()[1]

    def close(self) -> None:
        self.socket.close()


class ServerPort:
    """A port for a server the test starts itself and that cannot be told to bind port 0 (Kafka):
    below the kernel's ephemeral range, so no client socket is ever given it, and locked in a file
    shared by all test processes, so no other test picks it. Release it when the server is gone."""

    DIR = Path(tempfile.gettempdir()) / "relay-test-ports"

    def __init__(self) -> None:
        import fcntl
        import random

        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
        self.DIR.mkdir(exist_ok=True)
        for port in random.sample(range(20_000, low), k=min(500, low - 20_000)):
            fd = os.open(self.DIR / f"{port}.lock", os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:  # some other program's
                    os.close(fd)
                    continue
            self.port, self._fd = port, fd
            return
        raise AssertionError(f"no free port below {low}")

    def release(self) -> None:
        os.close(self._fd)


# --------------------------------------------------------------------------- the outbox

@dataclass
class Outbox:
    """An outbox table with emulated CDC, plus what was written to it (for the audit)."""

    emulator: CdcEmulator
    table: str
    written: dict[str, list[str]] = field(default_factory=lambda: collections.defaultdict(list))  # agg -> ids
    seq: collections.Counter = field(default_factory=collections.Counter)

    @classmethod
    def create(cls, cql, keyspace: str, *, name: str = "outbox", ddl: str | None = None, vnodes: int = 16,
               shards: int = 2, tablets: int | None = None, start_us: int | None = None) -> Outbox:
        """The table (the standard outbox unless `ddl` is given) with CDC on: a vnode generation of
        `vnodes` x `shards` streams, or a tablets stream set of `tablets` streams, from `start_us`."""
        cql.execute(ddl or outbox_ddl(keyspace, name))
        emu = CdcEmulator(cql, metadata_keyspace=keyspace)
        emu.create_metadata_tables()
        start = start_us if start_us is not None else now_micros() - 20_000_000
        if tablets is None:
            emu.open_generation(start=start, vnodes=vnodes, shards=shards, seed=5)
            emu.enable_cdc(f"{keyspace}.{name}")
        else:
            emu.enable_cdc(f"{keyspace}.{name}", tablets=tablets, start=start)
        return cls(emu, f"{keyspace}.{name}")

    def rows(self, n: int, aggregates: int, event_type: str = "created") -> list[dict]:
        out = []
        for i in range(n):
            agg = f"agg-{i % aggregates:05d}"
            self.seq[agg] += 1
            eid = uuid.uuid1()
            out.append({"aggregate_id": agg, "id": eid, "aggregate_type": "order", "event_type": event_type,
                        "payload": json.dumps({"agg": agg, "seq": self.seq[agg]}).encode()})
            self.written[agg].append(str(eid))
        return out

    def write(self, n: int, aggregates: int, *, timestamps: list[int] | None = None, **kw) -> None:
        """n events; per aggregate written in order (each round writes an aggregate at most once).
        `timestamps` (one per event, increasing) backdates them, e.g. to spread a backlog over hours."""
        rows = self.rows(n, aggregates, **kw)
        for start in range(0, len(rows), aggregates):
            self.emulator.write_many(self.table, rows[start:start + aggregates],
                                     timestamps=timestamps[start:start + aggregates] if timestamps else None)

    def expected_ids(self) -> set[str]:
        return {e for ids in self.written.values() for e in ids}


class Writer(threading.Thread):
    """Writes `per_round` events per round until stopped, like an application; `rounds` counts them."""

    def __init__(self, outbox: Outbox, per_round: int = 20, aggregates: int = 20, pause: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.outbox, self.per_round, self.aggregates, self.pause = outbox, per_round, aggregates, pause
        self.halt = threading.Event()
        self.rounds = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.halt.is_set():
                self.outbox.write(self.per_round, aggregates=self.aggregates)
                self.rounds += 1
                self.halt.wait(self.pause)  # pacing, not synchronisation
        except BaseException as exc:  # noqa: BLE001 - handed to the test by stop()
            self.error = exc

    def wait_rounds(self, more: int, timeout: float = 120) -> None:
        """Until `more` further rounds are written (e.g. while relay is down)."""
        target = self.rounds + more
        wait_for(lambda: self.rounds >= target, timeout, f"{more} more rounds of writes",
                 lambda: f"the writer failed: {self.error!r}" if self.error else None)

    def stop(self) -> None:
        self.halt.set()
        self.join()
        if self.error is not None:
            raise AssertionError(f"the writer failed: {self.error!r}")


# --------------------------------------------------------------------------- relay processes

def relay_env(env: Mapping[str, str] | None = None, *, credentials: bool = True) -> dict[str, str]:
    """The environment of a relay process: the test process's without any RELAY_* variable, plus
    RELAY_ENV (the stack's login and replication) unless `credentials=False`, plus `env`."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    out.pop("PROMETHEUS_MULTIPROC_DIR", None)
    out["PYTHONUNBUFFERED"] = "1"
    if credentials:
        out |= RELAY_ENV
    return out | dict(env or {})


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group, from /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in "ZX":
            out.append(int(entry))
    return out


def process_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


_LIVE: set[ProcessTree] = set()


@atexit.register
def _kill_leftovers() -> None:  # the last resort when pytest itself is torn down early
    for tree in list(_LIVE):
        tree.stop()


def run_relay(*args: str, env: Mapping[str, str] | None = None, credentials: bool = True,
              timeout: float = 120) -> subprocess.CompletedProcess:
    """A one-shot `python -m relay ARGS` (relay_env); on a hang its whole process group is killed."""
    proc = subprocess.Popen([sys.executable, "-m", "relay", *args], env=relay_env(env, credentials=credentials),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"relay {' '.join(args)} still running after {timeout}s:\n{out}\n{err}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


class ProcessTree:
    """A process started in a session of its own, so its process group is the whole tree it spawns
    (relay's supervisor and workers), and `stop()` ends all of it, even after the leader died."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start_tree(self, argv: list[str], env: Mapping[str, str]) -> None:
        self._fh = open(self.log, "wb")
        self.proc = subprocess.Popen(argv, stdout=self._fh, stderr=subprocess.STDOUT, env=dict(env),
                                     start_new_session=True)
        _LIVE.add(self)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def exited(self) -> str | None:
        if self.proc is not None and self.proc.poll() is not None:
            return f"the process exited ({self.proc.returncode}); log:\n{self.output()[-3000:]}"
        return None

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"did not exit within {timeout}s; log:\n{self.output()[-3000:]}") from None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> list[int]:
        """SIGKILL the whole group (also when the leader is gone and only its children are left), reap
        the leader, and return the members still alive after that (expected: none)."""
        if self.proc is None:
            return []
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # nothing of the group is left
        self.proc.wait(30)
        deadline = time.monotonic() + 10
        while (left := group_members(self.proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._fh.close()
        _LIVE.discard(self)
        return left

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class RelayProcess(ProcessTree):
    """`python -m relay run` as a real process tree (supervisor + spawned workers). Start it with the
    `relay_process` fixture, which stops it whatever happens."""

    PORT_LINE = re.compile(r"/metrics on [^\s:]+:(\d+)")

    def __init__(self, config: Path, *args: str, log: Path, env: Mapping[str, str] | None = None) -> None:
        super().__init__(log)
        self.config = config
        self.args = args
        self.env = relay_env(env)
        self._port: int | None = None

    def start(self) -> RelayProcess:
        self.start_tree([sys.executable, "-m", "relay", "run", "--config", str(self.config), *self.args], self.env)
        return self

    @property
    def port(self) -> int:
        """The port relay bound for /metrics (the config says 0), from its start-up line."""
        if self._port is None:
            found: list[int] = []

            def logged() -> bool:
                m = self.PORT_LINE.search(self.output())
                if m:
                    found.append(int(m.group(1)))
                return bool(m)
            wait_for(logged, 120, "relay's start-up line", self.exited)
            self._port = found[0]
        return self._port

    def get(self, path: str, timeout: float = 5.0) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as resp:
            return resp.read()

    def status(self) -> dict:
        return json.loads(self.get("/status"))

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of one metric (optionally filtered by labels) on /metrics."""
        total = 0.0
        for line in self.get("/metrics").decode().splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            if any(f'{k}="{v}"' not in line for k, v in labels.items()):
                continue
            total += float(line.rsplit(" ", 1)[1])
        return total

    def wait_until(self, predicate, timeout: float, what: str, interval: float = 0.2) -> None:
        """`wait_for`, failing at once (with the log) if relay exits meanwhile."""
        try:
            wait_for(predicate, timeout, what, self.exited, interval)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nlog:\n{self.output()[-3000:]}") from None

    def worker_pids(self) -> list[int]:
        return [w["pid"] for w in self.status().get("workers", []) if w["pid"] and w["alive"]]


# --------------------------------------------------------------------------- Kafka

@dataclass
class Delivered:
    """Every record a consumer reads, partition by partition, each in offset order."""

    records: list[tuple[bytes, dict[str, str], bytes]]  # key, headers, value
    partitions: list[tuple[str, int]]  # (topic, partition) of each record

    def __post_init__(self) -> None:
        assert len(self.records) == len(self.partitions), "a partition for every record"

    @property
    def ids(self) -> collections.Counter:
        return collections.Counter(h["id"] for _, h, _ in self.records)

    def duplicates(self) -> int:
        return sum(n - 1 for n in self.ids.values())

    def cdc_times(self) -> dict[str, int]:
        """event id -> its cdc_time header (µs)."""
        return {h["id"]: int(h["cdc_time"]) for _, h, _ in self.records}


def wait_topics_ready(bootstrap: str, topics, timeout: float = 30.0) -> None:
    """Until every partition of each topic has a leader. CreateTopics answers once the controller
    has the topic; the broker's metadata (and the partitions' leaders) may follow a moment later, and
    a client asking then is told the topic is unknown or has no leader."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    pending = set(topics)
    deadline = time.monotonic() + timeout
    while pending:
        md = admin.list_topics(timeout=10)
        for name in list(pending):
            t = md.topics.get(name)
            if t is not None and t.error is None and t.partitions and \
                    all(p.error is None and p.leader >= 0 for p in t.partitions.values()):
                pending.discard(name)
        if pending:
            assert time.monotonic() < deadline, f"topics without leaders after {timeout}s: {sorted(pending)}"
            time.sleep(0.1)


def _high_watermark(consumer, part, timeout: float = 30.0) -> int:
    """The partition's end offset; a topic relay has just created may not have its leader yet."""
    from confluent_kafka import KafkaError, KafkaException

    settling = {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION}
    deadline = time.monotonic() + timeout
    while True:
        try:
            return consumer.get_watermark_offsets(part, timeout=10)[1]
        except KafkaException as exc:
            if exc.args[0].code() not in settling or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def consume_all(bootstrap: str, topics: list[str], timeout: float = 60.0) -> Delivered:
    """Every record currently in `topics` (up to the high watermarks seen at the start)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    try:
        parts = []
        for topic in topics:
            md = consumer.list_topics(topic, timeout=10)
            if md.topics[topic].error is not None:
                continue
            parts += [TopicPartition(topic, p, 0) for p in md.topics[topic].partitions]
        ends = {(p.topic, p.partition): _high_watermark(consumer, p) for p in parts}
        consumer.assign(parts)
        remaining = {k for k, end in ends.items() if end > 0}
        by_partition: dict[tuple, list] = collections.defaultdict(list)
        deadline = time.monotonic() + timeout
        while remaining and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None or msg.error() is not None:
                continue
            k = (msg.topic(), msg.partition())
            if msg.offset() >= ends[k]:
                continue
            headers = {h: v.decode() for h, v in (msg.headers() or [])}
            by_partition[k].append((msg.key(), headers, msg.value()))
            if msg.offset() + 1 >= ends[k]:
                remaining.discard(k)
        assert not remaining, f"could not read partitions {remaining} to their end within {timeout}s"
        # Partitions one after the other: order is only defined within one, and the audit checks
        # that each aggregate stays in one.
        keys = sorted(by_partition)
        return Delivered([r for k in keys for r in by_partition[k]], [k for k in keys for _ in by_partition[k]])
    finally:
        consumer.close()


def wait_for_cdc_time(relay: RelayProcess, bootstrap: str, topic: str, at_least_us: int, what: str,
                      timeout: float = 120) -> None:
    """Until Kafka holds a record of `topic` written at or after `at_least_us`, published by `relay`."""
    relay.wait_until(lambda: any(t >= at_least_us for t in consume_all(bootstrap, [topic]).cdc_times().values()),
                     timeout, what)


# --------------------------------------------------------------------------- the audit

@dataclass
class AuditReport:
    """What a consumer of the topics sees, against what was written."""

    lost: list[str] = field(default_factory=list)
    duplicated: dict[str, int] = field(default_factory=dict)  # id -> extra copies
    unexpected: list[str] = field(default_factory=list)
    out_of_order: list[str] = field(default_factory=list)  # "aggregate: id i after id j"
    reordered: list[str] = field(default_factory=list)  # ids delivered after a newer record of their aggregate
    wrong_key: list[str] = field(default_factory=list)  # "aggregate: id carries key k"
    split: dict[str, set] = field(default_factory=dict)  # aggregate -> the partitions it was found in

    def problems(self, *, allow_duplicates: bool = False) -> list[str]:
        out = []
        if self.lost:
            out.append(f"{len(self.lost)} lost, e.g. {sorted(self.lost)[:3]}")
        if self.duplicated and not allow_duplicates:
            out.append(f"{sum(self.duplicated.values())} duplicate records, e.g. {sorted(self.duplicated)[:3]}")
        if self.unexpected:
            out.append(f"{len(self.unexpected)} unexpected, e.g. {sorted(self.unexpected)[:3]}")
        if self.out_of_order:
            out.append(f"{len(self.out_of_order)} out of order, e.g. {self.out_of_order[:3]}")
        if self.wrong_key:
            out.append(f"{len(self.wrong_key)} under another key than their aggregate, e.g. {self.wrong_key[:3]}")
        if self.split:
            agg, parts = next(iter(self.split.items()))
            out.append(f"{len(self.split)} aggregates in several partitions, e.g. {agg} in {sorted(parts)}")
        return out


def audit(written: Mapping[str, list[str]], delivered: Delivered) -> AuditReport:
    """Lost, duplicated, unexpected and out-of-order events per aggregate, over *every* delivery: an
    aggregate's records must appear in written order in its partition, and a copy of an older record
    after a newer one is out of order like any other. An aggregate found in two partitions, and a
    record keyed by anything but its aggregate id, are reported too."""
    report = AuditReport()
    index = {eid: (agg, i) for agg, ids in written.items() for i, eid in enumerate(ids)}
    counts = delivered.ids
    report.lost = [eid for eid in index if eid not in counts]
    report.duplicated = {eid: n - 1 for eid, n in counts.items() if n > 1}
    report.unexpected = [eid for eid in counts if eid not in index]
    newest: dict[str, tuple[int, str]] = {}
    where: dict[str, set] = collections.defaultdict(set)
    for (key, headers, _), part in zip(delivered.records, delivered.partitions, strict=True):
        eid = headers["id"]
        if eid not in index:
            continue
        agg, i = index[eid]
        where[agg].add(part)
        if key is None or key.decode() != agg:
            report.wrong_key.append(f"{agg}: {eid} carries key {key!r}")
        seen = newest.get(agg)
        if seen is not None and i < seen[0]:
            report.out_of_order.append(f"{agg}: #{i} ({eid}) after #{seen[0]} ({seen[1]})")
            report.reordered.append(eid)
        if seen is None or i > seen[0]:
            newest[agg] = (i, eid)
    report.split = {agg: p for agg, p in where.items() if len(p) > 1}
    return report


def split_copies(delivered: Delivered) -> tuple[Delivered, Delivered]:
    """(first copies, later copies) of each record, each in the order a consumer reads them."""
    seen: set[str] = set()
    first: list[int] = []
    later: list[int] = []
    for i, (_, headers, _) in enumerate(delivered.records):
        (later if headers["id"] in seen else first).append(i)
        seen.add(headers["id"])

    def pick(idx: list[int]) -> Delivered:
        return Delivered([delivered.records[i] for i in idx], [delivered.partitions[i] for i in idx])
    return pick(first), pick(later)


def assert_delivered_in_order(outbox: Outbox | Mapping[str, list[str]], delivered: Delivered, *,
                              allow_duplicates: bool = False) -> AuditReport:
    """The audit of `outbox.written` (or of a written map) against what Kafka holds; returns the report."""
    written = outbox.written if isinstance(outbox, Outbox) else outbox
    report = audit(written, delivered)
    problems = report.problems(allow_duplicates=allow_duplicates)
    assert not problems, "; ".join(problems)
    return report

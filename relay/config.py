"""Configuration: one TOML file plus `RELAY_<SECTION>__<KEY>` environment overrides.

Loaded into frozen dataclasses; every error names the file (or variable) and the key,
e.g. `relay.toml: kafka.bootstrap_servers: required`. Secrets (passwords, SASL) may come
from the environment only and are never printed (see `Config.redacted`).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relay.errors import ConfigError

CONSISTENCY_LEVELS = ("ONE", "TWO", "THREE", "QUORUM", "ALL", "LOCAL_QUORUM", "EACH_QUORUM", "LOCAL_ONE")
OPERATIONS = ("insert", "update")
DLQ_ORDERS = ("skip", "park-aggregate")
MIN_CONFIDENCE_S = 1.0
SECRET_KEYS = {"password", "sasl.password", "ssl.key.password", "ssl.keystore.password",
               "sasl.oauthbearer.client.secret"}


def mask_url(url: str) -> str:
    """redis://user:secret@host → redis://user:***@host."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True)
class ScyllaConfig:
    contact_points: tuple[str, ...] = ("127.0.0.1",)
    port: int = 9042
    username: str = ""
    password: str = ""
    local_dc: str = ""
    consistency: str = "QUORUM"
    ssl_enabled: bool = False
    ssl_ca_file: str = ""
    ssl_cert_file: str = ""
    ssl_key_file: str = ""
    relay_keyspace: str = "relay"
    # Checkpoints and dead letters are relay's memory: three replicas, so one node down loses
    # neither. A one-node development cluster sets its own (deploy/compose/relay.toml).
    relay_replication: Mapping[str, Any] = field(
        default_factory=lambda: {"class": "NetworkTopologyStrategy", "replication_factor": 3})
    cdc_metadata_keyspace: str = "system_distributed"
    tablets_metadata_keyspace: str = "system"
    bypass_cache: str = "auto"  # auto | true | false
    request_timeout_seconds: float = 12.0
    fetch_size: int = 5000
    max_in_keys: int = 100  # streams per IN query; Scylla refuses more than 100 (max_partition_key_restrictions)


@dataclass(frozen=True)
class ColumnsConfig:
    event_id: str = "id"
    aggregate_type: str = "aggregate_type"
    aggregate_id: str = "aggregate_id"
    event_type: str = "event_type"
    payload: str = "payload"
    headers: tuple[str, ...] = ()


@dataclass(frozen=True)
class TableConfig:
    name: str = ""
    topic: str = "outbox.event.{aggregate_type}"
    operations: tuple[str, ...] = ("insert",)
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)

    @property
    def keyspace(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def table(self) -> str:
        return self.name.split(".", 1)[1]


@dataclass(frozen=True)
class KafkaConfig:
    bootstrap_servers: str = ""
    producer: Mapping[str, Any] = field(default_factory=dict)
    create_topics: bool = True
    topic_partitions: int = 6
    topic_replication_factor: int = -1  # -1: the broker's default.replication.factor
    delivery_timeout_seconds: float = 60.0


@dataclass(frozen=True)
class RedisConfig:
    url: str = "redis://127.0.0.1:6379/0"
    dedup_ttl_seconds: int = 3600
    on_outage: str = "fail-open"  # fail-open | pause
    key_prefix: str = "relay:"
    socket_timeout_seconds: float = 0.5


@dataclass(frozen=True)
class RelaySection:
    workers: int = 0
    replica_id: str = ""
    window_seconds: float = 10.0
    confidence_seconds: float = 10.0
    # Live windows end on this grid: the latency it adds is at most this. While a replica group's reads
    # carry events it reads on a grid 2.5x finer (relay.schedule.BUSY_FRACTION); an idle one stays on this.
    poll_interval_seconds: float = 0.25
    checkpoint_interval_seconds: float = 5.0  # how stale a saved position may be (a crash re-reads at most this)
    start_from: str = "earliest"  # earliest | now | lookback:<seconds>
    shutdown_timeout_seconds: float = 30.0
    generation_poll_seconds: float = 10.0
    heartbeat_timeout_seconds: float = 30.0
    ttl_alert_margin_seconds: float = 3600.0


@dataclass(frozen=True)
class RetryConfig:
    preset: str = "aggressive"  # aggressive | conservative
    attempts: int = 0  # 0: from the preset
    wait_initial_seconds: float = 0.0
    wait_max_seconds: float = 0.0

    def policy(self) -> tuple[int, float, float]:
        """(attempts, wait_initial, wait_max) after applying explicit values over the preset."""
        attempts, initial, maximum = PRESETS[self.preset]
        return (self.attempts or attempts, self.wait_initial_seconds or initial, self.wait_max_seconds or maximum)


PRESETS = {"aggressive": (5, 0.1, 0.5), "conservative": (3, 1.0, 10.0)}


@dataclass(frozen=True)
class BreakerConfig:
    fail_max: int = 5
    reset_timeout_seconds: float = 10.0


@dataclass(frozen=True)
class DlqConfig:
    auto_replay: bool = False
    replay_interval_seconds: float = 300.0
    max_attempts: int = 5  # auto-recovery attempts of a retryable dead letter before it becomes `failed`
    order: str = "skip"  # skip | park-aggregate (DESIGN §4b)


@dataclass(frozen=True)
class LeasesConfig:
    """Slots owned through Kafka's consumer-group coordinator (DESIGN §5b)."""

    duration_seconds: float = 10.0  # session.timeout.ms: a dead or frozen replica's slots move after this
    renew_seconds: float = 3.0  # how often membership is proven for self-fencing; heartbeats every min(this, 1 s)
    slots: int = 64  # partitions of the coordination topic; fixed for the life of the relay keyspace
    group_id: str = ""  # default relay.<relay keyspace>
    topic: str = ""  # default relay.slots.<relay keyspace>
    static_membership: bool = False  # group.instance.id = replica id (StatefulSets)


MAX_SLOTS = 1024


@dataclass(frozen=True)
class MetricsConfig:
    host: str = "0.0.0.0"
    port: int = 9100


@dataclass(frozen=True)
class Config:
    scylla: ScyllaConfig = field(default_factory=ScyllaConfig)
    tables: tuple[TableConfig, ...] = ()
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    relay: RelaySection = field(default_factory=RelaySection)
    retry: RetryConfig = field(default_factory=RetryConfig)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    dlq: DlqConfig = field(default_factory=DlqConfig)
    leases: LeasesConfig = field(default_factory=LeasesConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    source: str = "defaults"  # the file (or "environment") the config came from, for messages

    @property
    def replica_id(self) -> str:
        return self.relay.replica_id or socket.gethostname()

    @property
    def leases_group_id(self) -> str:
        return self.leases.group_id or f"relay.{self.scylla.relay_keyspace}"

    @property
    def leases_topic(self) -> str:
        return self.leases.topic or f"relay.slots.{self.scylla.relay_keyspace}"

    @property
    def worker_count(self) -> int:
        return self.relay.workers or os.cpu_count() or 1

    def table(self, name: str) -> TableConfig:
        for t in self.tables:
            if t.name == name:
                return t
        known = ", ".join(t.name for t in self.tables) or "none"
        raise ConfigError(f"{self.source}: no [[tables]] entry named {name!r} (configured: {known})")

    def validate(self) -> Config:
        """Check values that types alone cannot; raises ConfigError naming the key."""
        src = self.source

        def bad(key: str, msg: str) -> ConfigError:
            return ConfigError(f"{src}: {key}: {msg}")

        if not self.kafka.bootstrap_servers:
            raise bad("kafka.bootstrap_servers", "required")
        if not self.scylla.contact_points:
            raise bad("scylla.contact_points", "required (at least one host)")
        if self.scylla.consistency.upper() not in CONSISTENCY_LEVELS:
            raise bad("scylla.consistency",
                      f"{self.scylla.consistency!r} is not one of {', '.join(CONSISTENCY_LEVELS)}")
        if not 1 <= self.scylla.max_in_keys <= 100:
            raise bad("scylla.max_in_keys", "must be 1..100 (Scylla refuses an IN over 100 partition keys)")
        if self.scylla.bypass_cache not in ("auto", "true", "false"):
            raise bad("scylla.bypass_cache", "must be auto, true or false")
        for key in ("relay_keyspace", "cdc_metadata_keyspace", "tablets_metadata_keyspace"):
            name = getattr(self.scylla, key)
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,47}", name):
                raise bad(f"scylla.{key}", "not a valid keyspace name")
            if name != name.lower():
                # relay writes these names unquoted, which CQL folds to lowercase: "Relay" would be
                # created as relay, then looked up as Relay and not found.
                raise bad(f"scylla.{key}", f"{name!r}: use lowercase ({name.lower()!r}); CQL folds unquoted names")
        if self.redis.on_outage not in ("fail-open", "pause"):
            raise bad("redis.on_outage", f"{self.redis.on_outage!r}: use fail-open or pause")
        if not self.redis.url.startswith(("redis://", "rediss://", "unix://")):
            raise bad("redis.url", "must start with redis://, rediss:// or unix://")
        if self.redis.dedup_ttl_seconds <= 0:
            raise bad("redis.dedup_ttl_seconds", "must be > 0")
        r = self.relay
        if r.workers < 0:
            raise bad("relay.workers", "must be >= 0 (0 = CPU count)")
        for key in ("window_seconds", "poll_interval_seconds", "checkpoint_interval_seconds",
                    "shutdown_timeout_seconds", "generation_poll_seconds", "heartbeat_timeout_seconds"):
            if getattr(r, key) <= 0:
                raise bad(f"relay.{key}", "must be > 0")
        if r.confidence_seconds < MIN_CONFIDENCE_S:
            raise bad("relay.confidence_seconds", f"must be >= {MIN_CONFIDENCE_S}: rows reach the CDC log up to a "
                      "write timeout after their timestamp, and reading closer to now loses them")
        # Timeout hierarchy: the worker's loop ticks its progress between blocking calls, so every
        # single wait must end well before the supervisor's patience runs out (DESIGN §4).
        for key, value in (("scylla.request_timeout_seconds", self.scylla.request_timeout_seconds),
                           ("redis.socket_timeout_seconds", self.redis.socket_timeout_seconds)):
            if value <= 0:
                raise bad(key, "must be > 0")
            if value * 2 > r.heartbeat_timeout_seconds:
                raise bad(key, f"{value}s must be at most half of relay.heartbeat_timeout_seconds "
                          f"({r.heartbeat_timeout_seconds}s), or a slow request looks like a hung worker")
        if self.kafka.delivery_timeout_seconds <= 0:
            raise bad("kafka.delivery_timeout_seconds", "must be > 0")
        if self.dlq.replay_interval_seconds <= 0:
            raise bad("dlq.replay_interval_seconds", "must be > 0")
        if self.dlq.max_attempts < 1:
            raise bad("dlq.max_attempts", "must be >= 1")
        if self.dlq.order not in DLQ_ORDERS:
            raise bad("dlq.order", f"{self.dlq.order!r}: use {' or '.join(DLQ_ORDERS)}")
        parse_start_from(r.start_from, src)
        if self.retry.preset not in PRESETS:
            raise bad("retry.preset", f"{self.retry.preset!r}: use {' or '.join(PRESETS)}")
        if self.breaker.fail_max < 1:
            raise bad("breaker.fail_max", "must be >= 1")
        lz = self.leases
        if not 1 <= lz.duration_seconds <= 1800:
            # Kafka's brokers accept 6..1800 s by default (group.min/max.session.timeout.ms).
            raise bad("leases.duration_seconds", f"{lz.duration_seconds}: must be 1..1800 (Kafka's session "
                      "timeout; brokers accept 6..1800 s unless group.min.session.timeout.ms is lowered)")
        if lz.renew_seconds <= 0 or lz.renew_seconds * 2 >= lz.duration_seconds:
            raise bad("leases.renew_seconds", f"{lz.renew_seconds}s must be > 0 and less than half of "
                      f"leases.duration_seconds ({lz.duration_seconds}s), or one late renewal loses the slots")
        if not 1 <= lz.slots <= MAX_SLOTS:
            raise bad("leases.slots", f"{lz.slots}: must be 1..{MAX_SLOTS}")
        for key in ("group_id", "topic"):
            value = getattr(lz, key)
            if value and not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", value):
                raise bad(f"leases.{key}", f"{value!r}: use letters, digits, '.', '_' and '-' (Kafka names)")
        if not 0 <= self.metrics.port < 65536:  # 0: any free port, reported in the start-up log line
            raise bad("metrics.port", "must be a TCP port (or 0 for any free one)")
        seen = set()
        for i, t in enumerate(self.tables):
            where = f"tables[{i}]"
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*", t.name):
                raise bad(f"{where}.name", f"{t.name!r}: expected keyspace.table")
            if t.name in seen:
                raise bad(f"{where}.name", f"{t.name} is configured twice")
            seen.add(t.name)
            for op in t.operations:
                if op not in OPERATIONS:
                    raise bad(f"{where}.operations", f"{op!r}: use insert and/or update")
            if not t.operations:
                raise bad(f"{where}.operations", "at least one operation")
            aliases = {f.name for f in dataclasses.fields(ColumnsConfig)} - {"headers"}
            for placeholder in re.findall(r"{([^{}]*)}", t.topic):
                if placeholder not in aliases:
                    raise bad(f"{where}.topic", f"unknown placeholder {{{placeholder}}}; use one of "
                              + ", ".join(sorted(aliases)))
            if not t.topic:
                raise bad(f"{where}.topic", "required")
        return self

    def redacted(self) -> dict[str, Any]:
        """The config as a dict with secrets masked, safe to print or log."""
        def scrub(obj: Any) -> Any:
            if dataclasses.is_dataclass(obj):
                return {f.name: ("***" if f.name in SECRET_KEYS and getattr(obj, f.name) else
                                 mask_url(getattr(obj, f.name)) if f.name == "url" else
                                 scrub(getattr(obj, f.name))) for f in dataclasses.fields(obj)}
            if isinstance(obj, Mapping):
                return {k: ("***" if k in SECRET_KEYS else scrub(v)) for k, v in obj.items()}
            if isinstance(obj, tuple):
                return [scrub(v) for v in obj]
            return obj
        return scrub(self)


def parse_start_from(value: str, source: str = "config") -> tuple[str, float]:
    """("earliest", 0) | ("now", 0) | ("lookback", seconds)."""
    if value in ("earliest", "now"):
        return value, 0.0
    m = re.fullmatch(r"lookback:(\d+(?:\.\d+)?)", value)
    if not m:
        raise ConfigError(f"{source}: relay.start_from: {value!r}: use earliest, now or lookback:<seconds>")
    return "lookback", float(m.group(1))


# --------------------------------------------------------------------------- loading

def _coerce(value: Any, typ: Any, where: str) -> Any:
    origin = typing.get_origin(typ)
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if typ is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if typ is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if origin is tuple:
        (inner, _) = typing.get_args(typ)
        if isinstance(value, str):
            value = json.loads(value) if value.strip().startswith("[") else [v.strip() for v in value.split(",")
                                                                              if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (Mapping, dict) or typ is Mapping:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ConfigError(f"{where}: expected a table (JSON object in the environment)") from None
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(typ):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return _build(typ, value, where)
    raise TypeError(f"unsupported config type {typ!r}")


def _build(cls: type, data: Mapping[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.name != "source"}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            known = ", ".join(sorted(names))
            raise ConfigError(f"{where + '.' if where else ''}{key}: unknown key (known: {known})")
        kwargs[key] = _coerce(value, hints[key], f"{where + '.' if where else ''}{key}")
    return cls(**kwargs)


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """RELAY_<SECTION>__<KEY>=v → {section: {key: v}}; RELAY_TABLES__<i>__<KEY> for [[tables]];
    RELAY_KAFKA__PRODUCER__LINGER_MS → kafka.producer["linger.ms"]."""
    out: dict[str, Any] = {}
    for var, value in environ.items():
        if not var.startswith("RELAY_") or "__" not in var:
            continue
        parts = var[len("RELAY_"):].lower().split("__")
        if parts[0] == "kafka" and len(parts) == 3 and parts[1] == "producer":
            out.setdefault("kafka", {}).setdefault("producer", {})[parts[2].replace("_", ".")] = value
        elif parts[0] == "tables" and len(parts) >= 3 and parts[1].isdigit():
            tables = out.setdefault("tables", {})
            node = tables.setdefault(int(parts[1]), {})
            for p in parts[2:-1]:
                node = node.setdefault(p, {})
            node[parts[-1]] = value
        elif len(parts) == 2:
            out.setdefault(parts[0], {})[parts[1]] = value
        else:
            raise ConfigError(f"{var}: not of the form RELAY_<SECTION>__<KEY>")
    return out


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = dict(value) if isinstance(value, Mapping) else value
    return base


def load(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None,
         validate: bool = True) -> Config:
    """Load `path` (or $RELAY_CONFIG, or ./relay.toml if present), apply env overrides, validate."""
    environ = os.environ if environ is None else environ
    path = path or environ.get("RELAY_CONFIG") or ("relay.toml" if Path("relay.toml").exists() else None)
    data: dict[str, Any] = {}
    source = "environment"
    if path:
        source = str(path)
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    env = {k: v for k, v in environ.items() if k != "RELAY_CONFIG"}
    try:
        overrides = _env_overrides(env)
        if "tables" in overrides:
            tables = list(data.get("tables", []))
            for idx, values in sorted(overrides.pop("tables").items()):
                while len(tables) <= idx:
                    tables.append({})
                tables[idx] = _merge(dict(tables[idx]), values)
            data["tables"] = tables
        data = _merge(data, overrides)
        if "tables" in data and not isinstance(data["tables"], list):
            raise ConfigError("tables: use [[tables]] (an array of tables)")
        cfg = _build(Config, data, "")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    cfg = dataclasses.replace(cfg, source=source)
    return cfg.validate() if validate else cfg

"""Building clients from config. Every process calls these after it starts (never before a spawn)."""
from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from relay.config import Config
from relay.errors import ConfigError, UserError

T = TypeVar("T")


class Pending(Generic[T]):
    """A client built on a thread of its own while the process goes on with its start: connecting
    is mostly waiting on the network, and imports and other clients can use that time."""

    def __init__(self, build: Callable[[], T], name: str) -> None:
        self._result: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(build,), name=name, daemon=True)
        self._thread.start()

    def _run(self, build: Callable[[], T]) -> None:
        try:
            self._result = build()
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits for the client
            self._error = exc

    def failed(self) -> BaseException | None:
        """The error the build ended with, without waiting (None while it runs or after it succeeded)."""
        return None if self._thread.is_alive() else self._error

    def get(self) -> T:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]

    def discard(self, close: Callable[[T], None]) -> None:
        """Give up on the client: closed now if it was built, or as soon as its build ends."""
        def later() -> None:
            self._thread.join()
            if self._error is None and self._result is not None:
                close(self._result)
        if self._thread.is_alive():
            threading.Thread(target=later, name="discard", daemon=True).start()
        else:
            later()


def without_numpy() -> None:
    """For relay's own long-running processes (`relay run` and its workers), before the driver is
    imported: the driver imports numpy whenever it is installed, for a row parser relay never asks
    for. Where numpy is installed (development and benchmark environments, not relay's image) that
    is ~0.15 s of CPU and ~15 MB per process; relay's processes do without it."""
    import sys

    if "numpy" not in sys.modules:
        sys.modules["numpy"] = None  # type: ignore[assignment]  # `import numpy` raises ImportError


def import_cql_driver(hot_path: bool = False) -> None:
    """The driver's modules, imported before `cql_session` runs on a thread beside other imports:
    two threads importing modules that import each other can see one half-initialized."""
    import cassandra.auth  # noqa: F401
    import cassandra.cluster  # noqa: F401
    import cassandra.policies  # noqa: F401

    import relay.routing  # noqa: F401
    if hot_path:
        import cassandra.io.libevreactor  # noqa: F401
    else:
        import cassandra.io.asyncioreactor  # noqa: F401


def cql_session(cfg: Config, *, connect_timeout: float = 10.0, hot_path: bool = False):
    """A connected Session at the configured consistency, with tuple rows.

    `hot_path` (workers) keeps the driver's libev reactor, its fastest; everything else uses the
    asyncio reactor, because libev's exit hook often stalls a short-lived process for 5 s."""
    from cassandra import ConsistencyLevel
    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable
    from cassandra.policies import (
        DCAwareRoundRobinPolicy,
        ExponentialReconnectionPolicy,
        RoundRobinPolicy,
    )
    from cassandra.query import tuple_factory

    from relay.routing import CdcTokenAwarePolicy

    s = cfg.scylla
    base = DCAwareRoundRobinPolicy(local_dc=s.local_dc) if s.local_dc else RoundRobinPolicy()
    profile = ExecutionProfile(
        load_balancing_policy=CdcTokenAwarePolicy(base),
        consistency_level=ConsistencyLevel.name_to_value[s.consistency.upper()],
        request_timeout=s.request_timeout_seconds,
        row_factory=tuple_factory,
    )
    kwargs: dict[str, Any] = {
        "contact_points": list(s.contact_points), "port": s.port,
        "execution_profiles": {EXEC_PROFILE_DEFAULT: profile},
        "connect_timeout": connect_timeout, "control_connection_timeout": connect_timeout,
        # The driver's default waits up to 10 minutes between attempts: after an outage relay would
        # sit idle long after the nodes are back.
        "reconnection_policy": ExponentialReconnectionPolicy(0.5, 10.0),
        # Scylla speaks v4 at most. Asking for it avoids a refused v5 attempt there, and keeps the stack
        # (Cassandra 5 would take v5) on the path Scylla runs: v5 frames every request in segments whose
        # compression the driver does in Python, about 0.5 ms of CPU per query.
        "protocol_version": 4,
        # The driver's schema metadata covers every keyspace of the cluster: fetched and parsed at each
        # connect and again after any schema change anywhere. relay needs a few entries (load_metadata);
        # with 111 keyspaces on the local stack the full fetch cost each process ~0.1 s of CPU and ~0.6 s.
        "schema_metadata_enabled": False,
    }
    if s.username:
        kwargs["auth_provider"] = PlainTextAuthProvider(s.username, s.password)
    if s.ssl_enabled:
        ctx = ssl.create_default_context(cafile=s.ssl_ca_file or None)
        if s.ssl_cert_file:
            ctx.load_cert_chain(s.ssl_cert_file, s.ssl_key_file or None)
        kwargs["ssl_context"] = ctx
    if hot_path:
        from cassandra.cluster import DefaultConnection as connection_class  # libev where it is built
    else:
        from cassandra.io.asyncioreactor import AsyncioConnection as connection_class
    kwargs["connection_class"] = without_timer_cycles(connection_class)
    cluster = Cluster(**kwargs)
    import logging

    driver_log = logging.getLogger("cassandra")
    level = driver_log.level
    # Each failed attempt is logged with a traceback by the driver; relay reports it once, below.
    driver_log.setLevel(logging.CRITICAL)
    try:
        session = cluster.connect()
    except NoHostAvailable as exc:
        cluster.shutdown()
        first = next(iter(exc.errors.values()), exc)
        where = ", ".join(f"{h}:{s.port}" for h in s.contact_points)
        raise UserError(f"cannot connect to Scylla/Cassandra at {where}: {_short(first)}") from None
    finally:
        driver_log.setLevel(level)
    session.default_fetch_size = s.fetch_size
    load_metadata(session, [s.relay_keyspace], [t.name for t in cfg.tables])
    return session


def load_metadata(session, keyspaces: Iterable[str], tables: Iterable[str]) -> None:
    """The driver metadata relay reads: its own keyspace, and each outbox table with its CDC log and
    their keyspace (token-aware routing finds no replicas in a keyspace the driver does not know:
    it would route nothing, silently). Missing ones are skipped; `table_metadata` asks again later.
    A keyspace's replication changed while relay runs is seen at its next start (routing is only
    slower meanwhile)."""
    cluster = session.cluster
    tables = list(tables)
    for keyspace in dict.fromkeys([*keyspaces, *(t.split(".", 1)[0] for t in tables)]):
        cluster.refresh_keyspace_metadata(keyspace)  # an unknown keyspace is a no-op
    for table in tables:
        keyspace, name = table.split(".", 1)
        if keyspace in cluster.metadata.keyspaces:
            cluster.refresh_table_metadata(keyspace, name)
            cluster.refresh_table_metadata(keyspace, f"{name}_scylla_cdc_log")


_TIMER_SAFE: dict[type, type] = {}


def without_timer_cycles(connection_class: type) -> type:
    """The driver's connection class, with request timers that hold their request weakly.

    Each request's timeout timer holds the request's bound `_on_timeout` and the request holds the
    timer, even once answered: every finished request is a reference cycle, freed only by the cyclic
    garbage collector, and it keeps its last page of rows (a read of 5,000 outbox rows: ~5 MB). Held
    weakly, a finished read is freed as soon as relay drops it, so workers need no frequent
    collections (relay.heap). While a request is in flight the connection holds it, so its timer
    still fires."""
    safe = _TIMER_SAFE.get(connection_class)
    if safe is None:
        import weakref

        from cassandra.cluster import ResponseFuture

        class TimerSafe(connection_class):  # type: ignore[valid-type, misc]
            @classmethod
            def create_timer(cls, timeout, callback):
                if not isinstance(getattr(callback, "__self__", None), ResponseFuture):
                    return super().create_timer(timeout, callback)
                method = weakref.WeakMethod(callback)

                def fire() -> None:
                    bound = method()
                    if bound is not None:  # gone: nobody waits for the request any more
                        bound()
                return super().create_timer(timeout, fire)

        TimerSafe.__name__ = TimerSafe.__qualname__ = f"TimerSafe{connection_class.__name__}"
        safe = _TIMER_SAFE[connection_class] = TimerSafe
    return safe


def table_metadata(session, qualified: str):
    """The table's driver metadata, or None; refreshed, since another process may have just created it."""
    keyspace, name = qualified.split(".", 1)
    cluster = session.cluster
    cluster.refresh_keyspace_metadata(keyspace)  # refreshing a table of an unknown keyspace is a no-op
    if keyspace not in cluster.metadata.keyspaces:
        return None
    cluster.refresh_table_metadata(keyspace, name)
    return cluster.metadata.keyspaces[keyspace].tables.get(name)


def redis_client(cfg: Config):
    """A Redis client that fails fast (no hidden 10-attempt retry loop): relay decides what an outage means."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    r = cfg.redis
    return redis.Redis.from_url(
        r.url, socket_timeout=r.socket_timeout_seconds, socket_connect_timeout=r.socket_timeout_seconds,
        retry=Retry(NoBackoff(), 0), health_check_interval=10,
    )


# librdkafka's message timeout under its two names. relay needs it infinite (0): a record that
# times out may still be written, and a later record of its partition can be acknowledged after
# it, so a finite timeout means duplicates and reordering (relay.delivery). How long reports may
# be overdue before Kafka counts as failing is `kafka.delivery_timeout_seconds` instead.
_MESSAGE_TIMEOUT_KEYS = ("message.timeout.ms", "delivery.timeout.ms")
LIBRDKAFKA_BATCH_SIZE = 1_000_000  # librdkafka's default batch.size


def kafka_client_base(cfg: Config) -> dict[str, Any]:
    """What every Kafka client of relay shares with the producer: bootstrap, the user's security
    settings, and librdkafka's logs through relay's logging (never raw to stderr)."""
    return {"bootstrap.servers": cfg.kafka.bootstrap_servers, "logger": _kafka_logger(),
            **{k: v for k, v in cfg.kafka.producer.items() if k.startswith(("security.", "sasl.", "ssl."))}}


def producer_config(cfg: Config, *, batch_size: int | None = None, **extra: Any) -> dict[str, Any]:
    """librdkafka settings: relay's defaults (DESIGN §6), then the user's [kafka.producer] overrides.

    `batch_size` caps `batch.size` (the user's value or librdkafka's default) so that a batch
    fits the smallest `max.message.bytes` of the topics relay writes to (relay.publisher)."""
    for key in _MESSAGE_TIMEOUT_KEYS:
        if key in cfg.kafka.producer and str(cfg.kafka.producer[key]).strip() != "0":
            raise ConfigError(f"{cfg.source}: kafka.producer.{key}: relay needs 0 (never give up on a record: a "
                              f"timed-out record may be written anyway, out of order); set "
                              f"kafka.delivery_timeout_seconds to bound how long reports may be overdue")
    conf: dict[str, Any] = {
        "bootstrap.servers": cfg.kafka.bootstrap_servers,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 20,
        "compression.type": "lz4",
        "partitioner": "murmur2_random",
        "message.timeout.ms": 0,
        "client.id": f"relay-{cfg.replica_id}",
        # librdkafka logs every refused connection to stderr; route it through logging instead.
        "logger": _kafka_logger(),
    }
    conf.update(extra)
    conf.update({k: v for k, v in cfg.kafka.producer.items()})
    if batch_size is not None:
        conf["batch.size"] = max(1, min(int(conf.get("batch.size", LIBRDKAFKA_BATCH_SIZE)), batch_size))
    return conf


def _kafka_logger():
    import logging

    return logging.getLogger("relay.kafka")


def _short(exc: BaseException) -> str:
    text = str(exc) or exc.__class__.__name__
    return text.splitlines()[0][:200]

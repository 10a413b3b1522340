"""Building clients from config. Every process calls these after it starts (never before a spawn)."""
from __future__ import annotations

import ssl
from typing import Any

from relay.config import Config
from relay.errors import ConfigError, UserError


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
    }
    if s.username:
        kwargs["auth_provider"] = PlainTextAuthProvider(s.username, s.password)
    if s.ssl_enabled:
        ctx = ssl.create_default_context(cafile=s.ssl_ca_file or None)
        if s.ssl_cert_file:
            ctx.load_cert_chain(s.ssl_cert_file, s.ssl_key_file or None)
        kwargs["ssl_context"] = ctx
    if not hot_path:
        from cassandra.io.asyncioreactor import AsyncioConnection

        kwargs["connection_class"] = AsyncioConnection
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
    return session


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

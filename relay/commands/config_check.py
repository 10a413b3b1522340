"""`relay config check`: load and validate the config, then talk to each service once."""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from relay.errors import UserError

# Below three replicas, one node down makes QUORUM writes of checkpoints and dead letters fail
# (with one replica, a lost disk loses them).
MIN_REPLICAS = 3


def register(sub, common) -> None:
    p = sub.add_parser("config", parents=[common], help="check the configuration")
    action = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    action.add_parser("check", parents=[common],
                      help="load, validate, connect to Scylla, Kafka and Redis, report on one screen").set_defaults(
        func=_check)


def _check(args) -> int:
    from relay import config

    cfg = config.load(args.config)
    print(f"config  {cfg.source}: ok ({len(cfg.tables)} table(s), {cfg.worker_count} worker(s), "
          f"replica {cfg.replica_id})")
    scylla_ok, scylla_text, actual_replication = _scylla(cfg)
    warning = replication_warning(cfg.scylla.relay_keyspace, actual_replication or cfg.scylla.relay_replication,
                                  exists=actual_replication is not None)
    if warning:  # on Scylla's line: the screen keeps one line per service
        scylla_text += f"; WARNING {warning}"
    results = [("scylla", (scylla_ok, scylla_text)), ("kafka", _kafka(cfg)), ("redis", _redis(cfg))]
    failed = 0
    for name, (ok, text) in results:
        print(f"{name:<7} {'ok  ' if ok else 'FAIL'} {text}")
        failed += not ok
    if failed:
        raise UserError(f"{failed} service(s) failed the check")
    return 0


def replicas(replication: Mapping[str, Any]) -> int | None:
    """The fewest replicas a replication map keeps in any data centre that has some (per-DC
    values of NetworkTopologyStrategy, or replication_factor; Cassandra's transient "3/1" counts
    its 3); None when the map names no count."""
    counts = [int(m.group(1)) for key, value in replication.items() if key != "class"
              if (m := re.match(r"\s*(\d+)", str(value)))]
    return min((c for c in counts if c > 0), default=None)


def replication_warning(keyspace: str, replication: Mapping[str, Any], *, exists: bool) -> str | None:
    """One line when relay's keyspace has (or `relay schema apply` would give it) fewer than 3 replicas."""
    n = replicas(replication)
    if n is None or n >= MIN_REPLICAS:
        return None
    fix = "raise it with ALTER KEYSPACE" if exists else "set scylla.relay_replication"
    return (f"keyspace {keyspace} {'has' if exists else 'would get'} {n} replica{'s' * (n != 1)}, fewer than "
            f"{MIN_REPLICAS}: at QUORUM one node down stops checkpoints and dead letters ({fix})")


def _scylla(cfg) -> tuple[bool, str, Mapping[str, Any] | None]:
    """(ok, report, the relay keyspace's replication if the keyspace exists)."""
    from relay import connect
    from relay.discovery import Discovery
    from relay.schema import has_cdc_log, missing_relay_tables

    where = ", ".join(f"{h}:{cfg.scylla.port}" for h in cfg.scylla.contact_points)
    try:
        session = connect.cql_session(cfg, connect_timeout=5)
    except UserError as exc:
        return False, str(exc), None
    try:
        version = session.execute("SELECT release_version FROM system.local").one()[0]
        notes = [f"{where}, release {version}"]
        ok = True
        ks = cfg.scylla.relay_keyspace
        row = session.execute("SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s",
                              (ks,)).one()
        replication = dict(row[0]) if row else None
        if not missing_relay_tables(session, ks):
            notes.append(f"keyspace {ks} ok")
        else:
            ok = False
            notes.append(f"keyspace {ks} lacks relay's tables (run `relay schema apply`)")
        discovery = Discovery(session, cfg)
        for t in cfg.tables:
            if not has_cdc_log(session, t.keyspace, t.table):
                ok = False
                notes.append(f"{t.name}: no CDC log (enable cdc on the table)")
                continue
            try:
                gens = discovery.generations(t)
                mode = "tablets" if discovery.uses_tablets(t) else "vnodes"
                notes.append(f"{t.name}: {mode}, {len(gens)} generation(s)")
            except Exception as exc:  # noqa: BLE001 - reported, not raised
                ok = False
                notes.append(f"{t.name}: cannot read CDC generations from "
                             f"{cfg.scylla.cdc_metadata_keyspace}: {str(exc).splitlines()[0][:120]}")
        return ok, "; ".join(notes), replication
    finally:
        session.cluster.shutdown()


def _kafka(cfg) -> tuple[bool, str]:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    from relay.connect import producer_config

    conf = {k: v for k, v in producer_config(cfg).items()
            if k in ("bootstrap.servers", "client.id", "logger") or k.startswith(("security.", "sasl.", "ssl."))}
    try:
        # DescribeCluster: the brokers only, not every topic's metadata (megabytes on a large cluster).
        admin = AdminClient(conf)  # kept referenced until the answer is in: its handle serves the future
        cluster = admin.describe_cluster(request_timeout=5).result(timeout=10)
    except KafkaException as exc:
        return False, f"{cfg.kafka.bootstrap_servers}: {exc.args[0].str()}"
    return True, f"{cfg.kafka.bootstrap_servers}: {len(cluster.nodes)} broker(s), cluster {cluster.cluster_id}"


def _redis(cfg) -> tuple[bool, str]:
    import redis

    from relay.config import mask_url
    from relay.connect import redis_client

    try:
        client = redis_client(cfg)
        client.ping()
        info = client.info("server")
        return True, f"{mask_url(cfg.redis.url)}: PONG, Redis {info.get('redis_version', '?')}"
    except redis.RedisError as exc:
        return False, f"{mask_url(cfg.redis.url)}: {exc}"

"""`relay config check`: load and validate the config, then talk to each service once."""
from __future__ import annotations

from relay.errors import UserError


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
    results = [("scylla", _scylla(cfg)), ("kafka", _kafka(cfg)), ("redis", _redis(cfg))]
    failed = 0
    for name, (ok, text) in results:
        print(f"{name:<7} {'ok  ' if ok else 'FAIL'} {text}")
        failed += not ok
    if failed:
        raise UserError(f"{failed} service(s) failed the check")
    return 0


def _scylla(cfg) -> tuple[bool, str]:
    from relay import connect
    from relay.discovery import Discovery
    from relay.schema import has_cdc_log, missing_relay_tables

    where = ", ".join(f"{h}:{cfg.scylla.port}" for h in cfg.scylla.contact_points)
    try:
        session = connect.cql_session(cfg, connect_timeout=5)
    except UserError as exc:
        return False, str(exc)
    try:
        version = session.execute("SELECT release_version FROM system.local").one()[0]
        notes = [f"{where}, release {version}"]
        ok = True
        ks = cfg.scylla.relay_keyspace
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
        return ok, "; ".join(notes)
    finally:
        session.cluster.shutdown()


def _kafka(cfg) -> tuple[bool, str]:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    from relay.connect import producer_config

    conf = {k: v for k, v in producer_config(cfg).items()
            if k in ("bootstrap.servers", "client.id", "logger") or k.startswith(("security.", "sasl.", "ssl."))}
    try:
        md = AdminClient(conf).list_topics(timeout=5)
    except KafkaException as exc:
        return False, f"{cfg.kafka.bootstrap_servers}: {exc.args[0].str()}"
    return True, f"{cfg.kafka.bootstrap_servers}: {len(md.brokers)} broker(s), {len(md.topics)} topic(s)"


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

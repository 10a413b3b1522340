"""`relay schema apply|print`: relay's keyspace, checkpoints and dead letters."""
from __future__ import annotations


def register(sub, common) -> None:
    p = sub.add_parser("schema", parents=[common], help="create or print relay's keyspace and tables")
    action = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    action.add_parser("apply", parents=[common], help="create the keyspace and tables (idempotent)").set_defaults(
        func=_apply)
    action.add_parser("print", parents=[common], help="print the CQL that `apply` runs").set_defaults(func=_print)


def _print(args) -> int:
    from relay import config, schema

    cfg = config.load(args.config, validate=False)
    for stmt in schema.relay_schema(cfg):
        print(stmt + ";\n")
    return 0


def _apply(args) -> int:
    from relay import config, connect, schema

    cfg = config.load(args.config)
    session = connect.cql_session(cfg)
    try:
        for name in schema.apply(session, cfg):
            print(f"ok  {name}")
    finally:
        session.cluster.shutdown()
    from relay.errors import UserError
    from relay.leases import KafkaUnreachable, ensure_topic

    try:
        print(f"ok  {ensure_topic(cfg)}")  # the leases topic: one partition per slot (DESIGN §5b)
    except KafkaUnreachable as exc:
        raise UserError(f"{cfg.source}: kafka.bootstrap_servers: {exc}") from None
    return 0

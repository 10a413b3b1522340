"""`relay run [--workers N] [--until now|ISO]`: the supervisor and its workers."""
from __future__ import annotations

import os
import tempfile
import time
from datetime import UTC, datetime

from relay.errors import UserError


def register(sub, common) -> None:
    p = sub.add_parser("run", parents=[common], help="run the supervisor and its workers")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: [relay] workers)")
    p.add_argument("--until", default=None, metavar="now|ISO",
                   help="relay everything up to this time, then exit 0")
    p.set_defaults(func=_run)


def parse_until(value: str) -> int:
    if value == "now":
        return time.time_ns() // 1000
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        raise UserError(f"--until {value!r}: use now or an ISO 8601 time such as 2026-01-31T12:00:00Z") from None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return int(ts.timestamp() * 1_000_000)


def _run(args) -> int:
    # Before anything imports prometheus_client: multiprocess mode is chosen at import time.
    from relay.metrics import prepare_multiproc_dir

    own_dir = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    metrics_dir = prepare_multiproc_dir(os.path.join(tempfile.gettempdir(), f"relay-metrics-{os.getpid()}"))
    try:
        return _supervise(args)
    finally:
        if own_dir:  # ours alone: a user-provided dir (e.g. a k8s emptyDir) is wiped at the next start
            import shutil

            shutil.rmtree(metrics_dir, ignore_errors=True)


def _supervise(args) -> int:

    import logging

    from relay import config, connect
    from relay.httpserver import serve
    from relay.supervisor import Supervisor

    connect.without_numpy()

    cfg = config.load(args.config)
    if not cfg.tables:
        raise UserError(f"{cfg.source}: tables: no [[tables]] configured: nothing to relay")
    workers = args.workers if args.workers is not None else cfg.worker_count
    if workers < 1:
        raise UserError("--workers must be >= 1")
    until = parse_until(args.until) if args.until else None
    if until is not None:
        until -= until % 1000  # positions move in whole milliseconds (minTimeuuid)
    ctx = _worker_context()  # first: before any client, even the producer checked below, exists
    _preflight_producer(cfg)
    sup = Supervisor(cfg, workers, until, args.log_level, ctx=ctx)
    sup.install_signals()
    try:
        server = serve(cfg.metrics.host, cfg.metrics.port, sup.snapshot, sup.dlq)
    except OSError as exc:
        raise UserError(f"{cfg.source}: metrics: cannot listen on {cfg.metrics.host}:{cfg.metrics.port}: "
                        f"{exc.strerror}") from None
    # The bound port, not the configured one: with metrics.port = 0 this line is where it is found.
    logging.getLogger("relay").info("relay %s: %d worker(s), %d table(s); /metrics on %s:%d", cfg.replica_id,
                                    workers, len(cfg.tables), cfg.metrics.host, server.server_address[1])
    # The server is not shut down: shutdown() waits for serve_forever's next poll (up to 0.5 s) on
    # every exit, and the process ends right after this; its daemon thread and socket end with it.
    return sup.run()


def _worker_context():
    """Workers fork from a copy of this process made now, before any thread or client exists
    (relay.forkserver): what both sides import is imported here, once; what only workers need,
    once, in the copy."""
    import prometheus_client  # noqa: F401

    import relay.metrics  # noqa: F401
    import relay.retry  # noqa: F401
    from relay import connect, forkserver
    from relay.worker import PRELOAD

    connect.import_cql_driver()
    connect.import_cql_driver(hot_path=True)
    return forkserver.worker_context(PRELOAD)


def _preflight_producer(cfg) -> None:
    """Bad librdkafka properties are config errors: report them here, once, not from every worker."""
    from confluent_kafka import KafkaException, Producer

    from relay.connect import producer_config

    try:
        Producer(producer_config(cfg))
    except KafkaException as exc:
        raise UserError(f"{cfg.source}: kafka.producer: {exc.args[0].str()}") from None

"""Replay throughput on the local stack (issue 11): `relay dlq replay` of N stored dead letters and
`relay replay` of N rows of an emulated CDC log, each without and with `--rate`.

    python -m benchmarks.dlq_replay [--letters 5000] [--aggregates 500] [--rate 1000]

Dead letters are written with plain CQL (as relay's writer would leave them: status pending,
MSG_SIZE_TOO_LARGE) into a keyspace of their own, dropped at the end with the topic.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime

from benchmarks.common import REPO, Stack, log


def _config(path, stack: Stack, ks: str) -> None:
    path.write_text(f"""[scylla]
contact_points = ["127.0.0.1"]
port = {stack.cql_port}
consistency = "ONE"
relay_keyspace = "{ks}"
cdc_metadata_keyspace = "{ks}"
tablets_metadata_keyspace = "{ks}"
relay_replication = {{ class = "SimpleStrategy", replication_factor = 1 }}
username = "{stack.cql_user}"
password = "{stack.cql_password}"
[[tables]]
name = "{ks}.outbox"
topic = "{ks}.{{aggregate_type}}"
[kafka]
bootstrap_servers = "{stack.kafka}"
[redis]
url = "{stack.redis_url}"
key_prefix = "{ks}:"
""")


def _fill(session, ks: str, table: str, n: int, aggregates: int) -> None:
    from cassandra.concurrent import execute_concurrent_with_args

    from relay import timeuuid

    stmt = session.prepare(
        f"INSERT INTO {ks}.dead_letters (source_table, day, cdc_time, stream_id, batch_seq_no, event_id, "
        f"aggregate_type, aggregate_id, event_type, topic, key, payload, headers, error_class, error_message, "
        f"attempts, first_failed_at, last_failed_at, status) VALUES (?, ?, ?, ?, 0, ?, 'order', ?, 'created', ?, ?, "
        f"?, {{}}, 'MSG_SIZE_TOO_LARGE', 'too big', 1, ?, ?, 'pending')")
    now = datetime.now(UTC)
    base = int(now.timestamp() * 1e6) - n * 1000
    args = []
    for i in range(n):
        agg = f"agg-{i % aggregates:05d}"
        args.append((table, now.date(), timeuuid.from_micros(base + i * 1000), os.urandom(16), str(uuid.uuid4()), agg,
                     f"{ks}.order", agg.encode(), os.urandom(200), now, now))
    execute_concurrent_with_args(session, stmt, args, concurrency=64, raise_on_first_error=True)


def _replay(path, table: str, *extra: str) -> dict:
    res = subprocess.run([sys.executable, "-m", "relay", "dlq", "replay", "--config", str(path), "--table", table,
                          "--json", *extra], capture_output=True, text=True, cwd=REPO)
    if res.returncode != 0:
        raise SystemExit(f"replay failed ({res.returncode}): {res.stdout}\n{res.stderr[-2000:]}")
    return json.loads(res.stdout)


def _cdc(session, path, ks: str, args) -> dict:
    """`relay replay` of `args.letters` rows written through the CDC emulator a minute ago."""
    from relay.testing import CdcEmulator

    session.execute(f"CREATE TABLE {ks}.outbox (aggregate_id text, id timeuuid, aggregate_type text, event_type text, "
                    f"payload blob, created_at timestamp, headers map<text, text>, PRIMARY KEY ((aggregate_id), id))")
    emu = CdcEmulator(session, metadata_keyspace=ks)
    emu.create_metadata_tables()
    now_us = time.time_ns() // 1000
    emu.open_generation(start=now_us - 600_000_000, vnodes=16, shards=2, seed=5)
    emu.enable_cdc(f"{ks}.outbox")
    rows = [{"aggregate_id": f"agg-{i % args.aggregates:05d}", "id": uuid.uuid1(), "aggregate_type": "order",
             "event_type": "created", "payload": os.urandom(200)} for i in range(args.letters)]
    base = now_us - 300_000_000
    emu.write_many(f"{ks}.outbox", rows, timestamps=[base + i * 10 for i in range(len(rows))])
    out = {}
    for label, extra in (("cdc unlimited", ()), (f"cdc rate {args.rate:g}", ("--rate", str(args.rate)))):
        res = subprocess.run([sys.executable, "-m", "relay", "replay", "--config", str(path), "--table",
                              f"{ks}.outbox", "--since", "400", "--until", "0", "--json", *extra],
                             capture_output=True, text=True, cwd=REPO)
        if res.returncode != 0:
            raise SystemExit(f"relay replay failed ({res.returncode}): {res.stdout}\n{res.stderr[-2000:]}")
        r = json.loads(res.stdout)
        out[label] = {"published": r["published"], "seconds": r["seconds"], "records_per_s": r["rate_per_second"]}
        log(f"{label}: {r['published']} rows in {r['seconds']}s = {r['rate_per_second']}/s (reads included)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--letters", type=int, default=5000)
    ap.add_argument("--aggregates", type=int, default=500)
    ap.add_argument("--rate", type=float, default=1000.0)
    args = ap.parse_args()

    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import Cluster
    from confluent_kafka.admin import AdminClient, NewTopic

    from relay import config, schema

    stack = Stack.from_env()
    ks = f"bench_dlq_{uuid.uuid4().hex[:8]}"
    work = REPO / ".stack" / "bench"
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"{ks}.toml"
    _config(path, stack, ks)
    cluster = Cluster(["127.0.0.1"], port=stack.cql_port, protocol_version=4,
                      auth_provider=PlainTextAuthProvider(stack.cql_user, stack.cql_password))
    session = cluster.connect()
    admin = AdminClient({"bootstrap.servers": stack.kafka})
    topic = f"{ks}.order"
    try:
        session.execute(f"CREATE KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy', "
                        f"'replication_factor': 1}}")
        schema.apply(session, config.load(path))
        admin.create_topics([NewTopic(topic, 6, 1)])[topic].result(30)
        results = {}
        for label, extra in (("unlimited", ()), (f"rate {args.rate:g}", ("--rate", str(args.rate)))):
            table = f"{ks}.outbox"
            _fill(session, ks, table, args.letters, args.aggregates)
            started = time.monotonic()
            out = _replay(path, table, *extra)
            wall = time.monotonic() - started
            results[label] = {"replayed": out["replayed"], "seconds": out["seconds"],
                              "records_per_s": out["rate_per_second"], "command_wall_s": round(wall, 2)}
            log(f"{label}: {out['replayed']} dead letters in {out['seconds']}s = {out['rate_per_second']}/s "
                f"(command {wall:.1f}s with start-up)")
        results.update(_cdc(session, path, ks, args))
        print(json.dumps({"letters": args.letters, "aggregates": args.aggregates, **results}, indent=2))
    finally:
        session.execute(f"DROP KEYSPACE IF EXISTS {ks}", timeout=120)
        admin.delete_topics([topic])
        cluster.shutdown()


if __name__ == "__main__":
    main()

"""`make demo`: relay end to end on the local stack (deploy/local/stack must be up).

schema → loadgen (emulated Scylla CDC, steady rate) → `relay run` with 2 workers → live
progress (written, published, events/s, lag) → `relay verify`. Each run uses its own
keyspace and topic, so runs never mix. Exit status: verify's.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

EVENTS = int(os.environ.get("DEMO_EVENTS", "20000"))
AGGREGATES = int(os.environ.get("DEMO_AGGREGATES", "500"))
RATE = float(os.environ.get("DEMO_RATE", "2000"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(path: Path, keyspace: str, port: int) -> None:
    cql = os.environ.get("RELAY_STACK_CASSANDRA_PORT", "9042")
    kafka = os.environ.get("RELAY_STACK_KAFKA_PORT", "9092")
    redis_port = os.environ.get("RELAY_STACK_REDIS_PORT", "6379")
    # The stack's non-superuser role (deploy/local/stack), as relay runs in production.
    user = os.environ.get("RELAY_STACK_CQL_USER", "relay")
    password = os.environ.get("RELAY_STACK_CQL_PASSWORD", "relay")
    path.write_text(f"""# written by `make demo`
[scylla]
contact_points = ["127.0.0.1"]
port = {cql}
username = "{user}"
password = "{password}"
consistency = "ONE"
relay_keyspace = "{keyspace}"
relay_replication = {{ class = "SimpleStrategy", replication_factor = 1 }}   # the stack is one node
cdc_metadata_keyspace = "{keyspace}_cdc"   # the emulated generation tables (Scylla: system_distributed)
tablets_metadata_keyspace = "{keyspace}_cdc"

[[tables]]
name = "{keyspace}.outbox"
topic = "{keyspace}.{{aggregate_type}}"

[kafka]
bootstrap_servers = "127.0.0.1:{kafka}"

[redis]
url = "redis://127.0.0.1:{redis_port}/0"
key_prefix = "{keyspace}:"

[relay]
workers = 2
window_seconds = 5
confidence_seconds = 2
poll_interval_seconds = 0.25

[metrics]
host = "127.0.0.1"
port = {port}
""")


def _get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
        return resp.read()


def _published(port: int) -> float:
    total = 0.0
    for line in _get(port, "/metrics").decode().splitlines():
        if line.startswith("relay_events_published_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def main() -> int:
    from relay import config, connect, schema
    from relay.commands import loadgen, verify

    keyspace = time.strftime("demo_%H%M%S")
    workdir = Path(".stack") / "demo"
    workdir.mkdir(parents=True, exist_ok=True)
    cfg_path = workdir / f"{keyspace}.toml"
    port = _free_port()
    _config(cfg_path, keyspace, port)
    cfg = config.load(cfg_path)
    print(f"demo: keyspace {keyspace}, topic {keyspace}.order, config {cfg_path}")

    session = connect.cql_session(cfg)
    schema.apply(session, cfg)
    session.cluster.shutdown()
    # The outbox table, its emulated CDC log and a first generation, before relay starts.
    loadgen.generate(cfg, cfg.tables[0].name, 1, 1, emulate=True)

    log_path = workdir / f"{keyspace}.relay.log"
    relay = subprocess.Popen([sys.executable, "-m", "relay", "run", "--config", str(cfg_path)],
                             stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    written = {"n": 1}

    def produce() -> None:
        result = loadgen.generate(cfg, cfg.tables[0].name, EVENTS, AGGREGATES, rate=RATE, emulate=True)
        written["n"] += result.events

    writer = threading.Thread(target=produce, daemon=True)
    t0 = time.monotonic()
    writer.start()
    last, last_t, peak = 0.0, t0, 0.0
    try:
        while True:
            time.sleep(1)
            if relay.poll() is not None:
                print(f"\ndemo: relay exited with {relay.returncode}; see {log_path}")
                return 1
            try:
                published = _published(port)
                lag = json.loads(_get(port, "/status")).get("lag_seconds", {})
            except OSError:
                continue
            now = time.monotonic()
            rate = (published - last) / (now - last_t)
            peak = max(peak, rate)
            last, last_t = published, now
            lag_s = max(lag.values()) if lag else 0.0
            print(f"\r  written {written['n'] if not writer.is_alive() else '…':>6}  published {published:>8,.0f}  "
                  f"{rate:>7,.0f} events/s  lag {lag_s:5.1f}s   ", end="", flush=True)
            if not writer.is_alive() and published >= written["n"]:
                break
            if now - t0 > 300:
                print("\ndemo: relay did not catch up within 5 minutes")
                return 1
        elapsed = time.monotonic() - t0
        print(f"\ndemo: {written['n']:,} events relayed in {elapsed:.1f}s (peak {peak:,.0f} events/s)")
    finally:
        if relay.poll() is None:
            relay.send_signal(signal.SIGTERM)
            relay.wait(60)
    report = verify.verify(cfg, cfg.tables[0].name)
    print(report.render())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

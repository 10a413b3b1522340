"""relay end to end on the real stack: CDC rows (emulated Scylla writes) → relay processes →
Kafka, checked by consuming the topics."""
from __future__ import annotations

import signal
import threading
import time
import uuid

import pytest
from harness import Outbox, RelayProcess, assert_delivered_in_order, consume_all, write_config

from relay.testing import now_micros


@pytest.fixture
def outbox(cql, keyspace):
    return Outbox.create(cql, keyspace)


@pytest.fixture
def config(tmp_path, keyspace, kafka_bootstrap, redis_url):
    def make(**kw):
        from relay import config as cfgmod
        from relay import connect, schema

        path = write_config(tmp_path / "relay.toml", keyspace, kafka_bootstrap, redis_url, **kw)
        cfg = cfgmod.load(path)
        session = connect.cql_session(cfg)
        schema.apply(session, cfg)
        session.cluster.shutdown()
        return path
    return make


def topic_of(keyspace: str) -> str:
    return f"{keyspace}.order"


def test_backlog_of_20000_events_two_workers(outbox, config, keyspace, kafka_bootstrap):
    outbox.write(20_000, aggregates=2_000)
    relay = RelayProcess(config(workers=2), "--until", "now").start()
    assert relay.wait(240) == 0, relay.output()[-3000:]
    delivered = consume_all(kafka_bootstrap, [topic_of(keyspace)])
    assert len(delivered.records) == 20_000
    assert_delivered_in_order(outbox, delivered)


def test_sigkill_of_a_worker_is_restarted_without_loss(outbox, config, keyspace, kafka_bootstrap):
    outbox.write(8_000, aggregates=400)
    relay = RelayProcess(config(workers=2, relay={"window_seconds": 0.5}), "--until", "now").start()
    relay.wait_until(lambda: relay.metric("relay_events_published_total") > 0, 60, "first events published")
    status = relay.status()
    victim = status["workers"][0]["pid"]
    victim_tasks = {t["task_id"] for t in status["tasks"] if t["worker"] == 0}
    import os

    os.kill(victim, signal.SIGKILL)
    relay.wait_until(lambda: any(w["pid"] not in (None, victim) and w["alive"] and w["index"] == 0
                                 for w in relay.status()["workers"]), 60, "worker 0 restarted")
    assert relay.wait(240) == 0, relay.output()[-3000:]
    assert "died with signal 9" in relay.output()
    delivered = consume_all(kafka_bootstrap, [topic_of(keyspace)])
    # Mark-after-ack (DESIGN §4): records Kafka acknowledged just before the kill, whose dedup keys
    # were not set yet, are published again; nothing is lost, and only the killed worker's tasks
    # (its last windows) can repeat anything.
    assert_delivered_in_order(outbox, delivered, allow_duplicates=True)
    from relay import streams

    repeated = [(k.decode(), int(h["cdc_time"])) for k, h, _ in delivered.records if delivered.ids[h["id"]] > 1]
    repeated_tasks = {streams.vnode_index(outbox.emulator.stream_for(outbox.table, {"aggregate_id": agg}, us))
                      for agg, us in repeated}
    assert repeated_tasks <= victim_tasks, "a duplicate from a task the killed worker did not own"
    print(f"duplicates after SIGKILL: {delivered.duplicates()} of {len(outbox.expected_ids())}")


def test_restart_resumes_from_checkpoints(outbox, config, keyspace, kafka_bootstrap, cql):
    outbox.write(8_000, aggregates=400)
    path = config(workers=2, relay={"window_seconds": 0.5})
    first = RelayProcess(path).start()
    first.wait_until(lambda: first.metric("relay_events_published_total") >= 1000, 60, "1000 events published")
    first.signal(signal.SIGTERM)
    assert first.wait(60) == 0, first.output()[-3000:]
    part = consume_all(kafka_bootstrap, [topic_of(keyspace)])
    assert 0 < len(part.records) <= 8_000
    outbox.write(4_000, aggregates=400)  # more work arrives while relay is down
    # A fresh dedup prefix: had the second run started over instead of at the checkpoints,
    # Redis could not hide it and every re-read event would show up twice.
    second = RelayProcess(path, "--until", "now", env={"RELAY_REDIS__KEY_PREFIX": f"{keyspace}-second:"}).start()
    assert second.wait(240) == 0, second.output()[-3000:]
    delivered = consume_all(kafka_bootstrap, [topic_of(keyspace)])
    assert_delivered_in_order(outbox, delivered)


def test_new_generation_mid_run_keeps_order(outbox, config, keyspace, kafka_bootstrap):
    path = config(workers=2)
    relay = RelayProcess(path).start()
    stop = threading.Event()

    def writer():
        while not stop.is_set():
            outbox.write(100, aggregates=50)
            time.sleep(0.05)

    t = threading.Thread(target=writer)
    t.start()
    try:
        time.sleep(1.5)
        switch = now_micros() + 2_000_000
        outbox.emulator.open_generation(start=switch, vnodes=8, shards=3, seed=77)
        while now_micros() < switch + 2_500_000:
            time.sleep(0.1)
    finally:
        stop.set()
        t.join()
    written_until = now_micros()
    relay.wait_until(lambda: all(g["complete"] for g in relay.status()["generations"][outbox.table][:1]), 60,
                     "the first generation to complete")
    relay.wait_until(lambda: min((task["position_us"] or 0) for task in relay.status()["tasks"]) > written_until,
                     60, "the new generation's tasks to pass the last write")
    relay.signal(signal.SIGTERM)
    assert relay.wait(60) == 0
    new_gen_streams = set(outbox.emulator.generations[-1].all_streams())
    assert new_gen_streams, "the second generation has streams"
    delivered = consume_all(kafka_bootstrap, [topic_of(keyspace)])
    assert_delivered_in_order(outbox, delivered)
    cdc_times = sorted(int(h["cdc_time"]) for _, h, _ in delivered.records)
    assert cdc_times[0] < switch <= cdc_times[-1], "events on both sides of the switch"


def test_late_write_inside_confidence_window_is_delivered(outbox, config, keyspace, kafka_bootstrap):
    path = config(workers=1, relay={"confidence_seconds": 3})
    relay = RelayProcess(path).start()
    relay.wait_until(lambda: relay.status().get("ready"), 60, "relay ready")
    time.sleep(1)
    late_id = uuid.uuid1()
    # Timestamped 2 s ago: behind "now" but ahead of relay's position (now - 3 s).
    outbox.emulator.insert(outbox.table, {"aggregate_id": "late", "id": late_id, "aggregate_type": "order",
                                          "event_type": "late", "payload": b"{}"}, timestamp=now_micros() - 2_000_000)
    outbox.written["late"].append(str(late_id))
    relay.wait_until(lambda: relay.metric("relay_events_published_total") >= 1, 30, "the late event")
    relay.signal(signal.SIGTERM)
    assert relay.wait(60) == 0
    assert_delivered_in_order(outbox, consume_all(kafka_bootstrap, [topic_of(keyspace)]))


def test_poison_row_goes_to_dead_letters_and_the_rest_flows(cql, keyspace, config, kafka_bootstrap):
    from relay.testing import CdcEmulator

    cql.execute(f"CREATE TABLE {keyspace}.events (bucket int, seq timeuuid, event_id uuid, agg text, kind text, "
                f"category text, body text, PRIMARY KEY ((bucket), seq))")
    emu = CdcEmulator(cql, metadata_keyspace=keyspace)
    emu.create_metadata_tables()
    emu.open_generation(start=now_micros() - 10_000_000, vnodes=8, shards=2, seed=9)
    emu.enable_cdc(f"{keyspace}.events")
    good = []
    for i in range(20):
        eid = uuid.uuid4()
        good.append(str(eid))
        emu.insert(f"{keyspace}.events", {"bucket": i % 3, "seq": uuid.uuid1(), "event_id": eid, "agg": f"a{i}",
                                          "kind": "made", "category": "cat", "body": f"body {i}"})
    poison_id = uuid.uuid4()
    emu.insert(f"{keyspace}.events", {"bucket": 1, "seq": uuid.uuid1(), "event_id": poison_id, "agg": None,
                                      "kind": "made", "category": "cat", "body": "orphan"})
    columns = """[tables.columns]
event_id = "event_id"
aggregate_type = "category"
aggregate_id = "agg"
event_type = "kind"
payload = "body"
headers = ["bucket"]"""
    path = config(workers=1, table="events", topic=f"{keyspace}.{{aggregate_type}}.v1", columns=columns)
    relay = RelayProcess(path, "--until", "now").start()
    assert relay.wait(120) == 0, relay.output()[-3000:]
    delivered = consume_all(kafka_bootstrap, [f"{keyspace}.cat.v1"])
    assert sorted(delivered.ids) == sorted(good)
    assert all(h["bucket"] in ("0", "1", "2") and v.startswith(b"body ") for _, h, v in delivered.records)
    rows = list(cql.execute(f"SELECT event_id, error_class, error_message, status, payload "
                            f"FROM {keyspace}.dead_letters WHERE source_table = %s ALLOW FILTERING",
                            (f"{keyspace}.events",)))
    assert len(rows) == 1
    assert rows[0].event_id == str(poison_id) and rows[0].error_class == "missing_aggregate_id"
    assert rows[0].status == "pending" and rows[0].payload == b"orphan"


def test_graceful_sigterm_exits_zero_with_checkpoints(outbox, config, keyspace, cql):
    outbox.write(3_000, aggregates=300)
    path = config(workers=2, relay={"shutdown_timeout_seconds": 15})
    relay = RelayProcess(path).start()
    relay.wait_until(lambda: relay.metric("relay_events_published_total") >= 3000, 90, "the backlog")
    t0 = time.monotonic()
    relay.signal(signal.SIGTERM)
    assert relay.wait(30) == 0
    assert time.monotonic() - t0 < 15
    rows = list(cql.execute(f"SELECT task_id, position, owner FROM {keyspace}.checkpoints"))
    assert len(rows) == 16, "one checkpoint per vnode task"
    from relay import timeuuid

    newest_write = max(timeuuid.to_micros(r[0]) for r in cql.execute(
        f'SELECT "cdc$time" FROM {keyspace}.outbox_scylla_cdc_log'))
    assert min(timeuuid.to_micros(r.position) for r in rows) > newest_write


def test_tablets_table_with_a_split_mid_run(cql, keyspace, config, kafka_bootstrap):
    from harness import OUTBOX_DDL

    from relay.testing import CdcEmulator

    cql.execute(OUTBOX_DDL.format(ks=keyspace))
    emu = CdcEmulator(cql, metadata_keyspace=keyspace)
    emu.create_metadata_tables()
    emu.enable_cdc(f"{keyspace}.outbox", tablets=4, start=now_micros() - 10_000_000)
    outbox = Outbox(emu, f"{keyspace}.outbox")
    outbox.write(400, aggregates=40)
    split = now_micros() + 1_500_000
    emu.open_tablet_streams(outbox.table, 8, start=split)
    while now_micros() < split + 200_000:
        time.sleep(0.05)
    outbox.write(400, aggregates=40)
    relay = RelayProcess(config(workers=2), "--until", "now").start()
    assert relay.wait(120) == 0, relay.output()[-3000:]
    delivered = consume_all(kafka_bootstrap, [topic_of(keyspace)])
    assert_delivered_in_order(outbox, delivered)
    from relay import timeuuid

    rows = cql.execute(f'SELECT "cdc$stream_id", "cdc$time" FROM {keyspace}.outbox_scylla_cdc_log')
    log_streams = {r[0] for r in rows if timeuuid.to_micros(r[1]) >= split}
    assert log_streams <= set(emu.tablet_sets(outbox.table)[-1].streams), "post-split rows use the new streams"


def test_workers_exit_when_the_supervisor_dies(outbox, config):
    import os

    relay = RelayProcess(config(workers=2)).start()
    relay.wait_until(lambda: relay.status().get("ready"), 60, "relay ready")
    pids = [w["pid"] for w in relay.status()["workers"]]
    os.kill(relay.proc.pid, signal.SIGKILL)
    relay.proc.wait(10)
    deadline = time.monotonic() + 15
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in pids if os.path.exists(f"/proc/{p}") and
                 open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[0] not in "ZX"]
        time.sleep(0.2)
    assert not alive, f"workers {alive} outlived their supervisor"

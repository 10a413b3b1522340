"""relay end to end on the real stack: CDC rows (emulated Scylla writes) → relay processes →
Kafka, checked by consuming the topics. Each scenario first proves that it happened (work was in
flight, the backlog was half read, the switch came while relay read), from outside relay."""
from __future__ import annotations

import os
import signal
import uuid

from harness import (
    Outbox,
    Writer,
    assert_delivered_in_order,
    audit,
    consume_all,
    process_alive,
    split_copies,
    wait_for,
    wait_for_cdc_time,
)
from observe import Photo, Watch, checkpoints, marked

from relay.testing import now_micros

S = 1_000_000


def topic_of(keyspace: str) -> str:
    return f"{keyspace}.order"


def test_backlog_of_20000_events_two_workers(outbox, relay_config, relay_process, keyspace, kafka_bootstrap):
    outbox.write(20_000, aggregates=2_000)
    relay = relay_process(relay_config(workers=2), "--until", "now")
    assert relay.wait(240) == 0, relay.output()[-3000:]
    delivered = consume_all(kafka_bootstrap, [topic_of(keyspace)])
    assert len(delivered.records) == 20_000
    assert_delivered_in_order(outbox, delivered)


def test_sigkill_of_a_worker_with_work_in_flight(outbox, relay_config, relay_process, keyspace, kafka_bootstrap, cql,
                                                 redis_client):
    """A worker is killed at a moment when Kafka holds records of its tasks that its checkpoints have
    not passed (a window in flight), photographed while the workers are frozen. Then: nothing lost;
    duplicates only of records that were in flight in its tasks; every one of those that Redis had not
    marked published again (mark after ack), none that it had marked; first deliveries in order, and
    the only records that come after newer ones of their aggregate are those unmarked copies."""
    outbox.write(8_000, aggregates=400)
    relay = relay_process(relay_config(workers=2, relay={"window_seconds": 0.5}), "--until", "now")
    topic, generation = topic_of(keyspace), outbox.emulator.generations[-1].start_us
    watch = Watch(cql, redis_client, kafka_bootstrap, keyspace=keyspace, table=outbox.table, topic=topic,
                  generation_us=generation, prefix=f"{keyspace}:")
    rows = watch.rows
    killed: dict = {}

    def kill_the_owner(photo: Photo) -> None:
        status = relay.status()
        index = next(t["worker"] for t in status["tasks"] if t["task_id"] in photo.tasks_in_flight(rows))
        pid = next(w["pid"] for w in status["workers"] if w["index"] == index)
        os.kill(pid, signal.SIGKILL)
        killed.update(index=index, pid=pid, tasks={t["task_id"] for t in status["tasks"] if t["worker"] == index})

    photo = watch.catch_in_flight(relay, kill_the_owner)
    watch.close()
    relay.wait_until(lambda: any(w["index"] == killed["index"] and w["alive"] and w["pid"] != killed["pid"]
                                 for w in relay.status()["workers"]), 60, "the killed worker restarted")
    assert relay.wait(240) == 0, relay.output()[-3000:]
    assert "died with signal 9" in relay.output()

    delivered = consume_all(kafka_bootstrap, [topic])
    in_flight = {eid for eid in photo.in_flight if rows[eid].task_id in killed["tasks"]}
    unmarked = photo.unmarked & in_flight
    assert in_flight, "the killed worker had records in flight"
    report = audit(outbox.written, delivered)
    assert not (report.lost or report.unexpected or report.split or report.wrong_key), "; ".join(report.problems())
    # Mark after ack (DESIGN §4): what Kafka acknowledged but Redis had not marked is published again
    # by the restarted worker, after the originals, so those copies - and only those - come after
    # newer records of their aggregate. Each run of copies is itself in order.
    duplicated = {eid for eid, n in delivered.ids.items() if n > 1}
    assert unmarked <= duplicated, "an acked record Redis had not marked was not published again"
    assert not (in_flight - unmarked) & duplicated, "a record Redis had marked was published again"
    assert set(report.reordered) <= unmarked, \
        f"records other than the unmarked in-flight ones out of order: {report.out_of_order[:3]}"
    first, again = split_copies(delivered)
    assert not audit(outbox.written, first).problems(), "first deliveries out of order"
    assert not audit(outbox.written, again).out_of_order, "the re-published copies out of order"
    outside = {eid for eid in duplicated if rows[eid].task_id not in killed["tasks"]
               or rows[eid].cdc_time_us < photo.checkpoints.get(rows[eid].task_id, generation)}
    assert not outside, f"{len(outside)} duplicates of records that were not in flight in the killed worker"
    print(f"SIGKILL with {len(in_flight)} records in flight ({len(unmarked)} unmarked): "
          f"{delivered.duplicates()} duplicates of {len(outbox.expected_ids())}")


def test_restart_resumes_from_checkpoints_mid_backlog(cql, keyspace, relay_config, relay_process, kafka_bootstrap):
    """A backlog spread over two hours, read in small windows: the first run cannot get through it
    before it is stopped, so its checkpoints lie inside the backlog (asserted, in Scylla and Kafka).
    The second run, with a fresh dedup prefix, must start exactly there: too early shows as
    duplicates, too late as losses."""
    start = now_micros() - 3 * 3600 * S
    outbox = Outbox.create(cql, keyspace, start_us=start)
    n, step = 4_000, 2 * 3600 * S // 4_000
    outbox.write(n, aggregates=200, timestamps=[start + 600 * S + i * step for i in range(n)])
    topic = topic_of(keyspace)
    path = relay_config(workers=2, relay={"window_seconds": 0.1})
    first = relay_process(path)
    first.wait_until(lambda: len(consume_all(kafka_bootstrap, [topic]).records) >= 50, 120, "50 records in Kafka")
    first.signal(signal.SIGTERM)
    assert first.wait(60) == 0, first.output()[-3000:]
    part = consume_all(kafka_bootstrap, [topic])
    saved = checkpoints(cql, keyspace, outbox.table, start)
    newest = start + 600 * S + (n - 1) * step
    assert 0 < len(part.records) < n and min(saved.values()) < newest, \
        f"the first run must stop mid-backlog: {len(part.records)} of {n} published"
    outbox.write(1_000, aggregates=200)  # more work arrives while relay is down
    second = relay_process(path, "--until", "now", env={"RELAY_REDIS__KEY_PREFIX": f"{keyspace}-second:",
                                                         "RELAY_RELAY__WINDOW_SECONDS": "600"})
    assert second.wait(240) == 0, second.output()[-3000:]
    assert_delivered_in_order(outbox, consume_all(kafka_bootstrap, [topic]))
    print(f"first run stopped after {len(part.records)} of {n}; the second resumed from its checkpoints")


def test_new_generation_mid_run_keeps_order(outbox, relay_config, relay_process, keyspace, kafka_bootstrap):
    topic = topic_of(keyspace)
    relay = relay_process(relay_config(workers=2))
    writer = Writer(outbox, per_round=100, aggregates=50, pause=0.05)
    writer.start()
    try:
        relay.wait_until(lambda: consume_all(kafka_bootstrap, [topic]).records, 60, "relay to publish live writes")
        assert len(relay.status()["generations"][outbox.table]) == 1, "the switch is still ahead of relay"
        switch = now_micros() + 2 * S
        outbox.emulator.open_generation(start=switch, vnodes=8, shards=3, seed=77)
        wait_for_cdc_time(relay, kafka_bootstrap, topic, switch, "events written after the switch, from this run")
    finally:
        writer.stop()
    written_until = now_micros()
    relay.wait_until(lambda: [g["complete"] for g in relay.status()["generations"][outbox.table]] == [True, False],
                     60, "relay to see the second generation and complete the first")
    relay.wait_until(lambda: min((task["position_us"] or 0) for task in relay.status()["tasks"]) > written_until,
                     60, "the new generation's tasks to pass the last write")
    assert {t["generation_us"] for t in relay.status()["tasks"]} == {switch - switch % 1000}
    relay.signal(signal.SIGTERM)
    assert relay.wait(60) == 0
    delivered = consume_all(kafka_bootstrap, [topic])
    assert_delivered_in_order(outbox, delivered)
    cdc_times = sorted(delivered.cdc_times().values())
    assert cdc_times[0] < switch <= cdc_times[-1], "events on both sides of the switch"


def test_late_write_inside_confidence_window_is_delivered(outbox, relay_config, relay_process, keyspace,
                                                          kafka_bootstrap):
    """Once relay reads live (every task's position past the instant it became ready, so at most
    confidence_seconds behind now), an event stamped 2 s in the past arrives: behind now, ahead of
    relay's position (now - 10 s, the default confidence window, so that a slow insert on a busy
    machine still lands ahead of it). It must be published."""
    relay = relay_process(relay_config(workers=1, relay={"confidence_seconds": 10}))
    relay.wait_until(lambda: relay.status().get("ready"), 60, "relay ready")
    ready_at = now_micros()
    relay.wait_until(lambda: min((t["position_us"] or 0) for t in relay.status()["tasks"]) > ready_at, 60,
                     "relay to read live")
    late_id = uuid.uuid1()
    late_ts = now_micros() - 2 * S
    outbox.emulator.insert(outbox.table, {"aggregate_id": "late", "id": late_id, "aggregate_type": "order",
                                          "event_type": "late", "payload": b"{}"}, timestamp=late_ts)
    outbox.written["late"].append(str(late_id))
    relay.wait_until(lambda: str(late_id) in consume_all(kafka_bootstrap, [topic_of(keyspace)]).ids, 60,
                     "the late event in Kafka")
    relay.signal(signal.SIGTERM)
    assert relay.wait(60) == 0
    delivered = consume_all(kafka_bootstrap, [topic_of(keyspace)])
    assert_delivered_in_order(outbox, delivered)
    assert delivered.cdc_times()[str(late_id)] == late_ts


def test_poison_row_goes_to_dead_letters_and_the_rest_flows(cql, keyspace, relay_config, relay_process,
                                                             kafka_bootstrap):
    ddl = (f"CREATE TABLE {keyspace}.events (bucket int, seq timeuuid, event_id uuid, agg text, kind text, "
           f"category text, body text, PRIMARY KEY ((bucket), seq))")
    outbox = Outbox.create(cql, keyspace, name="events", ddl=ddl, vnodes=8, start_us=now_micros() - 10 * S)
    for i in range(20):
        eid = uuid.uuid4()
        outbox.written[f"a{i}"].append(str(eid))
        outbox.emulator.insert(outbox.table, {"bucket": i % 3, "seq": uuid.uuid1(), "event_id": eid, "agg": f"a{i}",
                                              "kind": "made", "category": "cat", "body": f"body {i}"})
    poison_id = uuid.uuid4()
    outbox.emulator.insert(outbox.table, {"bucket": 1, "seq": uuid.uuid1(), "event_id": poison_id, "agg": None,
                                          "kind": "made", "category": "cat", "body": "orphan"})
    columns = {"event_id": "event_id", "aggregate_type": "category", "aggregate_id": "agg", "event_type": "kind",
               "payload": "body", "headers": ["bucket"]}
    path = relay_config(workers=1, tables=("events",), topic=f"{keyspace}.{{aggregate_type}}.v1", columns=columns)
    relay = relay_process(path, "--until", "now")
    assert relay.wait(120) == 0, relay.output()[-3000:]
    delivered = consume_all(kafka_bootstrap, [f"{keyspace}.cat.v1"])
    assert_delivered_in_order(outbox, delivered)
    assert all(h["bucket"] in ("0", "1", "2") and v.startswith(b"body ") for _, h, v in delivered.records)
    rows = list(cql.execute(f"SELECT event_id, error_class, error_message, status, payload "
                            f"FROM {keyspace}.dead_letters WHERE source_table = %s ALLOW FILTERING",
                            (f"{keyspace}.events",)))
    assert len(rows) == 1
    assert rows[0].event_id == str(poison_id) and rows[0].error_class == "missing_aggregate_id"
    assert rows[0].status == "pending" and rows[0].payload == b"orphan"


def test_sigterm_mid_window_drains_what_was_in_flight(outbox, relay_config, relay_process, keyspace, kafka_bootstrap,
                                                      cql, redis_client):
    """SIGTERM arrives while Kafka holds records no checkpoint has passed yet (the workers are frozen
    for the photograph and the signal). relay must exit 0 on its own (no shutdown-timeout kill) with
    those windows finished: checkpoints past every record that was in flight, every record in Kafka
    marked in Redis, none below a checkpoint missing. A second run then adds no duplicate."""
    outbox.write(8_000, aggregates=400)
    relay = relay_process(relay_config(workers=2, relay={"window_seconds": 0.5, "shutdown_timeout_seconds": 15}))
    topic, generation = topic_of(keyspace), outbox.emulator.generations[-1].start_us
    watch = Watch(cql, redis_client, kafka_bootstrap, keyspace=keyspace, table=outbox.table, topic=topic,
                  generation_us=generation, prefix=f"{keyspace}:")
    rows = watch.rows
    photo = watch.catch_in_flight(relay, lambda _: relay.signal(signal.SIGTERM))
    watch.close()
    assert relay.wait(60) == 0, relay.output()[-3000:]
    assert "shutdown timeout" not in relay.output()

    saved = checkpoints(cql, keyspace, outbox.table, generation)
    assert len(saved) == 16, "one checkpoint per vnode task"
    behind = {eid for eid in photo.in_flight if rows[eid].cdc_time_us >= saved[rows[eid].task_id]}
    assert not behind, f"{len(behind)} records in flight at SIGTERM are past their task's final checkpoint"
    delivered = consume_all(kafka_bootstrap, [topic])
    assert delivered.duplicates() == 0
    assert marked(redis_client, f"{keyspace}:", outbox.table, (rows[e] for e in delivered.ids)) == set(delivered.ids), \
        "a record in Kafka left unmarked"
    hole = {eid for eid, row in rows.items() if row.cdc_time_us < saved[row.task_id]} - set(delivered.ids)
    assert not hole, f"{len(hole)} records behind a checkpoint are not in Kafka"

    second = relay_process(relay.config, "--until", "now")
    assert second.wait(240) == 0, second.output()[-3000:]
    assert_delivered_in_order(outbox, consume_all(kafka_bootstrap, [topic]))
    print(f"SIGTERM with {len(photo.in_flight)} records in flight: drained, then the rest, 0 duplicates")


def test_tablets_split_while_relay_reads(cql, keyspace, relay_config, relay_process, kafka_bootstrap):
    """relay reads a tablets table live; the split to 8 tablets is published while it does (it knew one
    stream set of 4 when the split was made). Events on both sides arrive in order, and relay's status
    shows it moved to the new stream set past the last write."""
    outbox = Outbox.create(cql, keyspace, tablets=4, start_us=now_micros() - 10 * S)
    outbox.write(400, aggregates=40)  # a backlog before relay starts
    topic = topic_of(keyspace)
    relay = relay_process(relay_config(workers=2))
    writer = Writer(outbox, per_round=40, aggregates=40)
    writer.start()
    try:
        relay.wait_until(lambda: consume_all(kafka_bootstrap, [topic]).records, 60, "relay to publish")
        assert [g["streams"] for g in relay.status()["generations"][outbox.table]] == [4], "one stream set so far"
        split = now_micros() + 2 * S
        outbox.emulator.open_tablet_streams(outbox.table, 8, start=split)
        wait_for_cdc_time(relay, kafka_bootstrap, topic, split, "events written after the split, from this run")
    finally:
        writer.stop()
    written_until = now_micros()
    relay.wait_until(lambda: [(g["streams"], g["complete"]) for g in relay.status()["generations"][outbox.table]]
                     == [(4, True), (8, False)], 60, "relay to finish the old stream set")
    relay.wait_until(lambda: min((t["position_us"] or 0) for t in relay.status()["tasks"]) > written_until, 60,
                     "the new stream set's tasks to pass the last write")
    assert len(relay.status()["tasks"]) == 8
    relay.signal(signal.SIGTERM)
    assert relay.wait(60) == 0, relay.output()[-3000:]
    delivered = consume_all(kafka_bootstrap, [topic])
    assert_delivered_in_order(outbox, delivered)
    cdc_times = sorted(delivered.cdc_times().values())
    assert cdc_times[0] < split <= cdc_times[-1], "events on both sides of the split"


def test_workers_exit_when_the_supervisor_dies(outbox, relay_config, relay_process):
    relay = relay_process(relay_config(workers=2))  # metrics.port = 0: relay picks the port
    relay.wait_until(lambda: relay.status().get("ready"), 60, "relay ready")
    assert relay.port > 0 and relay.status()["metrics_port"] == relay.port, "the logged port is the bound one"
    pids = relay.worker_pids()
    assert len(pids) == 2 and all(process_alive(p) for p in pids)
    # Workers are forked (relay.forkserver): ps and top tell them apart by name, not by command line.
    names = {w["index"]: open(f"/proc/{w['pid']}/comm").read().strip() for w in relay.status()["workers"]}
    assert names == {0: "relay-worker-0", 1: "relay-worker-1"}
    family = descendants(relay.pid)  # the workers, the forkserver they came from, multiprocessing's helper
    assert set(pids) < family
    os.kill(relay.pid, signal.SIGKILL)
    relay.proc.wait(30)
    wait_for(lambda: not any(process_alive(p) for p in pids), 60, f"workers {pids} to exit after their supervisor")
    wait_for(lambda: not any(process_alive(p) for p in family), 30, f"relay's processes {family} to exit")


def descendants(pid: int) -> set[int]:
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{p}/task/{tid}/children") as fh:
                    kids = {int(x) for x in fh.read().split()}
            except OSError:
                continue
            todo += kids - out
            out |= kids
    return out


"""`relay dlq replay|discard|show` on the real stack (issue 11): records too big for a topic's
max.message.bytes are dead-lettered as MSG_SIZE_TOO_LARGE by `relay run`; the test raises the
limit and drives recovery only through the commands, checking Kafka by consuming it."""
from __future__ import annotations

import collections

from dlq_helpers import oversize, records, run_cli, run_json, set_topic_config
from publisher_helpers import create_topic

from relay.dlqreplay import WAVE_MAX
from relay.ratelimit import chunk_size


def test_replay_lifecycle_through_a_real_topic_limit(cql, keyspace, outbox, relay_config, relay_process,
                                                     kafka_bootstrap, capsys):
    topic = f"{keyspace}.order"
    create_topic(kafka_bootstrap, topic, **{"max.message.bytes": "10000"})
    rows = outbox.rows(600, aggregates=60)
    big = oversize(rows, 20, 7)  # 30 dead letters, 10 in each of 3 aggregates (7, 27, 47)
    special = set()
    for r in rows[7::40]:  # half of them get another event type, for the filters
        r["event_type"] = "special"
        special.add(str(r["id"]))
    for start in range(0, len(rows), 60):
        outbox.emulator.write_many(outbox.table, rows[start:start + 60])
    config = relay_config(workers=2)
    relay = relay_process(config, "--until", "now")
    assert relay.wait(240) == 0, relay.output()[-3000:]
    cfg = ["--config", str(config)]
    table = ["--table", outbox.table]
    before = records(kafka_bootstrap, topic)
    assert len(before) == 570

    stats = run_json(capsys, "dlq", "stats", *cfg)[1]
    assert stats["by_status"] == {"pending": 30} and stats["oldest_pending_age_seconds"] is not None

    # The limit unchanged: a replay fails, keeps the rows pending with one more attempt, exits 1.
    code, summary = run_json(capsys, "dlq", "replay", *cfg, *table, "--limit", "2")
    assert code == 1 and (summary["matched"], summary["failed"], summary["replayed"]) == (2, 2, 0), summary
    assert len(records(kafka_bootstrap, topic)) == 570

    set_topic_config(kafka_bootstrap, topic, **{"max.message.bytes": "1000000"})

    # Filters select exactly what they name (dry runs publish nothing).
    code, dry = run_json(capsys, "dlq", "replay", *cfg, *table, "--dry-run")
    assert code == 0 and {d["event_id"] for d in dry["dead_letters"]} == big
    times = [d["cdc_at"] for d in dry["dead_letters"]]
    assert times == sorted(times), "cdc$time order"
    by_type = run_json(capsys, "dlq", "replay", *cfg, *table, "--dry-run", "--event-type", "special")[1]
    assert {d["event_id"] for d in by_type["dead_letters"]} == special
    one = dry["dead_letters"][3]
    by_agg = run_json(capsys, "dlq", "replay", *cfg, *table, "--dry-run", "--aggregate-id", one["aggregate_id"])[1]
    assert [d["event_id"] for d in by_agg["dead_letters"]] == [d["event_id"] for d in dry["dead_letters"]
                                                               if d["aggregate_id"] == one["aggregate_id"]]
    assert len(by_agg["dead_letters"]) == 10
    by_class = run_json(capsys, "dlq", "replay", *cfg, *table, "--dry-run", "--error-class", "MSG_SIZE_TOO_LARGE")[1]
    assert by_class["matched"] == 30
    assert run_json(capsys, "dlq", "replay", *cfg, *table, "--dry-run", "--error-class", "NOPE")[1]["matched"] == 0
    since = run_json(capsys, "dlq", "replay", *cfg, *table, "--dry-run", "--since", dry["dead_letters"][10]["cdc_at"],
                     "--until", dry["dead_letters"][20]["cdc_at"])[1]
    assert [d["event_id"] for d in since["dead_letters"]] == [d["event_id"] for d in dry["dead_letters"][10:20]]
    assert len(records(kafka_bootstrap, topic)) == 570, "dry runs publish nothing"

    # Discard one aggregate's oldest dead letter: no replay publishes it.
    discarded = dry["dead_letters"][0]
    code, out = run_json(capsys, "dlq", "discard", *cfg, *table, "--aggregate-id", discarded["aggregate_id"],
                         "--until", discarded["cdc_at"][:-6] + "Z", "--since", "86400", "--reason", "test: not wanted")
    assert code == 0 and out["discarded"] == 0, "--until is exclusive"
    code, out = run_json(capsys, "dlq", "discard", *cfg, *table, "--aggregate-id", discarded["aggregate_id"],
                         "--limit", "1", "--reason", "test: not wanted")
    assert code == 0 and out["discarded"] == 1
    wanted = big - {discarded["event_id"]}

    # --rate: the special ones at 10 records/s, measured by the broker's timestamps.
    code, out = run_json(capsys, "dlq", "replay", *cfg, *table, "--event-type", "special", "--rate", "10")
    assert code == 0 and out["replayed"] == len(special & wanted), out
    code, out = run_json(capsys, "dlq", "replay", *cfg, *table)
    assert code == 0 and out["replayed"] == 29 - len(special & wanted), out
    assert out["failed"] == 0 and out["held_back"] == 0

    after = records(kafka_bootstrap, topic)
    replayed = [r for r in after if "relay_dlq_attempt" in r["headers"]]
    ids = collections.Counter(r["headers"]["id"] for r in replayed)
    assert set(ids) == wanted and max(ids.values()) == 1, "each exactly once"
    order = {d["event_id"]: i for i, d in enumerate(dry["dead_letters"])}
    for part in {r["partition"] for r in replayed}:  # one aggregate's records share a partition
        seen = [order[r["headers"]["id"]] for r in sorted(replayed, key=lambda r: r["offset"])
                if r["partition"] == part and r["headers"]["event_type"] != "special"]
        assert seen == sorted(seen), "a replay publishes in cdc$time order"
    assert len(after) == 570 + 29
    assert {r["headers"]["relay_dlq_attempt"] for r in replayed if r["headers"]["id"] in
            {d["event_id"] for d in dry["dead_letters"][:2]}} <= {"2", "3"}
    rated = sorted(r["ts_ms"] for r in replayed if r["headers"]["event_type"] == "special")
    # A token bucket lets its first chunk go at once, and that chunk's broker time also carries the
    # new producer's start (its id, the topic's metadata): timed from the second chunk, which empties
    # the bucket, every later chunk waits its share.
    chunk = chunk_size(10, WAVE_MAX)
    spread = (rated[-1] - rated[chunk]) / 1000.0
    floor = (len(rated) - 2 * chunk) / 10.0
    with capsys.disabled():
        print(f"--rate 10: {len(rated) - chunk} records over {spread:.2f}s after the first chunk (floor {floor:.2f}s)")
    assert floor > 0.5 and spread >= floor * 0.9, f"--rate 10 not honoured: {spread:.2f}s < {floor:.2f}s"

    # A second run publishes nothing; nor does one after a crash between the ack and the mark.
    code, out = run_json(capsys, "dlq", "replay", *cfg, *table)
    assert code == 0 and out["matched"] == 0 and out["skipped_already_replayed"] == 29, out
    # Several: the run matched its Redis answers to the dead letters by object identity once,
    # and lost them when Python reused a freed event's id.
    victims = [d for d in dry["dead_letters"] if d["event_id"] != discarded["event_id"]][:5]
    for victim in victims:
        cql.execute(f"UPDATE {keyspace}.dead_letters SET status = 'pending' WHERE source_table = %s AND day = %s AND "
                    f"cdc_time = {victim['cdc_time']} AND stream_id = {victim['stream_id']} AND batch_seq_no = %s",
                    (outbox.table, victim["day"], victim["batch_seq_no"]))
    code, out = run_json(capsys, "dlq", "replay", *cfg, *table)
    assert code == 0 and (out["matched"], out["replayed"], out["skipped_already_replayed"]) == (0, 0, 29), out
    assert len(records(kafka_bootstrap, topic)) == 570 + 29

    # show: every field and the history (dead-lettered, failed replay, replayed / discarded).
    code, shown = run_json(capsys, "dlq", "show", *cfg, dry["dead_letters"][1]["event_id"])
    assert code == 0 and shown["status"] == "replayed" and shown["error_class"] == "MSG_SIZE_TOO_LARGE"
    assert [h["status"] for h in shown["history"]] == ["pending", "pending", "replayed", "replayed"], shown["history"]
    code, text, _ = run_cli(capsys, "dlq", "show", *cfg, discarded["event_id"])
    assert code == 0 and "discarded" in text and "test: not wanted" in text, text
    stats = run_json(capsys, "dlq", "stats", *cfg)[1]
    assert stats["by_status"] == {"replayed": 29, "discarded": 1} and stats["oldest_pending_age_seconds"] is None

"""`relay replay` re-publishes exactly the CDC log rows a time range, aggregate or event type names
(issue 11), each once per run, with the run id header; checked by consuming Kafka."""
from __future__ import annotations

import collections
from datetime import UTC, datetime

from dlq_helpers import records, run_json
from harness import Outbox, now_micros


def iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, tz=UTC).isoformat()


def test_replay_from_the_cdc_log_by_time_aggregate_and_event_type(cql, keyspace, relay_config, kafka_bootstrap,
                                                                  capsys):
    start = now_micros() - 900_000_000
    outbox = Outbox.create(cql, keyspace, start_us=start)
    phases = [start + 100_000_000, start + 300_000_000, start + 500_000_000]  # 3 bursts, 200 s apart
    ids = []
    for phase, event_type in zip(phases, ("created", "paid", "created"), strict=True):
        before = {agg: len(v) for agg, v in outbox.written.items()}
        outbox.write(60, aggregates=12, timestamps=[phase + i * 1000 for i in range(60)], event_type=event_type)
        ids.append({e for agg, v in outbox.written.items() for e in v[before.get(agg, 0):]})
    config = relay_config()
    cfg = ["--config", str(config), "--table", outbox.table]
    topic = f"{keyspace}.order"

    code, out = run_json(capsys, "replay", *cfg, "--since", iso(phases[1]), "--until", iso(phases[2]))
    assert code == 0 and out["published"] == out["matched"] == 60 and out["failed"] == 0, out
    first = out["run_id"]
    got = [r for r in records(kafka_bootstrap, topic) if r["headers"].get("relay_replay") == first]
    assert collections.Counter(r["headers"]["id"] for r in got) == collections.Counter(ids[1])

    agg = "agg-00003"
    code, out = run_json(capsys, "replay", *cfg, "--since", "3600", "--until", "0", "--aggregate-id", agg)
    assert code == 0 and out["published"] == 15, out
    got = sorted((r for r in records(kafka_bootstrap, topic) if r["headers"].get("relay_replay") == out["run_id"]),
                 key=lambda r: r["offset"])
    assert [r["headers"]["id"] for r in got] == outbox.written[agg], "the aggregate's rows, in order, once"

    code, out = run_json(capsys, "replay", *cfg, "--since", "3600", "--until", "0", "--event-type", "paid")
    assert code == 0 and out["published"] == 60
    got = [r for r in records(kafka_bootstrap, topic) if r["headers"].get("relay_replay") == out["run_id"]]
    assert {r["headers"]["id"] for r in got} == ids[1] and len(got) == 60
    assert {r["headers"]["event_type"] for r in got} == {"paid"}

    total = len(records(kafka_bootstrap, topic))
    code, out = run_json(capsys, "replay", *cfg, "--since", "3600", "--until", "0", "--dry-run")
    assert code == 0 and out["matched"] == 180 and out["published"] == 0
    assert {e["event_id"] for e in out["events"]} == ids[0] | ids[1] | ids[2]
    assert len(records(kafka_bootstrap, topic)) == total, "a dry run publishes nothing"

    code, out = run_json(capsys, "replay", *cfg, "--since", "3600", "--until", "0", "--topic",
                         f"{keyspace}.rebuild.{{aggregate_type}}", "--rate", "500")
    assert code == 0 and out["published"] == 180
    rebuilt = records(kafka_bootstrap, f"{keyspace}.rebuild.order")
    assert collections.Counter(r["headers"]["id"] for r in rebuilt) == collections.Counter(ids[0] | ids[1] | ids[2])
    assert {r["headers"]["relay_replay"] for r in rebuilt} == {out["run_id"]}
    with capsys.disabled():
        print(f"relay replay --rate 500: {out['published']} records at {out['rate_per_second']}/s")

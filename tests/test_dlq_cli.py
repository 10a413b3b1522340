"""`relay dlq list|stats` against a real dead_letters table, filled with plain CQL."""
from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import unique
from harness import write_config

from relay import config, schema, timeuuid
from relay.cli import main


def dlq_config(tmp_path: Path, keyspace: str, relay_keyspace: str | None = None) -> Path:
    """Two tables; relay's own keyspace is the test's unless told otherwise."""
    return write_config(tmp_path / "relay.toml", keyspace, tables=("outbox", "other"),
                        scylla={"relay_keyspace": relay_keyspace or keyspace})


def apply_relay_schema(cql, path: Path) -> None:
    schema.apply(cql, config.load(path))


def insert_dead_letter(cql, keyspace: str, table: str, cdc_at: datetime, status: str, error_class: str,
                       first_failed_at: datetime | None = None) -> uuid.UUID:
    cdc_time = timeuuid.from_micros(int(cdc_at.timestamp() * 1_000_000))
    cql.execute(
        f"INSERT INTO {keyspace}.dead_letters (source_table, day, cdc_time, stream_id, batch_seq_no, event_id, "
        f"aggregate_type, aggregate_id, event_type, topic, key, payload, headers, error_class, error_message, "
        f"attempts, first_failed_at, last_failed_at, status) "
        f"VALUES (%s, %s, %s, %s, 0, %s, 'order', 'agg-7', 'created', 'outbox.event.order', %s, %s, %s, %s, %s, "
        f"3, %s, %s, %s)",
        (table, cdc_at.date(), cdc_time, bytes(range(16)), f"ev-{error_class}-{status}", b"agg-7", b"x" * 42,
         {"trace": "t1"}, error_class, f"{error_class}: broker said no\nsecond line", first_failed_at or cdc_at,
         first_failed_at or cdc_at, status))
    return cdc_time


@pytest.fixture
def dead_letters(cql, keyspace, tmp_path):
    """Four dead letters in the last 7 days over two tables, one older than that."""
    path = dlq_config(tmp_path, keyspace)
    apply_relay_schema(cql, path)
    now = datetime.now(UTC)
    a, b = f"{keyspace}.outbox", f"{keyspace}.other"
    insert_dead_letter(cql, keyspace, a, now - timedelta(hours=3), "pending", "MSG_SIZE_TOO_LARGE",
                       first_failed_at=now - timedelta(hours=2))
    insert_dead_letter(cql, keyspace, a, now - timedelta(minutes=30), "pending", "missing_aggregate_id")
    insert_dead_letter(cql, keyspace, a, now - timedelta(minutes=10), "replayed", "MSG_SIZE_TOO_LARGE")
    insert_dead_letter(cql, keyspace, b, now - timedelta(days=2), "discarded", "UNKNOWN_TOPIC_OR_PART")
    insert_dead_letter(cql, keyspace, a, now - timedelta(days=10), "pending", "MSG_SIZE_TOO_LARGE")
    return path, a, b, now


def run_json(capsys, *argv: str) -> dict:
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_list_human_newest_first(dead_letters, capsys):
    path, a, b, _ = dead_letters
    assert main(["dlq", "list", "--config", str(path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:4] == ["CDC", "TIME", "(UTC)", "TABLE"]
    body = lines[1:-1]
    assert len(body) == 4
    assert [line.split()[3] for line in body] == ["replayed", "pending", "pending", "discarded"]
    assert [line.split()[2] for line in body] == [a, a, a, b]
    assert "second line" in body[0] and "\n" not in body[0], "messages are flattened to one line"
    assert lines[-1] == "4 dead letter(s) in the last 7 day(s)"


def test_list_json_filters_and_limits(dead_letters, capsys):
    path, a, b, _ = dead_letters
    base = ["dlq", "list", "--config", str(path), "--json"]

    everything = run_json(capsys, *base)
    assert everything["count"] == 4 and everything["tables"] == [a, b]
    first = everything["dead_letters"][0]
    assert (first["status"], first["error_class"], first["source_table"]) == ("replayed", "MSG_SIZE_TOO_LARGE", a)
    assert (first["key"], first["payload_size"], first["headers"], first["attempts"]) == ("agg-7", 42, {"trace": "t1"},
                                                                                         3)
    assert first["stream_id"] == "0x" + bytes(range(16)).hex()
    assert first["error_message"].endswith("second line")
    times = [d["cdc_at"] for d in everything["dead_letters"]]
    assert times == sorted(times, reverse=True)

    pending = run_json(capsys, *base, "--status", "pending")
    assert [d["error_class"] for d in pending["dead_letters"]] == ["missing_aggregate_id", "MSG_SIZE_TOO_LARGE"]
    assert run_json(capsys, *base, "--limit", "1")["dead_letters"][0]["status"] == "replayed"
    assert run_json(capsys, *base, "--table", b)["count"] == 1
    assert run_json(capsys, *base, "--days", "14")["count"] == 5


def test_stats(dead_letters, capsys):
    path, a, b, written_at = dead_letters
    stats = run_json(capsys, "dlq", "stats", "--config", str(path), "--json")
    # The oldest pending failed 2 h before `written_at`; stats looked at it since (no slack guessed).
    since = datetime.now(UTC) - written_at
    assert stats["total"] == 4
    assert stats["by_status"] == {"pending": 2, "replayed": 1, "discarded": 1}
    assert {(c["table"], c["status"], c["error_class"], c["count"]) for c in stats["counts"]} == {
        (a, "pending", "MSG_SIZE_TOO_LARGE", 1), (a, "pending", "missing_aggregate_id", 1),
        (a, "replayed", "MSG_SIZE_TOO_LARGE", 1), (b, "discarded", "UNKNOWN_TOPIC_OR_PART", 1)}
    assert stats["oldest_pending_table"] == a
    assert 7200 <= stats["oldest_pending_age_seconds"] <= 7200 + since.total_seconds(), \
        "age counts from the first failure"
    assert stats["tables"][b]["oldest_pending_age_seconds"] is None

    assert main(["dlq", "stats", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "total 4: discarded 1, pending 2, replayed 1" in out
    m = re.search(r"oldest pending: (\d+)h(\d+)m \(" + re.escape(a) + r"\)", out)
    assert m, out
    shown = int(m.group(1)) * 60 + int(m.group(2))  # minutes, rounded either way
    assert 119 <= shown <= 121 + (datetime.now(UTC) - written_at).total_seconds() / 60, out
    assert re.search(re.escape(a) + r"\s+pending\s+MSG_SIZE_TOO_LARGE\s+1$", out, re.MULTILINE), out

    older = run_json(capsys, "dlq", "stats", "--config", str(path), "--json", "--days", "14", "--table", a)
    assert older["total"] == 4 and older["by_status"]["pending"] == 3
    assert older["oldest_pending_age_seconds"] > 9 * 86400


def test_empty_table_reports_nothing(cql, keyspace, tmp_path, capsys):
    path = dlq_config(tmp_path, keyspace)
    apply_relay_schema(cql, path)
    assert main(["dlq", "list", "--config", str(path)]) == 0
    assert capsys.readouterr().out.strip() == "no dead letters in the last 7 day(s)"
    assert run_json(capsys, "dlq", "stats", "--config", str(path), "--json")["total"] == 0


@pytest.mark.parametrize("schema", ["no keyspace", "no table"])
def test_missing_schema_is_a_user_error(keyspace, tmp_path, capsys, schema):
    relay_keyspace = unique("missing") if schema == "no keyspace" else keyspace
    path = dlq_config(tmp_path, keyspace, relay_keyspace)
    for action in ("list", "stats"):
        assert main(["dlq", action, "--config", str(path)]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("relay: ")]
        assert len(err) == 1 and "run `relay schema apply` first" in err[0]

"""`relay schema apply` upgrades a relay keyspace made by an older relay: additive ALTERs only,
each applied once, and the commands that need the new columns say what to run until then."""
from __future__ import annotations

import pytest
from dlq_helpers import run_cli

from relay import config, schema
from relay.errors import ConfigError
from relay.schema import missing_relay_tables, require_relay_tables

# dead_letters and checkpoints as relay made them before the dead-letter lifecycle (git history).
OLD = """
CREATE TABLE {ks}.checkpoints (source_table text, generation timestamp, task_id int, position timeuuid,
  owner text, updated_at timestamp, PRIMARY KEY ((source_table, generation), task_id));
CREATE TABLE {ks}.dead_letters (source_table text, day date, cdc_time timeuuid, stream_id blob, batch_seq_no int,
  event_id text, aggregate_type text, aggregate_id text, event_type text, topic text, key blob, payload blob,
  headers map<text, text>, error_class text, error_message text, attempts int, first_failed_at timestamp,
  last_failed_at timestamp, status text,
  PRIMARY KEY ((source_table, day), cdc_time, stream_id, batch_seq_no))
  WITH CLUSTERING ORDER BY (cdc_time DESC, stream_id ASC, batch_seq_no ASC)
"""


def test_apply_upgrades_an_old_keyspace_once(cql, keyspace, relay_config, capsys):
    path = relay_config(apply_schema=False)
    for stmt in OLD.format(ks=keyspace).split(";"):
        cql.execute(stmt)
    assert missing_relay_tables(cql, keyspace) == {"parked_aggregates", "dead_letters.status_at",
                                                   "dead_letters.actor", "dead_letters.reason",
                                                   "dead_letters.history"}
    code, _, err = run_cli(capsys, "dlq", "stats", "--config", str(path))
    assert code == 2 and "run `relay schema apply` first" in err and "dead_letters.history" in err
    cfg = config.load(path)
    schema.apply(cql, cfg)
    assert missing_relay_tables(cql, keyspace) == set()
    schema.apply(cql, cfg)  # a second apply changes nothing and does not fail
    cols = {r[0] for r in cql.execute("SELECT column_name FROM system_schema.columns WHERE keyspace_name = %s "
                                      "AND table_name = 'dead_letters'", (keyspace,))}
    assert {"status_at", "actor", "reason", "history", "status", "payload"} <= cols


def test_schema_print_shows_the_upgrade_steps(tmp_path, keyspace_name):
    from harness import run_relay, write_config

    path = write_config(tmp_path / "relay.toml", keyspace_name)
    res = run_relay("schema", "print", "--config", str(path))
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert f"ALTER TABLE {keyspace_name}.dead_letters ADD history map<timestamp, text>;" in out
    assert f"CREATE TABLE IF NOT EXISTS {keyspace_name}.parked_aggregates" in out


def test_the_schema_check_names_what_is_missing(cql, keyspace, keyspace_name):
    """One check for `relay run` (supervisor and workers), `status` and `dlq`: it says whether the
    keyspace or which tables are missing, as a ConfigError (one line, and a worker's boot error)."""
    with pytest.raises(ConfigError, match=f"relay keyspace '{keyspace_name}' does not exist: run `relay schema"):
        require_relay_tables(cql, keyspace_name)
    with pytest.raises(ConfigError) as info:
        require_relay_tables(cql, keyspace)  # exists, empty
    assert "lacks checkpoints, dead_letters, parked_aggregates: run `relay schema apply` first" in str(info.value)

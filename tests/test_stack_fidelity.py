"""The stack refuses what Scylla refuses (DESIGN §10): logins are required, everything runs as the
non-superuser role, and Cassandra's guardrails stand in for Scylla's limits on future write
timestamps and on IN lists. Each limit is proved through the real driver as that role.

relay's own credentials come from the environment or the config, and no command prints them.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cassandra import InvalidRequest, Unauthorized
from cassandra.cluster import Cluster, NoHostAvailable
from conftest import CQL_PASSWORD, CQL_PORT, CQL_USER, REPO
from harness import run_relay, write_config

DAY_US = 86_400 * 1_000_000
IN_GUARDRAIL = r"Guardrail (partition_keys_in_select|in_select_cartesian_product) violated"


def stack_script():
    """deploy/local/stack as a module (it has no .py suffix: it is run as a command)."""
    name = "relay_stack_script"
    if name not in sys.modules:
        loader = importlib.machinery.SourceFileLoader(name, str(REPO / "deploy" / "local" / "stack"))
        module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader))
        sys.modules[name] = module  # its dataclasses look their module up while being defined
        loader.exec_module(module)
    return sys.modules[name]


def now_us() -> int:
    return time.time_ns() // 1000


# --------------------------------------------------------------------------- logins and the role

def test_cassandra_refuses_clients_without_a_password(cql):
    cluster = Cluster(["127.0.0.1"], port=CQL_PORT, protocol_version=4, connect_timeout=10)
    try:
        with pytest.raises(NoHostAvailable, match="requires authentication"):
            cluster.connect()
    finally:
        cluster.shutdown()


def test_the_tests_run_as_a_role_that_is_no_superuser(cql):
    assert cql.cluster.auth_provider.username == CQL_USER
    with pytest.raises(Unauthorized):
        cql.execute("CREATE ROLE relay_test_intruder WITH LOGIN = true")


def test_stack_probe_logs_in_with_sasl_plain():
    stack = stack_script()
    assert stack.probe_cql(CQL_PORT, CQL_USER, CQL_PASSWORD)[0].isdigit()
    with pytest.raises(stack.CqlError) as info:
        stack.probe_cql(CQL_PORT, CQL_USER, "not-the-password")
    assert info.value.code == stack.BAD_CREDENTIALS


def test_stack_role_statements_are_idempotent_and_refuse_odd_names():
    stack = stack_script()
    statements = stack.role_statements("relay", "it's")
    assert statements[0].startswith("CREATE ROLE IF NOT EXISTS relay WITH PASSWORD = 'it''s'")
    assert "SUPERUSER = false" in statements[0]
    with pytest.raises(stack.StackError, match="RELAY_STACK_CQL_USER"):
        stack.role_statements("relay; DROP ROLE cassandra", "x")


# --------------------------------------------------------------------------- Scylla's limits

def test_write_timestamps_more_than_3_days_ahead_are_refused(cql, keyspace):
    """Scylla: restrict_future_timestamp. Cassandra: maximum_timestamp_fail_threshold = 3d."""
    cql.execute(f"CREATE TABLE {keyspace}.t (k int PRIMARY KEY, v int)")
    insert = cql.prepare(f"INSERT INTO {keyspace}.t (k, v) VALUES (?, ?) USING TIMESTAMP ?")
    with pytest.raises(InvalidRequest, match="Guardrail maximum_timestamp violated"):
        cql.execute(insert, (1, 1, now_us() + 4 * DAY_US))
    with pytest.raises(InvalidRequest, match="Guardrail maximum_timestamp violated"):
        cql.execute(insert, (1, 1, 2**62))  # the "far future wins" trick
    ahead = now_us() + 3_600_000_000
    cql.execute(insert, (2, 2, ahead))
    assert cql.execute(f"SELECT writetime(v) FROM {keyspace}.t WHERE k = 2").one()[0] == ahead


def test_in_lists_over_100_partition_keys_are_refused(cql, keyspace):
    """Scylla: max_partition_key_restrictions_per_query. Cassandra: partition_keys_in_select_fail_threshold
    (and in_select_cartesian_product_fail_threshold, which counts the same keys first)."""
    cql.execute(f"CREATE TABLE {keyspace}.t (k int, c int, v int, PRIMARY KEY (k, c))")
    insert = cql.prepare(f"INSERT INTO {keyspace}.t (k, c, v) VALUES (?, 0, 0)")
    for k in range(101):
        cql.execute(insert, (k,))
    select = cql.prepare(f"SELECT k FROM {keyspace}.t WHERE k IN ?")
    with pytest.raises(InvalidRequest, match=IN_GUARDRAIL):
        cql.execute(select, (list(range(101)),))
    assert len(list(cql.execute(select, (list(range(100)),)))) == 100


def test_in_lists_over_100_clustering_keys_are_refused(cql, keyspace):
    """Scylla: max_clustering_key_restrictions_per_query. Cassandra: in_select_cartesian_product_fail_threshold."""
    cql.execute(f"CREATE TABLE {keyspace}.t (k int, c int, v int, PRIMARY KEY (k, c))")
    select = cql.prepare(f"SELECT c FROM {keyspace}.t WHERE k = 1 AND c IN ?")
    with pytest.raises(InvalidRequest, match="Guardrail in_select_cartesian_product violated"):
        cql.execute(select, (list(range(101)),))
    cql.execute(select, (list(range(100)),))


# --------------------------------------------------------------------------- relay's credentials

def config_file(tmp_path: Path, relay_keyspace: str, scylla: dict | None = None) -> Path:
    """No login and no relay replication in the file: each test says where they come from."""
    return write_config(tmp_path / "relay.toml", relay_keyspace, credentials=False,
                        scylla={"relay_replication": None, "cdc_metadata_keyspace": None,
                                "tablets_metadata_keyspace": None, **(scylla or {})})


def relay(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m relay ARGS --config CONFIG` with no RELAY_* variables but those in `env`."""
    return run_relay(*args, "--config", str(config), env=env, credentials=False)


def scylla_line(res: subprocess.CompletedProcess) -> str:
    return next(line for line in res.stdout.splitlines() if line.startswith("scylla "))


def logged_in(res: subprocess.CompletedProcess) -> bool:
    """config check got as far as querying the server (the rest of its verdict is about tables)."""
    return f"127.0.0.1:{CQL_PORT}, release " in scylla_line(res)


def test_credentials_from_the_environment(tmp_path, keyspace):
    res = relay(config_file(tmp_path, keyspace), "config", "check",
                env={"RELAY_SCYLLA__USERNAME": CQL_USER, "RELAY_SCYLLA__PASSWORD": CQL_PASSWORD})
    assert logged_in(res), res.stdout + res.stderr


def test_credentials_from_the_config_file(tmp_path, keyspace):
    config = config_file(tmp_path, keyspace, {"username": CQL_USER, "password": CQL_PASSWORD})
    res = relay(config, "config", "check")
    assert logged_in(res), res.stdout + res.stderr


@pytest.mark.parametrize("command", [("config", "check"), ("run",)], ids=["config-check", "run"])
def test_a_wrong_password_is_reported_and_never_printed(tmp_path, keyspace, command):
    secret = "hunter2-not-the-relay-password"
    res = relay(config_file(tmp_path, keyspace), *command,
                env={"RELAY_SCYLLA__USERNAME": CQL_USER, "RELAY_SCYLLA__PASSWORD": secret})
    out = res.stdout + res.stderr
    assert res.returncode == 2, out
    assert "Bad credentials" in out or "password are incorrect" in out, out
    assert secret not in out


# --------------------------------------------------------------------------- relay keyspace replication

def test_config_check_warns_when_the_relay_keyspace_has_fewer_than_3_replicas(tmp_path, keyspace):
    """The test keyspace exists with one replica: its real replication is judged, in one line."""
    res = relay(config_file(tmp_path, keyspace), "config", "check",
                env={"RELAY_SCYLLA__USERNAME": CQL_USER, "RELAY_SCYLLA__PASSWORD": CQL_PASSWORD})
    expected = (f"; WARNING keyspace {keyspace} has 1 replica, fewer than 3: at QUORUM one node down stops "
                "checkpoints and dead letters (raise it with ALTER KEYSPACE)")
    assert scylla_line(res).endswith(expected), res.stdout
    assert res.stdout.count("WARNING") == 1, res.stdout


def test_config_check_is_silent_about_the_default_replication(tmp_path):
    """A relay keyspace that does not exist yet would get the default: NetworkTopologyStrategy, 3."""
    res = relay(config_file(tmp_path, "relay_not_created_yet"), "config", "check",
                env={"RELAY_SCYLLA__USERNAME": CQL_USER, "RELAY_SCYLLA__PASSWORD": CQL_PASSWORD})
    assert logged_in(res), res.stdout + res.stderr
    assert "WARNING" not in res.stdout, res.stdout


# --------------------------------------------------------------------------- the stack's ports

def test_a_listening_port_in_the_ephemeral_range_is_warned_about(monkeypatch):
    stack = stack_script()
    span = (32768, 60999)
    text = stack.ephemeral_warning("kafka", "RELAY_STACK_KAFKA_PORT", 39092, span)
    assert text and "RELAY_STACK_KAFKA_PORT=39092" in text and "below 32768" in text and "\n" not in text
    assert stack.ephemeral_warning("kafka", "RELAY_STACK_KAFKA_PORT", 29092, span) is None
    assert stack.ephemeral_warning("kafka", "RELAY_STACK_KAFKA_PORT", 39092, None) is None
    monkeypatch.setenv("RELAY_STACK_KAFKA_CONTROLLER_PORT", "40000")
    ports = dict(stack.Kafka().listen_ports())
    assert ports["RELAY_STACK_KAFKA_CONTROLLER_PORT"] == 40000 and "RELAY_STACK_KAFKA_PORT" in ports
    assert "RELAY_STACK_CASSANDRA_STORAGE_PORT" in dict(stack.Cassandra().listen_ports())
    monkeypatch.setenv("RELAY_STACK_REDIS_PORT", "70000")
    with pytest.raises(stack.StackError, match="RELAY_STACK_REDIS_PORT"):
        stack.Redis()

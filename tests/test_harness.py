"""The fixtures every test stands on do what they promise: process trees die whole, the environment
and the working directory are clean, configs load, reserved ports are safe, the session keeps track
of what it must drop."""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
from conftest import CQL_PASSWORD, CQL_USER, RELAY_ENV, REPO
from harness import ProcessTree, ReservedPort, ServerPort, process_alive, relay_env, wait_for, write_config

from relay import config

# Spawns a grandchild that outlives it, prints the grandchild's pid, then waits to be killed.
TREE = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print(child.pid, flush=True)
time.sleep(600)
"""


def test_stop_kills_the_whole_tree_even_after_its_leader_died(tmp_path):
    tree = ProcessTree(tmp_path / "tree.log")
    tree.start_tree([sys.executable, "-c", TREE], os.environ)
    try:
        wait_for(lambda: tree.output().strip(), 30, "the grandchild's pid")
        grandchild = int(tree.output().split()[0])
        os.kill(tree.pid, 9)  # the leader goes, as a supervisor killed by a test would
        tree.proc.wait(30)
        assert process_alive(grandchild), "the grandchild outlives its parent (what leaks in real life)"
        assert tree.stop() == []
        assert not process_alive(grandchild)
    finally:
        tree.stop()


def test_no_relay_variable_of_the_developer_reaches_a_test_or_a_relay(monkeypatch):
    leaked = {k for k in os.environ if k.startswith("RELAY_") and not k.startswith("RELAY_STACK_")}
    assert leaked == set(RELAY_ENV), "conftest strips the developer's RELAY_* at import"
    monkeypatch.setenv("RELAY_KAFKA__BOOTSTRAP_SERVERS", "elsewhere:9092")
    monkeypatch.setenv("RELAY_STACK_KAFKA_PORT", "29092")
    env = relay_env({"RELAY_REDIS__KEY_PREFIX": "mine:"})
    assert {k for k in env if k.startswith("RELAY_")} == {*RELAY_ENV, "RELAY_REDIS__KEY_PREFIX"}
    assert env["RELAY_SCYLLA__USERNAME"] == CQL_USER and "PROMETHEUS_MULTIPROC_DIR" not in env
    assert not {k for k in relay_env(credentials=False) if k.startswith("RELAY_")}


def test_tests_run_in_an_empty_directory():
    assert Path.cwd() != REPO and not list(Path.cwd().iterdir()), "no ./relay.toml can be picked up"


def test_write_config_loads_as_relay_reads_it(tmp_path):
    path = write_config(tmp_path / "relay.toml", "ks_x", tables=("outbox", "other"), topic="t.{event_type}",
                        columns={"aggregate_id": "agg", "headers": ["a", "b"]}, redis={"on_outage": "pause"},
                        relay={"window_seconds": 0.5, "confidence_seconds": None})
    cfg = config.load(path, environ={})
    assert [t.name for t in cfg.tables] == ["ks_x.outbox", "ks_x.other"]
    assert {t.topic for t in cfg.tables} == {"t.{event_type}"}
    assert cfg.tables[1].columns.aggregate_id == "agg" and cfg.tables[1].columns.headers == ("a", "b")
    assert (cfg.scylla.username, cfg.scylla.password) == (CQL_USER, CQL_PASSWORD)
    assert cfg.scylla.relay_keyspace == cfg.scylla.cdc_metadata_keyspace == "ks_x"
    assert cfg.redis.on_outage == "pause" and cfg.redis.key_prefix == "ks_x:"
    assert cfg.relay.window_seconds == 0.5 and cfg.relay.confidence_seconds == 10.0, "None keeps relay's default"
    assert (cfg.metrics.host, cfg.metrics.port) == ("127.0.0.1", 0), "relay binds a port of its choosing"
    anonymous = config.load(write_config(tmp_path / "anon.toml", "ks_x", credentials=False), environ={})
    assert (anonymous.scylla.username, anonymous.scylla.password) == ("", "")


def test_a_reserved_port_is_taken_and_refuses_connections():
    port = ReservedPort()
    try:
        with socket.socket() as s:
            with pytest.raises(OSError):
                s.bind(("127.0.0.1", port.port))
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port.port)) != 0, "nobody listens: a service that is down"
    finally:
        port.close()


def test_server_ports_are_outside_the_ephemeral_range_and_never_handed_out_twice():
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    a, b = ServerPort(), ServerPort()
    try:
        assert a.port != b.port and a.port < low and b.port < low
    finally:
        a.release()
        b.release()


def test_the_session_drops_what_its_tests_named(keyspace, topic, made):
    assert keyspace in made.keyspaces
    assert made.owns_topic(f"{keyspace}.order") and made.owns_topic(f"{topic}.invoice") and made.owns_topic(topic)
    assert not made.owns_topic(f"{keyspace}x.order") and not made.owns_topic("someone-elses")

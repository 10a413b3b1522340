"""Session fixtures that connect to the local stack (deploy/local/stack up).

A missing service fails the run when CI is set, and skips the tests that need it
otherwise. Every test gets its own keyspace / topics / key prefix, so `pytest -n auto` works.

Everything logs in to Cassandra as the stack's non-superuser role (CQL_USER), as relay does in
production: Cassandra's guardrails, the stand-ins for Scylla's limits, skip superusers.
"""
from __future__ import annotations

import json
import os
import socket
import uuid

import pytest

CQL_PORT = int(os.environ.get("RELAY_STACK_CASSANDRA_PORT", "9042"))
KAFKA_PORT = int(os.environ.get("RELAY_STACK_KAFKA_PORT", "9092"))
REDIS_PORT = int(os.environ.get("RELAY_STACK_REDIS_PORT", "6379"))
KAFKA_BOOTSTRAP = f"127.0.0.1:{KAFKA_PORT}"
REDIS_URL = f"redis://127.0.0.1:{REDIS_PORT}/0"
# The role deploy/local/stack creates (same variables as the stack script).
CQL_USER = os.environ.get("RELAY_STACK_CQL_USER", "relay")
CQL_PASSWORD = os.environ.get("RELAY_STACK_CQL_PASSWORD", "relay")
# The stack is one node: every keyspace a test makes, relay's own included, has one replica.
REPLICATION = {"class": "SimpleStrategy", "replication_factor": 1}
REPLICATION_CQL = "{'class': 'SimpleStrategy', 'replication_factor': 1}"

# relay processes and configs made by tests get the stack's credentials and replication the way
# an operator gives them, through relay's environment variables (a test's own value wins).
os.environ.setdefault("RELAY_SCYLLA__USERNAME", CQL_USER)
os.environ.setdefault("RELAY_SCYLLA__PASSWORD", CQL_PASSWORD)
os.environ.setdefault("RELAY_SCYLLA__RELAY_REPLICATION", json.dumps(REPLICATION))


def _reachable(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _need(service: str, port: int) -> None:
    if _reachable(port):
        return
    msg = f"{service} is not answering on 127.0.0.1:{port}; start it with `deploy/local/stack up`"
    if os.environ.get("CI"):
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def cql_cluster():
    _need("Cassandra", CQL_PORT)
    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import Cluster
    from cassandra.policies import ExponentialReconnectionPolicy

    # Protocol v4: the newest Scylla speaks. Outage tests restart Cassandra: reconnect within
    # seconds, not the driver's default minutes.
    cluster = Cluster(["127.0.0.1"], port=CQL_PORT, protocol_version=4, connect_timeout=10,
                      auth_provider=PlainTextAuthProvider(CQL_USER, CQL_PASSWORD),
                      reconnection_policy=ExponentialReconnectionPolicy(0.5, 5.0))
    yield cluster
    cluster.shutdown()


@pytest.fixture(scope="session")
def cql(cql_cluster):
    session = cql_cluster.connect()
    session.default_timeout = 30
    return session


@pytest.fixture
def keyspace(cql):
    """A fresh keyspace for one test, dropped afterwards."""
    name = unique("t")
    cql.execute(f"CREATE KEYSPACE {name} WITH replication = {REPLICATION_CQL}")
    yield name
    cql.execute(f"DROP KEYSPACE IF EXISTS {name}", timeout=60)


@pytest.fixture
def emulator(cql, keyspace):
    """A CDC emulator whose generation tables live in the test's own keyspace."""
    from relay.testing import CdcEmulator

    emu = CdcEmulator(cql, metadata_keyspace=keyspace)
    emu.create_metadata_tables()
    return emu


@pytest.fixture(scope="session")
def kafka_bootstrap():
    _need("Kafka", KAFKA_PORT)
    return KAFKA_BOOTSTRAP


@pytest.fixture
def topic(kafka_bootstrap):
    """A unique topic name for one test (created by the producer or by the test)."""
    return unique("relay-test").replace("_", "-")


@pytest.fixture(scope="session")
def redis_url():
    _need("Redis", REDIS_PORT)
    return REDIS_URL


@pytest.fixture
def redis_client(redis_url):
    import redis

    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()

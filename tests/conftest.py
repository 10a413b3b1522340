"""The one set of fixtures every test uses (helpers they build on live in harness.py).

Services: a missing one fails the run when CI is set, and skips the tests that need it otherwise.
Every test gets its own keyspace, topics and key prefix, so `pytest -n auto` works; what a session
made in Kafka and Cassandra is dropped when it ends. Tests that stop services (`outage`) or load the
machine (`serial`) hold the stack's lock alone, even under a plain `pytest -n auto` (serial_lock.py).

Environment: the developer's RELAY_* variables never reach a test or a relay process (only the
stack's own RELAY_STACK_* ones, which choose the stack); relay processes get exactly RELAY_ENV.
Tests run in an empty working directory, so a ./relay.toml of the developer's is never read.

Everything logs in to Cassandra as the stack's non-superuser role (CQL_USER), as relay does in
production: Cassandra's guardrails, the stand-ins for Scylla's limits, skip superusers.
"""
from __future__ import annotations

import json
import os
import socket
import tempfile
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
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

# What relay processes started by tests get, the way an operator gives it: the stack's credentials
# and replication (a test's own `env` wins). Nothing else of RELAY_* reaches them.
RELAY_ENV = {"RELAY_SCYLLA__USERNAME": CQL_USER, "RELAY_SCYLLA__PASSWORD": CQL_PASSWORD,
             "RELAY_SCYLLA__RELAY_REPLICATION": json.dumps(REPLICATION)}
for _name in [n for n in os.environ if n.startswith("RELAY_") and not n.startswith("RELAY_STACK_")]:
    del os.environ[_name]  # in-process commands (cli.main) read os.environ too
os.environ.update(RELAY_ENV)

# One lock per stack (its ports), shared by every pytest process that uses it.
STACK_LOCK = Path(tempfile.gettempdir()) / f"relay-tests-{CQL_PORT}-{KAFKA_PORT}-{REDIS_PORT}.lock"
ALONE_MARKERS = ("outage", "serial")


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


# --------------------------------------------------------------------------- the session

@pytest.fixture(autouse=True)
def stack_lock(request):
    """Shared for ordinary tests, exclusive for `outage` and `serial` ones (see serial_lock.py)."""
    from serial_lock import acquire

    alone = any(request.node.get_closest_marker(m) for m in ALONE_MARKERS)
    held = acquire(STACK_LOCK, exclusive=alone)
    yield held
    held.release()


@pytest.fixture(scope="session", autouse=True)
def empty_cwd(tmp_path_factory):
    """An empty working directory: no ./relay.toml but the ones tests write on purpose."""
    before = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(before)


class Made:
    """Keyspaces and topic-name prefixes this session created, dropped when it ends."""

    def __init__(self) -> None:
        self.keyspaces: set[str] = set()
        self.topic_prefixes: set[str] = set()

    def owns_topic(self, name: str) -> bool:
        # relay.slots.<relay keyspace>: relay's leases topic (DESIGN §5b) of a test's keyspace
        return any(name == p or name.startswith(p + ".") or name == f"relay.slots.{p}" for p in self.topic_prefixes)


_MADE = Made()


@pytest.fixture(scope="session")
def made():
    return _MADE


def pytest_sessionfinish(session):
    """Drop the session's topics and any keyspace a test could not drop (each xdist worker its own)."""
    if _MADE.topic_prefixes and _reachable(KAFKA_PORT):
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": KAFKA_BOOTSTRAP})
        doomed = [t for t in admin.list_topics(timeout=30).topics if _MADE.owns_topic(t)]
        for future in (admin.delete_topics(doomed, operation_timeout=60).values() if doomed else ()):
            try:
                future.result(60)
            except Exception:  # noqa: BLE001 - e.g. already gone; the rest still go
                pass
    if _MADE.keyspaces and _reachable(CQL_PORT):
        cluster = _cluster()
        try:
            cql = cluster.connect()
            # Only those still there: the role's permissions on a keyspace go with it.
            left = {r[0] for r in cql.execute("SELECT keyspace_name FROM system_schema.keyspaces")} & _MADE.keyspaces
            for name in left:
                cql.execute(f"DROP KEYSPACE IF EXISTS {name}", timeout=120)
        finally:
            cluster.shutdown()


# --------------------------------------------------------------------------- services

def _cluster():
    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import Cluster
    from cassandra.policies import ExponentialReconnectionPolicy

    # Protocol v4: the newest Scylla speaks. Outage tests restart Cassandra: reconnect within
    # seconds, not the driver's default minutes.
    return Cluster(["127.0.0.1"], port=CQL_PORT, protocol_version=4, connect_timeout=10,
                   auth_provider=PlainTextAuthProvider(CQL_USER, CQL_PASSWORD),
                   reconnection_policy=ExponentialReconnectionPolicy(0.5, 5.0))


@pytest.fixture(scope="session")
def cql_cluster():
    _need("Cassandra", CQL_PORT)
    cluster = _cluster()
    yield cluster
    cluster.shutdown()


@pytest.fixture(scope="session")
def cql(cql_cluster):
    session = cql_cluster.connect()
    session.default_timeout = 30
    return session


@pytest.fixture(scope="session")
def kafka_bootstrap():
    _need("Kafka", KAFKA_PORT)
    return KAFKA_BOOTSTRAP


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


# --------------------------------------------------------------------------- per test

@pytest.fixture
def keyspace(cql, made):
    """A fresh keyspace for one test, dropped afterwards; its topics are `{keyspace}.…`."""
    name = unique("t")
    made.keyspaces.add(name)
    made.topic_prefixes.add(name)
    cql.execute(f"CREATE KEYSPACE {name} WITH replication = {REPLICATION_CQL}")
    yield name
    cql.execute(f"DROP KEYSPACE IF EXISTS {name}", timeout=60)


@pytest.fixture
def keyspace_name():
    """A unique keyspace name that nothing creates: configs of tests that never reach Cassandra."""
    return unique("never")


@pytest.fixture
def topic(made):
    """A unique topic name for one test (created by the producer or by the test); `{topic}.…` too."""
    name = unique("relay-test").replace("_", "-")
    made.topic_prefixes.add(name)
    return name


@pytest.fixture
def emulator(cql, keyspace):
    """A CDC emulator whose generation tables live in the test's own keyspace."""
    from relay.testing import CdcEmulator

    emu = CdcEmulator(cql, metadata_keyspace=keyspace)
    emu.create_metadata_tables()
    return emu


@pytest.fixture
def outbox(cql, keyspace):
    """The standard outbox table with emulated CDC (one vnode generation), see harness.Outbox."""
    from harness import Outbox

    return Outbox.create(cql, keyspace)


@pytest.fixture
def big_outbox(cql, keyspace):
    """32 vnodes x 2 shards: enough tasks that every replica of four gets some."""
    from harness import Outbox

    return Outbox.create(cql, keyspace, vnodes=32)


@pytest.fixture
def relay_config(tmp_path, cql, keyspace):
    """Writes a relay.toml for the test's keyspace (harness.write_config's options) and, unless
    told not to, creates relay's tables as `relay schema apply` does. Returns its path."""
    from harness import write_config

    from relay import config, schema

    def make(name: str = "relay.toml", *, apply_schema: bool = True, **options) -> Path:
        path = write_config(tmp_path / name, keyspace, **options)
        if apply_schema:
            schema.apply(cql, config.load(path))
        return path
    return make


@pytest.fixture
def relay_process(tmp_path):
    """Starts `relay run` process trees; whatever it started is killed, process group and all, when
    the test ends, failed or not, and the test errors if anything of a group outlives that."""
    from harness import RelayProcess

    started: list[RelayProcess] = []

    def start(config: Path, *args: str, env: dict | None = None) -> RelayProcess:
        proc = RelayProcess(config, *args, env=env, log=tmp_path / f"relay-{len(started)}.log")
        started.append(proc)
        return proc.start()

    yield start
    survivors = [s for proc in started for s in proc.stop()]
    assert not survivors, f"relay processes outlived SIGKILL of their group: {survivors}"
